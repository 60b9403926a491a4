#!/usr/bin/env python3
"""imaptest and APPEND benchmark (issue 10): twistedmail against Dovecot over TLS (run by hand).

    .venv/bin/python bench/imaptest_bench.py [--rounds 3] [--secs 20] [--modes mix,logout0,append]

Both servers hold users test1..test6@example.test with the same password hash parameters:
twistedmail its default argon2id (m=65536, t=3, p=1: L{twistedmail.passwords}), Dovecot
C{doveadm pw -s ARGON2ID} hashes (the same m=65536, t=3, p=1) in dovecot.sh's passwd-file,
no auth_cache (which, measured by bench/logins.py, still verifies the hash at each login).
twistedmail keeps its default C{[auth]} cache (a returning user's LOGIN skips the hash).
Before round 1, INBOX of test1..test5 gets 300 messages of imaptest's mbox by APPEND (the
mbox is written by peers/imap_load.py: 0.5-30 KB messages).  Then, each round, one server
at a time, alternating which goes first:

 - mix: Dovecot's imaptest (C{--imaptest}), its default command mix, 10 clients, users
   test1..test5, mailbox kept at 300 messages, C{ssl=any-cert} (implicit TLS), C{--secs};
 - logout0: the same with C{logout=0} (sessions stay logged in);
 - append: one imaplib client over TLS APPENDs C{--append} messages of the mbox to test6's
   INBOX, one after the other.

Figures: commands/s (the mean of imaptest's per-second rows, as peers/imaptest_run.sh
computes it), server CPU per command (the server's process tree, reaped children included,
divided by imaptest's total command count), APPEND msg/s; imaptest's C{Error:} lines are
counted and printed.  The table gives twistedmail, Dovecot, and the ratio twistedmail /
Dovecot (median of the per-round ratios, min-max).  Keeps the work dir (C{--work}).
"""

from __future__ import annotations

import argparse
import imaplib
import mailbox
import os
import re
import ssl
import subprocess
import sys
import threading
import time
from pathlib import Path

from peerlib import (
    DEFAULT_PEERS,
    DOMAIN,
    PASSWORD,
    Dovecot,
    Table,
    Twistedmail,
    imaptest_work,
    load_average,
    pick_port_base,
    raise_nofile,
    tree_cpu_s,
)

ROOT = Path(__file__).resolve().parent.parent  # the checkout
IMAPTEST = next(  # $IMAPTEST, or what .ci/run builds into .imaptest-build/
    (
        p
        for p in (Path(os.environ.get("IMAPTEST", "")), ROOT / ".imaptest-build" / "imaptest")
        if p.name and p.is_file()
    ),
    Path("/work/imaptest/imaptest"),
)
MIX_USERS = 5
APPEND_USER = f"test6@{DOMAIN}"


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # loopback servers with self-signed certs


def read_mbox(path: Path) -> list[bytes]:
    """The messages as imaptest APPENDs them: CRLF lines, the blank line before the next
    C{From } kept (imaptest checks that messages with one Message-ID have one size)."""
    box = mailbox.mbox(str(path), create=False)
    return [
        box.get_bytes(key).replace(b"\r\n", b"\n").replace(b"\n", b"\r\n") + b"\r\n"
        for key in box.keys()
    ]


def append_all(port: int, user: str, messages: list[bytes]) -> float:
    """APPEND every message to C{user}'s INBOX, one after the other; return msg/s."""
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(), timeout=300)
    try:
        c.login(user, PASSWORD)
        t = time.monotonic()
        for m in messages:
            typ, data = c.append("INBOX", None, None, m)
            if typ != "OK":
                raise SystemExit(f"APPEND failed: {typ} {data!r}")
        elapsed = time.monotonic() - t
        c.logout()
    finally:
        try:
            c.shutdown()
        except OSError:
            pass
    return len(messages) / elapsed


def prefill(port: int, users: list[str], messages: list[bytes]) -> None:
    errors: list[BaseException] = []

    def one(u: str) -> None:
        try:
            append_all(port, u, messages)
        except BaseException as e:  # reported below
            errors.append(e)

    threads = [threading.Thread(target=one, args=(u,)) for u in users]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    if errors:
        raise SystemExit(f"prefill failed: {errors[0]!r}")


_ROW = re.compile(r"\s\d+/\s*\d+\s*$")


def parse_imaptest(out: str) -> tuple[float, int, int]:
    """(mean commands/s over the per-second rows, total commands, Error: lines)."""
    rows, totals, ncol, in_totals = [], 0, 0, False
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("Totals:"):
            in_totals = True
            continue
        if line.startswith("Logi"):
            ncol = len(line.split())
            if in_totals:  # header, two percentage rows, then the counts
                totals = sum(int(x) for x in lines[i + 3].split()[:ncol])
            continue
        if not in_totals and ncol and _ROW.search(line):
            rows.append(sum(int(x) for x in line.split()[:ncol]))
    errors = sum(1 for line in lines if line.startswith("Error:"))
    return (sum(rows) / len(rows) if rows else 0.0), totals, errors


def run_imaptest(
    server: Twistedmail | Dovecot, pid: int, mbox: Path, secs: int, extra: list[str], log: Path
) -> tuple[float, float, int]:
    """(commands/s, server CPU ms per command, Error: lines) of one imaptest run."""
    cmd = [
        str(IMAPTEST),
        "host=127.0.0.1",
        f"port={server.port}",
        "ssl=any-cert",
        f"user=test%d@{DOMAIN}",
        f"users=1-{MIX_USERS}",
        f"pass={PASSWORD}",
        f"mbox={mbox}",
        "clients=10",
        "msgs=300",
        f"secs={secs},0",
        *extra,
    ]
    cpu0 = tree_cpu_s(pid)
    p = subprocess.run(
        cmd, capture_output=True, text=True, errors="replace", timeout=secs + 90, check=False
    )
    cpu = tree_cpu_s(pid) - cpu0
    out = p.stdout + p.stderr
    log.write_text(out)
    rate, total, errors = parse_imaptest(out)
    if not total:
        raise SystemExit(f"imaptest did no command against {server.label}; see {log}")
    return rate, cpu * 1000 / total, errors


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1, help="twistedmail's [server] workers")
    ap.add_argument("--secs", type=int, default=20, help="seconds per imaptest run")
    ap.add_argument("--append", type=int, default=200, help="messages per APPEND run")
    ap.add_argument("--modes", default="mix,logout0,append")
    ap.add_argument("--imaptest", type=Path, default=IMAPTEST)
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--work", type=Path, default=None)
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if not set(modes) <= {"mix", "logout0", "append"}:
        ap.error("--modes: mix, logout0, append")
    if not args.imaptest.exists() and set(modes) & {"mix", "logout0"}:
        raise SystemExit(f"no imaptest at {args.imaptest} (../shared/tools/imaptest builds it)")
    raise_nofile()
    work, mbox = imaptest_work(args.work, "imaptest-bench-", args.peers)
    messages = read_mbox(mbox)
    base = pick_port_base()
    tm = Twistedmail(work / "tm", base + 1, MIX_USERS + 1, workers=args.workers)
    dc = Dovecot(work / "dovecot", base, MIX_USERS + 1, "ARGON2ID", peers=args.peers)
    servers: list[Twistedmail | Dovecot] = [tm, dc]
    results: dict[str, dict[str, list[float]]] = {tm.label: {}, dc.label: {}}
    table = Table()
    try:
        for s in servers:
            s.prepare()
            s.start()
        print(f"work dir {work}; prefill: 300 messages x {MIX_USERS} users", flush=True)
        for s in servers:
            t = time.monotonic()
            prefill(s.port, s.users()[:MIX_USERS], messages)
            print(f"  {s.label}: {time.monotonic() - t:.1f} s", flush=True)
        for r in range(args.rounds):
            table.loads.append(load_average())
            print(f"round {r + 1}/{args.rounds} (load {table.loads[-1]})", flush=True)
            for s in servers if r % 2 == 0 else list(reversed(servers)):
                pid = tm.pid if s is tm else dc.pid
                got = results[s.label]
                for mode in modes:
                    if mode == "append":
                        rate = append_all(s.port, APPEND_USER, messages[: args.append])
                        got.setdefault("append", []).append(rate)
                        print(f"  {s.label} append: {rate:.1f} msg/s", flush=True)
                        continue
                    extra = ["logout=0"] if mode == "logout0" else []
                    log = work / f"imaptest-{mode}-{'tm' if s is tm else 'dc'}-{r + 1}.log"
                    rate, cpu_ms, errors = run_imaptest(s, pid, mbox, args.secs, extra, log)
                    got.setdefault(mode, []).append(rate)
                    got.setdefault(mode + " cpu", []).append(cpu_ms)
                    print(
                        f"  {s.label} {mode}: {rate:.1f} cmds/s, {cpu_ms:.2f} ms CPU/cmd,"
                        f" {errors} Error: lines",
                        flush=True,
                    )
    finally:
        for s in servers:
            s.stop()
    ours, theirs = results[tm.label], results[dc.label]
    figures = {
        "mix": "imaptest default mix, 10 clients, 5 users x 300 msgs, TLS, argon2id both (cmds/s)",
        "logout0": "imaptest `logout=0`, same (cmds/s)",
        "mix cpu": "server CPU per command, imaptest default mix (ms)",
        "logout0 cpu": "server CPU per command, imaptest `logout=0` (ms)",
        "append": "APPEND, one client, TLS (msg/s)",
    }
    for key, figure in figures.items():
        if key in ours:
            table.add(figure, ours[key], "Dovecot", theirs[key])
    print()
    print(table.render())
    return 0


if __name__ == "__main__":
    sys.exit(main())
