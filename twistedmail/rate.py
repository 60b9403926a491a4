"""Outbound rate of each submitting user: messages and recipients per hour (issue 14).

A compromised account must not send 10,000 messages before anyone notices.  Each user's
accepted messages and recipients of the last hour are counted (a sliding window of event
times); over C{[limits] submission_messages_per_hour} a new MAIL FROM, over
C{submission_recipients_per_hour} a new RCPT, is answered C{451 4.7.1} (RFC 5321 §4.2.5: a
temporary refusal; a real user's client tries again later, and the operator sees the log
line, which names the client IP for fail2ban).  Like Postfix's C{anvil} rates and
Mail-in-a-Box's policyd-rate-limit.

Under C{[server] workers} each process counts every event of every process: L{HourlyRate.record}
hands the event to L{HourlyRate.share}, which sends it to the others (L{twistedmail.workers}),
where L{HourlyRate.replay} counts it.  A limit can be overrun only by the events two
processes accept in the same instant, before they hear of each other's (milliseconds).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from twisted.internet.interfaces import IReactorTime

WINDOW = 3600  # seconds: the rates are per hour


class HourlyRate:
    """Events per key over the last L{WINDOW} seconds.

    @param limit: events allowed per key in the window.
    @param clock: for the event times.
    """

    def __init__(self, limit: int, clock: IReactorTime) -> None:
        self.limit = limit
        self.clock = clock
        self._events: dict[str, deque[float]] = {}
        self.share: Callable[[str, int], None] | None = None
        """Called with each L{record}, to count it in the other processes too (workers)."""

    def _recent(self, key: str) -> deque[float]:
        events = self._events.get(key)
        if events is None:
            return deque()
        cutoff = self.clock.seconds() - WINDOW
        while events and events[0] <= cutoff:
            events.popleft()
        if not events:
            del self._events[key]
        return events

    def count(self, key: str) -> int:
        """Events of C{key} in the last hour."""
        return len(self._recent(key))

    def allows(self, key: str, more: int = 1) -> bool:
        """Whether C{more} events of C{key} now stay within the limit."""
        return self.count(key) + more <= self.limit

    def record(self, key: str, n: int = 1) -> None:
        """Count C{n} events of C{key} now."""
        if self.share is not None:
            self.share(key, n)
        self.replay(key, n)

    def replay(self, key: str, n: int = 1) -> None:
        """Count C{n} events of C{key} now that another process recorded (not shared)."""
        events = self._events.setdefault(key, deque())
        now = self.clock.seconds()
        events.extend([now] * n)
        while len(events) > self.limit + 1:
            events.popleft()  # beyond the limit the exact count does not matter


class SubmissionRate:
    """The two hourly rates of submission, per authenticated user."""

    def __init__(self, messages_per_hour: int, recipients_per_hour: int, clock: IReactorTime):
        self.messages = HourlyRate(messages_per_hour, clock)
        self.recipients = HourlyRate(recipients_per_hour, clock)
