"""The connection rate per client IP on port 25 (issue 14, C{[antispam]
smtp_connections_per_ip_hour}), end to end against the real twistd: attempts over the
hourly limit get C{421 4.7.0} at connect and a log line the shipped fail2ban filter
matches; the other listeners are not limited."""

from __future__ import annotations

import re
import socket
from pathlib import Path

from e2e_server import Server
from test_e2e_antispam_gates import fail2ban_matches


def greeting(port: int) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        data = b""
        while not data.endswith(b"\r\n"):
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        return data


def test_connections_over_the_hourly_rate_get_421(tmp_path: Path) -> None:
    """Three connections an hour allowed (the first is Server.start's probe of the port):
    the fourth and every later one (refused attempts count, as Postfix's anvil counts them)
    get the 421 4.7.0 greeting (RFC 5321 §3.1), whichever process (workers) takes them: the
    parent counts every attempt (a worker once let one through while the parent's events
    were on their way to it)."""
    server = Server(tmp_path, extra_config="\n[antispam]\nsmtp_connections_per_ip_hour = 3\n")
    server.add_user("alice@example.test", "alice-secret-1")
    server.start()
    try:
        port = server.ports["smtp"]
        for _ in range(2):
            assert greeting(port).startswith(b"220 mail.example.test ")
        refused = (
            b"421 4.7.0 mail.example.test Too many connections from your address,"
            b" try again later\r\n"
        )
        for _ in range(6):
            assert greeting(port) == refused
        assert greeting(server.ports["submission"]).startswith(b"220 ")
    finally:
        server.stop()
    lines = [line for line in server.log.read_text().splitlines() if "connections per hour" in line]
    assert len(lines) == 6
    assert re.search(  # (" worker=PID" when a worker process refused it)
        r" \[twistedmail\.limits#warn(?: worker=\d+)?\] smtp: client \[127\.0\.0\.1\] over 3"
        r" connections per hour$",
        lines[0],
    ), lines[0]
    matched = fail2ban_matches(server.log)
    assert matched in (None, 6)  # None: fail2ban not installed
