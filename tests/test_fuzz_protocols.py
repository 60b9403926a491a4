"""Fuzzing (hypothesis) of the SMTP and IMAP command parsers (issue 5): random and
grammar-shaped lines, literals included, into real sessions over StringTransport.  Every reply
is well formed, nothing is logged as an unexpected failure (no SERVERBUG, no 451 4.3.0 local
error), and the connection is closed only by QUIT/LOGOUT or a limit."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_imap_server import Harness
from test_smtp_server import TLS_CONTEXT, Mailhost, connect
from twisted.logger import globalLogPublisher
from twisted.trial import unittest

from twistedmail.testing import inbound_for

FUZZ = settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

SMTP_VERBS = [
    b"HELO",
    b"EHLO",
    b"MAIL FROM:",
    b"RCPT TO:",
    b"DATA",
    b"RSET",
    b"NOOP",
    b"VRFY",
    b"EXPN",
    b"HELP",
    b"AUTH",
    b"AUTH PLAIN",
    b"AUTH LOGIN",
    b"STARTTLS",
    b"BDAT",
    b"",
]
SMTP_ARGS = [
    b"<alice@example.test>",
    b"<>",
    b"<bob%remote.test@example.test>",
    b"<@a:b@c>",
    b'<"a b"@example.test>',
    b"<alice@example.test> SIZE=99999999999",
    b"<x@y> BODY=8BITMIME SMTPUTF8",
    b"client.test",
    b"=",
    b"*",
    b"AHVzZXIAcGFzcw==",
    b".",
    b"..",
    b"\x00",
    b"\xff",
    b"\r",
    b"\n",
    b" ",
]
SMTP_LINE = st.one_of(
    st.binary(max_size=80),
    st.tuples(st.sampled_from(SMTP_VERBS), st.lists(st.sampled_from(SMTP_ARGS), max_size=3)).map(
        lambda t: t[0] + b" ".join(t[1])
    ),
)
SMTP_REPLY = re.compile(rb"\d{3}([ -][\x20-\x7e]*)?\r\n|334 [A-Za-z0-9+/=]*\r\n")


class Failures:
    """Collects log events that carry a failure (an unexpected exception)."""

    def __init__(self, tc: unittest.TestCase) -> None:
        self.events: list[dict[str, Any]] = []
        globalLogPublisher.addObserver(self.observe)
        tc.addCleanup(globalLogPublisher.removeObserver, self.observe)

    def observe(self, event: dict[str, Any]) -> None:
        if "log_failure" in event:
            self.events.append(event)


class SMTPFuzzTests(unittest.TestCase):
    def setUp(self) -> None:
        self.host = Mailhost(Path(self.mktemp()))  # once: hashing its passwords is slow
        self.addCleanup(self.host.store.close)

    @FUZZ
    @given(st.lists(SMTP_LINE, min_size=1, max_size=20), st.booleans())
    def test_command_lines(self, lines: list[bytes], crlf_only: bool) -> None:
        """Random SMTP command lines always get well-formed replies, never 451 or a logged
        exception."""
        host = self.host
        failures = Failures(self)
        factory = inbound_for(host, tls=TLS_CONTEXT)
        proto, transport = connect(factory)
        sep = b"\r\n" if crlf_only else b"\n"
        proto.dataReceived(sep.join(lines) + b"\r\n")
        out = transport.value()
        pos = 0
        while pos < len(out):
            m = SMTP_REPLY.match(out, pos)
            self.assertIsNotNone(m, out[pos : pos + 200])
            assert m is not None
            pos = m.end()
        self.assertEqual(failures.events, [])
        self.assertNotIn(b"451 4.3.0", out)
        if transport.disconnecting:
            last = out.rstrip(b"\r\n").rsplit(b"\r\n", 1)[-1]
            self.assertRegex(last, rb"^(221|421) ")  # QUIT, or a limit (421)
        proto.connectionLost(None)


IMAP_COMMANDS = [
    b"CAPABILITY",
    b"NOOP",
    b"SELECT",
    b"EXAMINE",
    b"CREATE",
    b"DELETE",
    b"RENAME",
    b"SUBSCRIBE",
    b"UNSUBSCRIBE",
    b"LIST",
    b"LSUB",
    b"STATUS",
    b"APPEND",
    b"CHECK",
    b"CLOSE",
    b"EXPUNGE",
    b"SEARCH",
    b"FETCH",
    b"STORE",
    b"COPY",
    b"MOVE",
    b"UID FETCH",
    b"UID STORE",
    b"UID SEARCH",
    b"UID COPY",
    b"UID MOVE",
    b"UID EXPUNGE",
    b"NAMESPACE",
    b"ID",
    b"ENABLE",
    b"UNSELECT",
    b"STARTTLS",
    b"SORT",
    b"UID SORT",
]
IMAP_ARGS = [
    b"INBOX",
    b'"INBOX"',
    b'""',
    b"*",
    b"%",
    b"1",
    b"1:*",
    b"*:1",
    b"0",
    b"4294967296",
    b"1,2,3:5",
    b"(FLAGS)",
    b"(BODY.PEEK[HEADER.FIELDS (SUBJECT)])",
    b"BODY[1.2.MIME]",
    b"BODY[]<0.10>",
    b"BODYSTRUCTURE",
    b"ENVELOPE",
    b"(MESSAGES UIDNEXT)",
    b"+FLAGS",
    b"(\\Seen \\Deleted)",
    b"ALL",
    b"OR",
    b"NOT",
    b"SUBJECT",
    b"HEADER",
    b"SINCE",
    b"1-Jan-2020",
    b"{3}\r\nabc",
    b"{3+}\r\nabc",
    b"{0}\r\n",
    b"{99999999999}",
    b"(",
    b")",
    b"[",
    b"]",
    b'"\\',
    b"NIL",
    b"&",
    b"&Jjo",
    b"..",
    b"\x00",
    b"\xff",
    b"RETURN",
    b"(MIN MAX ALL COUNT)",
    b"()",
    b"(REVERSE SUBJECT)",
    b"UTF-8",
    b"(STATUS (MESSAGES))",
    b"UTF8=ACCEPT",
    b"UTF8",
    b"(~{3}\r\nabc)",
    b"\xc3\xa9",
]
IMAP_LINE = st.one_of(
    st.binary(max_size=80),
    st.tuples(
        st.sampled_from([b"a", b"b1", b"*", b"+", b""]),
        st.sampled_from(IMAP_COMMANDS),
        st.lists(st.sampled_from(IMAP_ARGS), max_size=4),
    ).map(lambda t: t[0] + b" " + t[1] + b" " + b" ".join(t[2])),
)
IMAP_RESPONSE = re.compile(rb"(\* |\+ ?|[^ \r\n]+ (OK|NO|BAD)\b|[^\r\n]*\{\d+\}$)")


class IMAPFuzzTests(unittest.TestCase):
    @FUZZ
    @given(st.lists(IMAP_LINE, min_size=1, max_size=12), st.booleans())
    def test_command_lines(self, lines: list[bytes], selected: bool) -> None:
        """Random IMAP command lines, selected or not, always get well-formed responses, never
        SERVERBUG or a logged exception."""
        failures = Failures(self)
        h = Harness(self, max_literal_size=1000)
        h.add(b"Subject: one\r\n\r\nbody\r\n")
        h.add(
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nx\r\n--b--\r\n',
            flags="S",
        )
        h.login()
        if selected:
            h.cmd(b"s SELECT INBOX")
        out = h.send(b"\r\n".join(lines) + b"\r\n")
        h.clock.advance(1)
        out += h.take()
        self.assertEqual(failures.events, [])
        # The response code, not the word: a generated line may be "SERVERBUG ...", whose tag
        # the BAD answer echoes.
        self.assertNotIn(b"[SERVERBUG]", out)
        # Every response line starts as IMAP says (RFC 3501 §7); a literal's data lines are
        # skipped by following {n}.
        pos = 0
        while pos < len(out):
            end = out.index(b"\r\n", pos)
            line = out[pos:end]
            self.assertRegex(line, IMAP_RESPONSE)
            pos = end + 2
            literal = re.search(rb"\{(\d+)\}$", line)
            if literal:
                pos += int(literal.group(1))
        if h.transport.disconnecting:
            self.assertRegex(out, rb"\* BYE ")
