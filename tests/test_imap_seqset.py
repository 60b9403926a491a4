"""Sequence sets (RFC 3501 §9 C{sequence-set}) as twistedmail.imap.grammar.parse_sequence_set
reads them: ranges low to high with C{*} (None) last, sorted and merged."""

from __future__ import annotations

import pytest

from twistedmail.imap.grammar import parse_sequence_set


@pytest.mark.parametrize(
    ("text", "ranges"),
    [
        (b"1", [(1, 1)]),
        (b"*", [(None, None)]),
        (b"1:*", [(1, None)]),
        (b"*:4", [(4, None)]),
        (b"5:3", [(3, 5)]),
        (b"3,1,2,7", [(1, 3), (7, 7)]),
        (b"1:3,2:5,9", [(1, 5), (9, 9)]),
        (b"2:*,1", [(1, None)]),
        (b"4294967295", [(4294967295, 4294967295)]),
    ],
)
def test_ranges(text: bytes, ranges: list[tuple[int | None, int | None]]) -> None:
    """RFC 3501 §9: numbers and ranges in any order, either end first, give merged ranges."""
    assert parse_sequence_set(text).ranges == ranges


@pytest.mark.parametrize(
    "text", [b"", b"0", b"1:0", b"1,,2", b"*:*", b"a", b"1:", b":1", b"1:2:3", b"+5", b"1_0"]
)
def test_not_a_sequence_set(text: bytes) -> None:
    """RFC 3501 §9: nz-number is digits, not zero; anything else is no sequence set."""
    with pytest.raises(ValueError, match="not a sequence set"):
        parse_sequence_set(text)


def test_number_over_32_bits() -> None:
    """RFC 3501 §9: a number is an unsigned 32-bit integer."""
    with pytest.raises(ValueError, match="number out of range"):
        parse_sequence_set(b"1,4294967296")


def test_many_single_numbers() -> None:
    """A set of 10,000 single numbers (as a client sends for scattered messages) keeps
    each one that is not adjacent to another."""
    text = b",".join(b"%d" % n for n in range(1, 20000, 2))
    assert parse_sequence_set(text).ranges == [(n, n) for n in range(1, 20000, 2)]
