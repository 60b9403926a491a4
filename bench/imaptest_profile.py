#!/usr/bin/env python3
"""py-spy on twistedmail's workers under imaptest (issue 10; run by hand, as root for ptrace).

    .venv/bin/python bench/imaptest_profile.py [--workers 2] [--secs 20] [--mode logout0|mix]

Starts twistedmail as bench/imaptest_bench.py does (users test1..test6, INBOX of test1..test5
prefilled with 300 messages of imaptest's mbox), runs imaptest (10 clients, C{logout=0} by
default) and, while it runs, C{py-spy record --gil --idle=false --format raw} on each worker
process.  Prints imaptest's command totals, the server CPU per command and where the raw
profiles are (C{--work}); fold them with any flamegraph tool or the summary this prints
(the top functions by own samples and by inclusive samples, per worker).
"""

from __future__ import annotations

import argparse
import collections
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imaptest_bench import MIX_USERS, prefill, read_mbox, run_imaptest  # noqa: E402
from peerlib import (  # noqa: E402
    CLK_TCK,
    DEFAULT_PEERS,
    Twistedmail,
    imaptest_work,
    pick_port_base,
    tree,
)

_LINE = re.compile(r":\d+\)$")
# the command a sample belongs to (the first of these in its stack) and what it does
# (the innermost match)
COMMANDS = (
    "do_FETCH",
    "do_STORE",
    "do_EXPUNGE",
    "do_APPEND",
    "do_SELECT",
    "do_LIST",
    "do_STATUS",
    "do_LOGIN",
    "do_LOGOUT",
    "do_NOOP",
    "do_CHECK",
    "do_UID",
    "do_IDLE",
    "_doRead (twistedmail/imap/watch.py",
    "Thread._bootstrap_inner",
    "TLSMemoryBIOProtocol.dataReceived",
    "IMAPProtocol.lineReceived",
    "IMAPProtocol.dataReceived",
    "IMAPProtocol._run",
    "runUntilCurrent",
    "doPoll",
)
ACTIVITIES = (
    ("TLS", "twisted/protocols/tls.py"),
    ("TLS", "OpenSSL/"),
    ("thread hop", "threadpool.py"),
    ("thread hop", "_threads/"),
    ("thread hop", "threading.py"),
    ("thread hop", "queue.py"),
    ("thread hop", "deferToThreadPool"),
    ("thread hop", "run_in_thread"),
    ("thread hop", "twistedmail/threadhop.py"),
    ("inotify", "imap/watch.py"),
    ("sqlite/index", "twistedmail/index.py"),
    ("rescan", "MaildirMailbox.refresh"),
    ("rescan", "_scan ("),
    ("render", "imap/message.py"),
    ("fetch items", "imap/fetch.py"),
    ("folder", "maildir/"),
    ("quota", "quota"),
)


def summarize(raw: Path, top: int) -> str:
    own: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    cmd: collections.Counter[str] = collections.Counter()
    act: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, n = line.rpartition(" ")
        if not stack:
            continue
        count = int(n)
        total += count
        frames = [_LINE.sub(")", f) for f in stack.split(";")]
        if frames:
            own[frames[-1]] += count
        for f in set(frames):
            incl[f] += count
        cmd[next((c for c in COMMANDS if any(c in f for f in frames)), "other")] += count
        act[next((a for f in reversed(frames) for a, m in ACTIVITIES if m in f), "other")] += count
    out = [f"{raw.name}: {total} samples", "  by command (outermost):"]
    out += [f"    {c * 100 / total:5.1f}% {f}" for f, c in cmd.most_common()]
    out.append("  by activity (innermost):")
    out += [f"    {c * 100 / total:5.1f}% {f}" for f, c in act.most_common()]
    out.append("  own:")
    out += [f"    {c * 100 / total:5.1f}% {f}" for f, c in own.most_common(top)]
    out.append("  inclusive:")
    out += [f"    {c * 100 / total:5.1f}% {f}" for f, c in incl.most_common(top * 2)]
    return "\n".join(out)


def user_system_s(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of C{pid}'s tree, reaped children included."""
    user = system = 0
    for p in tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        user += int(fields[11]) + int(fields[13])
        system += int(fields[12]) + int(fields[14])
    return user / CLK_TCK, system / CLK_TCK


def main() -> int:
    if sys.argv[1:2] == ["--summarize"]:  # --summarize RAW [TOP]
        print(summarize(Path(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) > 3 else 30))
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--secs", type=int, default=20)
    ap.add_argument("--mode", default="logout0", choices=["logout0", "mix"])
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    work, mbox = imaptest_work(args.work, "imaptest-profile-", args.peers)
    tm = Twistedmail(work / "tm", pick_port_base() + 1, MIX_USERS + 1, workers=args.workers)
    tm.prepare()
    tm.start()
    try:
        prefill(tm.port, tm.users()[:MIX_USERS], read_mbox(mbox))
        pids = list(tree(tm.pid))
        pyspy = str(Path(sys.executable).parent / "py-spy")
        print("server", tm.pid, "workers", pids, flush=True)
        spies = []
        for pid in pids:
            raw = work / f"pyspy-{pid}.txt"
            spies.append(
                (
                    raw,
                    subprocess.Popen(
                        [
                            pyspy,
                            "record",
                            "--gil",
                            "-r",
                            "500",
                            "-p",
                            str(pid),
                            "-d",
                            str(args.secs - 3),
                            "--format",
                            "raw",
                            "-o",
                            str(raw),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=open(work / f"pyspy-{pid}.err", "w"),
                    ),
                )
            )
        time.sleep(0.5)
        extra = ["logout=0"] if args.mode == "logout0" else []
        log = work / f"imaptest-{args.mode}.log"
        before = user_system_s(tm.pid)
        rate, cpu_ms, errors = run_imaptest(tm, tm.pid, mbox, args.secs, extra, log)
        after = user_system_s(tm.pid)
        for _, p in spies:
            p.wait()
        text = log.read_text().splitlines()
        i = max(i for i, line in enumerate(text) if line.startswith("Totals:"))
        print("\n".join(text[i : i + 5]))
        print(f"{rate:.1f} cmds/s, {cpu_ms:.2f} ms CPU/cmd, {errors} Error: lines; work {work}")
        user, system = after[0] - before[0], after[1] - before[1]
        print(f"user {user:.2f} s, system {system:.2f} s ({system * 100 / (user + system):.0f}%)")
        for raw, _ in spies:
            if raw.exists():
                print(summarize(raw, args.top))
    finally:
        tm.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
