"""Where twistedmail's SMTP intake spends its time: py-spy on ``twistd`` under smtp-source.

    .venv/bin/python bench/smtp_profile.py [--sizes 4096,102400] [-m 1500] [--checks on|off]
        [--out DIR]

Starts one twistedmail server on 127.0.0.1 (user bench@example.test; with --checks on,
SPF/DKIM/DMARC against ../shared/tools/peers/dnsstub.py), records it with
``py-spy record --format raw --nonblocking`` (needs ptrace: run as root) while
``smtp-source -s 10 -m M -l SIZE`` sends, and prints per size the functions with the most
samples on top of the stack (self) and anywhere in the stack (total), as a share of all
samples.  The raw stacks stay in DIR (flamegraph.pl or speedscope read them).
"""

from __future__ import annotations

import argparse
import collections
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smtp_intake import BENCH, PEERS, start_twistedmail  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from e2e_server import free_ports  # noqa: E402

IDLE = ("EPollReactor.doPoll (epollreactor.py)", "Condition.wait (threading.py)")


def top(raw: Path, n: int) -> dict[str, tuple[int, list[tuple[str, int]], list[tuple[str, int]]]]:
    """Per thread kind (the reactor thread, the worker threads), the busy samples (idle
    leaves -- epoll wait, a worker waiting for work -- left out) and the functions with the
    most samples on top of the stack (self) and anywhere in it (total)."""
    kinds: dict[str, list[object]] = {}
    for line in raw.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack:
            continue
        count = int(count_text)
        process = ""
        while stack.startswith("process "):  # --subprocesses: the parent, then a worker
            head, _, stack = stack.partition('";')
            process = "worker " if "twistedmail.workers" in head else "parent "
        frames = [
            f.split(" (")[0] + " (" + f.split(" (")[-1].split(":")[0].rsplit("/", 1)[-1] + ")"
            for f in stack.split(";")
            if f
        ]
        if not frames or frames[-1] in IDLE:
            continue
        kind = process + ("reactor" if any("mainLoop" in f for f in frames) else "threads")
        samples, own, total = kinds.setdefault(
            kind, [0, collections.Counter(), collections.Counter()]
        )
        kinds[kind][0] = int(samples) + count  # type: ignore[call-overload]
        own[frames[-1]] += count  # type: ignore[index]
        for frame in set(frames):
            total[frame] += count  # type: ignore[index]
    return {
        k: (int(v[0]), v[1].most_common(n), v[2].most_common(n))  # type: ignore[attr-defined]
        for k, v in kinds.items()
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4096,102400")
    ap.add_argument("-m", type=int, default=1500)
    ap.add_argument("--checks", choices=("on", "off"), default="on")
    ap.add_argument("--out", type=Path)
    ap.add_argument("--top", type=int, default=15)
    ap.add_argument("--workers", type=int, default=1, help="[server] workers (all recorded)")
    ap.add_argument("--gil", action="store_true", help="only samples holding the GIL (CPU)")
    ap.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    ap.add_argument("--report", type=Path, help="only print the tables of an earlier raw file")
    a = ap.parse_args()
    if a.report:
        for kind, (samples, own, total) in sorted(top(a.report, a.top).items()):
            print(f"{kind}: {samples} busy samples; self / total:")
            for (name, count), (tname, tcount) in zip(own, total, strict=False):
                print(
                    f"  {100 * count / samples:5.1f}% {name:45.45}"
                    f" {100 * tcount / samples:5.1f}% {tname}"
                )
        return
    pyspy = shutil.which("py-spy") or str(Path(sys.executable).parent / "py-spy")
    out = a.out or Path(tempfile.mkdtemp(prefix="smtp-profile-"))
    out.mkdir(parents=True, exist_ok=True)
    (dns_port,) = free_ports(1)
    stub = subprocess.Popen(
        [sys.executable, str(PEERS / "dnsstub.py"), "--port", str(dns_port)],
        stdout=subprocess.DEVNULL,
    )
    server = start_twistedmail(out / "tm", dns_port, checks=a.checks == "on", workers=a.workers)
    try:
        for size in (int(x) for x in a.sizes.split(",")):
            raw = out / f"pyspy-{size}.txt"
            spy = subprocess.Popen(
                [
                    pyspy,
                    "record",
                    "--nonblocking",
                    "--subprocesses",
                    *(["--gil"] if a.gil else []),
                    "--format",
                    "raw",
                    "-r",
                    str(a.rate),
                    "-o",
                    str(raw),
                    "--pid",
                    str(server.pid),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            time.sleep(1)
            subprocess.run(
                [
                    "smtp-source",
                    "-s",
                    "10",
                    "-m",
                    str(a.m),
                    "-l",
                    str(size),
                    "-M",
                    "client.test",
                    "-f",
                    "bench-sender@client.test",
                    "-t",
                    BENCH,
                    f"127.0.0.1:{server.ports['smtp']}",
                ],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            spy.send_signal(signal.SIGINT)
            spy.wait(timeout=60)
            print(f"\n== {size} bytes, checks {a.checks} ({raw})")
            for kind, (samples, own, total) in sorted(top(raw, a.top).items()):
                print(f"{kind}: {samples} busy samples; self:")
                for name, count in own:
                    print(f"  {100 * count / samples:5.1f}%  {name}")
                print(f"{kind}: total:")
                for name, count in total:
                    print(f"  {100 * count / samples:5.1f}%  {name}")
    finally:
        server.stop()
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
