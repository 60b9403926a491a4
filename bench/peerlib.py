"""Shared parts of the issue-10 benches: twistedmail and Dovecot on loopback, process-tree CPU
and PSS, and the figure / twistedmail / peer / ratio table (run by hand, never by the tests).

twistedmail runs from this checkout's venv (C{twistd} next to C{sys.executable}) with a bench
config: only the listeners a bench names, C{[limits]} raised so one client IP may hold
thousands of connections.  Dovecot is the team's C{../shared/tools/peers/dovecot.sh} (its
passwd-file users test, test1..testN, the password scheme from C{PEERS_PASS_SCHEME}), with
lines appended to its config and a C{doveadm reload} when a bench needs more.

CPU of a server = utime + stime + cutime + cstime summed over the process tree, so the work
of a Dovecot child that exited (and was reaped by its parent) during a run still counts.
PSS = C{/proc/PID/smaps_rollup} summed over the same tree (Dovecot's imap and imap-login
processes included), as C{peers/rss.py} sums it.
"""

from __future__ import annotations

import os
import random
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent
DEFAULT_PEERS = next(  # ../shared beside the checkout (or beside a worktree's parent)
    (
        p / "shared" / "tools" / "peers"
        for p in (HERE.parent.parent, HERE.parent.parent.parent)
        if (p / "shared" / "tools" / "peers").is_dir()
    ),
    HERE.parent.parent / "shared" / "tools" / "peers",
)
DOMAIN = "example.test"
PASSWORD = "secret"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def raise_nofile() -> int:
    """Raise the soft open-files limit to the hard one (inherited by the servers we start)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def imaptest_work(work: Path | None, prefix: str, peers: Path) -> tuple[Path, Path]:
    """A bench's work dir (C{work}, else a fresh temp dir named C{prefix}...; readable by
    the peers' users) and the imaptest mbox in it (peers/imap_load.py's, made once)."""
    work = work or Path(tempfile.mkdtemp(prefix=prefix))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    mbox = work / "imaptest.mbox"
    if not mbox.exists():
        subprocess.run(
            [sys.executable, str(peers / "imap_load.py"), "mbox", "--out", str(mbox)],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    return work, mbox


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def wait_port(port: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while port_free(port):
        if time.monotonic() > deadline:
            raise SystemExit(f"nothing listens on 127.0.0.1:{port}")
        time.sleep(0.1)


def start_twistd(bin_dir: Path, work: Path, config: Path, port: int) -> subprocess.Popen[bytes]:
    """twistedmail under C{bin_dir/twistd} in the foreground, its log in C{work}, running
    once C{port} answers."""
    proc = subprocess.Popen(
        [
            str(bin_dir / "twistd"),
            "-n",
            "--pidfile=",
            f"--logfile={work / 'twistd.log'}",
            "twistedmail",
            "--config",
            str(config),
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.STDOUT,
    )
    wait_port(port)
    return proc


def stop_process(proc: subprocess.Popen[bytes] | None, grace: float = 60) -> None:
    """SIGTERM, then SIGKILL after C{grace} seconds."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def stop_dovecot(peers: Path, work: Path, env: dict[str, str]) -> None:
    """Stop the Dovecot that C{peers/dovecot.sh} started in C{work}."""
    subprocess.run(
        [str(peers / "dovecot.sh"), "stop", str(work)],
        env=env,
        stdout=subprocess.DEVNULL,
        check=False,
    )


def pick_port_base(offsets: Iterable[int] = (143, 993, 110, 995, 24, 1, 2, 3)) -> int:
    """A random base in 30000-31400 whose base+offset ports are all free.

    Below Linux's ephemeral range (32768-60999): thousands of client sockets on loopback (the
    idle bench holds 10,000) take ports there, which a server then fails to bind although
    nothing listens on them (a busy range the offsets up to +1295 of logins.py still fit)."""
    offsets = tuple(offsets)
    for _ in range(200):
        base = random.randrange(30000, 31400)
        if all(port_free(base + o) for o in offsets):
            return base
    raise SystemExit("no free port range found in 30000-60000")


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    try:
        for tid in os.listdir(f"/proc/{pid}/task"):
            with open(f"/proc/{pid}/task/{tid}/children") as f:
                kids += [int(x) for x in f.read().split()]
    except OSError:
        pass
    return kids


def tree(pid: int) -> list[int]:
    out, stack, seen = [], [pid], set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        out.append(p)
        stack += _children(p)
    return out


def tree_cpu_s(pid: int) -> float:
    """CPU seconds of C{pid}'s tree, reaped children included."""
    ticks = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        ticks += sum(int(x) for x in fields[11:15])  # utime stime cutime cstime
    return ticks / CLK_TCK


def tree_pss_kib(pid: int) -> tuple[int, dict[str, tuple[int, int]]]:
    """(PSS KiB of C{pid}'s tree, {process name: (count, PSS KiB)})."""
    total, by_name = 0, {}
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                pss = next(int(x.split()[1]) for x in f if x.startswith("Pss:"))
            with open(f"/proc/{p}/cmdline", "rb") as f:
                name = f.read().split(b"\0")[0].decode(errors="replace").rsplit("/", 1)[-1]
        except (OSError, StopIteration):
            continue
        total += pss
        n, k = by_name.get(name, (0, 0))
        by_name[name] = (n + 1, k + pss)
    return total, by_name


def load_average() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


class Twistedmail:
    """twistedmail from this checkout, IMAPS only, users test1..testN@example.test."""

    label = "twistedmail"

    def __init__(self, work: Path, port: int, users: int, auth: str = "", workers: int = 1) -> None:
        self.work, self.port, self.nusers, self.auth = work, port, users, auth
        self.workers = workers
        self.bin = Path(sys.executable).parent
        self.config = work / "twistedmail.toml"
        self.data = work / "data"
        self.proc: subprocess.Popen[bytes] | None = None

    def users(self) -> list[str]:
        return [f"test{i}@{DOMAIN}" for i in range(1, self.nusers + 1)]

    def write_config(self) -> None:
        off = "\n".join(
            f"{s} = []"
            for s in ("smtp", "submission", "submissions", "imap", "pop3", "pop3s", "managesieve")
        )
        self.config.write_text(
            f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "{self.data}"\n'
            f"workers = {self.workers}\n\n"
            f'[listen]\nimaps = "127.0.0.1:{self.port}"\n{off}\n\n'
            "[limits]\nmax_connections = 20000\nmax_connections_per_ip = 20000\n"
            f"imap_max_connections_per_user = 20000\n\n[auth]\n{self.auth}\n"
        )

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.write_config()
        subprocess.run(
            [str(self.bin / "twistedmail"), "--config", str(self.config), "init"],
            check=True,
            capture_output=True,
        )
        from twistedmail.accounts import AccountStore  # this checkout's code
        from twistedmail.passwords import hash_password

        store = AccountStore(self.data / "accounts.sqlite3")
        hashed = hash_password(PASSWORD)  # one hash for all, as dovecot.sh's passwd-file has
        for u in self.users():
            store.add_user(u, hashed)
        store.close()

    def start(self) -> int:
        if not port_free(self.port):  # taken since (the machine is shared): move
            self.port = pick_port_base() + 1
            self.write_config()
        self.proc = start_twistd(self.bin, self.work, self.config, self.port)
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc)
        self.proc = None


class Dovecot:
    """peers/dovecot.sh on C{port_base}, users test1..testN (passwd-file, C{scheme} hashes)."""

    def __init__(
        self,
        work: Path,
        port_base: int,
        users: int,
        scheme: str = "ARGON2ID",
        extra_conf: str = "",
        peers: Path = DEFAULT_PEERS,
        label: str = "",
    ) -> None:
        self.work, self.peers, self.nusers = work, peers, users
        self.scheme, self.extra_conf = scheme, extra_conf
        self.label = label or f"Dovecot ({scheme})"
        self.port_base = port_base
        self.port = port_base + 993
        self.env = {
            **os.environ,
            "PEERS_PORT_BASE": str(port_base),
            "PEERS_PASSWORD": PASSWORD,
            "PEERS_USERS": str(users),
            "PEERS_DOMAIN": DOMAIN,
            "PEERS_PASS_SCHEME": scheme,
        }
        self.pid = 0

    def users(self) -> list[str]:
        return [f"test{i}@{DOMAIN}" for i in range(1, self.nusers + 1)]

    def prepare(self) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        self.work.chmod(0o755)  # the auth process (user dovecot) reads the passwd-file in it
        parent = self.work.parent
        if parent.stat().st_mode & 0o005 != 0o005:
            parent.chmod(0o755)

    def start(self) -> int:
        if not all(port_free(self.port_base + o) for o in (143, 993, 110, 995, 24)):
            self.port_base = pick_port_base()  # taken since (the machine is shared): move
            self.port = self.port_base + 993
            self.env["PEERS_PORT_BASE"] = str(self.port_base)
        with open(self.work / "dovecot-start.log", "wb") as out:  # the master keeps stdout
            subprocess.run(
                [str(self.peers / "dovecot.sh"), "start", str(self.work)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        wait_port(self.port)
        conf = self.work / "dovecot" / "dovecot.conf"
        if self.extra_conf:  # dovecot.sh writes its own config: add ours, then reload
            with conf.open("a") as f:
                f.write(f"# added by bench/peerlib.py\n{self.extra_conf}\n")
            subprocess.run(["doveadm", "-c", str(conf), "reload"], check=True)
            time.sleep(2)
            wait_port(self.port)
        self.pid = int((self.work / "dovecot" / "run" / "master.pid").read_text().split()[0])
        return self.pid

    def stop(self) -> None:
        stop_dovecot(self.peers, self.work, self.env)


def median_spread(ratios: Sequence[float]) -> str:
    if not ratios:
        return "-"
    return f"{statistics.median(ratios):.3g} ({min(ratios):.3g}-{max(ratios):.3g})"


def fmt(x: float | None) -> str:
    if x is None:
        return "-"
    if x >= 100:
        return f"{x:.0f}"
    return f"{x:.3g}"


class Table:
    """Rows of (figure, twistedmail per round, peer label, peer per round) -> one table.

    Each value is the median of the rounds; the ratio is the median of the per-round ratios
    twistedmail / peer with their min-max (pair i of the rounds is one run of each server).
    """

    def __init__(self) -> None:
        self.rows: list[tuple[str, list[float], str, list[float]]] = []
        self.loads: list[str] = []

    def add(self, figure: str, ours: list[float], peer: str, theirs: list[float]) -> None:
        self.rows.append((figure, list(ours), peer, list(theirs)))

    def extend(self, other: Table) -> None:
        self.rows += other.rows
        self.loads += other.loads

    def render(self) -> str:
        head = "| figure | twistedmail | peer | ratio (min-max) |\n| --- | --: | --: | --: |\n"
        lines = []
        for figure, ours, peer, theirs in self.rows:
            ratios = [a / b for a, b in zip(ours, theirs, strict=False) if b]
            mo = statistics.median(ours) if ours else None
            mt = statistics.median(theirs) if theirs else None
            lines.append(f"| {figure} | {fmt(mo)} | {peer} {fmt(mt)} | {median_spread(ratios)} |")
        text = head + "\n".join(lines)
        if self.loads:
            text += "\n\nload average (1/5/15 min) during the runs: " + "; ".join(self.loads)
        return text
