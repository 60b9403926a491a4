#!/usr/bin/env python3
"""Where the memory of an idle IMAP TLS connection goes (issue 10; run by hand).

    .venv/bin/python bench/idle_profile.py [--conns 1000] [--top 25] [--no-trace]

Starts twistedmail's real C{MailServer} (the bench config of L{peerlib.Twistedmail}: IMAPS
only) in a child process of this script with C{tracemalloc} tracing 25 frames, then opens
C{--conns} idle connections as C{idle_bench.py} does (TLS, LOGIN, SELECT INBOX, IDLE), has
the server take a snapshot (after C{gc.collect()}) and its PSS, opens as many again, takes a
second snapshot, and prints per connection: the PSS growth, the bytes C{tracemalloc} saw
(Python's allocator: objects, their dicts, Deferreds, buffers), the rest (outside Python's
allocator: OpenSSL's SSL object and BIOs, plus malloc overhead), and the traced bytes grouped
by the first frame of twistedmail or Twisted code that allocated them.  Note that tracing
costs memory itself (its PSS figure is larger than with C{--no-trace}, which gives the plain
PSS per connection).
"""

from __future__ import annotations

import argparse
import asyncio
import ctypes
import gc
import linecache
import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

from idle_bench import USERS, open_idle, tls_context
from peerlib import Twistedmail, pick_port_base, raise_nofile

FRAMES = 25


class _MallInfo2(ctypes.Structure):
    _fields_ = [
        (name, ctypes.c_size_t)
        for name in (
            "arena ordblks smblks hblks hblkhd usmblks fsmblks uordblks fordblks keepcost".split()
        )
    ]


def malloc_in_use() -> int:
    """Bytes in use from glibc's malloc (OpenSSL's, and Python's blocks over 512 bytes)."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallinfo2.restype = _MallInfo2
    info = libc.mallinfo2()
    return int(info.uordblks + info.hblkhd)


def serve(config: Path, out: Path, trace: bool, with_census: bool) -> None:
    """The server side: the real service; SIGUSR1 writes a snapshot to C{out}/N.pickle."""
    from twisted.internet import reactor

    from twistedmail.config import load_config
    from twistedmail.service import MailServer

    server = MailServer(load_config(config), reactor)
    server.startService()
    count = [0]

    def dump() -> None:
        gc.collect()
        snap = tracemalloc.take_snapshot() if trace else None
        large = sum(t.size for t in snap.traces if t.size > 512) if snap else 0
        in_use = malloc_in_use()
        with open(f"/proc/{os.getpid()}/smaps_rollup") as f:
            pss = next(int(x.split()[1]) for x in f if x.startswith("Pss:"))
        count[0] += 1
        target = out / f"{count[0]}.pickle"
        with open(str(target) + ".tmp", "wb") as f:
            pickle.dump((pss, snap, census() if with_census else {}, (in_use, large)), f)
        os.rename(str(target) + ".tmp", target)

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(dump))  # type: ignore[attr-defined]
    if trace:
        tracemalloc.start(FRAMES)
    reactor.run()  # type: ignore[attr-defined]


def census() -> dict[str, tuple[int, int, int]]:
    """{type: (instances, bytes of the objects and their __dict__, of which dict)} over the
    objects the garbage collector tracks (bytes and str are not: see the traced table)."""
    owned = {}
    objects = gc.get_objects()
    for o in objects:
        d = getattr(o, "__dict__", None) if not isinstance(o, type) else None
        if type(d) is dict:
            owned[id(d)] = d
    out: dict[str, list[int]] = {}
    for o in objects:
        if id(o) in owned and type(o) is dict:
            continue
        t = type(o)
        entry = out.setdefault(f"{t.__module__}.{t.__qualname__}", [0, 0, 0])
        entry[0] += 1
        size = sys.getsizeof(o)
        d = getattr(o, "__dict__", None) if not isinstance(o, type) else None
        if type(d) is dict:
            entry[2] += sys.getsizeof(d)
            size += sys.getsizeof(d)
        entry[1] += size
    return {k: (v[0], v[1], v[2]) for k, v in out.items()}


def owner(tb: tracemalloc.Traceback) -> str:
    """The innermost frame of our code (or Twisted's, else the innermost) as file:line."""
    frames = list(reversed(tb))  # most recent call first
    mine = next((fr for fr in frames if "twistedmail/" in fr.filename), frames[0])
    return f"{_frame(frames[0])}  <-  {_frame(mine)}" if mine is not frames[0] else _frame(mine)


def _frame(fr: tracemalloc.Frame) -> str:
    name = fr.filename.split("site-packages/")[-1].split("/wt/pss/")[-1]
    return f"{name}:{fr.lineno} {linecache.getline(fr.filename, fr.lineno).strip()[:60]}"


async def connect(port: int, users: list[str], n: int, held: list[object]) -> None:
    ctx = tls_context()
    gate = asyncio.Semaphore(50)

    async def one(i: int) -> None:
        async with gate:
            _, w = await open_idle(port, users[i % len(users)], ctx)
            held.append(w)

    await asyncio.gather(*(one(i) for i in range(n)))


def snapshot(proc: subprocess.Popen[bytes], out: Path, k: int) -> tuple[int, object]:
    time.sleep(3)
    proc.send_signal(signal.SIGUSR1)
    target = out / f"{k}.pickle"
    while not target.exists():
        time.sleep(0.2)
    with open(target, "rb") as f:
        return pickle.load(f)  # type: ignore[no-any-return]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--conns", type=int, default=1000)
    ap.add_argument("--top", type=int, default=25)
    ap.add_argument("--no-trace", action="store_true")
    ap.add_argument(
        "--census",
        action="store_true",
        help="gc-tracked objects by type (materializes instance dicts: skews the rest)",
    )
    ap.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.serve:
        serve(Path(args.serve[0]), Path(args.serve[1]), not args.no_trace, args.census)
        return 0
    raise_nofile()
    work = Path(tempfile.mkdtemp(prefix="idle-profile-"))
    tm = Twistedmail(work / "tm", pick_port_base() + 1, USERS)
    tm.prepare()
    out = work / "snaps"
    out.mkdir()
    cmd = [sys.executable, __file__, "--serve", str(tm.config), str(out)]
    proc = subprocess.Popen(
        cmd + (["--no-trace"] if args.no_trace else []) + (["--census"] if args.census else []),
        cwd=tm.work,
        stdout=open(work / "server.log", "wb"),
        stderr=subprocess.STDOUT,
    )
    held: list[object] = []

    async def run() -> list[tuple[int, object]]:
        from peerlib import wait_port

        wait_port(tm.port)
        await connect(tm.port, tm.users(), USERS, held)  # warm: every user logged in once
        snaps = [snapshot(proc, out, 1)]
        await connect(tm.port, tm.users(), args.conns, held)
        snaps.append(snapshot(proc, out, 2))
        await connect(tm.port, tm.users(), args.conns, held)
        snaps.append(snapshot(proc, out, 3))
        return snaps

    try:
        snaps = asyncio.run(run())
    finally:
        proc.terminate()
        proc.wait(30)
    n = args.conns
    (p1, _, _, _), (p2, s2, c2, m2), (p3, s3, c3, m3) = snaps
    print(f"{n} -> {2 * n} idle IMAP TLS connections (plus {USERS} warm-up ones)")
    first = (p2 - p1) * 1024 / n
    print(f"PSS per connection: {(p3 - p2) * 1024 / n:.0f} B (first {n}: {first:.0f} B)")
    print(f"glibc malloc in use per connection: {(m3[0] - m2[0]) / n:.0f} B", end="")
    print(" (tracemalloc's own tables included)" if s2 is not None else "")
    if c3:
        print(f"\n{'B/conn':>8} {'of dict':>8} {'objects':>8}  gc-tracked objects by type")
    rows = []
    for k, (count, size, dsize) in c3.items():
        b = c2.get(k, (0, 0, 0))
        rows.append((size - b[1], dsize - b[2], count - b[0], k))
    for size, dsize, count, k in sorted(rows, reverse=True)[: args.top]:
        print(f"{size / n:8.0f} {dsize / n:8.0f} {count / n:8.2f}  {k}")
    if s2 is None:
        return 0
    assert isinstance(s2, tracemalloc.Snapshot) and isinstance(s3, tracemalloc.Snapshot)
    diff = s3.compare_to(s2, "traceback")
    traced = sum(d.size_diff for d in diff)
    print(f"traced by tracemalloc per connection: {traced / n:.0f} B")
    print(f"of which Python's blocks over 512 B: {(m3[1] - m2[1]) / n:.0f} B")
    print(f"outside Python's allocator (PSS - traced): {((p3 - p2) * 1024 - traced) / n:.0f} B")
    groups: dict[str, list[int]] = {}
    for d in diff:
        g = groups.setdefault(owner(d.traceback), [0, 0])
        g[0] += d.size_diff
        g[1] += d.count_diff
    print(f"\n{'B/conn':>8} {'blocks':>7}  allocated at")
    for where, (size, count) in sorted(groups.items(), key=lambda kv: -kv[1][0])[: args.top]:
        print(f"{size / n:8.0f} {count / n:7.2f}  {where}")
    if os.environ.get("IDLE_PROFILE_TRACEBACKS"):
        for d in sorted(diff, key=lambda d: -d.size_diff)[: args.top]:
            print(f"\n{d.size_diff / n:.0f} B/conn")
            print("\n".join(d.traceback.format()[-12:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
