#!/usr/bin/env python3
"""What one request/response costs on our platform alone (issue 10, run by hand).

    .venv/bin/python bench/floor.py [--clients 10] [--requests 20000] [--rounds 3]

A bare Twisted server (epoll reactor, C{LineReceiver} behind C{TLSMemoryBIOFactory} with a
pyOpenSSL context, as twistedmail's implicit-TLS listeners are built) answers every line
C{<tag> NOOP} with C{<tag> OK NOOP completed}: the least an IMAP command can cost in
Python on Twisted, with no parsing, no mailbox and no logging.  One asyncio client process
(this one) keeps C{--clients} TLS connections busy, one request in flight each, until
C{--requests} replies came back.  The server runs in its own process; its CPU
(C{/proc/PID/stat} utime + stime) divided by the requests is the figure, the floor under
twistedmail's "server CPU per command" (imaptest C{logout=0}) against Dovecot's ~0.6 ms.
Prints the median over rounds (min-max).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SERVER = r"""
import sys
from twisted.internet import epollreactor
epollreactor.install()
from twisted.internet import reactor, ssl
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver
from twisted.protocols.tls import TLSMemoryBIOFactory

class Echo(LineReceiver):
    def lineReceived(self, line):
        tag = line.split(b" ", 1)[0]
        self.transport.write(tag + b" OK NOOP completed\r\n")

key, cert = sys.argv[1], sys.argv[2]
ctx = ssl.DefaultOpenSSLContextFactory(key, cert)
port = reactor.listenTCP(0, TLSMemoryBIOFactory(ctx, False, Factory.forProtocol(Echo)),
                         interface="127.0.0.1")
print(port.getHost().port, flush=True)
reactor.run()
"""

CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


async def client(port: int, context: ssl.SSLContext, todo: list[int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=context)
    n = 0
    while todo[0] > 0:
        todo[0] -= 1
        n += 1
        writer.write(b"a%d NOOP\r\n" % n)
        line = await reader.readline()
        assert line.endswith(b"OK NOOP completed\r\n"), line
    writer.close()
    await writer.wait_closed()


def one_round(key: Path, cert: Path, clients: int, requests: int) -> float:
    proc = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(key), str(cert)], stdout=subprocess.PIPE
    )
    try:
        assert proc.stdout is not None
        port = int(proc.stdout.readline())
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
        before = cpu_seconds(proc.pid)
        todo = [requests]

        async def run() -> None:
            await asyncio.gather(*(client(port, context, todo) for _ in range(clients)))

        asyncio.run(run())
        time.sleep(0.2)
        return (cpu_seconds(proc.pid) - before) / requests * 1000
    finally:
        proc.terminate()
        proc.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=10)
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        key, cert = Path(tmp) / "key.pem", Path(tmp) / "cert.pem"
        subprocess.run(
            [
                "openssl",
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                "/CN=localhost",
                "-keyout",
                str(key),
                "-out",
                str(cert),
                "-days",
                "1",
            ],
            check=True,
            capture_output=True,
        )
        ms = [one_round(key, cert, args.clients, args.requests) for _ in range(args.rounds)]
    print("| figure | ms of server CPU per request (median, min-max) |")
    print("| --- | --: |")
    print(
        f"| bare Twisted TLS line echo, {args.clients} clients | "
        f"{statistics.median(ms):.3f} ({min(ms):.3f}-{max(ms):.3f}) |"
    )


if __name__ == "__main__":
    main()
