"""Trace header fields the SMTP session adds: C{Received:} (RFC 5321 §4.4, with the RFC 3848
with-protocol keywords SMTP/ESMTP/ESMTPS/ESMTPA/ESMTPSA) and the address literal of the
client (§4.1.3).  C{Return-Path:} is written at final delivery (L{twistedmail.delivery},
RFC 5321 §4.4) and C{Authentication-Results:} by L{twistedmail.mailauth} (RFC 8601).
"""

from __future__ import annotations

import functools
import ipaddress
import re
from datetime import datetime, timezone
from email.utils import format_datetime

from twistedmail.smtp.policy import Envelope

# A HELO argument shown in the Received: header: a domain or an address literal.
_HELO_NAME = re.compile(r"[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?|\[[A-Za-z0-9:.]+\]")


@functools.lru_cache(maxsize=1024)  # per message, for the few clients that send most
def address_literal(ip: str) -> str:
    """C{[192.0.2.1]} or C{[IPv6:2001:db8::1]} (RFC 5321 §4.1.3); other peers kept as text."""
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return "[" + "".join(c for c in ip if c.isalnum() or c in ".:-_/") + "]"
    return f"[IPv6:{addr.compressed}]" if addr.version == 6 else f"[{addr}]"


_date: tuple[int, str] = (-1, "")  # the last second's date-time, made once a second


def _date_time(seconds: float) -> str:
    """The RFC 5322 §3.3 date-time of C{seconds} (UTC; whole seconds, as it is written)."""
    global _date
    whole = int(seconds // 1)
    if _date[0] != whole:
        _date = (whole, format_datetime(datetime.fromtimestamp(whole, timezone.utc)))
    return _date[1]


def received_header(envelope: Envelope, hostname: str) -> bytes:
    """The Received: trace header for C{envelope}, folded, ending in CRLF (RFC 5321 §4.4).

    C{from <helo> ([ip]) by <hostname> with <protocol> id <id> for <rcpt>; <date>}: the
    protocol is C{SMTP}, C{ESMTP}, C{ESMTPS}, C{ESMTPA} or C{ESMTPSA} (RFC 3848); the
    C{for} clause is given only for a single recipient, so Bcc recipients are not revealed
    to each other (RFC 5321 §7.2).
    """
    client = envelope.client
    helo = client.helo if _HELO_NAME.fullmatch(client.helo) else "unknown"
    if client.esmtp:
        protocol = "ESMTP" + ("S" if client.tls else "") + ("A" if client.user else "")
    else:
        protocol = "SMTP"
    date = _date_time(envelope.received_at)
    by = f"by {hostname} with {protocol} id {envelope.transaction_id}"
    if len(envelope.recipients) == 1:
        tail = f"{by}\r\n\tfor <{envelope.recipients[0]}>; {date}"
    else:
        tail = f"{by};\r\n\t{date}"
    text = f"Received: from {helo} ({address_literal(client.peer_ip)})\r\n\t{tail}\r\n"
    return text.encode("ascii")
