"""SMTP intake on port 25 with SPF/DKIM/DMARC checks on, against a nameserver that is dead
(a bound UDP socket that never answers) or answers at once (../shared/tools/peers/dnsstub.py
in nxdomain mode).  Prints messages per second.

    .venv/bin/python bench/intake_dns.py --dns dead --clients 8 --messages 5
    .venv/bin/python bench/intake_dns.py --dns stub --clients 8 --messages 50

Every message has its own sender domain (no cached answer helps) unless --same-domain.
Everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import smtplib
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from e2e_server import Server, free_ports  # noqa: E402

# ../shared/tools/peers/dnsstub.py beside the checkout (or beside its worktree folder).
_HERE = Path(__file__).resolve().parents[1]
STUB = next(
    (
        p / "shared" / "tools" / "peers" / "dnsstub.py"
        for p in (_HERE.parent, _HERE.parent.parent)
        if (p / "shared" / "tools" / "peers" / "dnsstub.py").exists()
    ),
    _HERE.parent / "shared" / "tools" / "peers" / "dnsstub.py",
)
ALICE = "alice@example.test"


def client(port: int, index: int, count: int, same: bool) -> int:
    sent = 0
    with smtplib.SMTP("127.0.0.1", port, local_hostname="client.bench.test", timeout=120) as s:
        for i in range(count):
            domain = "bench.test" if same else f"s{index}-{i}.test"
            msg = (
                f"From: <x@{domain}>\r\nTo: <{ALICE}>\r\nSubject: bench\r\n\r\n" + "x" * 4000
            ).encode()
            s.sendmail(f"bounce@{domain}", [ALICE], msg)
            sent += 1
    return sent


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--dns", choices=("dead", "stub"), default="dead")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--messages", type=int, default=5, help="per client")
    ap.add_argument("--same-domain", action="store_true")
    a = ap.parse_args()
    root = Path(tempfile.mkdtemp(prefix="intake-bench-"))
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    stub = None
    if a.dns == "dead":
        silent.bind(("127.0.0.1", 0))
        dns_port = silent.getsockname()[1]
    else:
        (dns_port,) = free_ports(1)
        stub = subprocess.Popen([sys.executable, str(STUB), "--port", str(dns_port)])
        time.sleep(0.5)
        if stub.poll() is not None:
            raise SystemExit(f"{STUB} did not start")
    server = Server(root, inbound="check_authentication = true\n")
    try:
        server.add_user(ALICE, "alice-password")
        server.config.write_text(
            server.config.read_text() + f'\n[relay]\nnameservers = ["127.0.0.1:{dns_port}"]\n'
        )
        server.start()
        start = time.monotonic()
        with ThreadPoolExecutor(a.clients) as pool:
            sent = sum(
                pool.map(
                    lambda i: client(server.ports["smtp"], i, a.messages, a.same_domain),
                    range(a.clients),
                )
            )
        elapsed = time.monotonic() - start
        print(
            f"dns={a.dns} clients={a.clients} messages={sent} same_domain={a.same_domain}: "
            f"{elapsed:.1f} s, {sent / elapsed:.2f} msg/s"
        )
    finally:
        server.stop()
        silent.close()
        if stub is not None:
            stub.terminate()
            stub.wait()


if __name__ == "__main__":
    main()
