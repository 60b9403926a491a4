"""Per-user quota: usage of a Maildir++ tree and the checks delivery and IMAP make (RFC 9208).

A user's usage is the sum of the C{,S=} sizes (RFC 9208 §5.1 STORAGE: the octets on disk,
which for our CRLF files is also the RFC822.SIZE IMAP reports; Dovecot's LF files are counted
by file size, as Dovecot's own quota does) and the number of messages (§5.2 MESSAGE) over
INBOX and every subfolder, C{new/} and C{cur/}: file names only, no message is opened.  Each
folder's figures are cached in memory with the modification times of its C{new/} and
C{cur/} directories, so a folder is listed again only when a file was added, removed or
renamed in it (by this process or any other); a directory changed within the last
L{TRUST_AFTER} seconds is never cached, as its mtime may not yet show a change in the same
clock tick (the rule Dovecot's maildir code follows).

Enforcement follows Dovecot's quota plugin: a message is refused when usage plus its size
would exceed the storage limit, or one more message the count limit (a limit of 0 is none).
Concurrent deliveries may overshoot a limit by a message or so; nothing is locked.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from twistedmail.accounts import AccountStore, Quota
from twistedmail.auth import RunInThread
from twistedmail.maildir import mailbox_root, size_from_name, split_name

TRUST_AFTER = 2.0
"""Seconds after which a directory's mtime is trusted to reflect every change in it."""


@attrs.frozen
class Usage:
    """What a user stores: C{storage} in octets and C{messages}, over all folders."""

    storage: int = 0
    messages: int = 0


class QuotaExceeded(Exception):
    """Storing the message would take the user over quota (SMTP 552 5.2.2, RFC 3463; IMAP
    C{NO [OVERQUOTA]}, RFC 9208 §4.3.1).

    @ivar address: the user.
    @ivar resource: C{"STORAGE"} or C{"MESSAGE"} (RFC 9208 §5).
    """

    def __init__(self, address: str, resource: str) -> None:
        super().__init__(f"{address}: {resource} quota exceeded")
        self.address = address
        self.resource = resource


def exceeded(quota: Quota, usage: Usage, size: int, count: int = 1) -> str | None:
    """The resource (C{"STORAGE"}/C{"MESSAGE"}) that storing C{count} more messages of
    C{size} octets in all would take past C{quota}, or C{None} when it fits."""
    if quota.storage and usage.storage + size > quota.storage:
        return "STORAGE"
    if quota.messages and usage.messages + count > quota.messages:
        return "MESSAGE"
    return None


def full(quota: Quota, usage: Usage) -> str | None:
    """The resource already at or over its limit (so no message can be added), or C{None}."""
    if quota.storage and usage.storage >= quota.storage:
        return "STORAGE"
    if quota.messages and usage.messages >= quota.messages:
        return "MESSAGE"
    return None


class UsageCache:
    """Usage of Maildir++ trees, listed by file name with a per-folder cache (blocking:
    call L{measure} in a thread; it is thread-safe).

    @param now: the wall clock (seconds), compared with directory mtimes.
    """

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self.now = now
        self._lock = threading.Lock()
        self._folders: dict[Path, tuple[tuple[int, int], Usage]] = {}

    def measure(self, root: Path) -> Usage:
        """The usage of the tree at C{root} (INBOX and its C{.Folder} siblings); a missing
        tree uses nothing."""
        storage = messages = 0
        for folder in _folders(root):
            usage = self._folder(folder)
            storage += usage.storage
            messages += usage.messages
        return Usage(storage, messages)

    def _folder(self, path: Path) -> Usage:
        key = (_mtime_ns(path / "new"), _mtime_ns(path / "cur"))
        if key == (-1, -1):
            return Usage()
        with self._lock:
            cached = self._folders.get(path)
        if cached is not None and cached[0] == key:
            return cached[1]
        usage = _list(path)
        if self.now() - max(key) / 1e9 >= TRUST_AFTER:
            with self._lock:
                self._folders[path] = (key, usage)
        return usage


def _mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except FileNotFoundError:
        return -1


def _folders(root: Path) -> list[Path]:
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return []
    subfolders = [root / n for n in names if n.startswith(".") and n not in (".", "..")]
    return [root] + [p for p in subfolders if (p / "cur").is_dir()]


def _list(path: Path) -> Usage:
    storage = messages = 0
    for sub in ("new", "cur"):
        try:
            names = os.listdir(path / sub)
        except FileNotFoundError:
            continue
        for name in names:
            if name.startswith("."):
                continue
            size = size_from_name(split_name(name)[0])
            if size is None:  # a file delivered by a tool that does not write S=
                try:
                    size = os.stat(path / sub / name).st_size
                except FileNotFoundError:
                    continue
            storage += size
            messages += 1
    return Usage(storage, messages)


class QuotaTracker:
    """The quota checks of delivery and IMAP: the store's limits against the usage on disk.

    @param store: the users' limits (read live, so C{twistedmail user quota} takes effect
        on the next check).
    @param mail_dir: C{DATA_DIR/mail}.
    @param run_in_thread: where the directory listings run.
    """

    def __init__(
        self,
        store: AccountStore,
        mail_dir: Path,
        run_in_thread: RunInThread,
        cache: UsageCache | None = None,
    ) -> None:
        self.store = store
        self.mail_dir = mail_dir
        self.run_in_thread = run_in_thread
        self.cache = cache or UsageCache()

    def quota(self, address: str) -> Quota:
        """The user's limits (unlimited for an unknown address)."""
        return self.store.quota(address) or Quota()

    async def usage(self, address: str) -> Usage:
        """What C{address} stores now (listed in a thread)."""
        usage: Usage = await self.run_in_thread(
            self.cache.measure, mailbox_root(self.mail_dir, address)
        )
        return usage

    def exceeded_at(self, quota: Quota, root: Path, size: int, count: int = 1) -> str | None:
        """L{exceeded} for the tree at C{root}: the resource that storing C{count} messages of
        C{size} octets in all would take past C{quota}, or C{None}; an unlimited quota lists
        nothing.  Blocking (the listing): call in a thread, as delivery does."""
        if quota.unlimited:
            return None
        return exceeded(quota, self.cache.measure(root), size, count)

    async def check(self, address: str, size: int, count: int = 1) -> None:
        """Whether C{count} messages of C{size} octets in all fit in the user's quota.

        @raise QuotaExceeded: when they do not.
        """
        quota = self.quota(address)
        if quota.unlimited:
            return  # (no thread hop)
        root = mailbox_root(self.mail_dir, address)
        resource = await self.run_in_thread(self.exceeded_at, quota, root, size, count)
        if resource is not None:
            raise QuotaExceeded(address, resource)

    async def check_not_full(self, address: str) -> None:
        """RCPT time (Dovecot's C{lmtp_rcpt_check_quota}): refuse a user already at or over
        a limit.  @raise QuotaExceeded: then."""
        quota = self.quota(address)
        if quota.unlimited:
            return
        resource = full(quota, await self.usage(address))
        if resource is not None:
            raise QuotaExceeded(address, resource)


@attrs.frozen
class DomainUsage:
    """What a local domain's users store: C{users}, C{storage} in octets, C{messages}."""

    users: int = 0
    storage: int = 0
    messages: int = 0


def usage_by_domain(
    store: AccountStore, mail_dir: Path, cache: UsageCache
) -> dict[str, DomainUsage]:
    """Per local domain, its users and what they store (blocking: call in a thread).  Each
    user's tree is measured through C{cache}: a folder whose directories did not change is
    not listed again, so this costs a few C{stat}s per folder (metrics, C{twistedmail
    status})."""
    totals = {domain: [0, 0, 0] for domain in store.domains()}
    for address in store.users():
        usage = cache.measure(mailbox_root(mail_dir, address))
        total = totals.setdefault(address.rpartition("@")[2], [0, 0, 0])
        total[0] += 1
        total[1] += usage.storage
        total[2] += usage.messages
    return {domain: DomainUsage(*total) for domain, total in totals.items()}
