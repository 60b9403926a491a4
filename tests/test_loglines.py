"""twistedmail.loglines.classic_line: twistd's text log line (twisted.logger's
formatEventAsClassicLogText), made with each log_format parsed once (issue 10)."""

from __future__ import annotations

from typing import Any

from twisted.logger import LogLevel, formatEventAsClassicLogText
from twisted.python.failure import Failure
from twisted.trial import unittest

from twistedmail.loglines import LogLines, classic_line


def stamp(when: float | None) -> str:
    return "-" if when is None else f"T{when:.0f}"


class Thing:
    def __str__(self) -> str:
        return "thing-str"

    def __repr__(self) -> str:
        return "<thing>"

    def method(self) -> str:
        return "called"


EVENTS: list[dict[str, Any]] = [
    {
        "log_format": "plain text",
        "log_time": 1.0,
        "log_namespace": "a.b",
        "log_level": LogLevel.info,
    },
    {
        "log_format": "session {session} from {ip} on {service} (tls={tls})",
        "session": "abc",
        "ip": "127.0.0.1",
        "service": "smtp",
        "tls": False,
        "log_time": 2.0,
        "log_namespace": "twistedmail.smtp",
        "log_level": LogLevel.info,
    },
    {"log_format": "{n:05d} {x!r} {x!s} {x} {{literal}}", "n": 7, "x": Thing(), "log_time": 3.0},
    {"log_format": "two\nlines {v}", "v": "and\nmore", "log_system": "sys", "log_time": 4.0},
    {"log_format": "", "log_time": 5.0},
    {"log_format": "{missing}", "log_time": 6.0, "log_level": LogLevel.warn},
    {"log_format": "{x.method()} {x.method}", "x": Thing(), "log_time": 7.0},
    {"log_format": "{f()}", "f": lambda: "called", "log_time": 8.0},
    {"log_format": "{0} {}", "log_time": 9.0},
    {"log_format": "{bad", "log_time": 10.0},
    {
        "log_format": "with failure {v}",
        "v": 1,
        "log_failure": Failure(ZeroDivisionError("x")),
        "log_time": 11.0,
    },
    {"log_format": b"bytes {v}", "v": 2, "log_time": 12.0},
    {"log_time": 13.0, "message": "no format"},
    {"log_format": "{v:>{w}}", "v": "x", "w": 4, "log_time": 14.0},
    {"log_format": "sys {v}", "v": 1, "log_system": 42, "log_time": 15.0},
    {"log_format": "{v!a}", "v": "é", "log_time": 16.0},
]


class ClassicLineTests(unittest.TestCase):
    def test_same_text_as_twisted_logger(self) -> None:
        """Every event, simple or not (calls, attributes, missing fields, failures, bytes
        formats, nested specs, multi-line text), gives twisted.logger's line exactly, also
        the second time its format is seen (parsed once, then cached)."""
        for event in EVENTS * 2:
            self.assertEqual(
                classic_line(event, stamp), formatEventAsClassicLogText(event, formatTime=stamp)
            )


class _Stopped:
    running = False


class MarkTests(unittest.TestCase):
    def test_system_marked(self) -> None:
        """A worker's line names the system as twisted.logger does (C{log_system}, else
        C{namespace#level}), with the worker's mark after it."""
        written: list[bytes] = []
        lines = LogLines(written.append, _Stopped(), mark=" worker=7")
        lines._time = stamp  # type: ignore[method-assign]
        events: list[dict[str, Any]] = [
            {"log_format": "a {v}", "v": 1, "log_time": 1.0},
            {"log_format": "b", "log_namespace": "ns", "log_level": LogLevel.warn},
            {"log_format": "c", "log_system": "sys", "log_time": 3.0},
            {"log_format": "d", "log_system": 42, "log_time": 4.0},
        ]
        for event in events:
            lines(event)
        self.assertEqual(
            written,
            [b"T1 [-#- worker=7] a 1\n", b"- [ns#warn worker=7] b\n", b"T3 [sys worker=7] c\n"]
            + [b"T4 [42 worker=7] d\n"],
        )
