"""Each listener's settings: one frozen value per service, taken whole by its factory.

L{twistedmail.service} builds them from the L{twistedmail.config.Config} (one function per
service there); a test builds them by hand, C{SMTPSettings()} or with the one value it varies.
The defaults here are the only ones: the C{[limits]}, C{[smtp]} and C{[antispam]} keys of
L{twistedmail.config} default to them, so a factory built by hand behaves as one built from an
empty config file.  A leaf module (attrs only), so that the config and every protocol can
import it.
"""

from __future__ import annotations

import attrs

MAX_MESSAGE_SIZE = 25 * 1024 * 1024
"""Octets of one message: SMTP SIZE (RFC 1870) and the largest IMAP APPEND literal."""

BARE_LF_MODES = ("reject", "normalize")


@attrs.frozen
class SMTPSettings:
    """One SMTP listener's (25, 587 or 465) session settings.

    @ivar max_message_size: octets of message data (RFC 1870 SIZE).
    @ivar idle_timeout: seconds without a command before C{421 4.4.2} and close (RFC 5321
        §4.5.3.2.7: at least 5 minutes).
    @ivar max_recipients: RCPTs accepted per message, more get C{452 4.5.3} (RFC 5321
        §4.5.3.1.8: at least 100; 1000 as Postfix's C{smtpd_recipient_limit}).
    @ivar max_line_length: octets of one message text line without its CRLF (RFC 5321
        §4.5.3.1.6: at least 998).
    @ivar max_header_size: octets of a message's header section.
    @ivar bare_lf: C{"reject"} or C{"normalize"} (C{[smtp] bare_lf}, RFC 5321 §2.3.8).
    @ivar greet_pause: seconds the 220 greeting waits (C{[antispam] greet_pause}, port 25).
    """

    max_message_size: int = MAX_MESSAGE_SIZE
    idle_timeout: int = 300
    max_recipients: int = 1000
    max_line_length: int = 16384
    max_header_size: int = 256 * 1024
    bare_lf: str = attrs.field(default="reject", validator=attrs.validators.in_(BARE_LF_MODES))
    greet_pause: int = 0


@attrs.frozen
class IMAPSettings:
    """One IMAP listener's (143 or 993) session settings.

    @ivar max_literal_size: octets of the largest APPEND (the configured message size).
    @ivar idle_timeout: the autologout timer after login, seconds (RFC 3501 §5.4: at least 30
        minutes); before login it stays 60 seconds.
    """

    max_literal_size: int = MAX_MESSAGE_SIZE
    idle_timeout: int = 30 * 60


@attrs.frozen
class POP3Settings:
    """One POP3 listener's (110 or 995) session settings.

    @ivar idle_timeout: inactivity timeout in seconds (RFC 1939 §3: at least 10 minutes).
    @ivar allow_plaintext_auth: accept passwords without TLS (tests or loopback only).
    """

    idle_timeout: int = 600
    allow_plaintext_auth: bool = False


@attrs.frozen
class ManageSieveSettings:
    """The ManageSieve listener's (4190) settings: each user's quota on scripts (RFC 5804
    §1.3 QUOTA codes, like Pigeonhole's C{sieve_quota_max_scripts} / C{sieve_quota_max_storage}
    and C{sieve_max_script_size}) and the session's idle timeout.

    @ivar max_scripts: scripts per user (C{QUOTA/MAXSCRIPTS} beyond).
    @ivar max_script_size: octets of one script (C{QUOTA/MAXSIZE}); at most the Sieve
        parser's 512 KiB.
    @ivar max_storage: octets of all of a user's scripts (C{QUOTA}).
    @ivar idle_timeout: seconds without a command before the session closes (Pigeonhole: 30
        minutes).
    @ivar allow_plaintext_auth: accept AUTHENTICATE without TLS (tests only).
    """

    max_scripts: int = 20
    max_script_size: int = 256 * 1024
    max_storage: int = 2 * 1024 * 1024
    idle_timeout: int = 1800
    allow_plaintext_auth: bool = False
