"""The control socket: commands the CLI sends to the running server (Twisted AMP over a
UNIX socket, C{DATA_DIR/control}, mode 0600; DESIGN §3).

Server side: L{control_factory} answers L{Flush} with the callable it is given (the queue
runner's C{flush}).  Client side: L{flush} speaks the same AMP boxes over a blocking
socket, so the synchronous CLI needs no reactor; with no server listening it raises
L{NoServer}.

L{Connections} (issue 9) answers the factory's C{connection_counts} (set by the server:
open connections per listener, logged-in sessions); client side L{connections}.  A control
connection silent for L{IDLE_TIMEOUT} seconds is closed (once the server set C{clock}).
"""

from __future__ import annotations

import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin

TIMEOUT = 30.0  # seconds the CLI waits for an answer
IDLE_TIMEOUT = 60  # seconds a control connection may stay silent
MAX_UNIX_PATH = 100  # sun_path holds 108 octets on Linux, 104 on BSDs


def socket_address(path: Path) -> str:
    """A name for the UNIX socket at C{path} short enough for C{sun_path}.

    A long data dir (deep test directories) gives a path over the ~108-octet limit; then
    the directory is opened and the socket named through C{/proc/self/fd/N/} (Linux).  The
    directory descriptor stays open for the life of the process.
    """
    text = str(path)
    if len(text.encode()) <= MAX_UNIX_PATH or not Path("/proc/self/fd").is_dir():
        return text
    fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
    return f"/proc/self/fd/{fd}/{path.name}"


class Flush(amp.Command):
    """Make every queued message due now; answer how many are queued."""

    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"queued", amp.Integer())]


class Connections(amp.Command):
    """Answer the open connections per listener and the logged-in sessions, as JSON
    (C{{"imap": 2, ..., "imap_sessions": 1, "control": 1}})."""

    arguments: list[tuple[bytes, amp.Argument]] = []
    response = [(b"counts", amp.Unicode())]


class NoServer(Exception):
    """Nothing listens on the control socket: the server is not running."""


class ControlProtocol(TimeoutMixin, amp.AMP):
    """One CLI connection to the server."""

    def __init__(self, flush: Callable[[], Awaitable[int]]) -> None:
        super().__init__()
        self._flush = flush

    def connectionMade(self) -> None:
        super().connectionMade()
        self.factory.open_connections = getattr(self.factory, "open_connections", 0) + 1
        clock = getattr(self.factory, "clock", None)  # set by the server: the reactor
        if clock is not None:
            self.callLater = clock.callLater
            self.setTimeout(IDLE_TIMEOUT)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def connectionLost(self, reason: Any) -> None:
        self.setTimeout(None)
        self.factory.open_connections -= 1
        super().connectionLost(reason)

    @Connections.responder
    def connections(self) -> dict[str, str]:
        counts = getattr(self.factory, "connection_counts", dict)()
        counts["control"] = self.factory.open_connections
        return {"counts": json.dumps(counts, sort_keys=True)}

    @Flush.responder
    def flush(self) -> defer.Deferred[dict[str, int]]:
        async def run() -> dict[str, int]:
            return {"queued": await self._flush()}

        return defer.Deferred.fromCoroutine(run())


def control_factory(flush: Callable[[], Awaitable[int]]) -> Factory:
    """The factory for the control socket's listener (C{UNIXServerEndpoint}, mode 0600)."""
    factory = Factory.forProtocol(lambda: ControlProtocol(flush))
    factory.noisy = False
    return factory


def _box(values: dict[bytes, bytes]) -> bytes:
    return amp.AmpBox(values).serialize()


def _read_box(sock: socket.socket) -> dict[bytes, bytes]:
    data = b""
    box: dict[bytes, bytes] = {}

    def take(n: int) -> bytes:
        nonlocal data
        while len(data) < n:
            chunk = sock.recv(65536)
            if not chunk:
                raise NoServer("the server closed the control connection")
            data += chunk
        out, data = data[:n], data[n:]
        return out

    while True:
        (klen,) = struct.unpack("!H", take(2))
        if klen == 0:
            return box
        key = take(klen)
        (vlen,) = struct.unpack("!H", take(2))
        box[key] = take(vlen)


def call(path: Path, command: bytes, arguments: dict[bytes, bytes] | None = None) -> Any:
    """Send one AMP command over the UNIX socket at C{path}; return the answer box.

    @raise NoServer: no socket, or nobody listening on it.
    @raise RuntimeError: the server answered with an error.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(TIMEOUT)
    try:
        try:
            sock.connect(socket_address(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NoServer("no running server") from None
        sock.sendall(_box({b"_command": command, b"_ask": b"1", **(arguments or {})}))
        answer = _read_box(sock)
    finally:
        sock.close()
    if b"_error" in answer:
        raise RuntimeError(answer.get(b"_error_description", b"error").decode("utf-8", "replace"))
    return answer


def flush(path: Path) -> int:
    """Ask the server at C{path} to try every queued message now.

    @return: how many messages are queued.
    @raise NoServer: the server is not running.
    """
    return int(call(path, b"Flush")[b"queued"])


def connections(path: Path) -> dict[str, int]:
    """Ask the server at C{path} how many connections each listener has open (and
    C{imap_sessions}: logged-in IMAP sessions; C{control}: control connections, this one
    included).  @raise NoServer: the server is not running."""
    counts = json.loads(call(path, b"Connections")[b"counts"].decode("utf-8"))
    return {str(k): int(v) for k, v in counts.items()}
