"""The failed-login throttle on a real server (issue 9): one account failing from an IP
(a phone with a stale password behind a NAT) delays and blocks only that account from that
IP; another account's logins from the same IP over IMAP, POP3 and SMTP AUTH are neither
delayed nor blocked; `twistedmail throttle list` shows the block and `throttle unblock`
lifts it over the control socket."""

from __future__ import annotations

import base64
import poplib
import re
import select
import smtplib
import socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, imap_login, running

ALICE = "alice@example.test"
BOB = "bob@example.test"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.config.write_text(
        srv.config.read_text().replace("[limits]\n", "[limits]\nlogin_block_after = 5\n")
    )
    with running(srv):
        yield srv


def pop3_login(server: Server, user: str, password: str) -> bytes:
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
    try:
        p.user(user)
        return p.pass_(password)
    except poplib.error_proto as e:
        return e.args[0]
    finally:
        p.close()


def smtp_login(server: Server, user: str, password: str) -> tuple[int, bytes]:
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        s.ehlo()
        return s.docmd("AUTH PLAIN", base64.b64encode(f"\0{user}\0{password}".encode()).decode())


def read_line(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(1)
        if not chunk:
            break
        data += chunk
    return data


def pending_smtp_auth(server: Server, user: str, password: str) -> ssl.SSLSocket:
    """An SMTP AUTH PLAIN sent on 465 whose answer is not read yet."""
    raw = socket.create_connection(("127.0.0.1", server.ports["submissions"]), timeout=60)
    sock = client_tls().wrap_socket(raw)
    assert read_line(sock).startswith(b"220 ")
    sock.sendall(b"EHLO client\r\n")
    while not read_line(sock).startswith(b"250 "):
        pass
    token = base64.b64encode(f"\0{user}\0{password}".encode())
    sock.sendall(b"AUTH PLAIN " + token + b"\r\n")
    return sock


def answered(sock: ssl.SSLSocket) -> bool:
    """Whether the server has sent anything on C{sock} (without waiting for it)."""
    return sock.pending() > 0 or bool(select.select([sock], [], [], 0)[0])


BOB_OK = ("OK", b"+OK Logged in", (235, b"2.7.0 Authentication successful"))


def bob_logs_in_everywhere(server: Server) -> tuple[str, bytes, tuple[int, bytes]]:
    return (
        imap_login(server, BOB, PASSWORDS[BOB]),
        pop3_login(server, BOB, PASSWORDS[BOB]),
        smtp_login(server, BOB, PASSWORDS[BOB]),
    )


def test_one_failing_account_neither_delays_nor_blocks_another(server: Server) -> None:
    """Failures of alice from 127.0.0.1 delay and then block alice from there; bob's
    logins from the same IP over IMAP, POP3 and SMTP AUTH are answered while alice's
    delayed attempt is still held, and still work once alice is blocked."""
    failed = "[AUTHENTICATIONFAILED] Authentication failed"
    assert imap_login(server, ALICE, "stale-1") == failed  # answered at once
    assert pop3_login(server, ALICE, "stale-2") == b"-ERR [AUTH] Authentication failed"
    assert smtp_login(server, ALICE, "stale-3") == (
        535,
        b"5.7.8 Authentication credentials invalid",
    )
    assert imap_login(server, ALICE, "stale-4") == failed
    # alice's 5th attempt now waits 8 s before it is checked (1, 2, 4, 8 s, as Dovecot's
    # auth penalty) ...
    held = pending_smtp_auth(server, ALICE, "stale-5")
    try:
        # ... while bob, from the same IP, logs in at once over every protocol:
        assert bob_logs_in_everywhere(server) == BOB_OK
        assert not answered(held)  # alice's attempt is still held by her own delay
        held.settimeout(60)
        assert read_line(held) == b"535 5.7.8 Authentication credentials invalid\r\n"
    finally:
        held.close()
    # The 5th failure (login_block_after = 5) blocks alice from this IP, even with the
    # right password, in every protocol (one throttle) ...
    blocked = "[UNAVAILABLE] Too many failed logins, try again later"
    assert imap_login(server, ALICE, PASSWORDS[ALICE]) == blocked
    assert pop3_login(server, ALICE, PASSWORDS[ALICE]) == (
        b"-ERR [SYS/TEMP] too many failed logins, try again later"
    )
    assert smtp_login(server, ALICE, PASSWORDS[ALICE]) == (
        454,
        b"4.7.0 Too many failed logins, try again later",
    )
    # ... and only her: bob still logs in from the same IP.
    assert bob_logs_in_everywhere(server) == BOB_OK
    log = server.log.read_text()
    assert (
        "login throttle: blocking user=alice@example.test from ip=127.0.0.1 for 900s after 5"
        " failed logins" in log
    )
    assert "blocking ip=" not in log


def test_throttle_list_and_unblock_over_the_control_socket(server: Server) -> None:
    """`throttle list` shows the block with its time left and failures; `throttle unblock
    ADDRESS` (or IP) lifts it at once; with no server running each says so in one line."""
    for i in range(5):
        assert imap_login(server, ALICE, f"stale-{i}") != "OK"
    assert imap_login(server, ALICE, PASSWORDS[ALICE]).startswith("[UNAVAILABLE]")
    listed = server.cli("throttle", "list")
    assert listed.stderr == ""
    assert re.fullmatch(
        r"ip=127\.0\.0\.1 user=alice@example\.test left=1[45]m\d\ds failures=5\n", listed.stdout
    ), listed.stdout
    unblocked = server.cli("throttle", "unblock", "Alice@Example.TEST")
    assert unblocked.stdout == (
        "unblocked alice@example.test: 1 block(s) lifted, 5 failed login(s) forgotten\n"
    )
    assert imap_login(server, ALICE, PASSWORDS[ALICE]) == "OK"  # no block, no delay left
    assert server.cli("throttle", "list").stdout == ""
    # By IP: the same, for every account blocked from that IP.
    for i in range(5):
        assert pop3_login(server, BOB, f"stale-{i}") == b"-ERR [AUTH] Authentication failed"
    assert server.cli("throttle", "list").stdout.startswith("ip=127.0.0.1 user=bob@example.test ")
    assert server.cli("throttle", "unblock", "127.0.0.1").stdout == (
        "unblocked 127.0.0.1: 1 block(s) lifted, 5 failed login(s) forgotten\n"
    )
    assert pop3_login(server, BOB, PASSWORDS[BOB]) == b"+OK Logged in"
    assert server.cli("throttle", "unblock", "127.0.0.1").stdout == (
        "nothing to unblock for 127.0.0.1: no block and no failed login\n"
    )
    assert "127.0.0.1 unblocked by the admin (1 blocks lifted" in server.log.read_text()
    server.stop()
    for args in (("throttle", "list"), ("throttle", "unblock", "127.0.0.1")):
        result = server.cli(*args, check=False)
        assert (result.returncode, result.stdout, result.stderr) == (
            1,
            "",
            "twistedmail: error: no running server\n",
        )


def test_exempt_network_is_never_throttled(tmp_path: Path) -> None:
    """[limits] login_throttle_exempt: failures from 127.0.0.0/8 are neither delayed nor
    blocked (an office or webmail host the admin trusts)."""
    srv = Server(tmp_path)
    srv.config.write_text(
        srv.config.read_text().replace(
            "[limits]\n",
            '[limits]\nlogin_block_after = 2\nlogin_throttle_exempt = ["127.0.0.0/8", "::1"]\n',
        )
    )
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    srv.start()
    try:
        for i in range(4):
            assert imap_login(srv, ALICE, f"stale-{i}") == (
                "[AUTHENTICATIONFAILED] Authentication failed"
            )
        assert imap_login(srv, ALICE, PASSWORDS[ALICE]) == "OK"
        assert srv.cli("throttle", "list").stdout == ""
    finally:
        srv.stop()
