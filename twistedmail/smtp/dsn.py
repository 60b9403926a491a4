"""Delivery status notifications: bounces and delay warnings (RFC 3464, RFC 3462/6522).

A DSN is a C{multipart/report; report-type=delivery-status} message (RFC 6522) from the null
reverse-path with three parts: a short human explanation, the C{message/delivery-status}
fields (RFC 3464 §2.2 per message, §2.3 per recipient: Final-Recipient, Action, Status,
Remote-MTA, Diagnostic-Code, Last-Attempt-Date, Will-Retry-Until) and the original message's
header (C{text/rfc822-headers}, RFC 6522 §4: the body is not returned).

The queue sends it from C{<>} (RFC 5321 §4.5.5) and never for a message whose own
reverse-path is null (§6.1: never bounce a bounce).
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from datetime import datetime, timezone
from email.utils import format_datetime

from twistedmail.smtp.outbound import RecipientResult

FAILED = "failed"
DELAYED = "delayed"


def _date(seconds: float) -> str:
    return format_datetime(datetime.fromtimestamp(seconds, timezone.utc))


def original_header(message: bytes) -> bytes:
    """The header section of C{message} (CRLF lines), ending with CRLF, without the blank
    line; the whole message when it has no body."""
    end = message.find(b"\r\n\r\n")
    return message if end < 0 else message[: end + 2]


def _safe(text: str) -> str:
    """One header-safe line: no CR/LF, printable ASCII (RFC 3464 §2.1.1 text fields)."""
    return "".join(c if 32 <= ord(c) < 127 else "?" for c in " ".join(text.split()))


def build_dsn(
    *,
    hostname: str,
    recipient: str,
    results: Sequence[RecipientResult],
    action: str,
    original: bytes,
    arrival: float,
    now: float,
    will_retry_until: float | None = None,
) -> bytes:
    """A DSN (bytes, CRLF lines) to C{recipient} about C{results}.

    @param hostname: our name: Reporting-MTA (RFC 3464 §2.2.2) and the From: domain.
    @param recipient: the original reverse-path, the DSN's To:.
    @param results: the recipients to report, with their last status and diagnostic.
    @param action: L{FAILED} (a bounce) or L{DELAYED} (a warning, RFC 3464 §2.3.3).
    @param original: the original message; only its header section is included.
    @param arrival: when we accepted it (Arrival-Date, §2.2.5), seconds since the epoch.
    @param now: the time of the report (Date:, Last-Attempt-Date).
    @param will_retry_until: for L{DELAYED}: when the queue gives up (§2.3.8).
    """
    boundary = f"{secrets.token_hex(12)}/{hostname}"
    token = secrets.token_hex(8)
    if action == FAILED:
        subject = "Undelivered Mail Returned to Sender"
        intro = (
            "This is the mail system at host {host}.\r\n\r\n"
            "Your message could not be delivered to one or more recipients.\r\n"
            "It has been returned to you; the details are below.\r\n"
        )
    else:
        subject = "Delayed Mail (still being retried)"
        intro = (
            "This is the mail system at host {host}.\r\n\r\n"
            "Your message could not be delivered yet to one or more recipients.\r\n"
            "It will be retried until {until}; you do not need to send it again.\r\n"
        )
    human = intro.format(host=hostname, until=_date(will_retry_until or now))
    human += "\r\n" + "".join(f"<{r.address}>: {_safe(r.diagnostic)}\r\n" for r in results)

    fields = [f"Reporting-MTA: dns; {hostname}", f"Arrival-Date: {_date(arrival)}", ""]
    for r in results:
        fields.append(f"Final-Recipient: rfc822; {r.address}")
        fields.append(f"Action: {action}")
        fields.append(f"Status: {r.status}")
        if r.remote_mta:
            fields.append(f"Remote-MTA: dns; {r.remote_mta}")
            fields.append(f"Diagnostic-Code: smtp; {_safe(r.diagnostic)}")
        else:
            fields.append(f"Diagnostic-Code: X-twistedmail; {_safe(r.diagnostic)}")
        fields.append(f"Last-Attempt-Date: {_date(now)}")
        if action == DELAYED and will_retry_until is not None:
            fields.append(f"Will-Retry-Until: {_date(will_retry_until)}")
        fields.append("")
    status = "\r\n".join(fields)

    head = (
        f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
        f"To: <{recipient}>\r\n"
        f"Subject: {subject}\r\n"
        f"Date: {_date(now)}\r\n"
        f"Message-ID: <{token}.dsn@{hostname}>\r\n"
        "Auto-Submitted: auto-replied\r\n"  # RFC 3834 §5
        "MIME-Version: 1.0\r\n"
        "Content-Type: multipart/report; report-type=delivery-status;\r\n"
        f'\tboundary="{boundary}"\r\n'
        "\r\n"
        "This is a MIME-encapsulated message.\r\n\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Notification\r\n"
        "Content-Type: text/plain; charset=us-ascii\r\n\r\n"
        f"{human}\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Delivery report\r\n"
        "Content-Type: message/delivery-status\r\n\r\n"
        f"{status}\r\n"
        f"--{boundary}\r\n"
        "Content-Description: Undelivered Message Headers\r\n"
        "Content-Type: text/rfc822-headers\r\n"
        "Content-Transfer-Encoding: 8bit\r\n\r\n"
    )
    return head.encode("ascii") + original_header(original) + f"\r\n--{boundary}--\r\n".encode()
