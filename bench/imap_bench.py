#!/usr/bin/env python3
"""IMAP benchmark: twistedmail against Dovecot on copies of the same big INBOX (run by hand).

    .venv/bin/python bench/imap_bench.py [--messages 20000 100000] [--rounds 3] [--load-secs 20]
        [--idle-conns 1000] [--workers N] [--names s|sw|none] [--select-only] [--before BIN]

1. Builds an N-message INBOX once (2-20 KB messages, varied headers, some multipart, flags and
   a keyword; Maildir files and dovecot-uidlist written directly) and caches it under
   $TMPDIR/twistedmail-bench-cache/ (--cache), reused by later runs.
2. Hard-links a copy for each server (both only rename and unlink message files, never
   rewrite them) as the INBOX of test@example.test, plus users test1..test20 with empty INBOXes.
3. One server at a time, over implicit TLS, measures: LOGIN, the first (cold) SELECT and a
   second one, UID FETCH 1:* (UID FLAGS), FETCH ENVELOPE of the last 500, SEARCH UNSEEN;
   ops/s of a mixed load (the team's peers/imap_load.py: --clients imaplib clients doing
   LOGIN/SELECT/FETCH/STORE/SEARCH/LOGOUT for --load-secs); and memory per connection with
   --idle-conns logged-in IDLE connections (PSS summed over the server's process tree, from
   peers/rss.py, minus the figure before they connected).
   Each INBOX size runs --rounds rounds, the two servers alternating (twistedmail first in
   odd rounds, Dovecot first in even ones), each on a fresh copy; the idle test runs in the
   first round only.
   --names: the message files' names carry ,S= only (the default: Courier's and older
   twistedmail's names, whose size with CRLF line ends is unknown until measured), ,S= and
   ,W= (Dovecot's), or no size field. --select-only: only LOGIN, the first and second
   SELECT, and FETCH 1:* (RFC822.SIZE) twice (the sizes checked to add up to the INBOX's
   octets). --before: also run another checkout's twistedmail (its venv's bin dir) in each
   round, the three taking turns to go first, and print before/Dovecot and after/before too.
4. Prints a table per INBOX size: figure, twistedmail and Dovecot (medians over the rounds),
   and the ratio twistedmail/Dovecot (the median of the per-round ratios, min-max).

twistedmail runs from this checkout's venv (twistd next to sys.executable) with a bench config
(the server's default [server] workers, one per CPU, unless --workers; only IMAPS listens;
[limits] max_connections and max_connections_per_ip raised for the idle test). Dovecot is
the team's peers/dovecot.sh (--peers), on ports from --port-base. The Maildir format is the
one twistedmail and Dovecot share, so the bench keeps working when twistedmail adds its own
per-folder index: the index is built by the first SELECT, which is the
"cold" row.
"""

from __future__ import annotations

import argparse
import email.utils
import imaplib
import os
import random
import re
import resource
import shutil
import signal
import ssl
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from peerlib import DEFAULT_PEERS, port_free, start_twistd, stop_dovecot, stop_process, wait_port

HERE = Path(__file__).resolve().parent
GENERATOR_VERSION = 1
DOMAIN = "example.test"
USER = f"test@{DOMAIN}"
PASSWORD = "secret"
IDLE_USERS = 20
NOBODY = 65534

WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu meeting report "
    "invoice lunch release server backup question update review budget travel photo draft "
    "schedule holiday garden project weekly summary the a of and to in is for on with"
).split()
NAMES = [
    "Alice Adams",
    "Bob Brown",
    "Carol Clark",
    "Dave Davis",
    "Eve Evans",
    "Frank Fox",
    "Grace Green",
    "Heidi Hall",
    "Ivan Irwin",
    "Judy Jones",
    "Mallory Moore",
    "Niaj Nash",
    "Olivia Owens",
    "Peggy Price",
    "Rupert Reed",
    "Sybil Scott",
    "Trent Turner",
    "Zoe Young",
]
LISTS = ["dev", "announce", "users", "ops", "family"]


# ------------------------------------------------------------------ the mailbox


def _paragraphs(rnd: random.Random) -> list[bytes]:
    out = []
    for _ in range(300):
        lines = []
        for _ in range(rnd.randint(3, 12)):
            lines.append(" ".join(rnd.choice(WORDS) for _ in range(rnd.randint(6, 13))))
        out.append(("\r\n".join(lines) + "\r\n\r\n").encode())
    return out


def _message(rnd: random.Random, i: int, t: int, paras: list[bytes], ids: list[str]) -> bytes:
    frm, to = rnd.choice(NAMES), rnd.choice(NAMES)
    subject = " ".join(rnd.choice(WORDS) for _ in range(rnd.randint(2, 8))).capitalize()
    mid = f"<{i}.{rnd.getrandbits(40):x}@gen.{DOMAIN}>"
    hdr = [
        f"Return-Path: <{frm.split()[0].lower()}@{DOMAIN}>",
        f"Received: from mx{rnd.randint(1, 9)}.elsewhere.test"
        f" (mx.elsewhere.test [192.0.2.{rnd.randint(1, 254)}])"
        f"\r\n\tby mail.{DOMAIN} with ESMTPS id {rnd.getrandbits(48):x}"
        f"\r\n\tfor <test@{DOMAIN}>; {email.utils.formatdate(t)}",
        f'From: "{frm}" <{frm.split()[0].lower()}@{DOMAIN}>',
        f"To: {to} <{to.split()[0].lower()}@{DOMAIN}>",
    ]
    if rnd.random() < 0.3:
        cc = rnd.sample(NAMES, rnd.randint(1, 4))
        hdr.append("Cc: " + ",\r\n ".join(f"{n} <{n.split()[0].lower()}@{DOMAIN}>" for n in cc))
    if ids and rnd.random() < 0.35:
        parent = rnd.choice(ids[-50:])
        hdr += [f"In-Reply-To: {parent}", f"References: {parent}"]
        subject = "Re: " + subject
    if rnd.random() < 0.2:
        lst = rnd.choice(LISTS)
        hdr += [f"List-Id: <{lst}.lists.{DOMAIN}>", f"Sender: {lst}-bounces@lists.{DOMAIN}"]
        subject = f"[{lst}] {subject}"
    hdr += [f"Subject: {subject}", f"Date: {email.utils.formatdate(t)}", f"Message-ID: {mid}"]
    ids.append(mid)
    size = max(2000, min(20000, int(rnd.lognormvariate(8.6, 0.6))))  # median ~5.4 KB
    body = b""
    while len(body) < size:
        body += rnd.choice(paras)
    body = body[:size].rsplit(b"\r\n", 1)[0] + b"\r\n"
    head = "\r\n".join(hdr).encode() + b"\r\nMIME-Version: 1.0\r\n"
    if rnd.random() < 0.15:
        boundary = f"=_b{rnd.getrandbits(32):x}"
        half = body[: len(body) // 2]
        return (
            head
            + f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'.encode()
            + f"--{boundary}\r\nContent-Type: text/plain; charset=utf-8\r\n\r\n".encode()
            + half
            + f"--{boundary}\r\nContent-Type: text/html; charset=utf-8\r\n\r\n".encode()
            + b"<html><body><p>"
            + half
            + f"</p></body></html>\r\n--{boundary}--\r\n".encode()
        )
    return head + b"Content-Type: text/plain; charset=us-ascii\r\n\r\n" + body


def build_inbox(path: Path, count: int, seed: int = 1) -> None:
    """Write an INBOX Maildir of C{count} messages with its dovecot-uidlist, fast."""
    rnd = random.Random(seed)
    paras = _paragraphs(rnd)
    for sub in ("cur", "new", "tmp"):
        (path / sub).mkdir(parents=True, exist_ok=True)
    t = int(time.time()) - count * 300 - 86400
    ids: list[str] = []
    uidlist = [f"3 V{t} N{count + 1} G{uuid.uuid4().hex}"]
    cur = path / "cur"
    for i in range(1, count + 1):
        t += rnd.randint(1, 599)
        data = _message(rnd, i, t, paras, ids)
        recent = i > count * 0.97
        flags = ""
        if rnd.random() < 0.04:
            flags += "F"
        if rnd.random() < 0.1:
            flags += "R"
        if not recent and rnd.random() < 0.9:
            flags += "S"
        if rnd.random() < 0.02:
            flags += "a"  # $Junk, see dovecot-keywords
        base = f"{t}.M{i}P{seed}Q{i}.bench,S={len(data)}"
        name = cur / f"{base}:2,{flags}"
        with open(name, "wb") as f:
            f.write(data)
        os.utime(name, (t, t))
        uidlist.append(f"{i} :{base}")
    (path / "dovecot-uidlist").write_text("\n".join(uidlist) + "\n")
    (path / "dovecot-keywords").write_text("0 $Junk\n")


def cached_inbox(cache: Path, count: int) -> Path:
    path = cache / f"inbox-{count}-v{GENERATOR_VERSION}"
    if (path / "complete").exists():
        print(f"using the cached INBOX {path}", flush=True)
        return path
    shutil.rmtree(path, ignore_errors=True)
    t0 = time.monotonic()
    print(f"building a {count}-message INBOX in {path} ...", flush=True)
    build_inbox(path, count)
    (path / "complete").touch()
    print(f"  built in {time.monotonic() - t0:.0f} s", flush=True)
    return path


NAME_FORMS = ("s", "sw", "none")


def renamed(base: str, form: str) -> str:
    """A generated base name with the size fields of C{--names form}: C{s} C{,S=} only (as
    generated: Courier's and older twistedmail's names, no Dovecot C{,W=}), C{sw} C{,S=}
    and C{,W=} (Dovecot's and twistedmail's; the generated files have CRLF line ends, so W
    equals S), C{none} neither (a tool that names no size)."""
    if form == "s":
        return base
    stem, _, size = base.partition(",S=")
    return f"{stem},S={size},W={size}" if form == "sw" else stem


def link_copy(src: Path, dst: Path, uid: int | None = None, form: str = "s") -> None:
    """Copy the Maildir C{src} to C{dst}: message files hard-linked (named as C{--names
    form} says, L{renamed}), the rest copied."""
    for sub in ("cur", "new", "tmp"):
        (dst / sub).mkdir(parents=True, exist_ok=True)
        for name in os.listdir(src / sub):
            base, sep, flags = name.partition(":2,")
            os.link(src / sub / name, dst / sub / (renamed(base, form) + sep + flags))
    for name in ("dovecot-uidlist", "dovecot-keywords"):
        shutil.copy2(src / name, dst / name)
    if form != "s":
        head, *records = (dst / "dovecot-uidlist").read_text().splitlines()
        out = [head]
        for line in records:
            number, sep, base = line.partition(" :")
            out.append(number + sep + renamed(base, form))
        (dst / "dovecot-uidlist").write_text("\n".join(out) + "\n")
    if uid is not None:
        for dirpath, _dirs, files in os.walk(dst):
            os.chown(dirpath, uid, uid)
            for name in files:
                os.chown(os.path.join(dirpath, name), uid, uid)


# ------------------------------------------------------------------ the servers


class Twistedmail:
    name = "twistedmail"

    def __init__(
        self,
        work: Path,
        port: int,
        workers: int | None = None,
        form: str = "s",
        bin_dir: Path | None = None,
        name: str = "twistedmail",
    ) -> None:
        self.work, self.port, self.workers, self.form = work, port, workers, form
        self.bin = bin_dir or Path(sys.executable).parent  # --before: another checkout's venv
        self.name = name
        self.config = work / "twistedmail.toml"
        self.proc: subprocess.Popen[bytes] | None = None

    def prepare(self, inbox: Path, idle_users: int = IDLE_USERS) -> None:
        self.work.mkdir(parents=True, exist_ok=True)
        data = self.work / "data"
        listen = "\n".join(
            f"{s} = []"
            # every other listener off (managesieve's default 0.0.0.0:4190 may be taken)
            for s in ("smtp", "submission", "submissions", "imap", "pop3", "pop3s", "managesieve")
        )
        # [server] workers: the server's default (the CPU count) unless --workers says
        workers = "" if self.workers is None else f"workers = {self.workers}\n"
        self.config.write_text(
            f'[server]\nhostname = "mail.{DOMAIN}"\ndata_dir = "{data}"\n{workers}\n'
            f'[listen]\nimaps = "127.0.0.1:{self.port}"\n{listen}\n\n'
            "[limits]\nmax_connections = 5000\nmax_connections_per_ip = 5000\n"
            # the idle test opens --idle-conns / IDLE_USERS per user (Dovecot's peer config
            # allows 1000: mail_max_userip_connections); the default 10 stopped it there
            "imap_max_connections_per_user = 1000\n"
        )
        users = [USER] + [f"test{i}@{DOMAIN}" for i in range(1, idle_users + 1)]
        print(f"twistedmail: adding {len(users)} users (argon2id hashing) ...", flush=True)
        subprocess.run(  # the first setup: user add does not create the data dir
            [str(self.bin / "twistedmail"), "--config", str(self.config), "init"],
            text=True,
            check=True,
            capture_output=True,
        )
        for u in users:
            subprocess.run(
                [
                    str(self.bin / "twistedmail"),
                    "--config",
                    str(self.config),
                    "user",
                    "add",
                    u,
                    "--password-stdin",
                ],
                input=PASSWORD + "\n",
                text=True,
                check=True,
                capture_output=True,
            )
        link_copy(inbox, data / "mail" / DOMAIN / "test", form=self.form)

    def start(self) -> int:
        self.proc = start_twistd(self.bin, self.work, self.config, self.port)
        return self.proc.pid

    def stop(self) -> None:
        stop_process(self.proc, grace=30)


class Dovecot:
    name = "Dovecot"

    def __init__(self, work: Path, port_base: int, peers: Path, form: str = "s") -> None:
        self.work, self.peers, self.form = work, peers, form
        self.port = port_base + 993
        self.env = {
            **os.environ,
            "PEERS_PORT_BASE": str(port_base),
            "PEERS_PASSWORD": PASSWORD,
            "PEERS_USERS": str(IDLE_USERS),
            "PEERS_DOMAIN": DOMAIN,
        }

    def prepare(self, inbox: Path, idle_users: int = IDLE_USERS) -> None:
        uid = NOBODY if os.getuid() == 0 else os.getuid()
        home = self.work / "vmail" / DOMAIN / "test"
        link_copy(inbox, home / "Maildir", uid, self.form)
        for p in (self.work / "vmail", self.work / "vmail" / DOMAIN, home):
            os.chown(p, uid, uid)

    def start(self) -> int:
        for attempt in range(3):  # the last round's master may still be letting go of a port
            with open(self.work / "dovecot-start.log", "wb") as out:  # the master keeps stdout
                started = subprocess.run(
                    [str(self.peers / "dovecot.sh"), "start", str(self.work)],
                    env=self.env,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    check=False,
                )
            if started.returncode == 0:
                break
            log = (self.work / "dovecot-start.log").read_text(errors="replace")
            print(f"Dovecot did not start (attempt {attempt + 1}):\n{log}", flush=True)
            self.stop()
            time.sleep(5)
        else:
            raise SystemExit("Dovecot did not start")
        wait_port(self.port)
        pidfile = self.work / "dovecot" / "run" / "master.pid"
        deadline = time.monotonic() + 30  # on a loaded machine it may come after the port
        while not pidfile.exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        return int(pidfile.read_text().split()[0])

    def stop(self) -> None:
        stop_dovecot(self.peers, self.work, self.env)


# ------------------------------------------------------------------ the measurements


def tls_context() -> ssl.SSLContext:
    return ssl._create_unverified_context()  # loopback test servers with self-signed certs


def timed(fn, *args):  # type: ignore[no-untyped-def]
    t = time.perf_counter()
    typ, data = fn(*args)
    dt = time.perf_counter() - t
    if typ != "OK":
        raise SystemExit(f"{fn.__name__}{args[:2]}: {typ} {data[:1]!r}")
    return dt, data


def single_client(port: int, count: int, octets: int = 0) -> dict[str, float]:
    """The single-client figures; with C{octets} (C{--select-only}: the INBOX's size with
    CRLF line ends) only the SELECTs and a FETCH of every RFC822.SIZE, checked to add up."""
    out: dict[str, float] = {}
    t = time.perf_counter()
    c = imaplib.IMAP4_SSL("127.0.0.1", port, ssl_context=tls_context(), timeout=600)
    out["connect + TLS (s)"] = time.perf_counter() - t
    out["LOGIN (s)"], _ = timed(c.login, USER, PASSWORD)
    out["SELECT INBOX, first (s)"], data = timed(c.select, "INBOX")
    exists = int(data[0])
    if exists != count:
        raise SystemExit(f"INBOX has {exists} messages, expected {count}")
    c.close()
    out["SELECT INBOX, again (s)"], _ = timed(c.select, "INBOX")
    if octets:
        for when in ("first", "again"):
            key = f"FETCH 1:* (RFC822.SIZE), {when} (s)"
            out[key], data = timed(c.fetch, "1:*", "(RFC822.SIZE)")
            sizes = [int(m.group(1)) for m in map(_SIZE.search, data) if m]
            if len(sizes) != count or sum(sizes) != octets:
                raise SystemExit(f"RFC822.SIZE: {len(sizes)} sizes, {sum(sizes)} octets")
        c.logout()
        return out
    out["UID FETCH 1:* (UID FLAGS) (s)"], data = timed(c.uid, "FETCH", "1:*", "(UID FLAGS)")
    if len(data) != count:
        raise SystemExit(f"UID FETCH returned {len(data)} lines")
    first = max(1, count - 499)
    out["FETCH last 500 ENVELOPE (s)"], data = timed(c.fetch, f"{first}:*", "(ENVELOPE)")
    out["SEARCH UNSEEN (s)"], data = timed(c.search, None, "UNSEEN")
    # header searches and SORT: answered from the header cache once it is filled (the first
    # one fills it on twistedmail, as Dovecot's first one fills dovecot.index.cache)
    out["SEARCH FROM, first (s)"], data = timed(c.search, None, "FROM", "alice")
    out["SEARCH FROM, again (s)"], data = timed(c.search, None, "FROM", "bob")
    out["SEARCH SUBJECT (s)"], data = timed(c.search, None, "SUBJECT", "report")
    out["SORT (DATE) ALL (s)"], data = timed(c.sort, "(DATE)", "UTF-8", "ALL")
    out["SEARCH SUBJECT x BODY y (s)"], data = timed(
        c.search, None, "SUBJECT", "invoice", "BODY", "zulu"
    )
    c.logout()
    return out


_SIZE = re.compile(rb"RFC822\.SIZE (\d+)")


def mixed_load(port: int, peers: Path, clients: int, secs: float, cmds: int) -> tuple[float, int]:
    """(commands/s, errors) of peers/imap_load.py load."""
    result = subprocess.run(
        [
            sys.executable,
            str(peers / "imap_load.py"),
            "load",
            "--port",
            str(port),
            "--tls",
            "--users",
            USER,
            "--password",
            PASSWORD,
            "--clients",
            str(clients),
            "--secs",
            str(secs),
            "--cmds",
            str(cmds),
        ],
        capture_output=True,
        text=True,
        timeout=secs + 300,
    )
    print(result.stdout, end="", flush=True)
    m = re.search(r"commands, ([\d.]+) cmds/s, .*, (\d+) errors", result.stdout)
    if not m:
        raise SystemExit("imap_load load failed: " + result.stdout + result.stderr)
    return float(m.group(1)), int(m.group(2))


def tree_pss_kib(pid: int, peers: Path) -> tuple[int, int]:
    out = subprocess.run(
        [sys.executable, str(peers / "rss.py"), str(pid)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rss = int(re.search(r"rss_kib=(\d+)", out).group(1))  # type: ignore[union-attr]
    pss = int(re.search(r"pss_kib=(\d+)", out).group(1))  # type: ignore[union-attr]
    return rss, pss


def idle_memory(pid: int, port: int, peers: Path, conns: int) -> tuple[float, int, int]:
    """(PSS KiB per connection, PSS KiB before, connections that reached IDLE)."""
    time.sleep(2)
    _, before = tree_pss_kib(pid, peers)
    with tempfile.TemporaryDirectory() as tmp:
        ready = Path(tmp) / "ready"
        client = subprocess.Popen(
            [
                sys.executable,
                str(peers / "imap_load.py"),
                "idle",
                "--port",
                str(port),
                "--tls",
                "--user-template",
                f"test%d@{DOMAIN}",
                "--range",
                f"1-{IDLE_USERS}",
                "--password",
                PASSWORD,
                "--conns",
                str(conns),
                "--hold",
                "1800",
                "--ready-file",
                str(ready),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        deadline = time.monotonic() + 1800
        while not ready.exists() and client.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        time.sleep(5)
        _, during = tree_pss_kib(pid, peers)
        n = int(ready.read_text()) if ready.exists() else 0
        client.send_signal(signal.SIGTERM)
        out, _ = client.communicate(timeout=600)
    print(out, end="", flush=True)
    if n == 0:
        raise SystemExit("no idle connection was established")
    return (during - before) / n, before, n


def measure(  # type: ignore[no-untyped-def]
    server, inbox: Path, count: int, args: argparse.Namespace, first: bool
) -> dict[str, float]:
    """One round of one server on a fresh copy of C{inbox}: the single-client figures, the
    mixed load (C{--load-secs} > 0) and, in the first round only, the idle memory test."""
    print(f"== {server.name}, {count} messages", flush=True)
    server.prepare(inbox)
    pid = server.start()
    try:
        out = single_client(server.port, count, args.octets if args.select_only else 0)
        for k, v in out.items():
            print(f"  {k}: {v:.3f}", flush=True)
        if args.load_secs > 0:
            ops, errors = mixed_load(
                server.port, args.peers, args.clients, args.load_secs, args.cmds
            )
            out[f"mixed load, {args.clients} clients (ops/s)"] = ops
            out["mixed load errors (timeouts, ...)"] = errors
        if args.idle_conns and first:
            per, before, n = idle_memory(pid, server.port, args.peers, args.idle_conns)
            out["server PSS before idle test (MiB)"] = before / 1024
            out[f"PSS per IDLE connection, {n} conns (KiB)"] = per
    finally:
        server.stop()
    return out


def median(values: list[float]) -> float:
    ordered = sorted(values)
    mid = len(ordered) // 2
    return ordered[mid] if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2


def _num(value: float) -> str:
    return f"{value:.3f}" if value < 100 else f"{value:.0f}"


def table(
    rounds: list[dict[str, dict[str, float]]], a: str = "twistedmail", b: str = "dovecot"
) -> str:
    """figure | a | b | ratio: the medians over the rounds, and the median of the
    per-round ratios a / b (min-max when there are several); a and b are sides
    (twistedmail, Dovecot, and with --before the baseline)."""
    la, lb = (_LABELS[a], _LABELS[b])
    lines = [
        f"| {'figure':<44} | {la:>11} | {lb:>11} | {'ratio (min-max)':>19} |",
        f"| {'-' * 44} | {'-' * 10}: | {'-' * 10}: | {'-' * 18}: |",
    ]
    keys = list(dict.fromkeys(k for r in rounds for side in r.values() for k in side))
    for key in keys:
        tm = [r[a][key] for r in rounds if key in r.get(a, {})]
        dc = [r[b][key] for r in rounds if key in r.get(b, {})]
        ratios = [
            r[a][key] / r[b][key] for r in rounds if key in r.get(a, {}) and r.get(b, {}).get(key)
        ]
        ratio = "-"
        if ratios:
            ratio = f"{median(ratios):.2f}"
            if len(ratios) > 1:
                ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        fa = _num(median(tm)) if tm else "-"
        fb = _num(median(dc)) if dc else "-"
        lines.append(f"| {key:<44} | {fa:>11} | {fb:>11} | {ratio:>19} |")
    return "\n".join(lines)


_LABELS = {"twistedmail": "twistedmail", "dovecot": "Dovecot", "before": "before"}


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--messages",
        type=int,
        nargs="+",
        default=[20_000, 100_000],
        help="INBOX sizes, one table each (default 20000 100000)",
    )
    ap.add_argument("--rounds", type=int, default=3, help="rounds, the servers alternating")
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "twistedmail-bench-cache"
    )
    ap.add_argument(
        "--work", type=Path, help="work dir (default: a fresh temp dir, removed at the end)"
    )
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS, help="the team's peers tools dir")
    ap.add_argument("--port-base", type=int, default=23000, help="Dovecot's PEERS_PORT_BASE")
    ap.add_argument("--port", type=int, default=23500, help="twistedmail's IMAPS port")
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--load-secs", type=float, default=20, help="0 skips the mixed load")
    ap.add_argument("--cmds", type=int, default=20, help="commands per load session")
    ap.add_argument(
        "--idle-conns", type=int, default=1000, help="0 skips the memory test (first round only)"
    )
    ap.add_argument("--only", choices=("twistedmail", "dovecot"))
    ap.add_argument(
        "--names",
        choices=NAME_FORMS,
        default="s",
        help="size fields of the message file names: s ,S= only (default, as generated),"
        " sw ,S= and ,W= (Dovecot's), none",
    )
    ap.add_argument(
        "--select-only",
        action="store_true",
        help="only LOGIN, the two SELECTs and FETCH 1:* (RFC822.SIZE) twice (no mixed load)",
    )
    ap.add_argument(
        "--before",
        type=Path,
        help="the bin dir of another checkout's venv (twistd, twistedmail): run it too, as"
        " 'before', in each round",
    )
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
    if not (args.peers / "dovecot.sh").exists():
        ap.error(f"no dovecot.sh in {args.peers} (--peers)")
    for port in (args.port, args.port_base + 143, args.port_base + 993):
        if not port_free(port):
            ap.error(f"port {port} is busy (--port / --port-base)")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # 1,000 connections on each side
    if args.select_only:
        args.load_secs, args.idle_conns = 0, 0
    print(f"message file names: --names {args.names}", flush=True)
    tables = []
    for count in args.messages:
        inbox = cached_inbox(args.cache, count)
        args.octets = sum(e.stat().st_size for e in os.scandir(inbox / "cur"))  # CRLF files
        rounds: list[dict[str, dict[str, float]]] = []
        sides = ["twistedmail", "dovecot"] + (["before"] if args.before else [])
        for n in range(args.rounds):
            order = sides[n % len(sides) :] + sides[: n % len(sides)]  # each goes first in turn
            if not args.before and n % 2:
                order = ["dovecot", "twistedmail"]
            order = [o for o in order if args.only in (None, o)]
            results: dict[str, dict[str, float]] = {}
            for side in order:
                work = args.work or Path(tempfile.mkdtemp(prefix="twistedmail-bench-"))
                work.mkdir(parents=True, exist_ok=True)
                work.chmod(0o755)  # Dovecot's users must traverse it
                try:
                    server: Twistedmail | Dovecot
                    if side == "dovecot":
                        server = Dovecot(
                            work / f"dovecot-{count}-{n}", args.port_base, args.peers, args.names
                        )
                    else:
                        server = Twistedmail(
                            work / f"{side}-{count}-{n}",
                            args.port,
                            args.workers,
                            args.names,
                            args.before if side == "before" else None,
                            "twistedmail (before)" if side == "before" else "twistedmail",
                        )
                    results[side] = measure(server, inbox, count, args, n == 0)
                finally:
                    if not args.work:
                        shutil.rmtree(work, ignore_errors=True)
            rounds.append(results)
        pairs = [("twistedmail", "dovecot")]
        if args.before:
            pairs += [("before", "dovecot"), ("twistedmail", "before")]
        for a, b in pairs:
            tables.append(
                f"\nINBOX of {count} messages (--names {args.names}), {args.rounds} rounds"
                f" alternating; mixed load {args.clients} clients x {args.load_secs:.0f} s,"
                f" {args.cmds} commands a session; medians, ratio = {_LABELS[a]} /"
                f" {_LABELS[b]} (median of the per-round ratios)\n" + table(rounds, a, b)
            )
        print("\n".join(tables[-len(pairs) :]), flush=True)
    print("\n".join(tables))
    return 0


if __name__ == "__main__":
    sys.exit(main())
