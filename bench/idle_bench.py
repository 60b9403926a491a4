#!/usr/bin/env python3
"""Memory per idle IMAP TLS connection (issue 10): twistedmail against Dovecot (run by hand).

    .venv/bin/python bench/idle_bench.py [--rounds 3] [--conns 1000,10000]

One asyncio client process (this one; the soft open-files limit raised to the hard one, which
the servers inherit) opens N implicit-TLS connections, each LOGIN test<k>@example.test (k
round robin over 20 users), SELECT INBOX (empty), IDLE, until the server's C{+}; at most
C{--parallel} set-ups at once, all of them within C{--setup-timeout} seconds.  5 s later
the PSS of every server process is summed (C{/proc/PID/smaps_rollup} of the tree: Dovecot's
master, imap-login and imap processes included); per connection = (that - the sum before
connecting) / connections established.  Then every connection is closed and the "after"
sum taken once the tree is back near its size before, or after 15 s (twistedmail's does not
come back: Python keeps its freed heap; it is printed, not used).  Every user logged in once
before the "before" sum (a running server has seen its users: twistedmail's auth cache and
lazy imports are warm, as Dovecot's auth process is).

Servers, alternating which goes first in each round:
 - twistedmail, default config but C{[limits]} raised to 20,000 connections;
 - Dovecot as peers/dovecot.sh configures it (one imap-login process per TLS connection,
   which stays to proxy TLS, and one imap process per session: Dovecot's default), with
   process limits raised to hold the connections (1,000 only: at 10,000 that is 20,000
   processes, about 19 GB here);
 - Dovecot configured for many connections: imap-login in high-performance mode
   (C{service_count = 0}, 4 processes of up to 5,000 clients) and imap processes that each
   serve up to 100 sessions (C{service_count = 0}, C{client_limit = 100}; all users share
   one UID, which that needs).
Dovecot uses SHA512-CRYPT hashes here and twistedmail its argon2id: the scheme does not
change the memory of an idle session, and 10,000 Dovecot logins at argon2id (no cache
skips the hash there) would take about 2,000 s of CPU.  Prints figure / twistedmail /
Dovecot / ratio (median of the per-round ratios, min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import ssl
import sys
import tempfile
import time
from pathlib import Path

from peerlib import (
    DEFAULT_PEERS,
    PASSWORD,
    Dovecot,
    Table,
    Twistedmail,
    load_average,
    pick_port_base,
    raise_nofile,
    tree_pss_kib,
)

USERS = 20
DOVECOT_DEFAULT = """service imap-login {
  process_limit = 1100
}
service imap {
  process_limit = 1100
}"""
DOVECOT_MANY = """service imap-login {
  service_count = 0
  process_min_avail = 4
  process_limit = 4
  client_limit = 5000
  vsz_limit = 1G
}
service imap {
  service_count = 0
  client_limit = 100
  process_limit = 250
}"""


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # loopback servers with self-signed certs


async def _until(reader: asyncio.StreamReader, tag: bytes) -> bytes:
    while True:
        line = await reader.readline()
        if not line:
            raise ConnectionError("server closed the connection")
        if line.startswith(tag):
            return line


async def open_idle(
    port: int, user: str, ctx: ssl.SSLContext
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, limit=1 << 20)
    try:
        await reader.readline()  # greeting
        writer.write(f'a LOGIN "{user}" "{PASSWORD}"\r\n'.encode())
        if not (await _until(reader, b"a ")).startswith(b"a OK"):
            raise ConnectionError(f"LOGIN {user} refused")
        writer.write(b"b SELECT INBOX\r\n")
        if not (await _until(reader, b"b ")).startswith(b"b OK"):
            raise ConnectionError("SELECT refused")
        writer.write(b"c IDLE\r\n")
        await _until(reader, b"+")
    except BaseException:
        writer.transport.abort()
        raise
    return reader, writer


async def hold_idle(
    pid: int, port: int, users: list[str], conns: int, parallel: int, timeout: float
) -> tuple[int, int, int, dict[str, tuple[int, int]], int, float]:
    """(PSS before, PSS with the connections, established, by name, PSS after, setup s)."""
    ctx = tls_context()
    for u in users:  # every user once: a running server has seen its users
        _, w = await open_idle(port, u, ctx)
        w.transport.abort()
    await asyncio.sleep(3)
    before, _ = tree_pss_kib(pid)
    gate = asyncio.Semaphore(parallel)
    held: list[asyncio.StreamWriter] = []
    failures: list[BaseException] = []

    async def one(i: int) -> None:
        async with gate:
            try:
                _, w = await open_idle(port, users[i % len(users)], ctx)
                held.append(w)
            except (OSError, ConnectionError, ssl.SSLError) as e:
                failures.append(e)

    t = time.monotonic()
    tasks = [asyncio.ensure_future(one(i)) for i in range(conns)]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    await asyncio.gather(*pending, return_exceptions=True)
    setup = time.monotonic() - t
    if failures:
        print(f"    {len(failures)} connections failed, first: {failures[0]!r}", flush=True)
    if pending:
        print(f"    {len(pending)} connections not set up within {timeout:.0f} s", flush=True)
    await asyncio.sleep(5)
    during, by_name = tree_pss_kib(pid)
    for w in held:
        w.transport.abort()
    await asyncio.sleep(0)
    after = during
    for _ in range(15):  # wait (15 s at most) for the server to let the sessions go
        await asyncio.sleep(1)
        after, _ = tree_pss_kib(pid)
        if after - before < (during - before) / 10:
            break
    return before, during, len(held), by_name, after, setup


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--conns", default="1000,10000", help="comma-separated connection counts")
    ap.add_argument("--parallel", type=int, default=50, help="set-ups at once")
    ap.add_argument("--setup-timeout", type=float, default=600)
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument(
        "--workers",
        type=int,
        default=1,
        help="twistedmail's [server] workers (default 1: the connections then share one"
        " process; the server's own default is the CPU count)",
    )
    args = ap.parse_args()
    counts = [int(x) for x in args.conns.split(",") if x]
    hard = raise_nofile()
    if max(counts) + 200 > hard:
        raise SystemExit(f"open-files hard limit {hard} is too low for {max(counts)} connections")
    work = args.work or Path(tempfile.mkdtemp(prefix="idle-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    base = pick_port_base()
    tm = Twistedmail(work / "tm", base + 1, USERS, workers=args.workers)
    print(f"twistedmail with [server] workers = {args.workers}")
    dc = Dovecot(
        work / "dovecot",
        base,
        USERS,
        "SHA512-CRYPT",
        DOVECOT_DEFAULT,
        args.peers,
        "Dovecot (default: a process per connection)",
    )
    base2 = base
    while base2 == base:  # nothing listens on base yet: pick until they differ
        base2 = pick_port_base()
    dcm = Dovecot(
        work / "dovecot-many",
        base2,
        USERS,
        "SHA512-CRYPT",
        DOVECOT_MANY,
        args.peers,
        "Dovecot (many connections: shared login and imap processes)",
    )
    # (connections, peer) pairs; Dovecot's default at 10,000 would need ~20,000 processes
    pairs = [(n, p) for n in counts for p in ([dc, dcm] if n <= 1000 else [dcm])]
    results: dict[tuple[str, int], list[float]] = {}
    table = Table()
    for s in (tm, dc, dcm):
        s.prepare()
    for r in range(args.rounds):
        table.loads.append(load_average())
        print(f"round {r + 1}/{args.rounds} (load {table.loads[-1]})", flush=True)
        runs = [(n, s) for n in counts for s in (tm, dc, dcm) if s is tm or (n, s) in pairs]
        for n, s in runs if r % 2 == 0 else list(reversed(runs)):
            pid = s.start()
            try:
                before, during, held, by_name, after, setup = asyncio.run(
                    hold_idle(pid, s.port, s.users(), n, args.parallel, args.setup_timeout)
                )
            finally:
                s.stop()
            per = (during - before) / held if held else 0.0
            results.setdefault((s.label, n), []).append(per)
            names = ", ".join(f"{k} x{c} {p // 1024} MiB" for k, (c, p) in sorted(by_name.items()))
            print(
                f"  {s.label}, {n}: {held} held (set up in {setup:.0f} s), PSS before"
                f" {before // 1024} MiB, with {during // 1024} MiB ({names}), after"
                f" {after // 1024} MiB: {per:.1f} KiB per connection",
                flush=True,
            )
    for n, peer in pairs:
        table.add(
            f"PSS per idle IMAP TLS connection ({n:,}), KiB, vs {peer.label}",
            results[(tm.label, n)],
            "Dovecot",
            results[(peer.label, n)],
        )
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
