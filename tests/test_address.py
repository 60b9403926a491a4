"""Tests for L{twistedmail.address}: RFC 5321 §4.1.2 mailboxes and paths, IDNA, case."""

from __future__ import annotations

from twisted.trial import unittest

from twistedmail.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    AddressError,
    Mailbox,
    NonASCIIAddressError,
    ParameterSyntaxError,
    PathTooLongError,
    normalize_domain,
    parse_parameters,
    parse_path,
)


class DomainTests(unittest.TestCase):
    def test_lower_case(self) -> None:
        """RFC 5321 §2.4: domain names are case-blind and kept lower-case."""
        self.assertEqual(normalize_domain("Mail.EXAMPLE.org"), "mail.example.org")

    def test_single_label(self) -> None:
        """A single-label domain (localhost) is accepted."""
        self.assertEqual(normalize_domain("localhost"), "localhost")

    def test_idna_to_a_labels(self) -> None:
        """RFC 5890: internationalised domains are kept in their A-label (ASCII) form."""
        self.assertEqual(normalize_domain("bücher.example"), "xn--bcher-kva.example")
        self.assertEqual(normalize_domain("BÜCHER.Example"), "xn--bcher-kva.example")
        self.assertEqual(normalize_domain("例え.テスト"), "xn--r8jz45g.xn--zckzah")
        self.assertEqual(normalize_domain("XN--BCHER-KVA.example"), "xn--bcher-kva.example")

    def test_idna2008_with_uts46_mapping(self) -> None:
        """IDNA2008 (RFC 5891) with UTS #46 non-transitional mapping: ß stays ß (IDNA2003
        made faß.test into fass.test, another domain); case and width are folded."""
        for text in ("faß.test", "Faß.TEST", "ＦＡß.test", "xn--fa-hia.test", "XN--FA-HIA.Test"):
            self.assertEqual(normalize_domain(text), "xn--fa-hia.test", text)
        self.assertEqual(str(Mailbox.parse("Info@Faß.test")), "info@xn--fa-hia.test")

    def test_invalid_idna_labels(self) -> None:
        """RFC 5892: symbols are DISALLOWED in IDNA2008 (IDNA2003 accepted ☃); an xn--
        label must be a valid A-label (RFC 5891 §5.4); LDH only (RFC 5321 §4.1.2)."""
        for bad in ("☃.test", "xn--zz.test", "xn--a.test", "a_b.test", "faß_x.test", "ab.-.test"):
            self.assertRaises(AddressError, normalize_domain, bad)
        self.assertEqual(normalize_domain("r3--a.example"), "r3--a.example")  # not IDNA: LDH

    def test_hyphens(self) -> None:
        """RFC 1035 §2.3.1: a hyphen inside a label is fine, at its start or end it is refused."""
        self.assertEqual(normalize_domain("a-b.example"), "a-b.example")
        for bad in ("-ab.example", "ab-.example"):
            self.assertRaises(AddressError, normalize_domain, bad)

    def test_lengths(self) -> None:
        """RFC 1035 §2.3.4: labels up to 63 octets and names up to 255 octets; one more is
        refused."""
        label = "a" * 63
        self.assertEqual(normalize_domain(f"{label}.example"), f"{label}.example")
        self.assertRaises(AddressError, normalize_domain, f"{label}a.example")
        longest = ".".join(["a" * 63] * 3 + ["a" * 63])  # 255 octets
        self.assertEqual(len(longest), MAX_DOMAIN)
        self.assertEqual(normalize_domain(longest), longest)
        e = self.assertRaises(AddressError, normalize_domain, longest + "a")
        self.assertEqual(str(e), "domain too long")

    def test_refused(self) -> None:
        """Empty names, address literals, empty labels, leading or trailing dots and other
        characters are refused with their reason."""
        cases = {
            "": "not a domain name",
            "[192.0.2.1]": "not a domain name",
            "[IPv6:2001:db8::1]": "not a domain name",
            "example..org": "invalid domain",
            ".example.org": "invalid domain",
            "example.org.": "invalid domain",
            "exa_mple.org": "invalid domain",
            "exa mple.org": "invalid domain",
            "example.org/x": "invalid domain",
            "\u2024.example": "invalid internationalised domain",  # UTS #46 maps it to "."
        }
        for text, message in cases.items():
            e = self.assertRaises(AddressError, normalize_domain, text)
            self.assertEqual(str(e), message, text)


class MailboxTests(unittest.TestCase):
    def test_parse(self) -> None:
        """Mailbox.parse splits local@domain and prints it back."""
        m = Mailbox.parse("alice@example.org")
        self.assertEqual(m, Mailbox("alice", "example.org"))
        self.assertEqual(str(m), "alice@example.org")

    def test_case_folded(self) -> None:
        """Local parts and domains are lower-cased: one mailbox whatever the case."""
        self.assertEqual(
            Mailbox.parse("Alice.Smith@Example.ORG"), Mailbox("alice.smith", "example.org")
        )

    def test_idn_domain(self) -> None:
        """RFC 5890: an internationalized domain is stored in its A-label (xn--) form,
        lower-cased."""
        self.assertEqual(str(Mailbox.parse("info@Bücher.example")), "info@xn--bcher-kva.example")

    def test_atext(self) -> None:
        """RFC 5321 §4.1.2 Dot-string: every atext character is allowed."""
        for local in ("a+tag", "o'neil", "x!#$%&'*+/=?^_`{|}~-y", "first.last", "1"):
            self.assertEqual(Mailbox.parse(f"{local}@example.org").local, local)

    def test_frozen(self) -> None:
        """A Mailbox is immutable and hashes equal to the same address in other case."""
        m = Mailbox.parse("a@example.org")
        self.assertRaises(AttributeError, setattr, m, "local", "b")
        self.assertEqual(hash(m), hash(Mailbox.parse("A@EXAMPLE.ORG")))

    def test_local_part_length(self) -> None:
        """RFC 5321 §4.5.3.1.1: a local part of 64 octets is accepted, 65 refused."""
        local = "a" * MAX_LOCAL_PART
        self.assertEqual(Mailbox.parse(f"{local}@example.org").local, local)
        e = self.assertRaises(AddressError, Mailbox.parse, f"{local}a@example.org")
        self.assertEqual(str(e), "local part too long")

    def test_quoted_local_parts(self) -> None:
        """RFC 5321 §4.1.2 Quoted-string: quoted pairs; a quoted Dot-string is that
        Dot-string; other ones stay quoted, with the fewest backslashes."""
        cases = {
            '"alice"@example.org': "alice@example.org",
            '"Al\\ice"@example.org': "alice@example.org",
            '"a b"@example.org': '"a b"@example.org',
            '"a\\ b"@example.org': '"a b"@example.org',
            '"a@b"@example.org': '"a@b"@example.org',
            '"a\\"b"@example.org': '"a\\"b"@example.org',
            '"a\\\\b"@example.org': '"a\\\\b"@example.org',
            '"a..b"@example.org': '"a..b"@example.org',
            '""@example.org': '""@example.org',
        }
        for text, canonical in cases.items():
            self.assertEqual(str(Mailbox.parse(text)), canonical, text)
        self.assertTrue(Mailbox.parse('"a b"@example.org').quoted)

    def test_address_literals(self) -> None:
        """RFC 5321 §4.1.3: IPv4, IPv6 and General-address-literal, in canonical form."""
        cases = {
            "a@[192.0.2.1]": "a@[192.0.2.1]",
            "a@[192.000.2.01]": "a@[192.0.2.1]",
            "a@[IPv6:2001:DB8:0::1]": "a@[IPv6:2001:db8::1]",
            "a@[ipv6:::ffff:192.0.2.1]": "a@[IPv6:::ffff:c000:201]",
            "a@[x-tag:some@content]": "a@[x-tag:some@content]",
        }
        for text, canonical in cases.items():
            self.assertEqual(str(Mailbox.parse(text)), canonical, text)
        self.assertTrue(Mailbox.parse("a@[192.0.2.1]").literal)

    def test_refused(self) -> None:
        """RFC 5321 §4.1.2: addresses without @, local part or domain, with bad dots, spaces,
        8-bit or control characters in the local part, or a bad address literal, are refused."""
        cases = {
            "": "address must be local@domain",
            "alice": "address must be local@domain",
            "@example.org": "address must be local@domain",
            "alice@": "not a domain name",
            "a..b@example.org": "invalid local part",
            ".a@example.org": "invalid local part",
            "a.@example.org": "invalid local part",
            "a b@example.org": "invalid local part",
            "a@b@example.org": "invalid local part",
            "<a@example.org>": "invalid local part",
            "jörg@example.org": "invalid local part",  # no SMTPUTF8 local parts
            '"a"b"@example.org': "invalid local part",
            '"a\\"@example.org': "invalid local part",  # a backslash quotes the last quote
            '"a\tb"@example.org': "invalid local part",  # no control characters (§4.1.2)
            '"a\\\x01"@example.org': "invalid local part",  # not even quoted
            '"' + "a" * 63 + '"@example.org': "local part too long",  # quotes count
            "a\0@example.org": "invalid local part",
            "a\r\n@example.org": "invalid local part",
            "a@[192.0.2.256]": "invalid address literal",
            "a@[192.0.2]": "invalid address literal",
            "a@[IPv6:2001:db8::g]": "invalid IPv6 address literal",
            "a@[IPv6:fe80::1%eth0]": "invalid IPv6 address literal",
            "a@[x-tag:a[b]": "invalid address literal",
            "a@[1:b]": "invalid address literal",  # a Standardized-tag is no number
            "a@exa_mple.org": "invalid domain",
        }
        for text, message in cases.items():
            e = self.assertRaises(AddressError, Mailbox.parse, text)
            self.assertEqual(str(e), message, repr(text))

    def test_not_utf8(self) -> None:
        """A local part holding bytes that were not UTF-8 (a lone surrogate, as Python decodes
        such a command-line argument) is an invalid local part, not a UnicodeEncodeError."""
        for text in ("\udcff@example.org", "al\udce9ice@example.org", '"\udcff"@example.org'):
            e = self.assertRaises(AddressError, Mailbox.parse, text)
            self.assertEqual(str(e), "invalid local part", repr(text))


class PathTests(unittest.TestCase):
    """C{MAIL FROM:}/C{RCPT TO:} arguments, RFC 5321 §4.1.2 Path and §4.1.1.2/§4.1.1.3."""

    def test_path(self) -> None:
        """RFC 5321 §4.1.2: parse_path reads <local@domain>, lower-casing it, with no parameters."""
        self.assertEqual(parse_path("<Alice@Example.org>"), (Mailbox("alice", "example.org"), ""))

    def test_null_path(self) -> None:
        """RFC 5321 §4.5.5: the null reverse-path C{<>} (bounces)."""
        self.assertEqual(parse_path("<>"), (None, ""))
        self.assertEqual(parse_path("<> SIZE=1000"), (None, "SIZE=1000"))

    def test_parameters(self) -> None:
        """RFC 5321 §4.1.2: the text after the path is returned as the parameters."""
        self.assertEqual(
            parse_path("<a@example.org> SIZE=1000 BODY=8BITMIME"),
            (Mailbox("a", "example.org"), "SIZE=1000 BODY=8BITMIME"),
        )

    def test_surrounding_space(self) -> None:
        """White space around the path is ignored."""
        self.assertEqual(parse_path("  <a@example.org>  "), (Mailbox("a", "example.org"), ""))

    def test_source_route_ignored(self) -> None:
        """RFC 5321 §4.1.2 A-d-l, §3.6.1 and Appendix C: a source route is accepted and
        ignored, so mail goes to the mailbox itself, never through the route."""
        for text in ("<@relay.example:a@example.org>", "<@one.example,@two.example:a@example.org>"):
            self.assertEqual(parse_path(text), (Mailbox("a", "example.org"), ""))
        for bad in ("<@:a@example.org>", "<@a..b:a@example.org>", "<@a,b:a@example.org>", "<@a>"):
            self.assertRaises(AddressError, parse_path, bad)

    def test_quoted_and_literal_paths(self) -> None:
        """A ">" inside a quoted string or an address literal does not end the path."""
        self.assertEqual(
            parse_path('<"a>b"@example.org> SIZE=1'), (Mailbox('"a>b"', "example.org"), "SIZE=1")
        )
        self.assertEqual(parse_path("<a@[x:>]>"), (Mailbox("a", "[x:>]"), ""))

    def test_lengths(self) -> None:
        """RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its brackets."""
        local = "a" * 64
        domain = ".".join(["b" * 63, "c" * 63, "d" * 58])  # "<" 64 "@" 186 ".ee>": 256
        self.assertEqual(parse_path(f"<{local}@{domain}.ee>")[0], Mailbox(local, f"{domain}.ee"))
        e = self.assertRaises(PathTooLongError, parse_path, f"<{local}@{domain}.eee>")
        self.assertEqual(str(e), "path too long")

    def test_non_ascii(self) -> None:
        """RFC 6531: without SMTPUTF8 (not offered) a non-ASCII path is refused."""
        for text in ("<jörg@example.org>", "<a@bücher.example>"):
            self.assertRaises(NonASCIIAddressError, parse_path, text)

    def test_space_before_parameters(self) -> None:
        """RFC 5321 §4.1.2: C{Reverse-path [SP Mail-parameters]}."""
        e = self.assertRaises(AddressError, parse_path, "<a@example.org>SIZE=1")
        self.assertEqual(str(e), "a space must separate the path and its parameters")

    def test_parameter_syntax(self) -> None:
        """RFC 5321 §4.1.2 esmtp-param = esmtp-keyword ["=" esmtp-value]."""
        self.assertEqual(
            parse_parameters("size=10  BODY=8BITMIME X-Y AUTH=<>"),
            (("SIZE", "10"), ("BODY", "8BITMIME"), ("X-Y", None), ("AUTH", "<>")),
        )
        for bad in ("=1", "SIZE=", "SIZE==1", "-X", "A_B=1", "X=a=b", "X=\x7f", "X=ä"):
            self.assertRaises(AddressError, parse_parameters, bad)

    def test_bad_parameter_value_names_its_keyword(self) -> None:
        """RFC 5321 §4.1.2: a well-formed esmtp-keyword with a value that is no esmtp-value
        (8-bit, CTL, "=") is refused naming the keyword; a malformed keyword names none."""
        for bad, keyword in (
            ("BODY=\udcff", "BODY"),
            ("SIZE=1 notify=ä", "NOTIFY"),
            ("X=a=b", "X"),
            ("B\udcffDY=7BIT", None),
            ("=1", None),
            ("-X", None),
        ):
            e = self.assertRaises(ParameterSyntaxError, parse_parameters, bad)
            self.assertEqual(e.keyword, keyword, bad)

    def test_octets_not_utf8(self) -> None:
        """Wire bytes decoded with surrogateescape: octets that are not UTF-8 make the path
        malformed, and are left to the parameters after it."""
        e = self.assertRaises(AddressError, parse_path, "<\udce4@example.org>")
        self.assertEqual(str(e), "path is not UTF-8")
        self.assertEqual(
            parse_path("<a@example.org> BODY=\udcff"), (Mailbox("a", "example.org"), "BODY=\udcff")
        )

    def test_refused(self) -> None:
        """RFC 5321 §4.1.2, §4.5.3.1.3: a path without <>, with space inside, without a domain or
        over 256 octets is refused."""
        cases = {
            "a@example.org": "path must be enclosed in <>",
            "": "path must be enclosed in <>",
            "<a@example.org": "path must be enclosed in <>",
            "< a@example.org>": "invalid local part",
            "<a@example.org >": "invalid domain",
            "<a>": "address must be local@domain",
            "<" + "a" * 250 + "@example.org>": "path too long",
        }
        for text, message in cases.items():
            e = self.assertRaises(AddressError, parse_path, text)
            self.assertEqual(str(e), message, text)

    def test_percent_hack_is_just_a_local_part(self) -> None:
        """C{a%b@local} is an ordinary local part here (no percent-hack relaying)."""
        self.assertEqual(
            parse_path("<a%remote.example@example.org>")[0],
            Mailbox("a%remote.example", "example.org"),
        )
