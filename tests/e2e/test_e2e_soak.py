"""Connection accounting end to end (issue 9): every session, however it ends, gives back its
descriptor, its per-IP connection slot (L{twistedmail.limits.ConnectionLimit}) and its
per-user slot (L{twistedmail.limits.UserSessionLimit}); counted from outside through
C{/proc/PID/fd} and the control socket's C{connections} request."""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import smtplib
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, LineClient, Server, client_tls

from twistedmail import control

ALICE, BOB = "alice@example.test", "bob@example.test"

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to count descriptors"
)


def open_fds(server: Server) -> int:
    """Open descriptors of the server: of every process with [server] workers."""
    assert server.proc is not None
    pids = (server.proc.pid, *server.worker_pids())
    return sum(len(os.listdir(f"/proc/{pid}/fd")) for pid in pids)


def watching(pid: int) -> bool:
    """Whether process C{pid} has its inotify descriptor: opened at its first SELECT and kept
    (with its pooled index connection) for the life of the process, not per session; the
    kernel may give a warm-up's sequential connections all to one process."""
    fd_dir = f"/proc/{pid}/fd"
    for name in os.listdir(fd_dir):
        try:
            if os.readlink(f"{fd_dir}/{name}") == "anon_inode:inotify":
                return True
        except OSError:
            continue
    return False


def connections(server: Server) -> dict[str, int]:
    """The server's open connections per listener and logged-in sessions (control socket)."""
    return control.connections(server.data_dir / "control")


def deliver_many(server: Server, to: str, count: int) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        for i in range(count):
            s.sendmail("x@elsewhere.test", [to], b"Subject: m%d\r\n\r\nbody %d\r\n" % (i, i))


def settled(server: Server, fds: int, counts: dict[str, int], within: float = 30) -> None:
    """Wait (bounded) until descriptors and connection counts are back at C{fds}/C{counts};
    then assert it, showing the difference."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        if open_fds(server) <= fds and connections(server) == counts:
            return
        time.sleep(0.1)
    assert (open_fds(server), connections(server)) == (fds, counts)


def test_pop3_sessions_that_retrieve_and_delete_give_back_their_slot(server: Server) -> None:
    """25 POP3S sessions of one IP, each RETR + DELE + QUIT, all get +OK: more than the per-IP
    limit of 20, so each QUIT frees its connection (issue 9: the 21st was refused)."""
    deliver_many(server, ALICE, 25)
    for _ in range(25):
        p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls(), timeout=10)
        assert p.user(ALICE).startswith(b"+OK")
        assert p.pass_(PASSWORDS[ALICE]) == b"+OK Logged in"
        assert p.retr(1)[0].startswith(b"+OK")
        assert p.dele(1) == b"+OK message deleted"
        assert p.quit() == b"+OK twistedmail POP3 server signing off"
    assert server.messages(ALICE) == []


def test_imaps_login_logout_sessions_of_one_user_give_back_their_slot(server: Server) -> None:
    """12 IMAPS LOGIN/LOGOUT sessions of one user from one IP all log in: more than the 10
    sessions per user and IP (RFC 5530 §3 UNAVAILABLE only when 10 are really open)."""
    for _ in range(12):
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        assert m.login(BOB, PASSWORDS[BOB])[0] == "OK"
        assert m.select("INBOX")[0] == "OK"
        assert m.logout()[0] == "BYE"


# -- the soak: one server, every kind of session, every ending -------------------------

SOAK_TIMEOUT = 3  # [limits] *_idle_timeout of the soak server, seconds
TLS_PORTS = {"submissions", "imaps", "pop3s"}
STARTTLS = {"smtp": b"STARTTLS", "submission": b"STARTTLS", "imap": b"t STARTTLS", "pop3": b"STLS"}


class Conn(LineClient):
    """A line-oriented test client over a plain or TLS socket, ended in a chosen way."""

    def __init__(self, port: int, tls: bool) -> None:
        super().__init__(socket.create_connection(("127.0.0.1", port), timeout=10))
        if tls:
            self.starttls()

    def starttls(self) -> None:
        self.sock = client_tls().wrap_socket(self.sock)
        self.buf = b""

    def wait_closed(self) -> None:
        """Read until the server closes (its TLS close_notify or FIN)."""
        while True:
            try:
                if not self.sock.recv(65536):
                    return
            except (ssl.SSLError, ConnectionError):
                return

    def fin(self) -> None:
        """Close without a TLS close_notify: a plain FIN."""
        self.sock.close()

    def rst(self) -> None:
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        self.sock.close()

    def close_notify(self) -> None:
        """TLS close_notify, then FIN."""
        assert isinstance(self.sock, ssl.SSLSocket)
        try:
            self.sock.unwrap().close()
        except (ssl.SSLError, OSError):
            self.sock.close()


def smtp_reply(c: Conn) -> bytes:
    return c.until(lambda line: line[3:4] != b"-")


def open_session(server: Server, service: str, tls: bool, login: bool = True) -> Conn:
    """Connect to C{service}, start TLS (implicit, or STARTTLS/STLS when C{tls}) and log in
    (SMTP: EHLO, plus AUTH on submission) when C{login}."""
    c = Conn(server.ports[service], service in TLS_PORTS)
    if service.startswith(("smtp", "submission")):
        assert c.line().startswith(b"220 ")
        c.send(b"EHLO client.test\r\n")
        assert smtp_reply(c).startswith(b"250 ")
        if tls and service not in TLS_PORTS:
            c.send(b"STARTTLS\r\n")
            assert smtp_reply(c).startswith(b"220 ")
            c.starttls()
            c.send(b"EHLO client.test\r\n")
            assert smtp_reply(c).startswith(b"250 ")
        if login and service != "smtp":
            token = base64.b64encode(b"\0" + BOB.encode() + b"\0" + PASSWORDS[BOB].encode())
            c.send(b"AUTH PLAIN " + token + b"\r\n")
            assert smtp_reply(c).startswith(b"235 ")
    elif service.startswith("imap"):
        assert c.line().startswith(b"* OK")
        if tls and service not in TLS_PORTS:
            c.send(b"t STARTTLS\r\n")
            assert c.until(lambda line: line.startswith(b"t ")).startswith(b"t OK")
            c.starttls()
        if login:
            c.send(b"l LOGIN %s %s\r\n" % (BOB.encode(), PASSWORDS[BOB].encode()))
            assert c.until(lambda line: line.startswith(b"l ")).startswith(b"l OK")
            c.send(b"s SELECT INBOX\r\n")
            assert c.until(lambda line: line.startswith(b"s ")).startswith(b"s OK")
    else:
        assert c.line().startswith(b"+OK")
        if tls and service not in TLS_PORTS:
            c.send(b"STLS\r\n")
            assert c.line().startswith(b"+OK")
            c.starttls()
        if login:
            c.send(b"USER %s\r\nPASS %s\r\n" % (BOB.encode(), PASSWORDS[BOB].encode()))
            assert c.line().startswith(b"+OK")
            assert c.line() == b"+OK Logged in"
            c.send(b"STAT\r\n")
            assert c.line().startswith(b"+OK")
    return c


def polite_end(service: str, c: Conn) -> None:
    """QUIT / LOGOUT, and the client closes when the server did."""
    if service.startswith("imap"):
        c.send(b"z LOGOUT\r\n")
        assert c.until(lambda line: line.startswith(b"z ")) == b"z OK LOGOUT successful"
    else:
        c.send(b"QUIT\r\n")
        assert c.line().startswith(b"221 " if service.startswith(("smtp", "sub")) else b"+OK")
    c.wait_closed()
    c.fin()


def mid_command(service: str, c: Conn) -> None:
    c.send(b"NOOP")  # no CRLF yet
    c.fin()


def close_when_closed(c: Conn) -> None:
    """Wait for the server to close, then close (an idle client, in a thread)."""
    c.sock.settimeout(60)
    c.wait_closed()
    c.fin()


def soak_server(root: Path, workers: int | None = None) -> Server:
    srv = Server(root, workers=workers)
    text = srv.config.read_text()
    srv.config.write_text(
        text.replace(
            'max_message_size = "1MiB"',
            'max_message_size = "20MiB"\n'
            f"smtp_idle_timeout = {SOAK_TIMEOUT}\nimap_idle_timeout = {SOAK_TIMEOUT}\n"
            f"pop3_idle_timeout = {SOAK_TIMEOUT}",
        )
    )
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    return srv


@pytest.fixture(params=[1, 2], ids=["workers=1", "workers=2"])
def soak(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Server]:
    srv = soak_server(tmp_path, workers=request.param)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def big_message(server: Server, size: int) -> None:
    """A message of C{size} octets put into BOB's INBOX as another program would."""
    new = server.maildir(BOB) / "new"
    new.mkdir(parents=True, exist_ok=True)
    line = b"x" * 76 + b"\r\n"
    (new / "1700000000.big.other").write_bytes(b"Subject: big\r\n\r\n" + line * (size // 78))


def test_soak_every_session_ending_gives_back_descriptors_and_slots(soak: Server) -> None:
    """Sessions of every listener ended every way (QUIT/LOGOUT, RST, FIN, TLS close with
    and without close_notify, idle timeout, mid-command, mid-DATA, mid-APPEND literal,
    mid-RETR/FETCH, a RETR/FETCH the client stops reading, refused over the limit) leave
    the server with the descriptors and connection counts it started with (issue 9)."""
    deliver_many(soak, BOB, 2)
    big_message(soak, 8 * 1024 * 1024)
    services = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s")
    for _ in range(soak.workers * 3):  # warm up every process: thread pool, indexes, TLS
        for service in services:
            polite_end(service, open_session(soak, service, tls=True))
    for _ in range(200):  # (bounded) until every process has selected a folder once
        if all(watching(pid) for pid in (soak.proc.pid, *soak.worker_pids())):
            break
        polite_end("imaps", open_session(soak, "imaps", tls=True))
    start_fds, start = open_fds(soak), connections(soak)
    assert start == {
        "control": 1,
        "folder_watchers": 0,
        "http": 0,
        "https": 0,
        "imap": 0,
        "imap_sessions": 0,
        "imaps": 0,
        "managesieve": 0,
        "metrics": 0,
        "pop3": 0,
        "pop3s": 0,
        "smtp": 0,
        "submission": 0,
        "submissions": 0,
    }

    # Idle sessions first: the server ends them (its idle timeout) while the rest runs.
    idle = [open_session(soak, s, tls=True) for s in services]
    idle += [open_session(soak, "smtp", tls=False)]
    # Each closes its end once the server closed it, as a real client does.
    waiting = [threading.Thread(target=close_when_closed, args=(c,)) for c in idle]
    for t in waiting:
        t.start()
    stalled: list[Conn] = []
    # Stalled readers: a RETR / FETCH of the 8 MB message the client stops reading.
    for service in ("pop3", "pop3s"):
        c = open_session(soak, service, tls=True)
        c.send(b"RETR 3\r\n")
        assert c.line().startswith(b"+OK")
        stalled.append(c)
    for service in ("imap", "imaps"):
        c = open_session(soak, service, tls=True)
        c.send(b"f FETCH 3 BODY.PEEK[]\r\n")
        assert c.line().startswith(b"* 3 FETCH")
        stalled.append(c)
    for round_ in range(2):
        for service in services:
            tls_options = (True, False) if service in ("smtp", "imap", "pop3") else (True,)
            for tls in tls_options:
                logged_in = tls or service == "smtp"
                polite_end(service, open_session(soak, service, tls, login=logged_in))
                open_session(soak, service, tls, login=logged_in).rst()
                open_session(soak, service, tls, login=logged_in).fin()
                mid_command(service, open_session(soak, service, tls, login=logged_in))
                if tls:
                    open_session(soak, service, tls).close_notify()
                    open_session(soak, service, tls, login=False).close_notify()
        # mid-DATA on 25 and 587, mid-APPEND literal on 143 and 993
        for service in ("smtp", "submission", "submissions"):
            c = open_session(soak, service, tls=True)
            c.send(b"MAIL FROM:<bob@example.test>\r\n")
            assert smtp_reply(c).startswith(b"250 ")
            c.send(b"RCPT TO:<alice@example.test>\r\n")
            assert smtp_reply(c).startswith(b"250 ")
            c.send(b"DATA\r\n")
            assert smtp_reply(c).startswith(b"354 ")
            c.send(b"Subject: cut\r\n\r\nhalf a body\r\n")
            (c.rst if round_ else c.fin)()
        for service in ("imap", "imaps"):
            c = open_session(soak, service, tls=True)
            c.send(b"a APPEND INBOX {1000}\r\n")
            assert c.line().startswith(b"+")
            c.send(b"Subject: cut\r\n\r\n" + b"x" * 100)
            (c.rst if round_ else c.fin)()
            c = open_session(soak, service, tls=True)  # a non-synchronizing literal, cut
            c.send(b"a APPEND INBOX {1000+}\r\nSubject: cut\r\n")
            (c.rst if round_ else c.close_notify)()
        # mid-RETR / mid-FETCH of the 8 MB message, the client reading nothing
        for service in ("pop3", "pop3s"):
            c = open_session(soak, service, tls=True)
            c.send(b"RETR 3\r\n")
            assert c.line().startswith(b"+OK")
            (c.rst if round_ else c.fin)()
        for service in ("imap", "imaps"):
            c = open_session(soak, service, tls=True)
            c.send(b"f FETCH 3 BODY.PEEK[]\r\n")
            assert c.line().startswith(b"* 3 FETCH")
            (c.rst if round_ else c.fin)()
            c = open_session(soak, service, tls=True)
            c.send(b"i IDLE\r\n")
            assert c.line().startswith(b"+ ")
            (c.rst if round_ else c.close_notify)()
        # a failed login, then QUIT/LOGOUT
        c = open_session(soak, "pop3s", tls=True, login=False)
        c.send(b"USER bob@example.test\r\nPASS wrong\r\n")
        assert c.line().startswith(b"+OK")
        assert c.line().startswith(b"-ERR")
        polite_end("pop3s", c)
    for t in waiting:  # the server closed them on its idle timeout
        t.join(timeout=60)
        assert not t.is_alive()
    for c in stalled:  # read nothing all along: the server cut them on its idle timeout
        c.wait_closed()
        c.fin()
    if soak.workers > 1:  # [limits] are per process: one process is checked below
        settled(soak, start_fds, start)
        return
    # over the per-IP limit: refused politely, and the refusals give everything back too
    held = [open_session(soak, "pop3s", tls=True, login=False) for _ in range(20)]
    refused = Conn(soak.ports["pop3s"], tls=True)
    assert refused.line() == b"-ERR [SYS/TEMP] Too many connections, try again later"
    refused.wait_closed()
    refused.fin()
    for c in held:
        c.rst()
    settled(soak, start_fds, start)


class BIOClient:
    """A TLS client over ssl.MemoryBIO, to see the server's TLS close_notify and its TCP
    FIN apart (a socket-level TLS client reports both as one end of file)."""

    def __init__(self, port: int, prelude: tuple[tuple[bytes, bytes], ...] = ()) -> None:
        """@param prelude: cleartext (send, wait-for) steps before TLS: STARTTLS/STLS."""
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        for send, wait in prelude:
            self.sock.sendall(send)
            seen = b""
            while wait not in seen or not seen.endswith(b"\r\n"):
                seen += self.sock.recv(1)  # one octet at a time: nothing of TLS is read
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.tls = client_tls().wrap_bio(self.incoming, self.outgoing)
        self.text = b""
        self.tcp_eof = False
        self.close_notify = False
        self._step(self.tls.do_handshake)

    def _flush(self) -> None:
        if data := self.outgoing.read():
            self.sock.sendall(data)

    def _feed(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            self.tcp_eof = True
            self.incoming.write_eof()
        else:
            self.incoming.write(data)

    def _step(self, op: Callable[[], object]) -> None:
        while True:
            try:
                op()
                self._flush()
                return
            except ssl.SSLWantReadError:
                self._flush()
                self._feed()

    def send(self, data: bytes) -> None:
        self._step(lambda: self.tls.write(data))

    def read_until(self, text: bytes) -> None:
        while text not in self.text:
            self._read_some()

    def _read_some(self) -> None:
        try:
            data = self.tls.read(65536)
        except ssl.SSLZeroReturnError:
            data = b""
        except ssl.SSLWantReadError:
            self._flush()
            self._feed()
            return
        if data:
            self.text += data
        else:  # the server's close_notify
            self.close_notify = True

    def wait_for_fin(self) -> None:
        """Read TLS until close_notify, then TCP until FIN, never answering the server's
        close_notify (a client that just waits for the connection to end)."""
        while not self.close_notify and not self.tcp_eof:
            self._read_some()
        while not self.tcp_eof:
            self._feed()


IMAP_LOGIN = b"a LOGIN bob@example.test bob-secret-2\r\n"
POP3_LOGIN = b"USER bob@example.test\r\nPASS bob-secret-2\r\n"
EHLO = b"EHLO client.test\r\n"


TLS_ENDINGS = [
    ("imaps", (), IMAP_LOGIN, b"z LOGOUT\r\n", b"z OK"),
    ("imap", ((b"", b"* OK"), (b"t STARTTLS\r\n", b"t OK")), IMAP_LOGIN, b"z LOGOUT\r\n", b"z OK"),
    ("pop3s", (), POP3_LOGIN, b"QUIT\r\n", b"+OK tw"),
    ("pop3", ((b"", b"\r\n"), (b"STLS\r\n", b"TLS")), POP3_LOGIN, b"QUIT\r\n", b"+OK tw"),
    ("submissions", (), EHLO, b"QUIT\r\n", b"221 "),
    ("smtp", ((EHLO, b"250 "), (b"STARTTLS\r\n", b"220 ")), EHLO, b"QUIT\r\n", b"221 "),
]


def test_tls_logout_sends_close_notify_and_fin(server: Server) -> None:
    """After LOGOUT/QUIT over TLS (implicit, or after STARTTLS/STLS) the server sends its
    close_notify and closes TCP without waiting for the client's close_notify (RFC 8446
    §6.1), so a client that waits for the end of the connection does not hang (issue 9)."""
    for service, prelude, login, end, reply in TLS_ENDINGS:
        c = BIOClient(server.ports[service], prelude)
        c.send(login)
        c.send(b"NOOP\r\n")
        c.read_until(b"OK")
        c.send(end)
        c.read_until(reply)
        c.wait_for_fin()
        assert (service, c.close_notify, c.tcp_eof) == (service, True, True)
        c.sock.close()


def test_connections_command_shows_open_sessions(server: Server) -> None:
    """`twistedmail connections` prints the running server's open connections per listener
    and logged-in IMAP sessions, one `NAME COUNT` per line."""
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    m.login(BOB, PASSWORDS[BOB])
    m.select("INBOX")
    try:
        assert server.cli("connections").stdout == (
            "control 1\nfolder_watchers 1\nhttp 0\nhttps 0\nimap 0\nimap_sessions 1\nimaps 1\n"
            "managesieve 0\nmetrics 0\npop3 0\npop3s 0\nsmtp 0\nsubmission 0\nsubmissions 0\n"
        )
    finally:
        m.logout()
