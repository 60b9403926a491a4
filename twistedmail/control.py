"""The control socket: commands the CLI sends to the running server (Twisted AMP over a
UNIX socket, C{DATA_DIR/control}, mode 0600; DESIGN §3).

Server side: L{control_factory} answers L{Flush} with the callable it is given (the queue
runner's C{flush}), and L{ThrottleList} / L{ThrottleUnblock} from the failed-login throttle
it is given.  Client side: L{flush}, L{throttle_list} and L{throttle_unblock} speak the same
AMP boxes over a blocking socket, so the synchronous CLI needs no reactor; with no server
listening they raise L{NoServer}.

L{AuthFlush} (issue 10) forgets a user's cached logins (L{twistedmail.auth.AuthCache}) when
the CLI changes their password or deletes them; client side L{auth_flush}.

L{Connections} (issue 9) answers the factory's C{connection_counts} (given by the server:
open connections per listener, logged-in sessions); client side L{connections}.
L{Status} (issue 13) answers the factory's C{status} (given by the server) for C{twistedmail
status}; client side L{status}.  A control connection silent for L{IDLE_TIMEOUT} seconds
is closed (when the factory has a C{clock}).
"""

from __future__ import annotations

import inspect
import json
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from twisted.internet import defer
from twisted.internet.interfaces import IReactorTime
from twisted.internet.protocol import Factory
from twisted.logger import Logger
from twisted.protocols import amp
from twisted.protocols.policies import TimeoutMixin
from twisted.python.failure import Failure

from twistedmail.throttle import Block, LoginThrottle

log = Logger(namespace="twistedmail.control")

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

    arguments = []
    response = [(b"queued", amp.Integer())]


class ThrottleList(amp.Command):
    """The login throttle's blocks (L{LoginThrottle.blocks}) from index C{start} on, as many
    as fit in one AMP value: C{blocks} is a JSON list of C{[kind, ip, account,
    seconds_left, failures]}; C{next} is the index to ask for next, 0 when done."""

    arguments = [(b"start", amp.Integer())]
    response = [(b"blocks", amp.Unicode()), (b"next", amp.Integer())]


class ThrottleUnblock(amp.Command):
    """Lift the blocks of an IP or account (L{LoginThrottle.unblock}); answer how many
    blocks were lifted and failed logins forgotten."""

    arguments = [(b"target", amp.Unicode())]
    response = [(b"lifted", amp.Integer()), (b"forgotten", amp.Integer())]


THROTTLE_PAGE = 48_000  # octets of JSON per ThrottleList answer (an AMP value is < 64 KiB)


class AuthFlush(amp.Command):
    """Forget the cached logins of C{user} (an address); answer how many were forgotten."""

    arguments = [(b"user", amp.Unicode())]
    response = [(b"flushed", amp.Integer())]


class Connections(amp.Command):
    """Answer the open connections per listener and the logged-in sessions, as JSON
    (C{{"imap": 2, ..., "imap_sessions": 1, "control": 1}})."""

    arguments = []
    response = [(b"counts", amp.Unicode())]


class _Chunked(amp.Argument):
    """A string of any length, as UTF-8 split over the keys C{name}, C{name.2}, C{name.3}
    ... (an AMP value holds less than 64 KiB)."""

    def toBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        data = objects.pop(name.decode("ascii")).encode("utf-8")
        for i in range(max(1, -(-len(data) // CHUNK))):
            key = name if i == 0 else b"%s.%d" % (name, i + 1)
            strings[key] = data[i * CHUNK : (i + 1) * CHUNK]

    def fromBox(self, name: bytes, strings: Any, objects: Any, proto: Any) -> None:
        objects[name.decode("ascii")] = _joined(strings, name).decode("utf-8")


CHUNK = 60_000


def _joined(box: dict[bytes, bytes], name: bytes) -> bytes:
    parts, i = [box[name]], 2
    while b"%s.%d" % (name, i) in box:
        parts.append(box[b"%s.%d" % (name, i)])
        i += 1
    return b"".join(parts)


class Status(amp.Command):
    """The server's status (issue 13: C{twistedmail status}), as JSON; see
    L{twistedmail.service.MailServer.status} for the fields."""

    arguments = []
    response = [(b"status", _Chunked())]


class NoServer(Exception):
    """Nothing listens on the control socket: the server is not running."""


async def _value(value: Any) -> Any:
    """C{value}, awaited when it is awaitable (a server with workers gathers from them)."""
    return await value if inspect.isawaitable(value) else value


class ControlProtocol(TimeoutMixin, amp.AMP):
    """One CLI connection to the server."""

    def __init__(
        self,
        flush: Callable[[], Awaitable[int]],
        throttle: LoginThrottle | None = None,
        flush_logins: Callable[[str], Any] | None = None,
    ) -> None:
        super().__init__()
        self._flush = flush
        self._throttle = throttle
        self._flush_logins = flush_logins
        self._clock: Any = None  # the factory's reactor, once connected

    def connectionMade(self) -> None:
        super().connectionMade()
        if self.factory is None:  # built by hand (tests), not by control_factory
            return
        self.factory.open_connections = getattr(self.factory, "open_connections", 0) + 1
        self._clock = getattr(self.factory, "clock", None)  # set by the server: the reactor
        if self._clock is not None:
            self.setTimeout(IDLE_TIMEOUT)

    def callLater(self, period: float, func: Callable[[], object]) -> Any:
        """The idle timer (TimeoutMixin) runs on the server's reactor."""
        assert self._clock is not None  # the timer is only set when there is a clock
        return self._clock.callLater(period, func)

    def dataReceived(self, data: bytes) -> None:
        self.resetTimeout()
        super().dataReceived(data)

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.setTimeout(None)
        if self.factory is not None:
            self.factory.open_connections -= 1
        super().connectionLost(reason)

    @Connections.responder
    def connections(self) -> defer.Deferred[dict[str, str]]:
        async def run() -> dict[str, str]:
            counts = await _value(getattr(self.factory, "connection_counts", dict)())
            counts["control"] = self.factory.open_connections
            return {"counts": json.dumps(counts, sort_keys=True)}

        return defer.Deferred.fromCoroutine(run())

    @AuthFlush.responder
    def auth_flush(self, user: str) -> defer.Deferred[dict[str, int]]:
        async def run() -> dict[str, int]:
            flushed = 0
            if self._flush_logins is not None:
                flushed = await _value(self._flush_logins(user))
            log.info(
                "login cache: forgot {count} cached login(s) of {user}", count=flushed, user=user
            )
            return {"flushed": flushed}

        return defer.Deferred.fromCoroutine(run())

    @Status.responder
    def status(self) -> defer.Deferred[dict[str, str]]:
        async def run() -> dict[str, str]:
            status = await self.factory.status()
            status["connections"]["control"] = self.factory.open_connections
            return {"status": json.dumps(status, sort_keys=True)}

        return defer.Deferred.fromCoroutine(run())

    @Flush.responder
    def flush(self) -> defer.Deferred[dict[str, int]]:
        async def run() -> dict[str, int]:
            return {"queued": await self._flush()}

        return defer.Deferred.fromCoroutine(run())

    @ThrottleList.responder
    def throttle_list(self, start: int) -> dict[str, Any]:
        blocks = self._throttle.blocks() if self._throttle is not None else []
        page: list[str] = []
        size = 2
        index = max(start, 0)
        while index < len(blocks):
            b = blocks[index]
            item = json.dumps([b.kind, b.ip, b.account, b.seconds_left, b.failures])
            if page and size + len(item.encode()) + 1 > THROTTLE_PAGE:
                break
            page.append(item)
            size += len(item.encode()) + 1
            index += 1
        return {"blocks": "[" + ",".join(page) + "]", "next": index if index < len(blocks) else 0}

    @ThrottleUnblock.responder
    def throttle_unblock(self, target: str) -> dict[str, int]:
        if self._throttle is None:
            return {"lifted": 0, "forgotten": 0}
        lifted, forgotten = self._throttle.unblock(target)
        return {"lifted": lifted, "forgotten": forgotten}


class ControlFactory(Factory):
    """The control socket's listener (C{UNIXServerEndpoint}, mode 0600); see
    L{control_factory}."""

    noisy = False

    def __init__(
        self,
        flush: Callable[[], Awaitable[int]],
        throttle: LoginThrottle | None = None,
        flush_logins: Callable[[str], Any] | None = None,
        *,
        connection_counts: Callable[[], Any] = dict,
        status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
        clock: IReactorTime | None = None,
    ) -> None:
        self.flush = flush
        self.throttle = throttle
        self.flush_logins = flush_logins
        self.connection_counts = connection_counts
        self.status = status
        self.clock = clock
        self.open_connections = 0

    def buildProtocol(self, addr: Any) -> ControlProtocol:
        protocol = ControlProtocol(self.flush, self.throttle, self.flush_logins)
        protocol.factory = self
        return protocol


def control_factory(
    flush: Callable[[], Awaitable[int]],
    throttle: LoginThrottle | None = None,
    flush_logins: Callable[[str], Any] | None = None,
    *,
    connection_counts: Callable[[], Any] = dict,
    status: Callable[[], Awaitable[dict[str, Any]]] | None = None,
    clock: IReactorTime | None = None,
) -> ControlFactory:
    """The factory for the control socket's listener.

    @param flush: runs the queue now (L{Flush}), returns how many messages it tried.
    @param throttle: the server's failed-login throttle, for C{twistedmail throttle}.
    @param flush_logins: forgets a user's cached logins and says how many (the server's
        L{twistedmail.auth.AuthCache.flush}), for the CLI's password changes and deletions.
    @param connection_counts: open connections per listener, for L{Connections}.
    @param status: the server's status, for L{Status}.
    @param clock: the reactor, for the L{IDLE_TIMEOUT}; C{None}: no timeout.
    """
    return ControlFactory(
        flush,
        throttle,
        flush_logins,
        connection_counts=connection_counts,
        status=status,
        clock=clock,
    )


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


def throttle_list(path: Path) -> list[Block]:
    """The blocks of the failed-login throttle of the server at C{path}, as it lists them.

    @raise NoServer: the server is not running.
    """
    blocks: list[Block] = []
    start = 0
    while True:
        answer = call(path, b"ThrottleList", {b"start": str(start).encode()})
        for kind, ip, account, seconds_left, failures in json.loads(answer[b"blocks"]):
            blocks.append(Block(kind, ip, account, float(seconds_left), int(failures)))
        start = int(answer[b"next"])
        if start == 0:
            return blocks


def throttle_unblock(path: Path, target: str) -> tuple[int, int]:
    """Lift the blocks of C{target} (an IP or an address) in the server at C{path}.

    @return: (blocks lifted, failed logins forgotten).
    @raise NoServer: the server is not running.
    """
    answer = call(path, b"ThrottleUnblock", {b"target": target.encode("utf-8")})
    return int(answer[b"lifted"]), int(answer[b"forgotten"])


def connections(path: Path) -> dict[str, int]:
    """Ask the server at C{path} how many connections each listener has open (and
    C{imap_sessions}: logged-in IMAP sessions; C{control}: control connections, this one
    included).  @raise NoServer: the server is not running."""
    counts = json.loads(call(path, b"Connections")[b"counts"].decode("utf-8"))
    return {str(k): int(v) for k, v in counts.items()}


def auth_flush(path: Path, user: str) -> int:
    """Ask the server at C{path} to forget the cached logins of C{user} (an address).

    @return: how many cached logins were forgotten.
    @raise NoServer: the server is not running.
    """
    return int(call(path, b"AuthFlush", {b"user": user.encode("utf-8")})[b"flushed"])


def status(path: Path) -> dict[str, Any]:
    """The running server's status (L{Status}).  @raise NoServer: the server is not running."""
    result: dict[str, Any] = json.loads(_joined(call(path, b"Status"), b"status").decode("utf-8"))
    return result
