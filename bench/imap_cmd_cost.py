#!/usr/bin/env python3
"""Server CPU per IMAP command, by command kind (issue 10, run by hand).

    .venv/bin/python bench/imap_cmd_cost.py [--reps 300] [--rounds 1] [--keep]

One twistedmail from this checkout (started as bench/imaptest_bench.py starts it,
C{[server] workers = 1}: one process), IMAPS only, user test1@example.test whose INBOX gets
300 messages by APPEND first (synthetic, 1-20 KB).  One TLS client (this process, blocking
socket, one command in flight) then sends C{--reps} commands of each kind below, one kind
at a time, and reads the server's CPU (C{/proc/PID/stat} utime + stime) before and after
each batch: the table gives ms of server CPU per command of each kind, to set against the
floor of one TLS request/response on bare Twisted + pyOpenSSL (bench/floor.py: 0.042 ms on
this machine).  The client's own CPU is not counted; the machine being shared only adds
noise, not CPU to the server.  C{--profile KIND} runs that kind for C{--profile-secs}
while C{py-spy record --gil} samples the server (its raw output in the work dir).

Kinds: NOOP; SELECT INBOX; FETCH 1:* FLAGS; FETCH n BODY.PEEK[HEADER.FIELDS (...)] (n
cycling over the folder); FETCH n BODY.PEEK[]; STORE n +FLAGS / -FLAGS (\\Seen) alternating
(each one a change); UID SEARCH UNSEEN; UID SEARCH FROM; APPEND with LITERAL+ (the messages
are expunged again by the EXPUNGE kind); STORE n +FLAGS.SILENT (\\Deleted) + EXPUNGE (one
message each: the pair's cost); IDLE + DONE; and "idle": CPU per second of a logged-in,
selected session doing nothing (timers), over C{--reps / 100} seconds.
"""

from __future__ import annotations

import argparse
import os
import random
import re
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from peerlib import DOMAIN, PASSWORD, Twistedmail, load_average, pick_port_base, raise_nofile

CLK_TCK = os.sysconf("SC_CLK_TCK")
USER = f"test1@{DOMAIN}"
FOLDER_SIZE = 300
FLOOR_MS = 0.042  # bench/floor.py on this machine


def cpu_ms(pid: int) -> float:
    return sum(user_sys_ms(pid))


def user_sys_ms(pid: int) -> tuple[float, float]:
    """(utime, stime) of C{pid} in ms."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) * 1000 / CLK_TCK, int(fields[12]) * 1000 / CLK_TCK


def message(i: int) -> bytes:
    rnd = random.Random(i)
    body = b"".join(
        b"line %d of message %d: %s\r\n" % (n, i, b"x" * rnd.randrange(20, 70))
        for n in range(rnd.randrange(20, 300))
    )
    return (
        b"From: Sender %d <sender%d@example.org>\r\n"
        b"To: test1@example.test\r\n"
        b"Subject: message number %d\r\n"
        b"Date: Mon, 7 Dec 2026 09:%02d:00 +0000\r\n"
        b"Message-ID: <m%d@example.org>\r\n"
        b"MIME-Version: 1.0\r\nContent-Type: text/plain; charset=us-ascii\r\n\r\n"
        % (i % 17, i % 17, i, i % 60, i)
    ) + body


class Client:
    """A blocking IMAP client over TLS: one command at a time, literals read whole."""

    _LITERAL = re.compile(rb"\{(\d+)\}\r\n$")

    def __init__(self, port: int) -> None:
        ctx = ssl._create_unverified_context()  # the bench's self-signed certificate
        raw = socket.create_connection(("127.0.0.1", port))
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock = ctx.wrap_socket(raw)
        self.buf = b""
        self.n = 0
        self.line()  # greeting

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise SystemExit("server closed the connection")
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line + b"\r\n"

    def response(self) -> bytes:
        """One response line with its literals (a FETCH BODY[] carries one)."""
        out = self.line()
        while m := self._LITERAL.search(out):
            size = int(m.group(1))
            while len(self.buf) < size:
                data = self.sock.recv(65536)
                if not data:
                    raise SystemExit("server closed the connection")
                self.buf += data
            out += self.buf[:size]
            self.buf = self.buf[size:]
            out += self.line()
        return out

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def command(self, text: bytes, literal: bytes | None = None) -> list[bytes]:
        self.n += 1
        tag = b"c%d" % self.n
        if literal is None:
            self.send(tag + b" " + text + b"\r\n")
        else:  # LITERAL+ (RFC 7888): no continuation to wait for
            self.send(tag + b" " + text + b" {%d+}\r\n" % len(literal) + literal + b"\r\n")
        lines = []
        while True:
            r = self.response()
            lines.append(r)
            if r.startswith(tag + b" "):
                if not r.startswith(tag + b" OK"):
                    raise SystemExit(f"{text!r}: {r!r}")
                return lines

    def idle(self) -> None:
        self.n += 1
        tag = b"c%d" % self.n
        self.send(tag + b" IDLE\r\n")
        while not self.response().startswith(b"+"):
            pass
        self.send(b"DONE\r\n")
        while not (r := self.response()).startswith(tag + b" "):
            pass
        if not r.startswith(tag + b" OK"):
            raise SystemExit(f"IDLE: {r!r}")


class Kinds:
    """The command kinds, each a callable sending one command of that kind."""

    def __init__(self, c: Client) -> None:
        self.c = c
        self.i = 0
        self.seen = False
        self.appended: list[int] = []  # UIDs the APPEND kind added, for EXPUNGE

    def next_n(self) -> int:
        self.i = self.i % FOLDER_SIZE + 1
        return self.i

    def table(self) -> dict[str, Callable[[], None]]:
        c = self.c
        return {
            "NOOP": lambda: c.command(b"NOOP") and None,
            "SELECT INBOX": lambda: c.command(b"SELECT INBOX") and None,
            "FETCH 1:* FLAGS": lambda: c.command(b"FETCH 1:* FLAGS") and None,
            "FETCH n BODY.PEEK[HEADER.FIELDS]": lambda: (
                c.command(
                    b"FETCH %d (UID BODY.PEEK[HEADER.FIELDS (FROM TO SUBJECT DATE MESSAGE-ID)])"
                    % self.next_n()
                )
                and None
            ),
            "FETCH n BODY.PEEK[]": lambda: (
                c.command(b"FETCH %d BODY.PEEK[]" % self.next_n()) and None
            ),
            "STORE n +/-FLAGS (\\Seen)": self.store,
            "UID SEARCH UNSEEN": lambda: c.command(b"UID SEARCH UNSEEN") and None,
            "UID SEARCH FROM": lambda: c.command(b"UID SEARCH FROM sender3") and None,
            "APPEND (LITERAL+)": self.append,
            "STORE \\Deleted + EXPUNGE": self.expunge,
            "IDLE + DONE": c.idle,
        }

    def store(self) -> None:
        n = self.next_n()
        sign = b"-" if self.seen else b"+"
        if n == FOLDER_SIZE:
            self.seen = not self.seen
        self.c.command(b"STORE %d %sFLAGS (\\Seen)" % (n, sign))

    def append(self) -> None:
        lines = self.c.command(b"APPEND INBOX", message(10_000 + len(self.appended)))
        m = re.search(rb"APPENDUID \d+ (\d+)", lines[-1])
        self.appended.append(int(m.group(1)) if m else 0)

    def expunge(self) -> None:
        if not self.appended:
            self.append()  # not counted apart: the table says when this happened
        uid = self.appended.pop()
        self.c.command(b"UID STORE %d +FLAGS.SILENT (\\Deleted)" % uid)
        self.c.command(b"EXPUNGE")


def measure(pid: int, fn: Callable[[], None], reps: int) -> tuple[float, float, float]:
    """(server CPU ms per call, of which system, wall ms per call)."""
    fn()  # warm: the first of a kind may load or build something once
    (u0, s0), t0 = user_sys_ms(pid), time.monotonic()
    for _ in range(reps):
        fn()
    u1, s1 = user_sys_ms(pid)
    return (u1 - u0 + s1 - s0) / reps, (s1 - s0) / reps, (time.monotonic() - t0) * 1000 / reps


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--reps", type=int, default=300, help="commands per kind and round")
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--only", default="", help="comma-separated kinds (prefixes) to run")
    ap.add_argument("--profile", default="", help="a kind (prefix) to run under py-spy")
    ap.add_argument("--profile-secs", type=int, default=15)
    ap.add_argument("--all-threads", action="store_true", help="py-spy without --gil")
    ap.add_argument("--work", type=Path, default=None)
    ap.add_argument("--keep", action="store_true", help="keep the work dir")
    args = ap.parse_args()
    raise_nofile()
    work = args.work or Path(tempfile.mkdtemp(prefix="imap-cmd-cost-"))
    work.mkdir(parents=True, exist_ok=True)
    tm = Twistedmail(work / "tm", pick_port_base() + 1, 1, workers=1)
    results: dict[str, list[tuple[float, float, float]]] = {}
    try:
        tm.prepare()
        tm.start()
        c = Client(tm.port)
        c.command(b'LOGIN "%s" "%s"' % (USER.encode(), PASSWORD.encode()))
        for i in range(FOLDER_SIZE):
            c.command(b"APPEND INBOX", message(i))
        c.command(b"SELECT INBOX")
        kinds = Kinds(c)
        table = kinds.table()
        if args.profile:
            name = next(k for k in table if k.startswith(args.profile))
            out = work / ("pyspy-" + re.sub(r"\W+", "_", name) + ".txt")
            spy = subprocess.Popen(
                [
                    str(Path(sys.executable).parent / "py-spy"),
                    "record",
                    *([] if args.all_threads else ["--gil"]),
                    "-r",
                    "500",
                    "-p",
                    str(tm.pid),
                    "-d",
                    str(args.profile_secs),
                    "--format",
                    "raw",
                    "-o",
                    str(out),
                ],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.STDOUT,
            )
            time.sleep(1)
            fn, n, c0 = table[name], 0, cpu_ms(tm.pid)
            while spy.poll() is None:
                fn()
                n += 1
            print(f"{name}: {n} commands, {(cpu_ms(tm.pid) - c0) / n:.3f} ms CPU each; {out}")
            return 0
        only = [p for p in args.only.split(",") if p]
        print(f"work dir {work}; server pid {tm.pid}; load {load_average()}", flush=True)
        for r in range(args.rounds):
            for name, fn in table.items():
                if only and not any(name.startswith(p) for p in only):
                    continue
                got = measure(tm.pid, fn, args.reps)
                results.setdefault(name, []).append(got)
                print(
                    f"  round {r + 1} {name}: {got[0]:.3f} ms CPU ({got[1]:.3f} system),"
                    f" {got[2]:.2f} ms wall",
                    flush=True,
                )
            if not only or "idle" in only:
                secs = max(1, args.reps // 100)
                c0 = cpu_ms(tm.pid)
                time.sleep(secs)
                idle = (cpu_ms(tm.pid) - c0) / secs
                results.setdefault("idle (ms CPU per s)", []).append((idle, 0, 0))
        c.command(b"LOGOUT")
    finally:
        tm.stop()
        if not args.keep and args.work is None:
            shutil.rmtree(work, ignore_errors=True)
    print(f"\nload {load_average()}; {args.reps} commands per kind, {args.rounds} round(s), median")
    print("| command kind | server CPU ms/command | of which system | x floor | wall ms/command |")
    print("| --- | --: | --: | --: | --: |")
    for name, got in results.items():
        cpu, system, wall = (statistics.median(g[i] for g in got) for i in range(3))
        print(f"| {name} | {cpu:.3f} | {system:.3f} | {cpu / FLOOR_MS:.0f} | {wall:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
