"""The credential store: domains, users and aliases in one SQLite database (WAL mode).

The CLI writes and the server reads the same file at once: WAL journaling lets a reader see
each committed change on its next query, so a password changed with C{twistedmail user
passwd} works on the next login without a restart.  Addresses are stored normalised
(L{twistedmail.address.Mailbox}); passwords only as hashes (L{twistedmail.passwords}).
Recipients are resolved in one place, L{AccountStore.route}: users, aliases, subaddresses
(RFC 5233), C{postmaster@}/C{abuse@} (RFC 5321 §4.5.1, RFC 2142) and C{@domain} catch-alls.

Each user has a storage quota (octets) and a message-count quota, 0 meaning unlimited
(RFC 9208 §5.1 STORAGE and §5.2 MESSAGE, enforced by L{twistedmail.quota}).  A store created
before quotas existed (schema version 1) gets the two columns on open, every user unlimited.
"""

from __future__ import annotations

import os
import sqlite3
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime

from twistedmail.address import MAX_PATH, AddressError, Mailbox, normalize_domain

SCHEMA_VERSION = 2
MAX_ALIAS_DEPTH = 10  # alias chains longer than this are treated as loops
MAX_CACHED_LOOKUPS = 10_000  # answers kept between changes (all dropped when reached)
POSTMASTER = "postmaster"  # RFC 5321 §4.5.1, case-insensitive (local parts are lower-cased)
ABUSE = "abuse"  # RFC 2142 §2: reaches whoever postmaster@ reaches unless defined itself
RECIPIENT_DELIMITER = "+"  # RFC 5233 subaddress separator ([delivery] recipient_delimiter)

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


_forks = 0  # fork()s this process came through: a store opened before one is not used after


def _forked() -> None:
    global _forks
    _forks += 1


os.register_at_fork(after_in_child=_forked)


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


@attrs.frozen
class Route:
    """Where a local address leads (L{AccountStore.route}): a C{user}, or C{targets} to
    resolve in turn; C{detail} is the RFC 5233 detail when the address was split."""

    user: Mailbox | None = None
    targets: tuple[Mailbox, ...] = ()
    detail: str | None = None


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


MAX_MAILBOX = MAX_PATH - 2  # RFC 5321 §4.5.3.1.3: a path holds 256 octets with "<" ">"


def _new_mailbox(text: str) -> Mailbox:
    """L{_mailbox} for a new user or alias (or alias target): also refused when no SMTP path
    can hold it (it could never receive mail: C{501 5.1.3 Path too long})."""
    mailbox = _mailbox(text)
    if len(str(mailbox).encode("utf-8")) > MAX_MAILBOX:
        raise StoreError(
            f"invalid address {text!r}: over {MAX_MAILBOX} octets, longer than an SMTP path holds"
        )
    return mailbox


def _alias_key(text: str, new: bool = False) -> str:
    """An alias address, or C{@domain} for a domain's catch-all (Postfix virtual's form).

    @param new: for an alias being added: an address is parsed by L{_new_mailbox} (also
        refused when no SMTP path can hold it).
    @raise StoreError: for anything else (C{*@example.org}, C{@}, C{@@x})."""
    if text.startswith("@"):
        if "@" in text[1:] or not text[1:]:
            raise StoreError(f"invalid address {text!r}: expected local@domain or @domain")
        return "@" + _domain(text[1:])
    mbox = _new_mailbox(text) if new else _mailbox(text)
    if mbox.local == "*":  # valid atext, but always a wildcard meant as @domain
        raise StoreError(f"invalid address {text!r}: a catch-all is written @{mbox.domain}")
    return str(mbox)


def _domain(text: str) -> str:
    try:
        return normalize_domain(text)
    except AddressError as e:
        raise StoreError(f"invalid domain {text!r}: {e}") from None


class AccountStore:
    """Domains, users and aliases in C{path} (created with mode 0600 if missing).

    Every method is a short query; the server calls them on the reactor thread (and a
    delivery thread's vacation check, whose lookups skip the memory of L{_lookup}).
    @param connect: open the database now (the CLI, tests); C{False} leaves it to L{open},
        which the server calls in C{startService}: a SQLite connection must not cross a
        C{fork()} (twistd without C{-n} forks into the background after building the
        service), or the child keeps reading a WAL index that the CLI's checkpoint has
        replaced and never sees another account change.
    @param recipient_delimiter: the RFC 5233 subaddress separator (C{""}: none); see
        L{route}.
    @raise StoreError: from mutators, for user errors (unknown, duplicate, invalid).
    """

    def __init__(
        self,
        path: Path,
        *,
        connect: bool = True,
        recipient_delimiter: str = RECIPIENT_DELIMITER,
        reactor: IReactorTime | None = None,
    ) -> None:
        self.path = path
        self.recipient_delimiter = recipient_delimiter.lower()
        self.reactor = reactor
        self._connection: sqlite3.Connection | None = None
        self._forks = -1
        self._reactor_thread = 0
        self._turn_version: int | None = None
        self._lookups: dict[tuple[str, str], Any] = {}
        self._lookups_key: tuple[int, int, int] | None = None
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
            self._connection, self._forks = db, _forks
            self._reactor_thread = threading.get_ident()  # open() runs on the reactor thread
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
        if self._forks != _forks:  # (a counter, not os.getpid(): a syscall per query)
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

    def _version(self) -> tuple[int, int, int] | None:
        """What identifies the database's content for this connection: C{PRAGMA
        data_version} (changes committed by any other connection, the CLI's) and
        C{total_changes} (its own); C{None} inside a transaction (what it sees may yet be
        rolled back: never cached).  With a C{reactor}, the C{data_version} query runs at
        most once per reactor turn on the reactor thread (each query is a read transaction:
        two C{fcntl} locks, and the GIL let go): a change committed meanwhile counts from
        the next turn, as if it had come a moment later."""
        db = self._db
        if db.in_transaction:
            return None
        version = self._turn_version
        if version is None:
            version = db.execute("PRAGMA data_version").fetchone()[0]
            if self.reactor is not None:
                self._turn_version = version
                self.reactor.callLater(0, self._end_turn)
        return (id(db), version, db.total_changes)

    def _end_turn(self) -> None:
        self._turn_version = None

    def _lookup(self, kind: str, key: str, query: Callable[[], Any]) -> Any:
        """C{query()}, answered from memory while the database is unchanged (L{_version}):
        the recipient lookups run several times per message (RCPT, then again at DATA)."""
        if threading.get_ident() != self._reactor_thread:
            # A delivery thread (a vacation reply's own addresses): asked of the database;
            # the memory and its per-turn version are the reactor thread's alone.
            return query()
        version = self._version()
        if version is None:
            return query()
        if version != self._lookups_key:
            self._lookups = {}
            self._lookups_key = version
        lookups = self._lookups
        try:
            return lookups[kind, key]
        except KeyError:
            pass
        if len(lookups) >= MAX_CACHED_LOOKUPS:
            lookups.clear()
        answer = lookups[kind, key] = query()
        return answer

    def is_local_domain(self, domain: str) -> bool:
        """Whether C{domain} is one of ours.  The domain list is kept in memory while the
        database is unchanged (L{_lookup}); it is asked several times per recipient."""
        db = self._db
        names: frozenset[str] = self._lookup(
            "domains", "", lambda: frozenset(r[0] for r in db.execute("SELECT name FROM domains"))
        )
        return domain.lower() in names

    # users

    def add_user(
        self, address: str, password_hash: str, quota: Quota = Quota()
    ) -> tuple[Mailbox, bool]:
        """Add a user with C{quota}; return (mailbox, whether its domain was added too).

        @raise StoreError: if the address is invalid or already a user or alias.
        """
        mbox = _new_mailbox(address)
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
        key = address.lower()
        row = self._lookup(
            "quota",
            key,
            lambda: self._db.execute(
                "SELECT quota_storage, quota_messages FROM users WHERE address=?", (key,)
            ).fetchone(),
        )
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
        key = address.lower()
        row = self._lookup(
            "user",
            key,
            lambda: self._db.execute("SELECT 1 FROM users WHERE address=?", (key,)).fetchone(),
        )
        return row is not None

    # aliases

    def add_alias(self, address: str, targets: Iterable[str]) -> Alias:
        """Point C{address} (in a local domain) at C{targets} (local or remote addresses).

        C{address} may be C{@domain}: the domain's catch-all, for local parts that are no
        user or alias (L{route}).  Adding to an existing alias adds targets.
        @raise StoreError: for a non-local alias domain, an alias that is a user, invalid
        addresses, or no targets.
        """
        key = _alias_key(address, new=True)
        domain = key.rpartition("@")[2]
        normalised = sorted({str(_new_mailbox(t)) for t in targets})
        if not normalised:
            raise StoreError("an alias needs at least one target")
        if not self.is_local_domain(domain):
            raise StoreError(f"{domain} is not a local domain; add it first")
        if self.is_user(key):
            raise StoreError(f"{key} is a user, not an alias")
        if key in normalised:
            raise StoreError(f"{key} cannot be an alias of itself")
        with self._transaction():
            self._db.executemany(
                "INSERT OR IGNORE INTO aliases(address, target) VALUES (?, ?)",
                [(key, t) for t in normalised],
            )
        return Alias(key, tuple(self.alias_targets(key)))

    def delete_alias(self, address: str) -> str:
        """Remove an alias (or C{@domain} catch-all) and all its targets; return its
        normalised name.  @raise StoreError: if unknown."""
        key = _alias_key(address)
        cur = self._db.execute("DELETE FROM aliases WHERE address=?", (key,))
        if cur.rowcount == 0:
            raise StoreError(f"no such alias {key}")
        return key

    def alias_targets(self, address: str) -> list[str]:
        key = address.lower()
        targets: tuple[str, ...] = self._lookup(
            "alias",
            key,
            lambda: tuple(
                r[0]
                for r in self._db.execute(
                    "SELECT target FROM aliases WHERE address=? ORDER BY target", (key,)
                )
            ),
        )
        return list(targets)

    def aliases(self) -> list[Alias]:
        rows = self._db.execute("SELECT address, target FROM aliases ORDER BY address, target")
        grouped: dict[str, list[str]] = {}
        for address, target in rows:
            grouped.setdefault(address, []).append(target)
        return [Alias(a, tuple(t)) for a, t in grouped.items()]

    # lookups used by the protocols

    def accepts(self, mbox: Mailbox) -> bool:
        """Whether mail to C{mbox} is accepted here (RCPT time check): L{route} finds a
        user, an alias, a role address or a catch-all for it."""
        return self.route(mbox) is not None

    def split_detail(self, mbox: Mailbox) -> tuple[Mailbox, str] | None:
        """C{user+detail@domain} -> (C{user@domain}, C{detail}) for the configured
        delimiter (RFC 5233 §1), or C{None} when there is no delimiter to split at."""
        delimiter = self.recipient_delimiter
        if not delimiter or delimiter not in mbox.local:
            return None
        user, _, detail = mbox.local.partition(delimiter)
        if not user:
            return None
        return Mailbox(user, mbox.domain), detail

    def route(self, mbox: Mailbox) -> Route | None:
        """How mail to C{mbox} in a local domain is routed, or C{None}: unknown here.

        The one lookup order for port 25, submission and delivery (Postfix's virtual
        alias order): the full address as a user or alias; then, when the local part holds
        the recipient delimiter, the address without its detail (RFC 5233; so an explicit
        C{alice+work@} wins over splitting); then C{postmaster@} (RFC 5321 §4.5.1,
        L{postmaster_of}) and C{abuse@} (RFC 2142, to wherever C{postmaster@} goes); last
        the domain's C{@domain} catch-all.  Non-local domains get C{None}.
        """
        if not self.is_local_domain(mbox.domain):
            return None
        split = self.split_detail(mbox)
        for candidate, detail in ((mbox, None), *([split] if split else [])):
            key = str(candidate)
            if self.is_user(key):
                return Route(user=candidate, detail=detail)
            targets = self.alias_targets(key)
            if targets:
                return Route(targets=tuple(Mailbox.parse(t) for t in targets), detail=detail)
        for candidate in (mbox, *([split[0]] if split else [])):
            if candidate.local == POSTMASTER:
                admin = self.postmaster_of(candidate.domain)
                if admin is not None:
                    return Route(targets=(admin,))
            elif candidate.local == ABUSE:
                postmaster = Mailbox(POSTMASTER, candidate.domain)
                if self.route(postmaster) is not None:
                    return Route(targets=(postmaster,))
        catch_all = self.alias_targets("@" + mbox.domain)
        if catch_all:
            return Route(targets=tuple(Mailbox.parse(t) for t in catch_all))
        return None

    def domains_without_admin(self) -> list[str]:
        """Local domains with neither a C{postmaster@} user nor alias (their postmaster mail
        falls back to L{postmaster_of}'s guess; C{check-config} warns)."""
        return [
            d
            for d in self.domains()
            if not self.is_user(f"{POSTMASTER}@{d}") and not self.alias_targets(f"{POSTMASTER}@{d}")
        ]

    def unknown_alias_targets(self) -> list[tuple[str, str]]:
        """(alias, target) for each alias target in a local domain that L{route} finds
        nothing for (a user deleted since, a typo): L{resolve} drops that copy of the
        alias's mail without a word, so C{check-config} warns."""
        unknown = []
        for alias in self.aliases():
            for target in alias.targets:
                mbox = Mailbox.parse(target)
                if self.is_local_domain(mbox.domain) and self.route(mbox) is None:
                    unknown.append((alias.address, target))
        return unknown

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
        """Final recipients of C{mbox}: users and remote addresses after alias expansion
        (L{resolve} without the details)."""
        return [final for final, _detail in self.resolve(mbox)]

    def resolve(self, mbox: Mailbox) -> list[tuple[Mailbox, str | None]]:
        """Final recipients of C{mbox}, each with the RFC 5233 detail by which C{mbox}
        named that user directly (C{alice+lists@} -> C{(alice@, "lists")}), else C{None}.

        Each local address is resolved by L{route} (users, aliases, subaddresses, role
        addresses, catch-all); aliases expand recursively, at most L{MAX_ALIAS_DEPTH} deep;
        loops and unknown local targets are dropped.  An alias that names itself among its
        targets also delivers to itself only if it is a user.
        """
        result: dict[str, tuple[Mailbox, str | None]] = {}
        seen: set[str] = set()

        def walk(m: Mailbox, depth: int) -> None:
            key = str(m)
            if key in seen or depth > MAX_ALIAS_DEPTH:
                return
            seen.add(key)
            if not self.is_local_domain(m.domain):
                result.setdefault(key, (m, None))
                return
            route = self.route(m)
            if route is None:
                return
            if route.user is not None:
                detail = route.detail if depth == 0 else None
                result.setdefault(str(route.user), (route.user, detail))
                return
            for t in route.targets:
                walk(t, depth + 1)

        walk(mbox, 0)
        return list(result.values())

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
            if alias.address.startswith("@"):  # a catch-all: not an address to send as
                continue
            if any(str(m) == user.lower() for m in self.expand(Mailbox.parse(alias.address))):
                owned.add(alias.address)
        return owned

    def owns(self, user: str, address: str) -> bool:
        """Whether C{user} may send as C{address}: one of L{owned_addresses}, or a
        subaddress of one (C{alice+news@} for C{alice@}, RFC 5233) that is not itself a
        user or alias."""
        try:
            mbox = Mailbox.parse(address)
        except AddressError:
            return False
        owned = self.owned_addresses(user)
        if str(mbox) in owned:
            return True
        split = self.split_detail(mbox)
        if split is None or self.is_user(str(mbox)) or self.alias_targets(str(mbox)):
            return False
        return str(split[0]) in owned

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
