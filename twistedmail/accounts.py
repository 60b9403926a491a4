"""The credential store: domains, users and aliases in one SQLite database (WAL mode).

The CLI writes and the server reads the same file at once: WAL journaling lets a reader see
each committed change on its next query, so a password changed with C{twistedmail user
passwd} works on the next login without a restart.  Addresses are stored normalised
(L{twistedmail.address.Mailbox}); passwords only as hashes (L{twistedmail.passwords}).

Each user has a storage quota (octets) and a message-count quota, 0 meaning unlimited
(RFC 9208 §5.1 STORAGE and §5.2 MESSAGE, enforced by L{twistedmail.quota}).  A store created
before quotas existed (schema version 1) gets the two columns on open, every user unlimited.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable
from pathlib import Path

import attrs

from twistedmail.address import AddressError, Mailbox, normalize_domain

SCHEMA_VERSION = 2
MAX_ALIAS_DEPTH = 10  # alias chains longer than this are treated as loops
POSTMASTER = "postmaster"  # RFC 5321 §4.5.1, case-insensitive (local parts are lower-cased)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS domains (name TEXT PRIMARY KEY);
CREATE TABLE IF NOT EXISTS users (
    address TEXT PRIMARY KEY,
    domain TEXT NOT NULL REFERENCES domains(name),
    password_hash TEXT NOT NULL,
    quota_storage INTEGER NOT NULL DEFAULT 0,
    quota_messages INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS aliases (
    address TEXT NOT NULL,
    target TEXT NOT NULL,
    PRIMARY KEY (address, target)
);
"""


# Columns added after schema version 1, with their definition (ALTER TABLE ... ADD COLUMN).
_ADDED_USER_COLUMNS = {
    "quota_storage": "INTEGER NOT NULL DEFAULT 0",
    "quota_messages": "INTEGER NOT NULL DEFAULT 0",
}


class StoreError(Exception):
    """A user error against the store (unknown user, duplicate, bad address); one-line message."""


@attrs.frozen
class Quota:
    """A user's limits: C{storage} in octets, C{messages} a count; 0 is unlimited."""

    storage: int = 0
    messages: int = 0

    @property
    def unlimited(self) -> bool:
        return not self.storage and not self.messages


@attrs.frozen
class Alias:
    """One alias address and its targets (local or remote addresses), sorted."""

    address: str
    targets: tuple[str, ...]


def _mailbox(text: str) -> Mailbox:
    try:
        mailbox = Mailbox.parse(text)
    except AddressError as e:
        raise StoreError(f"invalid address {text!r}: {e}") from None
    # RFC 5321 §4.1.2: a receiving host SHOULD avoid mailboxes that need the Quoted-string
    # form; an account also becomes a directory (mail/DOMAIN/LOCAL), so none are made.
    if mailbox.quoted:
        raise StoreError(f"invalid address {text!r}: quoted local parts are not accepted")
    if mailbox.literal:
        raise StoreError(f"invalid address {text!r}: not a domain name")
    return mailbox


def _domain(text: str) -> str:
    try:
        return normalize_domain(text)
    except AddressError as e:
        raise StoreError(f"invalid domain {text!r}: {e}") from None


class AccountStore:
    """Domains, users and aliases in C{path} (created with mode 0600 if missing).

    Every method is a short query; the server calls them on the reactor thread.
    @param connect: open the database now (the CLI, tests); C{False} leaves it to L{open},
        which the server calls in C{startService}: a SQLite connection must not cross a
        C{fork()} (twistd without C{-n} forks into the background after building the
        service), or the child keeps reading a WAL index that the CLI's checkpoint has
        replaced and never sees another account change.
    @raise StoreError: from mutators, for user errors (unknown, duplicate, invalid).
    """

    def __init__(self, path: Path, *, connect: bool = True) -> None:
        self.path = path
        self._connection: sqlite3.Connection | None = None
        self._pid = 0
        if connect:
            self.open()

    def open(self) -> None:
        """Connect (creating the file, mode 0600, and the schema if missing); idempotent.

        @raise sqlite3.Error: the database cannot be opened or is not a store.
        @raise OSError: the file cannot be created.
        """
        if self._connection is not None:
            return
        if not self.path.exists():
            fd = os.open(self.path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.execute("PRAGMA foreign_keys=ON")
            db.executescript(_SCHEMA)
            self._connection, self._pid = db, os.getpid()
            self._migrate()
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except BaseException:
            self._connection = None
            db.close()
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        """The connection; a store used before L{open}, or in a process forked after it,
        is a programming error, raised here rather than answered from a stale WAL index."""
        if self._connection is None:
            raise RuntimeError(f"account store {self.path} used before open()")
        if self._pid != os.getpid():
            raise RuntimeError(f"account store {self.path} opened before a fork(), used after")
        return self._connection

    def _migrate(self) -> None:
        """Add the columns a store made by an older version lacks (its rows are kept; new
        quota columns get their default, unlimited)."""
        have = {row[1] for row in self._db.execute("PRAGMA table_info(users)")}
        for column, definition in _ADDED_USER_COLUMNS.items():
            if column not in have:
                try:
                    self._db.execute(f"ALTER TABLE users ADD COLUMN {column} {definition}")
                except sqlite3.OperationalError as e:
                    if "duplicate column" not in str(e):  # another process added it first
                        raise

    def close(self) -> None:
        """Close the connection, if open (so a server that failed to start can stop)."""
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    # domains

    def add_domain(self, domain: str) -> str:
        """Add a local domain; return its normalised name.  @raise StoreError: if present."""
        name = _domain(domain)
        try:
            self._db.execute("INSERT INTO domains(name) VALUES (?)", (name,))
        except sqlite3.IntegrityError:
            raise StoreError(f"domain {name} already exists") from None
        return name

    def delete_domain(self, domain: str) -> None:
        """Remove a domain. @raise StoreError: if unknown or if it still has users or aliases."""
        name = _domain(domain)
        if not self.is_local_domain(name):
            raise StoreError(f"no such domain {name}")
        (count,) = self._db.execute("SELECT count(*) FROM users WHERE domain=?", (name,)).fetchone()
        if count:
            raise StoreError(f"domain {name} still has {count} user(s); delete them first")
        # Aliases are not tied to the domain by a foreign key: without this check they would
        # outlive it and come back if the domain were added again.
        # (A normalised domain has no LIKE wildcards: only letters, digits, "-" and ".".)
        (count,) = self._db.execute(
            "SELECT count(DISTINCT address) FROM aliases WHERE address LIKE ?", ("%@" + name,)
        ).fetchone()
        if count:
            raise StoreError(f"domain {name} still has {count} alias(es); delete them first")
        self._db.execute("DELETE FROM domains WHERE name=?", (name,))

    def domains(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT name FROM domains ORDER BY name")]

    def is_local_domain(self, domain: str) -> bool:
        row = self._db.execute("SELECT 1 FROM domains WHERE name=?", (domain.lower(),)).fetchone()
        return row is not None

    # users

    def add_user(
        self, address: str, password_hash: str, quota: Quota = Quota()
    ) -> tuple[Mailbox, bool]:
        """Add a user with C{quota}; return (mailbox, whether its domain was added too).

        @raise StoreError: if the address is invalid or already a user or alias.
        """
        mbox = _mailbox(address)
        if "/" in mbox.local:
            # Valid in RFC 5321, but a user's local part names their Maildir directory.
            raise StoreError(f"invalid address {address!r}: '/' is not allowed in a user name")
        added_domain = False
        with self._transaction():
            if not self.is_local_domain(mbox.domain):
                self._db.execute("INSERT INTO domains(name) VALUES (?)", (mbox.domain,))
                added_domain = True
            if self.alias_targets(str(mbox)):
                raise StoreError(f"{mbox} is already an alias")
            try:
                self._db.execute(
                    "INSERT INTO users(address, domain, password_hash, quota_storage,"
                    " quota_messages) VALUES (?, ?, ?, ?, ?)",
                    (str(mbox), mbox.domain, password_hash, quota.storage, quota.messages),
                )
            except sqlite3.IntegrityError:
                raise StoreError(f"user {mbox} already exists") from None
        return mbox, added_domain

    def set_password_hash(self, address: str, password_hash: str) -> None:
        """Replace a user's hash. @raise StoreError: for an unknown user."""
        mbox = _mailbox(address)
        cur = self._db.execute(
            "UPDATE users SET password_hash=? WHERE address=?", (password_hash, str(mbox))
        )
        if cur.rowcount == 0:
            raise StoreError(f"no such user {mbox}")

    def set_quota(self, address: str, quota: Quota) -> None:
        """Replace a user's quota (read live by the server). @raise StoreError: for an
        unknown user or a negative limit."""
        mbox = _mailbox(address)
        if quota.storage < 0 or quota.messages < 0:
            raise StoreError("a quota cannot be negative")
        cur = self._db.execute(
            "UPDATE users SET quota_storage=?, quota_messages=? WHERE address=?",
            (quota.storage, quota.messages, str(mbox)),
        )
        if cur.rowcount == 0:
            raise StoreError(f"no such user {mbox}")

    def quota(self, address: str) -> Quota | None:
        """A user's quota, or C{None} for no such user."""
        row = self._db.execute(
            "SELECT quota_storage, quota_messages FROM users WHERE address=?", (address.lower(),)
        ).fetchone()
        return Quota(row[0], row[1]) if row else None

    def quotas(self) -> list[tuple[str, Quota]]:
        """Every user with their quota, sorted by address."""
        rows = self._db.execute(
            "SELECT address, quota_storage, quota_messages FROM users ORDER BY address"
        )
        return [(a, Quota(s, m)) for a, s, m in rows]

    def delete_user(self, address: str) -> None:
        """Remove a user (the Maildir is kept). @raise StoreError: for an unknown user."""
        mbox = _mailbox(address)
        cur = self._db.execute("DELETE FROM users WHERE address=?", (str(mbox),))
        if cur.rowcount == 0:
            raise StoreError(f"no such user {mbox}")

    def users(self) -> list[str]:
        return [r[0] for r in self._db.execute("SELECT address FROM users ORDER BY address")]

    def password_hash(self, address: str) -> str | None:
        """The stored hash for a login name, or C{None} for no such user (or a bad name)."""
        try:
            mbox = Mailbox.parse(address)
        except AddressError:
            return None
        row = self._db.execute(
            "SELECT password_hash FROM users WHERE address=?", (str(mbox),)
        ).fetchone()
        return row[0] if row else None

    def is_user(self, address: str) -> bool:
        row = self._db.execute("SELECT 1 FROM users WHERE address=?", (address.lower(),)).fetchone()
        return row is not None

    # aliases

    def add_alias(self, address: str, targets: Iterable[str]) -> Alias:
        """Point C{address} (in a local domain) at C{targets} (local or remote addresses).

        Adding to an existing alias adds targets.  @raise StoreError: for a non-local alias
        domain, an alias that is a user, invalid addresses, or no targets.
        """
        mbox = _mailbox(address)
        normalised = sorted({str(_mailbox(t)) for t in targets})
        if not normalised:
            raise StoreError("an alias needs at least one target")
        if not self.is_local_domain(mbox.domain):
            raise StoreError(f"{mbox.domain} is not a local domain; add it first")
        if self.is_user(str(mbox)):
            raise StoreError(f"{mbox} is a user, not an alias")
        if str(mbox) in normalised:
            raise StoreError(f"{mbox} cannot be an alias of itself")
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO aliases(address, target) VALUES (?, ?)",
                [(str(mbox), t) for t in normalised],
            )
        return Alias(str(mbox), tuple(self.alias_targets(str(mbox))))

    def delete_alias(self, address: str) -> None:
        """Remove an alias and all its targets. @raise StoreError: if unknown."""
        mbox = _mailbox(address)
        cur = self._db.execute("DELETE FROM aliases WHERE address=?", (str(mbox),))
        if cur.rowcount == 0:
            raise StoreError(f"no such alias {mbox}")

    def alias_targets(self, address: str) -> list[str]:
        rows = self._db.execute(
            "SELECT target FROM aliases WHERE address=? ORDER BY target", (address.lower(),)
        )
        return [r[0] for r in rows]

    def aliases(self) -> list[Alias]:
        rows = self._db.execute("SELECT address, target FROM aliases ORDER BY address, target")
        grouped: dict[str, list[str]] = {}
        for address, target in rows:
            grouped.setdefault(address, []).append(target)
        return [Alias(a, tuple(t)) for a, t in grouped.items()]

    # lookups used by the protocols

    def accepts(self, mbox: Mailbox) -> bool:
        """Whether mail to C{mbox} is accepted here: a user, an alias, or C{postmaster@} a
        local domain that has someone to deliver to (L{postmaster_of}; RCPT time check)."""
        if self.is_user(str(mbox)) or self.alias_targets(str(mbox)):
            return True
        return mbox.local == POSTMASTER and self.postmaster_of(mbox.domain) is not None

    def postmaster_of(self, domain: str) -> Mailbox | None:
        """Where C{postmaster@domain} goes when no user or alias of that name exists.

        RFC 5321 §4.5.1: every domain an SMTP server accepts mail for MUST accept
        C{postmaster} (any case), and C{dns-records} names it as the DMARC report address,
        so a domain added later must not need an alias first.  An explicit C{postmaster@}
        user or alias always wins (L{expand} uses it); otherwise, as Mail-in-a-Box routes
        C{postmaster@} every domain to its administrator (the first user created), the
        message goes to the domain's first user (lowest rowid: the order of C{user add}),
        and for a domain with no user yet to the server's first user.

        @return: that user, or C{None} when C{domain} is not local or the server has no user.
        """
        name = domain.lower()
        if not self.is_local_domain(name):
            return None
        row = (
            self._db.execute(
                "SELECT address FROM users WHERE domain=? ORDER BY rowid LIMIT 1", (name,)
            ).fetchone()
            or self._db.execute("SELECT address FROM users ORDER BY rowid LIMIT 1").fetchone()
        )
        return Mailbox.parse(row[0]) if row else None

    def expand(self, mbox: Mailbox) -> list[Mailbox]:
        """Final recipients of C{mbox}: users and remote addresses after alias expansion.

        Aliases expand recursively (an alias target may be an alias), at most
        L{MAX_ALIAS_DEPTH} deep; loops and unknown local targets are dropped.
        An alias that names itself among its targets also delivers to itself only if it is a user.
        C{postmaster@} a local domain with no such user or alias goes to L{postmaster_of}.
        """
        result: list[Mailbox] = []
        seen: set[str] = set()

        def walk(m: Mailbox, depth: int) -> None:
            key = str(m)
            if key in seen or depth > MAX_ALIAS_DEPTH:
                return
            seen.add(key)
            if self.is_user(key):
                result.append(m)
                return
            targets = self.alias_targets(key)
            if targets:
                for t in targets:
                    walk(Mailbox.parse(t), depth + 1)
            elif not self.is_local_domain(m.domain):
                result.append(m)
            elif m.local == POSTMASTER:
                # RFC 5321 §4.5.1: postmaster@ a local domain without an alias still arrives.
                target = self.postmaster_of(m.domain)
                if target is not None:
                    walk(target, depth + 1)

        walk(mbox, 0)
        return result

    def postmaster(self, hostname: str) -> Mailbox | None:
        """Where C{RCPT TO:<Postmaster>} (no domain) goes (RFC 5321 §4.5.1, which requires
        accepting it): the first accepted C{postmaster@D} for D the hostname, then its parent
        domains (C{mail.example.org} -> C{example.org}), then the local domains in order."""
        labels = hostname.lower().split(".")
        candidates = [".".join(labels[i:]) for i in range(len(labels) - 1)] + self.domains()
        for domain in candidates:
            mbox = Mailbox("postmaster", domain)
            if self.is_local_domain(domain) and self.accepts(mbox):
                return mbox
        return None

    def owned_addresses(self, user: str) -> set[str]:
        """Addresses C{user} may send as: itself and every alias that expands to it."""
        owned = {user.lower()}
        for alias in self.aliases():
            if any(str(m) == user.lower() for m in self.expand(Mailbox.parse(alias.address))):
                owned.add(alias.address)
        return owned

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN IMMEDIATE")
        return _Tx(self._db)  # type: ignore[return-value]


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self.db = db

    def __enter__(self) -> sqlite3.Connection:
        return self.db

    def __exit__(self, exc_type: object, *rest: object) -> None:
        self.db.execute("ROLLBACK" if exc_type else "COMMIT")
