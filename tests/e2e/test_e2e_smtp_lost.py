"""SMTP: a client that disconnects in the middle of DATA leaves one log line (as Postfix's
"lost connection after DATA from ..."), and nothing in the Maildir."""

from __future__ import annotations

import re
import socket
import time

from e2e_server import LineClient, Server


def test_disconnect_mid_data_is_logged(server: Server) -> None:
    """A connection lost after 354 and part of the message (no end-of-data line, RFC 5321
    §4.1.1.4: no transaction) is logged with the session, the client's address and the octets
    received; nothing is delivered."""
    with socket.create_connection(("127.0.0.1", server.ports["smtp"])) as sock:
        c = LineClient(sock)
        assert c.line().startswith(b"220 ")
        c.send(b"EHLO client.elsewhere.test\r\n")
        c.until(lambda line: line.startswith(b"250 "))
        c.send(b"MAIL FROM:<x@elsewhere.test>\r\n")
        assert c.line() == b"250 2.1.0 Sender OK"
        c.send(b"RCPT TO:<alice@example.test>\r\n")
        assert c.line().startswith(b"250 ")
        c.send(b"DATA\r\n")
        assert c.line().startswith(b"354 ")
        c.send(b"Subject: cut short\r\n\r\nfirst line\r\nsecond li")
        # The server reads what was sent before it sees the close.
        time.sleep(0.2)
    pattern = re.compile(
        r"session ([0-9a-f]{12}): lost connection after DATA from \[127\.0\.0\.1\]"
        r" \(43 octets received\)"
    )
    deadline = time.monotonic() + 10
    while not (found := pattern.findall(server.log.read_text(errors="replace"))):
        assert time.monotonic() < deadline, server.log.read_text(errors="replace")
        time.sleep(0.1)
    assert len(found) == 1
    assert server.messages("alice@example.test") == []
