"""IMAP session tests (RFC 3501, RFC 2177, RFC 2342): whole response lines over a fake
transport, a temp Maildir, a synchronous thread fake and a Clock."""

from __future__ import annotations

import base64
import os
import shutil
import socket
from pathlib import Path
from typing import Any

from test_wire import quickack, tcp_connection
from twisted.cred.checkers import InMemoryUsernamePasswordDatabaseDontUse
from twisted.cred.portal import Portal
from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.task import Clock
from twisted.mail import imap4
from twisted.trial import unittest

from twistedmail.auth import MailRealm
from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.server import IMAPServer, imap_factory
from twistedmail.maildir import ChangeNotifier, Folder, UserMaildir, make_maildir, write_durably
from twistedmail.settings import IMAPSettings
from twistedmail.testing import TLSStringTransport, run_now

USER = "alice@example.test"
PASSWORD = b"correct horse"
MSG1 = (
    b"From: Bob <bob@example.org>\r\n"
    b"To: alice@example.test\r\n"
    b"Subject: Hello\r\n"
    b"Date: Mon, 01 Jan 2024 10:00:00 +0000\r\n"
    b"Message-ID: <1@example.org>\r\n"
    b"\r\n"
    b"Hi Alice\r\n"
)
MSG2 = b"From: carol@example.org\r\nSubject: second\r\n\r\nsecond body\r\n"
T1 = 1704103200.0  # 2024-01-01 10:00:00 UTC
T2 = 1704189600.0  # 2024-01-02 10:00:00 UTC
EXTENSIONS = (
    b" ID ENABLE UNSELECT LITERAL+ UIDPLUS MOVE SPECIAL-USE LIST-EXTENDED CONDSTORE QRESYNC"
    b" ESEARCH LIST-STATUS SORT UTF8=ACCEPT APPENDLIMIT=10000"
)
AFTER_LOGIN = b" COMPRESS=DEFLATE"  # RFC 4978: offered once logged in


class HeldThreads:
    """A run_in_thread fake whose calls wait until L{release} (for ordering tests)."""

    def __init__(self) -> None:
        self.calls: list[tuple[Deferred[Any], Any, tuple[Any, ...]]] = []
        self.holding = False

    def __call__(self, f: Any, *args: Any) -> Deferred[Any]:
        if not self.holding:
            return maybeDeferred(f, *args)
        d: Deferred[Any] = Deferred()
        self.calls.append((d, f, args))
        return d

    def release(self) -> None:
        self.holding = False
        while self.calls:
            d, f, args = self.calls.pop(0)
            maybeDeferred(f, *args).chainDeferred(d)


def make_mailroot(base: Path) -> Path:
    root = base / "example.test" / "alice"
    make_maildir(root)
    return root


class Harness:
    """One user, one server connection, bytes in, bytes out."""

    @classmethod
    def counting(cls, tc: unittest.TestCase) -> tuple[Harness, list[object]]:
        """A harness whose jobs off the reactor thread (run at once) are listed."""
        jobs: list[object] = []

        def counted(f: Any, *args: Any) -> Deferred[Any]:
            jobs.append(f)
            return run_now(f, *args)

        return cls(tc, run=counted), jobs

    def __init__(
        self,
        tc: unittest.TestCase,
        *,
        implicit_tls: bool = True,
        tls: object = None,
        run: Any = run_now,
        max_literal_size: int = 10_000,
        root: Path | None = None,
        notifier: ChangeNotifier | None = None,
    ) -> None:
        self.root = root or make_mailroot(Path(tc.mktemp()))
        self.notifier = notifier or ChangeNotifier()
        self.run = run
        self.maildir = UserMaildir(self.root)
        realm = MailRealm(
            {imap4.IAccount: lambda avatar: MaildirAccount(USER, self.maildir, self.notifier, run)}
        )
        checker = InMemoryUsernamePasswordDatabaseDontUse(**{USER: PASSWORD})
        self.portal = Portal(realm, [checker])
        self.clock = Clock()
        self.server = IMAPServer(
            portal=self.portal,
            tls=tls,  # type: ignore[arg-type]
            implicit_tls=implicit_tls,
            clock=self.clock,
            settings=IMAPSettings(max_literal_size=max_literal_size),
        )
        self.transport = TLSStringTransport()
        self.server.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self) -> bytes:
        out = self.transport.value()
        self.transport.clear()
        return out

    def send(self, data: bytes) -> bytes:
        self.server.dataReceived(data)
        return self.take()

    def cmd(self, line: bytes) -> list[bytes]:
        return self.send(line + b"\r\n").split(b"\r\n")[:-1]

    def login(self) -> None:
        assert self.cmd(b"L LOGIN " + USER.encode() + b' "' + PASSWORD + b'"')[-1].startswith(
            b"L OK"
        )

    def add(self, data: bytes, flags: str = "", mtime: float = T1, sub: str = "cur") -> None:
        write_durably(self.root / sub, data, flags, mtime)

    def uidvalidity(self, folder: str = "INBOX") -> int:
        return Folder(self.maildir.folder_path(folder)).scan().uidvalidity


class GreetingAndLoginTests(unittest.TestCase):
    def test_greeting_plaintext_offers_starttls_and_logindisabled(self) -> None:
        """RFC 3501 §6.2.1, §7.1: on 143 the greeting's CAPABILITY offers STARTTLS and
        LOGINDISABLED, no AUTH=."""
        h = Harness(self, implicit_tls=False, tls=object())
        self.assertEqual(
            h.greeting,
            b"* OK [CAPABILITY IMAP4rev1 STARTTLS LOGINDISABLED NAMESPACE IDLE CHILDREN"
            + EXTENSIONS
            + b"]"
            b" twistedmail IMAP4rev1 ready\r\n",
        )

    def test_greeting_implicit_tls_offers_auth_plain(self) -> None:
        """RFC 8314 §3.3: on implicit TLS the greeting's CAPABILITY offers AUTH=PLAIN and no
        STARTTLS."""
        h = Harness(self)
        self.assertEqual(
            h.greeting,
            b"* OK [CAPABILITY IMAP4rev1 AUTH=PLAIN NAMESPACE IDLE CHILDREN" + EXTENSIONS + b"]"
            b" twistedmail IMAP4rev1 ready\r\n",
        )

    def test_login_ok_carries_capability(self) -> None:
        """RFC 3501 §7.1: the tagged OK of LOGIN carries the post-login CAPABILITY list."""
        h = Harness(self)
        self.assertEqual(
            h.cmd(b'a LOGIN alice@example.test "correct horse"'),
            [
                b"a OK [CAPABILITY IMAP4rev1 AUTH=PLAIN NAMESPACE IDLE CHILDREN"
                + EXTENSIONS
                + AFTER_LOGIN
                + b"] Logged in"
            ],
        )

    def test_login_wrong_password(self) -> None:
        """RFC 5530 §3: a wrong password is NO [AUTHENTICATIONFAILED] and the session stays
        unauthenticated (SELECT is BAD)."""
        h = Harness(self)
        self.assertEqual(
            h.cmd(b"a LOGIN alice@example.test nope"),
            [b"a NO [AUTHENTICATIONFAILED] Authentication failed"],
        )
        self.assertEqual(
            h.cmd(b"b SELECT INBOX"), [b"b BAD Command unknown or not valid in this state"]
        )

    def test_authenticate_plain_with_continuation(self) -> None:
        """Thunderbird: `authenticate PLAIN`, waits for `+`, no SASL-IR."""
        h = Harness(self)
        self.assertEqual(h.cmd(b"a authenticate PLAIN"), [b"+ "])
        token = base64.b64encode(b"\0" + USER.encode() + b"\0" + PASSWORD)
        self.assertEqual(
            h.cmd(token),
            [
                b"a OK [CAPABILITY IMAP4rev1 AUTH=PLAIN NAMESPACE IDLE CHILDREN"
                + EXTENSIONS
                + AFTER_LOGIN
                + b"] Logged in"
            ],
        )

    def test_authenticate_plain_initial_response_and_bad_password(self) -> None:
        """RFC 4959 + RFC 4616: AUTHENTICATE PLAIN with an initial response and a wrong password
        is NO [AUTHENTICATIONFAILED]."""
        h = Harness(self)
        token = base64.b64encode(b"\0" + USER.encode() + b"\0wrong")
        self.assertEqual(
            h.cmd(b"a AUTHENTICATE PLAIN " + token),
            [b"a NO [AUTHENTICATIONFAILED] Authentication failed"],
        )

    def test_authenticate_cancel_and_garbage(self) -> None:
        """RFC 3501 §6.2.2: '*' cancels AUTHENTICATE (BAD), a non-base64 response is BAD, a PLAIN
        message without NULs is NO [AUTHENTICATIONFAILED], an unknown mechanism NO [CANNOT]."""
        h = Harness(self)
        h.cmd(b"a AUTHENTICATE PLAIN")
        self.assertEqual(h.cmd(b"*"), [b"a BAD Authentication cancelled"])
        h.cmd(b"b AUTHENTICATE PLAIN")
        self.assertEqual(h.cmd(b"!!!notbase64"), [b"b BAD Invalid base64 response"])
        h.cmd(b"c AUTHENTICATE PLAIN")
        # A decodable message that is not PLAIN is a failed authentication (RFC 5530 §3),
        # as in SMTP (535 5.7.8) and POP3 (-ERR [AUTH]): twistedmail.sasl.Malformed.
        self.assertEqual(
            h.cmd(base64.b64encode(b"no-nuls")),
            [b"c NO [AUTHENTICATIONFAILED] Authentication failed"],
        )
        self.assertEqual(
            h.cmd(b"d AUTHENTICATE CRAM-MD5"),
            [b"d NO [CANNOT] Unsupported authentication mechanism"],
        )

    def test_namespace(self) -> None:
        """RFC 2342: NAMESPACE (case-blind) gives one personal namespace with '.' as separator
        and no others."""
        h = Harness(self)
        h.login()
        self.assertEqual(
            h.cmd(b"n namespace"), [b'* NAMESPACE (("" ".")) NIL NIL', b"n OK NAMESPACE completed"]
        )

    def test_autologout_before_login(self) -> None:
        """RFC 3501 §5.4: a connection idle for over a minute before login gets BYE Autologout
        and is closed."""
        h = Harness(self)
        h.clock.advance(61)
        self.assertEqual(h.take(), b"* BYE Autologout; connection idle too long\r\n")
        self.assertTrue(h.transport.disconnecting)

    def test_autologout_after_login_is_thirty_minutes(self) -> None:
        """RFC 3501 §5.4: after login the autologout timer is 30 minutes, then BYE Autologout."""
        h = Harness(self)
        h.login()
        h.clock.advance(29 * 60)
        self.assertEqual(h.take(), b"")
        h.clock.advance(61)
        self.assertEqual(h.take(), b"* BYE Autologout; connection idle too long\r\n")

    def test_unknown_command_and_garbage(self) -> None:
        """RFC 3501 §7.1.5: an unknown command, a tag alone and non-ASCII bytes are BAD, and the
        session goes on."""
        h = Harness(self)
        self.assertEqual(h.cmd(b"a XYZZY"), [b"a BAD Command unknown or not valid in this state"])
        self.assertEqual(h.cmd(b"a"), [b"a BAD Missing command"])
        self.assertEqual(
            h.cmd(b"a \xff\xfe"), [b"a BAD Command unknown or not valid in this state"]
        )

    def test_invalid_tag_is_untagged_bad_and_not_echoed(self) -> None:
        """RFC 3501 §9 tag (ASTRING-CHARs, ASCII only) and §7.1.5: a line whose tag has
        8-bit or control octets is answered with an untagged BAD (as Dovecot does) that does
        not echo it, alone on its line or not, and the session goes on."""
        h = Harness(self)
        for line in (b"\xff NOOP", b"a\xff NOOP", b"\xc3\xa9 LOGOUT", b"\xff", b"a\x7f NOOP"):
            self.assertEqual(h.cmd(line), [b"* BAD Invalid tag"], line)
        self.assertEqual(h.cmd(b"a] NOOP"), [b"a] OK NOOP completed"])  # "]" is an ASTRING-CHAR

    def test_factory_builds_server(self) -> None:
        """imap_factory builds IMAPServer protocols with the given literal size limit."""
        h = Harness(self)
        factory = imap_factory(
            portal=h.portal,
            tls=None,
            implicit_tls=True,
            clock=Clock(),
            settings=IMAPSettings(max_literal_size=10),
        )
        proto = factory.buildProtocol(None)
        self.assertIsInstance(proto, IMAPServer)
        self.assertEqual(proto.max_literal_size, 10)


class SelectTests(unittest.TestCase):
    def test_select_reports_required_items(self) -> None:
        """RFC 3501 §6.3.1: FLAGS, EXISTS, RECENT, UNSEEN, PERMANENTFLAGS, UIDNEXT, UIDVALIDITY;
        and RFC 7162 §3.1.2.1 HIGHESTMODSEQ."""
        h = Harness(self)
        h.add(MSG1, "S")
        h.add(MSG2, "", T2, sub="new")
        h.login()
        lines = h.cmd(b'a select "INBOX"')
        self.assertEqual(
            lines,
            [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)",
                b"* 2 EXISTS",
                b"* 1 RECENT",
                b"* OK [UNSEEN 2] First unseen",
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)]"
                b" Flags permitted",
                b"* OK [UIDNEXT 3] Predicted next UID",
                b"* OK [UIDVALIDITY %d] UIDs valid" % h.uidvalidity(),
                b"* OK [HIGHESTMODSEQ 2] Highest",  # RFC 7162 §3.1.2.1
                b"a OK [READ-WRITE] SELECT completed",
            ],
        )

    def test_examine_is_read_only(self) -> None:
        """RFC 3501 §6.3.2: EXAMINE gives empty PERMANENTFLAGS and [READ-ONLY]; STORE is NO
        [READ-ONLY] and BODY[] sets no \\Seen."""
        h = Harness(self)
        h.add(MSG1, "S")
        h.login()
        lines = h.cmd(b"a EXAMINE INBOX")
        self.assertIn(b"* OK [PERMANENTFLAGS ()] Flags permitted", lines)
        self.assertEqual(lines[-1], b"a OK [READ-ONLY] EXAMINE completed")
        self.assertEqual(
            h.cmd(b"b STORE 1 +FLAGS (\\Deleted)"), [b"b NO [READ-ONLY] Mailbox is read-only"]
        )
        # BODY[] does not set \Seen in a read-only mailbox
        self.assertEqual(h.cmd(b"c FETCH 1 (BODY[])")[0], b"* 1 FETCH (BODY[] {%d}" % len(MSG1))

    def test_select_missing_is_no_nonexistent_and_unselects(self) -> None:
        """RFC 3501 §6.3.1: a failed SELECT is NO [NONEXISTENT] and leaves no mailbox selected
        (FETCH is BAD)."""
        h = Harness(self)
        h.login()
        h.cmd(b"a SELECT INBOX")
        self.assertEqual(h.cmd(b"b SELECT Nope"), [b"b NO [NONEXISTENT] No such mailbox"])
        self.assertEqual(
            h.cmd(b"c FETCH 1 FLAGS"), [b"c BAD Command unknown or not valid in this state"]
        )

    def test_select_other_folder_without_close(self) -> None:
        """RFC 3501 §6.3.1: SELECT of another folder without CLOSE switches to it and stops
        watching the first."""
        h = Harness(self)
        h.maildir.create("Sent")
        h.add(MSG1)
        h.login()
        h.cmd(b"a SELECT INBOX")
        lines = h.cmd(b"b SELECT Sent")
        self.assertIn(b"* 0 EXISTS", lines)
        self.assertEqual(lines[-1], b"b OK [READ-WRITE] SELECT completed")
        self.assertEqual(h.notifier._listeners.get(h.root), None)


class FetchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "", T1)
        self.h.add(MSG2, "S", T2)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_uid_fetch_flags(self) -> None:
        """RFC 3501 §6.4.8: UID FETCH 1:* FLAGS gives each message's flags with its UID; the
        command name is case-blind."""
        self.assertEqual(
            self.h.cmd(b"a UID fetch 1:* (FLAGS)"),
            [
                b"* 1 FETCH (FLAGS () UID 1)",
                b"* 2 FETCH (FLAGS (\\Seen) UID 2)",
                b"a OK FETCH completed",
            ],
        )

    def test_uid_fetch_star_beyond_last(self) -> None:
        """RFC 3501 §6.4.8: `n:*` with n > UIDNEXT-1 still matches the last message."""
        self.assertEqual(
            self.h.cmd(b"a UID fetch 9:* (FLAGS)"),
            [b"* 2 FETCH (FLAGS (\\Seen) UID 2)", b"a OK FETCH completed"],
        )

    def test_size_internaldate_and_whole_message(self) -> None:
        """RFC 3501 §7.4.2: RFC822.SIZE, INTERNALDATE and BODY.PEEK[] give the exact size, the
        delivery time and the stored bytes."""
        out = self.h.send(b"a UID fetch 1 (UID RFC822.SIZE INTERNALDATE BODY.PEEK[])\r\n")
        self.assertEqual(
            out,
            b'* 1 FETCH (UID 1 RFC822.SIZE %d INTERNALDATE "01-Jan-2024 10:00:00 +0000"'
            b" BODY[] {%d}\r\n%s)\r\na OK FETCH completed\r\n" % (len(MSG1), len(MSG1), MSG1),
        )

    def test_header_fields(self) -> None:
        """RFC 3501 §6.4.5: BODY.PEEK[HEADER.FIELDS (From Subject)] gives those fields and the
        blank line, names upper-cased in the reply."""
        out = self.h.send(b"a FETCH 1 (BODY.PEEK[HEADER.FIELDS (From Subject)])\r\n")
        fields = b"From: Bob <bob@example.org>\r\nSubject: Hello\r\n\r\n"
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[HEADER.FIELDS (FROM SUBJECT)] {%d}\r\n%s)\r\n"
            b"a OK FETCH completed\r\n" % (len(fields), fields),
        )

    def test_header_fields_not_and_repeated_fields(self) -> None:
        """RFC 3501 §6.4.5: HEADER.FIELDS.NOT leaves out the named field and keeps every copy of
        a repeated one."""
        msg = b"Received: a\r\nReceived: b\r\nSubject: x\r\n\r\nbody\r\n"
        self.h.add(msg, "", T2)
        self.h.cmd(b"n NOOP")
        out = self.h.send(b"a FETCH 3 (BODY.PEEK[HEADER.FIELDS.NOT (Subject)])\r\n")
        fields = b"Received: a\r\nReceived: b\r\n\r\n"
        self.assertEqual(
            out,
            b"* 3 FETCH (BODY[HEADER.FIELDS.NOT (SUBJECT)] {%d}\r\n%s)\r\n"
            b"a OK FETCH completed\r\n" % (len(fields), fields),
        )

    def test_envelope(self) -> None:
        """RFC 3501 §7.4.2: ENVELOPE gives date, subject, from, sender, reply-to, to, cc, bcc,
        in-reply-to and message-id."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 1 ENVELOPE"),
            [
                b'* 1 FETCH (ENVELOPE ("Mon, 01 Jan 2024 10:00:00 +0000" "Hello"'
                b' (("Bob" NIL "bob" "example.org")) (("Bob" NIL "bob" "example.org"))'
                b' (("Bob" NIL "bob" "example.org")) ((NIL NIL "alice" "example.test"))'
                b' NIL NIL NIL "<1@example.org>"))',
                b"a OK FETCH completed",
            ],
        )

    def test_bodystructure_text(self) -> None:
        """RFC 3501 §7.4.2: BODYSTRUCTURE and BODY of a text/plain message, with the default
        us-ascii charset, size and lines."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 1 (BODYSTRUCTURE BODY)"),
            [
                b'* 1 FETCH (BODYSTRUCTURE ("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT"'
                b' 10 1 NIL NIL NIL NIL) BODY ("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL'
                b' "7BIT" 10 1))',
                b"a OK FETCH completed",
            ],
        )

    def test_multipart_sections_and_bodystructure(self) -> None:
        """RFC 3501 §6.4.5, §7.4.2: a multipart message's BODYSTRUCTURE and its numbered
        sections."""
        msg = (
            b'Subject: mp\r\nContent-Type: multipart/mixed; boundary="XyZ"\r\n\r\n'
            b"preamble\r\n--XyZ\r\nContent-Type: text/plain\r\n\r\npart one\r\n"
            b'--XyZ\r\nContent-Type: application/octet-stream; name="a.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="a.bin"\r\n\r\nAAEC\r\n--XyZ--\r\n'
        )
        self.h.add(msg, "", T2)
        self.h.cmd(b"n NOOP")
        self.assertEqual(
            self.h.cmd(b"a FETCH 3 BODYSTRUCTURE"),
            [
                # no space between the parts: body-type-mpart = 1*body SP media-subtype
                b'* 3 FETCH (BODYSTRUCTURE (("TEXT" "PLAIN" ("charset" "us-ascii") NIL NIL "7BIT"'
                b" 8 0 NIL NIL NIL NIL)"
                b'("APPLICATION" "OCTET-STREAM" ("name" "a.bin") NIL NIL "BASE64" 4 NIL'
                b' ("attachment" ("filename" "a.bin")) NIL NIL) "MIXED" ("boundary" "XyZ")'
                b" NIL NIL NIL))",
                b"a OK FETCH completed",
            ],
        )
        out = self.h.send(b"b FETCH 3 (BODY.PEEK[1] BODY.PEEK[2.MIME])\r\n")
        mime = (
            b'Content-Type: application/octet-stream; name="a.bin"\r\n'
            b"Content-Transfer-Encoding: base64\r\n"
            b'Content-Disposition: attachment; filename="a.bin"\r\n\r\n'
        )
        self.assertEqual(
            out,
            b"* 3 FETCH (BODY[1] {8}\r\npart one BODY[2.MIME] {%d}\r\n%s)\r\n"
            b"b OK FETCH completed\r\n" % (len(mime), mime),
        )

    def test_partial_fetch_returns_range_and_origin(self) -> None:
        """Thunderbird's preview: BODY.PEEK[TEXT]<0.2048> -> BODY[TEXT]<0> {n} (RFC 3501 §7.4.2)."""
        out = self.h.send(b"a UID fetch 1 (UID BODY.PEEK[TEXT]<0.2048>)\r\n")
        self.assertEqual(
            out, b"* 1 FETCH (UID 1 BODY[TEXT]<0> {10}\r\nHi Alice\r\n)\r\na OK FETCH completed\r\n"
        )
        out = self.h.send(b"b FETCH 1 (BODY.PEEK[]<3.5>)\r\n")
        self.assertEqual(out, b"* 1 FETCH (BODY[]<3> {5}\r\nm: Bo)\r\nb OK FETCH completed\r\n")

    def test_body_without_peek_sets_seen_and_reports_flags(self) -> None:
        """RFC 3501 §6.4.5: BODY[TEXT] without PEEK sets \\Seen on disk and reports the new FLAGS
        in the same FETCH."""
        out = self.h.send(b"a FETCH 1 (BODY[TEXT])\r\n")
        self.assertEqual(
            out,
            b"* 1 FETCH (BODY[TEXT] {10}\r\nHi Alice\r\n FLAGS (\\Seen))\r\n"
            b"a OK FETCH completed\r\n",
        )
        self.assertEqual(
            [p.name.rpartition(",")[2] for p in (self.h.root / "cur").iterdir()].count("S"), 2
        )
        self.assertEqual(
            self.h.cmd(b"b FETCH 1 FLAGS"), [b"* 1 FETCH (FLAGS (\\Seen))", b"b OK FETCH completed"]
        )

    def test_peek_does_not_set_seen(self) -> None:
        """RFC 3501 §6.4.5: BODY.PEEK[] leaves the flags unchanged."""
        self.h.cmd(b"a FETCH 1 (BODY.PEEK[])")
        self.assertEqual(
            self.h.cmd(b"b FETCH 1 FLAGS"), [b"* 1 FETCH (FLAGS ())", b"b OK FETCH completed"]
        )

    def test_rfc822_items(self) -> None:
        """RFC 3501 §6.4.5: RFC822.HEADER is the header with its blank line and RFC822.TEXT the
        body."""
        out = self.h.send(b"a FETCH 2 (RFC822.HEADER RFC822.TEXT)\r\n")
        header, body = MSG2.split(b"\r\n\r\n")
        self.assertEqual(
            out,
            b"* 2 FETCH (RFC822.HEADER {%d}\r\n%s\r\n\r\n RFC822.TEXT {%d}\r\n%s)\r\n"
            b"a OK FETCH completed\r\n" % (len(header) + 4, header, len(body), body),
        )

    def test_bad_fetch_attribute_is_bad(self) -> None:
        """RFC 3501 §6.4.5: an unknown FETCH attribute is BAD."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 1 (NONSENSE)"), [b"a BAD Syntax error: Invalid FETCH attributes"]
        )


class StoreExpungeTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        for i in range(3):
            self.h.add(b"Subject: %d\r\n\r\nbody %d\r\n" % (i, i), "", T1 + i)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def names(self) -> list[str]:
        return sorted(p.name.rpartition(":2,")[2] for p in (self.h.root / "cur").iterdir())

    def test_uid_store_plus_flags_persists_as_letters(self) -> None:
        """RFC 3501 §6.4.6: +FLAGS, -FLAGS.SILENT and FLAGS change the flags, report them (not
        for .SILENT) and rename the Maildir files (FS, R)."""
        self.assertEqual(
            self.h.cmd(b"a uid store 2 +Flags (\\Seen \\Flagged)"),
            [b"* 2 FETCH (FLAGS (\\Flagged \\Seen) UID 2)", b"a OK STORE completed"],
        )
        self.assertEqual(self.names(), ["", "", "FS"])
        self.assertEqual(
            self.h.cmd(b"b STORE 2 -FLAGS.SILENT (\\Flagged)"), [b"b OK STORE completed"]
        )
        self.assertEqual(
            self.h.cmd(b"c STORE 1:2 FLAGS (\\Answered)"),
            [
                b"* 1 FETCH (FLAGS (\\Answered))",
                b"* 2 FETCH (FLAGS (\\Answered))",
                b"c OK STORE completed",
            ],
        )
        self.assertEqual(self.names(), ["", "R", "R"])

    def test_store_flag_not_an_atom_is_bad(self) -> None:
        """RFC 3501 §9: a flag is an atom (ATOM-CHAR: ASCII, no CTL or atom-specials) or
        "\\" and one; a STORE naming anything else is BAD (as Dovecot answers it) and
        changes no flag, also when the others in the list are valid."""
        for line in (
            b"a STORE 1 +FLAGS (\xff)",
            b"a STORE 1 +FLAGS (\\\xff)",
            b"a STORE 1:3 FLAGS (\\Seen k\xc3\xa9)",
            b"a UID STORE 1 -FLAGS.SILENT \xff",
        ):
            self.assertEqual(self.h.cmd(line), [b"a BAD Syntax error: 8bit data in atom"], line)
        self.assertEqual(
            self.h.cmd(b"a STORE 1 +FLAGS (a]b)"), [b"a BAD Syntax error: Malformed flag"]
        )
        self.assertEqual(self.names(), ["", "", ""])
        self.assertEqual(
            self.h.cmd(b"f FETCH 1:3 FLAGS"),
            [
                b"* 1 FETCH (FLAGS ())",
                b"* 2 FETCH (FLAGS ())",
                b"* 3 FETCH (FLAGS ())",
                b"f OK FETCH completed",
            ],
        )

    def test_store_bad_item(self) -> None:
        """RFC 3501 §6.4.6: an unknown STORE data item is BAD."""
        self.assertEqual(
            self.h.cmd(b"a STORE 1 XFLAGS (\\Seen)"), [b"a BAD Invalid STORE data item"]
        )

    def test_expunge_renumbers(self) -> None:
        """RFC 3501 §7.4.1: EXPUNGE reports each removal with the sequence number at that moment,
        and the rest renumber."""
        self.h.cmd(b"a STORE 1:2 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(
            self.h.cmd(b"b EXPUNGE"), [b"* 1 EXPUNGE", b"* 1 EXPUNGE", b"b OK EXPUNGE completed"]
        )
        self.assertEqual(
            self.h.cmd(b"c FETCH 1 (UID)"), [b"* 1 FETCH (UID 3)", b"c OK FETCH completed"]
        )
        self.assertEqual(len(self.names()), 1)

    def test_close_expunges_silently(self) -> None:
        """RFC 3501 §6.4.2: CLOSE removes \\Deleted messages without EXPUNGE responses."""
        self.h.cmd(b"a STORE 3 +FLAGS.SILENT (\\Deleted)")
        self.assertEqual(self.h.cmd(b"b CLOSE"), [b"b OK CLOSE completed"])
        self.assertEqual(len(self.names()), 2)

    def test_copy_then_delete(self) -> None:
        """Thunderbird's move without MOVE: COPY, then STORE \\Deleted, then EXPUNGE."""
        self.assertEqual(
            self.h.cmd(b"a UID COPY 1:2 Trash"),
            [b"a OK [COPYUID %d 1:2 1:2] COPY completed" % self.h.uidvalidity("Trash")],
        )
        self.assertEqual(
            self.h.cmd(b'b STATUS "Trash" (MESSAGES UIDNEXT)'),
            [b'* STATUS "Trash" (MESSAGES 2 UIDNEXT 3)', b"b OK STATUS completed"],
        )
        self.assertEqual(self.h.cmd(b"c COPY 1 Nowhere"), [b"c NO [TRYCREATE] No such mailbox"])

    def test_copy_into_selected_mailbox_reports_exists(self) -> None:
        """RFC 3501 §6.4.7 + RFC 4315 §3: COPY into the selected mailbox reports the new EXISTS
        and RECENT and answers [COPYUID]."""
        self.assertEqual(
            self.h.cmd(b"a COPY 1 INBOX"),
            [
                b"* 4 EXISTS",
                b"* 1 RECENT",
                b"a OK [COPYUID %d 1 4] COPY completed" % self.h.uidvalidity(),
            ],
        )


class SearchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.add(MSG2, "", T2)
        self.h.add(b"Subject: big\r\n\r\n" + b"z" * 500 + b"\r\n", "F", T2 + 86400)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def search(self, keys: bytes) -> bytes:
        lines = self.h.cmd(b"a " + keys)
        self.assertEqual(lines[-1], b"a OK SEARCH completed")
        return lines[0]

    def test_keys(self) -> None:
        """RFC 3501 §6.4.4: each search key (flags, header fields, sizes, dates, sets, NOT, OR)
        matches the right messages, with and without UID."""
        self.assertEqual(self.search(b"SEARCH ALL"), b"* SEARCH 1 2 3")
        self.assertEqual(self.search(b"SEARCH UNSEEN"), b"* SEARCH 2 3")
        self.assertEqual(self.search(b"UID SEARCH SEEN"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH FLAGGED"), b"* SEARCH 3")
        self.assertEqual(self.search(b"SEARCH SUBJECT hello"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH FROM carol"), b"* SEARCH 2")
        self.assertEqual(self.search(b'SEARCH HEADER Message-ID "<1@"'), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH TO alice"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH LARGER 400"), b"* SEARCH 3")
        self.assertEqual(self.search(b"SEARCH SMALLER 100"), b"* SEARCH 2")
        self.assertEqual(self.search(b"SEARCH BEFORE 2-Jan-2024"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH ON 2-Jan-2024"), b"* SEARCH 2")
        self.assertEqual(self.search(b"SEARCH SINCE 2-Jan-2024"), b"* SEARCH 2 3")
        self.assertEqual(self.search(b"SEARCH NOT SEEN NOT FLAGGED"), b"* SEARCH 2")
        self.assertEqual(self.search(b"SEARCH OR SEEN FLAGGED"), b"* SEARCH 1 3")
        self.assertEqual(self.search(b"SEARCH (OR SEEN FLAGGED) SMALLER 300"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH UID 2:*"), b"* SEARCH 2 3")
        self.assertEqual(self.search(b"SEARCH 2:3 UNSEEN"), b"* SEARCH 2 3")
        self.assertEqual(self.search(b"SEARCH BODY zzzz"), b"* SEARCH 3")
        self.assertEqual(self.search(b"SEARCH TEXT carol"), b"* SEARCH 2")
        self.assertEqual(self.search(b"SEARCH SENTON 1-Jan-2024"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SEARCH CHARSET UTF-8 KEYWORD $Junk"), b"* SEARCH")

    def test_bad_keys(self) -> None:
        """RFC 3501 §6.4.4: an unknown key, a bad number and NIL are BAD; an unsupported CHARSET
        is NO [BADCHARSET] listing the supported ones."""
        self.assertEqual(self.h.cmd(b"a SEARCH FROBNICATE"), [b"a BAD unknown search key"])
        self.assertEqual(self.h.cmd(b"a SEARCH LARGER x"), [b"a BAD number expected"])
        # Found by the fuzz test in CI: NIL (parsed to None then) crashed the key lookup;
        # NIL is an atom, and no search key (RFC 3501 §9)
        self.assertEqual(self.h.cmd(b"a UID SEARCH NIL 1:2"), [b"a BAD unknown search key"])
        self.assertEqual(
            self.h.cmd(b"a SEARCH CHARSET KOI8-R ALL"),
            [b"a NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset"],
        )


class AppendTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.login()  # creates Sent (RFC 6154 special-use folders on first login)

    def stored(self, folder: str = "Sent") -> list[tuple[str, bytes]]:
        cur = self.h.maildir.folder_path(folder) / "cur"
        return [(p.name.rpartition(":2,")[2], p.read_bytes()) for p in sorted(cur.iterdir())]

    def test_append_with_flags_and_date(self) -> None:
        """Thunderbird: `append "Sent" (\\Seen) {n}`; durable before OK."""
        self.assertEqual(
            self.h.send(b'a append "Sent" (\\Seen) "02-Jan-2024 11:00:00 +0100" {11}\r\n'),
            b"+ Ready for 11 octets of data\r\n",
        )
        self.assertEqual(
            self.h.send(b"Hello world\r\n"),
            b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.h.uidvalidity("Sent"),
        )
        self.assertEqual(self.stored(), [("S", b"Hello world")])
        (path,) = (self.h.maildir.folder_path("Sent") / "cur").iterdir()
        self.assertEqual(path.stat().st_mtime, T2)

    def test_append_without_flag_list(self) -> None:
        """RFC 3501 §6.3.11 + RFC 4315 §3: APPEND without flags stores the literal with no flags
        and answers [APPENDUID]."""
        self.h.send(b"a APPEND Sent {5}\r\n")
        self.assertEqual(
            self.h.send(b"hello\r\n"),
            b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.h.uidvalidity("Sent"),
        )
        self.assertEqual(self.stored(), [("", b"hello")])

    def test_append_to_selected_mailbox_sends_exists(self) -> None:
        """RFC 3501 §6.3.11: APPEND to the selected mailbox reports the new EXISTS and RECENT
        before the tagged OK."""
        self.h.cmd(b"s SELECT Sent")
        self.h.send(b"a APPEND Sent {5}\r\n")
        self.assertEqual(
            self.h.send(b"hello\r\n"),
            b"* 1 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID %d 1] APPEND completed\r\n"
            % self.h.uidvalidity("Sent"),
        )

    def test_append_to_selected_mailbox_uses_it(self) -> None:
        """APPEND to the selected mailbox (named in any case, INBOX) stores the message
        through the session's own mailbox: one job off the reactor thread (the store and
        the rescan that reports it, together: issue 10), no second mailbox opened and
        scanned."""
        h, jobs = Harness.counting(self)
        h.login()
        h.cmd(b"s SELECT INBOX")
        jobs.clear()
        h.send(b"a APPEND inbox (\\Flagged) {5}\r\n")
        self.assertEqual(
            h.send(b"hello\r\n"),
            b"* 1 EXISTS\r\n* 1 RECENT\r\na OK [APPENDUID %d 1] APPEND completed\r\n"
            % h.uidvalidity(),
        )
        self.assertEqual(len(jobs), 1)
        self.assertEqual(
            h.cmd(b"f FETCH 1 (UID FLAGS)"),
            [b"* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent))", b"f OK FETCH completed"],
        )

    def test_append_to_other_mailbox_one_job_no_listing(self) -> None:
        """APPEND to a mailbox that is not the selected one stores the message in one job
        off the reactor thread: the target is not opened and scanned (issue 10: the scan
        listed cur/ and new/ of a folder changing under other sessions).  Only the first,
        into a folder never synced, lists it (the sync that gives UIDs to what is there);
        the next lists nothing.  The \\Recent messages stay for the next SELECT (RFC 3501
        §2.3.2)."""
        h, jobs = Harness.counting(self)
        h.login()
        listed: list[str] = []
        real_listdir, real_scandir = os.listdir, os.scandir
        self.patch(os, "listdir", lambda p=".": (listed.append(str(p)), real_listdir(p))[1])
        self.patch(os, "scandir", lambda p=".": (listed.append(str(p)), real_scandir(p))[1])
        replies, counts = [], []
        for tag in (b"a", b"b"):
            jobs.clear()
            del listed[:]
            h.send(tag + b" APPEND Sent (\\Flagged) {5}\r\n")
            replies.append(h.send(b"hello\r\n"))
            counts.append((len(jobs), [Path(p).name for p in listed]))
        self.assertEqual(counts, [(1, ["new", "cur"]), (1, [])])
        self.patch(os, "listdir", real_listdir)
        self.patch(os, "scandir", real_scandir)
        uidvalidity = h.uidvalidity("Sent")
        self.assertEqual(
            replies,
            [
                b"a OK [APPENDUID %d 1] APPEND completed\r\n" % uidvalidity,
                b"b OK [APPENDUID %d 2] APPEND completed\r\n" % uidvalidity,
            ],
        )
        self.assertEqual(h.cmd(b"s SELECT Sent")[1:3], [b"* 2 EXISTS", b"* 2 RECENT"])

    def test_append_to_missing_inbox_makes_it(self) -> None:
        """APPEND to INBOX, not selected, after INBOX was removed from disk, then after its
        tmp/ alone was: it is made again (as at login) and the message stored in it."""
        inbox = self.h.maildir.folder_path("INBOX")
        for sub in ("cur", "new", "tmp"):
            (inbox / sub).rmdir()
        self.h.send(b"a APPEND INBOX {5}\r\n")
        self.assertEqual(
            self.h.send(b"hello\r\n"),
            b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.h.uidvalidity("INBOX"),
        )
        (inbox / "tmp").rmdir()
        self.h.send(b"b APPEND INBOX {5}\r\n")
        self.assertEqual(
            self.h.send(b"again\r\n"),
            b"b OK [APPENDUID %d 2] APPEND completed\r\n" % self.h.uidvalidity("INBOX"),
        )
        self.assertEqual(sorted(self.stored("INBOX")), [("", b"again"), ("", b"hello")])

    def test_append_to_selected_mailbox_made_again_meanwhile(self) -> None:
        """APPEND to the selected folder after it was deleted and made again elsewhere: the
        message is in the new folder, APPENDUID names its UIDVALIDITY (RFC 4315 §3), and the
        session, whose folder is gone, is told so and closed (the rescan that came with the
        store found another UIDVALIDITY and is not applied)."""
        self.h.cmd(b"s SELECT Sent")
        # (StringTransport refuses the reading the dispatcher resumes after the close)
        self.patch(self.h.transport, "resumeProducing", lambda: None)
        path = self.h.maildir.folder_path("Sent")
        shutil.rmtree(path)
        self.h.maildir.create("Sent")
        self.h.send(b"a APPEND Sent {5}\r\n")
        self.assertEqual(
            self.h.send(b"hello\r\n"),
            b"a OK [APPENDUID %d 1] APPEND completed\r\n"
            b"* BYE [NONEXISTENT] Selected mailbox was deleted, have to disconnect.\r\n"
            % self.h.uidvalidity("Sent"),
        )
        self.assertEqual(self.stored(), [("", b"hello")])

    def test_append_to_selected_mailbox_deleted_meanwhile(self) -> None:
        """RFC 3501 §6.3.11: APPEND to the selected folder after it was deleted (by
        another session) is NO [TRYCREATE], as for any missing mailbox."""
        self.h.cmd(b"s SELECT Sent")
        path = self.h.maildir.folder_path("Sent")
        for sub in ("cur", "new", "tmp"):
            for p in (path / sub).iterdir():
                p.unlink()
            (path / sub).rmdir()
        self.h.send(b"a APPEND Sent {5}\r\n")
        self.assertEqual(self.h.send(b"hello\r\n"), b"a NO [TRYCREATE] No such mailbox\r\n")

    def test_append_missing_mailbox_trycreate(self) -> None:
        """RFC 3501 §6.3.11: APPEND to a mailbox that does not exist is NO [TRYCREATE]."""
        self.h.send(b"a APPEND Nope {5}\r\n")
        self.assertEqual(self.h.send(b"hello\r\n"), b"a NO [TRYCREATE] No such mailbox\r\n")

    def test_append_flag_not_an_atom_is_bad(self) -> None:
        """RFC 3501 §9 flag-list: an APPEND whose flag list holds a non-atom (8-bit octets,
        a nested list) is BAD before the literal is asked for, as Dovecot answers it, and
        stores nothing; its non-synchronizing literal (RFC 7888 §4) closes the connection."""
        self.assertEqual(
            self.h.send(b"a APPEND Sent (\xff) {5}\r\n"),
            b"a BAD Syntax error: 8bit data in atom\r\n",
        )
        self.assertEqual(
            self.h.send(b"b APPEND Sent (\\Seen \\\xff) {5}\r\n"),
            b"b BAD Syntax error: 8bit data in atom\r\n",
        )
        self.assertEqual(
            self.h.send(b"c APPEND Sent ((\\Seen)) {5}\r\n"),
            b"c BAD Syntax error: Malformed flag\r\n",
        )
        self.assertEqual(self.stored(), [])
        self.assertEqual(
            self.h.send(b"d APPEND Sent (k\xc3\xa9) {5+}\r\nhello\r\n"),
            b"d BAD Syntax error: 8bit data in atom\r\n"
            b"* BYE [CLIENTBUG] Closing the connection\r\n",
        )
        self.assertEqual(self.stored(), [])

    def test_append_with_invalid_tag_stores_nothing(self) -> None:
        """RFC 3501 §9 tag: an APPEND under a tag with 8-bit octets is an untagged BAD, asks
        for no literal and stores nothing."""
        self.assertEqual(self.h.send(b"\xff APPEND Sent {5}\r\n"), b"* BAD Invalid tag\r\n")
        self.assertEqual(self.stored(), [])

    def test_append_bad_date(self) -> None:
        """RFC 3501 §6.3.11: APPEND with a date-time that does not parse is BAD."""
        self.h.send(b'a APPEND Sent "yesterday" {5}\r\n')
        self.assertEqual(self.h.send(b"hello\r\n"), b"a BAD Invalid date-time\r\n")


class IdleTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def deliver(self, data: bytes) -> None:
        write_durably(self.h.root / "new", data)
        self.h.notifier.changed(self.h.root)

    def test_idle_pushes_new_mail_and_ends_on_done(self) -> None:
        """RFC 2177 §3: during IDLE a delivery is pushed as EXISTS and RECENT, and DONE ends IDLE
        with OK."""
        self.assertEqual(self.h.cmd(b"i IDLE"), [b"+ idling"])
        self.deliver(MSG2)
        self.assertEqual(self.h.take(), b"* 2 EXISTS\r\n* 1 RECENT\r\n")
        self.assertEqual(self.h.cmd(b"DONE"), [b"i OK IDLE terminated"])

    def test_idle_pushes_flag_changes_and_expunges_from_other_sessions(self) -> None:
        """RFC 2177 §3: during IDLE another session's flag change is pushed as FETCH and its
        EXPUNGE as EXPUNGE."""
        self.h.add(MSG2)
        self.h.cmd(b"n NOOP")
        other = Harness(self, root=self.h.root, notifier=self.h.notifier)
        other.login()
        other.cmd(b"s SELECT INBOX")
        self.h.cmd(b"i IDLE")
        other.cmd(b"a STORE 2 +FLAGS (\\Flagged)")
        self.assertEqual(self.h.take(), b"* 2 FETCH (FLAGS (\\Flagged))\r\n")
        other.cmd(b"b STORE 1 +FLAGS.SILENT (\\Deleted)")
        self.h.take()
        other.cmd(b"c EXPUNGE")
        self.assertEqual(self.h.take(), b"* 1 EXPUNGE\r\n")
        self.assertEqual(self.h.cmd(b"DONE"), [b"i OK IDLE terminated"])

    def test_noop_reports_new_mail(self) -> None:
        """Thunderbird: `noop` then `UID fetch N:* (FLAGS)`."""
        write_durably(self.h.root / "new", MSG2)  # no notice: found by the NOOP rescan
        self.assertEqual(
            self.h.cmd(b"n noop"), [b"* 2 EXISTS", b"* 1 RECENT", b"n OK NOOP completed"]
        )
        self.assertEqual(
            self.h.cmd(b"f UID fetch 2:* (FLAGS)"),
            [b"* 2 FETCH (FLAGS (\\Recent) UID 2)", b"f OK FETCH completed"],
        )

    def test_expunge_elsewhere_is_not_reported_during_fetch(self) -> None:
        """RFC 3501 §7.4.1: EXPUNGE waits for NOOP; FETCH keeps the old numbering."""
        self.h.add(MSG2)
        self.h.cmd(b"n NOOP")
        other = Harness(self, root=self.h.root, notifier=self.h.notifier)
        other.login()
        other.cmd(b"s SELECT INBOX")
        other.cmd(b"a STORE 1 +FLAGS.SILENT (\\Deleted)")
        other.cmd(b"b EXPUNGE")
        self.assertEqual(
            self.h.cmd(b"f FETCH 2 (UID)"),
            [b"* 2 FETCH (UID 2)", b"* 1 FETCH (FLAGS (\\Deleted))", b"f OK FETCH completed"],
        )
        self.assertEqual(
            self.h.cmd(b"n NOOP"),
            [b"* 1 EXPUNGE", b"n OK NOOP completed"],
        )
        self.assertEqual(
            self.h.cmd(b"f FETCH 1 (UID)"), [b"* 1 FETCH (UID 2)", b"f OK FETCH completed"]
        )

    def test_tcp_close_mid_idle(self) -> None:
        """A connection lost during IDLE stops watching the folder; a later delivery raises
        nothing."""
        self.h.cmd(b"i IDLE")
        self.h.server.connectionLost(None)
        self.assertEqual(self.h.notifier._listeners.get(self.h.root), None)
        self.deliver(MSG2)  # nobody listening; no error


class MailboxCommandTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.login()

    def test_create_list_lsub_rename_delete(self) -> None:
        """RFC 3501 §6.3.3-§6.3.9: CREATE, SUBSCRIBE, LIST and LSUB with wildcards and
        attributes, RENAME of a parent with its children, DELETE."""
        self.assertEqual(self.h.cmd(b"a CREATE Lists.Work"), [b"a OK CREATE completed"])
        self.assertEqual(self.h.cmd(b"b SUBSCRIBE Lists.Work"), [b"b OK SUBSCRIBE completed"])
        self.assertEqual(
            self.h.cmd(b'c list "" "*"'),
            [
                b'* LIST (\\HasNoChildren) "." "INBOX"',
                b'* LIST (\\HasNoChildren \\Archive) "." "Archive"',
                b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"',
                b'* LIST (\\HasNoChildren \\Junk) "." "Junk"',
                b'* LIST (\\HasChildren) "." "Lists"',
                b'* LIST (\\HasNoChildren) "." "Lists.Work"',
                b'* LIST (\\HasNoChildren \\Sent) "." "Sent"',
                b'* LIST (\\HasNoChildren \\Trash) "." "Trash"',
                b"c OK LIST completed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b'd lsub "" "*"'),
            [
                b'* LSUB () "." "INBOX"',
                b'* LSUB () "." "Archive"',
                b'* LSUB () "." "Drafts"',
                b'* LSUB () "." "Junk"',
                b'* LSUB () "." "Lists.Work"',
                b'* LSUB () "." "Sent"',
                b'* LSUB () "." "Trash"',
                b"d OK LSUB completed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b'e LIST "" "L%"'),
            [b'* LIST (\\HasChildren) "." "Lists"', b"e OK LIST completed"],
        )
        self.assertEqual(
            self.h.cmd(b'f LIST "" ""'), [b'* LIST (\\Noselect) "." ""', b"f OK LIST completed"]
        )
        self.assertEqual(self.h.cmd(b"g RENAME Lists Old"), [b"g OK RENAME completed"])
        self.assertEqual(
            self.h.cmd(b'h LSUB "" "O*"'),
            [b'* LSUB () "." "Old.Work"', b"h OK LSUB completed"],
        )
        self.assertEqual(self.h.cmd(b"i DELETE Old.Work"), [b"i OK DELETE completed"])
        self.assertEqual(self.h.cmd(b"j DELETE Old.Work"), [b"j NO [NONEXISTENT] No such mailbox"])

    def test_create_existing_and_bad_names(self) -> None:
        """RFC 5530: CREATE of an existing name (INBOX in any case) is NO [ALREADYEXISTS], a bad
        name NO [CANNOT], DELETE INBOX NO [CANNOT], RENAME errors NONEXISTENT/ALREADYEXISTS."""
        self.h.cmd(b"a CREATE Sent")
        self.assertEqual(
            self.h.cmd(b"b CREATE Sent"), [b"b NO [ALREADYEXISTS] Mailbox already exists"]
        )
        self.assertEqual(
            self.h.cmd(b"c CREATE inbox"), [b"c NO [ALREADYEXISTS] Mailbox already exists"]
        )
        self.assertEqual(self.h.cmd(b'd CREATE "a..b"'), [b"d NO [CANNOT] Invalid mailbox name"])
        self.assertEqual(self.h.cmd(b"e DELETE INBOX"), [b"e NO [CANNOT] INBOX cannot be deleted"])
        self.assertEqual(
            self.h.cmd(b"f RENAME Nope Other"), [b"f NO [NONEXISTENT] No such mailbox"]
        )
        self.assertEqual(
            self.h.cmd(b"g RENAME Sent INBOX"), [b"g NO [ALREADYEXISTS] Mailbox already exists"]
        )

    def test_non_ascii_folder_name_round_trips_in_mutf7(self) -> None:
        """RFC 3501 §5.1.3: a modified UTF-7 folder name is stored and listed as given."""
        self.assertEqual(self.h.cmd(b"a CREATE &AOk-t&AOk-"), [b"a OK CREATE completed"])
        self.assertTrue((self.h.root / ".&AOk-t&AOk-" / "cur").is_dir())
        self.assertEqual(
            self.h.cmd(b'b LIST "" "&AOk-*"')[0], b'* LIST (\\HasNoChildren) "." "&AOk-t&AOk-"'
        )

    def test_status(self) -> None:
        """RFC 3501 §6.3.10: STATUS gives MESSAGES, RECENT, UIDNEXT, UIDVALIDITY and UNSEEN; a
        missing mailbox is NO [NONEXISTENT] and an unknown item BAD."""
        self.h.add(MSG1, "S")
        self.h.add(MSG2, "", sub="new")
        self.assertEqual(
            self.h.cmd(b"a STATUS INBOX (MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"),
            [
                b'* STATUS "INBOX" (MESSAGES 2 RECENT 1 UIDNEXT 3 UIDVALIDITY %d UNSEEN 1)'
                % self.h.uidvalidity(),
                b"a OK STATUS completed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b"b STATUS Nope (MESSAGES)"), [b"b NO [NONEXISTENT] No such mailbox"]
        )
        self.assertEqual(self.h.cmd(b"c STATUS INBOX (SIZE)"), [b"c BAD Unknown STATUS item"])


class PipeliningTests(unittest.TestCase):
    def test_pipelined_commands_wait_for_a_slow_select(self) -> None:
        """twisted #9282: commands after a SELECT whose Deferred is pending are not BAD."""
        threads = HeldThreads()
        h = Harness(self, run=threads)
        h.add(MSG1)
        h.login()
        threads.holding = True
        out = h.send(b"a SELECT INBOX\r\nb FETCH 1 (FLAGS)\r\nc NOOP\r\n")
        self.assertEqual(out, b"")
        threads.release()
        while threads.calls:
            threads.release()
        lines = h.take().split(b"\r\n")
        self.assertEqual(
            lines[-4:],
            [b"* 1 FETCH (FLAGS ())", b"b OK FETCH completed", b"c OK NOOP completed", b""],
        )
        self.assertIn(b"a OK [READ-WRITE] SELECT completed", lines)


class QuickAckTests(unittest.TestCase):
    def test_input_resumed_after_a_command_is_not_acknowledged_again(self) -> None:
        """Pipelined input that came with a line in part is acknowledged as it comes; when
        the dispatcher resumes reading after each command, nothing new came and no second
        ACK (a setsockopt each) is asked for."""
        held: list[tuple[Any, tuple[Any, ...], Deferred[Any]]] = []

        def later(f: Any, *args: Any) -> Deferred[Any]:
            d: Deferred[Any] = Deferred()
            held.append((f, args, d))
            return d

        def run_held() -> None:
            while held:
                f, args, d = held.pop(0)
                maybeDeferred(f, *args).chainDeferred(d)

        h = Harness(self, run=later)
        h.server.dataReceived(b"L LOGIN " + USER.encode() + b' "' + PASSWORD + b'"\r\n')
        run_held()
        self.assertTrue(h.take().startswith(b"L OK"))
        with tcp_connection() as sock:
            h.transport.socket = sock  # type: ignore[attr-defined]
            self.assertEqual(h.send(b"s SELECT INBOX\r\nn NOOP\r\nc NO"), b"")
            self.assertEqual(quickack(sock), 1)  # the partial line: acknowledged at once
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            run_held()  # SELECT ends, input resumes: NOOP runs (its rescan too), "c NO" is left
            run_held()
            self.assertEqual(h.take().split(b"\r\n")[-2:], [b"n OK NOOP completed", b""])
            self.assertEqual(quickack(sock), 0)

    def test_a_literal_and_the_line_after_it_are_acknowledged_at_once(self) -> None:
        """A command that arrives in part (a synchronizing literal, its octets, the rest of
        its line) gets a TCP ACK at once (wire.ack_now): imaplib sends an APPEND's literal
        and its CRLF apart, and Nagle held the CRLF for our 40 ms delayed ACK."""
        h = Harness(self)
        h.login()
        with tcp_connection() as sock:
            h.transport.socket = sock  # type: ignore[attr-defined]
            self.assertEqual(h.cmd(b"n NOOP"), [b"n OK NOOP completed"])
            self.assertEqual(quickack(sock), 0)  # a whole command: the reply carries the ACK
            self.assertEqual(h.send(b"a APPEND INBOX {5}\r\n"), b"+ Ready for 5 octets of data\r\n")
            self.assertEqual(quickack(sock), 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            self.assertEqual(h.send(b"hello"), b"")  # the literal, its CRLF still to come
            self.assertEqual(quickack(sock), 1)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)
            self.assertEqual(
                h.send(b"\r\n"),
                b"a OK [APPENDUID %d 1] APPEND completed\r\n" % h.uidvalidity(),
            )
            self.assertEqual(quickack(sock), 0)
            self.assertEqual(
                [p.read_bytes() for p in (h.root / "new").iterdir()]
                + [p.read_bytes() for p in (h.root / "cur").iterdir()],
                [b"hello"],
            )
