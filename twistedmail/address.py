"""Mail addresses: domains, mailboxes and SMTP paths (RFC 5321 §4.1.2, §2.3.11; IDNA2008,
RFC 5890-5891, with the UTS #46 mapping).

Everything here is pure: text in, frozen values out, L{AddressError} for anything malformed.
Domains are lower-cased and, when internationalised, kept in their A-label (ASCII) form.
Local parts are lower-cased too: twistedmail treats C{Alice@} and C{alice@} as one mailbox
(as Postfix's virtual maps and Dovecot's user lookups do by default), although RFC 5321 §2.4
allows a server to distinguish them.
"""

from __future__ import annotations

import ipaddress
import re

import attrs
import idna

MAX_LOCAL_PART = 64  # RFC 5321 §4.5.3.1.1
MAX_DOMAIN = 255  # RFC 5321 §4.5.3.1.2
MAX_PATH = 256  # RFC 5321 §4.5.3.1.3

# RFC 5321 §4.1.2 Dot-string: atoms of atext joined by single dots.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]"
_DOT_STRING = re.compile(rf"{_ATEXT}+(\.{_ATEXT}+)*\Z")
_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\Z")


class AddressError(ValueError):
    """A domain, local part or path that is not valid; the message says why."""


def normalize_domain(text: str) -> str:
    """Return C{text} as a lower-case ASCII domain, internationalised labels as A-labels.

    RFC 5321 §2.3.5 / §4.1.2: a domain is dot-separated labels of letters, digits and
    hyphens (LDH, at most 63 octets each, RFC 1035 §2.3.4).  A name with non-ASCII
    characters is mapped and converted by IDNA2008 with the UTS #46 mapping (non-
    transitional: C{faß.test} is C{xn--fa-hia.test}, not IDNA2003's C{fass.test}; upper
    case and full-width forms are folded), and every C{xn--} label must be a valid IDNA2008
    A-label (RFC 5891 §5.4).  Plain ASCII labels are checked as LDH only (hostnames such
    as C{r3--a.example} are valid DNS names although not IDNA labels).

    Domains are kept and compared as A-labels, because that is what DNS, the file system
    (C{mail/DOMAIN/}), certificates and the other servers (Postfix, Dovecot) use; a
    U-label from the network or the command line is converted once, here.

    Address literals (C{[192.0.2.1]}) are refused: twistedmail hosts named domains only.

    @raise AddressError: for an empty, over-long, literal or malformed domain.
    """
    if not text or text.startswith("["):
        raise AddressError("not a domain name")
    if text.isascii():
        domain = text.lower()
    else:
        try:
            domain = idna.encode(text, uts46=True, std3_rules=True).decode("ascii")
        except (idna.IDNAError, UnicodeError) as e:
            raise AddressError("invalid internationalised domain") from e
        domain = domain.lower()
    if len(domain) > MAX_DOMAIN:
        raise AddressError("domain too long")
    labels = domain.split(".")
    if not all(_LABEL.match(label) for label in labels):
        raise AddressError("invalid domain")
    for label in labels:
        if label.startswith("xn--"):
            try:
                idna.ulabel(label)  # RFC 5891 §5.4: an A-label must decode to a U-label
            except (idna.IDNAError, UnicodeError) as e:
                raise AddressError("invalid internationalised domain") from e
    return domain


# RFC 5321 §4.1.2 Quoted-string: qtextSMTP (%d32-33 / %d35-91 / %d93-126) or
# quoted-pairSMTP (backslash, then %d32-126); no control characters, no bare backslash.
_QUOTED_STRING = re.compile(r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\[\x20-\x7e])*)"\Z')
_QUOTED_PAIR = re.compile(r"\\([\x20-\x7e])")
# RFC 5321 §4.1.3: Snum, IPv6 tag, General-address-literal (Standardized-tag ":" dcontent).
_SNUM = re.compile(r"[0-9]{1,3}\Z")
_GENERAL_LITERAL = re.compile(
    r"([A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?):([\x21-\x5a\x5e-\x7e]+)\Z"
)
# RFC 5321 §4.1.2 esmtp-param: keyword ["=" value], value any CHAR but "=", SP and CTL.
_ESMTP_PARAM = re.compile(r"([A-Za-z0-9][A-Za-z0-9-]*)(?:=([\x21-\x3c\x3e-\x7e]+))?\Z")
_ESMTP_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")


class PathTooLongError(AddressError):
    """A path over 256 octets (RFC 5321 §4.5.3.1.3: reply C{501 Path too long})."""


class NonASCIIAddressError(AddressError):
    """A non-ASCII address where SMTPUTF8 (RFC 6531) is not in use."""


class ParameterSyntaxError(AddressError):
    """An ESMTP parameter that is no C{esmtp-param} (RFC 5321 §4.1.2); C{keyword} is its
    keyword, upper-cased, when that is well-formed and only the value after "=" is bad
    (C{BODY=\\xff}), else C{None}."""

    def __init__(self, message: str, keyword: str | None) -> None:
        super().__init__(message)
        self.keyword = keyword


def _normalize_local(local: str) -> str:
    """The local part in one canonical form, lower case (see the module docstring).

    RFC 5321 §4.1.2: C{Local-part = Dot-string / Quoted-string}.  A quoted string whose
    content is a valid Dot-string is the same mailbox as that Dot-string (C{"alice"} is
    C{alice}); any other is kept quoted, with a backslash only before C{"} and C{\\}.

    @raise AddressError: a malformed or over-long (§4.5.3.1.1: 64 octets) local part, or
        one with a lone surrogate (bytes that were not UTF-8, e.g. in a command-line argument).
    """
    try:
        octets = len(local.encode("utf-8"))
    except UnicodeEncodeError:
        raise AddressError("invalid local part") from None
    if octets > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    quoted = _QUOTED_STRING.match(local)
    if quoted:
        content = _QUOTED_PAIR.sub(r"\1", quoted.group(1))
        if _DOT_STRING.match(content):
            return content.lower()
        escaped = content.replace("\\", "\\\\").replace('"', '\\"')
        return f'"{escaped}"'.lower()
    if not _DOT_STRING.match(local):
        raise AddressError("invalid local part")
    return local.lower()


def normalize_address_literal(text: str) -> str:
    """An address literal (RFC 5321 §4.1.3) in canonical form: C{[192.0.2.1]},
    C{[IPv6:2001:db8::1]}, or a General-address-literal C{[tag:content]} as given.

    @raise AddressError: anything else between the brackets.
    """
    if not (text.startswith("[") and text.endswith("]")):
        raise AddressError("not an address literal")
    inner = text[1:-1]
    parts = inner.split(".")
    if len(parts) == 4 and all(_SNUM.match(p) and int(p) <= 255 for p in parts):
        return "[" + ".".join(str(int(p)) for p in parts) + "]"  # IPv4-address-literal
    tag, colon, rest = inner.partition(":")
    if colon and tag.lower() == "ipv6":
        if "%" in rest:
            raise AddressError("invalid IPv6 address literal")  # no zone (RFC 5321 §4.1.3)
        try:
            return f"[IPv6:{ipaddress.IPv6Address(rest).compressed}]"
        except ValueError:
            raise AddressError("invalid IPv6 address literal") from None
    general = _GENERAL_LITERAL.match(inner)
    if general is None or general.group(1).isdigit():
        raise AddressError("invalid address literal")
    return text


@attrs.frozen
class Mailbox:
    """An address C{local@domain}, normalised: the local part lower case (quoted only when
    it must be, see L{_normalize_local}), the domain an ASCII (A-label) name or an address
    literal in brackets."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @property
    def quoted(self) -> bool:
        """Whether the local part needs the Quoted-string form (RFC 5321 §4.1.2)."""
        return self.local.startswith('"')

    @property
    def literal(self) -> bool:
        """Whether the domain is an address literal (RFC 5321 §4.1.3)."""
        return self.domain.startswith("[")

    @classmethod
    def parse(cls, text: str) -> Mailbox:
        """Parse C{local@domain} (no angle brackets): RFC 5321 §4.1.2 C{Mailbox =
        Local-part "@" ( Domain / address-literal )}.

        @raise AddressError: when either part is malformed or too long.
        """
        if text.endswith("]") and "[" in text:
            # dcontent may hold "@" but never "[": the literal starts at the last "[".
            at = text.rindex("[") - 1
            local, sep, domain = text[:at], text[at : at + 1], text[at + 1 :]
            if sep != "@":
                local, sep, domain = text.rpartition("@")
        else:
            local, sep, domain = text.rpartition("@")
        if not sep or not local:
            raise AddressError("address must be local@domain")
        if domain.startswith("["):
            return cls(_normalize_local(local), normalize_address_literal(domain))
        return cls(_normalize_local(local), normalize_domain(domain))


def _source_route(route: str) -> None:
    """Check an RFC 5321 §4.1.2 C{A-d-l = At-domain *( "," At-domain )}, C{At-domain =
    "@" Domain}; its content is then ignored (§3.6.1, Appendix C: a server SHOULD NOT use
    it; twistedmail never relays by it).  @raise AddressError: a malformed route."""
    for hop in route.split(","):
        if not hop.startswith("@"):
            raise AddressError("invalid source route")
        normalize_domain(hop[1:])


def _split_path(text: str) -> tuple[str, str]:
    """(the path between C{<} and C{>}, what follows it), honouring quoted strings and
    address literals, which may hold C{>} (RFC 5321 §4.1.2)."""
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    i, quoted, literal = 1, False, False
    while i < len(text):
        c = text[i]
        if quoted:
            if c == "\\":
                i += 1
            elif c == '"':
                quoted = False
        elif literal:
            literal = c != "]"
        elif c == '"':
            quoted = True
        elif c == "[":
            literal = True
        elif c == ">":
            return text[1:i], text[i + 1 :]
        i += 1
    raise AddressError("path must be enclosed in <>")


def parse_path(text: str) -> tuple[Mailbox | None, str]:
    """Parse the argument of C{MAIL FROM:} or C{RCPT TO:} after the colon.

    RFC 5321 §4.1.2: C{Path = "<" [ A-d-l ":" ] Mailbox ">"}, then C{[SP Mail-parameters]}.
    A source route (C{<@a,@b:user@d>}) is accepted and ignored (§3.6.1, Appendix C).  The
    whole path is at most 256 octets (§4.5.3.1.3), the local part 64 (§4.5.3.1.1), the
    domain 255 (§4.5.3.1.2).  Spaces before the path are tolerated (clients send them).
    C{text} may be wire bytes decoded with C{surrogateescape}: octets that are not UTF-8 are
    then malformed in the path, and the parameters' own error (L{parse_parameters}).

    @return: (mailbox, parameters text); mailbox is C{None} for the null path C{<>}.
    @raise PathTooLongError: over 256 octets.
    @raise NonASCIIAddressError: a non-ASCII path: twistedmail does not offer SMTPUTF8
        (RFC 6531 §3.5: 553 5.6.7).
    @raise AddressError: a missing bracket, a malformed route or mailbox, octets that are
        not UTF-8, no space before the parameters.
    """
    text = text.lstrip(" ")
    inner, rest = _split_path(text)
    if len(inner.encode("utf-8", "surrogateescape")) + 2 > MAX_PATH:
        raise PathTooLongError("path too long")
    if any("\udc80" <= c <= "\udcff" for c in inner):
        raise AddressError("path is not UTF-8")
    if not inner.isascii():
        raise NonASCIIAddressError("non-ASCII address without SMTPUTF8")
    if rest and not rest.startswith(" "):
        raise AddressError("a space must separate the path and its parameters")
    params = rest.strip(" ")
    if inner == "":
        return None, params
    if inner.startswith("@"):
        route, colon, inner = inner.partition(":")
        if not colon:
            raise AddressError("invalid source route")
        _source_route(route)
    return Mailbox.parse(inner), params


def parse_parameters(text: str) -> tuple[tuple[str, str | None], ...]:
    """The ESMTP parameters after a path (RFC 5321 §4.1.2 C{Mail-parameters} /
    C{Rcpt-parameters}): C{keyword[=value]} words, keywords upper-cased, in order.

    @raise ParameterSyntaxError: a word that is no C{esmtp-param} (reply 501 5.5.4), such as
        one with a non-ASCII value (esmtp-value is printable ASCII without SMTPUTF8).
    """
    params = []
    for word in text.split():
        m = _ESMTP_PARAM.match(word)
        if m is None:
            keyword, eq, _ = word.partition("=")
            known = bool(eq) and _ESMTP_KEYWORD.match(keyword) is not None
            raise ParameterSyntaxError(
                f"invalid parameter {word!r}", keyword.upper() if known else None
            )
        params.append((m.group(1).upper(), m.group(2)))
    return tuple(params)
