"""Commands of any state and of the not authenticated state (RFC 3501 §6.1, §6.2):
CAPABILITY, NOOP, STARTTLS (RFC 3501 §6.2.1, RFC 2595), LOGIN (§6.2.3), AUTHENTICATE
(§6.2.2, SASL PLAIN RFC 4616 with the initial response of RFC 4959, through
L{twistedmail.sasl} and L{twistedmail.auth.login}), ID (RFC 2971) and ENABLE (RFC 5161).

No password is taken before TLS (RFC 3501 §6.2.3 LOGINDISABLED; stock Twisted accepted
AUTHENTICATE PLAIN in cleartext), and nothing the client sent after STARTTLS, before the
handshake, is acted on (stock Twisted answered it inside TLS: command injection).
"""

from __future__ import annotations

from typing import Any

from twisted.logger import Logger
from twisted.mail import imap4

from twistedmail import auth, sasl
from twistedmail.auth import log_login
from twistedmail.imap.account import MaildirAccount
from twistedmail.imap.protocol import (
    UTF8_ACCEPT,
    ConnectionGone,
    IMAPProtocol,
    bad,
    command,
    no,
    paren_group,
    safe_text,
)
from twistedmail.imap.quota import CAPABILITIES as QUOTA_CAPABILITIES
from twistedmail.imap.updates import MailboxUpdates
from twistedmail.limits import UserSessionLimit

log = Logger(namespace="twistedmail.imap")


_ATOM_SPECIALS = frozenset(b'(){%*"\\]' + bytes(range(0x21)) + b"\x7f")
"""RFC 3501 §9: octets not allowed in an atom (atom-specials, SP, CTL; "]" is resp-specials)."""
SASL_MECHANISMS = ("PLAIN",)
"""AUTHENTICATE mechanisms offered (L{twistedmail.sasl}), only under TLS (RFC 3501 §6.2.2)."""

ENABLEABLE: frozenset[bytes] = frozenset({UTF8_ACCEPT, b"CONDSTORE", b"QRESYNC"})
"""Capabilities ENABLE (RFC 5161) can turn on (RFC 6855, RFC 7162 §3.1.8, §3.2.3)."""

ID_FIELDS = 30  # RFC 2971 §3.3: at most 30 field-value pairs


class NotAuthenticatedCommands(MailboxUpdates):
    """Any state and the not authenticated state (RFC 3501 §6.1, §6.2)."""

    user_limit: UserSessionLimit | None  # logged-in sessions per user and IP
    _user_slot: tuple[str, str] | None = None  # (user, IP) taken from user_limit at login

    def secure(self) -> bool:
        """Whether the connection is encrypted (RFC 8314 implicit TLS or after STARTTLS)."""
        return self.implicit_tls or self.startedTLS

    def capabilities(self) -> dict[bytes, Any]:
        cap: dict[bytes, Any] = {}
        if self.secure():
            cap[b"AUTH"] = [m.encode("ascii") for m in SASL_MECHANISMS]
        else:
            if self.ctx is not None and self.canStartTLS:
                cap[b"STARTTLS"] = None
            cap[b"LOGINDISABLED"] = None  # RFC 3501 §6.2.3: no plaintext passwords
        cap[b"NAMESPACE"] = None
        cap[b"IDLE"] = None
        cap[b"CHILDREN"] = None
        cap[b"ID"] = None
        cap[b"ENABLE"] = None
        cap[b"UNSELECT"] = None
        cap[b"LITERAL+"] = None
        cap[b"UIDPLUS"] = None
        cap[b"MOVE"] = None
        cap[b"SPECIAL-USE"] = None
        cap[b"LIST-EXTENDED"] = None
        cap[b"CONDSTORE"] = None
        cap[b"QRESYNC"] = None
        cap[b"ESEARCH"] = None
        cap[b"LIST-STATUS"] = None
        cap[b"SORT"] = None
        cap[b"UTF8"] = [b"ACCEPT"]
        # RFC 7889 §3.1: one limit for every mailbox, so the capability carries it; a larger
        # APPEND gets NO [TOOBIG] before its literal is read.
        cap[b"APPENDLIMIT"] = [b"%d" % self.max_literal_size]
        if self.state in ("auth", "select") and self._inflater is None:
            cap[b"COMPRESS"] = [b"DEFLATE"]  # RFC 4978 §3: after login, once
        cap.update(QUOTA_CAPABILITIES if self.quota is not None else {})
        return cap

    # any state

    def do_LOGOUT(self, tag: bytes) -> None:
        """RFC 3501 §6.1.3: BYE, then the tagged OK, and no update between them: changes
        other sessions made are not reported to a client that is leaving (imaptest's stress
        mode failed "seq too high ... state=LOGOUT" on a FETCH sent before the OK)."""
        self._pending_exists, self._pending_flags = False, {}
        self._pending_keywords = self._pending_highestmodseq = False
        super().do_LOGOUT(tag)

    unauth_LOGOUT = (do_LOGOUT,)  # type: ignore[assignment]
    auth_LOGOUT = select_LOGOUT = logout_LOGOUT = unauth_LOGOUT  # type: ignore[assignment]

    async def do_NOOP(self, tag: bytes) -> bytes:
        await self._refresh()
        return b"NOOP completed"

    unauth_NOOP = command(do_NOOP)
    auth_NOOP = unauth_NOOP
    select_NOOP = unauth_NOOP
    logout_NOOP = unauth_NOOP

    # not authenticated (RFC 3501 §6.2)

    def do_STARTTLS(self, tag: bytes) -> None:
        if self.secure():
            raise bad(b"TLS already active")
        if self.ctx is None or not self.canStartTLS:
            raise no(b"TLS not available")
        self.sendPositiveResponse(tag, b"Begin TLS negotiation now")
        # RFC 3501 §6.2.1 / RFC 2595 §3.1: nothing the client sent after STARTTLS, before
        # the handshake, may be acted on.  Stock Twisted kept those lines in its buffer and
        # answered them inside TLS, as if sent there (STARTTLS command injection).
        self.clearLineBuffer()
        self.transport.startTLS(self.ctx)
        self.startedTLS = True

    unauth_STARTTLS = command(do_STARTTLS)

    async def do_LOGIN(self, tag: bytes, user: bytes, password: bytes) -> bytes:
        if not self.secure():
            log_login("imap", user, self.peer, False)
            raise no(b"Plaintext authentication disallowed without TLS", b"PRIVACYREQUIRED")
        try:
            credentials = sasl.credentials(user, password)
        except sasl.Malformed as e:
            auth.refused("imap", e, self.peer)
            raise no(b"Authentication failed", b"AUTHENTICATIONFAILED") from None
        await self._login(credentials)
        return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

    unauth_LOGIN = command(do_LOGIN, IMAPProtocol.arg_astring, IMAPProtocol.arg_finalastring)

    async def do_AUTHENTICATE(  # type: ignore[override]  # this server's parsed arguments
        self, tag: bytes, mechanism: bytes, initial: bytes | None
    ) -> bytes:
        if not self.secure():
            raise no(b"Authentication disallowed without TLS", b"PRIVACYREQUIRED")
        try:
            exchange = sasl.Exchange(mechanism, SASL_MECHANISMS)
            # RFC 4959 §3: an initial response ("=" for an empty one) saves a round trip.
            outcome = exchange.start(initial)
            while not isinstance(outcome, sasl.Credentials):
                # RFC 3501 §6.2.2: "+ " and the base64 challenge (empty for PLAIN).
                self.sendContinuationRequest(sasl.encode_challenge(outcome))
                outcome = exchange.respond(await self.read_line())
        except sasl.UnsupportedMechanism:
            raise no(b"Unsupported authentication mechanism", b"CANNOT") from None
        except sasl.Cancelled:
            raise bad(b"Authentication cancelled") from None  # RFC 3501 §6.2.2
        except sasl.BadBase64:
            raise bad(b"Invalid base64 response") from None  # RFC 3501 §6.2.2
        except sasl.Malformed as e:
            auth.refused("imap", e, self.peer)
            # RFC 5530 §3: the credentials are wrong, whatever the reason.
            raise no(b"Authentication failed", b"AUTHENTICATIONFAILED") from None
        await self._login(outcome)
        return b"[CAPABILITY " + b" ".join(self.listCapabilities()) + b"] Logged in"

    unauth_AUTHENTICATE = command(
        do_AUTHENTICATE, imap4.IMAP4Server.arg_atom, IMAPProtocol.arg_rest
    )

    async def _login(self, credentials: sasl.Credentials) -> None:
        if self.portal is None:
            raise no(b"Temporary authentication failure", b"UNAVAILABLE")
        try:
            result = await auth.login(
                self.portal, imap4.IAccount, credentials, service="imap", peer_ip=self.peer
            )
        except auth.LoginFailed:
            raise no(b"Authentication failed", b"AUTHENTICATIONFAILED") from None
        except auth.LoginBlocked:
            # RFC 5530 §3: UNAVAILABLE, a temporary failure (the failed-login throttle).
            raise no(b"Too many failed logins, try again later", b"UNAVAILABLE") from None
        except auth.LoginUnavailable:
            raise no(b"Temporary authentication failure", b"UNAVAILABLE") from None
        avatar: MaildirAccount = result.avatar  # the realm's IAccount avatar
        logout, address = result.logout, result.address
        if self._lost:  # the client left during the check: no slot nobody would release
            logout()
            raise ConnectionGone()
        if self.user_limit is not None:
            granted = self.user_limit.acquire(address, self.peer)
            if not isinstance(granted, bool):  # [server] workers: the parent counts
                granted = await granted
                if granted and self._lost:
                    self.user_limit.release(address, self.peer)
                if self._lost:
                    logout()
                    raise ConnectionGone()
            if not granted:
                logout()
                # RFC 5530 §3: UNAVAILABLE; as Dovecot's mail_max_userip_connections.
                raise no(b"Maximum number of connections from user+IP exceeded", b"UNAVAILABLE")
            self._user_slot = (address, self.peer)
        try:
            await avatar.prepare()  # INBOX, and the special-use folders on first login
        except Exception:
            log.failure("imap folder setup failed session={session}", session=self.session)
        if self._lost:  # the close gave the slot back; log out here, start no timer
            logout()
            raise ConnectionGone()
        self.user = address
        self.account = avatar
        self._onLogout = logout
        self.state = "auth"
        self.setTimeout(self.POSTAUTH_TIMEOUT)

    def arg_id_params(self, line: bytes) -> tuple[list[Any] | None, bytes]:
        """RFC 2971 §4: C{NIL} or a list of string pairs."""
        if (line or b"")[:3].upper() == b"NIL":
            return None, line[3:].lstrip(b" ")
        if (line or b"")[:1] != b"(":
            raise imap4.IllegalClientResponse("NIL or a parameter list expected")
        inner, rest = paren_group(line)
        params = imap4.parseNestedParens(inner)
        if len(params) % 2 or len(params) > 2 * ID_FIELDS:
            raise imap4.IllegalClientResponse("Bad ID parameter list")
        return params, rest

    def do_ID(self, tag: bytes, params: list[Any] | None) -> bytes:
        """RFC 2971: log what the client says it is; say what we are."""
        if params:
            fields = {
                safe_text(k.decode("utf-8", "replace"))[:30].lower(): safe_text(
                    v.decode("utf-8", "replace")
                )[:60]
                for k, v in zip(params[::2], params[1::2], strict=True)
                if isinstance(k, bytes) and isinstance(v, bytes)
            }
            log.info(
                "imap id session={session} name={name} version={version}",
                session=self.session,
                name=fields.get(b"name", b"-").decode(),
                version=fields.get(b"version", b"-").decode(),
            )
        self.sendLine(b'* ID ("name" "twistedmail")')
        return b"ID completed"

    unauth_ID = command(do_ID, arg_id_params)
    auth_ID = unauth_ID
    select_ID = unauth_ID

    def do_ENABLE(self, tag: bytes, names: bytes) -> bytes:
        """RFC 5161 §3.1: answer C{* ENABLED} with the capabilities turned on by this
        command (only ones in L{ENABLEABLE}; in the authenticated state only)."""
        asked = [n.upper() for n in names.split(b" ")]
        # RFC 5161 §4: enable = "ENABLE" 1*(SP capability); a capability is an atom
        if not names or not all(asked) or any(_ATOM_SPECIALS.intersection(n) for n in asked):
            raise bad(b"Capability names expected")
        turned_on = [n for n in dict.fromkeys(asked) if n in ENABLEABLE and n not in self.enabled]
        self.enabled |= set(turned_on)
        if b"QRESYNC" in self.enabled:
            self.enabled |= {b"CONDSTORE"}  # RFC 7162 §3.2.3: QRESYNC implies CONDSTORE
        self.sendLine(b" ".join([b"* ENABLED"] + turned_on))
        return b"ENABLE completed"

    auth_ENABLE = command(do_ENABLE, IMAPProtocol.arg_rest_required)
