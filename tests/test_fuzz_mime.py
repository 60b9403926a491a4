"""Fuzzing (hypothesis) of the MIME walker behind BODYSTRUCTURE, ENVELOPE and BODY[n] sections
(twistedmail.imap.message): random and mutated messages never raise, and the structures
always encode as IMAP (issue 5)."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twistedmail.imap.message import (
    bodystructure,
    encode_sexp,
    envelope,
    header_end,
    parse_entity,
    resolve_part,
    split_message,
)

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

SEED = (
    b'From: A <a@example.test>\r\nTo: b@example.test, "C, D" <c@example.test>\r\n'
    b"Subject: =?utf-8?q?caf=C3=A9?=\r\nMIME-Version: 1.0\r\n"
    b'Content-Type: multipart/mixed; boundary="XYZ"\r\n\r\n'
    b"preamble\r\n--XYZ\r\nContent-Type: text/plain; charset=utf-8;\r\n\r\nhello\r\n"
    b"--XYZ\r\nContent-Type: message/rfc822\r\n\r\n"
    b"Subject: inner\r\nContent-Type: multipart/alternative; boundary=in\r\n\r\n"
    b"--in\r\nContent-Type: text/html\r\n\r\n<p>x</p>\r\n--in--\r\n"
    b"--XYZ\r\nContent-Type: application/octet-stream; name*=utf-8''%E2%82%AC.bin\r\n"
    b'Content-Disposition: attachment; filename="a.bin"\r\n'
    b"Content-Transfer-Encoding: base64\r\n\r\nAAAA\r\n--XYZ--\r\nepilogue\r\n"
)

TOKENS = [
    b"\r\n",
    b"\n",
    b"\r",
    b"--XYZ",
    b"--XYZ--",
    b"--",
    b";",
    b"=",
    b'"',
    b"Content-Type: ",
    b"multipart/mixed; boundary=XYZ",
    b'multipart/digest; boundary=""',
    b"message/rfc822",
    b"text/plain; charset=",
    b"boundary=",
    b"\x00",
    b"\xff\xfe",
    b"=?utf-8?b?",
    b"?=",
    b"<",
    b">",
    b"@",
    b",",
    b"(",
    b")",
    b"\\",
    b" ",
    b"\t",
]


def check(raw: bytes) -> None:
    header, _ = split_message(raw)
    entity = parse_entity(raw)
    for extended in (False, True):
        encode_sexp(bodystructure(entity, extended))
    encode_sexp(envelope(header))
    for numbers in ([1], [1, 1], [2], [2, 1], [3], [1, 2, 3], [99]):
        resolve_part(entity, numbers)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(raw: bytes) -> None:
    """Any bytes as a message: parsing, BODYSTRUCTURE, ENVELOPE and part lookup raise nothing."""
    check(raw)


@FUZZ
@given(st.lists(st.sampled_from(TOKENS) | st.binary(max_size=8), max_size=200))
def test_random_mime_tokens(tokens: list[bytes]) -> None:
    """Messages made of MIME tokens in random order parse and render without an exception."""
    check(b"".join(tokens))


@FUZZ
@given(
    st.lists(
        st.tuples(
            st.integers(0, len(SEED)), st.integers(0, 40), st.sampled_from(TOKENS) | st.binary()
        ),
        max_size=8,
    )
)
def test_mutated_message(mutations: list[tuple[int, int, bytes]]) -> None:
    """A MIME message with random cuts and inserts parses and renders without an exception."""
    raw = SEED
    for at, cut, insert in mutations:
        raw = raw[:at] + insert + raw[at + cut :]
    check(raw)


def test_deep_nesting_is_bounded() -> None:
    """5000 nested message/rfc822 parts or 3000 nested multiparts parse within bounds (no
    recursion error)."""
    raw = b"Content-Type: message/rfc822\r\n\r\n" * 5000 + b"x"
    check(raw)
    nested = b"".join(
        b'Content-Type: multipart/mixed; boundary="b%d"\r\n\r\n--b%d\r\n' % (i, i)
        for i in range(3000)
    )
    check(nested)


def _split_reference(raw: bytes) -> tuple[bytes, bytes]:
    """split_message as it was before header_end: both blank-line kinds searched for in
    the whole message."""
    if raw.startswith(b"\r\n"):
        return b"\r\n", raw[2:]
    if raw.startswith(b"\n"):
        return b"\n", raw[1:]
    end = raw.find(b"\r\n\r\n")
    lf = raw.find(b"\n\n")
    if end >= 0 and (lf < 0 or end <= lf + 1):
        return raw[: end + 4], raw[end + 4 :]
    if lf >= 0:
        return raw[: lf + 2], raw[lf + 2 :]
    return raw, b""


@given(st.lists(st.sampled_from([b"\r", b"\n", b"a", b":", b" "]), max_size=40).map(b"".join))
def test_split_message_where_the_blank_line_is(raw: bytes) -> None:
    """The header ends at the first blank line, CRLF or bare LF, whichever comes first (the
    bare-LF one is looked for only up to the CRLF one): the same split as searching the
    whole message for both."""
    assert split_message(raw) == _split_reference(raw)
    assert header_end(raw) == len(_split_reference(raw)[0])
