"""Message parsing as IMAP shows it: ENVELOPE addresses and groups (RFC 3501 §7.4.2), MIME
parameters of folded fields, and SEARCH/SORT on decoded header text (RFC 3501 §6.4.4,
RFC 2047, RFC 5256 §3); the cases of Dovecot's imaptest groups fetch-envelope,
fetch-bodystructure, fetch-body-mime, search-addresses and sort-addresses, and issue 9."""

from __future__ import annotations

from twisted.trial import unittest

from tests.test_imap_server import T1, Harness
from twistedmail.imap import message
from twistedmail.imap.message import (
    MISSING_DOMAIN,
    MISSING_MAILBOX,
    Address,
    address_text,
    decode_header_text,
    encode_string,
    header_fields,
    parse_addresses,
)


class AddressListTests(unittest.TestCase):
    def test_groups_are_start_and_end_markers(self) -> None:
        """RFC 3501 §7.4.2: a group is (NIL NIL name NIL), its members, (NIL NIL NIL NIL)."""
        self.assertEqual(
            parse_addresses(b"group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;"),
            [
                Address(None, None, b"group", None),
                Address(None, None, b"g1", b"d1.org"),
                Address(None, None, b"g2", b"d2.org"),
                Address(None, None, None, None),
                Address(None, None, b"group2", None),
                Address(None, None, b"g3", b"d3.org"),
                Address(None, None, None, None),
            ],
        )

    def test_empty_groups(self) -> None:
        """C{undisclosed-recipients:;} is a start and an end marker, not NIL (RFC 3501
        §7.4.2); a comment inside a group is no member."""
        self.assertEqual(
            parse_addresses(b"undisclosed-recipients:;, group2: (foo) ;"),
            [
                Address(None, None, b"undisclosed-recipients", None),
                Address(None, None, None, None),
                Address(None, None, b"group2", None),
                Address(None, None, None, None),
            ],
        )

    def test_mailbox_forms(self) -> None:
        """Name-addr, addr-spec with a comment as its name, obs-route, quoted display name
        with a comma, comments inside the angle brackets (RFC 5322 §3.4, §4.4)."""
        cases = {
            b"From Real <fromuser@fromdomain.org>": [
                Address(b"From Real", None, b"fromuser", b"fromdomain.org")
            ],
            b"user@domain (Real Name)": [Address(b"Real Name", None, b"user", b"domain")],
            b"<@route:user@domain>": [Address(None, b"@route", b"user", b"domain")],
            b'"Doe, John" <j.d@x.org>, a@b': [
                Address(b"Doe, John", None, b"j.d", b"x.org"),
                Address(None, None, b"a", b"b"),
            ],
            b"<user-from (comment)@ (comment) domain.org>": [
                Address(None, None, b"user-from", b"domain.org")
            ],
            b"Foo (c) Bar <a@b>": [Address(b"Foo Bar", None, b"a", b"b")],
            b"=?UTF-8?B?w6k=?= <a@b>": [Address(b"=?UTF-8?B?w6k=?=", None, b"a", b"b")],
            b"undisclosed": [Address(None, None, b"undisclosed", MISSING_DOMAIN)],
            b"a@b, , c@d,": [Address(None, None, b"a", b"b"), Address(None, None, b"c", b"d")],
            b"": [],
            b"(only a comment)": [],
            b"] A <a@example.test>": [Address(b"A", None, b"a", b"example.test")],
            b"A ]) <a@b>": [Address(b"A", None, b"a", b"b")],
        }
        for raw, expected in cases.items():
            self.assertEqual(parse_addresses(raw), expected, raw)

    def test_malformed_like_dovecot(self) -> None:
        """What Dovecot 2.3 answers for malformed addresses (compared on a live Dovecot):
        a missing part is MISSING_MAILBOX / MISSING_DOMAIN, never NIL (which would read as
        a group marker, RFC 3501 §7.4.2); words without an address are a name."""
        missing = (MISSING_MAILBOX, MISSING_DOMAIN)
        cases = {
            b"John Smith": [Address(b"John Smith", None, *missing)],
            b"foo bar@baz": [Address(b"foo bar", None, *missing)],
            b"a@b c@d": [Address(None, None, b"a", b"b")],
            b"<>": [Address(None, None, *missing)],
            b"Name <>": [Address(b"Name", None, *missing)],
            b"@": [Address(None, None, *missing)],
            b"@bar": [Address(None, None, MISSING_MAILBOX, b"bar")],
            b"a@": [Address(None, None, b"a", MISSING_DOMAIN)],
            b'"quoted local"@x': [Address(None, None, b"quoted local", b"x")],
            b"<a@b> trailing": [Address(None, None, b"a", b"b")],
            b"g: <>;": [
                Address(None, None, b"g", None),
                Address(None, None, *missing),
                Address(None, None, None, None),
            ],
            b"Name (c1) (c2)": [Address(b"c2", None, b"Name", MISSING_DOMAIN)],
            b"(c) a@b": [Address(None, None, b"a", b"b")],
            b"first.last (Name)": [Address(b"Name", None, b"first.last", MISSING_DOMAIN)],
            b"John Q. Public <jqp@x>": [Address(b"John Q. Public", None, b"jqp", b"x")],
            b'"" <a@b>': [Address(None, None, b"a", b"b")],
        }
        for raw, expected in cases.items():
            self.assertEqual(parse_addresses(raw), expected, raw)

    def test_address_text(self) -> None:
        """What FROM/TO/CC/BCC search in, as Dovecot 2.3 writes it: names decoded, a comment
        naming a bare address, groups kept, every address in angle brackets; a name that is
        not an atom quoted before decoding."""
        self.assertEqual(
            address_text(parse_addresses(b"g: a@b, =?UTF-8?Q?J=C3=B6rg?= <j@x>;, c@d (C)")),
            "g: <a@b>, J\u00f6rg <j@x>;, C <c@d>",
        )
        self.assertEqual(
            address_text(
                parse_addresses(b"=?UTF-8?Q?J=C3=B6rg_M?= <j@x>, d (Some Name), <@r:a@b>")
            ),
            'J\u00f6rg M <j@x>, "Some Name" <d@MISSING_DOMAIN>, <@r:a@b>',
        )

    def test_decode_header_text(self) -> None:
        """RFC 2047 §6.2: encoded-words decoded, the white space between two dropped, other
        text kept; an unknown charset leaves the word as it is."""
        self.assertEqual(
            decode_header_text(b"=?UTF-8?B?w6nDqA==?= =?utf-8?q?_x?=  y"), "\u00e9\u00e8 x  y"
        )
        self.assertEqual(
            decode_header_text("caf\u00e9 =?ISO-8859-1?Q?caf=E9?=".encode()), "caf\u00e9 caf\u00e9"
        )
        self.assertEqual(decode_header_text(b"=?x-unknown?B?Zm9v?="), "=?x-unknown?B?Zm9v?=")
        self.assertEqual(decode_header_text(b"a\r\n b"), "a b")


GROUPS = (
    b"Date: Thu, 15 Feb 2007 01:02:03 +0200\r\n"
    b"From: user@domain (Real Name)\r\n"
    b"To: group: g1@d1.org, g2@d2.org;, group2: g3@d3.org;\r\n"
    b"Cc: undisclosed-recipients:;\r\n"
    b"\r\n"
    b"body\r\n"
)

FOLDED_BOUNDARY = (
    b"From: user@domain.org\r\n"
    b"Mime-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="foo\r\n bar"\r\n'
    b"\r\n"
    b"--foo bar\r\n"
    b"Content-Type: text/x-myown; charset=us-ascii\r\n"
    b"\r\n"
    b"hello\r\n"
    b"\r\n"
    b"--foo bar--\r\n"
)


class FetchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(GROUPS, "", T1)
        self.h.add(FOLDED_BOUNDARY, "", T1 + 1)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_envelope_groups(self) -> None:
        """RFC 3501 §7.4.2: groups in ENVELOPE as markers; a comment names a bare address."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 1 ENVELOPE"),
            [
                b'* 1 FETCH (ENVELOPE ("Thu, 15 Feb 2007 01:02:03 +0200" NIL'
                b' (("Real Name" NIL "user" "domain")) (("Real Name" NIL "user" "domain"))'
                b' (("Real Name" NIL "user" "domain"))'
                # RFC 3501 §9 env-to = "(" 1*address ")": no space between addresses
                b' ((NIL NIL "group" NIL)(NIL NIL "g1" "d1.org")(NIL NIL "g2" "d2.org")'
                b'(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL "g3" "d3.org")'
                b"(NIL NIL NIL NIL))"
                b' ((NIL NIL "undisclosed-recipients" NIL)(NIL NIL NIL NIL)) NIL NIL NIL))',
                b"a OK FETCH completed",
            ],
        )

    def test_folded_boundary(self) -> None:
        """A quoted boundary folded over two lines is unfolded (RFC 5322 §2.2.3): the body
        is a multipart, its part found (imaptest fetch-bodystructure, fetch-body-mime)."""
        self.assertEqual(
            self.h.cmd(b"a FETCH 2 BODY"),
            [
                b'* 2 FETCH (BODY (("TEXT" "X-MYOWN" ("charset" "us-ascii") NIL NIL "7BIT" 7 1)'
                b' "MIXED"))',
                b"a OK FETCH completed",
            ],
        )
        self.assertEqual(
            self.h.send(b"b FETCH 2 (BODY.PEEK[1] BODY.PEEK[1.MIME])\r\n"),
            b"* 2 FETCH (BODY[1] {7}\r\nhello\r\n BODY[1.MIME] {48}\r\n"
            b"Content-Type: text/x-myown; charset=us-ascii\r\n\r\n)\r\n"
            b"b OK FETCH completed\r\n",
        )

    def test_text_defaults_like_dovecot(self) -> None:
        """A text part without a charset shows C{us-ascii} (RFC 2046 §4.1.2), after the
        other parameters; body-fld-lines counts line ends, a last line without one not
        (what Dovecot 2.3 answers)."""
        self.h.add(b"Content-Type: text/html; x=y\r\n\r\n<p>\r\nx</p>", "", T1 + 2)
        self.h.cmd(b"n NOOP")
        self.assertEqual(
            self.h.cmd(b"a FETCH 3 BODY"),
            [
                b'* 3 FETCH (BODY ("TEXT" "HTML" ("x" "y" "charset" "us-ascii") NIL NIL "7BIT"'
                b" 10 1))",
                b"a OK FETCH completed",
            ],
        )


ENCODED = (
    b"From: =?UTF-8?Q?J=C3=B6rg_M=C3=BCller?= <joerg@example.org>\r\n"
    b"To: undisclosed-recipients:;\r\n"
    b"Subject: =?UTF-8?B?R3LDvMOfZSBhdXMgTcO8bmNoZW4=?=\r\n"
    b"X-Note: =?ISO-8859-1?Q?Caf=E9?=\r\n"
    b"\r\n"
    b"body\r\n"
)
PLAIN = (
    b"From: user-from@domain.org (RealFrom)\r\n"
    b"To: <user-to (comment)@ (comment) domain.org>\r\n"
    b"Cc: team: zed@example.net;\r\n"
    b"Subject: plain\r\n"
    b"\r\n"
    b"body\r\n"
)


class HeaderSearchTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(ENCODED, "", T1)
        self.h.add(PLAIN, "", T1 + 1)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def search(self, query: bytes) -> bytes:
        """The untagged SEARCH reply of C{query}, which must complete OK."""
        lines = self.h.send(query + b"\r\n").split(b"\r\n")
        self.assertEqual(lines[-2:], [b"a OK SEARCH completed", b""], query)
        return lines[0]

    def literal(self, key: bytes, text: str) -> bytes:
        data = text.encode()
        return b"a SEARCH CHARSET UTF-8 %s {%d+}\r\n%s" % (key, len(data), data)

    def test_subject_encoded_word(self) -> None:
        """RFC 3501 §6.4.4: SUBJECT with CHARSET UTF-8 matches the decoded, case-folded
        RFC 2047 subject (found by issue 9)."""
        self.assertEqual(
            self.search(self.literal(b"SUBJECT", "gr\u00fc\u00dfe aus")), b"* SEARCH 1"
        )
        self.assertEqual(self.search(self.literal(b"SUBJECT", "M\u00dcNCHEN")), b"* SEARCH 1")
        self.assertEqual(self.search(b"a SEARCH SUBJECT R3LDvMOfZSBhdXMg"), b"* SEARCH")

    def test_every_header_key_decodes(self) -> None:
        """FROM, HEADER x decode too; an address key matches the decoded display name."""
        self.assertEqual(self.search(self.literal(b"FROM", "j\u00f6rg m\u00fcller")), b"* SEARCH 1")
        self.assertEqual(self.search(self.literal(b"FROM", "M\u00fcller <joerg@")), b"* SEARCH 1")
        self.assertEqual(self.search(self.literal(b"HEADER X-Note", "caf\u00c9")), b"* SEARCH 1")

    def test_text_sees_decoded_header(self) -> None:
        """TEXT matches the decoded header, not its encoded-words, and the body (as Dovecot)."""
        self.assertEqual(self.search(self.literal(b"TEXT", "gr\u00fc\u00dfe")), b"* SEARCH 1")
        self.assertEqual(self.search(self.literal(b"TEXT", "CAF\u00c9")), b"* SEARCH 1")
        self.assertEqual(self.search(b"a SEARCH TEXT R3LDvMOfZSBhdXMg"), b"* SEARCH")
        self.assertEqual(self.search(b"a SEARCH TEXT BODY"), b"* SEARCH 1 2")

    def test_address_keys(self) -> None:
        """Address keys match the address without its comments, the name a comment gives,
        and group names (imaptest search-addresses)."""
        self.assertEqual(self.search(b"a SEARCH TO user-to@domain.org"), b"* SEARCH 2")
        self.assertEqual(self.search(b"a SEARCH FROM realfrom"), b"* SEARCH 2")
        self.assertEqual(self.search(b"a SEARCH FROM comment"), b"* SEARCH")
        self.assertEqual(self.search(b"a SEARCH TO undisclosed-recipients"), b"* SEARCH 1")
        self.assertEqual(self.search(b"a SEARCH CC team"), b"* SEARCH 2")
        self.assertEqual(self.search(b"a SEARCH BCC x"), b"* SEARCH")

    def test_empty_string_means_field_present(self) -> None:
        """RFC 3501 §6.4.4 HEADER: a zero-length string matches every message with the field."""
        self.assertEqual(self.search(b'a SEARCH HEADER Cc ""'), b"* SEARCH 2")
        self.assertEqual(self.search(b'a SEARCH HEADER X-Note ""'), b"* SEARCH 1")

    def test_sort_decodes_and_sorts_groups_by_name(self) -> None:
        """RFC 5256 §3: SUBJECT sorts on the decoded base subject; TO on the first address's
        mailbox, for a group its name (RFC 3501 §7.4.2, as Dovecot)."""
        self.h.add(b"To: aaa@example.org\r\nSubject: Hallo\r\n\r\nbody\r\n", "", T1 + 2)
        self.h.cmd(b"n NOOP")
        # GR\u00dcSSE < HALLO < PLAIN; undecoded, "=?UTF-8?B?..." would sort first anyway, so
        # REVERSE: PLAIN HALLO GR\u00dcSSE
        self.assertEqual(self.h.cmd(b"a SORT (SUBJECT) UTF-8 ALL")[0], b"* SORT 1 3 2")
        # AAA < UNDISCLOSED-RECIPIENTS (the group) < USER-TO
        self.assertEqual(self.h.cmd(b"a SORT (TO) UTF-8 ALL")[0], b"* SORT 3 1 2")
        self.assertEqual(self.h.cmd(b"a SORT (REVERSE TO) UTF-8 ALL")[0], b"* SORT 2 1 3")


class HeaderFieldsTests(unittest.TestCase):
    def test_fields_kept_for_small_headers_only(self) -> None:
        """A header's fields (folded lines joined to their field, repeats kept, RFC 5322
        §2.2.3) are the same whether kept from an earlier call or not; a header above
        CACHED_HEADER is never kept (a huge header cannot fill memory)."""
        header = b"From: a@b\r\nSubject: one\r\n two\r\nsubject: x\r\n\r\n"
        expected = (
            (b"from", b"From: a@b\r\n"),
            (b"subject", b"Subject: one\r\n two\r\n"),
            (b"subject", b"subject: x\r\n"),
        )
        self.assertEqual(header_fields(header), expected)
        self.assertEqual(header_fields(bytes(bytearray(header))), expected)
        big = b"X-Big: " + b"y" * message.CACHED_HEADER + b"\r\n\r\n"
        before = message._cached_fields.cache_info().currsize
        self.assertEqual(header_fields(big), ((b"x-big", big[:-2]),))
        self.assertEqual(message._cached_fields.cache_info().currsize, before)

    def test_quoted_or_literal(self) -> None:
        """RFC 3501 §4.3: a short 7-bit printable string is quoted (backslash and quote
        escaped); a control character, 8-bit or 1,000 octets make a literal."""
        self.assertEqual(encode_string(b'a "b" \\ c~'), b'"a \\"b\\" \\\\ c~"')
        for raw in (b"tab\there", b"caf\xc3\xa9", b"del\x7f", b"x" * 1000):
            self.assertEqual(encode_string(raw), b"{%d}\r\n" % len(raw) + raw)
        self.assertEqual(encode_string(b"x" * 999), b'"' + b"x" * 999 + b'"')

    def test_content_type_parse_kept_for_short_values(self) -> None:
        """A part's Content-Type is parsed the same whether its parse was kept from another
        part or not; a value above CACHED_CONTENT_TYPE is never kept."""
        plain = b'Content-Type: text/plain; charset="ISO-8859-1"\r\n\r\nx'
        for _ in range(2):
            entity = message.parse_entity(plain)
            self.assertEqual(
                (entity.maintype, entity.subtype, entity.params),
                ("text", "plain", (("charset", "ISO-8859-1"),)),
            )
        long_name = "n" * message.CACHED_CONTENT_TYPE
        big = b"Content-Type: application/octet-stream; name=" + long_name.encode() + b"\r\n\r\n"
        before = message._cached_content_type.cache_info().currsize
        entity = message.parse_entity(big)
        self.assertEqual(entity.params, (("name", long_name),))
        self.assertEqual(message._cached_content_type.cache_info().currsize, before)
        self.assertEqual(message.parse_entity(b"Content-Type: garbage\r\n\r\n").subtype, "plain")
