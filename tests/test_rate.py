"""Hourly rates per key (twistedmail.rate), over a Clock."""

from __future__ import annotations

from twisted.internet.task import Clock

from twistedmail.rate import HourlyRate


def test_limit_within_the_hour() -> None:
    """Up to the limit in an hour; the next is refused; an hour later it is allowed."""
    clock = Clock()
    rate = HourlyRate(3, clock)
    for _ in range(3):
        assert rate.allows("alice")
        rate.record("alice")
        clock.advance(60)
    assert not rate.allows("alice")
    assert rate.allows("bob")
    clock.advance(3600 - 180 + 1)  # the first event is now over an hour old
    assert rate.allows("alice") and rate.count("alice") == 2


def test_several_at_once() -> None:
    """allows(more=n) counts n events; the count stays bounded past the limit."""
    rate = HourlyRate(5, Clock())
    rate.record("u", 4)
    assert rate.allows("u", 1) and not rate.allows("u", 2)
    rate.record("u", 100)
    assert rate.count("u") == 6
