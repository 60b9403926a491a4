"""Messages a Sieve script makes the server send, and the vacation memory.

L{vacation_reply} builds the automatic reply of RFC 5230 §5 (From the user, To the sender,
C{Auto-Submitted: auto-replied} per RFC 3834 §5, In-Reply-To/References per RFC 5230 §5.8);
L{rejection} builds the refusal of RFC 5429 §2.1 sent after the message was accepted, as a
message disposition notification (RFC 8098 §3, C{deleted}).  Both go out with the null
reverse path (RFC 5230 §5.1, RFC 5429 §2.1) through the outbound queue; nothing is sent here.

L{VacationMemory} remembers, per user, which sender got which reply until when (RFC 5230
§4.2: at most one reply per sender and handle per period), in a small SQLite file in the
user's home, so that a restart does not answer again.  It is bounded: expired rows go at
every write and at most L{MAX_VACATION_ROWS} are kept.
"""

from __future__ import annotations

import email.utils
import hashlib
import re
import sqlite3
import time
import uuid
from email.header import Header
from email.parser import BytesHeaderParser
from email.policy import compat32
from pathlib import Path

from twistedmail.sieve.actions import Vacation

VACATION_DB = ".vacation.db"
"""The vacation memory's file name in the user's home."""
MAX_VACATION_ROWS = 10000
_HEADER_TEXT = re.compile(r"[\r\n]+[ \t]*")


def _header_text(value: str) -> str:
    """A header value on one line (no CR/LF a script or a sender could inject)."""
    return _HEADER_TEXT.sub(" ", value).strip()


def _encode(value: str) -> str:
    value = _header_text(value)
    if value.isascii():
        return value
    return Header(value, "utf-8").encode()


def _headers(message: bytes) -> email.message.Message:
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    return BytesHeaderParser(policy=compat32).parsebytes(head)


def _message_id(hostname: str) -> str:
    return f"<{uuid.uuid4().hex}@{hostname}>"


def vacation_handle(vacation: Vacation) -> str:
    """RFC 5230 §4.2: the C{:handle}, or one derived from the reply's arguments."""
    if vacation.handle is not None:
        return "h:" + vacation.handle
    text = "\0".join((vacation.reason, vacation.subject or "", vacation.from_ or ""))
    return "a:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def vacation_reply(
    message: bytes,
    vacation: Vacation,
    user: str,
    sender: str,
    hostname: str,
    now: float | None = None,
) -> bytes:
    """The reply (RFC 5230 §5) to C{message} from C{sender}, for C{user}, CRLF lines."""
    original = _headers(message)
    subject = vacation.subject
    if subject is None:
        # RFC 5230 §5.6 / §4.5: "Auto:" and the original subject.
        subject = "Auto: " + _decoded(original.get("Subject", ""))
    from_ = vacation.from_ or user
    lines = [
        f"From: {_encode(from_)}",
        f"To: <{_header_text(sender)}>",
        f"Subject: {_encode(subject)}",
        f"Date: {email.utils.formatdate(now, localtime=False)}",
        f"Message-ID: {_message_id(hostname)}",
        "Auto-Submitted: auto-replied (vacation)",
    ]
    msgid = _header_text(original.get("Message-ID", ""))
    if msgid:
        references = _header_text(original.get("References", ""))
        lines.append(f"In-Reply-To: {msgid}")
        lines.append(f"References: {(references + ' ' + msgid).strip()}")
    lines.append("MIME-Version: 1.0")
    if vacation.mime:
        # RFC 5230 §4.7: the reason is a MIME part, headers included.
        body = vacation.reason.replace("\r\n", "\n").replace("\n", "\r\n").encode("utf-8")
        return ("\r\n".join(lines) + "\r\n").encode("utf-8") + body
    lines.append("Content-Type: text/plain; charset=utf-8")
    lines.append("Content-Transfer-Encoding: 8bit")
    body_text = vacation.reason.replace("\r\n", "\n").replace("\n", "\r\n")
    if not body_text.endswith("\r\n"):
        body_text += "\r\n"
    return ("\r\n".join(lines) + "\r\n\r\n" + body_text).encode("utf-8")


def _decoded(value: str) -> str:
    try:
        return str(email.header.make_header(email.header.decode_header(value)))
    except (ValueError, LookupError):
        return value


def rejection(
    message: bytes, reason: str, user: str, sender: str, hostname: str, now: float | None = None
) -> bytes:
    """The refusal of C{message} by C{user}'s script (RFC 5429 §2.1), as an MDN (RFC 8098)
    whose human part is C{reason}, with the original headers attached."""
    original = _headers(message)
    boundary = uuid.uuid4().hex
    subject = _decoded(original.get("Subject", ""))
    end = message.find(b"\r\n\r\n")
    head = message if end < 0 else message[: end + 2]
    text = reason.replace("\r\n", "\n").replace("\n", "\r\n")
    parts = [
        f"From: Mail Delivery Subsystem <MAILER-DAEMON@{hostname}>",
        f"To: <{_header_text(sender)}>",
        f"Subject: {_encode('Rejected: ' + subject)}",
        f"Date: {email.utils.formatdate(now, localtime=False)}",
        f"Message-ID: {_message_id(hostname)}",
        "Auto-Submitted: auto-replied (rejected)",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=disposition-notification;",
        f'\tboundary="{boundary}"',
        "",
        f"--{boundary}",
        "Content-Type: text/plain; charset=utf-8",
        "Content-Transfer-Encoding: 8bit",
        "",
        f"Your message to <{user}> was automatically rejected:",
        "",
        text,
        "",
        f"--{boundary}",
        "Content-Type: message/disposition-notification",
        "",
        f"Reporting-UA: {hostname}; twistedmail Sieve",
        f"Final-Recipient: rfc822; {user}",
    ]
    msgid = _header_text(original.get("Message-ID", ""))
    if msgid:
        parts.append(f"Original-Message-ID: {msgid}")
    parts += [
        "Disposition: automatic-action/MDN-sent-automatically; deleted",
        "",
        f"--{boundary}",
        "Content-Type: text/rfc822-headers",
        "",
    ]
    tail = f"\r\n--{boundary}--\r\n".encode()
    return ("\r\n".join(parts) + "\r\n").encode("utf-8") + head + tail


class VacationMemory:
    """Which sender got which reply until when, for one user (see the module docstring)."""

    def __init__(self, home: Path) -> None:
        self.path = home / VACATION_DB

    def _open(self) -> sqlite3.Connection:
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        db = sqlite3.connect(self.path, timeout=10, isolation_level=None)
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS replied"
            " (sender TEXT NOT NULL, handle TEXT NOT NULL, until REAL NOT NULL,"
            " PRIMARY KEY (sender, handle))"
        )
        return db

    def claim(self, sender: str, handle: str, seconds: int, now: float | None = None) -> bool:
        """Whether a reply to C{sender} for C{handle} is due; if so, remember it for
        C{seconds} (durably, before the reply is queued: a crash loses a reply rather than
        sending two)."""
        now = time.time() if now is None else now
        sender = sender.lower()
        db = self._open()
        try:
            db.execute("BEGIN IMMEDIATE")
            row = db.execute(
                "SELECT until FROM replied WHERE sender = ? AND handle = ?", (sender, handle)
            ).fetchone()
            if row is not None and row[0] > now:
                db.execute("ROLLBACK")
                return False
            db.execute("DELETE FROM replied WHERE until <= ?", (now,))
            db.execute(
                "INSERT OR REPLACE INTO replied (sender, handle, until) VALUES (?, ?, ?)",
                (sender, handle, now + seconds),
            )
            db.execute(
                "DELETE FROM replied WHERE rowid NOT IN"
                " (SELECT rowid FROM replied ORDER BY until DESC LIMIT ?)",
                (MAX_VACATION_ROWS,),
            )
            db.execute("COMMIT")
            return True
        finally:
            db.close()
