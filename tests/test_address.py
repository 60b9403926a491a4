"""Tests for L{twistedmail.address}: RFC 5321 §4.1.2 mailboxes and paths, IDNA, case."""

from __future__ import annotations

from twisted.trial import unittest

from twistedmail.address import (
    MAX_DOMAIN,
    MAX_LOCAL_PART,
    AddressError,
    Mailbox,
    normalize_domain,
    parse_path,
)


class DomainTests(unittest.TestCase):
    def test_lower_case(self) -> None:
        self.assertEqual(normalize_domain("Mail.EXAMPLE.org"), "mail.example.org")

    def test_single_label(self) -> None:
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
        self.assertEqual(normalize_domain("a-b.example"), "a-b.example")
        for bad in ("-ab.example", "ab-.example"):
            self.assertRaises(AddressError, normalize_domain, bad)

    def test_lengths(self) -> None:
        label = "a" * 63
        self.assertEqual(normalize_domain(f"{label}.example"), f"{label}.example")
        self.assertRaises(AddressError, normalize_domain, f"{label}a.example")
        longest = ".".join(["a" * 63] * 3 + ["a" * 63])  # 255 octets
        self.assertEqual(len(longest), MAX_DOMAIN)
        self.assertEqual(normalize_domain(longest), longest)
        e = self.assertRaises(AddressError, normalize_domain, longest + "a")
        self.assertEqual(str(e), "domain too long")

    def test_refused(self) -> None:
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
        m = Mailbox.parse("alice@example.org")
        self.assertEqual(m, Mailbox("alice", "example.org"))
        self.assertEqual(str(m), "alice@example.org")

    def test_case_folded(self) -> None:
        """Local parts and domains are lower-cased: one mailbox whatever the case."""
        self.assertEqual(
            Mailbox.parse("Alice.Smith@Example.ORG"), Mailbox("alice.smith", "example.org")
        )

    def test_idn_domain(self) -> None:
        self.assertEqual(str(Mailbox.parse("info@Bücher.example")), "info@xn--bcher-kva.example")

    def test_atext(self) -> None:
        """RFC 5321 §4.1.2 Dot-string: every atext character is allowed."""
        for local in ("a+tag", "o'neil", "x!#$%&'*+/=?^_`{|}~-y", "first.last", "1"):
            self.assertEqual(Mailbox.parse(f"{local}@example.org").local, local)

    def test_frozen(self) -> None:
        m = Mailbox.parse("a@example.org")
        self.assertRaises(AttributeError, setattr, m, "local", "b")
        self.assertEqual(hash(m), hash(Mailbox.parse("A@EXAMPLE.ORG")))

    def test_local_part_length(self) -> None:
        local = "a" * MAX_LOCAL_PART
        self.assertEqual(Mailbox.parse(f"{local}@example.org").local, local)
        e = self.assertRaises(AddressError, Mailbox.parse, f"{local}a@example.org")
        self.assertEqual(str(e), "local part too long")

    def test_refused(self) -> None:
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
            '"quoted"@example.org': "quoted local parts are not accepted",
            '"a b"@example.org': "quoted local parts are not accepted",
            "a\0@example.org": "invalid local part",
            "a\r\n@example.org": "invalid local part",
            "a@[192.0.2.1]": "not a domain name",
            "a@exa_mple.org": "invalid domain",
        }
        for text, message in cases.items():
            e = self.assertRaises(AddressError, Mailbox.parse, text)
            self.assertEqual(str(e), message, repr(text))


class PathTests(unittest.TestCase):
    """C{MAIL FROM:}/C{RCPT TO:} arguments, RFC 5321 §4.1.2 Path and §4.1.1.2/§4.1.1.3."""

    def test_path(self) -> None:
        self.assertEqual(parse_path("<Alice@Example.org>"), (Mailbox("alice", "example.org"), ""))

    def test_null_path(self) -> None:
        """RFC 5321 §4.5.5: the null reverse-path C{<>} (bounces)."""
        self.assertEqual(parse_path("<>"), (None, ""))
        self.assertEqual(parse_path("<> SIZE=1000"), (None, "SIZE=1000"))

    def test_parameters(self) -> None:
        self.assertEqual(
            parse_path("<a@example.org> SIZE=1000 BODY=8BITMIME"),
            (Mailbox("a", "example.org"), "SIZE=1000 BODY=8BITMIME"),
        )

    def test_surrounding_space(self) -> None:
        self.assertEqual(parse_path("  <a@example.org>  "), (Mailbox("a", "example.org"), ""))

    def test_source_route_refused(self) -> None:
        """RFC 5321 §3.6.1 / Appendix C: C{<@relay:user@domain>} is refused, not stripped."""
        for text in ("<@relay.example:a@example.org>", "<@one.example,@two.example:a@example.org>"):
            e = self.assertRaises(AddressError, parse_path, text)
            self.assertEqual(str(e), "source routes are not accepted")

    def test_refused(self) -> None:
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
