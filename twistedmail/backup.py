"""A consistent copy of a data directory while the server runs, and its restore (issue 13).

L{backup} copies C{DATA_DIR} to C{TARGET/data/}:

  - every SQLite database (the account store, the import ledger, every folder's
    C{twistedmail.index}, any other file with the SQLite header) through SQLite's online
    backup API (C{sqlite3.Connection.backup}): a transaction-consistent copy taken while the
    server reads and writes it; C{-wal}/C{-shm}/C{-journal} files are not copied (the copy
    holds their content);
  - every Maildir folder (a directory with C{cur/}) under its folder lock, the lock the server
    takes to deliver, APPEND, change flags or expunge: its C{dovecot-uidlist},
    C{dovecot-keywords} and message files are copied as one state, so every message has its
    UID and flags of the same moment.  Message files are hard-linked when the target is on
    the same file system (nothing here or in Dovecot writes a message file in place: a
    flag change is a rename, a new message a new file), else copied; C{tmp/} stays empty;
  - the outbound queue with each message's C{.msg} before its C{.json} envelope (the
    envelope is the commit point, so no envelope is copied without its message);
  - everything else (DKIM keys, TLS files, Sieve scripts and their active link, the
    throttle state, C{deleted/}) as copies keeping modes and times; sockets and lock files
    are left out;

then the config file to C{TARGET/config/} and a C{TARGET/manifest.json} (format version,
time, the data dir, every file with its size).  L{restore} copies C{TARGET/data/} into a
data dir that is missing or empty (the caller checks that no server runs) and checks every
file of the manifest arrived with its size.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import sqlite3
import stat
import time
from collections.abc import Callable
from pathlib import Path

import attrs

from twistedmail.maildir import Folder

MANIFEST = "manifest.json"
FORMAT_VERSION = 1
SQLITE_MAGIC = b"SQLite format 3\x00"
SKIPPED_SUFFIXES = ("-wal", "-shm", "-journal", ".lock")

Progress = Callable[[str], None]


class BackupError(Exception):
    """A target that cannot be used or a backup that is not one; one line for the admin."""


@attrs.frozen
class Summary:
    """What a backup or a restore did: files, octets, databases, hard links made."""

    files: int
    octets: int
    databases: int
    linked: int


def _is_sqlite(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(16) == SQLITE_MAGIC
    except OSError:
        return False


def _copy_database(source: Path, target: Path) -> None:
    """SQLite's online backup: a consistent snapshot, safe while others write."""
    src = sqlite3.connect(source, timeout=30)
    try:
        dst = sqlite3.connect(target)
        try:
            src.backup(dst)
        finally:
            dst.close()
    finally:
        src.close()
    shutil.copystat(source, target)


def empty_or_missing(path: Path) -> bool:
    return not path.exists() or (path.is_dir() and not any(path.iterdir()))


class _Copier:
    def __init__(self, source: Path, target: Path, link: bool) -> None:
        self.source, self.target, self.link = source, target, link
        self.files: list[tuple[str, int]] = []
        self.octets = self.databases = self.linked = 0

    def _record(self, out: Path) -> None:
        size = out.lstat().st_size
        self.files.append((out.relative_to(self.target).as_posix(), size))
        self.octets += size

    def mkdir(self, src: Path, out: Path) -> None:
        out.mkdir(exist_ok=True)
        os.chmod(out, stat.S_IMODE(src.stat().st_mode))

    def entry(self, src: Path, out: Path, message: bool = False) -> bool:
        """Copy one non-directory entry; C{False} when it vanished."""
        try:
            st = src.lstat()
        except FileNotFoundError:
            return False
        if stat.S_ISLNK(st.st_mode):
            os.symlink(os.readlink(src), out)
            self.files.append((out.relative_to(self.target).as_posix(), 0))
            return True
        if not stat.S_ISREG(st.st_mode) or src.name.endswith(SKIPPED_SUFFIXES):
            return False
        try:
            if _is_sqlite(src):
                _copy_database(src, out)
                self.databases += 1
            elif message and self.link:
                try:
                    os.link(src, out)
                    self.linked += 1
                except OSError as e:
                    if e.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                        raise
                    self.link = False
                    shutil.copy2(src, out)
            else:
                shutil.copy2(src, out)
        except FileNotFoundError:
            return False
        self._record(out)
        return True


def backup(
    data_dir: Path,
    target: Path,
    config_file: Path | None,
    progress: Progress,
    version: str = "",
) -> Summary:
    """Copy C{data_dir} to C{target} (see the module docstring) while the server may run.

    @raise BackupError: C{target} is not empty, or inside C{data_dir}.
    """
    data_dir, target = data_dir.resolve(), target.resolve()
    if not empty_or_missing(target):
        raise BackupError(f"{target} is not empty")
    if target == data_dir or data_dir in target.parents:
        raise BackupError(f"{target} is inside the data dir {data_dir}")
    target.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(target, 0o700)
    out_root = target / "data"
    copier = _Copier(data_dir, target, link=True)
    folders = 0
    for dirpath, dirnames, filenames in os.walk(data_dir):
        here = Path(dirpath)
        out = out_root / here.relative_to(data_dir)
        copier.mkdir(here, out)
        for name in list(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)
                copier.entry(here / name, out / name)
        if (here / "cur").is_dir() and (here / "new").is_dir():
            _backup_folder(copier, here, out, filenames)
            dirnames[:] = [d for d in dirnames if d not in ("cur", "new", "tmp")]
            folders += 1
            if folders % 100 == 0:
                progress(f"{folders} folder(s) copied")
            continue
        if here == data_dir / "queue" / "tmp":
            dirnames[:] = []
            continue  # half-written files: never part of a backup
        copied: set[str] = set()
        # a queue entry's message before its envelope (the envelope is the commit point)
        for name in sorted(filenames, key=lambda n: (n.endswith(".json"), n)):
            msg = name[: -len(".json")] + ".msg"
            if name.endswith(".json") and msg in filenames and msg not in copied:
                continue
            if copier.entry(here / name, out / name):
                copied.add(name)
    if config_file is not None and config_file.is_file():
        (target / "config").mkdir(mode=0o700)
        shutil.copy2(config_file, target / "config" / config_file.name)
        copier._record(target / "config" / config_file.name)
    manifest = {
        "version": FORMAT_VERSION,
        "twistedmail": version,
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "data_dir": str(data_dir),
        "config": config_file.name if config_file is not None and config_file.is_file() else None,
        "databases": copier.databases,
        "files": [[path, size] for path, size in copier.files],
    }
    tmp = target / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=1) + "\n", "utf-8")
    os.replace(tmp, target / MANIFEST)
    return Summary(len(copier.files), copier.octets, copier.databases, copier.linked)


def _backup_folder(copier: _Copier, here: Path, out: Path, filenames: list[str]) -> None:
    """One Maildir folder under its lock: its own files, then C{cur/} and C{new/}."""
    folder = Folder(here)
    with folder._locked():  # noqa: SLF001 (the lock every writer of the folder takes)
        for name in filenames:
            copier.entry(here / name, out / name)
        for sub in ("cur", "new", "tmp"):
            copier.mkdir(here / sub, out / sub)
        for sub in ("cur", "new"):
            for name in os.listdir(here / sub):
                copier.entry(here / sub / name, out / sub / name, message=True)


def read_manifest(source: Path) -> dict[str, object]:
    """@raise BackupError: when C{source} holds no manifest this version reads."""
    try:
        manifest = json.loads((source / MANIFEST).read_text("utf-8"))
    except FileNotFoundError:
        raise BackupError(f"{source} is not a twistedmail backup (no {MANIFEST})") from None
    except (OSError, ValueError) as e:
        raise BackupError(f"{source / MANIFEST}: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("version") != FORMAT_VERSION:
        raise BackupError(f"{source / MANIFEST}: not a backup format this version reads")
    return manifest


def restore(
    source: Path, data_dir: Path, progress: Progress, owner: tuple[int, int] | None = None
) -> Summary:
    """Copy the backup C{source} into C{data_dir} (missing or empty: the caller moves an
    existing one aside) and check every file of the manifest with its size.

    @param owner: (uid, gid) to give every restored file and directory (a restore run as
        root for a server that runs as another user).

    @raise BackupError: not a backup, a non-empty C{data_dir}, or a file missing after.
    """
    source = source.resolve()
    manifest = read_manifest(source)
    if not empty_or_missing(data_dir):
        raise BackupError(f"data dir {data_dir} is not empty")
    data = source / "data"
    copier = _Copier(data, data_dir.parent, link=False)
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    count = 0
    for dirpath, dirnames, filenames in os.walk(data):
        here = Path(dirpath)
        out = data_dir / here.relative_to(data)
        copier.mkdir(here, out)
        for name in list(dirnames):
            if (here / name).is_symlink():
                dirnames.remove(name)
                os.symlink(os.readlink(here / name), out / name)
        for name in filenames:
            src = here / name
            if src.is_symlink():
                os.symlink(os.readlink(src), out / name)
            else:
                shutil.copy2(src, out / name)
            count += 1
            if count % 5000 == 0:
                progress(f"{count} file(s) restored")
    if owner is not None:
        for dirpath, dirnames, filenames in os.walk(data_dir):
            for name in [".", *dirnames, *filenames]:
                os.lchown(os.path.join(dirpath, name), *owner)
    octets = 0
    files = manifest.get("files")
    for path, size in files if isinstance(files, list) else []:
        if not path.startswith("data/"):
            continue
        restored = data_dir / path[len("data/") :]
        if not restored.is_symlink():
            try:
                actual = restored.stat().st_size
            except FileNotFoundError:
                raise BackupError(f"{path} is missing after the restore") from None
            if actual != size:
                raise BackupError(f"{path} has {actual} octets, the manifest says {size}")
            octets += size
    databases = manifest.get("databases")
    return Summary(count, octets, databases if isinstance(databases, int) else 0, 0)
