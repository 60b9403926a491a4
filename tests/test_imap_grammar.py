"""The IMAP command grammar (RFC 3501 §9) and the SEARCH date keys (§6.4.4), with exact
replies: quoted strings, atoms, NIL, literals and non-synchronizing literals where the grammar
allows them, message numbers, flags."""

from __future__ import annotations

from test_imap_server import MSG1, MSG2, T1, T2, Harness
from twisted.mail import imap4
from twisted.trial import unittest

from twistedmail.imap import grammar


class GrammarFunctionTests(unittest.TestCase):
    def test_quoted(self) -> None:
        """RFC 3501 §9 quoted: only \\\\ and \\" are escapes; NUL, CR, LF are never allowed."""
        self.assertEqual(grammar.quoted(b'"a\\"b\\\\c" rest'), (b'a"b\\c', b" rest"))
        self.assertEqual(grammar.quoted('"Café"'.encode()), ("Café".encode(), b""))
        for bad in (b'"a\x00b"', b'"a\rb"', b'"a\\nb"', b'"open', b'"a\\'):
            self.assertRaises(imap4.IllegalClientResponse, grammar.quoted, bad)

    def test_astring(self) -> None:
        """An astring is a quoted string or atom; NIL is the string "NIL"."""
        self.assertEqual(grammar.astring(b"INBOX (MESSAGES)"), (b"INBOX", b"(MESSAGES)"))
        self.assertEqual(grammar.astring(b"NIL"), (b"NIL", b""))
        self.assertEqual(grammar.astring(b'"" x'), (b"", b"x"))
        self.assertEqual(grammar.astring(b"a]b"), (b"a]b", b""))  # ASTRING-CHAR has "]"
        for bad in (b"", b"a(b", b'a"b', b"a\\b", b"a\x01b", b'"a"b'):
            self.assertRaises(imap4.IllegalClientResponse, grammar.astring, bad)

    def test_parse_list(self) -> None:
        """Nested lists keep NIL and unquote strings; unbalanced parentheses, literal markers
        and tokens glued to a quoted string are refused."""
        self.assertEqual(
            grammar.parse_list(b'OR (SEEN NIL) "a b" 1:*'),
            [b"OR", [b"SEEN", b"NIL"], b"a b", b"1:*"],
        )
        for bad in (b"(a", b"a)", b"{3}", b'a"b"', b"a\x00"):
            self.assertRaises(imap4.IllegalClientResponse, grammar.parse_list, bad)

    def test_flag_list(self) -> None:
        """RFC 3501 §9 store-att-flags: a flag list or flags without parentheses."""
        self.assertEqual(grammar.flag_list(b"(\\Seen $Hi)"), ([b"\\Seen", b"$Hi"], b""))
        self.assertEqual(grammar.flag_list(b"\\Seen NIL"), ([b"\\Seen", b"NIL"], b""))
        self.assertEqual(grammar.flag_list(b"()"), ([], b""))
        for bad in (b"(\\)", b"((a))", b"a%", b"(a"):
            self.assertRaises(imap4.IllegalClientResponse, grammar.flag_list, bad)

    def test_flag_list_system_flags_and_atoms_only(self) -> None:
        """RFC 3501 §9 flag: the five system flags in any case; any other C{\\atom}
        (\\Recent too, §2.3.2) and a quoted string are refused with Dovecot's words."""
        every = b"(\\answered \\FLAGGED \\Deleted \\Seen \\Draft)"
        self.assertEqual(len(grammar.flag_list(every)[0]), 5)
        for bad, text in (
            (b"(\\Seen \\Foo)", "Invalid system flag \\FOO"),
            (b"\\recent", "Invalid system flag \\RECENT"),
            (b'("x")', "Flags list contains non-atoms."),
            (b'(\\Seen "Seen")', "Flags list contains non-atoms."),
        ):
            with self.assertRaises(imap4.IllegalClientResponse) as caught:
                grammar.flag_list(bad)
            self.assertEqual(str(caught.exception), text)


class SessionGrammarTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.add(MSG2, "", T2)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_nul_in_quoted_string_is_bad(self) -> None:
        """RFC 3501 §9: a NUL is no TEXT-CHAR; SEARCH with one in a quoted string is BAD."""
        self.assertEqual(
            self.h.cmd(b'a SEARCH SUBJECT "he\x00llo"'),
            [b"a BAD Syntax error: NUL, CR or LF in quoted string"],
        )
        self.assertEqual(
            self.h.cmd(b'b SEARCH SUBJECT "he\\llo"'),
            [b"b BAD Syntax error: Bad escape in quoted string"],
        )

    def test_escaped_quote_in_search_string(self) -> None:
        """A quoted string's escapes are undone before matching (Twisted's parser did not)."""
        self.assertEqual(
            self.h.cmd(b'a SEARCH SUBJECT "\\"x\\\\"'), [b"* SEARCH", b"a OK SEARCH completed"]
        )

    def test_nil_is_a_string_in_search_and_a_keyword_in_store(self) -> None:
        """NIL is an atom: in SEARCH a string like any other, in STORE a keyword (imaptest nil)."""
        self.assertEqual(self.h.cmd(b"a SEARCH BODY NIL"), [b"* SEARCH", b"a OK SEARCH completed"])
        self.assertEqual(
            self.h.cmd(b"b STORE 2 +FLAGS NIL"),
            [
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft NIL)",
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft NIL \\*)]"
                b" Flags permitted",
                b"* 2 FETCH (FLAGS (NIL))",
                b"b OK STORE completed",
            ],
        )

    def test_store_flags_without_parentheses(self) -> None:
        """RFC 3501 §9 store-att-flags: C{flag *(SP flag)} without a list is allowed."""
        self.assertEqual(
            self.h.cmd(b"a STORE 2 +FLAGS \\Flagged \\Draft"),
            [b"* 2 FETCH (FLAGS (\\Draft \\Flagged))", b"a OK STORE completed"],
        )
        self.assertEqual(
            self.h.cmd(b"b STORE 2 +FLAGS (\\Seen"), [b"b BAD Syntax error: Unbalanced parenthesis"]
        )

    def test_atom_specials_in_a_mailbox_atom(self) -> None:
        """RFC 3501 §9: an atom holds no atom-specials; every other CHAR is taken, so these
        are names of mailboxes that do not exist (NO), not syntax errors."""
        self.assertEqual(
            self.h.cmd(b"a SELECT !#$&'+,-.0123456789:;<=>?@^_`|[}"),
            [b"a NO [CANNOT] Invalid mailbox name"],  # "&'" is no modified UTF-7
        )
        self.assertEqual(self.h.cmd(b"d SELECT ~foo"), [b"d NO [NONEXISTENT] No such mailbox"])
        self.assertEqual(
            self.h.cmd(b"b SELECT a(b"), [b"b BAD Syntax error: Invalid character in atom"]
        )
        self.assertEqual(
            self.h.cmd(b'c SELECT "INBOX"x'),
            [b"c BAD Syntax error: Space expected after an argument"],
        )

    def test_list_pattern_not_modified_utf7_matches_nothing(self) -> None:
        """A list-mailbox that is no valid modified UTF-7 (RFC 3501 §5.1.3) is still a
        well-formed pattern: LIST answers OK with no mailbox (imaptest atoms)."""
        self.assertEqual(
            self.h.cmd(b'a LIST "" !#$&\'+,-.0123456789:;<=>?@^_`|[}%*'),
            [b"a OK LIST completed"],
        )
        self.assertEqual(self.h.cmd(b'b LIST "" ~foo'), [b"b OK LIST completed"])

    def test_literal_and_nonsync_literal_as_astring(self) -> None:
        """RFC 3501 §9 / RFC 7888: a mailbox name as a literal or a LITERAL+ literal."""
        self.assertEqual(self.h.send(b"a STATUS {5}\r\n"), b"+ Ready for 5 octets of text\r\n")
        self.assertEqual(
            self.h.send(b"INBOX (MESSAGES)\r\n"),
            b'* STATUS "INBOX" (MESSAGES 2)\r\na OK STATUS completed\r\n',
        )
        self.assertEqual(
            self.h.send(b"b STATUS {5+}\r\nINBOX (UNSEEN)\r\n"),
            b'* STATUS "INBOX" (UNSEEN 1)\r\nb OK STATUS completed\r\n',
        )

    def test_literal_search_string_with_nul_is_bad(self) -> None:
        """RFC 3501 §9: a literal is CHAR8 (no NUL) outside literal8."""
        self.assertEqual(
            self.h.send(b"a SEARCH SUBJECT {3+}\r\na\x00b\r\n"),
            b"a BAD Syntax error: NUL or line breaks in a search string\r\n",
        )

    def test_message_numbers(self) -> None:
        """RFC 3501 §9 nz-number: 0 is BAD; a seq-number beyond EXISTS is BAD in FETCH and
        STORE (as Dovecot); "*" is the last message; a UID need not exist (§6.4.8)."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 0 FLAGS"),
            [b"a BAD Syntax error: Bad message number not a sequence set"],
        )
        self.assertEqual(
            self.h.cmd(b"b FETCH * FLAGS"), [b"* 2 FETCH (FLAGS ())", b"b OK FETCH completed"]
        )
        self.assertEqual(self.h.cmd(b"c FETCH 3 FLAGS"), [b"c BAD Invalid message sequence number"])
        self.assertEqual(
            self.h.cmd(b"d STORE 1:5 +FLAGS \\Seen"), [b"d BAD Invalid message sequence number"]
        )
        self.assertEqual(self.h.cmd(b"e UID FETCH 99 FLAGS"), [b"e OK FETCH completed"])
        self.h.cmd(b"f CREATE Empty")
        self.h.cmd(b"g SELECT Empty")
        self.assertEqual(self.h.cmd(b"h FETCH 1:* FLAGS"), [b"h OK FETCH completed"])
        self.assertEqual(self.h.cmd(b"i FETCH 1 FLAGS"), [b"i BAD Invalid message sequence number"])

    def test_invalid_tag(self) -> None:
        """RFC 3501 §9 tag: no "+", no atom-specials; the reply is untagged (no valid tag),
        and a LITERAL+ literal after a bad tag closes the connection (its data never runs)."""
        for bad in (b"a+b", b"a*", b"(a", b'"a"', b"a%"):
            self.assertEqual(self.h.cmd(bad + b" NOOP"), [b"* BAD Invalid tag"])
        self.assertEqual(self.h.cmd(b"a] NOOP"), [b"a] OK NOOP completed"])
        self.assertEqual(
            self.h.send(b"+ APPEND INBOX {5+}\r\nhello\r\n"),
            b"* BAD Invalid tag\r\n* BYE [CLIENTBUG] Closing the connection\r\n",
        )

    def test_unknown_command_with_literal_is_bad_at_once(self) -> None:
        """RFC 3501 §6: an unknown command is BAD at once, without asking for its literal
        (a client waiting for the continuation then gives up instead of hanging)."""
        self.assertEqual(
            self.h.cmd(b"a XYZZY {3}"), [b"a BAD Command unknown or not valid in this state"]
        )
        self.assertEqual(
            self.h.cmd(b"b FETCH 1 BINARY[]"), [b"b BAD Syntax error: Invalid FETCH attributes"]
        )


class SearchDateTests(unittest.TestCase):
    """RFC 3501 §6.4.4: BEFORE/ON/SINCE use the internal date, SENTBEFORE/SENTON/SENTSINCE the
    Date: header, both "disregarding time and timezone": the sent date is the day written in
    the header's own zone (as Dovecot; imaptest search-date)."""

    def setUp(self) -> None:
        self.h = Harness(self)
        dates = (
            b"Sat, 24 Mar 2007 23:00:00 +0200",  # 1: 21:00 UTC on the 24th
            b"Sun, 25 Mar 2007 00:00:00 +0200",  # 2: 22:00 UTC on the 24th
            b"25 Mar 2007 23:30 +0300",  # 3: no weekday, no seconds
            b"Mon, 26 Mar 2007 00:00:00 -1100",  # 4: the 26th 11:00 UTC
            b"garbage",  # 5: unparsable: no sent date
        )
        for i, date in enumerate(dates):
            self.h.add(b"Date: " + date + b"\r\nSubject: %d\r\n\r\nx\r\n" % i, "", T1 + i * 86400)
        self.h.add(b"Subject: none\r\n\r\nno date\r\n", "", T2 + 10 * 86400)  # 6
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def search(self, keys: bytes) -> bytes:
        lines = self.h.cmd(b"a SEARCH " + keys)
        self.assertEqual(lines[-1], b"a OK SEARCH completed")
        return lines[0]

    def test_sent_date_keys(self) -> None:
        """RFC 3501 §6.4.4: SENTBEFORE, SENTON and SENTSINCE compare the Date: header's day,
        disregarding time and zone."""
        self.assertEqual(self.search(b"SENTBEFORE 24-Mar-2007"), b"* SEARCH")
        self.assertEqual(self.search(b"SENTBEFORE 25-Mar-2007"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SENTON 24-Mar-2007"), b"* SEARCH 1")
        self.assertEqual(self.search(b"SENTON 25-Mar-2007"), b"* SEARCH 2 3")
        self.assertEqual(self.search(b"SENTON 26-mar-2007"), b"* SEARCH 4")
        self.assertEqual(self.search(b"SENTSINCE 25-Mar-2007"), b"* SEARCH 2 3 4")
        self.assertEqual(self.search(b'SENTSINCE "26-Mar-2007"'), b"* SEARCH 4")
        self.assertEqual(self.search(b"NOT SENTON 25-Mar-2007"), b"* SEARCH 1 4 5 6")

    def test_internal_date_keys(self) -> None:
        """The internal date (T1 = 2024-01-01 10:00 UTC, one day apart) as FETCH shows it."""
        self.assertEqual(self.search(b"BEFORE 1-Jan-2024"), b"* SEARCH")
        self.assertEqual(self.search(b"BEFORE 2-Jan-2024"), b"* SEARCH 1")
        self.assertEqual(self.search(b"ON 3-Jan-2024"), b"* SEARCH 3")
        self.assertEqual(self.search(b"SINCE 4-Jan-2024"), b"* SEARCH 4 5 6")
        self.assertEqual(self.search(b"SINCE 12-Jan-2024"), b"* SEARCH 6")

    def test_bad_dates(self) -> None:
        """RFC 3501 §9 date: d[d]-Mon-yyyy, quoted or not; anything else is BAD."""
        for bad in (
            b"2007-03-25",
            b"25-Mrz-2007",
            b"32-Mar-2007x",
            b"25-Mar-07",
            b"31-Feb-2020",
            b"0-Jan-2020",
        ):
            self.assertEqual(self.h.cmd(b"b SEARCH SENTON " + bad), [b"b BAD bad date"])


class LiteralPositionTests(unittest.TestCase):
    """RFC 3501 §9 / RFC 7888: a literal (synchronizing or not) wherever an astring stands;
    its data is read as the argument, never run as the next command."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_search_charset_as_literal(self) -> None:
        """SEARCH CHARSET astring: a LITERAL+ charset is read (once the NO for an unknown
        charset let its data run as a command, tagged "UTF-8")."""
        self.assertEqual(
            self.h.send(b"a SEARCH CHARSET {5+}\r\nUTF-8 SUBJECT {5+}\r\nhello\r\n"),
            b"* SEARCH 1\r\na OK SEARCH completed\r\n",
        )
        self.assertEqual(
            self.h.send(b"b SEARCH CHARSET {6+}\r\nKOI8-R ALL\r\n"),
            b"b NO [BADCHARSET (US-ASCII UTF-8)] Unsupported charset\r\n",
        )
        self.assertEqual(self.h.send(b"c SORT (DATE) {5}\r\n"), b"+ Ready for 5 octets of text\r\n")
        self.assertEqual(self.h.send(b"UTF-8 ALL\r\n"), b"* SORT 1\r\nc OK SORT completed\r\n")

    def test_mailbox_names_as_literals(self) -> None:
        """CREATE, RENAME (two literals), APPEND's mailbox, LIST's reference and pattern."""
        self.assertEqual(self.h.send(b"a CREATE {3+}\r\nfoo\r\n"), b"a OK CREATE completed\r\n")
        self.assertEqual(
            self.h.send(b"b RENAME {3+}\r\nfoo {3+}\r\nbar\r\n"), b"b OK RENAME completed\r\n"
        )
        out = self.h.send(b"c APPEND {3+}\r\nbar (\\Seen) {5+}\r\nhello\r\n")
        self.assertTrue(out.startswith(b"c OK [APPENDUID "), out)
        self.assertEqual(
            self.h.send(b"d LIST {0+}\r\n {3+}\r\nba%\r\n"),
            b'* LIST (\\HasNoChildren) "." "bar"\r\nd OK LIST completed\r\n',
        )
