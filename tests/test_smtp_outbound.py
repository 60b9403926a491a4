"""One outbound attempt (twistedmail.smtp.outbound): dot-stuffing across chunk boundaries
(TWISTED-NOTES §2.4), MX order and fallback, opportunistic STARTTLS, per-recipient results.

The session tests run over loopback TCP (127.0.0.1, ephemeral ports) against
L{twistedmail.testing.ScriptedMTA}; DNS is a L{FakeResolver}.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from twisted.internet import endpoints, reactor
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.trial.unittest import TestCase

from twistedmail import tls
from twistedmail.smtp.outbound import Hop, Outbound, RecipientResult, RelaySender
from twistedmail.testing import FakeResolver, ScriptedMTA

CHUNK = 16384  # twisted.protocols.basic.FileSender.CHUNK_SIZE


def stuffed(message: bytes) -> bytes:
    """The reference: RFC 5321 §4.5.2 transparency over CRLF lines, plus the final dot."""
    lines = message.split(b"\r\n")
    if lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + x if x.startswith(b".") else x) + b"\r\n" for x in lines) + b".\r\n"


def message_with_dot_at(offset: int, eol: bytes = b"\r\n") -> bytes:
    """A message whose line starting at C{offset} is a smuggling attempt."""
    head = b"Subject: boundary test" + eol + eol
    filler_len = offset - len(head)
    filler = b""
    while len(filler) < filler_len:
        width = min(76, filler_len - len(filler) - len(eol))
        if filler_len - len(filler) - len(eol) - width < 1 + len(eol):
            width = filler_len - len(filler) - len(eol)
        filler += b"x" * width + eol
    assert len(head + filler) == offset, (offset, len(head + filler))
    tail = [b".", b"MAIL FROM:<ceo@bank.test>", b"RCPT TO:<victim@example.net>", b"DATA"]
    tail += [b"smuggled", b".", b"end of the real body", b""]
    return head + filler + eol.join(tail)


def offsets() -> list[int]:
    return [k * CHUNK + d for k in (1, 2, 3) for d in (-3, -2, -1, 0, 1, 2, 3)]


def send_through(sender: RelaySender | smtp.SMTPClient, message: bytes) -> bytes:
    """What C{sender}'s transformChunk/finishedFileTransfer put on the wire for
    C{message}, read in FileSender's 16 KiB chunks."""
    transport = StringTransport()
    sender.makeConnection(transport)
    transport.clear()
    out = b""
    for i in range(0, len(message), CHUNK):
        out += sender.transformChunk(message[i : i + CHUNK])
    transport.write(out)
    sender.finishedFileTransfer(out[-1:])
    if isinstance(sender, RelaySender):
        sender.setTimeout(None)
    return transport.value()


def relay_sender() -> RelaySender:
    return RelaySender(
        identity="mail.example.test",
        sender="alice@example.test",
        recipients=["bob@example.net"],
        message=b"",
        remote_mta="mx.example.net",
        tls_context=None,
    )


class TransformChunkTests(TestCase):
    def test_dot_line_on_and_around_every_boundary(self) -> None:
        """TWISTED-NOTES §2.4: a "." line at, just before and just after each 16 KiB
        boundary is stuffed, so the receiver never sees an early CRLF.CRLF."""
        for offset in offsets():
            message = message_with_dot_at(offset)
            self.assertEqual(send_through(relay_sender(), message), stuffed(message), offset)

    def test_stock_twisted_loses_the_stuffing_at_the_boundary(self) -> None:
        """The regression this guards against: stock SMTPClient.transformChunk on the same
        (LF) input sends an unstuffed "." line at the boundary."""
        message = message_with_dot_at(CHUNK, b"\n")
        wire = send_through(smtp.SMTPClient(b"x"), message)
        self.assertTrue(b"\r\n.\r\nMAIL FROM:<ceo@bank.test>" in wire)
        ours = send_through(relay_sender(), message)
        self.assertFalse(b"\r\n.\r\nMAIL FROM:" in ours)
        self.assertTrue(b"\r\n..\r\nMAIL FROM:<ceo@bank.test>" in ours)
        self.assertEqual(ours, stuffed(message.replace(b"\n", b"\r\n")))

    def test_crlf_split_across_chunks_and_bare_line_ends(self) -> None:
        """A CRLF split between two chunks stays one line end; a bare LF or CR becomes CRLF
        (RFC 5321 §2.3.8), and a "." after it is stuffed."""
        sender = relay_sender()
        sender.makeConnection(StringTransport())
        out = sender.transformChunk(b"a\r")
        out += sender.transformChunk(b"\n.b\nc\r.d")
        out += sender.transformChunk(b"\r")
        out += sender.transformChunk(b".e")
        sender.setTimeout(None)
        self.assertEqual(out, b"a\r\n..b\r\nc\r\n..d\r\n..e")

    def test_message_without_final_line_end(self) -> None:
        self.assertEqual(send_through(relay_sender(), b"a\r\n.b"), b"a\r\n..b\r\n.\r\n")
        self.assertEqual(send_through(relay_sender(), b""), b".\r\n")


class Network:
    """Scripted MTAs on loopback ports, named like MX hosts."""

    def __init__(self, test: TestCase) -> None:
        self.test = test
        self.ports: dict[str, int] = {}

    async def listen(self, name: str, mta: ScriptedMTA) -> ScriptedMTA:
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(mta)
        self.test.addCleanup(port.stopListening)
        self.ports[name] = port.getHost().port
        return mta

    async def closed(self, name: str) -> None:
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
            ScriptedMTA()
        )
        self.ports[name] = port.getHost().port
        await port.stopListening()

    def connect(self, hop: Hop) -> Any:
        return endpoints.TCP4ClientEndpoint(reactor, "127.0.0.1", self.ports[hop.name], timeout=5)


def server_tls(test: TestCase) -> Any:
    root = Path(test.mktemp())
    root.mkdir()
    tls.create_self_signed(root / "cert.pem", root / "key.pem", "mx.example.net")
    return tls.server_context(root / "cert.pem", root / "key.pem")


MX_ZONE = FakeResolver(
    mx={"example.net": [(10, "mx1.example.net"), (20, "mx2.example.net")]},
    a={"mx1.example.net": ["127.0.0.1"], "mx2.example.net": ["127.0.0.1"]},
)


class OutboundTests(TestCase):
    def outbound(self, network: Network, resolver: FakeResolver = MX_ZONE) -> Outbound:
        return Outbound(
            reactor=reactor,
            resolver=resolver,
            hostname="mail.example.test",
            connect=network.connect,
            rng=random.Random(1),
        )

    async def test_exact_body_over_starttls_with_dots_at_chunk_boundaries(self) -> None:
        """The receiver gets exactly one transaction per message, with the exact body, for
        dot lines on and around every 16 KiB boundary (TWISTED-NOTES §2.4)."""
        network = Network(self)
        mx = await network.listen("mx1.example.net", ScriptedMTA(tls=server_tls(self)))
        outbound = self.outbound(network)
        for offset in offsets():
            message = message_with_dot_at(offset)
            results = await outbound.deliver(
                "alice@example.test", "example.net", ["bob@example.net"], message
            )
            self.assertEqual(
                results,
                [
                    RecipientResult(
                        "bob@example.net", 250, "2.0.0", "250 2.0.0 Queued", "mx1.example.net"
                    )
                ],
            )
        self.assertEqual(len(mx.transactions), len(offsets()))
        for offset, transaction in zip(offsets(), mx.transactions, strict=True):
            self.assertEqual(transaction.data, message_with_dot_at(offset))
            self.assertEqual(transaction.recipients, ("bob@example.net",))
            self.assertEqual(transaction.sender, "alice@example.test")
            self.assertTrue(transaction.tls)
            self.assertEqual(transaction.helo, "mail.example.test")
        self.assertIn(b"STARTTLS", mx.commands)
        self.assertNotIn(b"MAIL FROM:<ceo@bank.test>", mx.commands)

    async def test_plaintext_when_starttls_not_offered_and_size_declared(self) -> None:
        network = Network(self)
        mx = await network.listen("mx1.example.net", ScriptedMTA())
        message = b"Subject: caf\xc3\xa9\r\n\r\n8bit body \xe2\x82\xac\r\n"
        results = await self.outbound(network).deliver(
            None, "example.net", ["bob@example.net"], message
        )
        self.assertTrue(results[0].delivered)
        self.assertEqual(mx.transactions[0].sender, "")
        self.assertFalse(mx.transactions[0].tls)
        self.assertEqual(mx.transactions[0].data, message)
        self.assertIn(b"MAIL FROM:<> SIZE=%d BODY=8BITMIME" % len(message), mx.commands)

    async def test_mixed_recipient_results_on_one_connection(self) -> None:
        network = Network(self)
        mx = await network.listen(
            "mx1.example.net",
            ScriptedMTA(
                rcpt={
                    "gone@example.net": ["550 5.1.1 No such user"],
                    "busy@example.net": ["451 4.2.0 Mailbox busy"],
                }
            ),
        )
        results = await self.outbound(network).deliver(
            "alice@example.test",
            "example.net",
            ["bob@example.net", "gone@example.net", "busy@example.net"],
            b"Subject: x\r\n\r\nhi\r\n",
        )
        self.assertEqual(
            [(r.address, r.code, r.status, r.diagnostic) for r in results],
            [
                ("bob@example.net", 250, "2.0.0", "250 2.0.0 Queued"),
                ("gone@example.net", 550, "5.1.1", "550 5.1.1 No such user"),
                ("busy@example.net", 451, "4.2.0", "451 4.2.0 Mailbox busy"),
            ],
        )
        self.assertEqual(mx.connections, 1)
        self.assertEqual(mx.transactions[0].recipients, ("bob@example.net",))

    async def test_data_refused_applies_to_the_accepted_recipients(self) -> None:
        network = Network(self)
        await network.listen(
            "mx1.example.net",
            ScriptedMTA(
                rcpt={"gone@example.net": ["550 5.1.1 No such user"]},
                data_replies=["554 5.6.0 Content rejected"],
            ),
        )
        results = await self.outbound(network).deliver(
            "alice@example.test",
            "example.net",
            ["bob@example.net", "gone@example.net"],
            b"Subject: x\r\n\r\nhi\r\n",
        )
        self.assertEqual(
            [(r.code, r.diagnostic) for r in results],
            [(554, "554 5.6.0 Content rejected"), (550, "550 5.1.1 No such user")],
        )

    async def test_next_mx_after_refused_connection_and_421_greeting(self) -> None:
        """RFC 5321 §5.1: the client tries the next MX host when one cannot be reached or
        answers with a temporary failure before the recipients."""
        for first in ("closed", "421"):
            network = Network(self)
            if first == "closed":
                await network.closed("mx1.example.net")
            else:
                await network.listen(
                    "mx1.example.net", ScriptedMTA(greeting="421 4.3.2 Service not available")
                )
            mx2 = await network.listen("mx2.example.net", ScriptedMTA())
            results = await self.outbound(network).deliver(
                "alice@example.test", "example.net", ["bob@example.net"], b"hi\r\n"
            )
            self.assertEqual(results[0].remote_mta, "mx2.example.net")
            self.assertTrue(results[0].delivered)
            self.assertEqual(len(mx2.transactions), 1)

    async def test_all_hosts_unreachable_is_temporary(self) -> None:
        network = Network(self)
        await network.closed("mx1.example.net")
        await network.closed("mx2.example.net")
        [result] = await self.outbound(network).deliver(
            "alice@example.test", "example.net", ["bob@example.net"], b"hi\r\n"
        )
        self.assertEqual((result.code, result.status), (451, "4.4.1"))
        self.assertFalse(result.permanent)
        self.assertTrue(result.diagnostic.startswith("451 4.4.1 Cannot connect to mx2.example.net"))

    async def test_dns_outcomes(self) -> None:
        network = Network(self)
        resolver = FakeResolver(mx={"null.example": [(0, ".")]})
        outbound = self.outbound(network, resolver)
        [null] = await outbound.deliver("a@example.test", "null.example", ["x@null.example"], b"")
        self.assertEqual(
            null,
            RecipientResult(
                "x@null.example",
                556,
                "5.1.10",
                "556 5.1.10 Domain null.example does not accept mail (null MX, RFC 7505)",
            ),
        )
        [gone] = await outbound.deliver("a@example.test", "gone.example", ["x@gone.example"], b"")
        self.assertEqual((gone.code, gone.status), (550, "5.1.2"))

    async def test_route_bypasses_mx(self) -> None:
        network = Network(self)
        mx = await network.listen("relay.internal", ScriptedMTA())
        outbound = Outbound(
            reactor=reactor,
            resolver=FakeResolver(),
            hostname="mail.example.test",
            routes={"example.net": ("127.0.0.1", network.ports["relay.internal"])},
        )
        port = network.ports["relay.internal"]
        self.assertEqual(outbound.destination("example.net"), f"127.0.0.1:{port}")
        results = await outbound.deliver(None, "example.net", ["bob@example.net"], b"hi\r\n")
        self.assertTrue(results[0].delivered)
        self.assertEqual(len(mx.transactions), 1)
