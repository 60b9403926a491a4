"""SMTP replies as named values: code, enhanced status (RFC 3463) and text (RFC 5321 §4.2).

Each reply the server can send is one constant here, so tests assert replies whole and the
texts stay generic (nothing from the client is echoed back).
"""

from __future__ import annotations

import attrs


@attrs.frozen
class Reply:
    """One SMTP reply: C{code} (RFC 5321 §4.2.3), C{status} (RFC 3463 "x.y.z" or "") and text."""

    code: int
    status: str
    text: str
    wire: bytes = attrs.field(init=False, eq=False, repr=False)
    """The whole reply line with its CRLF, as sent: made once (issue 10: not per reply)."""

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "wire", self.line() + b"\r\n")

    def message(self) -> bytes:
        """The reply text with its enhanced status code, as sent after the code (RFC 2034 §4)."""
        return (f"{self.status} {self.text}" if self.status else self.text).encode("ascii")

    def line(self) -> bytes:
        """The whole single-line reply, without CRLF: C{b"550 5.1.1 No such user"}."""
        return b"%d %s" % (self.code, self.message())


R = Reply

REPLY_220_READY = R(220, "", "ESMTP twistedmail ready")
REPLY_221_BYE = R(221, "2.0.0", "Bye")
REPLY_250_OK = R(250, "2.0.0", "OK")
REPLY_250_SENDER_OK = R(250, "2.1.0", "Sender OK")
REPLY_250_RECIPIENT_OK = R(250, "2.1.5", "Recipient OK")
REPLY_250_QUEUED = R(250, "2.0.0", "Message accepted for delivery")
REPLY_250_RESET = R(250, "2.0.0", "Reset state")
REPLY_250_NOOP = R(250, "2.0.0", "OK")
REPLY_252_CANNOT_VRFY = R(
    252, "2.5.0", "Cannot VRFY user, but will accept message and attempt delivery"
)
REPLY_220_TLS_READY = R(220, "2.0.0", "Ready to start TLS")
REPLY_235_AUTH_OK = R(235, "2.7.0", "Authentication successful")
REPLY_334_CONTINUE = R(334, "", "")
REPLY_354_DATA = R(354, "", "End data with <CR><LF>.<CR><LF>")

REPLY_421_TIMEOUT = R(421, "4.4.2", "Timeout, closing connection")
REPLY_421_SHUTDOWN = R(421, "4.3.2", "Service shutting down")
REPLY_451_LOCAL_ERROR = R(451, "4.3.0", "Local error in processing")
REPLY_452_TOO_MANY_RECIPIENTS = R(452, "4.5.3", "Too many recipients")
REPLY_454_TLS_UNAVAILABLE = R(454, "4.7.0", "TLS not available")
REPLY_454_AUTH_TEMP = R(454, "4.7.0", "Temporary authentication failure")
REPLY_450_RELAY_UNAVAILABLE = R(450, "4.7.1", "Relaying to remote domains is not available yet")

REPLY_500_LINE_TOO_LONG = R(500, "5.5.6", "Line too long")
REPLY_500_UNKNOWN_COMMAND = R(500, "5.5.2", "Command not recognized")
REPLY_501_SYNTAX = R(501, "5.5.4", "Syntax error in parameters or arguments")
REPLY_501_BAD_ADDRESS = R(501, "5.1.3", "Bad address syntax")
REPLY_501_BAD_SENDER = R(501, "5.1.7", "Bad sender address syntax")
# RFC 4954 §4: a cancelled exchange MUST get 501; §6 gives 501 5.7.0 another meaning
# ("Client initiated Authentication Exchange"), so the enhanced code is the generic 5.0.0.
REPLY_501_AUTH_CANCELLED = R(501, "5.0.0", "Authentication cancelled")
REPLY_501_PATH_TOO_LONG = R(501, "5.1.3", "Path too long")  # RFC 5321 §4.5.3.1.10
REPLY_501_SENDER_PATH_TOO_LONG = R(501, "5.1.7", "Path too long")
# RFC 3463 §3.6 X.5.4 "Invalid command arguments": a malformed value of a parameter we name
# (esmtp-value, RFC 5321 §4.1.2), in Postfix's words ("Bad NOTIFY parameter syntax").
REPLY_501_BAD_BODY = R(501, "5.5.4", "Bad BODY parameter syntax")
REPLY_501_BAD_NOTIFY = R(501, "5.5.4", "Bad NOTIFY parameter syntax")
REPLY_501_BAD_BASE64 = R(501, "5.5.2", "Cannot decode response")
REPLY_502_NOT_IMPLEMENTED = R(502, "5.5.1", "Command not implemented")
REPLY_503_EHLO_FIRST = R(503, "5.5.1", "Send HELO/EHLO first")
REPLY_503_MAIL_FIRST = R(503, "5.5.1", "Need MAIL command first")
REPLY_503_RCPT_FIRST = R(503, "5.5.1", "Need RCPT command first")
REPLY_503_NESTED_MAIL = R(503, "5.5.1", "Sender already specified")
REPLY_503_ALREADY_AUTH = R(503, "5.5.1", "Already authenticated")
REPLY_503_TLS_ACTIVE = R(503, "5.5.1", "TLS already active")
REPLY_504_AUTH_MECHANISM = R(504, "5.5.4", "Unrecognized authentication type")
REPLY_530_TLS_REQUIRED = R(530, "5.7.0", "Must issue a STARTTLS command first")
REPLY_530_AUTH_REQUIRED = R(530, "5.7.0", "Authentication required")
REPLY_535_AUTH_FAILED = R(535, "5.7.8", "Authentication credentials invalid")
REPLY_550_NO_SUCH_USER = R(550, "5.1.1", "No such user here")
# A bounce address we never made, or older than [forwarding] (postsrsd + Postfix: 5.1.1).
REPLY_550_SRS_INVALID = R(550, "5.1.1", "Invalid or expired SRS address")
REPLY_550_BARE_LF = R(550, "5.6.0", "Bare CR or LF in message data")
REPLY_552_TOO_BIG = R(552, "5.3.4", "Message size exceeds fixed maximum message size")
# RFC 3463 X.2.2 mailbox full; 552 as Dovecot's LMTP with quota_full_tempfail=no (RFC 5321
# §4.2.2: "552 Requested mail action aborted: exceeded storage allocation").
REPLY_552_MAILBOX_FULL = R(552, "5.2.2", "Mailbox full")
REPLY_552_HEADER_TOO_BIG = R(552, "5.3.4", "Message header section too large")
# RFC 5321 §4.5.3.1.10 "500 Line too long"; RFC 3463 X.6.0: the content is refused.
REPLY_500_TEXT_LINE_TOO_LONG = R(500, "5.6.0", "Message text line too long")
REPLY_553_NON_ASCII_ADDRESS = R(553, "5.6.7", "Non-ASCII addresses require SMTPUTF8")
REPLY_553_SENDER_NOT_OWNED = R(553, "5.7.1", "Sender address not owned by authenticated user")
REPLY_550_FROM_NOT_OWNED = R(550, "5.7.1", "From: header address not owned by authenticated user")
REPLY_554_RELAY_DENIED = R(554, "5.7.1", "Relay access denied")
# RFC 7489 §6.7, §10: a DMARC fail under p=reject, when [inbound] dmarc_reject is on.
REPLY_550_DMARC_REJECT = R(550, "5.7.1", "Rejected by the sender domain's DMARC policy")
REPLY_555_BAD_PARAMETER = R(555, "5.5.4", "MAIL FROM/RCPT TO parameters not recognized")

# SMTP session (twistedmail.smtp.session)
REPLY_214_HELP = R(214, "2.0.0", "Commands: EHLO HELO MAIL RCPT DATA RSET NOOP VRFY HELP QUIT")
REPLY_421_AUTH_FAILURES = R(421, "4.7.0", "Too many failed authentication attempts")
REPLY_500_BARE_LF_COMMAND = R(500, "5.5.2", "Bare CR or LF in command")
REPLY_500_AUTH_LINE_TOO_LONG = R(500, "5.5.6", "Authentication exchange line is too long")
REPLY_503_AUTH_IN_TRANSACTION = R(503, "5.5.1", "AUTH not permitted during a mail transaction")
REPLY_452_STORAGE = R(452, "4.3.1", "Insufficient system storage")
REPLY_454_LOGIN_BLOCKED = R(454, "4.7.0", "Too many failed logins, try again later")  # RFC 4954 §6
REPLY_421_TOO_MANY_CONNECTIONS = R(421, "4.7.0", "Too many connections, try again later")
# The spam filter (twistedmail.rspamd): rspamd's "reject", and "soft reject" / "greylist".
REPLY_550_SPAM = R(550, "5.7.1", "Message rejected as spam")
REPLY_451_SPAM_LATER = R(451, "4.7.1", "Try again later")
# Postfix postscreen's pregreet test: the client sent before our 220 greeting.
REPLY_554_PREGREET = R(554, "5.5.1", "Protocol error: talked before greeting")
# A submitting user over [limits] submission_*_per_hour (twistedmail.rate).
REPLY_451_RATE_LIMIT = R(451, "4.7.1", "Sending rate limit exceeded, try again later")
# A client IP over [antispam] smtp_messages_per_ip_hour on port 25.
REPLY_451_IP_RATE_LIMIT = R(451, "4.7.1", "Too many messages from your address, try again later")


def reply_554_blocklisted(ip: str, blocklist: str) -> Reply:
    """C{554 5.7.1} for a client on a DNS blocklist, at RCPT (the wording of Postfix's
    reject_rbl_client)."""
    return R(554, "5.7.1", f"Service unavailable; client [{ip}] blocked using {blocklist}")
