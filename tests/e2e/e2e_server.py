"""End-to-end helpers: the real server (``twistd -n twistedmail``) on ephemeral 127.0.0.1 ports.

Nothing here mocks the server: each test gets a fresh data dir, a config file with every
listener on a free loopback port, users created with the real ``twistedmail`` CLI, and a
``twistd`` process stopped by PID at the end.
"""

from __future__ import annotations

import imaplib
import os
import random
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import imapclient

from twistedmail.config import DEFAULT_WORKERS
from twistedmail.testing import create_test_ca

BIN = Path(sys.executable).parent
SERVICES = ("smtp", "submission", "submissions", "imap", "imaps", "pop3", "pop3s", "managesieve")
PASSWORDS = {
    "alice@example.test": "alice-secret-1",
    "bob@example.test": "bob-secret-2",
}


def _ephemeral_low() -> int:
    try:
        with open("/proc/sys/net/ipv4/ip_local_port_range") as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


_handed_out: set[int] = set()


def free_ports(n: int) -> list[int]:
    """C{n} loopback ports free for TCP and UDP, never handed out twice in this run.

    They are picked below the kernel's ephemeral range: a port the kernel gave a socket
    (a client connection, a test's own listener on port 0) would otherwise be free when
    checked and taken by the time the server binds it (seen in CI as "Address already in use").
    """
    low, high = 20000, _ephemeral_low() - 1
    ports: list[int] = []
    rng = random.Random()
    while len(ports) < n:
        port = rng.randint(low, high)
        if port in _handed_out:
            continue
        try:
            for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
                with socket.socket(socket.AF_INET, kind) as s:
                    s.bind(("127.0.0.1", port))
        except OSError:
            continue
        _handed_out.add(port)
        ports.append(port)
    return ports


def client_tls() -> ssl.SSLContext:
    """A client context that accepts the server's self-signed test certificate."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class ServerLog(type(Path())):  # type: ignore[misc]
    """The server's twistd.log.  With worker processes, a worker's lines reach it through
    the parent, a moment after the worker acted (twistedmail.loglines: up to 20 ms in the
    worker, then the parent's next turn), so a client may see a reply before its log line
    is there; read_text waits until the file stopped growing for L{SETTLE} seconds (at most
    L{SETTLE_MAX}) before reading.  It reads the files twistd rotated away too (C{.N} ...
    C{.1}, then the current one: twistd rotates at 1 MB, which a test under load reaches),
    so a line logged before a rotation is still found."""

    SETTLE = 0.3
    SETTLE_MAX = 2.0
    settle = False  # set by the Server when more than one process serves

    def read_text(self, *args: object, **kwargs: object) -> str:  # type: ignore[override]
        if self.settle:
            deadline = time.monotonic() + self.SETTLE_MAX
            size, since = -1, time.monotonic()
            while time.monotonic() < deadline:
                try:
                    now = os.stat(self).st_size
                except FileNotFoundError:
                    now = -1
                if now != size:
                    size, since = now, time.monotonic()
                elif time.monotonic() - since >= self.SETTLE:
                    break
                time.sleep(0.05)
        rotated = []
        n = 1
        while (older := Path(f"{self}.{n}")).exists():
            rotated.append(older)
            n += 1
        texts = [p.read_text(*args, **kwargs) for p in reversed(rotated)]  # type: ignore[arg-type]
        return "".join([*texts, super().read_text(*args, **kwargs)])  # type: ignore[arg-type]


class Server:
    """One twistedmail server process and its data dir."""

    def __init__(
        self,
        root: Path,
        tls: tuple[Path, Path] | None = None,
        inbound: str = "check_authentication = false\n",
        web: bool = False,
        extra_config: str = "",
        workers: int | None = None,
    ) -> None:
        """@param inbound: the C{[inbound]} section; SPF/DKIM/DMARC checks are off by default
        so that no test depends on the machine's DNS (test_e2e_inbound_auth turns them on).
        @param web: also listen on C{http} and C{https} (the HTTP listener, issue 13).
        @param extra_config: more TOML sections, appended to the config file.
        @param workers: C{[server] workers} (processes serving the listeners); C{None}: the
            default (L{DEFAULT_WORKERS})."""
        self.root = root
        self.workers = workers or DEFAULT_WORKERS
        root.mkdir(parents=True, exist_ok=True)
        self.data_dir = root / "data"
        self.config = root / "twistedmail.toml"
        self.log = ServerLog(root / "twistd.log")
        self.log.settle = self.workers > 1
        self.pidfile = root / "twistd.pid"
        services = (*SERVICES, "http", "https") if web else SERVICES
        self.ports = dict(zip(services, free_ports(len(services)), strict=True))
        listen = "\n".join(f'{name} = "127.0.0.1:{port}"' for name, port in self.ports.items())
        self.config.write_text(
            f'[server]\nhostname = "mail.example.test"\ndata_dir = "{self.data_dir}"\n'
            + (f"workers = {workers}\n" if workers is not None else "")
            + "\n"
            f'[listen]\n{listen}\n\n[limits]\nmax_message_size = "1MiB"\n'
            + (f'\n[tls]\ncert = "{tls[0]}"\nkey = "{tls[1]}"\n' if tls else "")
            + f"\n[inbound]\n{inbound}"
            + extra_config
        )
        self.proc: subprocess.Popen[bytes] | None = None
        self.daemon_pid: int | None = None
        self.daemonized = False

    def cli(
        self, *args: str, stdin: str | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [str(BIN / "twistedmail"), "--config", str(self.config), *args],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=60,
        )
        if check and result.returncode != 0:
            raise AssertionError(f"twistedmail {' '.join(args)} failed: {result.stderr}")
        return result

    def add_user(self, address: str, password: str) -> None:
        """C{twistedmail user add}, after C{twistedmail init} on a fresh data dir (the CLI
        does not create a data dir by itself)."""
        if not self.data_dir.exists():
            self.cli("init")
        self.cli("user", "add", address, "--password-stdin", stdin=password + "\n")

    def start(self, twistd_args: tuple[str, ...] = (), daemon: bool = False) -> None:
        """Start C{twistd -n twistedmail} and wait until every port answers.

        @param twistd_args: extra twistd options, e.g. C{("-u", "nobody", "-g", "nogroup")}.
        @param daemon: start without C{-n}, as twistd does by default: it forks into the
            background (pid file C{twistd.pid} in the root) and the first process exits;
            L{stop} then signals the PID in the pid file.
        """
        self.daemon_pid = None
        self.daemonized = daemon
        command = [
            str(BIN / "twistd"),
            *(() if daemon else ("-n",)),
            f"--pidfile={self.pidfile}" if daemon else "--pidfile=",
            f"--logfile={self.log}",
            *twistd_args,
            "twistedmail",
            "--config",
            str(self.config),
        ]
        self.proc = subprocess.Popen(
            command, cwd=self.root, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        if daemon:
            try:
                returncode = self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                raise AssertionError("twistd did not go into the background in 60 s") from None
            out = self.proc.stdout.read().decode(errors="replace") if self.proc.stdout else ""
            if self.proc.stdout:
                self.proc.stdout.close()
            self.proc = None
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if returncode != 0:
                raise AssertionError(f"twistd exited {returncode}: {out}\n{log}")
            self.daemon_pid = int(self.pidfile.read_text().strip())
        deadline = time.monotonic() + 30
        pending = dict(self.ports)
        while pending:
            if not self.running():
                out = ""
                if self.proc is not None and self.proc.stdout:
                    out = self.proc.stdout.read().decode(errors="replace")
                log = self.log.read_text(errors="replace") if self.log.exists() else ""
                raise AssertionError(f"server exited: {out}\n{log}")
            if time.monotonic() > deadline:
                raise AssertionError("server did not start listening within 30 s")
            for name, port in list(pending.items()):
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=1).close()
                    del pending[name]
                except OSError:
                    pass
            time.sleep(0.1)
        self.wait_for_workers()

    def wait_for_workers(self, exclude: tuple[int, ...] = (), timeout: float = 60) -> list[int]:
        """Wait until the C{workers - 1} worker processes serve (each logged "worker serving"),
        leaving out the PIDs C{exclude} (workers killed by the test); return their PIDs."""
        deadline = time.monotonic() + timeout
        while True:
            pids = [p for p in self.worker_pids() if p not in exclude]
            log = self.log.read_text(errors="replace") if self.log.exists() else ""
            if len(pids) == self.workers - 1 and all(
                f"worker serving: pid {p}" in log for p in pids
            ):
                return pids
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.workers - 1} worker(s) not serving in {timeout} s")
            time.sleep(0.05)

    def worker_pids(self) -> list[int]:
        """The server's worker processes (C{[server] workers}): the children of its child
        running C{twistedmail.workers --zygote}."""
        pid = self.pid
        if pid is None:
            return []
        try:
            children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
        except OSError:
            return []
        workers = []
        for child in children:
            try:
                cmdline = Path(f"/proc/{child}/cmdline").read_bytes()
                if b"twistedmail.workers" not in cmdline:
                    continue
                # the zygote: the workers are its children, forked from it
                forked = Path(f"/proc/{child}/task/{child}/children").read_text().split()
            except OSError:
                continue
            workers += [int(pid) for pid in forked]
        return sorted(workers)

    @property
    def pid(self) -> int | None:
        """The server process's PID (the daemon's, in daemon mode), or C{None}."""
        return self.proc.pid if self.proc is not None else self.daemon_pid

    def running(self) -> bool:
        """Whether the server process is alive (a daemon's zombie counts as gone: it is
        not our child, and the container's init may never reap it)."""
        if self.proc is not None:
            return self.proc.poll() is None
        if self.daemon_pid is None:
            return False
        try:
            status = Path(f"/proc/{self.daemon_pid}/status").read_text()
        except OSError:
            return False
        return "\nState:\tZ" not in status

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.daemon_pid is not None:
            self._stop_daemon(self.daemon_pid, sig)
            return
        if self.proc is None:
            return
        if self.proc.poll() is None:
            os.kill(self.proc.pid, sig)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=15)
        if self.proc.stdout:
            self.proc.stdout.close()
        self.proc = None

    def _stop_daemon(self, pid: int, sig: int) -> None:
        """Signal the daemon by the PID of its pid file; SIGKILL it after 15 s."""
        try:
            for signum, wait in ((sig, 15.0), (signal.SIGKILL, 15.0)):
                try:
                    os.kill(pid, signum)
                except ProcessLookupError:
                    return
                deadline = time.monotonic() + wait
                while self.running() and time.monotonic() < deadline:
                    time.sleep(0.05)
                if not self.running():
                    return
        finally:
            self.daemon_pid = None

    def restart(self) -> None:
        """Stop, then start again the same way (daemonized or not)."""
        self.stop()
        self.start(daemon=self.daemonized)

    def maildir(self, address: str, folder: str = "") -> Path:
        local, domain = address.split("@")
        root = self.data_dir / "mail" / domain / local
        return root / f".{folder}" if folder else root

    def messages(self, address: str, folder: str = "") -> list[Path]:
        """Every message file of a folder (new/ and cur/), sorted by name."""
        root = self.maildir(address, folder)
        return sorted(
            p for sub in ("new", "cur") if (root / sub).is_dir() for p in (root / sub).iterdir()
        )

    def wait_for_messages(
        self, address: str, count: int, folder: str = "", timeout: float = 10
    ) -> list[Path]:
        deadline = time.monotonic() + timeout
        while True:
            found = self.messages(address, folder)
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)


# -- which process serves a connection (C{[server] workers}) ------------------------------


def _socket_inodes(local_port: int) -> set[str]:
    """The inodes of the server-side sockets whose peer is our C{local_port}."""
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if int(fields[2].rsplit(":", 1)[1], 16) == local_port:
                inodes.add(fields[9])
    return inodes


def serving_pid(server: Server, sock: socket.socket) -> int:
    """The PID of the server process (parent or worker) holding the other end of C{sock}."""
    inodes = _socket_inodes(sock.getsockname()[1])
    for pid in [server.pid, *server.worker_pids()]:
        assert pid is not None
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                return pid
    raise AssertionError(f"no server process holds the peer of port {sock.getsockname()[1]}")


def make_test_ca(directory: Path) -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate it signed for mail.example.test and
    127.0.0.1 (so a client that verifies, such as Thunderbird with a trusted CA, accepts it).

    @return: (ca_cert, server_cert_chain, server_key) PEM paths.
    """
    ca_path, cert_path, key_path = create_test_ca(directory, "mail.example.test", ("127.0.0.1",))
    cert_path.write_bytes(cert_path.read_bytes() + ca_path.read_bytes())  # the chain
    return ca_path, cert_path, key_path


# -- clients of a running server ------------------------------------------------------------


@contextmanager
def running(srv: Server, users: Mapping[str, str] | None = None) -> Iterator[Server]:
    """C{srv} with C{users} (address -> password; by default L{PASSWORDS}) added, started,
    and stopped on the way out."""
    for address, password in (PASSWORDS if users is None else users).items():
        srv.add_user(address, password)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def deliver(server: Server, to: str, subject: str, body: bytes = b"body\r\n") -> bytes:
    """Send a message from x@elsewhere.test to C{to} over port 25; return it as sent."""
    msg = (
        b"From: x@elsewhere.test\r\nTo: %s\r\nSubject: %s\r\n\r\n" % (to.encode(), subject.encode())
        + body
    )
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("x@elsewhere.test", [to], msg)
    return msg


def imap_client(server: Server, user: str = "alice@example.test") -> imapclient.IMAPClient:
    """An imapclient session over IMAPS (993), logged in as C{user} with its password."""
    c = imapclient.IMAPClient(
        "127.0.0.1", port=server.ports["imaps"], ssl=True, ssl_context=client_tls()
    )
    c.login(user, PASSWORDS[user])
    return c


def imap_login(server: Server, address: str, password: str, on: int | None = None) -> str:
    """C{OK}, or the tagged NO text, of an IMAP LOGIN on 993 (served by the process C{on},
    if given: C{[server] workers})."""
    for _ in range(200):
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        if on is None or serving_pid(server, m.sock) == on:
            break
        m.logout()
    else:
        raise AssertionError(f"200 IMAP connections, none on {on}")
    try:
        m.login(address, password)
        m.logout()
        return "OK"
    except imaplib.IMAP4.error as e:
        m.shutdown()
        return e.args[0].decode() if isinstance(e.args[0], bytes) else str(e.args[0])


class LineClient:
    """A raw CRLF line client over a socket (plain, or TLS once C{sock} is replaced by the
    wrapped one and C{buf} emptied): for hostile or hand-made input a library client would
    not send."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def line(self) -> bytes:
        """The next line without its CRLF.  @raise EOFError: the server closed first."""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def until(self, done: Callable[[bytes], bool]) -> bytes:
        """Read lines up to the first for which C{done} is true, and return it."""
        while not done(line := self.line()):
            pass
        return line
