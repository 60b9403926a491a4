"""Mail addresses: domains, mailboxes and SMTP paths (RFC 5321 §4.1.2, §2.3.11; IDNA2008,
RFC 5890-5891, with the UTS #46 mapping).

Everything here is pure: text in, frozen values out, L{AddressError} for anything malformed.
Domains are lower-cased and, when internationalised, kept in their A-label (ASCII) form.
Local parts are lower-cased too: twistedmail treats C{Alice@} and C{alice@} as one mailbox
(as Postfix's virtual maps and Dovecot's user lookups do by default), although RFC 5321 §2.4
allows a server to distinguish them.
"""

from __future__ import annotations

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


def _normalize_local(local: str) -> str:
    if local.startswith('"') and local.endswith('"') and len(local) >= 2:
        raise AddressError("quoted local parts are not accepted")
    if len(local) > MAX_LOCAL_PART:
        raise AddressError("local part too long")
    if not _DOT_STRING.match(local):
        raise AddressError("invalid local part")
    return local.lower()


@attrs.frozen
class Mailbox:
    """An address C{local@domain}, normalised (lower case, ASCII domain)."""

    local: str
    domain: str

    def __str__(self) -> str:
        return f"{self.local}@{self.domain}"

    @classmethod
    def parse(cls, text: str) -> Mailbox:
        """Parse C{local@domain} (no angle brackets).

        @raise AddressError: when either part is malformed (RFC 5321 §4.1.2 Mailbox).
        """
        local, sep, domain = text.rpartition("@")
        if not sep or not local:
            raise AddressError("address must be local@domain")
        return cls(_normalize_local(local), normalize_domain(domain))


def parse_path(text: str) -> tuple[Mailbox | None, str]:
    """Parse the argument of C{MAIL FROM:} or C{RCPT TO:} after the colon.

    RFC 5321 §4.1.2: C{Path = "<" [ A-d-l ":" ] Mailbox ">"}, followed by ESMTP parameters
    (§4.1.2 C{Mail-parameters}).  Source routes are refused rather than stripped, since
    twistedmail never relays by them (RFC 5321 §3.6.1 allows ignoring, we refuse: an
    C{@a:b@c} path is a classic relay trick).

    @return: (mailbox, parameters); mailbox is C{None} for the null path C{<>}.
    @raise AddressError: for a missing bracket, a source route or a bad mailbox.
    """
    text = text.strip()
    if not text.startswith("<"):
        raise AddressError("path must be enclosed in <>")
    end = text.find(">")
    if end < 0:
        raise AddressError("path must be enclosed in <>")
    inner, params = text[1:end], text[end + 1 :].strip()
    if len(inner) > MAX_PATH:
        raise AddressError("path too long")
    if inner == "":
        return None, params
    if inner.startswith("@"):
        raise AddressError("source routes are not accepted")
    return Mailbox.parse(inner), params
