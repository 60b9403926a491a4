"""Comparators and match types of Sieve tests (RFC 4790 §9, RFC 5228 §2.7, RFC 5231, :regex).

Comparators i;octet, i;ascii-casemap, i;ascii-numeric (RFC 4790 §9) as L{order_key}; the
relational operators of C{:count}/C{:value} (RFC 5231 §4-5) as L{relational}; C{:matches}
patterns (RFC 5228 §2.7.1, match variables RFC 5229 §3.2) and C{:regex} keys
(draft-ietf-sieve-regex) compiled for RE2 (C{google-re2}), a linear-time engine: no
catastrophic backtracking whatever the header or pattern; both work on UTF-8 octets ('?' and
'.' are one octet), as the comparators of RFC 4790 §9 and Pigeonhole's POSIX regex do.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Protocol

from twistedmail.sieve.validate import compile_regex

_ASCII_LOWER = {c: c + 32 for c in range(ord("A"), ord("Z") + 1)}
ASCII_UPPER = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}


def ascii_casemap(s: str) -> str:
    return s.translate(_ASCII_LOWER)


def _numeric(s: str) -> int | None:
    """RFC 4790 §9.1: the leading digits, or None (positive infinity) when there are none."""
    m = re.match(r"[0-9]+", s)
    return int(m.group()) if m else None


class _OrderKey(Protocol):
    """What a comparator orders by: int or L{_Infinity} (i;ascii-numeric), else str."""

    def __lt__(self, other: Any, /) -> bool: ...
    def __le__(self, other: Any, /) -> bool: ...
    def __gt__(self, other: Any, /) -> bool: ...
    def __ge__(self, other: Any, /) -> bool: ...


def relational(op: str, a: _OrderKey, b: _OrderKey) -> bool:
    op = op.lower()
    if op == "eq":
        return a == b
    if op == "ne":
        return a != b
    if op == "gt":
        return a > b
    if op == "ge":
        return a >= b
    if op == "lt":
        return a < b
    return a <= b


class _Infinity:
    """i;ascii-numeric's value of a string without leading digits: above every number."""

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Infinity)

    def __hash__(self) -> int:
        return 0

    def __lt__(self, other: object) -> bool:
        return False

    def __le__(self, other: object) -> bool:
        return isinstance(other, _Infinity)

    def __gt__(self, other: object) -> bool:
        return not isinstance(other, _Infinity)

    def __ge__(self, other: object) -> bool:
        return True


def order_key(comparator: str, s: str) -> _OrderKey:
    if comparator == "i;ascii-numeric":
        n = _numeric(s)
        return _Infinity() if n is None else n
    if comparator == "i;ascii-casemap":
        return ascii_casemap(s)
    return s


@functools.lru_cache(maxsize=512)
def glob_pattern(pattern: str) -> Any:
    """A C{:matches} pattern as an RE2 regex over UTF-8 octets: '*' and '?' become capturing
    groups, '*' non-greedy so earlier wildcards match as little as possible (RFC 5229 §3.2).
    '?' is one octet, as the comparators of RFC 4790 §9 work on octets (Pigeonhole does the
    same: "?t?*" does not match "Été")."""
    out = [b"(?s)"]
    data = pattern.encode("utf-8", "surrogateescape")
    i = 0
    while i < len(data):
        c = data[i : i + 1]
        if c == b"\\" and i + 1 < len(data):
            out.append(re.escape(data[i + 1 : i + 2]))
            i += 2
            continue
        if c == b"*":
            out.append(b"(.*?)")
        elif c == b"?":
            out.append(b"(.)")
        else:
            out.append(re.escape(c))
        i += 1
    return compile_regex(b"".join(out), octets=True)


@functools.lru_cache(maxsize=512)
def regex_pattern(pattern: str, casemap: bool) -> Any:
    """A :regex key on UTF-8 octets ('.' is one octet), as Pigeonhole's POSIX regcomp."""
    return compile_regex(pattern.encode("utf-8", "surrogateescape"), casemap, octets=True)
