"""How C{[server] workers} spread connections (issue 10): a burst of connections opened at
once lands on every process, each keeps its share (counts per process from
C{twistedmail status}), and after C{kill -9} of a worker every new connection is still
served while it is started again (L{twistedmail.workers}, "How connections are spread")."""

from __future__ import annotations

import os
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import Server, running

from twistedmail import control

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to find the workers"
)

BURST = 20


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, workers=2)
    with running(srv):
        srv.wait_for_workers()
        yield srv


def burst(port: int, greeting: bytes) -> list[socket.socket]:
    """C{BURST} connections to C{port}, all opened before any greeting is read (the
    kernel queues them at once), then each one's greeting read and checked."""
    socks = [socket.create_connection(("127.0.0.1", port), timeout=60) for _ in range(BURST)]
    for s in socks:
        assert s.recv(4096).startswith(greeting)
    return socks


def per_process(server: Server) -> dict[int, int]:
    """Open connections of each serving process, from C{twistedmail status}."""
    workers = control.status(server.data_dir / "control")["workers"]
    return {p["pid"]: p["connections"] for p in workers}


def test_a_burst_of_connections_is_spread_over_both_processes(two: Server) -> None:
    """20 IMAP then 20 SMTP connections opened at once: each process holds at least a
    quarter of each burst (one process took nearly every connection of a burst before)."""
    pids = {two.pid, *two.worker_pids()}
    start = per_process(two)
    assert set(start) == pids and set(start.values()) == {0}
    imap = burst(two.ports["imap"], b"* OK ")
    after_imap = per_process(two)
    assert sum(after_imap.values()) == BURST
    assert min(after_imap.values()) >= BURST // 4, after_imap
    smtp = burst(two.ports["smtp"], b"220 ")
    after_smtp = per_process(two)
    assert sum(after_smtp.values()) == 2 * BURST
    assert min(after_smtp[p] - after_imap[p] for p in pids) >= BURST // 4, after_smtp
    for s in imap + smtp:
        s.close()


def test_a_killed_worker_leaves_every_new_connection_to_the_others(two: Server) -> None:
    """kill -9 of a worker holding its share: 20 connections opened at once right after
    are all greeted (the parent takes them, then the worker started again takes its part),
    and the counts of every process add up to what is open."""
    (worker,) = two.worker_pids()
    held = burst(two.ports["imap"], b"* OK ")
    assert per_process(two)[worker] >= 1
    parent_held = per_process(two)[two.pid]
    os.kill(worker, signal.SIGKILL)
    new = burst(two.ports["smtp"], b"220 ")
    (restarted,) = two.wait_for_workers(exclude=(worker,))
    counts = per_process(two)
    assert set(counts) == {two.pid, restarted}
    assert sum(counts.values()) == parent_held + BURST
    for s in held + new:
        s.close()
