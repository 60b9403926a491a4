#!/usr/bin/env python3
"""Login benchmark (issue 10): twistedmail against Dovecot, same password scheme (run by hand).

    .venv/bin/python bench/logins.py [--rounds 3] [--secs 8] [--clients 5] [--burst 50]
        [--workers N]

Both servers hold the same users (test1..testN@example.test, password "secret") hashed with
the same argon2id parameters: Dovecot gets C{doveadm pw -s ARGON2ID} hashes in its
passwd-file (the team's peers/dovecot.sh with PEERS_PASS_SCHEME=ARGON2ID: m=65536,t=3,p=1),
twistedmail its own default (the same parameters, L{twistedmail.passwords}).  Each round
runs, one server at a time, alternating:

 - twistedmail as configured by default ([auth] cache_ttl = "5m", max_parallel_hashes = the
   number of CPUs; [server] workers = the number of CPUs unless --workers);
 - twistedmail with the cache off and no bound on hashes ([auth] cache_ttl = "0",
   max_parallel_hashes = 1024: every login hashes, as many at once as the thread pool runs,
   which is how main behaved);
 - Dovecot with its default configuration (auth_cache_size = 0: no cache), and with
   auth_cache_size = 10M, auth_cache_ttl = 5 mins (added to dovecot.sh's config, reloaded).

The first twistedmail is compared with the cached Dovecot, the second with the default one;
and, for reference, the first with Dovecot using SHA512-CRYPT (a fast hash: the figure the
issue's table started from), no cache.

For each: PSS of the server's process tree (peers/rss.py's sum, sampled every 50 ms) before
and at its peak during a burst of --burst concurrent first logins over implicit TLS (distinct
users, so every one is hashed), then LOGIN/LOGOUT per second of --clients client processes,
each a fresh TLS connection per login, over the first --clients users for --secs seconds
(returning users: with the cache they hash once).  Prints a table: figure, twistedmail,
Dovecot, ratio (twistedmail/Dovecot, the median of the per-round ratios, with min-max).
"""

from __future__ import annotations

import argparse
import imaplib
import multiprocessing
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import peerlib
from peerlib import DEFAULT_PEERS, start_twistd, stop_dovecot, stop_process, wait_port

HERE = Path(__file__).resolve().parent
DOMAIN = "example.test"
PASSWORD = "secret"


def tree_pss_kib(pid: int) -> int:
    """PSS summed over C{pid} and its descendants (as peers/rss.py sums it)."""
    return peerlib.tree_pss_kib(pid)[0]


class Twistedmail:
    def __init__(
        self, work: Path, port: int, auth: str, label: str, workers: int | None = None
    ) -> None:
        self.work, self.port, self.auth, self.label = work, port, auth, label
        self.workers = workers  # [server] workers; None: the server's default (the CPUs)
        self.bin = Path(sys.executable).parent
        self.config = work / "twistedmail.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self, users: list[str]) -> None:
        from twistedmail.accounts import AccountStore  # this checkout's code
        from twistedmail.passwords import hash_password

        self.work.mkdir(parents=True, exist_ok=True)
        data = self.work / "data"
        off = "\n".join(
            f"{s} = []" for s in ("smtp", "submission", "submissions", "imap", "pop3", "pop3s")
        )
        workers = "" if self.workers is None else f"workers = {self.workers}\n"
        self.config.write_text(
            f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "{data}"\n{workers}\n'
            f'[listen]\nimaps = "127.0.0.1:{self.port}"\n{off}\n\n'
            "[limits]\nmax_connections = 5000\nmax_connections_per_ip = 5000\n"
            f"imap_max_connections_per_user = 1000\n\n[auth]\n{self.auth}\n"
        )
        subprocess.run(
            [str(self.bin / "twistedmail"), "--config", str(self.config), "init"],
            check=True,
            capture_output=True,
        )
        store = AccountStore(data / "accounts.sqlite3")
        hashed = hash_password(PASSWORD)  # one hash for all, as the passwd-file has
        for u in users:
            store.add_user(u, hashed)
        store.close()

    def start(self) -> int:
        self.proc = start_twistd(self.bin, self.work, self.config, self.port)
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, grace=30)


class Dovecot:
    def __init__(
        self,
        work: Path,
        port_base: int,
        peers: Path,
        users: int,
        cache: bool,
        scheme: str = "ARGON2ID",
    ) -> None:
        self.work, self.peers, self.cache = work, peers, cache
        self.label = "Dovecot (auth_cache 5 min)" if cache else "Dovecot (no auth_cache)"
        if scheme != "ARGON2ID":
            self.label = f"Dovecot ({scheme}, no auth_cache)"
        self.port = port_base + 993
        self.env = {
            **os.environ,
            "PEERS_PORT_BASE": str(port_base),
            "PEERS_PASSWORD": PASSWORD,
            "PEERS_USERS": str(users),
            "PEERS_DOMAIN": DOMAIN,
            "PEERS_PASS_SCHEME": scheme,
        }

    def prepare(self, users: list[str]) -> None:
        self.work.mkdir(parents=True, exist_ok=True)

    def start(self) -> int:
        with open(self.work / "dovecot-start.log", "wb") as out:  # the master keeps stdout
            subprocess.run(
                [str(self.peers / "dovecot.sh"), "start", str(self.work)],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                check=True,
            )
        wait_port(self.port)
        if self.cache:  # dovecot.sh writes its own config: add the cache, then reload
            conf = self.work / "dovecot" / "dovecot.conf"
            with conf.open("a") as f:
                f.write("auth_cache_size = 10M\nauth_cache_ttl = 5 mins\n")
            subprocess.run(["doveadm", "-c", str(conf), "reload"], check=True)
            time.sleep(2)
            wait_port(self.port)
        pidfile = self.work / "dovecot" / "run" / "master.pid"
        deadline = time.monotonic() + 30  # on a loaded machine it may come after the port
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return int(pidfile.read_text().split()[0])

    def stop(self) -> None:
        stop_dovecot(self.peers, self.work, self.env)


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # loopback servers with self-signed certs


def login_once(port: int, user: str) -> None:
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(), timeout=300)
    try:
        c.login(user, PASSWORD)
    finally:
        c.logout()


def _client(port: int, user: str, secs: float, out: Any) -> None:
    deadline = time.monotonic() + secs
    n = 0
    while time.monotonic() < deadline:
        login_once(port, user)
        n += 1
    out.put(n)


def logins_per_second(port: int, users: list[str], secs: float) -> float:
    """LOGIN/LOGOUT on a fresh TLS connection, in a loop, one process per user."""
    for user in users:  # warm up: the first login of each user
        login_once(port, user)
    out: Any = multiprocessing.Queue()
    procs = [multiprocessing.Process(target=_client, args=(port, u, secs, out)) for u in users]
    t = time.monotonic()
    for p in procs:
        p.start()
    total = sum(out.get() for _ in procs)
    for p in procs:
        p.join()
    return total / (time.monotonic() - t)


def burst(pid: int, port: int, users: list[str]) -> tuple[int, int, float]:
    """(PSS KiB before, peak PSS KiB during, seconds) of one concurrent first login each."""
    time.sleep(1)
    before = tree_pss_kib(pid)
    peak = before
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.is_set():
            peak = max(peak, tree_pss_kib(pid))
            time.sleep(0.05)

    sampler = threading.Thread(target=sample)
    sampler.start()
    gate = threading.Barrier(len(users))
    errors: list[BaseException] = []

    def one(user: str) -> None:
        gate.wait()
        try:
            login_once(port, user)
        except BaseException as e:  # reported after the burst
            errors.append(e)

    t = time.monotonic()
    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    elapsed = time.monotonic() - t
    done.set()
    sampler.join()
    if errors:
        raise SystemExit(f"burst: {len(errors)} logins failed: {errors[0]!r}")
    return before, peak, elapsed


def measure(server: Any, users: list[str], args: argparse.Namespace) -> dict[str, float]:
    pid = server.start()
    try:
        before, peak, secs = burst(pid, server.port, users[: args.burst])
        rate = logins_per_second(server.port, users[: args.clients], args.secs)
    finally:
        server.stop()
    out = {
        "PSS before the burst (MiB)": before / 1024,
        f"peak PSS, {args.burst} concurrent first logins (MiB)": peak / 1024,
        f"{args.burst} concurrent first logins, all done (s)": secs,
        f"LOGIN/s, {args.clients} clients, TLS, returning users": rate,
    }
    print(f"  {server.label}: " + ", ".join(f"{k} {v:.1f}" for k, v in out.items()), flush=True)
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=float, default=8.0, help="seconds of LOGIN load")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--burst", type=int, default=50, help="concurrent first logins")
    ap.add_argument("--port-base", type=int, default=37000)
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument(
        "--workers",
        type=int,
        default=None,
        help="twistedmail's [server] workers (default: the server's, the CPU count)",
    )
    args = ap.parse_args()
    print(
        f"twistedmail [server] workers = {args.workers or f'the default ({os.cpu_count()} CPUs)'}",
        flush=True,
    )
    work = args.work or Path(tempfile.mkdtemp(prefix="logins-bench-"))
    work.chmod(0o755)  # Dovecot's auth process (user dovecot) reads its passwd-file in it
    n = max(args.burst, args.clients)
    users = [f"test{i}@{DOMAIN}" for i in range(1, n + 1)]
    tm = Twistedmail(
        work / "tm", args.port_base + 1, "", "twistedmail (default [auth])", args.workers
    )
    tm_off = Twistedmail(
        work / "tm-nocache",
        args.port_base + 2,
        'cache_ttl = "0"\nmax_parallel_hashes = 1024',
        "twistedmail (no cache, no bound on hashes)",
        args.workers,
    )
    dc = Dovecot(work / "dovecot-cache", args.port_base + 100, args.peers, n, cache=True)
    dc_off = Dovecot(work / "dovecot", args.port_base + 200, args.peers, n, cache=False)
    sha = Dovecot(work / "dovecot-sha", args.port_base + 300, args.peers, n, False, "SHA512-CRYPT")
    pairs = [(tm, dc), (tm_off, dc_off), (tm, sha)]
    servers = [tm, dc, tm_off, dc_off, sha]
    for s in servers:
        s.prepare(users)
    results: dict[str, list[dict[str, float]]] = {s.label: [] for s in servers}
    for r in range(args.rounds):
        print(f"round {r + 1}/{args.rounds}", flush=True)
        for server in servers if r % 2 == 0 else reversed(servers):
            results[server.label].append(measure(server, users, args))
    print()
    print(f"{'figure':58} {'twistedmail':>12} {'Dovecot':>9} {'ratio (min-max)':>18}")
    for ours_server, peer in pairs:
        mine, theirs_all = results[ours_server.label], results[peer.label]
        print(f"-- {ours_server.label} / {peer.label}")
        for key in mine[0]:
            ours = statistics.median(x[key] for x in mine)
            theirs = statistics.median(x[key] for x in theirs_all)
            ratios = [a[key] / b[key] for a, b in zip(mine, theirs_all, strict=True) if b[key]]
            spread = f"{statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})"
            print(f"{key:58} {ours:12.1f} {theirs:9.1f} {spread:>18}")
    print(f"work dir: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
