"""A user's folder tree (INBOX and its Maildir++ subfolders, subscriptions), the mail
directory layout (C{DOMAIN/LOCAL}), the C{tmp/} sweep and the in-process change notices."""

from __future__ import annotations

import fcntl
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from twistedmail.maildir.dotlock import dotlock
from twistedmail.maildir.durable import fsync_dir, make_maildir
from twistedmail.maildir.folder import Folder
from twistedmail.maildir.names import (
    DELIMITER,
    INBOX,
    MAX_DIRNAME,
    SUBSCRIPTIONS,
    FolderNameError,
    MaildirError,
    decode_folder_name,
    encode_folder_name,
)

MOVED_PROBE = ".moved"
"""The dot file L{announce_moved} makes and removes (Maildir readers skip dot files)."""


def announce_moved(folder: Path, children: bool = False) -> None:
    """Make and remove a dot file in the C{new/} of C{folder} (and, with C{children}, of
    its C{.Name} folders: a whole Maildir), moved to another name (RENAME, C{user del}).
    A move changes nothing in C{cur/} or C{new/}, so no watcher heard of it: inotify
    follows those directories under their new name, and this event makes the sessions
    that selected the old one rescan it and find it gone (an idling session is told at
    once, as for a DELETE).  Best effort: a failure leaves them to learn at their next
    command, as before."""
    folders = [folder]
    if children:
        try:
            folders += [folder / d for d in os.listdir(folder) if d.startswith(".")]
        except OSError:
            return
    for each in folders:
        probe = each / "new" / f"{MOVED_PROBE}.{os.getpid()}.{uuid.uuid4().hex}"
        try:
            os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
            os.unlink(probe)
        except OSError:
            continue


class UserMaildir:
    """One user's folder tree: INBOX at C{root}, subfolders as Maildir++ siblings in it."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def ensure(self) -> None:
        """Create the INBOX if missing (first delivery or first login)."""
        make_maildir(self.root)

    def folder_path(self, name: str) -> Path:
        """The directory of folder C{name} (INBOX is case-insensitive, RFC 3501 §5.1).

        @raise FolderNameError: see L{encode_folder_name}.
        """
        if name.upper() == INBOX:
            return self.root
        return self.root / encode_folder_name(name)

    def folder(self, name: str) -> Folder:
        return Folder(self.folder_path(name))

    def folders(self) -> list[str]:
        """Every existing folder name, INBOX first, then subfolders sorted."""
        names = []
        try:
            dirs = os.listdir(self.root)
        except FileNotFoundError:
            return [INBOX]
        for d in dirs:
            if d.startswith(".") and d not in (".", "..") and (self.root / d / "cur").is_dir():
                try:
                    names.append(decode_folder_name(d))
                except FolderNameError:
                    continue
        return [INBOX] + sorted(names)

    def create(self, name: str) -> None:
        """Create folder C{name} (RFC 3501 §6.3.3). @raise MaildirError: if it exists."""
        path = self.folder_path(name)
        if path == self.root or (path / "cur").is_dir():
            raise MaildirError("mailbox already exists")
        self.ensure()
        make_maildir(path, folder=True)
        fsync_dir(self.root)

    def delete(self, name: str) -> None:
        """Delete folder C{name} and its messages (RFC 3501 §6.3.4); its children and its
        subscription stay.

        @raise MaildirError: for INBOX or a missing folder.
        """
        path = self.folder_path(name)
        if path == self.root:
            raise MaildirError("INBOX cannot be deleted")
        if not (path / "cur").is_dir():
            raise MaildirError("no such mailbox")
        trash = self.root / f".DELETED-{uuid.uuid4().hex}"
        os.rename(path, trash)  # atomic: the folder vanishes at once, then is removed
        shutil.rmtree(trash, ignore_errors=True)
        # its subscription stays: RFC 3501 §6.3.6, a server MUST NOT unilaterally remove a
        # name from the subscription list (LIST (SUBSCRIBED) shows it \NonExistent)

    def rename(self, old: str, new: str, children: list[tuple[str, str]] | None = None) -> None:
        """Rename C{old} and its children to C{new} (RFC 3501 §6.3.5).

        Renaming INBOX moves its messages into the new folder and leaves INBOX empty.
        @param children: L{renamed_children}, when the caller checked them already (the
            root is then not listed again).
        @raise MaildirError: for a missing source or an existing target.
        """
        src, dst = self.folder_path(old), self.folder_path(new)
        if dst == self.root or (dst / "cur").is_dir():
            raise MaildirError("mailbox already exists")
        if src == self.root:
            make_maildir(dst, folder=True)
            for sub in ("cur", "new"):
                for name in os.listdir(src / sub):
                    os.rename(src / sub / name, dst / sub / name)
            fsync_dir(dst / "cur")
            return
        if not (src / "cur").is_dir():
            raise MaildirError("no such mailbox")
        if children is None:
            children = self.renamed_children(old, new)
        os.rename(src, dst)
        for child, renamed in children:
            os.rename(self.root / child, self.root / renamed)
        fsync_dir(self.root)
        for folder in [dst] + [self.root / renamed for _, renamed in children]:
            announce_moved(folder)

    def renamed_children(self, old: str, new: str) -> list[tuple[str, str]]:
        """The directory names of C{old}'s children and theirs once C{old} is C{new}.

        @raise FolderNameError: a new name over L{MAX_DIRNAME} (checked before anything is
            renamed or created).
        """
        src, dst = self.folder_path(old), self.folder_path(new)
        if src == self.root:
            return []  # INBOX's messages move, its children stay
        children = [d for d in os.listdir(self.root) if d.startswith(src.name + DELIMITER)]
        renamed = [(child, dst.name + child[len(src.name) :]) for child in children]
        if any(len(name) > MAX_DIRNAME for _, name in renamed):
            raise FolderNameError("folder name too long")
        return renamed

    # subscriptions (RFC 3501 §6.3.6): one name per line

    def subscriptions(self) -> list[str]:
        try:
            text = (self.root / SUBSCRIPTIONS).read_text("utf-8")
        except FileNotFoundError:
            return []
        return [line for line in text.splitlines() if line and not line.startswith("V\t")]

    def _write_subscriptions(self, names: list[str]) -> None:
        self.ensure()
        tmp = self.root / f"{SUBSCRIPTIONS}.tmp"
        tmp.write_text("".join(n + "\n" for n in sorted(set(names))), "utf-8")
        os.replace(tmp, self.root / SUBSCRIPTIONS)

    @contextmanager
    def _subscriptions_locked(self) -> Iterator[None]:
        """Two sessions changing subscriptions at once must not lose one's change (the file
        is read, changed and written whole): our C{flock}, and Dovecot's dotlock
        C{subscriptions.lock} (stale after 30 s, its SUBSCRIPTION_FILE_CHANGE_TIMEOUT)."""
        self.ensure()
        fd = os.open(self.root / f"twistedmail-{SUBSCRIPTIONS}.lock", os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with dotlock(self.root / f"{SUBSCRIPTIONS}.lock", self.root / SUBSCRIPTIONS, stale=30):
                yield
        finally:
            os.close(fd)

    def subscribe(self, name: str) -> None:
        with self._subscriptions_locked():
            subs = self.subscriptions()
            if name not in subs:
                self._write_subscriptions(subs + [name])

    def unsubscribe(self, name: str) -> None:
        if not (self.root / SUBSCRIPTIONS).exists():
            return
        with self._subscriptions_locked():
            subs = self.subscriptions()
            if name in subs:
                self._write_subscriptions([s for s in subs if s != name])


TMP_MAX_AGE = 36 * 3600.0
"""Seconds after which a file in C{tmp/} is a crash's leftover (the Maildir spec: "A program
should remove any file in tmp that hasn't been accessed in 36 hours"; Dovecot does the same)."""


def clean_tmp(mail_dir: Path, now: float | None = None, max_age: float = TMP_MAX_AGE) -> int:
    """Remove the files in C{tmp/} of every folder of every user under C{mail_dir}
    (C{DOMAIN/LOCALPART/[.FOLDER/]tmp/}) that nobody accessed, changed or linked for
    C{max_age} seconds.  Blocking (run it in a thread); a folder with an empty C{tmp/} costs
    one directory read.

    @return: how many files were removed.
    """
    cutoff = (time.time() if now is None else now) - max_age
    removed = 0

    def dirs(path: Path) -> list[os.DirEntry[str]]:
        try:
            with os.scandir(path) as it:
                return [e for e in it if e.is_dir(follow_symlinks=False)]
        except OSError:
            return []

    for domain in dirs(mail_dir):
        for user in dirs(Path(domain.path)):
            folders = [Path(user.path)]
            folders += [Path(d.path) for d in dirs(Path(user.path)) if d.name.startswith(".")]
            for folder in folders:
                try:
                    with os.scandir(folder / "tmp") as it:
                        entries = [e for e in it if e.is_file(follow_symlinks=False)]
                except OSError:
                    continue
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                        if max(st.st_atime, st.st_mtime, st.st_ctime) < cutoff:
                            os.unlink(entry.path)
                            removed += 1
                    except OSError:
                        continue
    return removed


def mailbox_root(mail_dir: Path, address: str) -> Path:
    """C{DATA_DIR/mail/DOMAIN/LOCALPART}, lower-cased (DESIGN §3).

    @raise MaildirError: when either part could escape the mail directory.
    """
    local, _, domain = address.lower().rpartition("@")
    for part in (local, domain):
        if not part or part in (".", "..") or "/" in part or "\0" in part:
            raise MaildirError("invalid address for a mailbox")
    return mail_dir / domain / local


class ChangeNotifier:
    """In-process notice that a folder changed (delivery, APPEND, flags, expunge).

    IMAP sessions subscribe per folder path to push EXISTS/EXPUNGE/FETCH while IDLE
    (RFC 2177); the notifier is called on the reactor thread.
    """

    def __init__(self) -> None:
        self._listeners: dict[Path, list[Callable[[], None]]] = {}

    def subscribe(self, path: Path, callback: Callable[[], None]) -> None:
        self._listeners.setdefault(path, []).append(callback)

    def unsubscribe(self, path: Path, callback: Callable[[], None]) -> None:
        callbacks = self._listeners.get(path, [])
        if callback in callbacks:
            callbacks.remove(callback)
        if not callbacks:
            self._listeners.pop(path, None)

    def changed(self, path: Path) -> None:
        for callback in list(self._listeners.get(path, [])):
            callback()

    def subscriptions(self) -> int:
        """How many callbacks are subscribed (open selected folders; for the control
        socket's C{connections}: it returns to 0 when every session has ended)."""
        return sum(len(callbacks) for callbacks in self._listeners.values())
