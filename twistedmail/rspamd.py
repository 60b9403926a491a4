"""The rspamd client: spam verdicts for port-25 mail and Bayes learning from IMAP moves.

rspamd's HTTP protocol (https://rspamd.com/doc/developers/protocol.html): the message is
POSTed to the normal worker's C{/checkv2} with the envelope as request headers (C{From}, one
C{Rcpt} per recipient, C{IP}, C{Helo}, C{Hostname}, C{Queue-Id}, C{User}); the JSON reply
names an C{action} (C{reject}, C{soft reject}, C{greylist}, C{rewrite subject}, C{add header},
C{no action}), a C{score}, the C{symbols}, and a C{milter} block of header changes
(C{add_headers}, C{remove_headers}).  Learning goes to the controller worker's
C{/learnspam} and C{/learnham} (with C{Deliver-To}, the user whose Bayes tokens it is, for
per-user statistics).

A filter that is down, slow (over C{timeout}) or answers garbage never refuses mail: the
check returns C{None}, the failure is logged and counted (L{Rspamd.failures}), and the
caller delivers the message untouched.  Learning is fire and forget: its outcome is logged.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from io import BytesIO
from typing import Any

import attrs
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.web.client import Agent, FileBodyProducer, readBody
from twisted.web.http_headers import Headers

log = Logger(namespace="twistedmail.rspamd")

ACTIONS = (
    "reject",
    "soft reject",
    "greylist",
    "rewrite subject",
    "add header",
    "no action",
)
"""rspamd's actions, most severe first."""

JUNK_ACTIONS = ("add header", "rewrite subject")
"""Actions that file the message into the user's Junk folder."""

TEMPORARY_ACTIONS = ("soft reject", "greylist")
"""Actions answered C{451 4.7.1}: the client tries again later."""


class RspamdError(Exception):
    """rspamd did not answer a usable verdict (connection, timeout, HTTP status, JSON)."""


@attrs.frozen
class Verdict:
    """rspamd's answer to C{/checkv2}.

    @ivar action: one of L{ACTIONS}.
    @ivar score: the message's score; C{required_score}: the score of the C{reject} action.
    @ivar symbols: (name, score) of every symbol that matched, by name.
    @ivar add_headers: (name, value) header fields to add (the C{milter} block).
    @ivar remove_headers: header field names to remove first (the C{milter} block).
    @ivar subject: the new Subject for C{rewrite subject}, else C{None}.
    """

    action: str
    score: float
    required_score: float
    symbols: tuple[tuple[str, float], ...] = ()
    add_headers: tuple[tuple[str, str], ...] = ()
    remove_headers: tuple[str, ...] = ()
    subject: str | None = None

    @property
    def junk(self) -> bool:
        """Whether the message goes to the Junk folder."""
        return self.action in JUNK_ACTIONS


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RspamdError(f"{what} is not a number")
    return float(value)


def _header_value(value: object) -> str:
    """A milter C{add_headers} value: a string, C{{"value": ..., "order": n}}, or a list
    of those (one field each: the first is taken)."""
    if isinstance(value, list) and value:
        value = value[0]
    if isinstance(value, dict):
        value = value.get("value")
    if not isinstance(value, str):
        raise RspamdError("milter add_headers value is not a string")
    return value


def parse_verdict(body: bytes) -> Verdict:
    """Parse a C{/checkv2} reply.

    @raise RspamdError: not JSON, not an object, or no known action / numeric score.
    """
    try:
        data: Any = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise RspamdError("reply is not JSON") from None
    if not isinstance(data, dict):
        raise RspamdError("reply is not a JSON object")
    action = data.get("action")
    if action not in ACTIONS:
        raise RspamdError(f"unknown action {action!r}")
    symbols: list[tuple[str, float]] = []
    raw_symbols = data.get("symbols") or {}
    if isinstance(raw_symbols, dict):
        for name, symbol in sorted(raw_symbols.items()):
            if isinstance(symbol, dict) and isinstance(symbol.get("score", 0), int | float):
                symbols.append((str(name), float(symbol.get("score", 0))))
    add: list[tuple[str, str]] = []
    remove: list[str] = []
    milter = data.get("milter") or {}
    if isinstance(milter, dict):
        added = milter.get("add_headers") or {}
        if isinstance(added, dict):
            for name, value in added.items():
                add.append((str(name), _header_value(value)))
        removed = milter.get("remove_headers") or {}
        if isinstance(removed, dict):
            remove.extend(str(name) for name in removed)
    subject = data.get("subject")
    return Verdict(
        action=action,
        score=_number(data.get("score"), "score"),
        required_score=_number(data.get("required_score", 0), "required_score"),
        symbols=tuple(symbols),
        add_headers=tuple(add),
        remove_headers=tuple(remove),
        subject=subject if isinstance(subject, str) and action == "rewrite subject" else None,
    )


def _clean(value: str) -> str:
    """A header value safe on one line: CR, LF and other controls become spaces."""
    return "".join(c if c >= " " and c != "\x7f" else " " for c in value)


def spamd_result(verdict: Verdict) -> str:
    """The C{X-Spamd-Result} value rspamd's milter_headers module writes:
    C{default: True [12.50 / 15.00]; SYMBOL(1.00); ...}."""
    spam = "True" if verdict.action != "no action" else "False"
    parts = [f"default: {spam} [{verdict.score:.2f} / {verdict.required_score:.2f}]"]
    parts += [f"{name}({score:.2f})" for name, score in verdict.symbols]
    return ";\r\n\t".join(parts)


def apply_headers(message: bytes, verdict: Verdict) -> bytes:
    """C{message} with rspamd's header changes: the C{remove_headers} fields removed, the
    C{add_headers} fields added on top, the Subject rewritten for C{rewrite subject}, and
    for a Junk verdict C{X-Spam: Yes} and C{X-Spamd-Result} unless rspamd gave them.
    Only the header section is touched; the body stays byte for byte."""
    end = message.find(b"\r\n\r\n")
    header, body = (message, b"") if end < 0 else (message[: end + 2], message[end + 2 :])
    remove = {name.lower() for name in verdict.remove_headers}
    if verdict.subject is not None:
        remove.add("subject")
    added = list(verdict.add_headers)
    if verdict.junk:
        names = {name.lower() for name, _ in added}
        if "x-spam" not in names:
            added.append(("X-Spam", "Yes"))
        if "x-spamd-result" not in names:
            added.append(("X-Spamd-Result", spamd_result(verdict)))
    remove |= {name.lower() for name, _ in added}
    kept: list[bytes] = []
    dropping = False
    for line in header.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t"):
            if not dropping:
                kept.append(line)
            continue
        name = line.split(b":", 1)[0].strip().decode("ascii", "replace").lower()
        dropping = b":" in line and name in remove
        if not dropping:
            kept.append(line)
    top = b"".join(
        f"{name}: {value}\r\n".encode("utf-8", "replace")
        for name, value in [(n, _clean(v) if n != "X-Spamd-Result" else v) for n, v in added]
    )
    if verdict.subject is not None:
        top += f"Subject: {_clean(verdict.subject)}\r\n".encode()
    return top + b"".join(kept) + body


@attrs.frozen
class CheckRequest:
    """What rspamd is told about one message besides its text (the request headers).

    @ivar sender: the envelope sender (C{""} for the null path).
    @ivar recipients: the envelope recipients.
    @ivar ip: the client's IP address.
    @ivar helo: the HELO/EHLO argument.
    @ivar hostname: the client's reverse-DNS name, C{""} when unknown.
    @ivar queue_id: our transaction id.
    @ivar user: the authenticated user (submission), C{""} for none.
    """

    sender: str
    recipients: tuple[str, ...]
    ip: str
    helo: str = ""
    hostname: str = ""
    queue_id: str = ""
    user: str = ""

    def headers(self) -> Headers:
        h = Headers()
        h.addRawHeader(b"From", _clean(self.sender).encode())
        for rcpt in self.recipients:
            h.addRawHeader(b"Rcpt", _clean(rcpt).encode())
        h.addRawHeader(b"IP", _clean(self.ip).encode())
        for name, value in (
            (b"Helo", self.helo),
            (b"Hostname", self.hostname),
            (b"Queue-Id", self.queue_id),
            (b"User", self.user),
        ):
            if value:
                h.addRawHeader(name, _clean(value).encode())
        return h


class Rspamd:
    """An rspamd server: checks (the normal worker) and learning (the controller).

    @param reactor: connects and times out (C{IReactorTCP} and C{IReactorTime}).
    @param url: the normal worker, e.g. C{http://127.0.0.1:11333}.
    @param controller: the controller worker, e.g. C{http://127.0.0.1:11334}; C{""}: no
        learning.
    @param password: the controller's password (C{Password} header), C{""} for none
        (rspamd's C{secure_ip} lets loopback learn without one).
    @param timeout: seconds a check or learn may take before it counts as failed.
    """

    def __init__(
        self,
        reactor: Any,
        url: str,
        controller: str = "",
        password: str = "",
        timeout: float = 20.0,
    ) -> None:
        self.reactor = reactor
        self.url = url.rstrip("/")
        self.controller = controller.rstrip("/")
        self.password = password
        self.timeout = timeout
        self.agent = Agent(reactor)
        self.failures = 0
        """Checks that got no verdict since start (the message was accepted untouched)."""
        self.checked = 0
        self.learned = 0

    async def _post(self, url: str, headers: Headers, message: bytes) -> bytes:
        timed_out: list[bool] = []

        def expired(result: object, timeout: float) -> object:
            timed_out.append(True)
            return result

        try:
            d: Deferred[Any] = self.agent.request(
                b"POST", url.encode("ascii"), headers, FileBodyProducer(BytesIO(message))
            )
            d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=expired)
            response = await d
            body_d: Deferred[bytes] = readBody(response)
            body_d.addTimeout(self.timeout, self.reactor, onTimeoutCancel=expired)
            body = await body_d
        except Exception as e:
            if timed_out:
                raise RspamdError(f"no answer in {self.timeout:g} s") from None
            raise RspamdError(f"{type(e).__name__}: {e}") from None
        if response.code != 200:
            raise RspamdError(f"HTTP {response.code}: {body[:200]!r}")
        return body

    async def check(self, request: CheckRequest, message: bytes) -> Verdict | None:
        """rspamd's verdict on C{message}, or C{None} when rspamd failed (logged, counted)."""
        try:
            body = await self._post(self.url + "/checkv2", request.headers(), message)
            verdict = parse_verdict(body)
        except RspamdError as e:
            self.failures += 1
            log.warn(
                "rspamd check of {id} failed ({failures} so far): {error}; accepted unchecked",
                id=request.queue_id,
                failures=self.failures,
                error=str(e),
            )
            return None
        self.checked += 1
        return verdict

    async def learn(self, spam: bool, user: str, message: bytes) -> bool:
        """Teach rspamd's Bayes classifier that C{message} is spam (or ham) for C{user};
        return whether rspamd took it (logged either way, never raises)."""
        kind = "spam" if spam else "ham"
        if not self.controller:
            return False
        headers = Headers()
        headers.addRawHeader(b"Deliver-To", _clean(user).encode())
        if self.password:
            headers.addRawHeader(b"Password", _clean(self.password).encode())
        try:
            await self._post(f"{self.controller}/learn{kind}", headers, message)
        except RspamdError as e:
            log.warn(
                "rspamd learn{kind} for {user} failed: {error}",
                kind=kind,
                user=user,
                error=str(e),
            )
            return False
        self.learned += 1
        log.info(
            "rspamd learn{kind} for {user}: {size} octets", kind=kind, user=user, size=len(message)
        )
        return True


JUNK_FOLDER = "Junk"
TRASH_FOLDER = "Trash"


class JunkLearner:
    """Learning from the user's hands (the IMAP hook of COPY, MOVE and their UID forms):
    a message copied or moved into Junk is spam, one moved out of Junk into any folder but
    Trash is ham (Dovecot's IMAPSieve antispam recipe); each is sent to rspamd off the
    IMAP command's path (L{Rspamd.learn_later}).

    @param rspamd: the filter, with its controller set.
    """

    def __init__(self, rspamd: Rspamd) -> None:
        self.rspamd = rspamd

    def copied(
        self, user: str, source: str, target: str, messages: Sequence[Any], run_in_thread: Any
    ) -> None:
        """C{messages} (IMAP messages of folder C{source}) were copied into C{target}."""
        into = target.lower() == JUNK_FOLDER.lower()
        out_of = source.lower() == JUNK_FOLDER.lower()
        if into == out_of or (out_of and target.lower() == TRASH_FOLDER.lower()):
            return
        spam = into

        async def run() -> None:
            for message in messages:
                load = getattr(message, "load", None)
                if load is not None:
                    data = await load(run_in_thread)
                else:
                    data = message.getBodyFile().read()  # pragma: no cover - not Maildir
                await self.rspamd.learn(spam, user, data)

        d = Deferred.fromCoroutine(run())
        d.addErrback(lambda f: log.failure("rspamd learning for {user} failed", f, user=user))
