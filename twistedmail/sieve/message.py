"""The message and envelope as Sieve tests read them (RFC 5228 §2.7.2, §5.1, §5.4; RFC 5173).

L{SieveMessage} parses a delivered message lazily: header values are unfolded and decoded from
RFC 2047 before matching (RFC 5228 §2.7.2; 8-bit octets read as UTF-8, RFC 6532), address
headers are split into addresses for the C{address} test (RFC 5228 §5.1), and the body is
MIME-parsed only when a C{body} test asks for its parts (RFC 5173 §5.2, HTML parts read as
text).  L{Envelope} is the SMTP envelope of the delivery for the C{envelope} test (RFC 5228
§5.4).
"""

from __future__ import annotations

import email.header
import email.message
import email.utils
import html
import re
from collections.abc import Sequence
from email.parser import BytesParser
from email.policy import compat32

import attr


@attr.frozen
class Envelope:
    """The SMTP envelope of the delivery: reverse path ("" for <>), the final recipient, the
    original recipient (RFC 3461 ORCPT or before alias expansion; "" = same)."""

    sender: str
    recipient: str
    original_recipient: str = ""
    auth: str = ""
    """The authenticated submitter (RFC 4954 AUTH=), for envelope "auth"; "" if none."""


_ADDR_SPEC = re.compile(r"[^@\s]+@[^@\s]+\Z")


def _unfold(value: str) -> str:
    return re.sub(r"\r?\n(?=[ \t])", "", value).replace("\r", "").replace("\n", "")


def _decode_2047(raw: str) -> str:
    """RFC 2047 decoding of one (unfolded) header value; undecodable words stay as written;
    8-bit bytes are read as UTF-8 (RFC 6532)."""
    try:
        text = raw.encode("ascii", "surrogateescape").decode("utf-8", "replace")
    except UnicodeError:
        text = raw
    if "=?" not in text:
        return text
    try:
        return str(email.header.make_header(email.header.decode_header(text)))
    except (email.errors.HeaderParseError, LookupError, UnicodeError, ValueError):
        return text


class SieveMessage:
    """The parsed message, read lazily: header values by name (decoded once), body parts
    (MIME-parsed only when a body test asks)."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        end = len(data)
        for sep in (b"\r\n\r\n", b"\n\n"):
            i = data.find(sep)
            if i >= 0:
                end = min(end, i + len(sep))
        header = BytesParser(policy=compat32).parsebytes(data[:end], headersonly=True)
        self._headers: dict[str, list[str]] = {}
        for name, value in header.raw_items():
            self._headers.setdefault(name.lower(), []).append(value)
        self._decoded: dict[str, list[str]] = {}
        self._addresses: dict[str, list[list[tuple[str, bool]]]] = {}
        self._msg: email.message.Message | None = None

    @property
    def msg(self) -> email.message.Message:
        if self._msg is None:
            self._msg = BytesParser(policy=compat32).parsebytes(self.data)
        return self._msg

    def raw_headers(self, name: str) -> list[str]:
        return self._headers.get(name.lower(), [])

    def headers(self, name: str) -> list[str]:
        key = name.lower()
        values = self._decoded.get(key)
        if values is None:
            values = [_decode_2047(_unfold(v)).strip() for v in self.raw_headers(key)]
            self._decoded[key] = values
        return values

    def addresses(self, name: str) -> list[list[tuple[str, bool]]]:
        """(address, valid) for each occurrence of header C{name} (a list per occurrence, for
        :index).  A value that is not an address list (C{undisclosed-recipients:;}) is one
        invalid address, its text, as Pigeonhole reads it."""
        key = name.lower()
        values = self._addresses.get(key)
        if values is None:
            values = []
            for raw in self.headers(key):
                found = [a for _, a in email.utils.getaddresses([raw]) if a]
                if found and all(_ADDR_SPEC.match(a) for a in found):
                    values.append([(a, True) for a in found])
                elif raw:
                    values.append([(raw, False)])
                else:
                    values.append([])
            self._addresses[key] = values
        return values

    def raw_body(self) -> str:
        data = self.data
        for sep in (b"\r\n\r\n", b"\n\n"):
            i = data.find(sep)
            if i >= 0:
                return data[i + len(sep) :].decode("utf-8", "replace")
        return ""

    def parts(self, types: Sequence[str]) -> list[str]:
        """Decoded content of the MIME parts whose type matches C{types} (RFC 5173 §5.2)."""
        out = []
        for part in self.msg.walk():
            ctype = part.get_content_type().lower()
            maintype = ctype.split("/")[0]
            if not any(t == "" or t.lower() in (ctype, maintype) for t in types):
                continue
            if part.is_multipart():
                if part.preamble:
                    out.append(part.preamble)
                continue
            out.append(_part_text(part))
        return out

    def text_parts(self) -> list[str]:
        out = []
        for part in self.msg.walk():
            if part.is_multipart() or part.get_content_maintype() != "text":
                continue
            text = _part_text(part)
            if part.get_content_subtype() == "html":
                text = _html_text(text)
            out.append(text)
        return out


_HTML_HIDDEN = re.compile(r"<(style|script)\b.*?</\1\s*>|<!--.*?-->", re.IGNORECASE | re.DOTALL)
_HTML_BLOCK = re.compile(r"</?(p|br|div|tr|li|h[1-6]|table|blockquote|pre)\b[^>]*>", re.IGNORECASE)
_HTML_TAG = re.compile(r"<[^>]*>")


def _html_text(text: str) -> str:
    """The text of an HTML part for body :text (RFC 5173 §5.2 leaves it to the server):
    no style/script/comments, block elements as line breaks, other tags dropped, entities
    decoded, blank runs collapsed, like Pigeonhole's HTML-to-text."""
    text = _HTML_HIDDEN.sub("", text)
    text = _HTML_BLOCK.sub("\n", text)
    text = html.unescape(_HTML_TAG.sub("", text))
    lines = (" ".join(line.split(" ")).strip(" \t") for line in text.splitlines())
    return "\r\n".join(re.sub(r"[ \t]+", " ", line) for line in lines if line)


def _part_text(part: email.message.Message) -> str:
    payload = part.get_payload(decode=True)
    if not isinstance(payload, bytes):
        return ""
    charset = part.get_content_charset() or "us-ascii"
    try:
        return payload.decode(charset, "replace")
    except LookupError:
        return payload.decode("utf-8", "replace")
