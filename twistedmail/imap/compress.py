"""IMAP COMPRESS=DEFLATE (RFC 4978): raw DEFLATE (RFC 1951, no zlib header) in both
directions of one connection, between the IMAP protocol and the transport (TCP, or TLS on
993 and after STARTTLS, so compression happens before encryption, RFC 4978 §6).

Output: L{DeflateTransport} wraps the connection's transport; every C{write} is compressed
and ended with C{Z_SYNC_FLUSH} (RFC 4978 §4: a response must not sit in the compressor, or
the client waits for it forever).

Input: L{Inflater} keeps the compressed bytes and inflates them at most L{INFLATE_CHUNK}
octets at a time, and only while the protocol is not paused, so a decompression bomb
(RFC 4978 §7) meets the same line and literal limits as plain input and never more than one
chunk of inflated data waits in memory beyond them.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable
from typing import Any

INFLATE_CHUNK = 16384
"""Octets inflated per step before the protocol sees them."""

DEFLATE_LEVEL = 6


class CompressionError(Exception):
    """The client's DEFLATE stream is corrupt or ended (answered with BYE and a close)."""


class DeflateTransport:
    """A transport proxy that compresses what the protocol writes (RFC 4978 §3: everything
    after the tagged OK of COMPRESS).  Every other attribute is the wrapped transport's."""

    def __init__(self, transport: Any, level: int = DEFLATE_LEVEL) -> None:
        self.wrapped = transport
        self._deflater = zlib.compressobj(level, zlib.DEFLATED, -15)

    def write(self, data: bytes) -> None:
        if not data:
            return
        out = self._deflater.compress(data) + self._deflater.flush(zlib.Z_SYNC_FLUSH)
        self.wrapped.write(out)

    def writeSequence(self, data: Any) -> None:
        self.write(b"".join(data))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.wrapped, name)


class Inflater:
    """The client-to-server half: raw DEFLATE in, bounded plain chunks out."""

    def __init__(self) -> None:
        self._decompressor = zlib.decompressobj(-15)
        self._compressed = b""
        self._inflating = False

    @property
    def pending(self) -> int:
        """Compressed octets not inflated yet."""
        return len(self._compressed)

    def queue(self, data: bytes) -> None:
        """Keep compressed C{data} for the next L{feed}."""
        self._compressed += data

    def feed(
        self, data: bytes, deliver: Callable[[bytes], object], paused: Callable[[], bool]
    ) -> None:
        """Add compressed C{data}; hand inflated chunks (at most L{INFLATE_CHUNK} octets each)
        to C{deliver} until nothing is left or C{paused()} says stop.  Reentrant calls (from
        C{deliver}) only queue their data: the outer call goes on.

        @raise CompressionError: corrupt DEFLATE data, or the stream's final block.
        """
        self._compressed += data
        if self._inflating:
            return
        self._inflating = True
        try:
            while self._compressed and not paused():
                try:
                    chunk = self._decompressor.decompress(self._compressed, INFLATE_CHUNK)
                except zlib.error as e:
                    self._compressed = b""
                    raise CompressionError(str(e)) from None
                self._compressed = self._decompressor.unconsumed_tail
                if self._decompressor.eof:
                    self._compressed = b""
                    raise CompressionError("end of the DEFLATE stream")
                if chunk:
                    deliver(chunk)
                elif self._compressed:
                    raise CompressionError("no progress")  # cannot happen with zlib
        finally:
            self._inflating = False
