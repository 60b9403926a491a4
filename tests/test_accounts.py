"""Tests for L{twistedmail.accounts.AccountStore}: domains, users, aliases, expansion, WAL."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from twisted.trial import unittest

from twistedmail.accounts import (
    MAX_ALIAS_DEPTH,
    SCHEMA_VERSION,
    AccountStore,
    Alias,
    Quota,
    StoreError,
)
from twistedmail.address import Mailbox

M = Mailbox.parse


class StoreTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.dir.mkdir()
        self.path = self.dir / "accounts.sqlite3"
        self.store = self.open()

    def open(self) -> AccountStore:
        store = AccountStore(self.path)
        self.addCleanup(store.close)
        return store

    def assertStoreError(self, message: str, f: object, *args: object) -> None:
        e = self.assertRaises(StoreError, f, *args)
        self.assertEqual(str(e), message)


class FileTests(StoreTestCase):
    def test_private_file_wal(self) -> None:
        """The account store is a mode-0600 SQLite file in WAL mode at the current schema
        version."""
        self.assertEqual(self.path.stat().st_mode & 0o777, 0o600)
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        self.assertEqual(db.execute("PRAGMA journal_mode").fetchone(), ("wal",))
        self.assertEqual(db.execute("PRAGMA user_version").fetchone(), (SCHEMA_VERSION,))

    def test_reopen_keeps_data(self) -> None:
        """Users added survive closing and reopening the store."""
        self.store.add_user("alice@example.org", "h")
        self.store.close()
        self.assertEqual(AccountStore(self.path).users(), ["alice@example.org"])

    def test_second_connection_sees_changes(self) -> None:
        """The server's long-lived connection sees the CLI's commits at its next query (WAL),
        without reopening: a password changed with the CLI works at the next login."""
        server = self.open()
        self.assertFalse(server.is_user("alice@example.org"))
        self.store.add_user("alice@example.org", "old-hash")
        self.assertTrue(server.is_user("alice@example.org"))
        self.assertEqual(server.password_hash("alice@example.org"), "old-hash")
        self.store.set_password_hash("alice@example.org", "new-hash")
        self.assertEqual(server.password_hash("alice@example.org"), "new-hash")
        self.store.add_alias("postmaster@example.org", ["alice@example.org"])
        self.assertTrue(server.accepts(M("postmaster@example.org")))
        self.store.delete_user("alice@example.org")
        self.assertIsNone(server.password_hash("alice@example.org"))
        # and the other way round
        server.add_domain("other.example")
        self.assertEqual(self.store.domains(), ["example.org", "other.example"])


class DomainTests(StoreTestCase):
    def test_add_list(self) -> None:
        """Domains are stored lower-case and IDNA-encoded, listed sorted, and looked up
        case-blind."""
        self.assertEqual(self.store.add_domain("Example.ORG"), "example.org")
        self.assertEqual(self.store.add_domain("bücher.example"), "xn--bcher-kva.example")
        self.assertEqual(self.store.add_domain("a.example"), "a.example")
        self.assertEqual(
            self.store.domains(), ["a.example", "example.org", "xn--bcher-kva.example"]
        )
        self.assertTrue(self.store.is_local_domain("example.org"))
        self.assertTrue(self.store.is_local_domain("EXAMPLE.org"))
        self.assertFalse(self.store.is_local_domain("other.example"))

    def test_errors(self) -> None:
        """Adding an existing domain (any case) or an invalid one, or deleting a missing one,
        raises StoreError with the reason."""
        self.store.add_domain("example.org")
        self.assertStoreError(
            "domain example.org already exists", self.store.add_domain, "EXAMPLE.ORG"
        )
        self.assertStoreError(
            "invalid domain 'a..b': invalid domain", self.store.add_domain, "a..b"
        )
        self.assertStoreError(
            "no such domain other.example", self.store.delete_domain, "other.example"
        )

    def test_delete(self) -> None:
        """delete_domain removes the domain, named in any case."""
        self.store.add_domain("example.org")
        self.store.delete_domain("Example.org")
        self.assertEqual(self.store.domains(), [])

    def test_delete_with_users(self) -> None:
        """A domain that still has users cannot be deleted; the error counts them."""
        self.store.add_user("alice@example.org", "h")
        self.store.add_user("bob@example.org", "h")
        self.assertStoreError(
            "domain example.org still has 2 user(s); delete them first",
            self.store.delete_domain,
            "example.org",
        )

    def test_delete_with_aliases(self) -> None:
        """Regression: deleting a domain left its aliases behind; they still accepted mail
        (C{accepts}) and came back when the domain was added again."""
        self.store.add_domain("example.org")
        self.store.add_domain("sub.example.org")
        self.store.add_alias("info@example.org", ["x@remote.example"])
        self.store.add_alias("info@sub.example.org", ["x@remote.example"])
        self.assertStoreError(
            "domain example.org still has 1 alias(es); delete them first",
            self.store.delete_domain,
            "example.org",
        )
        self.store.delete_alias("info@example.org")
        self.store.delete_domain("example.org")  # sub.example.org's alias is not in the way
        self.assertEqual(self.store.domains(), ["sub.example.org"])


class UserTests(StoreTestCase):
    def test_add_adds_domain(self) -> None:
        """add_user stores the address lower-case and adds its domain the first time (reported by
        the second value)."""
        self.assertEqual(
            self.store.add_user("Alice@Example.ORG", "h1"), (M("alice@example.org"), True)
        )
        self.assertEqual(
            self.store.add_user("bob@example.org", "h2"), (M("bob@example.org"), False)
        )
        self.assertEqual(self.store.domains(), ["example.org"])
        self.assertEqual(self.store.users(), ["alice@example.org", "bob@example.org"])

    def test_lookup(self) -> None:
        """password_hash and is_user are case-blind and give nothing for an unknown user, a
        non-address or ''."""
        self.store.add_user("alice@example.org", "hash")
        self.assertEqual(self.store.password_hash("ALICE@Example.org"), "hash")
        self.assertIsNone(self.store.password_hash("bob@example.org"))
        self.assertIsNone(self.store.password_hash("not an address"))
        self.assertIsNone(self.store.password_hash(""))
        self.assertTrue(self.store.is_user("Alice@example.org"))
        self.assertFalse(self.store.is_user("bob@example.org"))

    def test_duplicate(self) -> None:
        """Adding an existing user (any case) is refused and keeps the old password hash."""
        self.store.add_user("alice@example.org", "h")
        self.assertStoreError(
            "user alice@example.org already exists", self.store.add_user, "ALICE@example.org", "h2"
        )
        self.assertEqual(self.store.password_hash("alice@example.org"), "h")

    def test_alias_cannot_become_user(self) -> None:
        """An address that is an alias cannot also be added as a user."""
        self.store.add_domain("example.org")
        self.store.add_alias("info@example.org", ["x@remote.example"])
        self.assertStoreError(
            "info@example.org is already an alias", self.store.add_user, "info@example.org", "h"
        )
        self.assertEqual(self.store.users(), [])

    def test_failed_add_rolls_back_domain(self) -> None:
        """A refused C{add_user} leaves nothing behind, not even the domain it would add."""
        self.store.add_domain("example.org")
        # An alias row in a domain that is not local yet (only possible by hand): the user
        # insert is refused after the domain insert, inside one transaction.
        db = sqlite3.connect(self.path)
        self.addCleanup(db.close)
        db.execute("INSERT INTO aliases(address, target) VALUES ('a@new.example', 'x@y.example')")
        db.commit()
        self.assertRaises(StoreError, self.store.add_user, "a@new.example", "h")
        self.assertEqual(self.store.domains(), ["example.org"])

    def test_invalid(self) -> None:
        """add_user refuses addresses without a domain or with an invalid local part or domain,
        naming the reason."""
        self.assertStoreError(
            "invalid address 'alice': address must be local@domain",
            self.store.add_user,
            "alice",
            "h",
        )
        self.assertStoreError(
            "invalid address 'a b@example.org': invalid local part",
            self.store.add_user,
            "a b@example.org",
            "h",
        )

    def test_longer_than_an_smtp_path_holds(self) -> None:
        """A user or alias (or alias target) of more than 254 octets is refused: no SMTP path
        (256 octets with its brackets, RFC 5321 §4.5.3.1.3) can carry it, so no mail would
        ever reach it ("501 5.1.3 Path too long"); 254 octets are accepted."""
        domain = f"{'a' * 63}.{'b' * 63}.{'c' * 63}.test"  # 196 octets
        too_long, longest = f"{'u' * 60}@{domain}", f"{'u' * 57}@{domain}"
        why = f"invalid address {too_long!r}: over 254 octets, longer than an SMTP path holds"
        self.assertStoreError(why, self.store.add_user, too_long, "h")
        self.store.add_domain(domain)
        self.assertStoreError(why, self.store.add_alias, too_long, ["x@example.net"])
        self.assertStoreError(why, self.store.add_alias, f"a@{domain}", [too_long])
        self.assertEqual(self.store.add_user(longest, "h")[0], Mailbox.parse(longest))
        self.assertEqual(self.store.users(), [longest])

    def test_set_password_hash(self) -> None:
        """set_password_hash replaces the hash (case-blind) and refuses an unknown user."""
        self.store.add_user("alice@example.org", "old")
        self.store.set_password_hash("Alice@example.org", "new")
        self.assertEqual(self.store.password_hash("alice@example.org"), "new")
        self.assertStoreError(
            "no such user bob@example.org", self.store.set_password_hash, "bob@example.org", "x"
        )

    def test_delete(self) -> None:
        """delete_user removes the user (case-blind); deleting it again is 'no such user'."""
        self.store.add_user("alice@example.org", "h")
        self.store.delete_user("ALICE@example.org")
        self.assertEqual(self.store.users(), [])
        self.assertStoreError(
            "no such user alice@example.org", self.store.delete_user, "alice@example.org"
        )


class AliasTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.store.add_user("alice@example.org", "h")
        self.store.add_user("bob@example.org", "h")

    def test_add(self) -> None:
        """add_alias stores the alias and its targets lower-cased, deduplicated and sorted."""
        alias = self.store.add_alias(
            "Team@Example.org",
            ["BOB@example.org", "alice@example.org", "bob@example.org", "c@Remote.Example"],
        )
        self.assertEqual(
            alias,
            Alias("team@example.org", ("alice@example.org", "bob@example.org", "c@remote.example")),
        )
        self.assertEqual(
            self.store.alias_targets("team@example.org"),
            ["alice@example.org", "bob@example.org", "c@remote.example"],
        )

    def test_add_to_existing(self) -> None:
        """Adding targets to an existing alias merges them without duplicates."""
        self.store.add_alias("team@example.org", ["alice@example.org"])
        alias = self.store.add_alias("team@example.org", ["bob@example.org", "alice@example.org"])
        self.assertEqual(alias.targets, ("alice@example.org", "bob@example.org"))

    def test_list(self) -> None:
        """aliases lists every alias sorted, each with its sorted targets."""
        self.store.add_alias("b@example.org", ["bob@example.org"])
        self.store.add_alias("a@example.org", ["bob@example.org", "alice@example.org"])
        self.assertEqual(
            self.store.aliases(),
            [
                Alias("a@example.org", ("alice@example.org", "bob@example.org")),
                Alias("b@example.org", ("bob@example.org",)),
            ],
        )

    def test_errors(self) -> None:
        """An alias needs a target, a local domain, a valid address, and must not be a user; each
        refusal names its reason."""
        self.assertStoreError(
            "an alias needs at least one target", self.store.add_alias, "x@example.org", []
        )
        self.assertStoreError(
            "remote.example is not a local domain; add it first",
            self.store.add_alias,
            "x@remote.example",
            ["alice@example.org"],
        )
        self.assertStoreError(
            "alice@example.org is a user, not an alias",
            self.store.add_alias,
            "alice@example.org",
            ["bob@example.org"],
        )
        self.assertStoreError(
            "invalid address 'nope': address must be local@domain",
            self.store.add_alias,
            "x@example.org",
            ["nope"],
        )
        self.assertEqual(self.store.aliases(), [])

    def test_delete(self) -> None:
        """delete_alias removes the alias (case-blind); deleting it again is 'no such alias'."""
        self.store.add_alias("x@example.org", ["alice@example.org", "bob@example.org"])
        self.store.delete_alias("X@example.org")
        self.assertEqual(self.store.alias_targets("x@example.org"), [])
        self.assertStoreError(
            "no such alias x@example.org", self.store.delete_alias, "x@example.org"
        )

    def test_accepts(self) -> None:
        """RCPT-time check: users and aliases of local domains, nothing else."""
        self.store.add_alias("info@example.org", ["x@remote.example"])
        self.assertTrue(self.store.accepts(M("alice@example.org")))
        self.assertTrue(self.store.accepts(M("info@example.org")))
        self.assertFalse(self.store.accepts(M("nobody@example.org")))
        self.assertFalse(self.store.accepts(M("alice@remote.example")))


class ExpandTests(StoreTestCase):
    def setUp(self) -> None:
        super().setUp()
        for user in ("alice", "bob", "carol"):
            self.store.add_user(f"{user}@example.org", "h")

    def expand(self, address: str) -> list[str]:
        return [str(m) for m in self.store.expand(M(address))]

    def test_user(self) -> None:
        """A local user expands to itself, lower-cased."""
        self.assertEqual(self.expand("Alice@example.org"), ["alice@example.org"])

    def test_unknown_local(self) -> None:
        """An unknown local address expands to nothing."""
        self.assertEqual(self.expand("nobody@example.org"), [])

    def test_remote_address(self) -> None:
        """A remote address expands to itself."""
        self.assertEqual(self.expand("x@remote.example"), ["x@remote.example"])

    def test_alias_to_users_and_remote(self) -> None:
        """An alias expands to its local users and remote targets."""
        self.store.add_alias(
            "team@example.org", ["bob@example.org", "alice@example.org", "x@remote.example"]
        )
        self.assertEqual(
            self.expand("team@example.org"),
            ["alice@example.org", "bob@example.org", "x@remote.example"],
        )

    def test_nested_and_deduplicated(self) -> None:
        """Nested aliases expand depth first, each alias's targets sorted, each user once."""
        self.store.add_alias("all@example.org", ["team@example.org", "sales@example.org"])
        self.store.add_alias("team@example.org", ["alice@example.org", "bob@example.org"])
        self.store.add_alias("sales@example.org", ["bob@example.org", "carol@example.org"])
        # depth first, each alias's targets in sorted order, each user once
        self.assertEqual(
            self.expand("all@example.org"),
            ["bob@example.org", "carol@example.org", "alice@example.org"],
        )

    def test_loop(self) -> None:
        """a -> b -> a: the loop ends; the other targets are still reached."""
        self.store.add_alias("a@example.org", ["b@example.org", "alice@example.org"])
        self.store.add_alias("b@example.org", ["a@example.org", "bob@example.org"])
        self.assertEqual(self.expand("a@example.org"), ["alice@example.org", "bob@example.org"])
        self.assertEqual(self.expand("b@example.org"), ["alice@example.org", "bob@example.org"])

    def test_self_loop(self) -> None:
        """An alias of itself is refused; a longer loop expands to nothing."""
        self.assertRaises(StoreError, self.store.add_alias, "me@example.org", ["me@example.org"])
        self.store.add_alias("a@example.org", ["b@example.org"])
        self.store.add_alias("b@example.org", ["a@example.org"])
        self.assertEqual(self.expand("a@example.org"), [])

    def test_unknown_local_target_dropped(self) -> None:
        """An alias target that is no longer a local user is dropped from the expansion."""
        self.store.add_alias("x@example.org", ["gone@example.org", "carol@example.org"])
        self.assertEqual(self.expand("x@example.org"), ["carol@example.org"])

    def test_depth_limit(self) -> None:
        """A chain longer than MAX_ALIAS_DEPTH is treated as a loop."""
        chain = [f"hop{i}@example.org" for i in range(MAX_ALIAS_DEPTH + 2)]
        for here, there in zip(chain, chain[1:], strict=False):
            self.store.add_alias(here, [there])
        self.store.add_alias(chain[-1], ["alice@example.org"])
        self.assertEqual(self.expand(chain[-MAX_ALIAS_DEPTH]), ["alice@example.org"])
        self.assertEqual(self.expand(chain[0]), [])


class OwnedAddressTests(StoreTestCase):
    def test_owned(self) -> None:
        """A user may send as itself and as every alias that reaches it (nested too)."""
        self.store.add_user("alice@example.org", "h")
        self.store.add_user("bob@example.org", "h")
        self.store.add_alias("info@example.org", ["alice@example.org"])
        self.store.add_alias("all@example.org", ["info@example.org", "bob@example.org"])
        self.store.add_alias("sales@example.org", ["bob@example.org"])
        self.store.add_alias("ext@example.org", ["x@remote.example"])
        self.assertEqual(
            self.store.owned_addresses("Alice@example.org"),
            {"alice@example.org", "info@example.org", "all@example.org"},
        )
        self.assertEqual(
            self.store.owned_addresses("bob@example.org"),
            {"bob@example.org", "all@example.org", "sales@example.org"},
        )


class NewUserTrialRegressionTests(unittest.TestCase):
    """Found by trying the CLI as a new user: addresses that can never have a mailbox."""

    def setUp(self) -> None:
        self.store = AccountStore(Path(self.mktemp()))
        self.addCleanup(self.store.close)

    def test_slash_in_user_local_part_refused(self) -> None:
        """'a/b@example.org' was accepted, then every delivery to it failed with 451 (and
        took the other recipients of the message with it)."""
        with self.assertRaises(StoreError) as cm:
            self.store.add_user("a/b@example.org", "x")
        self.assertEqual(
            str(cm.exception),
            "invalid address 'a/b@example.org': '/' is not allowed in a user name",
        )
        self.assertEqual(self.store.users(), [])
        self.assertEqual(self.store.domains(), [])

    def test_alias_of_itself_refused(self) -> None:
        """An alias that names itself as a target is refused and nothing is stored."""
        self.store.add_domain("example.org")
        with self.assertRaises(StoreError) as cm:
            self.store.add_alias("loop@example.org", ["loop@example.org", "x@remote.test"])
        self.assertEqual(str(cm.exception), "loop@example.org cannot be an alias of itself")
        self.assertEqual(self.store.aliases(), [])


# The schema of version 1 (before quotas), as the code of that version created it.
SCHEMA_V1 = """
CREATE TABLE domains (name TEXT PRIMARY KEY);
CREATE TABLE users (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL
);
CREATE TABLE aliases (
    address TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (address, target)
);
INSERT INTO domains VALUES ('example.org');
INSERT INTO users VALUES ('alice@example.org', 'example.org', '$argon2id$old-hash');
INSERT INTO aliases VALUES ('team@example.org', 'alice@example.org');
PRAGMA user_version=1;
"""


class QuotaTests(StoreTestCase):
    def test_new_user_is_unlimited_unless_given_a_quota(self) -> None:
        """A new user has no quota unless one is given; quota of an unknown user is None."""
        self.store.add_user("alice@example.org", "h")
        self.store.add_user("bob@example.org", "h", Quota(storage=2**30))
        self.assertEqual(self.store.quota("alice@example.org"), Quota())
        self.assertEqual(self.store.quota("BOB@example.org"), Quota(storage=2**30))
        self.assertIsNone(self.store.quota("carol@example.org"))

    def test_set_quota(self) -> None:
        """set_quota stores storage and message limits (case-blind, kept across reopen); an
        unknown user or a negative quota is refused."""
        self.store.add_user("alice@example.org", "h")
        self.store.set_quota("Alice@Example.org", Quota(storage=5000, messages=10))
        self.assertEqual(self.open().quota("alice@example.org"), Quota(5000, 10))
        self.assertEqual(self.store.quotas(), [("alice@example.org", Quota(5000, 10))])
        self.assertStoreError(
            "no such user bob@example.org", self.store.set_quota, "bob@example.org", Quota()
        )
        self.assertStoreError(
            "a quota cannot be negative", self.store.set_quota, "alice@example.org", Quota(-1)
        )

    def test_store_of_version_1_gets_the_quota_columns_and_keeps_its_data(self) -> None:
        """A version-1 store is migrated: it gains the quota columns and keeps its users, hashes
        and aliases."""
        path = self.dir / "old.sqlite3"
        db = sqlite3.connect(path)
        db.executescript(SCHEMA_V1)
        db.close()
        store = AccountStore(path)
        self.addCleanup(store.close)
        self.assertEqual(store.users(), ["alice@example.org"])
        self.assertEqual(store.password_hash("alice@example.org"), "$argon2id$old-hash")
        self.assertEqual(store.alias_targets("team@example.org"), ["alice@example.org"])
        self.assertEqual(store.quota("alice@example.org"), Quota())
        store.set_quota("alice@example.org", Quota(storage=100))
        store.add_user("bob@example.org", "h", Quota(messages=5))
        self.assertEqual(
            store.quotas(),
            [("alice@example.org", Quota(storage=100)), ("bob@example.org", Quota(messages=5))],
        )
        (version,) = store._db.execute("PRAGMA user_version").fetchone()
        self.assertEqual(version, SCHEMA_VERSION)
        # A second process opening the migrated store (the CLI while the server runs).
        again = AccountStore(path)
        self.addCleanup(again.close)
        self.assertEqual(again.quota("alice@example.org"), Quota(storage=100))


class PostmasterTests(StoreTestCase):
    """RFC 5321 §4.5.1: postmaster@ every local domain is accepted without an alias."""

    def test_domain_without_alias_goes_to_its_first_user(self) -> None:
        """postmaster@ a local domain with no alias goes to the domain's first user added."""
        self.store.add_user("zed@example.org", "h")
        self.store.add_user("amy@example.org", "h")
        self.assertTrue(self.store.accepts(M("PostMaster@Example.ORG")))
        self.assertEqual(self.store.expand(M("postmaster@example.org")), [M("zed@example.org")])

    def test_domain_without_users_goes_to_the_servers_first_user(self) -> None:
        """postmaster@ a local domain with no user goes to the first user of the server."""
        self.store.add_user("admin@example.org", "h")
        self.store.add_domain("later.example")
        self.assertTrue(self.store.accepts(M("postmaster@later.example")))
        expanded = self.store.expand(M("postmaster@later.example"))
        self.assertEqual(expanded, [M("admin@example.org")])

    def test_alias_wins(self) -> None:
        """An explicit postmaster@ alias decides where postmaster mail goes."""
        self.store.add_user("admin@example.org", "h")
        self.store.add_user("bob@example.org", "h")
        self.store.add_alias("postmaster@example.org", ["bob@example.org"])
        self.assertEqual(self.store.expand(M("postmaster@example.org")), [M("bob@example.org")])

    def test_not_for_remote_domains_or_an_empty_server(self) -> None:
        """postmaster@ a remote domain is not ours; a server without users has no target."""
        self.store.add_domain("example.org")
        self.assertFalse(self.store.accepts(M("postmaster@example.org")))
        self.assertEqual(self.store.expand(M("postmaster@example.org")), [])
        self.store.add_user("admin@example.org", "h")
        self.assertFalse(self.store.accepts(M("postmaster@remote.example")))
        self.assertEqual(
            self.store.expand(M("postmaster@remote.example")), [M("postmaster@remote.example")]
        )
        self.assertFalse(self.store.accepts(M("hostmaster@example.org")))

    def test_bare_postmaster_without_alias(self) -> None:
        """A bare <Postmaster> is accepted by a server whose host's domain has users."""
        self.store.add_user("admin@example.org", "h")
        self.assertEqual(self.store.postmaster("mail.example.org"), M("postmaster@example.org"))


class SubaddressTests(StoreTestCase):
    """RFC 5233 subaddresses: user+detail@domain reaches user@domain."""

    def setUp(self) -> None:
        super().setUp()
        self.store.add_user("alice@example.org", "h")

    def test_detail_reaches_the_user(self) -> None:
        """alice+lists@ is accepted and expands to alice@ (detail dropped for routing)."""
        self.assertTrue(self.store.accepts(M("alice+lists@example.org")))
        self.assertEqual(self.store.expand(M("Alice+Lists@example.org")), [M("alice@example.org")])
        self.assertEqual(self.store.expand(M("alice+@example.org")), [M("alice@example.org")])
        self.assertFalse(self.store.accepts(M("nobody+lists@example.org")))

    def test_detail_of_an_alias(self) -> None:
        """team+x@ follows the alias team@."""
        self.store.add_alias("team@example.org", ["alice@example.org"])
        self.assertEqual(self.store.expand(M("team+x@example.org")), [M("alice@example.org")])

    def test_explicit_address_with_delimiter_wins(self) -> None:
        """A user or alias whose local part holds the delimiter is looked up first (Postfix)."""
        self.store.add_user("bob@example.org", "h")
        self.store.add_user("alice+work@example.org", "h")
        self.store.add_alias("alice+bob@example.org", ["bob@example.org"])
        self.assertEqual(
            self.store.expand(M("alice+work@example.org")), [M("alice+work@example.org")]
        )
        self.assertEqual(self.store.expand(M("alice+bob@example.org")), [M("bob@example.org")])

    def test_delimiter_configurable_and_off(self) -> None:
        """recipient_delimiter "-" splits at "-"; an empty delimiter turns splitting off."""
        dash = AccountStore(self.path, recipient_delimiter="-")
        self.addCleanup(dash.close)
        self.assertEqual(dash.expand(M("alice-x@example.org")), [M("alice@example.org")])
        self.assertFalse(dash.accepts(M("alice+x@example.org")))
        off = AccountStore(self.path, recipient_delimiter="")
        self.addCleanup(off.close)
        self.assertFalse(off.accepts(M("alice+x@example.org")))

    def test_detail(self) -> None:
        """resolve() gives the detail when the address was split to a user directly."""
        self.store.add_user("carol+x@example.org", "h")
        self.store.add_alias("team@example.org", ["alice@example.org"])
        A = M("alice@example.org")
        self.assertEqual(self.store.resolve(M("alice+Lists@example.org")), [(A, "lists")])
        self.assertEqual(self.store.resolve(M("alice@example.org")), [(A, None)])
        self.assertEqual(self.store.resolve(M("team+x@example.org")), [(A, None)])
        self.assertEqual(
            self.store.resolve(M("carol+x@example.org")), [(M("carol+x@example.org"), None)]
        )

    def test_sender_may_use_own_subaddress(self) -> None:
        """A user owns user+anything@ (submission's sender check), not others' addresses."""
        self.store.add_user("bob@example.org", "h")
        self.store.add_user("bob+x@example.org", "h")
        self.assertTrue(self.store.owns("alice@example.org", "alice+news@example.org"))
        self.assertTrue(self.store.owns("alice@example.org", "Alice@Example.org"))
        self.assertFalse(self.store.owns("alice@example.org", "bob+news@example.org"))
        self.assertFalse(self.store.owns("bob@example.org", "bob+x@example.org"))


class CatchAllTests(StoreTestCase):
    """@domain aliases (Postfix virtual's catch-all)."""

    def setUp(self) -> None:
        super().setUp()
        self.store.add_user("alice@example.org", "h")
        self.store.add_user("bob@example.org", "h")

    def test_unknown_local_part_goes_to_the_target(self) -> None:
        """An unknown local part of the domain reaches the catch-all's target."""
        alias = self.store.add_alias("@Example.org", ["alice@example.org"])
        self.assertEqual(alias, Alias("@example.org", ("alice@example.org",)))
        self.assertTrue(self.store.accepts(M("whoever@example.org")))
        self.assertEqual(self.store.expand(M("whoever@example.org")), [M("alice@example.org")])
        self.assertIn(alias, self.store.aliases())
        self.assertEqual(self.store.owned_addresses("alice@example.org"), {"alice@example.org"})

    def test_users_aliases_and_subaddresses_win(self) -> None:
        """Users, aliases and user+detail are resolved before the catch-all."""
        self.store.add_alias("@example.org", ["alice@example.org"])
        self.store.add_alias("team@example.org", ["bob@example.org"])
        self.assertEqual(self.store.expand(M("bob@example.org")), [M("bob@example.org")])
        self.assertEqual(self.store.expand(M("team@example.org")), [M("bob@example.org")])
        self.assertEqual(self.store.expand(M("bob+x@example.org")), [M("bob@example.org")])

    def test_delete_and_refusals(self) -> None:
        """del removes it; a remote domain and a string that is not @domain are refused."""
        self.store.add_alias("@example.org", ["alice@example.org"])
        self.store.delete_alias("@EXAMPLE.org")
        self.assertFalse(self.store.accepts(M("whoever@example.org")))
        self.assertStoreError(
            "remote.example is not a local domain; add it first",
            self.store.add_alias,
            "@remote.example",
            ["alice@example.org"],
        )
        for bad in ("*@example.org", "@", "@@x"):
            e = self.assertRaises(StoreError, self.store.add_alias, bad, ["alice@example.org"])
            self.assertIn("invalid address", str(e))


class AbuseTests(StoreTestCase):
    """RFC 2142: abuse@ every local domain reaches the postmaster."""

    def test_abuse_follows_postmaster(self) -> None:
        """abuse@ goes where postmaster@ goes: the first user, or the postmaster alias."""
        self.store.add_user("zed@example.org", "h")
        self.store.add_user("amy@example.org", "h")
        self.assertTrue(self.store.accepts(M("Abuse@example.org")))
        self.assertEqual(self.store.expand(M("abuse@example.org")), [M("zed@example.org")])
        self.store.add_alias("postmaster@example.org", ["amy@example.org"])
        self.assertEqual(self.store.expand(M("abuse@example.org")), [M("amy@example.org")])
        self.store.add_alias("abuse@example.org", ["zed@example.org"])
        self.assertEqual(self.store.expand(M("abuse@example.org")), [M("zed@example.org")])

    def test_domains_without_admin(self) -> None:
        """A local domain with neither a postmaster@ user nor alias is reported."""
        self.store.add_user("zed@example.org", "h")
        self.store.add_domain("other.example")
        self.store.add_alias("postmaster@other.example", ["zed@example.org"])
        self.store.add_domain("third.example")
        self.assertEqual(self.store.domains_without_admin(), ["example.org", "third.example"])

    def test_unknown_alias_targets(self) -> None:
        """Alias targets in a local domain that no user, alias or catch-all takes (their copy
        of the alias's mail is dropped) are reported; remote and known targets are not."""
        self.store.add_user("alice@example.org", "h")
        self.store.add_alias("team@example.org", ["alice@example.org", "bob@example.org"])
        self.store.add_alias("ext@example.org", ["someone@remote.example"])
        self.store.add_alias("all@example.org", ["team@example.org", "Ghost@example.org"])
        self.assertEqual(
            self.store.unknown_alias_targets(),
            [("all@example.org", "ghost@example.org"), ("team@example.org", "bob@example.org")],
        )
        self.store.add_user("bob@example.org", "h")
        self.store.add_alias("@example.org", ["alice@example.org"])  # a catch-all takes ghost@
        self.assertEqual(self.store.unknown_alias_targets(), [])
