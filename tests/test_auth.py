"""Tests for L{twistedmail.auth}: the password checker, the realm and the login log line."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import bcrypt
from twisted.cred.credentials import UsernamePassword
from twisted.cred.error import UnauthorizedLogin
from twisted.cred.portal import Portal
from twisted.internet import defer
from twisted.internet.task import Clock
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest
from zope.interface import Interface

from twistedmail import passwords
from twistedmail.accounts import AccountStore
from twistedmail.auth import AuthCache, ClientCredentials, MailRealm, PasswordChecker, log_login
from twistedmail.throttle import LoginThrottle

PASSWORD = "s3cret pässword"


class IMailService(Interface):
    """An avatar interface a protocol would ask for."""


class IOtherService(Interface):
    """Another one."""


class SyncThread:
    """A synchronous C{run_in_thread}: runs C{f} at once, records what ran."""

    def __init__(self) -> None:
        self.calls: list[str] = []

    def __call__(self, f: Any, *args: Any) -> defer.Deferred[Any]:
        self.calls.append(f.__name__)
        return defer.succeed(f(*args))


class CheckerTests(unittest.TestCase):
    def setUp(self) -> None:
        d = Path(self.mktemp())
        d.mkdir()
        self.store = AccountStore(d / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        self.store.add_user("alice@example.org", passwords.hash_password(PASSWORD))
        self.thread = SyncThread()
        self.checker = PasswordChecker(self.store, self.thread)

    def login(self, username: bytes | str, password: bytes | str) -> Any:
        d = self.checker.requestAvatarId(UsernamePassword(username, password))  # type: ignore[arg-type]
        return self.successResultOf(d)

    def refused(self, username: bytes | str, password: bytes | str) -> None:
        d = self.checker.requestAvatarId(UsernamePassword(username, password))  # type: ignore[arg-type]
        failure = self.failureResultOf(d, UnauthorizedLogin)
        self.assertEqual(str(failure.value), "bad credentials")  # never says which part

    def test_right_password(self) -> None:
        """The avatar ID is the normalised address; the hash check ran via run_in_thread."""
        self.assertEqual(self.login("alice@example.org", PASSWORD), "alice@example.org")
        self.assertEqual(self.thread.calls, ["verify"])

    def test_case_insensitive_login_name(self) -> None:
        """The login name is case-blind; the avatar id is the stored lower-case address."""
        self.assertEqual(self.login("Alice@EXAMPLE.org", PASSWORD), "alice@example.org")

    def test_bytes_credentials(self) -> None:
        """IMAP and POP3 pass bytes (UTF-8)."""
        self.assertEqual(self.login(b"alice@example.org", PASSWORD.encode()), "alice@example.org")

    def test_wrong_password(self) -> None:
        """A wrong, empty or differently-cased password is refused."""
        self.refused("alice@example.org", "wrong")
        self.refused("alice@example.org", "")
        self.refused("alice@example.org", PASSWORD.upper())

    def test_unknown_user_still_hashes(self) -> None:
        """An unknown user costs a hash check too, so timing does not reveal valid names."""
        self.refused("bob@example.org", PASSWORD)
        self.assertEqual(self.thread.calls, ["verify"])

    def test_malformed(self) -> None:
        """A login name that is no address or not UTF-8, a password that is not UTF-8 or over
        1024 characters, is refused without a hash check."""
        self.refused("alice", PASSWORD)
        self.refused("", PASSWORD)
        self.refused(b"alice@example.org\xff", PASSWORD)
        self.refused("alice@example.org", b"\xff\xfe")
        self.refused("alice@example.org", "x" * 1025)
        self.assertEqual(self.thread.calls, [])

    def test_rehash_bcrypt_on_login(self) -> None:
        """A bcrypt hash (imported from Dovecot) becomes argon2id at the first good login."""
        old = "{BLF-CRYPT}" + bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        self.store.set_password_hash("alice@example.org", old)
        self.refused("alice@example.org", "wrong")
        self.assertEqual(self.store.password_hash("alice@example.org"), old)
        self.thread.calls.clear()
        self.assertEqual(self.login("alice@example.org", PASSWORD), "alice@example.org")
        self.assertEqual(self.thread.calls, ["verify", "hash_password"])
        fresh = self.store.password_hash("alice@example.org")
        assert fresh is not None
        self.assertTrue(fresh.startswith("$argon2id$"))
        self.assertTrue(passwords.verify(PASSWORD, fresh))
        self.assertEqual(self.login("alice@example.org", PASSWORD), "alice@example.org")

    def test_old_argon2_parameters_rehashed(self) -> None:
        """A hash with the earlier default (p=4) logs in and is replaced by m=65536,t=3,p=1."""
        from argon2 import PasswordHasher, Type

        old = PasswordHasher(time_cost=3, memory_cost=65536, parallelism=4, type=Type.ID)
        self.store.set_password_hash("alice@example.org", old.hash(PASSWORD))
        self.assertEqual(self.login("alice@example.org", PASSWORD), "alice@example.org")
        self.assertEqual(self.thread.calls, ["verify", "hash_password"])
        fresh = self.store.password_hash("alice@example.org")
        assert fresh is not None
        self.assertIn("$m=65536,t=3,p=1$", fresh)
        self.assertTrue(passwords.verify(PASSWORD, fresh))

    def test_no_rehash_when_current(self) -> None:
        """A login with a current hash verifies once and does not rewrite it."""
        before = self.store.password_hash("alice@example.org")
        self.login("alice@example.org", PASSWORD)
        self.assertEqual(self.store.password_hash("alice@example.org"), before)
        self.assertEqual(self.thread.calls, ["verify"])

    def test_password_change_seen_at_once(self) -> None:
        """A password changed in the store applies to the next login."""
        self.store.set_password_hash("alice@example.org", passwords.hash_password("new"))
        self.refused("alice@example.org", PASSWORD)
        self.assertEqual(self.login("alice@example.org", "new"), "alice@example.org")

    def test_deferred_thread(self) -> None:
        """With a real (asynchronous) run_in_thread the result comes when the thread is done."""
        pending: list[defer.Deferred[Any]] = []
        results: list[Any] = []

        def later(f: Any, *args: Any) -> defer.Deferred[Any]:
            d: defer.Deferred[Any] = defer.Deferred()
            pending.append(d)
            results.append(f(*args))
            return d

        checker = PasswordChecker(self.store, later)
        d = checker.requestAvatarId(UsernamePassword(b"alice@example.org", PASSWORD.encode()))
        self.assertNoResult(d)
        pending[0].callback(results[0])
        self.assertEqual(self.successResultOf(d), "alice@example.org")


class AuthCacheTests(unittest.TestCase):
    """L{AuthCache} alone: Dovecot's auth_cache, with the verified hash in each entry."""

    def setUp(self) -> None:
        self.clock = Clock()
        self.cache = AuthCache(self.clock, ttl=300, size=3)

    def test_hit(self) -> None:
        """A login added is found with the same password and the same stored hash."""
        self.cache.add("alice@example.org", "pw", "HASH")
        self.assertTrue(self.cache.check("alice@example.org", "pw", "HASH"))

    def test_miss(self) -> None:
        """Another password, another user, or nothing added: no hit."""
        self.assertFalse(self.cache.check("alice@example.org", "pw", "HASH"))
        self.cache.add("alice@example.org", "pw", "HASH")
        self.assertFalse(self.cache.check("alice@example.org", "pw2", "HASH"))
        self.assertFalse(self.cache.check("bob@example.org", "pw", "HASH"))
        self.assertFalse(self.cache.check("alice@example.org", "PW", "HASH"))

    def test_ttl(self) -> None:
        """An entry counts until C{ttl} seconds after it was added, then is dropped."""
        self.cache.add("alice@example.org", "pw", "HASH")
        self.clock.advance(299)
        self.assertTrue(self.cache.check("alice@example.org", "pw", "HASH"))
        self.clock.advance(1)
        self.assertFalse(self.cache.check("alice@example.org", "pw", "HASH"))
        self.assertEqual(len(self.cache), 0)

    def test_other_hash(self) -> None:
        """A login verified against another hash than the store holds now does not count
        (the password was changed) and is dropped."""
        self.cache.add("alice@example.org", "pw", "OLD")
        self.assertFalse(self.cache.check("alice@example.org", "pw", "NEW"))
        self.assertFalse(self.cache.check("alice@example.org", "pw", "OLD"))

    def test_flush_user(self) -> None:
        """flush(user) forgets that user's logins, every password, and only theirs."""
        self.cache.add("alice@example.org", "pw", "HASH")
        self.cache.add("alice@example.org", "other", "HASH")
        self.cache.add("bob@example.org", "pw", "HASH2")
        self.assertEqual(self.cache.flush("alice@example.org"), 2)
        self.assertFalse(self.cache.check("alice@example.org", "pw", "HASH"))
        self.assertTrue(self.cache.check("bob@example.org", "pw", "HASH2"))
        self.assertEqual(self.cache.flush("nobody@example.org"), 0)
        self.assertEqual(self.cache.flush(), 1)
        self.assertEqual(len(self.cache), 0)

    def test_least_recently_used_dropped(self) -> None:
        """Past C{size} entries the least recently used one goes."""
        for user in ("a", "b", "c"):
            self.cache.add(f"{user}@example.org", "pw", "H")
        self.assertTrue(self.cache.check("a@example.org", "pw", "H"))  # a is used again
        self.cache.add("d@example.org", "pw", "H")
        self.assertEqual(len(self.cache), 3)
        self.assertFalse(self.cache.check("b@example.org", "pw", "H"))
        for user in ("a", "c", "d"):
            self.assertTrue(self.cache.check(f"{user}@example.org", "pw", "H"))

    def test_keyed_by_hmac(self) -> None:
        """The key is HMAC-SHA256(secret, user NUL password): the password is not kept and
        another process (another secret) makes other keys."""
        import hashlib
        import hmac

        cache = AuthCache(self.clock, 300, secret=b"k" * 32)
        cache.add("alice@example.org", "pw", "HASH")
        expected = hmac.new(b"k" * 32, b"alice@example.org\0pw", hashlib.sha256).digest()
        self.assertEqual(list(cache._entries), [expected])
        self.assertNotIn(b"pw", b"".join(cache._entries))
        self.assertNotEqual(AuthCache(self.clock, 300)._key("a", "b"), cache._key("a", "b"))


class CachedCheckerTests(unittest.TestCase):
    """L{PasswordChecker} with an L{AuthCache}: successes skip the hash, nothing else does."""

    def setUp(self) -> None:
        d = Path(self.mktemp())
        d.mkdir()
        self.store = AccountStore(d / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        self.store.add_user("alice@example.org", passwords.hash_password(PASSWORD))
        self.thread = SyncThread()
        self.clock = Clock()
        self.clock.advance(1_000_000)
        self.cache = AuthCache(self.clock, ttl=300)
        self.throttle = LoginThrottle(self.clock)
        self.checker = PasswordChecker(self.store, self.thread, self.throttle, cache=self.cache)

    def attempt(self, password: str, user: str = "alice@example.org") -> defer.Deferred[str]:
        """One login from 192.0.2.7, the throttle's delay (if any) waited out."""
        d = self.checker.requestAvatarId(
            ClientCredentials(user.encode(), password.encode(), "192.0.2.7")
        )
        self.clock.advance(16)
        return d

    def test_second_login_skips_the_hash(self) -> None:
        """A returning user with the same password is not verified again within the TTL."""
        self.assertEqual(self.successResultOf(self.attempt(PASSWORD)), "alice@example.org")
        self.assertEqual(self.successResultOf(self.attempt(PASSWORD)), "alice@example.org")
        self.assertEqual(self.thread.calls, ["verify"])
        self.clock.advance(300)
        self.assertEqual(self.successResultOf(self.attempt(PASSWORD)), "alice@example.org")
        self.assertEqual(self.thread.calls, ["verify", "verify"])

    def test_case_of_the_address(self) -> None:
        """The cache is keyed by the normalised address, as the store is."""
        self.successResultOf(self.attempt(PASSWORD))
        self.assertEqual(
            self.successResultOf(self.attempt(PASSWORD, "Alice@Example.ORG")), "alice@example.org"
        )
        self.assertEqual(self.thread.calls, ["verify"])

    def test_failures_not_cached(self) -> None:
        """Every wrong password is verified and counted by the throttle, cache or not."""
        self.successResultOf(self.attempt(PASSWORD))
        self.failureResultOf(self.attempt("wrong"), UnauthorizedLogin)
        self.failureResultOf(self.attempt("wrong"), UnauthorizedLogin)
        self.assertEqual(self.thread.calls, ["verify"] * 3)
        self.assertEqual(len(self.cache), 1)
        self.assertEqual(self.throttle.delay_for("192.0.2.7", "alice@example.org"), 2)

    def test_password_change(self) -> None:
        """After the store's hash changes, the cached old password is refused at once."""
        self.successResultOf(self.attempt(PASSWORD))
        self.store.set_password_hash("alice@example.org", passwords.hash_password("new"))
        self.failureResultOf(self.attempt(PASSWORD), UnauthorizedLogin)
        self.assertEqual(self.successResultOf(self.attempt("new")), "alice@example.org")

    def test_deleted_user(self) -> None:
        """A deleted user's cached login is refused."""
        self.successResultOf(self.attempt(PASSWORD))
        self.store.delete_user("alice@example.org")
        self.failureResultOf(self.attempt(PASSWORD), UnauthorizedLogin)

    def test_rehashed_login_cached_with_the_fresh_hash(self) -> None:
        """A login that rehashed an old hash caches the new one: the next login is a hit."""
        old = bcrypt.hashpw(PASSWORD.encode(), bcrypt.gensalt(rounds=4)).decode()
        self.store.set_password_hash("alice@example.org", old)
        self.successResultOf(self.attempt(PASSWORD))
        self.successResultOf(self.attempt(PASSWORD))
        self.assertEqual(self.thread.calls, ["verify", "hash_password"])


class ParallelHashTests(unittest.TestCase):
    """At most C{max_parallel_hashes} hashes run at once; the rest wait their turn."""

    def test_bound(self) -> None:
        """Ten logins at once with a bound of 2: two in the thread at a time, all answered."""
        d = Path(self.mktemp())
        d.mkdir()
        store = AccountStore(d / "accounts.sqlite3")
        self.addCleanup(store.close)
        store.add_user("alice@example.org", passwords.hash_password(PASSWORD))
        running: list[tuple[defer.Deferred[Any], Any]] = []
        most = 0

        def thread(f: Any, *args: Any) -> defer.Deferred[Any]:
            nonlocal most
            d: defer.Deferred[Any] = defer.Deferred()
            running.append((d, f(*args)))
            most = max(most, len(running))
            return d

        checker = PasswordChecker(store, thread, max_parallel_hashes=2)
        logins = [
            checker.requestAvatarId(UsernamePassword(b"alice@example.org", PASSWORD.encode()))
            for _ in range(10)
        ]
        self.assertEqual(len(running), 2)
        while running:
            d, result = running.pop(0)
            d.callback(result)
        self.assertEqual(most, 2)
        self.assertEqual([self.successResultOf(d) for d in logins], ["alice@example.org"] * 10)


class Avatar:
    def __init__(self, avatar_id: str) -> None:
        self.avatar_id = avatar_id
        self.logged_out = False

    def logout(self) -> None:
        self.logged_out = True


class RealmTests(unittest.TestCase):
    def test_requested_interface(self) -> None:
        """The realm builds the avatar for the asked interface, and logout calls its logout."""
        realm = MailRealm({IMailService: Avatar})
        iface, avatar, logout = realm.requestAvatar("alice@example.org", None, IMailService)
        self.assertIs(iface, IMailService)
        assert isinstance(avatar, Avatar)
        self.assertEqual(avatar.avatar_id, "alice@example.org")
        logout()
        self.assertTrue(avatar.logged_out)

    def test_first_known_interface(self) -> None:
        """Of several asked interfaces the realm serves the first it knows."""
        realm = MailRealm({IMailService: Avatar, IOtherService: Avatar})
        iface, _, _ = realm.requestAvatar(
            "a@example.org", None, Interface, IOtherService, IMailService
        )
        self.assertIs(iface, IOtherService)

    def test_no_logout_method(self) -> None:
        """An avatar without a logout method gets a logout that does nothing."""
        realm = MailRealm({IMailService: lambda avatar_id: object()})
        _, _, logout = realm.requestAvatar("a@example.org", None, IMailService)
        logout()  # nothing to call, no error

    def test_unknown_interface(self) -> None:
        """An interface the realm does not serve raises NotImplementedError."""
        realm = MailRealm({IMailService: Avatar})
        self.assertRaises(NotImplementedError, realm.requestAvatar, "a", None, IOtherService)

    def test_portal(self) -> None:
        """The checker and realm together, as every protocol logs in."""
        d = Path(self.mktemp())
        d.mkdir()
        store = AccountStore(d / "accounts.sqlite3")
        self.addCleanup(store.close)
        store.add_user("alice@example.org", passwords.hash_password("pw"))
        portal = Portal(MailRealm({IMailService: Avatar}), [PasswordChecker(store, SyncThread())])
        iface, avatar, logout = self.successResultOf(
            portal.login(UsernamePassword(b"alice@example.org", b"pw"), None, IMailService)
        )
        self.assertEqual((iface, avatar.avatar_id), (IMailService, "alice@example.org"))
        self.failureResultOf(
            portal.login(UsernamePassword(b"alice@example.org", b"no"), None, IMailService),
            UnauthorizedLogin,
        )


class LogLoginTests(unittest.TestCase):
    def test_lines(self) -> None:
        """log_login writes one 'login ok' or 'login failed' line with service, user and IP."""
        with capturedLogs() as events:
            log_login("imap", b"alice@example.org", "192.0.2.7", True)
            log_login("pop3", "bob@example.org", "2001:db8::1", False)
        self.assertEqual(
            [formatEvent(e) for e in events],
            [
                "login ok: service=imap user=alice@example.org ip=192.0.2.7",
                "login failed: service=pop3 user=bob@example.org ip=2001:db8::1",
            ],
        )
        self.assertEqual([e["log_namespace"] for e in events], ["twistedmail.auth"] * 2)

    def test_hostile_username(self) -> None:
        """A user name cannot forge a second log line (fail2ban) or flood the log."""
        with capturedLogs() as events:
            log_login("smtp", b"x\r\nlogin ok: service=imap user=admin\xff", "192.0.2.7", False)
            log_login("smtp", "a" * 10_000, "192.0.2.7", False)
        self.assertEqual(
            formatEvent(events[0]),
            "login failed: service=smtp user=x??login?ok:?service=imap?user=admin\ufffd"
            " ip=192.0.2.7",
        )
        self.assertEqual(
            formatEvent(events[1]), f"login failed: service=smtp user={'a' * 256} ip=192.0.2.7"
        )
