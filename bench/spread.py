#!/usr/bin/env python3
"""How a bench's connections and CPU spread over twistedmail's processes (issue 10, run by hand).

    python3 bench/spread.py --match WORKDIR -- .venv/bin/python bench/imaptest_bench.py \
        --work WORKDIR --rounds 1 --modes logout0,mix --workers 2

Runs the command after C{--} and, every C{--every} seconds while it runs, looks at each
twistedmail process whose command line names C{WORKDIR} (the twistd parent, and the workers:
the children of the workers' zygote): its established TCP connections on the ports it
listens on (from /proc/net/tcp and its descriptors) and its CPU time (/proc/PID/stat).
Prints per part (a stretch in which one server run held connections: one bench mode) and
process: role, pid, connections (mean over the part's samples, and the largest), and CPU
seconds in the part with its share of the part's.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")


def tcp_table() -> dict[int, tuple[str, int]]:
    """Socket inode -> (state, local port) of every TCP socket."""
    out: dict[int, tuple[str, int]] = {}
    for name in ("tcp", "tcp6"):
        try:
            lines = Path(f"/proc/net/{name}").read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            out[int(f[9])] = (f[3], int(f[1].rsplit(":", 1)[1], 16))
    return out


def sockets(pid: int) -> list[int]:
    inodes = []
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.append(int(target[8:-1]))
    except OSError:
        pass
    return inodes


def stat(pid: int) -> tuple[int, float] | None:
    """(parent pid, CPU seconds) of C{pid}, or None if it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    f = text.rsplit(")", 1)[1].split()
    return int(f[1]), (int(f[11]) + int(f[12])) / TICK


def cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace")


def busy_parts(
    samples: list[tuple[float, dict[int, int], dict[int, float]]],
    run_of: dict[int, int],
    gap: float,
) -> list[list[tuple[float, dict[int, int], dict[int, float]]]]:
    """The stretches of samples in which one server run held connections (a pause shorter
    than C{gap} seconds does not end one), each with only that run's processes."""
    parts = []
    for run in sorted(set(run_of.values())):
        mine = [
            (
                t,
                {p: n for p, n in held.items() if run_of[p] == run},
                {p: c for p, c in cpu.items() if run_of[p] == run},
            )
            for t, held, cpu in samples
        ]
        part: list[tuple[float, dict[int, int], dict[int, float]]] = []
        idle_since: float | None = None
        for sample in mine:
            busy = any(sample[1].values())
            if busy:
                idle_since = None
                part.append(sample)
            elif part:
                idle_since = sample[0] if idle_since is None else idle_since
                if sample[0] - idle_since > gap:
                    parts.append(part)
                    part = []
                else:
                    part.append(sample)
        if part:
            parts.append(part)
    return parts


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--match", required=True, help="a string of the servers' command lines")
    ap.add_argument("--every", type=float, default=0.1)
    ap.add_argument("--gap", type=float, default=2.0, help="idle seconds that end a part")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    a = ap.parse_args()
    command = a.command[1:] if a.command[:1] == ["--"] else a.command
    bench = subprocess.Popen(command)
    role: dict[int, str] = {}
    run_of: dict[int, int] = {}  # pid -> its twistd parent
    samples: list[tuple[float, dict[int, int], dict[int, float]]] = []
    while bench.poll() is None:
        time.sleep(a.every)
        table = tcp_table()
        found: dict[int, tuple[int, float]] = {}
        for entry in os.listdir("/proc"):
            if entry.isdigit() and a.match in cmdline(int(entry)):
                s = stat(int(entry))
                if s is not None:
                    found[int(entry)] = s
        cpu: dict[int, float] = {}
        for pid, (ppid, seconds) in found.items():
            line = cmdline(pid)
            if "--zygote" not in line:
                role[pid], run_of[pid] = "parent", pid
            elif ppid in found and "--zygote" in cmdline(ppid):
                role[pid], run_of[pid] = "worker", found[ppid][0]
            else:
                continue  # the zygote itself
            cpu[pid] = seconds
        held: dict[int, int] = {}
        for pid in cpu:
            mine = [table[i] for i in sockets(pid) if i in table]
            ports = {port for state, port in mine if state == "0A"}
            held[pid] = sum(1 for state, port in mine if state == "01" and port in ports)
        samples.append((time.monotonic(), held, cpu))
    print("part\trole\tpid\tconnections mean\tconnections max\tCPU s\tCPU share")
    for n, part in enumerate(busy_parts(samples, run_of, a.gap), 1):
        pids = sorted({p for _, held, _ in part for p in held}, key=lambda p: (role[p], p))
        first = {p: next(c[p] for _, _, c in part if p in c) for p in pids}
        last = {p: next(c[p] for _, _, c in reversed(part) if p in c) for p in pids}
        total = sum(last[p] - first[p] for p in pids) or 1.0
        seconds = part[-1][0] - part[0][0]
        for pid in pids:
            seen = [held.get(pid, 0) for _, held, _ in part]
            used = last[pid] - first[pid]
            print(
                f"{n} ({seconds:.0f} s)\t{role[pid]}\t{pid}\t{sum(seen) / len(seen):.1f}"
                f"\t{max(seen)}\t{used:.1f}\t{used / total:.0%}"
            )
    sys.exit(bench.returncode)


if __name__ == "__main__":
    main()
