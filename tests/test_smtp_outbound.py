"""One outbound attempt (twistedmail.smtp.outbound): dot-stuffing across chunk boundaries
(stock Twisted's C{SMTPClient.transformChunk} forgot that a 16 KiB chunk ended a line, so a
"." line there ended the message early: outbound SMTP smuggling), MX order and fallback,
opportunistic STARTTLS, per-recipient results.

The session tests run over loopback TCP (127.0.0.1, ephemeral ports) against
L{twistedmail.testing.ScriptedMTA}; DNS is a L{FakeResolver}.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import Any

from twisted.internet import endpoints, reactor, task
from twisted.internet.testing import StringTransport
from twisted.mail import smtp
from twisted.protocols.tls import TLSMemoryBIOFactory
from twisted.trial.unittest import TestCase

from twistedmail import tls
from twistedmail.smtp.outbound import (
    IMPLICIT,
    STARTTLS,
    Hop,
    HostFailure,
    Outbound,
    RecipientResult,
    RelaySender,
    Smarthost,
    trust_root,
)
from twistedmail.testing import FakeResolver, ScriptedMTA, create_test_ca

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
        """RFC 5321 §4.5.2: a "." line at, just before and just after each 16 KiB chunk
        boundary is stuffed (stock Twisted missed the one at a boundary), so the receiver
        never sees an early CRLF.CRLF."""
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
        """RFC 5321 §4.5.2: a message without a final CRLF gets one before the dot, leading dots
        doubled; an empty message is the dot alone."""
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
        outbound = Outbound(
            reactor=reactor,
            resolver=resolver,
            hostname="mail.example.test",
            connect=network.connect,
            rng=random.Random(1),
        )
        self.addCleanup(outbound.closing)  # the QUITs finish after send() returns
        return outbound

    async def test_exact_body_over_starttls_with_dots_at_chunk_boundaries(self) -> None:
        """The receiver gets exactly one transaction per message, with the exact body, for
        dot lines on and around every 16 KiB boundary (where stock Twisted lost the
        dot-stuffing and the receiver stored two messages)."""
        network = Network(self)
        mx = await network.listen("mx1.example.net", ScriptedMTA(tls=server_tls(self)))
        outbound = self.outbound(network)
        for offset in offsets():
            message = message_with_dot_at(offset)
            results = await outbound.send(
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
        """Without STARTTLS offered the message goes in plaintext (opportunistic TLS), from <>
        with SIZE (RFC 1870) and BODY=8BITMIME (RFC 6152)."""
        network = Network(self)
        mx = await network.listen("mx1.example.net", ScriptedMTA())
        message = b"Subject: caf\xc3\xa9\r\n\r\n8bit body \xe2\x82\xac\r\n"
        results = await self.outbound(network).send(
            None, "example.net", ["bob@example.net"], message
        )
        self.assertTrue(results[0].delivered)
        self.assertEqual(mx.transactions[0].sender, "")
        self.assertFalse(mx.transactions[0].tls)
        self.assertEqual(mx.transactions[0].data, message)
        self.assertIn(b"MAIL FROM:<> SIZE=%d BODY=8BITMIME" % len(message), mx.commands)

    async def test_mixed_recipient_results_on_one_connection(self) -> None:
        """Per-recipient 250/550/451 on one connection, with and without PIPELINING."""
        for extensions in (["PIPELINING", "SIZE 1000000"], ["SIZE 1000000"]):
            network = Network(self)
            mx = await network.listen(
                "mx1.example.net",
                ScriptedMTA(
                    rcpt={
                        "gone@example.net": ["550 5.1.1 No such user"],
                        "busy@example.net": ["451 4.2.0 Mailbox busy"],
                    },
                    extensions=extensions,
                ),
            )
            results = await self.outbound(network).send(
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
                extensions,
            )
            self.assertEqual(mx.connections, 1)
            self.assertEqual(mx.transactions[0].recipients, ("bob@example.net",))

    async def test_data_refused_applies_to_the_accepted_recipients(self) -> None:
        """RFC 5321 §4.1.1.4: a refused DATA is the result of each accepted recipient; a refused
        RCPT keeps its own, with and without PIPELINING."""
        for extensions in (["PIPELINING"], []):
            network = Network(self)
            await network.listen(
                "mx1.example.net",
                ScriptedMTA(
                    rcpt={"gone@example.net": ["550 5.1.1 No such user"]},
                    data_replies=["554 5.6.0 Content rejected"],
                    extensions=extensions,
                ),
            )
            results = await self.outbound(network).send(
                "alice@example.test",
                "example.net",
                ["bob@example.net", "gone@example.net"],
                b"Subject: x\r\n\r\nhi\r\n",
            )
            self.assertEqual(
                [(r.code, r.diagnostic) for r in results],
                [(554, "554 5.6.0 Content rejected"), (550, "550 5.1.1 No such user")],
                extensions,
            )

    async def test_results_before_the_quit_reply_and_abort(self) -> None:
        """The answers are handed over as soon as the final dot is answered (the queue
        records a 250 at once); a session whose QUIT is never answered is cut by abort()."""
        network = Network(self)
        await network.listen("mx1.example.net", ScriptedMTA(answer_quit=False))
        outbound = self.outbound(network)
        [result] = await outbound.send(None, "example.net", ["bob@example.net"], b"hi\r\n")
        self.assertTrue(result.delivered)
        self.assertEqual(len(outbound.sessions), 1)
        outbound.abort()
        await outbound.closing()
        self.assertEqual(outbound.sessions, set())
        [late] = await outbound.send(None, "example.net", ["bob@example.net"], b"hi\r\n")
        self.assertEqual(
            (late.code, late.diagnostic),
            (451, "451 4.4.1 Not tried: the server is shutting down"),
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
            results = await self.outbound(network).send(
                "alice@example.test", "example.net", ["bob@example.net"], b"hi\r\n"
            )
            self.assertEqual(results[0].remote_mta, "mx2.example.net")
            self.assertTrue(results[0].delivered)
            self.assertEqual(len(mx2.transactions), 1)

    async def test_all_hosts_unreachable_is_temporary(self) -> None:
        """RFC 5321 §5.1: when every MX is unreachable the result is temporary, 451 4.4.1, naming
        the last host tried."""
        network = Network(self)
        await network.closed("mx1.example.net")
        await network.closed("mx2.example.net")
        [result] = await self.outbound(network).send(
            "alice@example.test", "example.net", ["bob@example.net"], b"hi\r\n"
        )
        self.assertEqual((result.code, result.status), (451, "4.4.1"))
        self.assertFalse(result.permanent)
        self.assertTrue(result.diagnostic.startswith("451 4.4.1 Cannot connect to mx2.example.net"))

    async def test_dns_outcomes(self) -> None:
        """RFC 7505: a null MX is a permanent 556 5.1.10; a domain that does not exist is 550
        5.1.2."""
        network = Network(self)
        resolver = FakeResolver(mx={"null.example": [(0, ".")]})
        outbound = self.outbound(network, resolver)
        [null] = await outbound.send("a@example.test", "null.example", ["x@null.example"], b"")
        self.assertEqual(
            null,
            RecipientResult(
                "x@null.example",
                556,
                "5.1.10",
                "556 5.1.10 Domain null.example does not accept mail (null MX, RFC 7505)",
            ),
        )
        [gone] = await outbound.send("a@example.test", "gone.example", ["x@gone.example"], b"")
        self.assertEqual((gone.code, gone.status), (550, "5.1.2"))

    async def test_route_bypasses_mx(self) -> None:
        """A [relay.routes] entry sends the domain's mail to its host and port without an MX
        lookup."""
        network = Network(self)
        mx = await network.listen("relay.internal", ScriptedMTA())
        outbound = Outbound(
            reactor=reactor,
            resolver=FakeResolver(),
            hostname="mail.example.test",
            routes={"example.net": ("127.0.0.1", network.ports["relay.internal"])},
        )
        self.addCleanup(outbound.closing)
        port = network.ports["relay.internal"]
        self.assertEqual(outbound.destination("example.net"), f"127.0.0.1:{port}")
        results = await outbound.send(None, "example.net", ["bob@example.net"], b"hi\r\n")
        self.assertTrue(results[0].delivered)
        self.assertEqual(len(mx.transactions), 1)


class RecordingTransport(StringTransport):
    """A StringTransport that keeps each write() apart."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.writes.append(data)
        super().write(data)


def session(recipients: list[str], clock: task.Clock | None = None) -> RelaySender:
    return RelaySender(
        identity="mail.example.test",
        sender="alice@example.test",
        recipients=recipients,
        message=b"Subject: x\r\n\r\nhi\r\n",
        remote_mta="mx.example.net",
        tls_context=None,
        clock=clock or task.Clock(),
    )


def feed(sender: RelaySender, *replies: bytes) -> None:
    for reply in replies:
        sender.dataReceived(reply + b"\r\n")


def pump(transport: StringTransport) -> None:
    """Pull the message through FileSender (a pull producer) as a real transport would."""
    while transport.producer is not None:
        transport.producer.resumeProducing()


class PipeliningTests(TestCase):
    """RFC 2920 on the client side, over a StringTransport."""

    def start(self, recipients: list[str]) -> tuple[RelaySender, RecordingTransport]:
        sender = session(recipients)
        transport = RecordingTransport()
        sender.makeConnection(transport)
        feed(sender, b"220 mx ESMTP")
        self.assertEqual(transport.writes, [b"EHLO mail.example.test\r\n"])
        transport.writes.clear()
        feed(sender, b"250-mx", b"250-PIPELINING", b"250 SIZE 100000")
        return sender, transport

    def test_one_write_then_per_recipient_results(self) -> None:
        """RFC 2920 §3.1: MAIL, every RCPT and DATA go in one write, and each recipient gets its
        own reply's result."""
        sender, transport = self.start(["a@example.net", "b@example.net", "c@example.net"])
        self.assertEqual(
            transport.writes,
            [
                b"MAIL FROM:<alice@example.test> SIZE=18\r\n"
                b"RCPT TO:<a@example.net>\r\n"
                b"RCPT TO:<b@example.net>\r\n"
                b"RCPT TO:<c@example.net>\r\n"
                b"DATA\r\n"
            ],
        )
        transport.writes.clear()
        feed(
            sender,
            b"250 2.1.0 OK",
            b"250 2.1.5 OK",
            b"550 5.1.1 No such user",
            b"451 4.2.0 Busy",
        )
        self.assertEqual(transport.writes, [])  # nothing before the reply to DATA
        transport.clear()
        feed(sender, b"354 Go ahead")
        pump(transport)
        self.assertEqual(transport.value(), b"Subject: x\r\n\r\nhi\r\n.\r\n")
        feed(sender, b"250 2.0.0 Queued as X")
        results = self.successResultOf(sender.done)
        self.assertEqual(
            [(r.address, r.code, r.diagnostic) for r in results],
            [
                ("a@example.net", 250, "250 2.0.0 Queued as X"),
                ("b@example.net", 550, "550 5.1.1 No such user"),
                ("c@example.net", 451, "451 4.2.0 Busy"),
            ],
        )
        sender.setTimeout(None)

    def test_mail_refused_answers_every_recipient(self) -> None:
        """RFC 2920: when MAIL is refused every recipient gets MAIL's reply (552 5.3.4), and the
        message is not sent."""
        sender, transport = self.start(["a@example.net", "b@example.net"])
        feed(
            sender,
            b"552 5.3.4 Message too big",
            b"503 5.5.1 No MAIL",
            b"503 5.5.1 No MAIL",
            b"503 5.5.1 No MAIL",
        )
        results = self.successResultOf(sender.done)
        self.assertEqual([(r.code, r.status) for r in results], [(552, "5.3.4"), (552, "5.3.4")])
        self.assertNotIn(b"Subject", transport.value())
        sender.setTimeout(None)

    def test_data_accepted_without_recipients_sends_an_empty_message(self) -> None:
        """RFC 2920 §3.1: a 354 after every RCPT was refused is answered with the dot alone, and
        each recipient keeps its RCPT refusal."""
        sender, transport = self.start(["a@example.net"])
        transport.clear()
        feed(sender, b"250 OK", b"550 5.1.1 No such user", b"354 Go ahead")
        self.assertEqual(transport.value(), b".\r\n")  # RFC 2920 §3.1: nothing to send
        self.assertNoResult(sender.done)
        feed(sender, b"554 5.5.1 No valid recipients")
        [result] = self.successResultOf(sender.done)
        self.assertEqual((result.code, result.diagnostic), (550, "550 5.1.1 No such user"))
        sender.setTimeout(None)


class TimeoutTests(TestCase):
    """RFC 5321 §4.5.3.2 reply timeouts, on a Clock."""

    def test_greeting_timeout_is_five_minutes(self) -> None:
        """RFC 5321 §4.5.3.2.1: the client waits 5 minutes for the greeting, then fails the host."""
        clock = task.Clock()
        sender = session(["a@example.net"], clock)
        sender.makeConnection(StringTransport())
        clock.advance(299)
        self.assertNoResult(sender.done)
        clock.advance(1)
        self.failureResultOf(sender.done, HostFailure)

    def test_final_dot_waits_ten_minutes(self) -> None:
        """RFC 5321 §4.5.3.2.6: the client waits 10 minutes for the reply to the final dot."""
        clock = task.Clock()
        sender = session(["a@example.net"], clock)
        transport = StringTransport()
        sender.makeConnection(transport)
        feed(sender, b"220 mx", b"250 mx", b"250 OK", b"250 OK", b"354 Go")
        pump(transport)
        self.assertTrue(transport.value().endswith(b"\r\n.\r\n"))
        clock.advance(599)
        self.assertNoResult(sender.done)
        clock.advance(1)
        failure = self.failureResultOf(sender.done, HostFailure)
        self.assertIn("Timeout", failure.value.text)


class SmarthostTests(TestCase):
    """Mandatory, verified TLS and AUTH to a smarthost (RFC 3207, RFC 8314, RFC 4954)."""

    def setUp(self) -> None:
        root = Path(self.mktemp())
        ca, cert, key = create_test_ca(root, "smarthost.example.test")
        self.ca = trust_root(ca)
        self.tls = tls.server_context(cert, key)

    async def deliver(
        self, mta: ScriptedMTA, implicit: bool = False, **smarthost: Any
    ) -> RecipientResult:
        factory: Any = TLSMemoryBIOFactory(self.tls, False, mta) if implicit else mta
        port = await endpoints.TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(factory)
        self.addCleanup(port.stopListening)
        settings = {
            "username": "relay",
            "password": "relay-secret",
            "trust": self.ca,
            "tls": IMPLICIT if implicit else STARTTLS,
            **smarthost,
        }
        outbound = Outbound(
            reactor=reactor,
            resolver=FakeResolver(a={"smarthost.example.test": ["127.0.0.1"]}),
            hostname="mail.example.test",
            smarthost=Smarthost("smarthost.example.test", port.getHost().port, **settings),
        )
        self.addCleanup(outbound.closing)
        [result] = await outbound.send(
            "alice@example.test", "example.net", ["bob@example.net"], b"Subject: s\r\n\r\nhi\r\n"
        )
        return result

    async def test_starttls_then_auth_plain(self) -> None:
        """A smarthost gets EHLO, STARTTLS, then AUTH PLAIN (RFC 4954) with the configured
        credentials, and the message over TLS."""
        mta = ScriptedMTA(tls=self.tls, accounts={"relay": "relay-secret"})
        result = await self.deliver(mta)
        self.assertTrue(result.delivered, result)
        [transaction] = mta.transactions
        self.assertEqual(transaction.auth, ("PLAIN", "relay", "relay-secret"))
        self.assertTrue(transaction.tls)
        self.assertEqual(transaction.data, b"Subject: s\r\n\r\nhi\r\n")
        self.assertEqual(mta.commands[:2], [b"EHLO mail.example.test", b"STARTTLS"])

    async def test_implicit_tls_and_auth_login(self) -> None:
        """A smarthost on implicit TLS gets AUTH LOGIN when it offers only LOGIN, and no
        STARTTLS."""
        mta = ScriptedMTA(
            implicit_tls=True, accounts={"relay": "relay-secret"}, auth_mechanisms=["LOGIN"]
        )
        result = await self.deliver(mta, implicit=True)
        self.assertTrue(result.delivered, result)
        self.assertEqual(mta.transactions[0].auth, ("LOGIN", "relay", "relay-secret"))
        self.assertNotIn(b"STARTTLS", mta.commands)

    async def test_no_starttls_is_deferred_and_nothing_sent_in_plaintext(self) -> None:
        """A smarthost that offers no STARTTLS is a temporary 451: no AUTH and no MAIL are sent
        in plaintext."""
        mta = ScriptedMTA(accounts={"relay": "relay-secret"})
        result = await self.deliver(mta)
        self.assertEqual((result.code, result.permanent), (451, False))
        self.assertIn("STARTTLS not offered; TLS is required", result.diagnostic)
        self.assertEqual(mta.commands[0], b"EHLO mail.example.test")
        self.assertEqual([c for c in mta.commands if c[:4] in (b"AUTH", b"MAIL")], [])
        self.assertEqual(mta.auth_attempts, [])

    async def test_untrusted_certificate_is_deferred(self) -> None:
        """A certificate for another name, and a self-signed one for the right name."""
        root = Path(self.mktemp())
        root.mkdir()
        tls.create_self_signed(root / "c.pem", root / "k.pem", "smarthost.example.test")
        for context in (server_tls(self), tls.server_context(root / "c.pem", root / "k.pem")):
            mta = ScriptedMTA(tls=context, accounts={"relay": "relay-secret"})
            result = await self.deliver(mta)
            self.assertEqual(result.code, 451)
            self.assertIn("TLS handshake failed", result.diagnostic)
            self.assertEqual(mta.commands, [b"EHLO mail.example.test", b"STARTTLS"])
            self.assertEqual(mta.auth_attempts, [])

    async def test_auth_refused_is_deferred(self) -> None:
        """A smarthost that refuses AUTH (535) is a temporary 451 4.7.8 quoting its reply."""
        mta = ScriptedMTA(tls=self.tls, accounts={"relay": "other"})
        result = await self.deliver(mta)
        self.assertEqual((result.code, result.permanent), (451, False))
        self.assertEqual(
            (result.status, result.diagnostic),
            (
                "4.7.8",
                "451 4.7.8 smarthost.example.test[127.0.0.1] said: 535 5.7.8 Authentication"
                " credentials invalid",
            ),
        )
        self.assertEqual(mta.auth_attempts, [("PLAIN", "relay", "relay-secret")])
        self.assertFalse(any(c.startswith(b"MAIL") for c in mta.commands))
