"""IMAP message rendering from raw bytes: sections, ENVELOPE, BODYSTRUCTURE (RFC 3501 §6.4.5,
§7.4.2), and the C{IMessage} of one Maildir message.

Everything here works on the message exactly as stored (bytes, CRLF line ends), never on
decoded text, so a raw UTF-8 header or a sloppy C{Content-Type} cannot break a response
(stock Twisted formats header fields and ENVELOPE as ASCII text: a raw UTF-8 Subject raised
C{UnicodeEncodeError} and dropped the connection, a trailing C{;} in C{Content-Type} did the
same in BODYSTRUCTURE, and its header dict merged repeated fields; twisted #9258).
Header fields are selected from the raw header lines, so repeated fields (C{Received}) and
8-bit values come out unchanged; anything that is not a plain quoted string is sent as a
literal (RFC 3501 §4.3).
"""

from __future__ import annotations

import base64
import binascii
import calendar
import datetime
import email.utils
import functools
import io
import quopri
import re
import time
from collections.abc import Mapping, Sequence
from email.message import Message
from email.parser import BytesHeaderParser
from email.policy import compat32
from typing import IO, Any

import attrs
from twisted.mail import imap4
from zope.interface import implementer

from twistedmail.auth import RunInThread
from twistedmail.index import CachedParts
from twistedmail.maildir import LETTER_TO_IMAP, UNKNOWN_MTIME, Folder, MessageEntry

CRLF = b"\r\n"
MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")


# ---------------------------------------------------------------- s-expressions (RFC 3501 §4)


class Atom(bytes):
    """Bytes sent as they are (an atom, a number, NIL), never quoted."""


NIL = Atom(b"NIL")


_UNQUOTABLE = re.compile(rb"[^\x20-\x7e]")


def _quotable(value: bytes) -> bool:
    """Short and 7-bit printable: one regular-expression scan (a generator over the
    bytes was a tenth of rendering an ENVELOPE)."""
    return len(value) < 1000 and _UNQUOTABLE.search(value) is None


def encode_string(value: bytes | str) -> bytes:
    """A quoted string (RFC 3501 §4.3) when 7-bit printable and short, else a literal."""
    if isinstance(value, str):
        value = value.encode("utf-8", "surrogateescape")
    if _quotable(value):
        return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
    return b"{%d}\r\n" % len(value) + value


def encode_sexp(items: Sequence[Any]) -> bytes:
    """A parenthesised list's contents: C{None} -> NIL, int -> number, L{Atom} as is,
    bytes/str -> string (quoted or literal), list/tuple -> nested list."""
    out = []
    for item in items:
        if item is None:
            out.append(b"NIL")
        elif isinstance(item, Atom):
            out.append(bytes(item))
        elif isinstance(item, bool):
            raise TypeError("bool in s-expression")
        elif isinstance(item, int):
            out.append(b"%d" % item)
        elif isinstance(item, bytes | str):
            out.append(encode_string(item))
        else:
            out.append(b"(" + encode_sexp(item) + b")")
    return b" ".join(out)


# ---------------------------------------------------------------- dates


def format_internaldate(mtime: float) -> bytes:
    """C{"17-Jul-1996 09:44:25 +0000"} (RFC 3501 §9 date-time), in UTC."""
    t = time.gmtime(mtime)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday,
        MONTHS[t.tm_mon - 1].encode(),
        t.tm_year,
        t.tm_hour,
        t.tm_min,
        t.tm_sec,
    )


_DATE_TIME = re.compile(
    rb"^ ?(\d{1,2})-([A-Za-z]{3})-(\d{4}) (\d\d):(\d\d):(\d\d) ([+-])(\d\d)(\d\d)$"
)


def parse_internaldate(text: bytes) -> float | None:
    """RFC 3501 §9 date-time (APPEND) -> seconds since the epoch; C{None} when malformed."""
    m = _DATE_TIME.match(text)
    if m is None:
        return None
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    try:
        month = [x.lower() for x in MONTHS].index(mon.decode().lower()) + 1
        stamp = calendar.timegm((int(year), month, int(day), int(hh), int(mm), int(ss), 0, 0, 0))
    except ValueError:
        return None
    offset = (int(zh) * 60 + int(zm)) * 60
    return float(stamp - offset if sign == b"+" else stamp + offset)


def parse_search_date(text: bytes) -> tuple[int, int, int] | None:
    """RFC 3501 §9 date (C{1-Feb-1994}) -> (year, month, day); C{None} when malformed or
    not a day of the calendar (C{31-Feb-2020}, C{0-Jan-2020}: BAD, not a search that matches
    nothing)."""
    m = re.match(rb"^(\d{1,2})-([A-Za-z]{3})-(\d{4})$", text.strip(b'"'))
    if m is None:
        return None
    try:
        month = [x.lower() for x in MONTHS].index(m.group(2).decode().lower()) + 1
    except ValueError:
        return None
    year, day = int(m.group(3)), int(m.group(1))
    try:
        datetime.date(year, month, day)
    except ValueError:
        return None
    return year, month, day


# ---------------------------------------------------------------- headers


def split_message(raw: bytes) -> tuple[bytes, bytes]:
    """(header including the blank line, body) of an RFC 5322 message or MIME part."""
    at = header_end(raw)
    return raw[:at], raw[at:]


def header_end(raw: bytes) -> int:
    """Where the body of C{raw} starts (after the header's blank line; the end when there
    is none): L{split_message} without copying the body (FETCH BODY[HEADER.FIELDS])."""
    if raw.startswith(CRLF):
        return 2
    if raw.startswith(b"\n"):
        return 1
    end = raw.find(b"\r\n\r\n")
    # a bare-LF blank line counts only before the CRLF one: not searched for beyond it
    lf = raw.find(b"\n\n", 0, end + 4 if end >= 0 else len(raw))
    if end >= 0 and (lf < 0 or end <= lf + 1):
        return end + 4
    if lf >= 0:
        return lf + 2
    return len(raw)


CACHED_HEADER = 16 * 1024
"""Headers up to this size have their fields kept (L{header_fields}), the last 64."""


def header_fields(header: bytes) -> tuple[tuple[bytes, bytes], ...]:
    """The header's logical fields as (lower-case name, whole raw field with continuation
    lines and line ends) in order; repeated fields are kept (RFC 5322 §2.2.3).

    The fields of the last few headers up to L{CACHED_HEADER} are kept (a tuple, not to
    be changed): ENVELOPE and BODYSTRUCTURE ask for one field at a time, and 18 passes
    over one header were a third of rendering them."""
    if len(header) <= CACHED_HEADER:
        return _cached_fields(header)
    return _fields(header)


def _fields(header: bytes) -> tuple[tuple[bytes, bytes], ...]:
    fields: list[tuple[bytes, bytes]] = []
    for line in header.splitlines(keepends=True):
        if not line.strip(b"\r\n"):
            break
        if line[:1] in (b" ", b"\t") and fields:
            name, text = fields[-1]
            fields[-1] = (name, text + line)
        else:
            name = line.split(b":", 1)[0].strip().lower() if b":" in line else b""
            fields.append((name, line))
    return tuple(fields)


_cached_fields = functools.lru_cache(maxsize=64)(_fields)


def header_value(header: bytes, name: bytes) -> bytes | None:
    """The first field C{name} (case-insensitive), unfolded and stripped, or C{None}."""
    name = name.lower()
    for field_name, text in header_fields(header):
        if field_name == name:
            value = text.split(b":", 1)[1]
            return re.sub(rb"\r?\n(?=[ \t])", b"", value).strip()
    return None


def select_headers(header: bytes, names: Sequence[bytes], negate: bool) -> bytes:
    """C{HEADER.FIELDS [.NOT] (names)}: the matching raw fields then the blank line
    (RFC 3501 §6.4.5)."""
    wanted = {n.lower() for n in names}
    kept = [text for name, text in header_fields(header) if (name in wanted) != negate]
    out = b"".join(t if t.endswith(b"\n") else t + CRLF for t in kept)
    return out + CRLF


_ENCODED_WORD = re.compile(rb"=\?([^?\s*]+)(?:\*[^?\s]*)?\?([bBqQ])\?([^?\s]*)\?=")
_BETWEEN_WORDS = re.compile(rb"[ \t\r\n]*")


def _decode_word(m: re.Match[bytes]) -> str | None:
    charset, kind, text = m.group(1).decode("ascii", "replace"), m.group(2), m.group(3)
    try:
        if kind in b"bB":
            data = base64.b64decode(text + b"=" * (-len(text) % 4))
        else:
            data = quopri.decodestring(text.replace(b"_", b" "), header=True)
        return data.decode(charset, "replace")
    except (ValueError, LookupError, binascii.Error):
        return None


def decode_header_text(value: bytes) -> str:
    """Header text with its RFC 2047 encoded-words decoded (white space between two adjacent
    encoded-words dropped, RFC 2047 §6.2; an unknown charset leaves the word as it is), folds
    unfolded; octets outside encoded-words are taken as UTF-8 (RFC 6532)."""
    value = re.sub(rb"\r?\n(?=[ \t])", b"", value)
    out: list[str] = []
    pos = 0
    last_word_end = -1
    for m in _ENCODED_WORD.finditer(value):
        decoded = _decode_word(m)
        if decoded is None:
            continue
        between = value[pos : m.start()]
        if not (last_word_end == pos and _BETWEEN_WORDS.fullmatch(between)):
            out.append(between.decode("utf-8", "replace"))
        out.append(decoded)
        pos = last_word_end = m.end()
    out.append(value[pos:].decode("utf-8", "replace"))
    return "".join(out)


def _content_headers(header: bytes) -> Message:
    return BytesHeaderParser(policy=compat32).parsebytes(header)


def _raw(value: str) -> bytes:
    return value.encode("utf-8", "surrogateescape")


# ---------------------------------------------------------------- MIME structure


@attrs.frozen
class Entity:
    """One MIME entity: its raw header and body, its children (multipart) and, for
    C{message/rfc822}, the encapsulated message (RFC 2045, RFC 2046 §5)."""

    header: bytes
    body: bytes
    maintype: str
    subtype: str
    params: tuple[tuple[str, str], ...]
    children: tuple[Entity, ...] = ()
    encapsulated: Entity | None = None


def _params(msg: Message, header: str) -> tuple[tuple[str, str], ...]:
    found = msg.get_params(header=header) or []
    out = []
    for key, value in found[1:]:
        if not key:
            continue
        if isinstance(value, tuple):
            value = email.utils.collapse_rfc2231_value(value)
        out.append((key.lower(), value))
    return tuple(out)


def _content_type(value: bytes) -> tuple[str, str, tuple[tuple[str, str], ...]] | None:
    """(type, subtype, parameters) of an unfolded Content-Type value, by the email
    package's rules; C{None} when it names no type/subtype (the default applies)."""
    msg = _content_headers(b"Content-Type: " + value + b"\r\n\r\n")
    ctype = msg.get("content-type")
    if ctype is None or "/" not in str(ctype):
        return None
    return msg.get_content_maintype(), msg.get_content_subtype(), _params(msg, "content-type")


CACHED_CONTENT_TYPE = 1024
"""Content-Type values up to this size have their parse kept (the last 256): most parts
carry one of a few (C{text/plain; charset=us-ascii}), and the email package's parser was
a third of rendering BODYSTRUCTURE."""

_cached_content_type = functools.lru_cache(maxsize=256)(_content_type)


def _split_multipart(body: bytes, boundary: bytes) -> list[bytes]:
    """The parts between C{--boundary} delimiter lines (RFC 2046 §5.1.1); the CRLF before
    each delimiter belongs to the delimiter."""
    delimiter = re.compile(
        rb"(?:^|\r?\n)--" + re.escape(boundary) + rb"(--)?[ \t]*(?:\r?\n|$)", re.MULTILINE
    )
    parts: list[bytes] = []
    start: int | None = None
    for m in delimiter.finditer(body):
        if start is not None:
            parts.append(body[start : m.start()])
        if m.group(1):
            return parts
        start = m.end()
    if start is not None:
        parts.append(body[start:])
    return parts


def parse_entity(
    raw: bytes, default: tuple[str, str] = ("text", "plain"), depth: int = 0
) -> Entity:
    """Parse C{raw} into an L{Entity} tree (depth-limited against hostile nesting)."""
    header, body = split_message(raw)
    # parameters from the unfolded field (RFC 5322 §2.2.3): a folded quoted boundary
    # (C{boundary="foo\r\n bar"}) is C{foo bar}
    content_type = header_value(header, b"content-type")
    parsed = None
    if content_type is not None:
        if len(content_type) <= CACHED_CONTENT_TYPE:
            parsed = _cached_content_type(content_type)
        else:
            parsed = _content_type(content_type)
    if parsed is not None:
        maintype, subtype, params = parsed
    else:
        maintype, subtype = default
        params = (("charset", "us-ascii"),) if default == ("text", "plain") else ()
    children: tuple[Entity, ...] = ()
    encapsulated = None
    if depth < 20 and maintype == "multipart":
        boundary = dict(params).get("boundary")
        if boundary:
            child_default = ("message", "rfc822") if subtype == "digest" else ("text", "plain")
            children = tuple(
                parse_entity(p, child_default, depth + 1)
                for p in _split_multipart(body, _raw(boundary))
            )
    elif depth < 20 and (maintype, subtype) == ("message", "rfc822"):
        encapsulated = parse_entity(body, depth=depth + 1)
    return Entity(header, body, maintype, subtype, params, children, encapsulated)


def resolve_part(root: Entity, numbers: Sequence[int]) -> Entity | None:
    """The entity at section part C{numbers} (1-based; RFC 3501 §6.4.5 part numbering), or
    C{None} when it does not exist."""
    entity = root
    for i, n in enumerate(numbers):
        container = entity if i == 0 or entity.encapsulated is None else entity.encapsulated
        if container.children:
            if not 1 <= n <= len(container.children):
                return None
            entity = container.children[n - 1]
        elif n == 1 and (i == 0 or container is entity.encapsulated):
            entity = container
        else:
            return None
    return entity


def section_data(raw: bytes, part: Any) -> bytes | None:
    """The octets of FETCH C{BODY[section]} (a C{_FetchParser.Body}), before any partial
    range; C{None} for a section that does not exist."""
    numbers = [p + 1 for p in part.part]
    if not numbers:
        if part.empty:
            return raw
        at = header_end(raw)
        if part.text:
            return raw[at:]
        if part.header is not None:
            return _header_section(raw[:at], part.header)
        if part.mime:
            return None
        return raw
    root = parse_entity(raw)
    entity = resolve_part(root, numbers)
    if entity is None:
        return None
    if part.mime:
        return entity.header
    if part.empty:
        return entity.body
    inner = entity.encapsulated
    if inner is None:
        return None
    if part.text:
        return inner.body
    if part.header is not None:
        return _header_section(inner.header, part.header)
    return None


def _header_section(header: bytes, spec: Any) -> bytes:
    if spec.fields:
        return select_headers(header, spec.fields, spec.negate)
    return header


def section_label(part: Any) -> bytes:
    """C{BODY[<section>]} as echoed in the response (no C{.PEEK}, no partial)."""
    numbers = b".".join(b"%d" % (p + 1) for p in part.part)
    if part.header is not None:
        spec = b"HEADER"
        if part.header.fields:
            spec += b".FIELDS.NOT" if part.header.negate else b".FIELDS"
            spec += b" (" + b" ".join(part.header.fields) + b")"
    elif part.text:
        spec = b"TEXT"
    elif part.mime:
        spec = b"MIME"
    else:
        spec = b""
    inner = numbers + (b"." if numbers and spec else b"") + spec
    return b"BODY[" + inner + b"]"


def partial(data: bytes, part: Any) -> tuple[bytes, bytes]:
    """Apply C{<start.length>} (RFC 3501 §6.4.5): (data slice, C{b"<start>"} origin or b"")."""
    if part.partialBegin is None:
        return data, b""
    start, length = part.partialBegin, part.partialLength
    return data[start : start + length], b"<%d>" % start


# ---------------------------------------------------------------- ENVELOPE, BODYSTRUCTURE


MISSING_DOMAIN = b"MISSING_DOMAIN"
"""The host of an address without one (C{To: undisclosed}): never NIL, which would make it a
group marker (RFC 3501 §7.4.2); Dovecot's value."""
MISSING_MAILBOX = b"MISSING_MAILBOX"
"""The mailbox of an address without one (C{From: <>}, C{@host}), as Dovecot sends it."""


@attrs.frozen
class Address:
    """One ENVELOPE address (RFC 3501 §7.4.2): display name (raw, encoded-words kept), route
    (C{@a,@b}), mailbox and host.  A group is a start marker (C{host} NIL, C{mailbox} the
    group name) followed by its members and an end marker (C{mailbox} and C{host} NIL)."""

    name: bytes | None
    route: bytes | None
    mailbox: bytes | None
    host: bytes | None

    @property
    def group_start(self) -> bool:
        return self.host is None and self.mailbox is not None

    @property
    def group_end(self) -> bool:
        return self.host is None and self.mailbox is None


_ADDRESS_TOKEN = re.compile(
    rb'[ \t\r\n]+|"(?:[^"\\]|\\.)*"?|\[(?:[^\]\\]|\\.)*\]?|[<>@,;:.]|\\.?'
    rb'|[^ \t\r\n"\[\]<>@,;:.()\\]+'
)


def _address_tokens(value: bytes) -> list[tuple[bytes, bytes]]:
    """(kind, text) tokens of an RFC 5322 §3.4 address list: C{"w"} word (atom, unquoted
    quoted-string, domain literal), C{"c"} comment text, C{" "} white space, or the special
    character itself."""
    out: list[tuple[bytes, bytes]] = []
    i = 0
    while i < len(value):
        if value[i : i + 1] == b"(":  # comment, nested (RFC 5322 §3.2.2)
            depth, j, comment = 0, i, bytearray()
            while j < len(value):
                c = value[j : j + 1]
                if c == b"\\" and j + 1 < len(value):
                    comment += value[j + 1 : j + 2]
                    j += 2
                    continue
                depth += {b"(": 1, b")": -1}.get(c, 0)
                j += 1
                if depth == 0:
                    break
                if depth > 1 or c not in b"(":
                    comment += c
            out.append((b"c", bytes(comment).strip()))
            i = j
            continue
        if value[i : i + 1] in (b")", b"]"):  # stray closer: ignored (found by the fuzz test)
            i += 1
            continue
        m = _ADDRESS_TOKEN.match(value, i)
        assert m is not None
        text = m.group()
        i = m.end()
        if text[:1] in b" \t\r\n":
            out.append((b" ", b" "))
        elif text[:1] == b'"':
            inner = text[1:-1] if len(text) > 1 and text.endswith(b'"') else text[1:]
            out.append((b"w", re.sub(rb"\\(.)", rb"\1", inner)))
        elif len(text) == 1 and text in b"<>@,;:.":
            out.append((text, text))
        else:
            out.append((b"w", text))
    return out


def parse_addresses(value: bytes) -> list[Address]:
    """An RFC 5322 §3.4 address list (From, To, Cc, ...) as ENVELOPE addresses, groups as
    RFC 3501 §7.4.2 markers.  Lenient as Dovecot 2.3 is: a comment after a bare addr-spec is
    its display name, a missing mailbox or host is L{MISSING_MAILBOX} / L{MISSING_DOMAIN},
    what follows an address up to the next comma is ignored."""
    tokens = _address_tokens(value)
    out: list[Address] = []
    pos = 0
    in_group = False

    def peek() -> bytes:
        j = pos
        while j < len(tokens) and tokens[j][0] in (b" ", b"c"):
            j += 1
        return tokens[j][0] if j < len(tokens) else b""

    def take_until(stops: bytes) -> list[tuple[bytes, bytes]]:
        nonlocal pos
        start = pos
        while pos < len(tokens) and not (len(tokens[pos][0]) == 1 and tokens[pos][0] in stops):
            pos += 1
        return tokens[start:pos]

    def phrase(items: list[tuple[bytes, bytes]]) -> bytes | None:
        words: list[bytes] = []
        space = False
        for kind, text in items:
            if kind in (b" ", b"c"):
                space = bool(words)
            elif kind != b"<":
                if space and words:
                    words.append(b" ")
                words.append(text)
                space = False
        return b"".join(words) or None

    def spaced_words(items: list[tuple[bytes, bytes]]) -> bool:
        """Whether two words stand apart (white space or a comment between them)."""
        seen = apart = False
        for kind, _ in items:
            if kind == b"w":
                if seen and apart:
                    return True
                seen, apart = True, False
            elif kind in (b" ", b"c"):
                apart = seen
            else:
                apart = False
        return False

    def addr_spec(items: list[tuple[bytes, bytes]]) -> tuple[bytes | None, bytes | None]:
        """local-part and domain (RFC 5322 §3.4.1); a word after white space ends each."""
        local, at, domain = bytearray(), False, bytearray()
        spaced = False
        for kind, text in items:
            if kind == b"@" and not at:
                at, spaced = True, False
            elif kind in (b" ", b"c"):
                spaced = bool(domain if at else local)
            elif kind in (b"w", b".", b"@"):
                part = domain if at else local
                if spaced and kind == b"w":
                    if at:
                        break  # "a@b c@d": what follows the domain is not part of it
                spaced = False
                part.extend(text)
        return bytes(local) or None, bytes(domain) or None

    while pos < len(tokens):
        kind = peek()
        if not kind:
            break
        if kind == b",":
            take_until(b",")
            pos += 1
            continue
        if kind == b";":  # end of group (RFC 5322 §3.4 group)
            take_until(b";")
            pos += 1
            if in_group:
                out.append(Address(None, None, None, None))
                in_group = False
            continue
        items = take_until(b"<:,;")
        stop = tokens[pos][0] if pos < len(tokens) else b""
        if stop == b":" and not in_group:
            pos += 1
            out.append(Address(None, None, phrase(items) or b"", None))
            in_group = True
            continue
        if stop == b"<":
            pos += 1
            inner = take_until(b">")
            pos += 1
            route = None
            colon = next((k for k, t in enumerate(inner) if t[0] == b":"), None)
            if colon is not None:  # obs-route: <@a,@b:user@host> (RFC 5322 §4.4)
                route = b"".join(t for k, t in inner[:colon] if k in (b"w", b"@", b".", b","))
                inner = inner[colon + 1 :]
            local, domain = addr_spec(inner)
            take_until(b",;")  # anything after ">" up to the next address
            mailbox, host = local or MISSING_MAILBOX, domain or MISSING_DOMAIN
            out.append(Address(phrase(items), route or None, mailbox, host))
            continue
        if stop == b":":  # a ":" inside a group: not an address
            pos += 1
            continue
        if not any(k in (b"w", b"@", b".") for k, _ in items):
            continue  # nothing but white space and comments
        before_at = items[: next((i for i, t in enumerate(items) if t[0] == b"@"), len(items))]
        if spaced_words(before_at):
            # "John Smith", "foo bar@baz": words apart are no local part but a name, with
            # no address (Dovecot's reading)
            out.append(Address(phrase(before_at), None, MISSING_MAILBOX, MISSING_DOMAIN))
            continue
        local, domain = addr_spec(items)
        # a comment after the addr-spec names it (RFC 5322 §3.4 obsolete practice)
        first_word = next(i for i, t in enumerate(items) if t[0] in (b"w", b"@", b"."))
        comments = [t for k, t in items[first_word:] if k == b"c" and t]
        name = comments[-1] if comments else None
        out.append(Address(name, None, local or MISSING_MAILBOX, domain or MISSING_DOMAIN))
    if in_group:
        out.append(Address(None, None, None, None))
    return out


def _addresses(value: bytes | None) -> Atom | None:
    """An ENVELOPE address list, C{"(" 1*address ")"} with no space between the addresses
    (RFC 3501 §9 env-from), or NIL."""
    if value is None:
        return None
    found = parse_addresses(value)
    if not found:
        return None
    return Atom(b"(%s)" % b"".join(_list([a.name, a.route, a.mailbox, a.host]) for a in found))


def _list(items: Sequence[Any]) -> bytes:
    return b"(" + encode_sexp(items) + b")"


_ATOM = re.compile(r"[^\s()<>\[\]:;@\\,.\"]+")


def address_text(addresses: Sequence[Address]) -> str:
    """An address list written out as SEARCH matches it (RFC 3501 §6.4.4 FROM, TO, CC, BCC),
    Dovecot 2.3's normal form: C{<mailbox@host>}, after the display name (quoted unless an
    atom, then RFC 2047-decoded), C{<@route:mailbox@host>}, groups as C{name: member, ...;},
    addresses joined by C{", "}, comments dropped; a missing part is its MISSING_* value."""

    def text(value: bytes | None) -> str:
        return (value or b"").decode("utf-8", "replace")

    parts: list[str] = []
    members: list[str] | None = None
    group = ""
    for a in addresses:
        if a.group_start:
            group, members = decode_header_text(a.mailbox or b""), []
            continue
        if a.group_end:
            if members is not None:
                parts.append(f"{group}: {', '.join(members)};" if members else f"{group}:;")
            members = None
            continue
        route = text(a.route) + ":" if a.route else ""
        written = f"<{route}{text(a.mailbox)}@{text(a.host)}>"
        if a.name:
            # quoted as written (an encoded-word is an atom), then decoded
            name = a.name
            if not _ATOM.fullmatch(text(name)):
                name = b'"' + name.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
            written = f"{decode_header_text(name)} {written}"
        (parts if members is None else members).append(written)
    return ", ".join(parts)


def envelope(header: bytes) -> list[Any]:
    """ENVELOPE fields (RFC 3501 §7.4.2) from raw header bytes: date, subject, from, sender,
    reply-to, to, cc, bcc, in-reply-to, message-id; sender and reply-to default to from."""

    def get(name: bytes) -> bytes | None:
        return header_value(header, name)

    from_ = _addresses(get(b"from"))
    sender = _addresses(get(b"sender")) or from_
    reply_to = _addresses(get(b"reply-to")) or from_
    return [
        get(b"date"),
        get(b"subject"),
        from_,
        sender,
        reply_to,
        _addresses(get(b"to")),
        _addresses(get(b"cc")),
        _addresses(get(b"bcc")),
        get(b"in-reply-to"),
        get(b"message-id"),
    ]


def _param_list(params: Sequence[tuple[str, str]]) -> list[bytes] | None:
    out: list[bytes] = []
    for key, value in params:
        out += [_raw(key), _raw(value)]
    return out or None


def _disposition(header: bytes) -> list[Any] | None:
    value = header_value(header, b"content-disposition")
    if value is None:
        return None
    msg = _content_headers(b"Content-Disposition: " + value + b"\r\n\r\n")
    kind = value.split(b";", 1)[0].strip()
    return [kind, _param_list(_params(msg, "content-disposition"))]


def _line_count(body: bytes) -> int:
    """body-fld-lines (RFC 3501 §7.4.2): the line ends in the body, as Dovecot counts (a
    last line without one is not counted)."""
    return body.count(b"\n")


def bodystructure(entity: Entity, extended: bool) -> list[Any]:
    """BODY (C{extended=False}) or BODYSTRUCTURE of an entity (RFC 3501 §7.4.2)."""
    if entity.children:
        # body-type-mpart = 1*body SP media-subtype: no space between the parts (RFC 3501 §9)
        parts = b"".join(_list(bodystructure(c, extended)) for c in entity.children)
        out: list[Any] = [Atom(parts), _raw(entity.subtype.upper())]
        if extended:
            out += [
                _param_list(entity.params),
                _disposition(entity.header),
                header_value(entity.header, b"content-language"),
                header_value(entity.header, b"content-location"),
            ]
        return out
    if entity.maintype == "multipart":  # multipart without parts: report as empty text
        entity = attrs.evolve(entity, maintype="text", subtype="plain", params=())
    encoding = header_value(entity.header, b"content-transfer-encoding") or b"7BIT"
    params = entity.params
    if entity.maintype == "text" and not any(key == "charset" for key, _ in params):
        params += (("charset", "us-ascii"),)  # RFC 2046 §4.1.2 default, as Dovecot shows it
    out = [
        _raw(entity.maintype.upper()),
        _raw(entity.subtype.upper()),
        _param_list(params),
        header_value(entity.header, b"content-id"),
        header_value(entity.header, b"content-description"),
        encoding.upper(),
        len(entity.body),
    ]
    if entity.encapsulated is not None:
        inner = entity.encapsulated
        out += [envelope(inner.header), bodystructure(inner, extended), _line_count(entity.body)]
    elif entity.maintype == "text":
        out.append(_line_count(entity.body))
    if extended:
        out += [
            header_value(entity.header, b"content-md5"),
            _disposition(entity.header),
            header_value(entity.header, b"content-language"),
            header_value(entity.header, b"content-location"),
        ]
    return out


def render_parts(raw: bytes, kinds: set[str]) -> CachedParts:
    """The C{kinds} (C{"envelope"}, C{"bodystructure"}, C{"body"}) of a message as sent
    inside their parentheses (RFC 3501 §7.4.2), the others C{None}: what the folder index
    caches so a later FETCH need not open the file."""
    entity = parse_entity(raw) if kinds & {"bodystructure", "body"} else None
    return CachedParts(
        encode_sexp(envelope(split_message(raw)[0])) if "envelope" in kinds else None,
        encode_sexp(bodystructure(entity, True)) if entity and "bodystructure" in kinds else None,
        encode_sexp(bodystructure(entity, False)) if entity and "body" in kinds else None,
    )


# ---------------------------------------------------------------- IMessage


def _text(value: bytes) -> str:
    return value.decode("utf-8", "replace")


@implementer(imap4.IMessagePart)
class EntityPart:
    """C{IMessagePart} over one parsed MIME entity (for Twisted code that walks parts)."""

    def __init__(self, entity: Entity) -> None:
        self.entity = entity

    def getHeaders(self, negate: bool, *names: bytes | str) -> dict[str, str]:
        wanted = {(n.decode() if isinstance(n, bytes) else n).lower() for n in names}
        out: dict[str, str] = {}
        for name, text in header_fields(self.entity.header):
            key = _text(name)
            if (key in wanted) != negate and key not in out:
                value = text.split(b":", 1)[1] if b":" in text else b""
                out[key] = _text(re.sub(rb"\r?\n(?=[ \t])", b"", value).strip())
        return out

    def getBodyFile(self) -> IO[bytes]:
        return io.BytesIO(self.entity.body)

    def getSize(self) -> int:
        return len(self.entity.body)

    def isMultipart(self) -> bool:
        return bool(self.entity.children)

    def getSubPart(self, part: int) -> EntityPart:
        return EntityPart(self.entity.children[part])


@implementer(imap4.IMessage, imap4.IMessageFile)
class MaildirMessage:
    """One message of a selected mailbox, as of the session's view.

    C{raw} is read on demand: call L{load} (off the reactor thread) before using the
    content getters; if not loaded they read the file synchronously.

    @ivar seq: the message sequence number in the session (RFC 3501 §2.3.1.2).
    @ivar recent: whether the session holds C{\\Recent} for it (RFC 3501 §2.3.2).
    """

    def __init__(
        self,
        entry: MessageEntry,
        folder: Folder,
        seq: int,
        recent: bool,
        keywords: Mapping[str, str] | None = None,
    ) -> None:
        self.entry = entry
        self.keywords = keywords or {}
        self.folder = folder
        self.seq = seq
        self.recent = recent
        self.raw: bytes | None = None

    async def load(self, run_in_thread: RunInThread) -> bytes:
        """Read the message file in a thread.  @raise MaildirError: when it was expunged."""
        if self.raw is None:
            self.raw = await run_in_thread(self.folder.read, self.entry)
        return self.raw

    def content(self) -> bytes:
        if self.raw is None:
            self.raw = self.folder.read(self.entry)
        return self.raw

    # IMessage

    def getUID(self) -> int:
        return self.entry.uid

    def getFlags(self) -> list[str]:
        return imap_flags(self.entry.flags, self.recent, self.keywords)

    def getInternalDate(self) -> str:
        mtime = self.entry.mtime
        if mtime == UNKNOWN_MTIME:  # (our commands ask L{Folder.dates} first, in a thread)
            mtime = self.folder.dates([self.entry]).get(self.entry.base, 0.0)
        return email.utils.formatdate(mtime, usegmt=True)

    def getHeaders(self, negate: bool, *names: bytes | str) -> dict[str, str]:
        return EntityPart(parse_entity(self.content())).getHeaders(negate, *names)

    def getBodyFile(self) -> IO[bytes]:
        return io.BytesIO(split_message(self.content())[1])

    def getSize(self) -> int:
        return self.entry.size

    def isMultipart(self) -> bool:
        return bool(parse_entity(self.content()).children)

    def getSubPart(self, part: int) -> EntityPart:
        return EntityPart(parse_entity(self.content()).children[part])

    # IMessageFile

    def open(self) -> IO[bytes]:
        return io.BytesIO(self.content())


def imap_flags(
    letters: str, recent: bool = False, keywords: Mapping[str, str] | None = None
) -> list[str]:
    """Maildir info letters -> IMAP flags (RFC 3501 §2.3.2): system flags, then the keywords
    the folder's C{keywords} map ({letter: name}) names, then C{\\Recent}.  Letters without a
    name are not shown."""
    flags = [LETTER_TO_IMAP[c] for c in letters if c in LETTER_TO_IMAP]
    if keywords:
        flags += [keywords[c] for c in letters if c in keywords]
    if recent:
        flags.append("\\Recent")
    return flags
