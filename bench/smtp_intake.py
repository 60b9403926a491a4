"""SMTP intake against Postfix and Twisted's ``twistd mail``, one command (issue 10).

    .venv/bin/python bench/smtp_intake.py [--rounds 3] [--sizes 4096,102400]
        [-m 2000] [--m-large 600] [-s 10] [--peers postfix,twistd] [--keep]

Starts, on 127.0.0.1 only: the loopback DNS stub (../shared/tools/peers/dnsstub.py,
NXDOMAIN at once, so SPF/DKIM/DMARC run their whole logic without network), two twistedmail
servers (``twistd twistedmail`` from this checkout, user bench@example.test; one with
``[inbound] check_authentication = true`` and the stub as nameserver, one with the checks
off), and the peers (../shared/tools/peers/postfix.sh, twistd_mail.sh: Postfix's master must
be started by root).  Then, per message size, ../shared/tools/peers/smtp_bench.py runs
``smtp-source -s S -m M -l SIZE`` against each server in turn (alternating, --rounds rounds)
and this script prints one table:

    figure | twistedmail | peer | ratio | min-max | CPU ms/msg (twistedmail / peer)

msg/s are medians over the rounds of "delivered" rates (every message in new/); the ratio is
the median of the per-round ratios twistedmail / peer (each pair ran back to back), min-max
over the rounds.  Server CPU per message is read from /proc (the process tree).
twistedmail and Postfix fsync every message before 250; ``twistd mail`` does not fsync.
"""

from __future__ import annotations

import argparse
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "e2e"))
from e2e_server import Server, free_ports  # noqa: E402

_HERE = Path(__file__).resolve().parents[1]
PEERS = next(
    (
        p / "shared" / "tools" / "peers"
        for p in (_HERE.parent, _HERE.parent.parent)
        if (p / "shared" / "tools" / "peers" / "smtp_bench.py").exists()
    ),
    _HERE.parent / "shared" / "tools" / "peers",
)
BENCH = "bench@example.test"


def peer_script(name: str, action: str, work: Path, env: dict[str, str]) -> None:
    log = work / f"{name}.{action}.log"
    with log.open("w") as out:  # never a pipe: the masters keep their stdout (README)
        rc = subprocess.call(
            ["bash", str(PEERS / f"{name}.sh"), action, str(work)], stdout=out, stderr=out, env=env
        )
    if rc != 0 and action == "start":
        raise SystemExit(f"{name}.sh start failed:\n{log.read_text()}")


def start_twistedmail(root: Path, dns_port: int, checks: bool, workers: int = 1) -> Server:
    server = Server(
        root,
        inbound=f"check_authentication = {'true' if checks else 'false'}\n",
        workers=workers,
    )
    server.add_user(BENCH, "bench-password")
    server.config.write_text(
        server.config.read_text() + f'\n[relay]\nnameservers = ["127.0.0.1:{dns_port}"]\n'
    )
    server.start(daemon=True)
    return server


def peer_env() -> dict[str, str]:
    """The environment of the peers' scripts and smtp_bench.py: their ports from a random
    base, their Python, and the sbin directories (smtp-source, postfix)."""
    return dict(
        os.environ,
        PEERS_PORT_BASE=str(random.randrange(30000, 59000, 1000)),
        # The Python peers run as nobody: their venv comes from the system Python.
        PEERS_PYTHON=os.environ.get("PEERS_PYTHON", "/usr/bin/python3"),
        PEERS_VENV=os.environ.get("PEERS_VENV", str(Path(tempfile.gettempdir()) / "peers-venv")),
        PATH=os.environ.get("PATH", "") + ":/usr/sbin:/sbin",
    )


def start_dns_stub() -> tuple[subprocess.Popen[bytes], int]:
    """dnsstub.py (DNS answered at once on loopback) and its port: the caller stops it."""
    (dns_port,) = free_ports(1)
    stub = subprocess.Popen(
        [sys.executable, str(PEERS / "dnsstub.py"), "--port", str(dns_port)],
        stdout=subprocess.DEVNULL,
    )
    return stub, dns_port


def bench_command(
    work: Path,
    peer_names: list[str],
    rounds: int,
    m: int,
    size: int,
    s: int,
    out: Path,
    peers: list[str],
) -> list[str]:
    """The smtp_bench.py command that runs C{smtp-source -s S -m M -l SIZE} against the
    peers named and each of C{peers} (C{NAME=PORT=MAILDIR=PIDFILE}, L{bench_peer}) in turn."""
    cmd = [
        sys.executable,
        str(PEERS / "smtp_bench.py"),
        "--work",
        str(work),
        "--peers",
        ",".join(peer_names),
        "--rounds",
        str(rounds),
        "-m",
        str(m),
        "-l",
        str(size),
        "-s",
        str(s),
        "--out",
        str(out),
    ]
    for peer in peers:
        cmd += ["--peer", peer]
    return cmd


def bench_peer(name: str, server: Server) -> str:
    """smtp_bench.py's C{--peer} of a twistedmail server started by L{start_twistedmail}."""
    return f"{name}={server.ports['smtp']}={server.maildir(BENCH)}={server.pidfile}"


def table(tsv: Path, size: int, names: list[str], peer_names: list[str]) -> list[list[str]]:
    rows = [
        dict(zip(cols, line.split("\t"), strict=False))
        for text in [tsv.read_text().splitlines()]
        for cols in [text[0].split("\t")]
        for line in text[1:]
        if line.strip() and line != text[0]
    ]

    def runs(peer: str) -> dict[str, dict[str, str]]:
        return {r["round"]: r for r in rows if r["peer"] == peer}

    out = []
    for name in names:
        mine = runs(name)
        rate = statistics.median(float(r["deliver_rate"]) for r in mine.values())
        cpu = statistics.median(
            float(r["server_cpu_s"]) * 1000 / int(r["m"]) for r in mine.values()
        )
        for peer in peer_names:
            theirs = runs(peer)
            ratios = [
                float(mine[k]["deliver_rate"]) / float(theirs[k]["deliver_rate"])
                for k in mine
                if k in theirs and float(theirs[k]["deliver_rate"]) > 0
            ]
            prate = statistics.median(float(r["deliver_rate"]) for r in theirs.values())
            pcpu = statistics.median(
                float(r["server_cpu_s"]) * 1000 / int(r["m"]) for r in theirs.values()
            )
            out.append(
                [
                    f"{size // 1024} KiB, {name}",
                    f"{rate:.0f}",
                    f"{peer} {prate:.0f}",
                    f"{statistics.median(ratios):.2f}" if ratios else "n/a",
                    f"{min(ratios):.2f}-{max(ratios):.2f}" if ratios else "n/a",
                    f"{cpu:.2f} / {pcpu:.2f}",
                ]
            )
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--sizes", default="4096,102400")
    ap.add_argument("-m", type=int, default=2000, help="messages per run at 4 KiB")
    ap.add_argument("--m-large", type=int, default=600, help="messages per run above 16 KiB")
    ap.add_argument("-s", type=int, default=10, help="smtp-source sessions")
    ap.add_argument("--peers", default="postfix,twistd")
    ap.add_argument("--work", type=Path, help="work dir (default: a fresh temp dir)")
    ap.add_argument("--keep", action="store_true", help="leave the servers running")
    ap.add_argument("--workers", type=int, default=1, help="twistedmail's [server] workers")
    a = ap.parse_args()
    if shutil.which("smtp-source") is None and not Path("/usr/sbin/smtp-source").exists():
        raise SystemExit("smtp-source not found (Debian package postfix)")
    work = a.work or Path(tempfile.mkdtemp(prefix="smtp-intake-"))
    work.mkdir(parents=True, exist_ok=True)
    os.chmod(work, 0o755)
    env = peer_env()
    peer_names = [p for p in a.peers.split(",") if p]
    stub, dns_port = start_dns_stub()
    servers: dict[str, Server] = {}
    started: list[str] = []
    try:
        for name in peer_names:
            peer_script({"twistd": "twistd_mail"}.get(name, name), "start", work, env)
            started.append(name)
        servers["twistedmail"] = start_twistedmail(
            work / "tm-checks", dns_port, checks=True, workers=a.workers
        )
        servers["twistedmail-nochecks"] = start_twistedmail(
            work / "tm-nochecks", dns_port, checks=False, workers=a.workers
        )
        result: list[list[str]] = []
        for size in (int(x) for x in a.sizes.split(",")):
            tsv = work / f"smtp-{size}.tsv"
            m = a.m if size <= 16384 else a.m_large
            peers = [bench_peer(name, server) for name, server in servers.items()]
            cmd = bench_command(work, peer_names, a.rounds, m, size, a.s, tsv, peers)
            subprocess.run(cmd, env=env, check=True)
            result += table(tsv, size, list(servers), peer_names)
        print("\n| figure | twistedmail msg/s | peer msg/s | ratio | min-max | CPU ms/msg |")
        print("| --- | --: | --: | --: | --: | --: |")
        for row in result:
            print("| " + " | ".join(row) + " |")
        print(f"\n(work dir {work}; {a.rounds} rounds, smtp-source -s {a.s})")
    finally:
        if not a.keep:
            for server in servers.values():
                server.stop()
            for name in reversed(started):
                peer_script({"twistd": "twistd_mail"}.get(name, name), "stop", work, env)
        stub.terminate()
        stub.wait()


if __name__ == "__main__":
    main()
