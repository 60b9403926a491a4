"""IDLE (RFC 2177) against the real server: changes made outside the process reach the
client without it sending anything.  A message dropped into new/ by hand (as an MDA does:
tmp/, then rename), mail imported by the CLI in another process, and a real Dovecot on the
same Maildir APPENDing, setting a flag and expunging each show up as C{* n EXISTS},
C{* n FETCH (FLAGS ...)} or C{* n EXPUNGE} (RFC 3501 §7.3.1, §7.4.1, §7.4.2).  The server
watches a selected folder with inotify; its watches go when the last session leaves.

Waits are bounded (the line must come within 30 s) and fail naming what was expected and what
arrived; nothing is timed.
"""

from __future__ import annotations

import os
import re
import socket
import ssl
import time
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls
from test_e2e_dovecot import ALICE, DOVECOT, NOBODY, Dovecot, message, root  # noqa: F401

WAIT = 30.0
"""Seconds a pushed line may take before the test fails (a bound, not a measurement)."""


class Client:
    """A raw IMAP client over TLS, so the test sees every untagged line as it comes."""

    def __init__(self, port: int) -> None:
        raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT)
        self.sock: ssl.SSLSocket = client_tls().wrap_socket(raw)
        self.buffer = b""
        self.seen: list[bytes] = []
        assert self.line().startswith(b"* OK")

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self, deadline: float | None = None) -> bytes:
        while b"\r\n" not in self.buffer:
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError
                self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except (TimeoutError, socket.timeout):
                raise TimeoutError from None
            finally:
                self.sock.settimeout(WAIT)
            assert chunk, f"connection closed; lines so far: {self.seen}"
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\r\n", 1)
        self.seen.append(line)
        return line

    def command(self, tag: bytes, text: bytes) -> list[bytes]:
        self.send(tag + b" " + text + b"\r\n")
        lines = []
        while True:
            lines.append(self.line())
            if lines[-1].startswith(tag + b" "):
                return lines

    def login(self) -> None:
        password = PASSWORDS[ALICE].encode()
        reply = self.command(b"l", b'LOGIN %s "%s"' % (ALICE.encode(), password))
        assert reply[-1].startswith(b"l OK"), reply

    def idle(self) -> None:
        self.send(b"i IDLE\r\n")
        assert self.line() == b"+ idling"

    def pushed(self, pattern: bytes, what: str) -> list[bytes]:
        """Untagged lines up to one matching C{pattern} (a regex), while in IDLE."""
        deadline = time.monotonic() + WAIT
        lines: list[bytes] = []
        while True:
            try:
                lines.append(self.line(deadline))
            except TimeoutError:
                raise AssertionError(
                    f"no {what} pushed within {WAIT:.0f} s of IDLE; got {lines!r}"
                ) from None
            if re.fullmatch(pattern, lines[-1]):
                return lines

    def done(self) -> None:
        self.send(b"DONE\r\n")
        while True:
            if self.line() == b"i OK IDLE terminated":
                return

    def close(self) -> None:
        self.sock.close()


def start(srv: Server) -> None:
    """Start the server, as C{nobody} when run as root (Dovecot refuses root, and both must
    own the Maildir, as a real deployment has one mail user)."""
    srv.add_user(ALICE, PASSWORDS[ALICE])
    if os.getuid() == 0:
        (srv.root).chmod(0o755)
        for dirpath, _dirs, files in os.walk(srv.data_dir):
            os.chown(dirpath, NOBODY, NOBODY)
            for name in files:
                os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        srv.start(("-u", str(NOBODY), "-g", str(NOBODY)))
    else:
        srv.start()


def selected(srv: Server, appended: int = 0) -> Client:
    c = Client(srv.ports["imaps"])
    c.login()
    for n in range(appended):
        data = message(n)
        reply = c.command(b"a", b"APPEND INBOX {%d+}\r\n" % len(data) + data)
        assert reply[-1].startswith(b"a OK"), reply
    reply = c.command(b"s", b"SELECT INBOX")
    assert reply[-1] == b"s OK [READ-WRITE] SELECT completed", reply
    return c


def inotify_watches(pid: int) -> int:
    """The inotify watches process C{pid} holds (its fdinfo lines, Linux)."""
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            if os.readlink(f"/proc/{pid}/fd/{fd}") != "anon_inode:inotify":
                continue
            text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
        except OSError:
            continue
        count += sum(1 for line in text.splitlines() if line.startswith("inotify wd:"))
    return count


def drop_into_new(maildir: Path, name: str, data: bytes) -> None:
    (maildir / "tmp" / name).write_bytes(data)
    os.chmod(maildir / "tmp" / name, 0o644)
    os.rename(maildir / "tmp" / name, maildir / "new" / name)


def test_a_message_dropped_into_new_by_hand_is_pushed(root: Path) -> None:  # noqa: F811
    """A file renamed into new/ by another program is announced to an IDLE client at once:
    C{* 2 EXISTS}, C{* 2 RECENT} (RFC 3501 §7.3.1, §7.3.2; RFC 2177)."""
    srv = Server(root / "server")
    start(srv)
    try:
        c = selected(srv, appended=1)
        c.idle()
        drop_into_new(srv.maildir(ALICE), "1800000000.M1P1.elsewhere", message(7))
        assert c.pushed(rb"\* 2 EXISTS", "EXISTS for the dropped message") == [b"* 2 EXISTS"]
        assert c.line() == b"* 2 RECENT"
        c.done()
        fetched = c.command(b"f", b"FETCH 2 (FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert fetched[0] == b"* 2 FETCH (FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {22}"
        assert fetched[1] == b"Subject: message 7"
        c.close()
    finally:
        srv.stop()


def test_mail_imported_by_the_cli_in_another_process_is_pushed(root: Path) -> None:  # noqa: F811
    """C{twistedmail import mbox} (its own process, writing the Maildir) while a client is in
    IDLE: the client is told C{* 3 EXISTS} for the two imported messages."""
    srv = Server(root / "server")
    start(srv)
    try:
        c = selected(srv, appended=1)
        c.idle()
        mbox = root / "in.mbox"
        mbox.write_bytes(
            b"".join(
                b"From s@elsewhere.test Sun Nov 29 12:00:00 2026\n"
                + message(n).replace(b"\r\n", b"\n")
                + b"\n"
                for n in (10, 11)
            )
        )
        mbox.chmod(0o644)
        result = srv.cli("import", "mbox", str(mbox), ALICE)
        assert "INBOX: 2 imported" in result.stdout, result.stdout
        if os.getuid() == 0:  # the CLI ran as root: hand the new files to the server's user
            for dirpath, _dirs, files in os.walk(srv.maildir(ALICE)):
                os.chown(dirpath, NOBODY, NOBODY)
                for name in files:
                    os.chown(os.path.join(dirpath, name), NOBODY, NOBODY)
        lines = c.pushed(rb"\* 3 EXISTS", "EXISTS for the imported messages")
        assert lines[-1] == b"* 3 EXISTS"
        c.done()
        c.close()
    finally:
        srv.stop()


def test_two_sessions_of_our_own_still_see_each_other(root: Path) -> None:  # noqa: F811
    """A flag stored by one session reaches another in IDLE as C{* 1 FETCH (FLAGS ...)}
    (RFC 3501 §7.4.2), and an APPEND as C{* 2 EXISTS}."""
    srv = Server(root / "server")
    start(srv)
    try:
        a = selected(srv, appended=1)
        b = selected(srv)
        a.idle()
        stored = b.command(b"t", b"STORE 1 +FLAGS.SILENT (\\Flagged)")
        assert stored[-1] == b"t OK STORE completed"
        lines = a.pushed(rb"\* 1 FETCH \(FLAGS \(.*\)\)", "FETCH FLAGS for the STORE")
        assert b"\\Flagged" in lines[-1]
        data = message(3)
        reply = b.command(b"p", b"APPEND INBOX {%d+}\r\n" % len(data) + data)
        assert reply[-1].startswith(b"p OK"), reply
        assert a.pushed(rb"\* 2 EXISTS", "EXISTS for the APPEND")[-1] == b"* 2 EXISTS"
        a.done()
        a.close()
        b.close()
    finally:
        srv.stop()


def test_watches_are_released_after_many_select_close_cycles(root: Path) -> None:  # noqa: F811
    """A selected folder holds two inotify watches (new/, cur/) shared by its sessions; after
    100 SELECT/CLOSE cycles and a logout the server holds none."""
    srv = Server(root / "server")
    start(srv)
    try:
        pid = srv.pid
        assert pid is not None
        a = selected(srv)
        b = selected(srv)
        assert inotify_watches(pid) == 2
        for n in range(100):
            assert b.command(b"c", b"CLOSE")[-1] == b"c OK CLOSE completed"
            reply = b.command(b"s", b"SELECT INBOX")
            assert reply[-1] == b"s OK [READ-WRITE] SELECT completed", (n, reply)
        assert inotify_watches(pid) == 2
        assert b.command(b"c", b"CLOSE")[-1] == b"c OK CLOSE completed"
        assert inotify_watches(pid) == 2  # a still has it selected
        assert a.command(b"o", b"LOGOUT")[-1].startswith(b"o OK")
        assert b.command(b"o", b"LOGOUT")[-1].startswith(b"o OK")
        a.close()
        b.close()
        # the logout's cleanup runs when the server sees the connection end
        deadline = time.monotonic() + WAIT
        while inotify_watches(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert inotify_watches(pid) == 0, "watches left after every session ended"
    finally:
        srv.stop()


@pytest.mark.skipif(DOVECOT is None, reason="Dovecot not installed (Debian dovecot-imapd)")
def test_dovecot_append_flag_and_expunge_are_pushed(root: Path) -> None:  # noqa: F811
    """A real Dovecot on the same Maildir: its APPEND is C{* 2 EXISTS}, its STORE of a flag
    C{* 1 FETCH (FLAGS (\\Flagged \\Recent))}, its EXPUNGE C{* 1 EXPUNGE}, each pushed to our IDLE
    client without it sending anything."""
    srv = Server(root / "server")
    start(srv)
    dovecot = Dovecot(root / "dovecot", srv.maildir(ALICE))
    try:
        c = selected(srv, appended=1)
        dovecot.start()
        d = dovecot.connect()
        c.idle()
        assert d.append("INBOX", None, None, message(20))[0] == "OK"
        assert c.pushed(rb"\* 2 EXISTS", "EXISTS for Dovecot's APPEND")[-1] == b"* 2 EXISTS"
        assert d.select("INBOX")[0] == "OK"
        assert d.store("1", "+FLAGS", "(\\Flagged)")[0] == "OK"
        lines = c.pushed(rb"\* 1 FETCH \(FLAGS \(.*\)\)", "FETCH FLAGS for Dovecot's STORE")
        assert lines[-1] == b"* 1 FETCH (FLAGS (\\Flagged \\Recent))"  # ours claimed it
        assert d.store("1", "+FLAGS", "(\\Deleted)")[0] == "OK"
        assert d.expunge()[0] == "OK"
        lines = c.pushed(rb"\* 1 EXPUNGE", "EXPUNGE for Dovecot's EXPUNGE")
        assert lines[-1] == b"* 1 EXPUNGE"
        d.logout()
        c.done()
        fetched = c.command(b"f", b"UID FETCH 1:* (FLAGS)")
        assert fetched[-1] == b"f OK FETCH completed", fetched
        assert [line for line in fetched[:-1] if b"FETCH" in line] == [
            b"* 1 FETCH (FLAGS (\\Recent) UID 2)"
        ]
        c.close()
    finally:
        dovecot.stop()
        srv.stop()
    assert dovecot.errors() == []
