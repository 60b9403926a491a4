#!/usr/bin/env python3
"""What a durable SMTP intake costs in Python on Twisted alone: the floor under twistedmail's
"server CPU per message" (issue 10, run by hand, as root for Postfix).

    .venv/bin/python bench/smtp_floor.py [--rounds 3] [-m 2000] [-l 4096] [-s 10]
        [--peers postfix] [--workers 1] [--no-twistedmail]

A bare Twisted server (epoll reactor, a C{Protocol} on plain TCP) speaks just enough SMTP
for smtp-source: a 220 greeting, 250 to HELO/EHLO, MAIL and RCPT, 354 to DATA, then it
reads the message to the end-of-data line (C{CRLF . CRLF}, found with one C{bytes.find}
over what arrived), undoes the dot-stuffing, and stores it with the steps twistedmail's
C{write_durably} takes: write C{tmp/NAME} (C{O_CREAT|O_EXCL}), fsync it, link it to
C{new/NAME}, unlink the tmp name, fsync C{new/}; then C{250}.  No parsing of addresses, no
policy, no log line, no Received: header.  Two variants:

  - C{floor-thread}: the durable steps run in Twisted's reactor thread pool
    (C{deferToThreadPool}), as twistedmail's delivery does;
  - C{floor-reactor}: they run on the reactor thread (the reactor blocks on each fsync:
    what twistedmail rejected, shown for its CPU).

Then ../shared/tools/peers/smtp_bench.py runs C{smtp-source -s S -m M -l L} against each
floor server, twistedmail (checks on and off, L{smtp_intake.start_twistedmail}, unless
C{--no-twistedmail}) and the peers (Postfix), alternating, C{--rounds} rounds, and this
script prints per server the median msg/s and server CPU per message (process tree, from
/proc), min-max over the rounds.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from smtp_intake import (  # noqa: E402
    bench_command,
    bench_peer,
    peer_env,
    peer_script,
    start_dns_stub,
    start_twistedmail,
)

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from e2e_server import Server, free_ports  # noqa: E402

SERVER = r"""
import os, sys, itertools, socket
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor, threads
from twisted.internet.protocol import Factory, Protocol

maildir, port, pidfile, on_reactor = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4] == "1"
for sub in ("tmp", "new", "cur"):
    os.makedirs(os.path.join(maildir, sub), exist_ok=True)
TMP, NEW = os.path.join(maildir, "tmp"), os.path.join(maildir, "new")
HOST, PID, COUNTER = socket.gethostname(), os.getpid(), itertools.count()
POOL = reactor.getThreadPool()

def store(data):
    name = "%d.P%dQ%d.%s" % (int(reactor.seconds()), PID, next(COUNTER), HOST)
    tmp = os.path.join(TMP, name)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.link(tmp, os.path.join(NEW, name))
    os.unlink(tmp)
    dfd = os.open(NEW, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)

class Floor(Protocol):
    def connectionMade(self):
        self.buf = b""
        self.data = False
        self.transport.write(b"220 floor ESMTP\r\n")

    def dataReceived(self, chunk):
        self.buf += chunk
        while True:
            if self.data:
                end = self.buf.find(b"\r\n.\r\n")
                if end < 0:
                    return
                message = self.buf[:end + 2].replace(b"\r\n..", b"\r\n.")
                if message.startswith(b".."):
                    message = message[1:]
                self.buf = self.buf[end + 5:]
                self.data = False
                if on_reactor:
                    store(message)
                    self.transport.write(b"250 2.0.0 Ok\r\n")
                else:
                    d = threads.deferToThreadPool(reactor, POOL, store, message)
                    d.addCallback(lambda _: self.transport.write(b"250 2.0.0 Ok\r\n"))
                continue
            end = self.buf.find(b"\r\n")
            if end < 0:
                return
            line, self.buf = self.buf[:end], self.buf[end + 2:]
            verb = line[:4].upper()
            if verb == b"DATA":
                self.data = True
                self.transport.write(b"354 End data with <CR><LF>.<CR><LF>\r\n")
            elif verb == b"QUIT":
                self.transport.write(b"221 2.0.0 Bye\r\n")
                self.transport.loseConnection()
            elif verb in (b"EHLO", b"HELO"):
                self.transport.write(b"250 floor\r\n")
            else:
                self.transport.write(b"250 2.0.0 Ok\r\n")

reactor.listenTCP(port, Factory.forProtocol(Floor), interface="127.0.0.1", backlog=128)
with open(pidfile, "w") as f:
    f.write("%d\n" % PID)
reactor.run()
"""


def start_floor(work: Path, name: str, on_reactor: bool) -> tuple[subprocess.Popen[bytes], str]:
    """A floor server in its own process; returns it and its smtp_bench.py C{--peer}."""
    (port,) = free_ports(1)
    maildir = work / name / "Maildir"
    pidfile = work / name / "floor.pid"
    pidfile.parent.mkdir(parents=True, exist_ok=True)
    pidfile.unlink(missing_ok=True)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            SERVER,
            str(maildir),
            str(port),
            str(pidfile),
            "1" if on_reactor else "0",
        ]
    )
    for _ in range(100):
        if pidfile.exists() and pidfile.read_text().strip():
            break
        subprocess.run(["sleep", "0.1"], check=True)
    else:
        proc.kill()
        raise SystemExit(f"{name} did not start")
    return proc, f"{name}={port}={maildir}={pidfile}"


def summary(tsv: Path) -> list[tuple[str, float, float, float, float, float, float]]:
    text = tsv.read_text().splitlines()
    cols = text[0].split("\t")
    rows = [dict(zip(cols, line.split("\t"), strict=False)) for line in text[1:] if line != text[0]]
    out = []
    for name in dict.fromkeys(r["peer"] for r in rows):
        mine = [r for r in rows if r["peer"] == name]
        rates = [float(r["deliver_rate"]) for r in mine]
        cpus = [float(r["server_cpu_s"]) * 1000 / int(r["m"]) for r in mine]
        out.append(
            (
                name,
                statistics.median(rates),
                min(rates),
                max(rates),
                statistics.median(cpus),
                min(cpus),
                max(cpus),
            )
        )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("-m", type=int, default=2000)
    ap.add_argument("-l", type=int, default=4096)
    ap.add_argument("-s", type=int, default=10)
    ap.add_argument("--peers", default="postfix")
    ap.add_argument("--workers", type=int, default=1, help="twistedmail's [server] workers")
    ap.add_argument("--no-twistedmail", action="store_true")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = a.work or Path(tempfile.mkdtemp(prefix="smtp-floor-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    env = peer_env()
    peer_names = [p for p in a.peers.split(",") if p]
    stub, dns_port = start_dns_stub()
    floors: list[subprocess.Popen[bytes]] = []
    servers: dict[str, Server] = {}
    started: list[str] = []
    try:
        peers = []
        for name, on_reactor in (("floor-thread", False), ("floor-reactor", True)):
            proc, peer = start_floor(work, name, on_reactor)
            floors.append(proc)
            peers.append(peer)
        if not a.no_twistedmail:
            for name, checks in (("twistedmail", True), ("twistedmail-nochecks", False)):
                server = start_twistedmail(work / name, dns_port, checks, a.workers)
                servers[name] = server
                peers.append(bench_peer(name, server))
        out = work / "floor.tsv"
        cmd = bench_command(work, peer_names, a.rounds, a.m, a.l, a.s, out, peers)
        for name in peer_names:
            peer_script(name, "start", work, env)
            started.append(name)
        subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
        print(
            f"\n| server ({a.l // 1024} KiB, smtp-source -s {a.s}, -m {a.m}) "
            "| msg/s (min-max) | server CPU ms/msg (min-max) |"
        )
        print("| --- | --: | --: |")
        for name, rate, rlo, rhi, cpu, clo, chi in summary(work / "floor.tsv"):
            print(
                f"| {name} | {rate:.0f} ({rlo:.0f}-{rhi:.0f}) | {cpu:.2f} ({clo:.2f}-{chi:.2f}) |"
            )
        print(f"\n(work dir {work}; {a.rounds} rounds; twistedmail workers = {a.workers})")
    finally:
        for server in servers.values():
            server.stop()
        for name in reversed(started):
            peer_script(name, "stop", work, env)
        for proc in floors:
            proc.terminate()
            proc.wait()
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
