#!/usr/bin/env python3
"""Every figure of issue 10's table, one bench after the other, then one table (run by hand).

    .venv/bin/python bench/run_all.py [--rounds 3] [--only smtp,imaptest,imap,logins,idle]
        [--imap-messages 20000,100000] [--quick] [--workers N]

As root (Postfix's and Dovecot's masters need it), on a machine with the peers of
C{../shared/tools/peers} (Postfix, Dovecot, C{twistd mail}) and imaptest.  Runs, in this
order, each as its own process (its output goes to the terminal as it runs and to
C{WORK/NAME.log}):

 - smtp: C{bench/smtp_intake.py} (smtp-source 10 sessions, 4 KiB and 100 KiB, fsync, checks
   on and off, vs Postfix and C{twistd mail}, with the DNS stub);
 - imaptest: C{bench/imaptest_bench.py} (imaptest default mix and C{logout=0}, 10 clients, 5
   users x 300 messages, TLS, argon2id on both; CPU per command; one-client APPEND);
 - imap: C{bench/imap_bench.py} once per server per round, alternating (C{--only}), per
   INBOX size of C{--imap-messages}: the mixed load, SELECT, SEARCH UNSEEN, FETCH ENVELOPE
   of the last 500 (it runs one server per call, so the rounds are made here);
 - logins: C{bench/logins.py} (LOGIN/s, 5 clients, TLS, against Dovecot with the same
   argon2id and with SHA512-CRYPT);
 - idle: C{bench/idle_bench.py} (PSS per idle IMAP TLS connection at 1,000 and 10,000).

Then prints every row as figure | twistedmail | peer | ratio (median of the per-round ratios,
min-max), with the load average before each bench.  twistedmail runs with C{--workers}
(default: the CPU count, the server's own default) in every bench but C{idle_bench.py},
which has no such option (1 process).  C{--quick} makes every run short (1
round, small counts: to check the harness, not to measure).
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from peerlib import load_average, median_spread, pick_port_base

HERE = Path(__file__).resolve().parent
STEPS = ("smtp", "imaptest", "imap", "logins", "idle")
IMAP_ROWS = {  # the start of imap_bench.py's row -> the figure
    "mixed load": "bench/imap_bench.py mixed load, {n} INBOX (ops/s)",
    "SELECT INBOX, first": "SELECT, first (builds the index), {n} (s)",
    "SELECT INBOX, again": "SELECT, again, {n} (s)",
    "SEARCH UNSEEN": "SEARCH UNSEEN, {n} (s)",
    "FETCH last 500 ENVELOPE": "FETCH ENVELOPE last 500, {n} (s)",
}

Row = tuple[str, str, str, str]


def run(name: str, cmd: list[str], work: Path) -> str:
    """Run one bench, teeing its output to the terminal and WORK/NAME.log; return it."""
    print(f"\n== {name}: {' '.join(cmd)}  (load {load_average()})", flush=True)
    log = work / f"{name}.log"
    out: list[str] = []
    with (
        subprocess.Popen(
            cmd, cwd=HERE.parent, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        ) as p,
        log.open("w") as f,
    ):
        assert p.stdout is not None
        for line in p.stdout:
            sys.stdout.write(line)
            f.write(line)
            out.append(line)
    if p.returncode:
        print(f"!! {name} exited {p.returncode}; see {log}", flush=True)
    return "".join(out)


def md_rows(text: str, first: str = "| figure |") -> list[list[str]]:
    """The rows of the markdown table whose header starts with C{first}."""
    rows, inside = [], False
    for line in text.splitlines():
        if line.startswith(first):
            inside = True
            continue
        if inside:
            if not line.startswith("|"):
                inside = False
                continue
            cells = [c.strip() for c in line.strip().strip("|").split("|")]
            if not cells[0].startswith("---"):
                rows.append(cells)
    return rows


def smtp_rows(text: str) -> list[Row]:
    out: list[Row] = []
    for figure, ours, peer, ratio, spread, cpu in md_rows(text):
        out.append((f"SMTP {figure} (msg/s)", ours, peer, f"{ratio} ({spread})"))
        out.append((f"server CPU per message, {figure} (ms, twistedmail / peer)", cpu, "", ""))
    return out


def logins_rows(text: str) -> list[Row]:
    out: list[Row] = []
    peer, inside = "", False
    pat = re.compile(r"^(.*?)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+ \([\d.]+-[\d.]+\))$")
    for line in text.splitlines():
        if line.startswith("figure "):
            inside = True
        elif inside and line.startswith("-- "):
            peer = line[3:].split(" / ", 1)[-1]
            ours = line[3:].split(" / ", 1)[0]
        elif inside and (m := pat.match(line)):
            out.append((f"{m[1]}, {ours}", m[2], f"{peer} {m[3]}", m[4]))
    return out


def imap_value(text: str, key: str) -> float | None:
    """A figure from imap_bench.py's table (twistedmail's or Dovecot's column, whichever
    the --only run filled)."""
    for cells in md_rows(text, "| figure"):
        name = cells[0]
        if name.startswith(key):
            for cell in cells[1:3]:
                if cell not in ("-", ""):
                    return float(cell)
    return None


def imap_rows(args: argparse.Namespace, work: Path) -> list[Row]:
    out: list[Row] = []
    for n in (int(x) for x in args.imap_messages.split(",") if x):
        got: dict[str, dict[str, list[float]]] = {"twistedmail": {}, "dovecot": {}}
        for r in range(args.rounds):
            order = ("twistedmail", "dovecot") if r % 2 == 0 else ("dovecot", "twistedmail")
            for who in order:
                base = pick_port_base()
                cmd = [
                    sys.executable, str(HERE / "imap_bench.py"), "--messages", str(n),
                    "--idle-conns", "0", "--only", who, "--port-base", str(base),
                    "--port", str(base + 1), "--load-secs", str(args.imap_load_secs),
                    "--workers", str(args.workers),
                ]  # fmt: skip
                text = run(f"imap-{n}-{who}-{r + 1}", cmd, work)
                for key in IMAP_ROWS:
                    v = imap_value(text, key)
                    if v is not None:
                        got[who].setdefault(key, []).append(v)
        for key, figure in IMAP_ROWS.items():
            ours, theirs = got["twistedmail"].get(key, []), got["dovecot"].get(key, [])
            if ours and theirs:
                ratios = [a / b for a, b in zip(ours, theirs, strict=False) if b]
                out.append(
                    (
                        figure.format(n=f"{n // 1000}k"),
                        f"{statistics.median(ours):.3g}",
                        f"Dovecot {statistics.median(theirs):.3g}",
                        median_spread(ratios),
                    )
                )
    return out


def mine_rows(text: str) -> list[Row]:
    """Rows of imaptest_bench.py / idle_bench.py (peerlib.Table's format)."""
    return [(c[0], c[1], c[2], c[3]) for c in md_rows(text) if len(c) == 4]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--only", default=",".join(STEPS), help="comma-separated: " + ",".join(STEPS))
    ap.add_argument("--imap-messages", default="20000,100000")
    ap.add_argument("--imap-load-secs", type=float, default=20)
    ap.add_argument("--idle-conns", default="1000,10000")
    ap.add_argument("--quick", action="store_true", help="1 round, small counts (a harness check)")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="twistedmail's [server] workers in every bench (default: the CPU count, as the"
        " server's default; idle_bench.py has no such option and runs 1)",
    )
    args = ap.parse_args()
    steps = [s for s in args.only.split(",") if s]
    if not set(steps) <= set(STEPS):
        ap.error(f"--only: {', '.join(STEPS)}")
    py, r, w = sys.executable, str(args.rounds), ["--workers", str(args.workers)]
    smtp = [py, str(HERE / "smtp_intake.py"), "--rounds", r, *w]
    imaptest = [py, str(HERE / "imaptest_bench.py"), "--rounds", r, *w]
    logins = [py, str(HERE / "logins.py"), "--rounds", r, *w]
    idle = [py, str(HERE / "idle_bench.py"), "--rounds", r, "--conns", args.idle_conns]
    if args.quick:
        args.rounds, args.imap_messages, args.imap_load_secs = 1, "2000", 5
        smtp = [py, str(HERE / "smtp_intake.py"), "--rounds", "1", "-m", "200", "--m-large", "60"]
        smtp += w
        imaptest = [py, str(HERE / "imaptest_bench.py"), "--rounds", "1", "--secs", "5"]
        imaptest += ["--append", "30", *w]
        logins = [py, str(HERE / "logins.py"), "--rounds", "1", "--secs", "3", "--burst", "6", *w]
        idle = [py, str(HERE / "idle_bench.py"), "--rounds", "1", "--conns", "100"]
    work = args.work or Path(tempfile.mkdtemp(prefix="issue10-"))
    work.mkdir(parents=True, exist_ok=True)
    work.chmod(0o755)
    rows: list[Row] = []
    loads: list[str] = []
    t = time.monotonic()
    for step in steps:
        loads.append(f"{step} {load_average()}")
        if step == "smtp":
            rows += smtp_rows(run("smtp", smtp + ["--work", str(work / "smtp")], work))
        elif step == "imaptest":
            rows += mine_rows(run("imaptest", imaptest + ["--work", str(work / "it")], work))
        elif step == "imap":
            rows += imap_rows(args, work)
        elif step == "logins":
            port = str(pick_port_base() + 100)  # logins.py uses base+1..base+300+995
            rows += logins_rows(run("logins", logins + ["--port-base", port], work))
        elif step == "idle":
            rows += mine_rows(run("idle", idle + ["--work", str(work / "idle")], work))
    print(
        f"\n# issue 10, {args.rounds} round(s), {(time.monotonic() - t) / 60:.0f} min,"
        f" [server] workers = {args.workers} (idle: 1)\n"
    )
    print("| figure | twistedmail | peer | ratio (min-max) |\n| --- | --: | --: | --: |")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print("\nload average (1/5/15 min) before each bench: " + "; ".join(loads))
    print(f"logs: {work}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
