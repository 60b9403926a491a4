"""The server side of SASL (RFC 4422) for every protocol: PLAIN (RFC 4616) and LOGIN
(draft-murchison-sasl-login), with the base64 framing, the C{*} cancel and the initial
response of SMTP AUTH (RFC 4954 §4), IMAP AUTHENTICATE (RFC 3501 §6.2.2, RFC 4959) and POP3
AUTH (RFC 5034 §4).

One parser, one set of outcomes; each protocol only renders them:

  - a challenge to send (raw bytes: the protocol base64-encodes it after C{334 } / C{+ });
  - L{Credentials} when the exchange is complete (then L{twistedmail.auth.login});
  - L{Cancelled}: the client answered a challenge with C{*} (SMTP C{501}, IMAP C{BAD},
    POP3 C{-ERR});
  - L{BadBase64}: a response that is not base64 (SMTP C{501 5.5.2}, IMAP C{BAD}, POP3
    C{-ERR});
  - L{Malformed}: decodable, but not a message of the mechanism (missing or extra NULs,
    empty authentication identity or password, not UTF-8, a field over
    L{MAX_FIELD_LENGTH}, an authorization identity other than the authentication
    identity): a failed authentication (SMTP C{535 5.7.8}, IMAP C{NO
    [AUTHENTICATIONFAILED]}, POP3 C{-ERR [AUTH]}), logged as a failed login but not counted
    by the throttle (no password was tried).

No proxy authorization: an authorization identity (RFC 4616 §2 authzid) is accepted only
when empty or the same address as the authentication identity.  This module does no I/O and
imports nothing of ours, so every protocol (and ManageSieve, RFC 5804 §2.1) can use it.
"""

from __future__ import annotations

import base64
import binascii

import attrs

from twistedmail.address import AddressError, Mailbox

__all__ = [
    "BadBase64",
    "Cancelled",
    "Credentials",
    "Exchange",
    "MAX_FIELD_LENGTH",
    "MECHANISMS",
    "Malformed",
    "SASLError",
    "UnsupportedMechanism",
    "credentials",
    "same_identity",
]

MAX_FIELD_LENGTH = 1024
"""Most characters in a user name or password (RFC 4616 §2 asks for at least 255 octets)."""

PLAIN = "PLAIN"
LOGIN = "LOGIN"
MECHANISMS = (PLAIN, LOGIN)
"""Every mechanism this module implements; a protocol offers a subset of them."""

CANCEL = b"*"  # RFC 4954 §4, RFC 3501 §6.2.2, RFC 5034 §4
EMPTY_INITIAL_RESPONSE = b"="  # RFC 4954 §4, RFC 4959 §3, RFC 5034 §4

LOGIN_USERNAME_CHALLENGE = b"Username:"
LOGIN_PASSWORD_CHALLENGE = b"Password:"


class SASLError(Exception):
    """The exchange ended without credentials; C{str()} is for the log, never the client."""


class Cancelled(SASLError):
    """The client sent C{*} in answer to a challenge (RFC 4954 §4)."""


class BadBase64(SASLError):
    """A response that is not valid base64 (RFC 4954 §4: C{501 5.5.2})."""


class Malformed(SASLError):
    """A decodable response that is not a valid message of the mechanism: the
    authentication fails.  C{user} is the authentication identity when one could be read
    (for the log line), else C{""}."""

    def __init__(self, reason: str, user: str = "") -> None:
        super().__init__(reason)
        self.user = user


class UnsupportedMechanism(SASLError):
    """A mechanism not implemented (or not offered by the protocol)."""


@attrs.frozen
class Credentials:
    """A complete, well-formed login: what the password checker needs.

    @ivar authcid: the authentication identity (the login address as sent), text.
    @ivar password: the password, text.
    @ivar authzid: the authorization identity, C{""} when none was sent.
    @ivar mechanism: C{"PLAIN"}, C{"LOGIN"}, or C{"USER"} for a protocol's own login
        command (IMAP LOGIN, POP3 USER/PASS).
    """

    authcid: str
    password: str = attrs.field(repr=False)
    authzid: str = ""
    mechanism: str = "USER"


def _text(value: bytes, what: str, user: str = "") -> str:
    try:
        text = value.decode("utf-8")
    except UnicodeDecodeError:
        raise Malformed(f"{what} is not UTF-8", user) from None
    if len(text) > MAX_FIELD_LENGTH:
        raise Malformed(f"{what} longer than {MAX_FIELD_LENGTH} characters", user[:64])
    if "\0" in text:
        raise Malformed(f"{what} contains NUL", user)
    return text


def same_identity(a: str, b: str) -> bool:
    """Whether two identities name the same account: equal as normalised addresses
    (L{Mailbox.parse}), else as case-folded text."""
    try:
        return str(Mailbox.parse(a)) == str(Mailbox.parse(b))
    except AddressError:
        return a.lower() == b.lower()


def credentials(
    authcid: bytes, password: bytes, authzid: bytes = b"", mechanism: str = "USER"
) -> Credentials:
    """Check the fields of a login, from a SASL message or a protocol's own command.

    @raise Malformed: empty authentication identity or password (RFC 4616 §2: C{1*SAFE}),
        a field that is not UTF-8 (RFC 4616 §2), longer than L{MAX_FIELD_LENGTH} or with a
        NUL, or an authorization identity other than the authentication identity (no
        proxy authorization).
    """
    user = _text(authcid, "authentication identity")
    if not user:
        raise Malformed("empty authentication identity")
    secret = _text(password, "password", user)
    if not secret:
        raise Malformed("empty password", user)
    authz = _text(authzid, "authorization identity", user)
    if authz and not same_identity(authz, user):
        # RFC 4616 §2: the server decides whether authcid may act as authzid; never here.
        raise Malformed("authorization identity differs from the authentication identity", user)
    return Credentials(user, secret, authz, mechanism)


def decode(response: bytes, initial: bool = False) -> bytes:
    """The message in a client response line (white space around it ignored).

    @param initial: the response came with the command (RFC 4954 §4 initial-response,
        RFC 4959, RFC 5034 §4), where C{=} is the empty message and C{*} is no cancel but
        bad base64.
    @raise Cancelled: C{*} in answer to a challenge.
    @raise BadBase64: anything else that is not base64 (RFC 4648 §4, padding required).
    """
    response = response.strip()
    if not initial and response == CANCEL:
        raise Cancelled("client cancelled the exchange")
    if initial and response == EMPTY_INITIAL_RESPONSE:
        return b""
    try:
        return base64.b64decode(response, validate=True)
    except (binascii.Error, ValueError):
        raise BadBase64("response is not base64") from None


def encode_challenge(challenge: bytes) -> bytes:
    """A challenge as sent after C{334 } / C{+ }: base64, empty for an empty challenge."""
    return base64.b64encode(challenge)


class Exchange:
    """One server-side SASL exchange.

    Use: C{exchange = Exchange("PLAIN")}; C{exchange.start(initial)} with the initial
    response (or C{None}), then C{exchange.respond(line)} with each client line, until one
    of them returns L{Credentials}; otherwise they return the next raw challenge to send.
    Both raise L{Cancelled}, L{BadBase64} or L{Malformed}, which end the exchange.

    @raise UnsupportedMechanism: from the constructor, for a mechanism not in C{offered}.
    """

    def __init__(self, mechanism: bytes | str, offered: tuple[str, ...] = MECHANISMS) -> None:
        name = mechanism.decode("ascii", "replace") if isinstance(mechanism, bytes) else mechanism
        name = name.upper()
        if name not in offered or name not in MECHANISMS:
            raise UnsupportedMechanism(f"mechanism {name[:20]!r} not offered")
        self.mechanism = name
        self._username: bytes | None = None

    def start(self, initial: bytes | None) -> bytes | Credentials:
        """Begin with the command's initial response, or C{None} when it had none."""
        if initial is None:
            # RFC 4616 §2: PLAIN starts with an empty challenge; LOGIN asks for the user.
            return b"" if self.mechanism == PLAIN else LOGIN_USERNAME_CHALLENGE
        return self._step(decode(initial, initial=True))

    def respond(self, line: bytes) -> bytes | Credentials:
        """Take the client's answer to the last challenge."""
        return self._step(decode(line))

    def _step(self, message: bytes) -> bytes | Credentials:
        if self.mechanism == PLAIN:
            # RFC 4616 §2: message = [authzid] UTF8NUL authcid UTF8NUL passwd
            fields = message.split(b"\0")
            if len(fields) != 3:
                raise Malformed(f"PLAIN message with {len(fields) - 1} NULs, not 2")
            authzid, authcid, password = fields
            return credentials(authcid, password, authzid, PLAIN)
        if self._username is None:
            self._username = message
            _text(message, "user name")  # fail early on a user name that cannot log in
            if not message:
                raise Malformed("empty user name")
            return LOGIN_PASSWORD_CHALLENGE
        return credentials(self._username, message, b"", LOGIN)
