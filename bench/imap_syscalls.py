#!/usr/bin/env python3
"""Syscall census per IMAP command (issue 10): twistedmail against Dovecot (run by hand, as
root for ptrace).

    .venv/bin/python bench/imap_syscalls.py [--workers 2] [--secs 15] [--append 100]
        [--modes logout0,append] [--tool strace|perf]

Starts both servers as bench/imaptest_bench.py does (users test1..test6, INBOX of test1..test5
prefilled with 300 messages of imaptest's mbox), then, one server at a time:

 - logout0: C{strace -f -c} attached to every process of the server (twistedmail's parent and
   workers with all their threads; Dovecot's master, which follows the imap and imap-login
   processes it forks) while imaptest runs C{logout=0} (10 clients, TLS, C{--secs});
 - append: the same around one imaplib client APPENDing C{--append} messages over TLS.

Prints, per mode, one row per syscall: calls per command (per APPEND) for twistedmail and
Dovecot, and the system time per command strace measured for each (microseconds; strace
slows both servers, so the counts are the figure, the times only show where kernel time goes).
strace's stops inflate twistedmail's futex count (its threads wait longer for the GIL: 607
per command under strace, 72 without, on main): C{--tool perf} counts twistedmail's calls
with C{perf stat} tracepoints instead (no times; Dovecot is still counted by strace, whose
C{-f} follows the processes its master forks where C{perf stat -p} does not).
The groups the issue asks about come first (fsync, rename, link, unlink, getdents64, openat,
stat family, futex, read/write/sendmsg, epoll, inotify reads via read), then the rest.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imaptest_bench import (  # noqa: E402
    APPEND_USER,
    MIX_USERS,
    append_all,
    parse_imaptest,
    prefill,
    read_mbox,
    run_imaptest,
)
from peerlib import (  # noqa: E402
    DEFAULT_PEERS,
    Dovecot,
    Twistedmail,
    imaptest_work,
    load_average,
    pick_port_base,
    raise_nofile,
    tree,
)

FIRST = (
    "fsync",
    "fdatasync",
    "rename",
    "renameat",
    "renameat2",
    "link",
    "linkat",
    "unlink",
    "unlinkat",
    "getdents64",
    "openat",
    "close",
    "stat",
    "statx",
    "newfstatat",
    "fstat",
    "lstat",
    "futex",
    "read",
    "write",
    "writev",
    "sendmsg",
    "sendto",
    "recvfrom",
    "recvmsg",
    "epoll_wait",
    "epoll_pwait",
    "epoll_ctl",
    "poll",
    "pread64",
    "pwrite64",
    "fcntl",
    "flock",
)
PERF_MORE = (
    "newstat",
    "newlstat",
    "newfstat",
    "lseek",
    "ioctl",
    "setsockopt",
    "clock_nanosleep",
    "getpid",
    "mkdir",
)


def strace_start(pids: list[int], out: Path, tool: str) -> subprocess.Popen[bytes]:
    if tool == "perf":  # counts only, without strace's stops (which inflate futex waits)
        have = Path("/sys/kernel/tracing/events/syscalls")
        names = [n for n in FIRST + PERF_MORE if (have / f"sys_enter_{n}").is_dir()]
        events = ",".join(f"syscalls:sys_enter_{n}" for n in names)
        cmd = ["perf", "stat", "-x", ",", "-o", str(out), "-e", events, "-p"]
        cmd.append(",".join(str(p) for p in pids))
    else:
        cmd = ["strace", "-f", "-c", "-o", str(out)]
        for p in pids:
            cmd += ["-p", str(p)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    time.sleep(1.5)  # attached to every thread before the load begins
    return proc


def strace_stop(proc: subprocess.Popen[bytes]) -> None:
    proc.send_signal(2)  # SIGINT: detach and write the summary
    proc.wait(timeout=60)


def parse_strace(path: Path) -> dict[str, tuple[int, float]]:
    """{syscall: (calls, seconds)} of a C{strace -c} summary or C{perf stat -x,} counts (no
    times: 0)."""
    out: dict[str, tuple[int, float]] = {}
    for line in path.read_text().splitlines():
        if ",syscalls:sys_enter_" in line:
            count, _, event = line.split(",")[:3]
            if count.isdigit():
                out[event.removeprefix("syscalls:sys_enter_")] = (int(count), 0.0)
            continue
        parts = line.split()
        if len(parts) < 5 or parts[-1] == "total" or parts[-1] == "syscall":
            continue
        try:
            seconds, calls = float(parts[1]), int(parts[3])
        except ValueError:
            continue
        out[parts[-1]] = (calls, seconds)
    return out


def census(
    server: Twistedmail | Dovecot, mode: str, mbox: Path, messages: list[bytes], args, work: Path
) -> tuple[dict[str, tuple[int, float]], int]:
    """(strace summary, commands) of one run of C{mode} against C{server}."""
    pid = server.pid
    pids = tree(pid)  # Dovecot: its master follows (-f) the processes it forks
    tag = "tm" if isinstance(server, Twistedmail) else "dc"
    # perf stat -p does not follow the processes Dovecot's master forks: strace -f does (and
    # Dovecot's single-threaded processes have no GIL hand-offs for strace's stops to inflate)
    tool = args.tool if tag == "tm" else "strace"
    out = work / f"{tool}-{mode}-{tag}.txt"
    st = strace_start(pids, out, tool)
    try:
        if mode == "append":
            append_all(server.port, APPEND_USER, messages[: args.append])
            commands = args.append
        else:
            log = work / f"imaptest-{mode}-{tag}.log"
            run_imaptest(server, pid, mbox, args.secs, ["logout=0"], log)
            commands = parse_imaptest(log.read_text())[1]
    finally:
        strace_stop(st)
    return parse_strace(out), commands


def table(
    title: str, ours: tuple[dict[str, tuple[int, float]], int], theirs: tuple[dict, int]
) -> str:
    (o, on), (t, tn) = ours, theirs
    names = [n for n in FIRST if n in o or n in t]
    rest = sorted(
        (set(o) | set(t)) - set(names),
        key=lambda n: -(o.get(n, (0, 0.0))[0] / on + t.get(n, (0, 0.0))[0] / tn),
    )
    lines = [
        f"{title} (twistedmail {on} commands, Dovecot {tn})",
        f"{'syscall':<16}{'ours/cmd':>10}{'Dovecot/cmd':>13}"
        f"{'ours us/cmd':>13}{'Dovecot us/cmd':>16}",
    ]
    total = [0.0, 0.0, 0.0, 0.0]
    for n in names + rest:
        oc, os_ = o.get(n, (0, 0.0))
        tc, ts = t.get(n, (0, 0.0))
        row = (oc / on, tc / tn, os_ * 1e6 / on, ts * 1e6 / tn)
        total = [a + b for a, b in zip(total, row, strict=True)]
        if max(row[:2]) >= 0.005:
            lines.append(f"{n:<16}{row[0]:>10.3f}{row[1]:>13.3f}{row[2]:>13.1f}{row[3]:>16.1f}")
    lines.append(
        f"{'total':<16}{total[0]:>10.2f}{total[1]:>13.2f}{total[2]:>13.1f}{total[3]:>16.1f}"
    )
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--secs", type=int, default=15)
    ap.add_argument("--append", type=int, default=100)
    ap.add_argument("--modes", default="logout0,append")
    ap.add_argument(
        "--tool", default="strace", choices=["strace", "perf"], help="perf: counts, no times"
    )
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    raise_nofile()
    work, mbox = imaptest_work(args.work, "imap-syscalls-", args.peers)
    messages = read_mbox(mbox)
    base = pick_port_base()
    tm = Twistedmail(work / "tm", base + 1, MIX_USERS + 1, workers=args.workers)
    dc = Dovecot(work / "dovecot", base, MIX_USERS + 1, "ARGON2ID", peers=args.peers)
    out: list[str] = [f"load {load_average()}, twistedmail workers={args.workers}, work {work}"]
    try:
        for s in (tm, dc):
            s.prepare()
            s.start()
            prefill(s.port, s.users()[:MIX_USERS], messages)
        for mode in modes:
            ours = census(tm, mode, mbox, messages, args, work)
            theirs = census(dc, mode, mbox, messages, args, work)
            what = "per APPEND" if mode == "append" else "per imaptest logout=0 command"
            out.append(table(f"{mode}: syscalls {what}", ours, theirs))
    finally:
        for s in (tm, dc):
            s.stop()
    out.append(f"load {load_average()}")
    print("\n\n".join(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
