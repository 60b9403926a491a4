"""RFC 3501 §7.2.6 across C{[server] workers} (issue 10): a keyword that a session of one
process creates reaches a session of the other process (through the folder watch) in FLAGS
and PERMANENTFLAGS before any FETCH shows it.  imaptest's stress mode against two workers
once caught the FETCH first ("Keyword used without being in FLAGS")."""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, running, serving_pid

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell the processes apart"
)

ALICE = "alice@example.test"
MESSAGE = b"From: x@elsewhere.test\r\nTo: alice@example.test\r\nSubject: k\r\n\r\nbody\r\n"
KEYWORDS = 26  # every letter of dovecot-keywords, each new to the folder


class Session:
    """An IMAPS session read line by line, in the order the server sent them."""

    def __init__(self, server: Server) -> None:
        raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=60)
        self.sock = client_tls().wrap_socket(raw)
        self.file = self.sock.makefile("rb")
        self.count = 0
        self.file.readline()  # the greeting

    def command(self, line: bytes) -> list[bytes]:
        """Send C{line} with a new tag; the lines answered, up to the tagged OK."""
        self.count += 1
        tag = b"t%d" % self.count
        self.sock.sendall(tag + b" " + line + b"\r\n")
        lines = []
        while True:
            answer = self.file.readline()
            assert answer, "connection closed"
            lines.append(answer.rstrip(b"\r\n"))
            if answer.startswith(tag + b" "):
                assert answer.startswith(tag + b" OK"), lines
                return lines

    def close(self) -> None:
        self.command(b"LOGOUT")
        self.sock.close()


def session_on(server: Server, pid: int) -> Session:
    """A logged-in session served by process C{pid}."""
    for _ in range(200):
        s = Session(server)
        if serving_pid(server, s.sock) == pid:
            s.command(b'LOGIN %s "%s"' % (ALICE.encode(), PASSWORDS[ALICE].encode()))
            return s
        s.sock.close()
    raise AssertionError(f"200 IMAP connections, none on {pid}")


def keywords_of(flags_line: bytes) -> set[bytes]:
    """The keywords (not C{\\} flags) inside the first C{FLAGS (...)} of a line, lower-cased."""
    inner = flags_line.split(b"FLAGS (", 1)[1].split(b")", 1)[0]
    return {f.lower() for f in inner.split() if not f.startswith(b"\\")}


def test_a_keyword_made_in_one_process_is_in_flags_before_the_other_fetches_it(
    tmp_path: Path,
) -> None:
    """A session of the parent STOREs 26 new keywords one by one; a session of the worker
    FETCHes FLAGS over and over: no FETCH shows a keyword before a FLAGS line listing it
    (RFC 3501 §7.2.6), and every keyword reaches it."""
    srv = Server(tmp_path, workers=2)
    with running(srv):
        (worker,) = srv.wait_for_workers()
        assert srv.pid is not None
        maker, watcher = session_on(srv, srv.pid), session_on(srv, worker)
        maker.command(b"APPEND INBOX {%d+}\r\n" % len(MESSAGE) + MESSAGE)
        maker.command(b"SELECT INBOX")
        announced = keywords_of(next(x for x in watcher.command(b"SELECT INBOX") if b"FLAGS" in x))
        seen: set[bytes] = set()
        early: list[bytes] = []
        stop = threading.Event()

        def fetch_flags() -> None:
            nonlocal announced
            while not stop.is_set():
                for line in watcher.command(b"FETCH 1:* FLAGS"):
                    if line.startswith(b"* FLAGS ("):
                        announced = keywords_of(line)
                    elif b" FETCH (" in line:
                        shown = keywords_of(line)
                        early.extend(shown - announced)
                        seen.update(shown)

        fetcher = threading.Thread(target=fetch_flags)
        fetcher.start()
        try:
            for n in range(KEYWORDS):
                keyword = b"k%d" % n
                maker.command(b"STORE 1 +FLAGS.SILENT (" + keyword + b")")
                deadline = time.monotonic() + 30  # (bounds a hang; the order is the test)
                while keyword not in seen and fetcher.is_alive():
                    assert time.monotonic() < deadline, f"{keyword!r} never reached the worker"
                    time.sleep(0.01)
        finally:
            stop.set()
            fetcher.join(60)
        assert early == []
        assert seen == {b"k%d" % n for n in range(KEYWORDS)}
        maker.close()
        watcher.close()
