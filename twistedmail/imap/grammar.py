"""The argument syntax of IMAP commands (RFC 3501 §9 formal syntax): atoms, quoted strings,
astrings and parenthesised lists, each parsed from the front of the unparsed rest of a command
line and returned with what follows it.

Literals are read by the session (L{twistedmail.imap.server}), which asks for them with a
continuation request (or not, for LITERAL+ C{{n+}}, RFC 7888); this module sees the text
around them.  Every malformed argument raises C{imap4.IllegalClientResponse}, answered C{BAD}.
"""

from __future__ import annotations

from typing import Any

from twisted.mail import imap4

CTL = frozenset(range(0x20)) | {0x7F}
ATOM_SPECIALS = frozenset(b'(){ %*"\\]') | CTL
"""RFC 3501 §9 atom-specials: "(" ")" "{" SP CTL list-wildcards quoted-specials
resp-specials."""
_ASTRING_STOP = frozenset(b'(){ "\\') | CTL
"""What ends or spoils an atom standing for an astring: ASTRING-CHAR (RFC 3501 §9) adds "]"
to ATOM-CHAR; "%" and "*" are taken too, as Dovecot does, since a LIST pattern
(list-mailbox) is an astring with them and a mailbox name containing them is simply one that
does not exist."""
_TOKEN_STOP = frozenset(b'() "') | CTL
"""What ends a bare token inside a list or search keys: an atom, a flag (C{\\Seen}), a
sequence set (C{1:*}), a section (C{BODY[HEADER]}) is checked by its consumer."""


SYSTEM_FLAGS = frozenset((b"\\ANSWERED", b"\\FLAGGED", b"\\DELETED", b"\\SEEN", b"\\DRAFT"))
"""RFC 3501 §9 flag: the system flags a client may set, upper-cased (C{\\Recent} is the
server's, §2.3.2; flag-extension is reserved for future standards)."""


class QuotedString(bytes):
    """A quoted string's value from L{parse_list}: bytes, marked so that a consumer whose
    grammar wants an atom there (a flag) can tell C{"x"} from C{x}."""


def _fail(text: str) -> imap4.IllegalClientResponse:
    return imap4.IllegalClientResponse(text)


def quoted(line: bytes) -> tuple[bytes, bytes]:
    """C{"..."} at the start of C{line} -> (its value, the rest after it).

    RFC 3501 §9: quoted = DQUOTE *QUOTED-CHAR DQUOTE; QUOTED-CHAR is any TEXT-CHAR (no NUL,
    CR or LF) but quoted-specials, or "\\" quoted-specials.  8-bit octets are taken (UTF-8,
    RFC 6855 §3).
    """
    out = bytearray()
    i = 1
    while i < len(line):
        c = line[i]
        if c == 0x22:
            return bytes(out), line[i + 1 :]
        if c == 0x5C:
            i += 1
            if i >= len(line) or line[i] not in (0x22, 0x5C):
                raise _fail("Bad escape in quoted string")
            c = line[i]
        elif c in (0x00, 0x0D, 0x0A):
            raise _fail("NUL, CR or LF in quoted string")
        out.append(c)
        i += 1
    raise _fail("Unterminated quoted string")


def _run(line: bytes, stop: frozenset[int]) -> int:
    """The length of the run at the start of C{line} free of C{stop} octets."""
    for i, c in enumerate(line):
        if c in stop:
            return i
    return len(line)


def end_of_argument(rest: bytes) -> bytes:
    """What follows an argument: nothing, or one SP and the next argument (RFC 3501 §9
    separates arguments with SP; more spaces are taken, as stock Twisted did)."""
    if rest and rest[:1] != b" ":
        raise _fail("Space expected after an argument")
    return rest.lstrip(b" ")


def astring(line: bytes) -> tuple[bytes, bytes]:
    """An astring that is not a literal: a quoted string or an atom (C{NIL} included, which
    is the string "NIL" here, RFC 3501 §9 astring) -> (value, rest).

    @raise imap4.IllegalClientResponse: empty, or an atom with an atom-special in it.
    """
    line = line.lstrip(b" ")
    if not line:
        raise _fail("Missing argument")
    if line[:1] == b'"':
        value, rest = quoted(line)
        return value, end_of_argument(rest.rstrip(b" "))
    n = _run(line, _ASTRING_STOP)
    if n == 0:
        raise _fail("Atom or string expected")
    rest = line[n:]
    if rest.strip(b" ") and rest[:1] != b" ":
        raise _fail("Invalid character in atom")
    return line[:n], rest.lstrip(b" ")


def parse_list(line: bytes) -> list[Any]:
    """Space-separated items with nested parentheses (search keys, an option list's inside)
    -> a nested list of bytes: quoted strings unquoted (L{quoted}), every other token as
    sent, C{NIL} included (unlike Twisted's C{parseNestedParens}, which turns it into
    C{None} and ignores escapes and NULs).

    @raise imap4.IllegalClientResponse: unbalanced parentheses, a bad quoted string, a
        literal marker or a control character where the grammar has none.
    """
    stack: list[list[Any]] = [[]]
    i = 0
    while i < len(line):
        c = line[i]
        if c == 0x20:
            i += 1
            continue
        if c == 0x28:
            stack.append([])
            i += 1
        elif c == 0x29:
            if len(stack) == 1:
                raise _fail("Unbalanced parenthesis")
            inner = stack.pop()
            stack[-1].append(inner)
            i += 1
        elif c == 0x22:
            value, rest = quoted(line[i:])
            stack[-1].append(QuotedString(value))
            i = len(line) - len(rest)
        else:
            n = _run(line[i:], _TOKEN_STOP)
            if n == 0:
                raise _fail("Invalid character")
            token = line[i : i + n]
            if token.startswith(b"{") or token.startswith(b"~{"):
                raise _fail("Literal not allowed here")
            stack[-1].append(token)
            i += n
            if i < len(line) and line[i] not in (0x20, 0x28, 0x29):
                raise _fail("Space expected")
    if len(stack) != 1:
        raise _fail("Unbalanced parenthesis")
    return stack[0]


def flag_list(line: bytes) -> tuple[list[bytes], bytes]:
    """STORE's flags: C{(flag ...)} or flags without parentheses (RFC 3501 §9 store-att-flags)
    -> (flags, rest).  A flag is C{\\atom} or a keyword atom (C{NIL} is a keyword here).

    @raise imap4.IllegalClientResponse: anything else.
    """
    items = parse_list(line)
    if len(items) == 1 and isinstance(items[0], list):
        items = items[0]
    return flags(items), b""


def flags(items: list[Any]) -> list[bytes]:
    """The flags of a flag list's parsed inside (L{parse_list}), each checked by L{is_flag}
    and, a system flag, against L{SYSTEM_FLAGS}; answered as Dovecot answers them
    (imap-commands-util.c client_parse_mail_flags).

    @raise imap4.IllegalClientResponse: an item that is not a flag: a nested list, or an
        atom with 8-bit octets (Dovecot's "8bit data in atom"), or with atom-specials; a
        quoted string ("Flags list contains non-atoms."); C{\\} and an atom that is not
        one of L{SYSTEM_FLAGS} ("Invalid system flag \\FOO").
    """
    for item in items:
        if isinstance(item, QuotedString):
            raise _fail("Flags list contains non-atoms.")
        if not isinstance(item, bytes) or not is_flag(item):
            if isinstance(item, bytes) and not item.isascii():
                raise _fail("8bit data in atom")
            raise _fail("Malformed flag")
        if item[:1] == b"\\" and item.upper() not in SYSTEM_FLAGS:
            raise _fail("Invalid system flag " + item.upper().decode("ascii"))
    return items


def is_flag(token: bytes) -> bool:
    """RFC 3501 §9 flag: C{\\} atom (system and extension flags) or a keyword atom; an
    ATOM-CHAR is a CHAR (%x01-7F), so 8-bit octets are not one."""
    name = token[1:] if token[:1] == b"\\" else token
    return bool(name) and name.isascii() and not any(c in ATOM_SPECIALS for c in name)


def is_tag(token: bytes) -> bool:
    """RFC 3501 §9 tag: 1*<any ASTRING-CHAR except "+">; ASTRING-CHARs are ASCII (CHAR)."""
    return (
        bool(token)
        and token.isascii()
        and not any(c in ATOM_SPECIALS and c != 0x5D or c == 0x2B for c in token)
    )


MAX_NUMBER = 4_294_967_295
"""RFC 3501 §9: C{number} and C{nz-number} are unsigned 32-bit integers."""

MAX_MODSEQ = 2**63 - 1
"""RFC 7162 §7: C{mod-sequence-value} and C{mod-sequence-valzer} are at most 2^63-1."""


def parse_sequence_set(value: bytes) -> imap4.MessageSet:
    """A sequence set (RFC 3501 §9 C{sequence-set}: C{1:4,7,9:*}) whose numbers fit in 32
    bits, its ranges sorted and merged once (Twisted's C{parseIdList} merged them again
    after each one: a set of many single numbers cost quadratic time).
    @raise ValueError: not a sequence set, or a number over L{MAX_NUMBER}."""
    ranges: list[tuple[int | None, int | None]] = []
    for part in value.split(b","):
        first, colon, second = part.partition(b":")
        low = _seq_number(first)
        high = _seq_number(second) if colon else low
        if colon and low is None and high is None:
            raise ValueError("not a sequence set")  # (C{*:*}, as Twisted refused it)
        if low is None or (high is not None and low > high):
            low, high = high, low  # low to high, C{*} last
        ranges.append((low, high))
    return imap4.MessageSet(ranges)


def _seq_number(text: bytes) -> int | None:
    """RFC 3501 §9 C{seq-number}: a non-zero number, or C{*} (C{None})."""
    if text == b"*":
        return None
    if not text.isdigit():
        raise ValueError("not a sequence set")
    number = int(text)
    if number > MAX_NUMBER:
        raise ValueError("number out of range")
    if not number:
        raise ValueError("not a sequence set")
    return number


def in_set(messages: imap4.MessageSet, value: int, last: int) -> bool:
    """Whether C{value} is in C{messages}, C{*} standing for C{last} (RFC 3501 §9 seq-set)."""
    for low, high in messages.ranges:
        low = last if low is None else low
        high = last if high is None else high
        if low > high:
            low, high = high, low
        if low <= value <= high:
            return True
    return False
