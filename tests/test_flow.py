"""A message's whole path in process: SMTP DATA on port 25 (RFC 5321 §4.1.1.4) -> local
delivery into the Maildir -> IMAP LOGIN, SELECT, FETCH BODY[] (RFC 3501 §6.4.5).

The factories are the ones L{twistedmail.service.MailServer} builds from a config (wrapped in
their connection limits, with the attributes service.py sets on them), driven over
C{twisted.test.iosim}: no sockets, no threads (L{twistedmail.testing.SynchronousReactor}).
The IMAP side uses the factory of 993 (implicit TLS, RFC 8314) without its TLS wrapper."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from twisted.internet.address import IPv4Address
from twisted.internet.protocol import Protocol
from twisted.test.iosim import FakeTransport, IOPump, connect
from twisted.trial import unittest

from twistedmail.config import SERVICES, parse_config
from twistedmail.passwords import hash_password
from twistedmail.service import MailServer
from twistedmail.testing import SynchronousReactor

NOW = 1_767_225_600  # 2026-01-01 00:00:00 UTC
CLIENT = IPv4Address("TCP", "192.0.2.25", 40000)
SERVER = IPv4Address("TCP", "127.0.0.1", 25)
MESSAGE = (
    b"From: <x@elsewhere.test>\r\n"
    b"To: <alice@example.test>\r\n"
    b"Subject: the whole way\r\n"
    b"Message-ID: <flow@elsewhere.test>\r\n"
    b"\r\n"
    b"one line\r\n"
    b"..a line that starts with a dot\r\n"
)
ON_DISK = MESSAGE.replace(b"\r\n..", b"\r\n.")  # RFC 5321 §4.5.2: the client's dot removed


class Recorder(Protocol):
    """A client that keeps every byte the server sends."""

    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data


class FlowTests(unittest.TestCase):
    def setUp(self) -> None:
        data_dir = Path(self.mktemp()).resolve()
        config = parse_config(
            {
                "server": {"hostname": "mail.example.test", "data_dir": str(data_dir)},
                "listen": dict.fromkeys(SERVICES, []),
                "inbound": {"check_authentication": False},  # no DNS
            },
            None,
        )
        self.reactor = SynchronousReactor()
        self.reactor.advance(NOW)
        self.server = MailServer(config, self.reactor)
        self.server.store.open()
        self.addCleanup(self.server.store.close)
        self.server.store.add_user("alice@example.test", hash_password("alice-pw"))

    def session(self, service: str) -> tuple[Recorder, Any, IOPump]:
        """A client connected over iosim to the factory MailServer built for C{service}."""
        client = Recorder()
        server = self.server.connection_limits[service].buildProtocol(CLIENT)
        server_transport = FakeTransport(server, True, hostAddress=SERVER, peerAddress=CLIENT)
        client_transport = FakeTransport(client, False, hostAddress=CLIENT, peerAddress=SERVER)
        pump = connect(server, server_transport, client, client_transport, greet=True)
        return client, server, pump

    def talk(self, client: Recorder, pump: IOPump, data: bytes) -> bytes:
        """Send C{data}, pump until both sides are quiet, return what came back."""
        client.received = b""
        client.transport.write(data)
        pump.flush()
        return client.received

    def test_smtp_data_is_fetched_by_imap_byte_for_byte(self) -> None:
        """RFC 5321 §4.4 + RFC 3501 §6.4.5: a message taken on port 25 is what IMAP FETCH
        BODY[] returns, exactly, under the Return-Path, Delivered-To and Received trace fields (and the
        dot-stuffing of RFC 5321 §4.5.2 undone)."""
        smtp, _, pump = self.session("smtp")
        self.assertEqual(smtp.received, b"220 mail.example.test ESMTP twistedmail ready\r\n")
        self.assertEqual(
            self.talk(
                smtp,
                pump,
                b"EHLO client.elsewhere.test\r\n"
                b"MAIL FROM:<x@elsewhere.test>\r\n"
                b"RCPT TO:<alice@example.test>\r\n"
                b"DATA\r\n",
            ).splitlines()[-3:],
            [
                b"250 2.1.0 Sender OK",
                b"250 2.1.5 Recipient OK",
                b"354 End data with <CR><LF>.<CR><LF>",
            ],
        )
        self.assertEqual(
            self.talk(smtp, pump, MESSAGE + b".\r\nQUIT\r\n"),
            b"250 2.0.0 Message accepted for delivery\r\n221 2.0.0 Bye\r\n",
        )
        [path] = (self.server.mail_dir / "example.test" / "alice" / "new").iterdir()
        stored = path.read_bytes()
        self.assertTrue(stored.endswith(ON_DISK))

        # 993's factory: service.py wraps it in TLSMemoryBIOFactory, which iosim leaves out; on
        # 143, LOGIN before STARTTLS is refused (RFC 3501 §6.2.3, [PRIVACYREQUIRED]).
        imap, _, pump = self.session("imaps")
        self.assertTrue(imap.received.startswith(b"* OK [CAPABILITY IMAP4rev1 "))
        login = self.talk(imap, pump, b"a LOGIN alice@example.test alice-pw\r\n")
        self.assertTrue(login.startswith(b"a OK [CAPABILITY IMAP4rev1 "), login)
        self.assertTrue(login.endswith(b"] Logged in\r\n"), login)
        self.assertTrue(
            self.talk(imap, pump, b"s SELECT INBOX\r\n").endswith(
                b"s OK [READ-WRITE] SELECT completed\r\n"
            )
        )
        fetched = self.talk(imap, pump, b"f FETCH 1 BODY[]\r\n")
        # RFC 3501 §6.4.5: BODY[] sets \Seen, so the FETCH also reports the new FLAGS.
        self.assertEqual(
            fetched,
            b"* 1 FETCH (BODY[] {%d}\r\n%s FLAGS (\\Seen \\Recent))\r\nf OK FETCH completed\r\n"
            % (len(stored), stored),
        )
        # The trace fields of RFC 5321 §4.4 above the message as sent; the id is the
        # session's random one and the message's number in it.
        match = re.search(rb"with ESMTP id ([0-9a-f]+-1)\r\n", stored)
        assert match is not None, stored
        self.assertEqual(
            stored,
            b"Return-Path: <x@elsewhere.test>\r\n"
            b"Delivered-To: alice@example.test\r\n"
            b"Received: from client.elsewhere.test ([192.0.2.25])\r\n"
            b"\tby mail.example.test with ESMTP id %s\r\n"
            b"\tfor <alice@example.test>; Thu, 01 Jan 2026 00:00:00 +0000\r\n"
            % match.group(1)
            + ON_DISK,
        )
