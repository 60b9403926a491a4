#!/usr/bin/env python3
"""Thunderbird's first sync of a 10,000-message INBOX: twistedmail against Dovecot (by hand).

    .venv/bin/python bench/thunderbird_sync.py [--messages 10000] [--timeout 90]

Builds (or reuses, see imap_bench.py --cache) the generated INBOX, hard-links a copy for each
server, and runs the team's Thunderbird driver (/work/shared/tools/thunderbird/tb_imap_sync.py,
headless, implicit TLS, a fresh profile each time) against twistedmail, then against Dovecot
(peers/dovecot.sh). For each it prints, from Thunderbird's own IMAP log: when INBOX was
selected, when the header fetch started and when Thunderbird went IDLE on INBOX (its header sync
is done by then), how many headers and offline bodies it fetched in its run (bounded by
--timeout, at most 90 s, the driver's cap), the header rate, and the IMAP errors it got.
On a slow machine headless Thunderbird does not finish 10,000 headers in 90 s with either
server (it fetches them in chunks and is the bottleneck); compare the headers synced and the
rate then.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from imap_bench import (  # noqa: E402
    DEFAULT_PEERS,
    PASSWORD,
    USER,
    Dovecot,
    Twistedmail,
    cached_inbox,
    port_free,
)

DEFAULT_TB = Path(__file__).resolve().parents[3] / "shared" / "tools" / "thunderbird"


def run_thunderbird(tb: Path, port: int, work: Path, timeout: float) -> dict:  # type: ignore[type-arg]
    result = subprocess.run(
        [
            sys.executable,
            str(tb / "tb_imap_sync.py"),
            "127.0.0.1",
            str(port),
            USER,
            PASSWORD,
            "tls",
            str(work),
            "--timeout",
            str(timeout),
            "--min-run",
            "20",
            "--settle",
            "8",
        ],
        capture_output=True,
        text=True,
        timeout=timeout + 120,
    )
    try:
        return json.loads(result.stdout)  # type: ignore[no-any-return]
    except ValueError:
        raise SystemExit("tb_imap_sync.py failed: " + result.stderr[-2000:]) from None


def figures(summary: dict) -> dict[str, object]:  # type: ignore[type-arg]
    m = summary.get("milestones_after_start", {})
    headers = summary.get("messages_headers_synced", {}).get("INBOX", 0)
    start, end = m.get("inbox_headers_requested_s"), summary.get("thunderbird_run_s")
    rate = round(headers / (end - start)) if start is not None and end and end > start else None
    return {
        "login ok": summary.get("login_ok"),
        "INBOX selected (s)": m.get("inbox_selected_s"),
        "header fetch started (s)": m.get("inbox_headers_requested_s"),
        "IDLE on INBOX, header sync done (s)": m.get("inbox_idle_s"),
        "INBOX headers synced": headers,
        "headers/s while syncing": rate,
        "INBOX bodies downloaded": summary.get("messages_bodies_downloaded", {}).get("INBOX", 0),
        "Thunderbird run (s)": summary.get("thunderbird_run_s"),
        "stop reason": summary.get("stop_reason"),
        "IMAP error replies": len(summary.get("imap_error_replies", [])),
    }


def main() -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--messages", type=int, default=10_000)
    ap.add_argument(
        "--cache", type=Path, default=Path(tempfile.gettempdir()) / "twistedmail-bench-cache"
    )
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--thunderbird-tools", type=Path, default=DEFAULT_TB)
    ap.add_argument("--port-base", type=int, default=23000, help="Dovecot's PEERS_PORT_BASE")
    ap.add_argument("--port", type=int, default=23500, help="twistedmail's IMAPS port")
    ap.add_argument("--timeout", type=float, default=90, help="Thunderbird's run, <= 90 s")
    args = ap.parse_args()
    for port in (args.port, args.port_base + 143, args.port_base + 993):
        if not port_free(port):
            ap.error(f"port {port} is busy (--port / --port-base)")
    inbox = cached_inbox(args.cache, args.messages)
    results = {}
    with tempfile.TemporaryDirectory(prefix="twistedmail-tb-bench-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # Dovecot's users must traverse it
        servers = [
            Twistedmail(work / "tm", args.port),
            Dovecot(work / "dovecot", args.port_base, args.peers),
        ]
        for server in servers:
            server.prepare(inbox, idle_users=0)
            server.start()
            try:
                print(f"== Thunderbird against {server.name} ...", flush=True)
                summary = run_thunderbird(
                    args.thunderbird_tools, server.port, work / f"tb-{server.name}", args.timeout
                )
            finally:
                server.stop()
            results[server.name] = figures(summary)
            print(json.dumps(results[server.name], indent=2), flush=True)
    print(f"\nThunderbird, fresh profile, INBOX of {args.messages} messages over TLS")
    print(f"| {'':<38} | {'twistedmail':>14} | {'Dovecot':>14} |")
    print(f"|{'-' * 40}|{'-' * 15}:|{'-' * 15}:|")
    for key in results["twistedmail"]:
        a, b = results["twistedmail"][key], results["Dovecot"][key]
        print(f"| {key:<38} | {a!s:>14} | {b!s:>14} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
