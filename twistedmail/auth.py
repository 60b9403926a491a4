"""One login path for SMTP AUTH, IMAP and POP3: a twisted.cred checker and realm.

The checker verifies a login name (the full address, RFC 4954 §4 authcid) and password
against L{twistedmail.accounts.AccountStore}; the hash check runs in a thread because it takes
tens to hundreds of milliseconds (DESIGN §4).  A successful login with an old-scheme hash is
rehashed to the default (argon2id).  The realm builds the protocol's avatar from factories the
service layer supplies, so this module never imports a protocol package.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm
from twisted.internet.defer import Deferred
from twisted.logger import Logger
from zope.interface import Interface, implementer

from twistedmail import passwords
from twistedmail.accounts import AccountStore
from twistedmail.address import AddressError, Mailbox
from twistedmail.throttle import LoginBlocked, LoginThrottle

__all__ = [
    "ClientCredentials",
    "LoginBlocked",
    "LoginThrottle",
    "MailRealm",
    "PasswordChecker",
    "RunInThread",
    "log_login",
]

log = Logger(namespace="twistedmail.auth")

RunInThread = Callable[..., "Deferred[Any]"]
"""C{run(f, *args)} -> Deferred firing with C{f(*args)}, computed off the reactor thread."""

MAX_CREDENTIAL_LENGTH = 1024


def _text(value: bytes | str) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value


@implementer(IUsernamePassword)
class ClientCredentials(UsernamePassword):
    """C{UsernamePassword} that also says where the login comes from, for the throttle.

    @param username: the login name as sent (bytes or str).
    @param password: the password as sent (bytes or str).
    @param peer_ip: the client's IP address, text (C{"192.0.2.7"}, C{"2001:db8::1"}).
    """

    def __init__(self, username: bytes, password: bytes, peer_ip: str) -> None:
        super().__init__(username, password)
        self.peer_ip = peer_ip


@implementer(ICredentialsChecker)
class PasswordChecker:
    """C{ICredentialsChecker} for C{IUsernamePassword} against the account store.

    The avatar ID is the normalised address (C{str}), e.g. C{"alice@example.test"}.
    Errors: L{UnauthorizedLogin} for an unknown user, a wrong password or malformed input;
    the message never says which.  With a C{throttle}, L{ClientCredentials} logins wait the
    throttle's delay for their IP first, and L{LoginBlocked} (not an C{UnauthorizedLogin})
    refuses them while the IP or account is blocked; the outcome is counted.

    @param throttle: the failed-login throttle shared by every protocol, or C{None}.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        store: AccountStore,
        run_in_thread: RunInThread,
        throttle: LoginThrottle | None = None,
    ) -> None:
        self.store = store
        self.run_in_thread = run_in_thread
        self.throttle = throttle

    def requestAvatarId(self, credentials: IUsernamePassword) -> Deferred[str]:
        return Deferred.fromCoroutine(self._check(credentials))

    async def _check(self, credentials: IUsernamePassword) -> str:
        ip = getattr(credentials, "peer_ip", None)
        throttle = self.throttle if isinstance(ip, str) else None
        raw = credentials.username
        user = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else str(raw)
        try:
            address = str(Mailbox.parse(user))
        except AddressError:
            address = user
        if throttle is not None:
            assert ip is not None
            await throttle.admit(ip, address)
        try:
            return await self._verify(credentials)
        except UnauthorizedLogin:
            if throttle is not None:
                assert ip is not None
                throttle.failed(ip, address)
            raise

    async def _verify(self, credentials: IUsernamePassword) -> str:
        try:
            username = _text(credentials.username)
            password = _text(credentials.password)
            address = str(Mailbox.parse(username))
        except (UnicodeError, AddressError):
            raise UnauthorizedLogin("bad credentials") from None
        if len(username) > MAX_CREDENTIAL_LENGTH or len(password) > MAX_CREDENTIAL_LENGTH:
            raise UnauthorizedLogin("bad credentials")
        stored = self.store.password_hash(address)
        # Verify against a dummy hash for unknown users, so timing does not tell them apart.
        ok = await self.run_in_thread(passwords.verify, password, stored or _DUMMY_HASH)
        if not ok or stored is None:
            raise UnauthorizedLogin("bad credentials")
        ip = getattr(credentials, "peer_ip", None)
        if self.throttle is not None and isinstance(ip, str):
            self.throttle.succeeded(ip, address)
        if passwords.needs_rehash(stored):
            fresh = await self.run_in_thread(passwords.hash_password, password)
            self.store.set_password_hash(address, fresh)
            log.info("rehashed password of {user} to the default scheme", user=address)
        return address


_DUMMY_HASH = passwords.hash_password("twistedmail-dummy-password-for-timing")


@implementer(IRealm)
class MailRealm:
    """C{IRealm}: builds the avatar a protocol asks for from C{factories}.

    @param factories: interface -> callable(avatar_id) returning the avatar; an avatar with a
        C{logout()} method has it called when the session ends.
    """

    def __init__(self, factories: Mapping[type[Interface], Callable[[Any], object]]) -> None:
        self.factories = factories

    def requestAvatar(
        self, avatarId: Any, mind: object, *interfaces: type[Interface]
    ) -> tuple[type[Interface], object, Callable[[], None]]:
        for iface in interfaces:
            factory = self.factories.get(iface)
            if factory is not None:
                avatar = factory(avatarId)
                return iface, avatar, getattr(avatar, "logout", lambda: None)
        raise NotImplementedError("no avatar for the requested interfaces")


def log_login(service: str, username: object, peer: str, ok: bool) -> None:
    """One log line per login attempt, for every protocol (never the password).

    Format (stable, for fail2ban): C{login ok: service=imap user=alice@example.test
    ip=192.0.2.7} / C{login failed: ...}; the IP is always last.  The user name comes from
    the network: unprintable characters and white space become C{?} (so a name such as
    C{"x ip=192.0.2.1"} cannot plant a second C{ip=} for fail2ban), and it is cut at 256.
    """
    user = username.decode("utf-8", "replace") if isinstance(username, bytes) else str(username)
    user = "".join(c if c.isprintable() and not c.isspace() else "?" for c in user)[:256]
    if ok:
        log.info(
            "login ok: service={service} user={user} ip={ip}", service=service, user=user, ip=peer
        )
    else:
        log.warn(
            "login failed: service={service} user={user} ip={ip}",
            service=service,
            user=user,
            ip=peer,
        )
