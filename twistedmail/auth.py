"""One login path for SMTP AUTH, IMAP and POP3: L{login}, a twisted.cred checker and realm.

Every protocol logs in the same way: its login command or SASL exchange
(L{twistedmail.sasl}) gives L{twistedmail.sasl.Credentials}, and L{login} runs the portal
(the checker, with the failed-login throttle in it), writes the one log line and turns the
outcome into L{LoginResult} or one of L{LoginFailed}, L{LoginBlocked}, L{LoginUnavailable},
which each protocol renders as its own reply.

The checker verifies a login name (the full address, RFC 4954 §4 authcid) and password
against L{twistedmail.accounts.AccountStore}; the hash check runs in a thread because it takes
tens to hundreds of milliseconds (DESIGN §4).  A successful login with an old-scheme hash is
rehashed to the default (argon2id).  The realm builds the protocol's avatar from factories the
service layer supplies, so this module never imports a protocol package.

Issue 10: at most C{max_parallel_hashes} hash computations run at once (a
C{DeferredSemaphore} around the thread: each argon2id hash holds 64 MiB, so a burst of logins
no longer fills the thread pool with them), and L{AuthCache}, like Dovecot's C{auth_cache},
remembers successful logins for C{[auth] cache_ttl}: keyed by HMAC-SHA256 of the address and
password under a per-process random secret (the password itself is never kept), it holds the
password hash the login was verified against, so a hit counts only while the store still
holds that hash: a password changed or a user deleted by the CLI -- from any process, as
any user -- refuses the old password at the next login.  The CLI also flushes the user's
entries over the control socket (L{twistedmail.control}).  Failures are never cached (the
throttle counts them as before).
"""

from __future__ import annotations

import hashlib
import hmac
import os
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any

import attrs
from twisted.cred.checkers import ICredentialsChecker
from twisted.cred.credentials import IUsernamePassword, UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import IRealm, Portal
from twisted.internet.defer import Deferred, DeferredSemaphore
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from zope.interface import Interface, implementer

from twistedmail import metrics, passwords, sasl
from twistedmail.accounts import AccountStore
from twistedmail.address import AddressError, Mailbox
from twistedmail.throttle import LoginBlocked, LoginThrottle

__all__ = [
    "AuthCache",
    "ClientCredentials",
    "LoginBlocked",
    "LoginFailed",
    "LoginResult",
    "LoginThrottle",
    "LoginUnavailable",
    "MailRealm",
    "PasswordChecker",
    "RunInThread",
    "log_login",
    "login",
    "refused",
]

log = Logger(namespace="twistedmail.auth")

RunInThread = Callable[..., "Deferred[Any]"]
"""C{run(f, *args)} -> Deferred firing with C{f(*args)}, computed off the reactor thread."""

MAX_CREDENTIAL_LENGTH = sasl.MAX_FIELD_LENGTH
CACHE_SIZE = 10_000  # successful logins remembered ([auth] cache_size), least recent dropped


@attrs.frozen
class _CachedLogin:
    address: str
    password_hash: str  # the stored hash the password was verified against
    expires: float  # clock seconds


class AuthCache:
    """Successful logins for C{ttl} seconds, at most C{size} of them (least recently used
    dropped first), like Dovecot's C{auth_cache}.

    The key is HMAC-SHA256(secret, address NUL password) with a random secret made per
    process, so neither the password nor a hash an attacker could test offline stays in
    memory.  An entry also holds the stored password hash the login was verified against:
    L{check} counts it only while the store still holds the same hash.

    @param clock: where the time comes from (the reactor; a C{Clock} in tests).
    @param ttl: seconds an entry lives (> 0).
    @param secret: the HMAC key; random (32 octets) unless given (tests).
    """

    def __init__(
        self, clock: IReactorTime, ttl: float, size: int = CACHE_SIZE, secret: bytes | None = None
    ) -> None:
        self.clock = clock
        self.ttl = ttl
        self.size = size
        self._secret = secret if secret is not None else os.urandom(32)
        self._entries: OrderedDict[bytes, _CachedLogin] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def _key(self, address: str, password: str) -> bytes:
        message = address.encode("utf-8") + b"\0" + password.encode("utf-8")
        return hmac.new(self._secret, message, hashlib.sha256).digest()

    def check(self, address: str, password: str, stored: str) -> bool:
        """Whether C{address} logged in with C{password} less than C{ttl} ago, verified
        against C{stored} (the hash the store holds now); an expired entry, or one verified
        against another hash, is dropped."""
        key = self._key(address, password)
        entry = self._entries.get(key)
        if entry is None:
            return False
        if (
            entry.expires <= self.clock.seconds()
            or entry.address != address
            or not hmac.compare_digest(entry.password_hash, stored)
        ):
            del self._entries[key]
            return False
        self._entries.move_to_end(key)
        return True

    def add(self, address: str, password: str, stored: str) -> None:
        """Remember that C{password} logged C{address} in, verified against C{stored}."""
        key = self._key(address, password)
        self._entries[key] = _CachedLogin(address, stored, self.clock.seconds() + self.ttl)
        self._entries.move_to_end(key)
        while len(self._entries) > self.size:
            self._entries.popitem(last=False)

    def flush(self, address: str | None = None) -> int:
        """Forget the logins of C{address} (every login when C{None}); return how many."""
        if address is None:
            count = len(self._entries)
            self._entries.clear()
            return count
        doomed = [k for k, e in self._entries.items() if e.address == address]
        for key in doomed:
            del self._entries[key]
        return len(doomed)


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
    throttle's delay for their (IP, account) first, and L{LoginBlocked} (not an
    C{UnauthorizedLogin}) refuses them while blocked (L{twistedmail.throttle}); the outcome
    is counted.

    @param throttle: the failed-login throttle shared by every protocol, or C{None}.
    @param cache: successful logins to remember (L{AuthCache}), or C{None} for none.
    @param max_parallel_hashes: how many password hashes (verifications and rehashes) may
        run at once; the others wait their turn.  Default: the number of CPUs.
    """

    credentialInterfaces = (IUsernamePassword,)

    def __init__(
        self,
        store: AccountStore,
        run_in_thread: RunInThread,
        throttle: LoginThrottle | None = None,
        *,
        cache: AuthCache | None = None,
        max_parallel_hashes: int | None = None,
        metrics: metrics.Metrics | None = None,
    ) -> None:
        self.metrics = metrics  # counts logins (L{login}: C{metrics.of(checker)})
        self.store = store
        self.run_in_thread = run_in_thread
        self.throttle = throttle
        self.cache = cache
        self.hashes = DeferredSemaphore(max_parallel_hashes or os.cpu_count() or 1)

    async def _hash(self, f: Callable[..., Any], *args: Any) -> Any:
        """C{f(*args)} in a thread, once fewer than C{max_parallel_hashes} are running."""
        return await self.hashes.run(self.run_in_thread, f, *args)

    # ICredentialsChecker types avatar IDs as bytes (or ANONYMOUS); ours are the account's
    # address as str, which Portal hands to our realm untouched.
    def requestAvatarId(  # type: ignore[override]
        self, credentials: IUsernamePassword
    ) -> Deferred[str]:
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
        ip = getattr(credentials, "peer_ip", None)
        if stored is not None and self.cache is not None:
            if self.cache.check(address, password, stored):
                if self.throttle is not None and isinstance(ip, str):
                    self.throttle.succeeded(ip, address)
                return address
        # Verify against a dummy hash for unknown users, so timing does not tell them apart.
        ok = await self._hash(passwords.verify, password, stored or _DUMMY_HASH)
        if not ok or stored is None:
            raise UnauthorizedLogin("bad credentials")
        if self.throttle is not None and isinstance(ip, str):
            self.throttle.succeeded(ip, address)
        if passwords.needs_rehash(stored):
            fresh = await self._hash(passwords.hash_password, password)
            # Only if nobody changed it meanwhile (the CLI, while the hashes ran).
            if self.store.password_hash(address) == stored:
                self.store.set_password_hash(address, fresh)
                log.info("rehashed password of {user} to the default scheme", user=address)
                stored = fresh
        if self.cache is not None:
            self.cache.add(address, password, stored)
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
            "login ok: service={service} user={user} ip={ip}",
            service=service,
            user=user,
            ip=peer,
            outcome="ok",
        )
    else:
        log.warn(
            "login failed: service={service} user={user} ip={ip}",
            service=service,
            user=user,
            ip=peer,
            outcome="failed",
        )


class LoginFailed(Exception):
    """Wrong password, unknown user or malformed credentials (the reply never says which):
    SMTP C{535 5.7.8}, IMAP C{NO [AUTHENTICATIONFAILED]}, POP3 C{-ERR [AUTH]}."""


class LoginUnavailable(Exception):
    """The login could not be checked (an unexpected error, logged): SMTP C{454 4.7.0},
    IMAP C{NO [UNAVAILABLE]}, POP3 C{-ERR [SYS/TEMP]}."""


@attrs.frozen
class LoginResult:
    """A successful login.

    @ivar address: the normalised address logged in as (the avatar ID).
    @ivar avatar: what the realm built for the protocol's interface.
    @ivar logout: call when the session ends (or when the protocol refuses it after all).
    """

    address: str
    avatar: Any
    logout: Callable[[], None]


async def login(
    portal: Portal,
    interface: type[Interface],
    credentials: sasl.Credentials,
    *,
    service: str,
    peer_ip: str,
) -> LoginResult:
    """Log in with C{credentials} from C{peer_ip}: the one login path of every protocol.

    The portal's checker (L{PasswordChecker}) waits out the failed-login throttle's delay
    for C{peer_ip} and this account, refuses a blocked login, checks the password in a
    thread and counts the outcome; then the realm builds the avatar for C{interface}.
    One log line is written (L{log_login}), whatever the outcome.

    @param service: C{"smtp"}, C{"imap"}, C{"pop3"}: the C{service=} of the log line.
    @raise LoginFailed: bad credentials.
    @raise LoginBlocked: refused by the throttle, without a password check.
    @raise LoginUnavailable: an unexpected error (logged with its traceback).
    """
    user = credentials.authcid
    count = metrics.of(getattr(portal, "checkers", {}).get(IUsernamePassword)).login
    try:
        _, avatar, logout = await portal.login(
            ClientCredentials(user.encode("utf-8"), credentials.password.encode("utf-8"), peer_ip),
            None,
            interface,
        )
    except UnauthorizedLogin:
        log_login(service, user, peer_ip, False)
        count(service, "failed")
        raise LoginFailed() from None
    except LoginBlocked:
        log_login(service, user, peer_ip, False)
        count(service, "throttled")
        raise
    except Exception:
        log.failure("{service} login of {user} failed unexpectedly", service=service, user=user)
        count(service, "error")
        raise LoginUnavailable() from None
    log_login(service, user, peer_ip, True)
    count(service, "ok")
    address = getattr(avatar, "address", None)
    if not isinstance(address, str):
        try:
            address = str(Mailbox.parse(user))
        except AddressError:
            address = user
    return LoginResult(address, avatar, logout)


def refused(service: str, error: sasl.Malformed, peer_ip: str) -> None:
    """Log a login refused for malformed credentials (L{twistedmail.sasl.Malformed}): the
    same C{login failed} line as a wrong password, not counted by the throttle."""
    log_login(service, error.user, peer_ip, False)
