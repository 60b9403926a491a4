"""The rspamd client's parsing and header changes (twistedmail.rspamd), on replies recorded
from rspamd 3.4's /checkv2; and the Junk learner's choice of spam and ham."""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred, succeed

from twistedmail.rspamd import (
    CheckRequest,
    JunkLearner,
    RspamdError,
    Verdict,
    apply_headers,
    parse_verdict,
)

# Recorded from rspamd 3.4 (rspamd_server.py's test config), trimmed of descriptions.
GTUBE_REPLY = (
    b'{"is_skipped":true,"score":50.0,"required_score":50.0,"action":"reject",'
    b'"symbols":{"GTUBE":{"name":"GTUBE","score":0.0,"metric_score":0.0}},'
    b'"messages":{"smtp_message":"Gtube pattern"},"message-id":"undef","time_real":0.000277}'
)
ADD_HEADER_REPLY = (
    b'{"is_skipped":false,"score":15.4,"required_score":50.0,"action":"add header",'
    b'"symbols":{"MISSING_MID":{"name":"MISSING_MID","score":2.5,"metric_score":2.5},'
    b'"TWISTEDMAIL_TEST_SPAM":{"name":"TWISTEDMAIL_TEST_SPAM","score":10.0,"metric_score":10.0},'
    b'"MIME_GOOD":{"name":"MIME_GOOD","score":-0.1,"metric_score":-0.1,"options":["text/plain"]}},'
    b'"messages":{},"message-id":"undef","time_real":0.004060,'
    b'"milter":{"remove_headers":{"X-Spam":0}}}'
)
SOFT_REJECT_REPLY = (
    b'{"is_skipped":false,"score":0.0,"required_score":50.0,"action":"soft reject",'
    b'"symbols":{"GREYLIST":{"name":"GREYLIST","score":0.0,"metric_score":0.0,'
    b'"options":["greylisted","Mon, 07 Dec 2026 00:37:55 GMT","too early"]}},'
    b'"messages":{"smtp_message":"Try again later"},"message-id":"undef",'
    b'"milter":{"remove_headers":{"X-Spam":0}}}'
)
MESSAGE = (
    b"Received: from client ([192.0.2.1])\r\n\tby mx; Mon, 7 Dec 2026 00:00:00 +0000\r\n"
    b"X-Spam: No\r\nSubject: hello\r\n\r\nX-Spam: in the body stays\r\n"
)


def test_reject_reply() -> None:
    """GTUBE's reply parses to the reject action with the GTUBE symbol."""
    verdict = parse_verdict(GTUBE_REPLY)
    assert verdict == Verdict("reject", 50.0, 50.0, symbols=(("GTUBE", 0.0),))
    assert not verdict.junk


def test_add_header_reply() -> None:
    """add header: junk, symbols by name, the milter remove_headers kept."""
    verdict = parse_verdict(ADD_HEADER_REPLY)
    assert verdict.action == "add header" and verdict.junk
    assert verdict.symbols == (
        ("MIME_GOOD", -0.1),
        ("MISSING_MID", 2.5),
        ("TWISTEDMAIL_TEST_SPAM", 10.0),
    )
    assert verdict.remove_headers == ("X-Spam",)
    assert verdict.add_headers == ()


def test_soft_reject_reply() -> None:
    """soft reject parses (the session answers 451 4.7.1)."""
    assert parse_verdict(SOFT_REJECT_REPLY).action == "soft reject"


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json!",
        b"[1, 2]",
        b'{"action": "explode", "score": 1}',
        b'{"action": "reject", "score": "high"}',
        b'{"action": "no action"}',
        b"\xff\xfe",
    ],
)
def test_garbage_is_an_error(body: bytes) -> None:
    """Anything but rspamd's JSON with a known action and a numeric score: RspamdError (the
    caller accepts the message unchecked)."""
    with pytest.raises(RspamdError):
        parse_verdict(body)


def test_milter_add_headers_forms() -> None:
    """milter add_headers values as a string, an object with value and order, or a list."""
    verdict = parse_verdict(
        b'{"action":"add header","score":7,"milter":{"add_headers":{'
        b'"X-A":"one","X-B":{"value":"two","order":0},"X-C":[{"value":"three","order":1}]}}}'
    )
    assert verdict.add_headers == (("X-A", "one"), ("X-B", "two"), ("X-C", "three"))


def test_apply_headers_junk() -> None:
    """A Junk verdict: X-Spam: Yes and X-Spamd-Result on top, rspamd's remove_headers
    applied to the header only; the body byte for byte."""
    out = apply_headers(MESSAGE, parse_verdict(ADD_HEADER_REPLY))
    assert out == (
        b"X-Spam: Yes\r\n"
        b"X-Spamd-Result: default: True [15.40 / 50.00];\r\n"
        b"\tMIME_GOOD(-0.10);\r\n\tMISSING_MID(2.50);\r\n\tTWISTEDMAIL_TEST_SPAM(10.00)\r\n"
        b"Received: from client ([192.0.2.1])\r\n\tby mx; Mon, 7 Dec 2026 00:00:00 +0000\r\n"
        b"Subject: hello\r\n\r\nX-Spam: in the body stays\r\n"
    )


def test_apply_headers_rewrite_subject() -> None:
    """rewrite subject: rspamd's subject replaces the old one; a CR LF in it cannot add a
    header field."""
    verdict = parse_verdict(
        b'{"action":"rewrite subject","score":9,"required_score":15,'
        b'"subject":"*** SPAM *** hello\\r\\nBcc: x@y"}'
    )
    out = apply_headers(MESSAGE, verdict)
    header = out.partition(b"\r\n\r\n")[0]
    assert b"\r\nSubject: *** SPAM *** hello  Bcc: x@y" in header
    assert b"Subject: hello\r\n" not in header


def test_apply_headers_no_action_changes_only_what_rspamd_says() -> None:
    """no action: only rspamd's own header changes (here none)."""
    assert apply_headers(MESSAGE, Verdict("no action", 1.0, 15.0)) == MESSAGE


def test_check_request_headers() -> None:
    """The envelope goes as rspamd's request headers: From, one Rcpt each, IP, Helo,
    Hostname, Queue-Id, User (the empty ones left out)."""
    headers = CheckRequest(
        sender="a@b.test",
        recipients=("x@example.test", "y@example.test"),
        ip="192.0.2.1",
        helo="client.test",
        hostname="",
        queue_id="abc-1",
    ).headers()
    assert headers.getRawHeaders(b"From") == [b"a@b.test"]
    assert headers.getRawHeaders(b"Rcpt") == [b"x@example.test", b"y@example.test"]
    assert headers.getRawHeaders(b"IP") == [b"192.0.2.1"]
    assert headers.getRawHeaders(b"Helo") == [b"client.test"]
    assert headers.getRawHeaders(b"Queue-Id") == [b"abc-1"]
    assert not headers.hasHeader(b"Hostname") and not headers.hasHeader(b"User")


class _Recorder:
    def __init__(self) -> None:
        self.calls: list[tuple[bool, str, bytes]] = []

    async def learn(self, spam: bool, user: str, message: bytes) -> bool:
        self.calls.append((spam, user, message))
        return True


class _Message:
    def load(self, run_in_thread: Any) -> Deferred[bytes]:
        return succeed(b"the message")


@pytest.mark.parametrize(
    ("source", "target", "expected"),
    [
        ("INBOX", "Junk", [True]),
        ("Archive", "junk", [True]),
        ("Junk", "INBOX", [False]),
        ("Junk", "Archive", [False]),
        ("Junk", "Trash", []),
        ("INBOX", "Archive", []),
        ("Junk", "Junk", []),
    ],
)
def test_junk_learner_decides(source: str, target: str, expected: list[bool]) -> None:
    """Into Junk teaches spam, out of Junk ham (but not into Trash), other moves nothing."""
    recorder = _Recorder()
    learner = JunkLearner(recorder)  # type: ignore[arg-type]
    learner.copied("alice@example.test", source, target, [_Message()], None)
    assert [spam for spam, _, _ in recorder.calls] == expected
    assert all(c[1:] == ("alice@example.test", b"the message") for c in recorder.calls)
