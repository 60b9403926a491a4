"""Byte-level regression tests for the IMAP defects of stock Twisted 26.10 (listed in the
L{twistedmail.imap.server} module docstring); each sends the hostile or tricky bytes and
would fail against C{imap4.IMAP4Server}."""

from __future__ import annotations

import base64

from test_imap_server import EXTENSIONS, MSG1, PASSWORD, USER, Harness, HeldThreads
from twisted.trial import unittest


class StartTLSInjectionTests(unittest.TestCase):
    """Lines pipelined after STARTTLS must not run inside TLS (RFC 3501 §6.2.1)."""

    def test_pipelined_commands_after_starttls_are_discarded(self) -> None:
        """RFC 3501 §6.2.1 (CVE-2011-0411 class): commands pipelined after STARTTLS in the same
        read are discarded, not run after the handshake."""
        ctx = object()
        h = Harness(self, implicit_tls=False, tls=ctx)
        out = h.send(
            b"a STARTTLS\r\nb CAPABILITY\r\nc LOGIN " + USER.encode() + b' "' + PASSWORD + b'"\r\n'
        )
        self.assertEqual(out, b"a OK Begin TLS negotiation now\r\n")
        self.assertIs(h.transport.tls_context, ctx)
        self.assertEqual(h.server.state, "unauth")
        self.assertEqual(
            h.cmd(b"d CAPABILITY"),
            [
                b"* CAPABILITY IMAP4rev1 AUTH=PLAIN NAMESPACE IDLE CHILDREN" + EXTENSIONS,
                b"d OK CAPABILITY completed",
            ],
        )

    def test_second_starttls_is_refused(self) -> None:
        """A second STARTTLS is BAD TLS already active."""
        h = Harness(self, implicit_tls=False, tls=object())
        h.cmd(b"a STARTTLS")
        self.assertEqual(h.cmd(b"b STARTTLS"), [b"b BAD TLS already active"])

    def test_no_starttls_on_implicit_tls(self) -> None:
        """STARTTLS on implicit TLS (993) is BAD TLS already active."""
        h = Harness(self, implicit_tls=True, tls=object())
        self.assertEqual(h.cmd(b"a STARTTLS"), [b"a BAD TLS already active"])


class PlaintextAuthTests(unittest.TestCase):
    """No password is accepted before TLS, and no AUTH= is offered (stock Twisted accepted
    AUTHENTICATE PLAIN in cleartext)."""

    def setUp(self) -> None:
        self.h = Harness(self, implicit_tls=False, tls=object())

    def test_capability_before_tls_has_no_auth(self) -> None:
        """RFC 3501 §6.2.3: CAPABILITY before TLS offers STARTTLS and LOGINDISABLED and no AUTH=."""
        self.assertEqual(
            self.h.cmd(b"a CAPABILITY"),
            [
                b"* CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED NAMESPACE IDLE CHILDREN"
                + EXTENSIONS,
                b"a OK CAPABILITY completed",
            ],
        )

    def test_authenticate_plain_before_tls_is_privacyrequired(self) -> None:
        """RFC 5530 §3: AUTHENTICATE before TLS, with or without an initial response, is NO
        [PRIVACYREQUIRED] and the session stays unauthenticated."""
        token = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD)
        self.assertEqual(
            self.h.cmd(b"a AUTHENTICATE PLAIN " + token),
            [b"a NO [PRIVACYREQUIRED] Authentication disallowed without TLS"],
        )
        self.assertEqual(
            self.h.cmd(b"b AUTHENTICATE PLAIN"),
            [b"b NO [PRIVACYREQUIRED] Authentication disallowed without TLS"],
        )
        self.assertEqual(self.h.server.state, "unauth")

    def test_login_before_tls_is_privacyrequired(self) -> None:
        """RFC 3501 §6.2.3: LOGIN before TLS is NO [PRIVACYREQUIRED] and the session stays
        unauthenticated."""
        self.assertEqual(
            self.h.cmd(b"a LOGIN " + USER.encode() + b' "' + PASSWORD + b'"'),
            [b"a NO [PRIVACYREQUIRED] Plaintext authentication disallowed without TLS"],
        )
        self.assertEqual(self.h.server.state, "unauth")


class LimitTests(unittest.TestCase):
    """Literal and line limits answered, never a silent disconnect (stock Twisted on a
    100 KB line) or a 1 GB spool (stock Twisted accepted any APPEND literal size)."""

    def test_huge_append_literal_refused_before_continuation(self) -> None:
        """RFC 4469 §4: an APPEND literal over the size limit is NO [TOOBIG] before any
        continuation, and the session goes on."""
        h = Harness(self, max_literal_size=1000)
        h.login()
        self.assertEqual(
            h.cmd(b"a APPEND INBOX {1000000000}"), [b"a NO [TOOBIG] Message too large"]
        )
        self.assertEqual(h.cmd(b"b NOOP"), [b"b OK NOOP completed"])

    def test_huge_login_literal_refused(self) -> None:
        """A 1 GB literal in LOGIN is BAD [TOOBIG] without a continuation."""
        h = Harness(self)
        self.assertEqual(
            h.cmd(b"a LOGIN {1000000000}"),
            [b"a BAD [TOOBIG] Literal too large"],
        )

    def test_overlong_command_line_gets_bye(self) -> None:
        """A 100,000-byte command line gets BYE [TOOBIG] and the connection closes."""
        h = Harness(self)
        out = h.send(b"a NOOP " + b"x" * 100_000 + b"\r\n")
        self.assertEqual(out, b"* BYE [TOOBIG] Command line too long\r\n")
        self.assertTrue(h.transport.disconnecting)


class FetchRenderingTests(unittest.TestCase):
    """Partial FETCH (stock sent the whole message), raw 8-bit headers and sloppy
    Content-Type (stock dropped the connection), implicit \\Seen (stock never set it)."""

    RAW = (
        b"From: =?utf-8?q?J=C3=BCrgen?= <j@example.org>\r\n"
        b"Subject: Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln\r\n"
        b"Content-Type: text/plain; charset=utf-8;\r\n"
        b"\r\n"
        b"Hallo\r\n"
    )

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(self.RAW)
        self.h.add(b"Subject: long\r\n\r\n" + b"0123456789" * 500)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_partial_body_text_returns_only_range(self) -> None:
        """#5613: stock sent `BODY[TEXT]<0.2048> {5000}` and the whole body."""
        out = self.h.send(b"a UID fetch 2 (UID RFC822.SIZE BODY.PEEK[TEXT]<0.2048>)\r\n")
        self.assertEqual(
            out,
            b"* 2 FETCH (UID 2 RFC822.SIZE 5017 BODY[TEXT]<0> {2048}\r\n"
            + b"0123456789" * 204
            + b"01234567)\r\na OK FETCH completed\r\n",
        )
        out = self.h.send(b"b FETCH 2 (BODY.PEEK[TEXT]<4990.100>)\r\n")
        self.assertEqual(
            out, b"* 2 FETCH (BODY[TEXT]<4990> {10}\r\n0123456789)\r\nb OK FETCH completed\r\n"
        )
        out = self.h.send(b"c FETCH 2 (BODY.PEEK[TEXT]<9000.10>)\r\n")
        self.assertEqual(out, b"* 2 FETCH (BODY[TEXT]<9000> {0}\r\n)\r\nc OK FETCH completed\r\n")

    def test_utf8_header_fields_keep_connection(self) -> None:
        """HEADER.FIELDS of raw UTF-8 header lines are sent as a literal, byte for byte, and the
        connection stays open."""
        out = self.h.send(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])\r\n")
        fields = self.RAW.split(b"Content-Type")[0] + b"\r\n"
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT FROM)] {%d}\r\n%s)\r\n"
            b"a OK FETCH completed\r\n" % (len(fields), fields),
        )
        self.assertFalse(self.h.transport.disconnecting)

    def test_utf8_envelope_is_sent_as_literal(self) -> None:
        """RFC 3501 §4.3: an ENVELOPE subject with raw 8-bit bytes is sent as a literal, not a
        quoted string."""
        subject = b"Gr\xc3\xbc\xc3\x9fe aus K\xc3\xb6ln"
        out = self.h.send(b"a FETCH 1 ENVELOPE\r\n")
        sender = b'(("=?utf-8?q?J=C3=BCrgen?=" NIL "j" "example.org"))'
        self.assertEqual(
            out,
            b"* 1 FETCH (ENVELOPE (NIL {%d}\r\n%s %s %s %s NIL NIL NIL NIL NIL))\r\n"
            b"a OK FETCH completed\r\n" % (len(subject), subject, sender, sender, sender),
        )

    def test_content_type_with_trailing_semicolon(self) -> None:
        """A Content-Type with a trailing semicolon still gives its charset in BODYSTRUCTURE."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 1 BODYSTRUCTURE"),
            [
                b'* 1 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("charset" "utf-8") NIL NIL "7BIT"'
                b" 7 1 NIL NIL NIL NIL))",
                b"a OK FETCH completed",
            ],
        )

    def test_boundary_case_is_preserved(self) -> None:
        """RFC 2046 §5.1.1: BODYSTRUCTURE keeps the boundary parameter's case (it is
        case-sensitive)."""
        msg = (
            b'Content-Type: multipart/alternative; boundary="AbC"\r\n\r\n'
            b"--AbC\r\nContent-Type: text/plain\r\n\r\nx\r\n--AbC--\r\n"
        )
        self.h.add(msg)
        self.h.cmd(b"n NOOP")
        self.assertEqual(
            self.h.cmd(b"a FETCH 3 BODYSTRUCTURE")[0],
            b'* 3 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT" 1 0'
            b" NIL NIL NIL NIL)"
            b' "ALTERNATIVE" ("boundary" "AbC") NIL NIL NIL))',
        )

    def test_body_without_peek_sets_seen(self) -> None:
        """RFC 3501 §6.4.5: BODY[] without PEEK sets \\Seen on disk and reports the FLAGS."""
        out = self.h.send(b"a FETCH 1 (BODY[])\r\n")
        self.assertTrue(out.endswith(b" FLAGS (\\Seen))\r\na OK FETCH completed\r\n"))
        self.assertEqual(len(list((self.h.root / "cur").glob("*:2,S"))), 1)


class ReplyCodeTests(unittest.TestCase):
    """Replies stock Twisted sent as BAD (str/bytes bugs) come out as NO with a code."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1)
        self.h.login()

    def test_append_without_flag_list(self) -> None:
        """RFC 4315 §3: APPEND without a flag list asks for the literal and answers [APPENDUID]."""
        self.assertEqual(
            self.h.send(b"a APPEND INBOX {5}\r\n"), b"+ Ready for 5 octets of data\r\n"
        )
        self.assertEqual(
            self.h.send(b"hello\r\n"),
            b"a OK [APPENDUID %d 2] APPEND completed\r\n" % self.h.uidvalidity(),
        )

    def test_append_to_missing_mailbox(self) -> None:
        """RFC 3501 §6.3.11: APPEND to a missing mailbox is NO [TRYCREATE]."""
        self.h.send(b"a APPEND Missing (\\Seen) {5}\r\n")
        self.assertEqual(self.h.send(b"hello\r\n"), b"a NO [TRYCREATE] No such mailbox\r\n")

    def test_copy_to_missing_mailbox(self) -> None:
        """RFC 3501 §6.4.7: COPY and UID COPY to a missing mailbox are NO [TRYCREATE]."""
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(self.h.cmd(b"a COPY 1 Missing"), [b"a NO [TRYCREATE] No such mailbox"])
        self.assertEqual(self.h.cmd(b"b UID COPY 1 Missing"), [b"b NO [TRYCREATE] No such mailbox"])

    def test_select_missing(self) -> None:
        """RFC 5530 §3: SELECT of a missing mailbox is NO [NONEXISTENT]."""
        self.assertEqual(self.h.cmd(b"a SELECT Missing"), [b"a NO [NONEXISTENT] No such mailbox"])

    def test_select_path_escape_is_no(self) -> None:
        """A mailbox name with '..' or '/' cannot reach outside the Maildir: SELECT is NO
        [NONEXISTENT], CREATE NO [CANNOT]."""
        self.assertEqual(
            self.h.cmd(b'a SELECT "../../etc"'), [b"a NO [NONEXISTENT] No such mailbox"]
        )
        self.assertEqual(
            self.h.cmd(b'b CREATE "x/../../y"'), [b"b NO [CANNOT] Invalid mailbox name"]
        )

    def test_search_header_keys_work(self) -> None:
        """Stock: `BAD SEARCH failed: must be str, not bytes`."""
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(
            self.h.cmd(b"a SEARCH SUBJECT Hello FROM bob"),
            [b"* SEARCH 1", b"a OK SEARCH completed"],
        )


class IdleTerminationTests(unittest.TestCase):
    def test_idle_is_not_ended_by_another_command(self) -> None:
        """Stock: `n NOOP` ended IDLE with OK and the NOOP never ran.  RFC 2177 §3: only DONE."""
        h = Harness(self)
        h.login()
        h.cmd(b"s SELECT INBOX")
        self.assertEqual(h.cmd(b"i IDLE"), [b"+ idling"])
        self.assertEqual(h.cmd(b"n NOOP"), [b"i BAD Expected DONE"])
        self.assertEqual(h.cmd(b"m NOOP"), [b"m OK NOOP completed"])

    def test_done_is_case_insensitive(self) -> None:
        """RFC 2177 §3: DONE ends IDLE in any case ('done')."""
        h = Harness(self)
        h.login()
        h.cmd(b"i IDLE")
        self.assertEqual(h.cmd(b"done"), [b"i OK IDLE terminated"])


class PipeliningTests(unittest.TestCase):
    def test_no_bad_for_commands_queued_behind_a_deferred_select(self) -> None:
        """#9282: stock answered `b BAD Unsupported command` before `a OK`."""
        threads = HeldThreads()
        h = Harness(self, run=threads)
        h.add(MSG1)
        h.login()
        threads.holding = True
        self.assertEqual(h.send(b"a SELECT INBOX\r\nb FETCH 1 (UID)\r\nc NOOP\r\n"), b"")
        while threads.calls:
            threads.release()
        lines = h.take().split(b"\r\n")
        self.assertEqual(
            lines[-5:],
            [
                b"a OK [READ-WRITE] SELECT completed",
                b"* 1 FETCH (UID 1)",
                b"b OK FETCH completed",
                b"c OK NOOP completed",
                b"",
            ],
        )

    def test_pipelined_literal_command_after_slow_command(self) -> None:
        """A literal command pipelined behind a SELECT still in a thread gets its continuation
        after the SELECT's OK, in order."""
        threads = HeldThreads()
        h = Harness(self, run=threads)
        h.login()
        threads.holding = True
        self.assertEqual(h.send(b"b SELECT INBOX\r\nc APPEND INBOX {5}\r\n"), b"")
        while threads.calls:
            threads.release()
        out = h.take()
        self.assertTrue(
            out.endswith(b"b OK [READ-WRITE] SELECT completed\r\n+ Ready for 5 octets of data\r\n")
        )
        self.assertEqual(
            h.send(b"hello\r\n"),
            b"* 1 EXISTS\r\n* 1 RECENT\r\nc OK [APPENDUID %d 1] APPEND completed\r\n"
            % h.uidvalidity(),
        )


class NewUserTrialRegressionTests(unittest.TestCase):
    """Found by trying the server as a new user would (hostile folder names, missing args)."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.login()
        self.before = sorted(p.name for p in self.h.root.iterdir() if p.name.startswith("."))

    def folders(self) -> list[str]:
        return sorted(p.name for p in self.h.root.iterdir() if p.name.startswith("."))

    def test_select_without_argument_is_bad(self) -> None:
        """Was C{NO [SERVERBUG]} (an AttributeError in the parser)."""
        self.assertEqual(self.h.cmd(b"d SELECT"), [b"d BAD Syntax error: Missing argument"])
        self.assertEqual(self.h.cmd(b"e CREATE"), [b"e BAD Syntax error: Missing argument"])

    def test_failed_create_leaves_no_parent_behind(self) -> None:
        """Was: C{CREATE "v.w..x"} answered NO but created C{.v} and C{.v.w}."""
        for name in (b'"q..r"', b'"s.t/u"', b'"v.w..x"'):
            self.assertEqual(
                self.h.cmd(b"c CREATE " + name), [b"c NO [CANNOT] Invalid mailbox name"]
            )
        self.assertEqual(self.folders(), self.before)

    def test_dot_names_are_invalid_not_existing(self) -> None:
        """CREATE '.' or '..' is NO [CANNOT] Invalid mailbox name."""
        for name in (b'"."', b'".."'):
            self.assertEqual(
                self.h.cmd(b"c CREATE " + name), [b"c NO [CANNOT] Invalid mailbox name"]
            )

    def test_bad_modified_utf7_is_refused_not_altered(self) -> None:
        """Was: C{CREATE "bad&"} answered OK and created C{.bad+} (RFC 3501 §5.1.3)."""
        for name in (b'"bad&"', b'"&Jjo"', b'"a&-b&"'):
            self.assertEqual(
                self.h.cmd(b"c CREATE " + name), [b"c NO [CANNOT] Invalid mailbox name"]
            )
        self.assertEqual(self.folders(), self.before)

    def test_raw_utf8_name_is_refused_quietly(self) -> None:
        """Was: a clean NO, plus an 'Unhandled Error' traceback in the log."""
        errors: list[object] = []
        from twisted.logger import globalLogPublisher

        def observe(event: dict) -> None:
            if event.get("isError") or event.get("log_failure"):
                errors.append(event)

        globalLogPublisher.addObserver(observe)
        self.addCleanup(globalLogPublisher.removeObserver, observe)
        self.assertEqual(
            self.h.cmd('c CREATE "été"'.encode()), [b"c NO [CANNOT] Invalid mailbox name"]
        )
        self.assertEqual(errors, [])
        self.assertEqual(self.folders(), self.before)

    def test_valid_modified_utf7_round_trips(self) -> None:
        """RFC 3501 §5.1.3: CREATE of a valid modified UTF-7 name makes that folder on disk."""
        self.assertEqual(self.h.cmd(b'c CREATE "&AOk-t&AOk-"'), [b"c OK CREATE completed"])
        self.assertIn(".&AOk-t&AOk-", self.folders())


class LiteralArgumentTests(unittest.TestCase):
    """Literals where a string may stand (RFC 3501 §4.3): found by the new-user trial and the
    security e2e; each used to answer BAD and desynchronise the client."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(b'Subject: say "hi" there\r\n\r\nbody\r\n')
        self.h.login()

    def test_status_with_a_literal_mailbox_name(self) -> None:
        """RFC 3501 §4.3: a mailbox name sent as a literal works in STATUS."""
        self.assertEqual(self.h.send(b"a STATUS {5}\r\n"), b"+ Ready for 5 octets of text\r\n")
        self.assertEqual(
            self.h.send(b"INBOX (MESSAGES)\r\n"),
            b'* STATUS "INBOX" (MESSAGES 1)\r\na OK STATUS completed\r\n',
        )

    def test_append_with_a_literal_mailbox_name(self) -> None:
        """RFC 3501 §4.3: a mailbox name sent as a literal works in APPEND, before the message
        literal."""
        self.h.send(b"b APPEND {5}\r\n")
        self.assertEqual(self.h.send(b"INBOX {3}\r\n"), b"+ Ready for 3 octets of data\r\n")
        self.assertTrue(self.h.send(b"a\r\n\r\n").startswith(b"b OK [APPENDUID "))

    def test_search_with_literal_strings(self) -> None:
        """RFC 3501 §6.4.4 + RFC 7888: SEARCH strings may be synchronizing or non-synchronizing
        literals."""
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(
            self.h.send(b"c SEARCH CHARSET UTF-8 SUBJECT {4}\r\n"),
            b"+ Ready for 4 octets of text\r\n",
        )
        self.assertEqual(self.h.send(b'"hi"\r\n'), b"* SEARCH 1\r\nc OK SEARCH completed\r\n")
        self.assertEqual(
            self.h.send(b"d SEARCH SUBJECT {2+}\r\nzz BODY {4+}\r\nbody\r\n"),
            b"* SEARCH\r\nd OK SEARCH completed\r\n",
        )
        self.assertEqual(
            self.h.send(b"e SEARCH BODY {4+}\r\nbody\r\n"),
            b"* SEARCH 1\r\ne OK SEARCH completed\r\n",
        )

    def test_refused_command_never_runs_its_literal_as_commands(self) -> None:
        """RFC 7888 §4: the data of a non-synchronizing literal is on its way even when the
        command is refused before reading it (unknown command, APPEND UTF8 without ENABLE,
        a bad argument): it used to be read as command lines ("x BAD Missing command", or
        worse, run). Now the refusal ends the connection, as for an oversized literal."""
        for command in (
            b"f FOO {9+}\r\ng LOGOUT\r\n",
            b"f NOOP {9+}\r\ng LOGOUT\r\n",
            b"f APPEND INBOX UTF8 (~{9+}\r\ng LOGOUT\r\n)\r\n",
            b"f APPEND INBOX ~{9+}\r\ng LOGOUT\r\n",
        ):
            h = Harness(self)
            h.login()
            reply = h.send(command)
            self.assertTrue(reply.startswith(b"f BAD "), reply)
            self.assertTrue(
                reply.endswith(b"\r\n* BYE [CLIENTBUG] Closing the connection\r\n"), reply
            )
            self.assertNotIn(b"\r\ng ", reply)
            self.assertTrue(h.transport.disconnecting)
        h = Harness(self)
        h.login()
        self.assertEqual(  # a synchronizing literal was not sent: the session goes on
            h.send(b"f FOO {9}\r\n"), b"f BAD Command unknown or not valid in this state\r\n"
        )
        self.assertFalse(h.transport.disconnecting)
