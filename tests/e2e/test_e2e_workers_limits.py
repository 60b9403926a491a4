"""C{[limits]} under C{[server] workers} (issue 10), end to end against the real twistd with
two processes: C{max_connections_per_ip} and C{imap_max_connections_per_user} hold for the
whole server, as Postfix's and Dovecot's anvil make them (the parent keeps the counts), with
the same refusals as one process; a worker killed with -9 gives its slots back; thousands of
sessions leave every count at zero."""

from __future__ import annotations

import imaplib
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, running, serving_pid

from twistedmail import control

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell the processes apart"
)

ALICE = "alice@example.test"
SMTP_REFUSAL = b"421 4.7.0 mail.example.test Too many connections, try again later\r\n"
USER_REFUSAL = "[UNAVAILABLE] Maximum number of connections from user+IP exceeded"


@pytest.fixture
def two(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    """Two processes; C{[limits]} lines from the test's parameter."""
    srv = Server(tmp_path, workers=2)
    limits = request.param
    srv.config.write_text(srv.config.read_text().replace("[limits]\n", f"[limits]\n{limits}"))
    with running(srv):
        srv.wait_for_workers()
        yield srv


def read_line(sock: socket.socket) -> bytes:
    data = b""
    while not data.endswith(b"\n"):
        chunk = sock.recv(1024)
        if not chunk:
            break
        data += chunk
    return data


def smtp_greeted(server: Server, on: int | None = None) -> socket.socket:
    """A port-25 connection greeted with 220 (served by process C{on}, if given).  Retried
    while the server still counts a connection the test just closed."""
    for _ in range(400):
        sock = socket.create_connection(("127.0.0.1", server.ports["smtp"]), timeout=30)
        greeting = read_line(sock)
        if greeting.startswith(b"220") and (on is None or serving_pid(server, sock) == on):
            return sock
        sock.close()
        if greeting == SMTP_REFUSAL:
            time.sleep(0.02)
    raise AssertionError(f"no greeted connection on {on}")


def imap_login(server: Server, on: int | None = None) -> imaplib.IMAP4_SSL:
    """A logged-in IMAPS session of alice (on process C{on}, if given); retried while a
    session the test just closed is still counted."""
    for _ in range(400):
        c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        if on is not None and serving_pid(server, c.sock) != on:
            c.shutdown()
            continue
        try:
            c.login(ALICE, PASSWORDS[ALICE])
            return c
        except imaplib.IMAP4.error as e:
            assert e.args[0].decode() == USER_REFUSAL, e
            c.shutdown()
            time.sleep(0.02)
    raise AssertionError(f"no login on {on}")


def login_refusal(server: Server) -> str:
    c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    try:
        c.login(ALICE, PASSWORDS[ALICE])
        return "OK"
    except imaplib.IMAP4.error as e:
        return str(e.args[0].decode())
    finally:
        c.shutdown()


@pytest.mark.parametrize("two", ["max_connections_per_ip = 2\n"], indirect=True)
def test_connections_per_ip_hold_across_processes(two: Server) -> None:
    """max_connections_per_ip = 2 with one connection on each process: the third gets the
    same 421 4.7.0 as with one process (RFC 5321 §3.1); closing one lets a new one in; kill -9
    of a worker frees the slots its connections held."""
    assert two.pid is not None
    (worker,) = two.worker_pids()
    first = smtp_greeted(two, on=two.pid)
    second = smtp_greeted(two, on=worker)
    for _ in range(6):  # wherever the kernel puts it
        with socket.create_connection(("127.0.0.1", two.ports["smtp"]), timeout=30) as extra:
            assert read_line(extra) == SMTP_REFUSAL
            assert extra.recv(100) == b""  # and closed
    first.sendall(b"QUIT\r\n")
    assert read_line(first).startswith(b"221")
    first.close()
    third = smtp_greeted(two)  # retried until the close is counted
    third.close()
    second.close()

    # Both slots held by the worker, which dies with them.
    held = [smtp_greeted(two, on=worker), smtp_greeted(two, on=worker)]
    with socket.create_connection(("127.0.0.1", two.ports["smtp"]), timeout=30) as extra:
        assert read_line(extra) == SMTP_REFUSAL
    os.kill(worker, signal.SIGKILL)
    two.wait_for_workers(exclude=(worker,))
    fresh = [smtp_greeted(two), smtp_greeted(two)]
    with socket.create_connection(("127.0.0.1", two.ports["smtp"]), timeout=30) as extra:
        assert read_line(extra) == SMTP_REFUSAL
    for sock in held + fresh:
        sock.close()


@pytest.mark.parametrize("two", ["imap_max_connections_per_user = 2\n"], indirect=True)
def test_imap_sessions_per_user_hold_across_processes(two: Server) -> None:
    """imap_max_connections_per_user = 2 with one session on each process: the third login
    gets NO [UNAVAILABLE] (RFC 5530 §3); a LOGOUT lets a new one in; kill -9 of a worker
    frees its sessions' slots."""
    assert two.pid is not None
    (worker,) = two.worker_pids()
    on_parent = imap_login(two, on=two.pid)
    on_worker = imap_login(two, on=worker)
    for _ in range(4):
        assert login_refusal(two) == USER_REFUSAL
    on_parent.logout()
    imap_login(two).logout()  # retried until the LOGOUT is counted
    on_worker.logout()

    held = [imap_login(two, on=worker), imap_login(two, on=worker)]
    assert login_refusal(two) == USER_REFUSAL
    os.kill(worker, signal.SIGKILL)
    two.wait_for_workers(exclude=(worker,))
    fresh = [imap_login(two), imap_login(two)]
    assert login_refusal(two) == USER_REFUSAL
    for c in fresh:
        c.logout()
    for c in held:
        c.shutdown()


@pytest.mark.parametrize("two", ["max_connections_per_ip = 2\n"], indirect=True)
def test_thousands_of_sessions_leave_every_count_at_zero(two: Server) -> None:
    """2,000 port-25 sessions on both processes, half ended by QUIT and half by a reset:
    afterwards `twistedmail connections` shows none open, and exactly two new connections
    are let in again (the shared counts went back to zero)."""
    pids: set[int] = set()
    for i in range(2000):
        sock = smtp_greeted(two)
        if i % 50 == 0:
            pids.add(serving_pid(two, sock))
        if i % 2:
            sock.sendall(b"QUIT\r\n")
            read_line(sock)
            sock.close()
        else:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            sock.close()  # RST
    deadline = time.monotonic() + 30
    while True:
        counts = control.connections(two.data_dir / "control")
        del counts["control"]  # this question's own connection
        if not any(counts.values()) or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert not any(counts.values()), counts
    assert pids == {two.pid, *two.worker_pids()}
    held = [smtp_greeted(two), smtp_greeted(two)]
    with socket.create_connection(("127.0.0.1", two.ports["smtp"]), timeout=30) as extra:
        assert read_line(extra) == SMTP_REFUSAL
    for sock in held:
        sock.close()
