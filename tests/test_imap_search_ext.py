"""ESEARCH (RFC 4731), LIST-STATUS (RFC 5819), SORT (RFC 5256) and UTF8=ACCEPT
(RFC 6855): whole response lines over a fake transport."""

from __future__ import annotations

from test_imap_server import MSG1, MSG2, T1, T2, Harness
from twisted.trial import unittest

from twistedmail.imap.server import esearch_response
from twistedmail.imap.sort import (
    SortError,
    base_subject,
    casemap,
    first_mailbox,
    parse_criteria,
)


class ESearchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        for i in range(6):
            self.h.add(MSG1 if i % 2 else MSG2, "S" if i in (0, 1, 2, 4) else "", T1 + i)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_response_helper(self) -> None:
        """RFC 4731 §3.1: esearch_response writes TAG, UID, then only the asked results; MIN, MAX
        and ALL are left out when nothing matched."""
        self.assertEqual(
            esearch_response(b"a", [b"MIN", b"MAX", b"ALL", b"COUNT"], [5, 1, 2, 3], True),
            b'* ESEARCH (TAG "a") UID MIN 1 MAX 5 ALL 1:3,5 COUNT 4',
        )
        self.assertEqual(
            esearch_response(b"a", [b"MIN", b"ALL", b"COUNT"], [], False),
            b'* ESEARCH (TAG "a") COUNT 0',
        )
        self.assertEqual(esearch_response(b"a", [b"ALL"], [], False), b'* ESEARCH (TAG "a")')

    def test_min_max_all_count(self) -> None:
        """RFC 4731 §3.1: SEARCH RETURN (MIN MAX ALL COUNT) answers one ESEARCH with each result."""
        self.assertEqual(
            self.h.cmd(b"a SEARCH RETURN (MIN MAX ALL COUNT) SEEN"),
            [b'* ESEARCH (TAG "a") MIN 1 MAX 5 ALL 1:3,5 COUNT 4', b"a OK SEARCH completed"],
        )

    def test_uid_search_and_charset(self) -> None:
        """RFC 4731 §3.1: UID SEARCH RETURN with a CHARSET answers ESEARCH with the UID marker
        and UIDs."""
        self.assertEqual(
            self.h.cmd(b"b UID SEARCH RETURN (COUNT MAX) CHARSET UTF-8 UNSEEN"),
            [b'* ESEARCH (TAG "b") UID MAX 6 COUNT 2', b"b OK SEARCH completed"],
        )

    def test_empty_return_means_all(self) -> None:
        """RFC 4731 §3.1: RETURN () means RETURN (ALL)."""
        self.assertEqual(
            self.h.cmd(b"c SEARCH RETURN () SUBJECT hello"),
            [b'* ESEARCH (TAG "c") ALL 2,4,6', b"c OK SEARCH completed"],
        )

    def test_no_match(self) -> None:
        """RFC 4731 §3.1: with no match only COUNT 0 is sent (no MIN)."""
        self.assertEqual(
            self.h.cmd(b"d SEARCH RETURN (MIN COUNT) SUBJECT nothing"),
            [b'* ESEARCH (TAG "d") COUNT 0', b"d OK SEARCH completed"],
        )

    def test_plain_search_unchanged_and_bad_option(self) -> None:
        """SEARCH without RETURN keeps the RFC 3501 SEARCH reply; an unknown return option or a
        broken list is BAD."""
        self.assertEqual(
            self.h.cmd(b"e SEARCH UNSEEN"), [b"* SEARCH 4 6", b"e OK SEARCH completed"]
        )
        self.assertEqual(
            self.h.cmd(b"f SEARCH RETURN (SAVE) ALL"),
            [b"f BAD Syntax error: Unknown SEARCH return option"],
        )
        self.assertEqual(
            self.h.cmd(b"g SEARCH RETURN (MIN"),
            [b"g BAD Syntax error: Mismatched parenthesis"],
        )


class ListStatusTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.add(MSG2, "", T2)
        self.h.login()
        self.h.maildir.create("Lists.Work")  # "Lists" exists only as a level: \\Noselect
        self.uv = self.h.uidvalidity()

    def test_status_after_each_selectable_mailbox(self) -> None:
        """RFC 5819 §2: LIST RETURN (STATUS ...) sends each selectable mailbox's STATUS right
        after its LIST line."""
        self.assertEqual(
            self.h.cmd(b'l LIST "" "%" RETURN (STATUS (MESSAGES UNSEEN UIDNEXT))'),
            [
                b'* LIST (\\HasNoChildren) "." "INBOX"',
                b'* STATUS "INBOX" (MESSAGES 2 UNSEEN 1 UIDNEXT 3)',
                b'* LIST (\\HasNoChildren \\Archive) "." "Archive"',
                b'* STATUS "Archive" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)',
                b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"',
                b'* STATUS "Drafts" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)',
                b'* LIST (\\HasNoChildren \\Junk) "." "Junk"',
                b'* STATUS "Junk" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)',
                b'* LIST (\\Noselect \\HasChildren) "." "Lists"',
                b'* LIST (\\HasNoChildren \\Sent) "." "Sent"',
                b'* STATUS "Sent" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)',
                b'* LIST (\\HasNoChildren \\Trash) "." "Trash"',
                b'* STATUS "Trash" (MESSAGES 0 UNSEEN 0 UIDNEXT 1)',
                b"l OK LIST completed",
            ],
        )

    def test_with_other_options_and_nonexistent(self) -> None:
        """RFC 5819 §2: STATUS combines with SUBSCRIBED and SPECIAL-USE, and a \\NonExistent
        mailbox gets no STATUS."""
        self.h.cmd(b"s SUBSCRIBE Gone")
        self.assertEqual(
            self.h.cmd(
                b'l LIST (SUBSCRIBED) "" ("INBOX" "Gone") RETURN (SPECIAL-USE STATUS (UIDVALIDITY))'
            ),
            [
                b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"',
                b'* STATUS "INBOX" (UIDVALIDITY %d)' % self.uv,
                b'* LIST (\\NonExistent \\Subscribed) "." "Gone"',
                b"l OK LIST completed",
            ],
        )

    def test_bad_status_options(self) -> None:
        """RFC 5819: an unknown STATUS item, STATUS without a list, or a bare nested list in
        RETURN is BAD."""
        self.assertEqual(
            self.h.cmd(b'l LIST "" "*" RETURN (STATUS (SIZE))'),
            [b"l BAD Unknown STATUS item"],
        )
        self.assertEqual(
            self.h.cmd(b'l LIST "" "*" RETURN (STATUS)'),
            [b"l BAD Syntax error: STATUS needs a list of items"],
        )
        self.assertEqual(
            self.h.cmd(b'l LIST "" "*" RETURN ((MESSAGES))'),
            [b"l BAD Syntax error: Unexpected list"],
        )

    def test_status_with_mismatched_brackets(self) -> None:
        """Found by the fuzz test: was NO [SERVERBUG]."""
        self.assertEqual(
            self.h.cmd(b"a STATUS INBOX (BODY.PEEK[HEADER.FIELDS (SUBJECT)])"),
            [b"a BAD Syntax error: Mismatched parenthesis"],
        )


def message(subject: bytes, sender: bytes, to: bytes, date: bytes, cc: bytes = b"") -> bytes:
    header = b"From: %s\r\nTo: %s\r\nSubject: %s\r\n" % (sender, to, subject)
    if date:
        header += b"Date: %s\r\n" % date
    if cc:
        header += b"Cc: %s\r\n" % cc
    return header + b"\r\nbody\r\n"


class BaseSubjectTests(unittest.TestCase):
    def test_rfc5256_examples(self) -> None:
        """RFC 5256 §2.1: the base subject drops Re:, Fwd:, [blob] prefixes, (fwd) trailers and
        extra white space, and decodes encoded words."""
        cases = {
            b"Re: hello": "hello",
            b"RE: Re: re[2]: hello": "hello",
            b"Fwd: [list] Re: hello (fwd)": "hello",
            b"[list] hello": "hello",
            b"[list]": "[list]",
            b"[Fwd: Re: hello]": "hello",
            b"  hello \t world  ": "hello world",
            b"=?utf-8?q?R=C3=A9sum=C3=A9?=": "R\u00e9sum\u00e9",
            b"Re:": "",
            b"fw: FW: fwd: x": "x",
            b"re [blob]: x": "x",
        }
        for raw, base in cases.items():
            self.assertEqual(base_subject(raw), base, raw)
        self.assertEqual(base_subject(None), "")

    def test_criteria(self) -> None:
        """RFC 5256 §3: parse_criteria reads keys with REVERSE (case-blind) and refuses empty,
        REVERSE-only, doubled REVERSE, unknown or nested criteria."""
        self.assertEqual(
            parse_criteria([b"reverse", b"DATE", b"subject"]),
            [(b"DATE", True), (b"SUBJECT", False)],
        )
        for bad in ([], [b"REVERSE"], [b"REVERSE", b"REVERSE", b"DATE"], [b"BOGUS"], [[b"x"]]):
            self.assertRaises(SortError, parse_criteria, bad)

    def test_first_mailbox(self) -> None:
        """RFC 5256 §3: FROM/TO/CC sort by the first address's mailbox (a group by its name),
        parsed in full."""
        cases = {
            b"a@x.test": "a",
            b"Zed <zed@x.test>": "zed",
            b' "Doe, J" <j@x>': "j",  # full parse
            b"x@y, z@w": "x",
            # a group's first address is its start marker, mailbox = the group name
            # (RFC 3501 §7.4.2), as Dovecot sorts (imaptest sort-addresses)
            b"undisclosed-recipients:;": "undisclosed-recipients",
            b"Group: a@b;": "Group",
            b"<a@x> (Name)": "a",
            b"": "",
            b"a.b+c@x.test (comment)": "a.b+c",
            "J\u00f6rg <j\u00f6rg@x>".encode(): "j\u00f6rg",
        }
        for raw, local in cases.items():
            self.assertEqual(first_mailbox(raw), local, raw)
        self.assertEqual(first_mailbox(None), "")

    def test_casemap_only_ascii(self) -> None:
        """RFC 5256 §3 i;ascii-casemap: only ASCII letters are upper-cased."""
        self.assertEqual(casemap("abc\u00e9"), "ABC\u00e9".encode())


class SortTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        tue = b"Tue, 02 Jan 2024 10:00:00 +0000"
        mon = b"Mon, 01 Jan 2024 23:00:00 -0300"  # 2024-01-02 02:00 UTC
        self.h.add(message(b"Re: beta", b"Zed <zed@x.test>", b"b@x.test", tue), "S", T1)
        self.h.add(message(b"alpha", b"amy@x.test", b"c@x.test", mon, b"q@x"), "", T1 + 5)
        self.h.add(message(b"[list] Beta", b"Bob@x.test", b"a@x.test", b""), "S", T1 + 10)
        self.h.add(message(b"gamma gamma", b"amy@x.test", b"a@x.test", b"garbage"), "", T2)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def sort(self, line: bytes) -> list[bytes]:
        return self.h.cmd(b"t " + line)

    def test_each_key(self) -> None:
        """RFC 5256 §3: SORT by each key (ARRIVAL, DATE, SUBJECT, FROM, TO, CC, SIZE) and
        REVERSE, ties by sequence number."""
        expected = {
            b"(ARRIVAL)": b"* SORT 1 2 3 4",
            b"(REVERSE ARRIVAL)": b"* SORT 4 3 2 1",
            b"(DATE)": b"* SORT 3 2 1 4",  # 3: no Date, 4: bad Date: INTERNALDATE
            b"(SUBJECT)": b"* SORT 2 1 3 4",  # alpha, beta (1, 3 in order), gamma
            b"(FROM)": b"* SORT 2 4 3 1",  # amy, amy, Bob, zed (casemap)
            b"(TO)": b"* SORT 3 4 1 2",
            b"(CC)": b"* SORT 1 3 4 2",  # empty first
            b"(SIZE)": b"",
            b"(SUBJECT REVERSE DATE)": b"* SORT 2 1 3 4",
            b"(REVERSE SUBJECT ARRIVAL)": b"* SORT 4 1 3 2",
        }
        for criteria, line in expected.items():
            if criteria == b"(SIZE)":
                order = sorted(range(1, 5), key=lambda n: (self.size(n), n))
                line = b"* SORT " + b" ".join(b"%d" % n for n in order)
            self.assertEqual(
                self.sort(b"SORT " + criteria + b" UTF-8 ALL"), [line, b"t OK SORT completed"]
            )

    def size(self, seq: int) -> int:
        reply = self.h.cmd(b"z FETCH %d (RFC822.SIZE)" % seq)[0]
        return int(reply.rsplit(b" ", 1)[1].rstrip(b")"))

    def test_uid_sort_with_search_keys(self) -> None:
        """RFC 5256 §3: UID SORT with a charset and search keys sorts only the matching messages
        and answers UIDs."""
        self.assertEqual(
            self.sort(b"UID SORT (REVERSE ARRIVAL) US-ASCII UNSEEN"),
            [b"* SORT 4 2", b"t OK SORT completed"],
        )
        self.assertEqual(
            self.sort(b"SORT (SUBJECT) UTF-8 OR SEEN FROM amy"),
            [b"* SORT 2 1 3 4", b"t OK SORT completed"],
        )
        self.assertEqual(
            self.sort(b"SORT (SUBJECT) UTF-8 SUBJECT nothing"),
            [b"* SORT", b"t OK SORT completed"],
        )

    def test_errors(self) -> None:
        """RFC 5256 §3: an unsupported charset is NO [BADCHARSET]; an unknown key or criteria
        without parentheses is BAD."""
        self.assertEqual(
            self.sort(b"SORT (SUBJECT) KOI8-R ALL"),
            [b"t NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset"],
        )
        self.assertEqual(self.sort(b"SORT (BOGUS) UTF-8 ALL"), [b"t BAD unknown sort key"])
        self.assertEqual(
            self.sort(b"SORT SUBJECT UTF-8 ALL"),
            [b"t BAD Syntax error: Sort criteria expected"],
        )
        self.assertEqual(
            self.sort(b"SORT (SUBJECT) UTF-8"),
            [b"t BAD Syntax error: Charset and search keys expected"],
        )
        self.assertEqual(self.sort(b"SORT (DATE) UTF-8 BOGUS"), [b"t BAD unknown search key"])


class UTF8AcceptTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.login()
        self.h.maildir.create("Café & Co")

    def enable(self) -> None:
        self.assertEqual(
            self.h.cmd(b"e ENABLE UTF8=ACCEPT"),
            [b"* ENABLED UTF8=ACCEPT", b"e OK ENABLE completed"],
        )

    def test_names_are_modified_utf7_until_enabled(self) -> None:
        """RFC 6855 §3: mailbox names are sent in modified UTF-7 until ENABLE UTF8=ACCEPT, then
        in UTF-8."""
        self.assertEqual(
            self.h.cmd(b'l LIST "" "Caf*"'),
            [b'* LIST (\\HasNoChildren) "." "Caf&AOk- &- Co"', b"l OK LIST completed"],
        )
        self.enable()
        self.assertEqual(
            self.h.cmd('l LIST "" "Caf*"'.encode()),
            ['* LIST (\\HasNoChildren) "." "Café & Co"'.encode(), b"l OK LIST completed"],
        )
        self.assertEqual(
            self.h.cmd(b"e ENABLE UTF8=ACCEPT"), [b"* ENABLED", b"e OK ENABLE completed"]
        )

    def test_utf8_names_in_commands(self) -> None:
        """RFC 6855 §3: after ENABLE UTF8=ACCEPT, CREATE, STATUS and LIST take UTF-8 mailbox
        names."""
        self.enable()
        self.assertEqual(self.h.cmd('c CREATE "Здравствуйте"'.encode()), [b"c OK CREATE completed"])
        self.assertIn("Здравствуйте", self.h.maildir.folders())
        self.assertEqual(
            self.h.cmd('s STATUS "Café & Co" (MESSAGES)'.encode()),
            ['* STATUS "Café & Co" (MESSAGES 0)'.encode(), b"s OK STATUS completed"],
        )
        self.assertEqual(
            self.h.cmd('l LIST "" ("Café & Co" "Здр*") RETURN (STATUS (UIDNEXT))'.encode()),
            [
                '* LIST (\\HasNoChildren) "." "Café & Co"'.encode(),
                '* STATUS "Café & Co" (UIDNEXT 1)'.encode(),
                '* LIST (\\HasNoChildren) "." "Здравствуйте"'.encode(),
                '* STATUS "Здравствуйте" (UIDNEXT 1)'.encode(),
                b"l OK LIST completed",
            ],
        )
        self.assertEqual(
            self.h.cmd('x SELECT "Café & Co"'.encode())[-1],
            b"x OK [READ-WRITE] SELECT completed",
        )
        self.assertEqual(self.h.send(b"r RENAME {10}\r\n"), b"+ Ready for 10 octets of text\r\n")
        self.assertEqual(self.h.cmd("Café & Co Été".encode()), [b"r OK RENAME completed"])
        self.assertIn("Été", self.h.maildir.folders())
        self.assertEqual(
            self.h.cmd(b'c CREATE "\xff\xfe"'), [b"c NO [CANNOT] Invalid mailbox name"]
        )

    def test_append_utf8_literal8(self) -> None:
        """RFC 6855 §4: APPEND UTF8 (~{n}) needs ENABLE UTF8=ACCEPT; then the UTF-8 message is
        stored."""
        data = "Subject: Grüße\r\nFrom: jörg@bücher.example\r\n\r\nHallo\r\n".encode()
        line = b"a APPEND INBOX (\\Seen) UTF8 (~{%d}" % len(data)
        self.assertEqual(self.h.cmd(line), [b"a BAD UTF8 APPEND needs ENABLE UTF8=ACCEPT"])
        self.enable()
        self.assertEqual(
            self.h.send(line + b"\r\n"), b"+ Ready for %d octets of data\r\n" % len(data)
        )
        reply = self.h.cmd(data + b")")
        self.assertEqual(len(reply), 1)
        self.assertTrue(reply[0].startswith(b"a OK [APPENDUID "), reply)
        stored = list((self.h.root / "cur").iterdir())
        self.assertEqual([p.read_bytes() for p in stored], [data])
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(
            self.h.cmd(b"f FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[:2],
            [b"* 1 FETCH (BODY[HEADER.FIELDS (SUBJECT)] {20}", "Subject: Grüße".encode()],
        )

    def test_append_utf8_needs_the_parenthesis(self) -> None:
        """RFC 6855 §4: APPEND UTF8 without (~{n}) is BAD; with a {n+} literal the connection
        closes with BYE [CLIENTBUG]."""
        self.enable()
        self.assertEqual(
            self.h.cmd(b"a APPEND INBOX UTF8 {5}"),
            [b"a BAD Syntax error: UTF8 (~{n}) literal expected"],
        )
        self.assertEqual(  # the unread non-synchronizing literal's data is on its way
            self.h.cmd(b"a APPEND INBOX UTF8 {5+}"),
            [
                b"a BAD Syntax error: UTF8 (~{n}) literal expected",
                b"* BYE [CLIENTBUG] Closing the connection",
            ],
        )
        self.setUp()
        self.enable()
        self.assertEqual(
            self.h.cmd(b"a APPEND INBOX UTF8 (~{5+}\r\nhello"),
            [b"a BAD Syntax error: Missing parenthesis after the literal"],
        )
