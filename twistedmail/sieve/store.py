"""A user's Sieve scripts on disk, in Dovecot Pigeonhole's default layout.

C{~/sieve/NAME.sieve} holds each script and the symbolic link C{~/.dovecot.sieve} ->
C{sieve/NAME.sieve} names the active one, with C{~} the user's Maildir home, so that scripts
move between Pigeonhole and us in both directions.  Names follow RFC 5804 §1.6 (no control
characters, no U+2028/U+2029) plus Pigeonhole's file rules (no C{/}, not starting with C{.});
every path is built from a validated name below the home, and writes are atomic (temporary
file, fsync, rename, fsync of the directory), so a crash leaves the old or the new script.
"""

from __future__ import annotations

import os
from pathlib import Path

from twistedmail.maildir import fsync_dir

SCRIPTS_DIR = "sieve"
ACTIVE_LINK = ".dovecot.sieve"
SUFFIX = ".sieve"
MAX_NAME_LENGTH = 256
"""Characters; Pigeonhole's C{SIEVE_MAX_SCRIPT_NAME_LEN}."""
MAX_FILE_NAME = 255
"""Octets of C{NAME.sieve}: NAME_MAX of the file system."""
ORIGINAL_NAME = "dovecot.orig"
"""Where Pigeonhole moves a regular C{.dovecot.sieve} file when another script is activated."""


class ScriptNameError(ValueError):
    """The name is not acceptable (RFC 5804 §1.6); ManageSieve answers NO."""


class ScriptNotFoundError(LookupError):
    """No script of that name (RFC 5804 §1.3 NONEXISTENT)."""


class ScriptExistsError(FileExistsError):
    """RENAMESCRIPT to a name already taken (RFC 5804 §2.11.1 ALREADYEXISTS)."""


class ActiveScriptError(Exception):
    """The active script cannot be deleted (RFC 5804 §2.10 ACTIVE)."""


def validate_name(name: str) -> str:
    """Return C{name} if usable as a script name.  @raise ScriptNameError: otherwise."""
    if not name:
        raise ScriptNameError("empty script name")
    if len(name) > MAX_NAME_LENGTH:
        raise ScriptNameError(f"script name longer than {MAX_NAME_LENGTH} characters")
    for c in name:
        cp = ord(c)
        # RFC 5804 §1.6: Net-Unicode without control characters (Cc) nor line/para separators.
        if cp < 0x20 or 0x7F <= cp <= 0x9F or cp in (0x2028, 0x2029):
            raise ScriptNameError("control character in script name")
        if 0xD800 <= cp <= 0xDFFF:
            raise ScriptNameError("invalid character in script name")
    if "/" in name or name.startswith("."):
        raise ScriptNameError("script name contains '/' or starts with '.'")
    if len((name + SUFFIX).encode("utf-8")) > MAX_FILE_NAME:  # ENAMETOOLONG when stored
        raise ScriptNameError(f"script file name longer than {MAX_FILE_NAME} octets")
    return name


class SieveStore:
    """The scripts of one user, below C{home} (the user's Maildir home)."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.directory = home / SCRIPTS_DIR
        self.link = home / ACTIVE_LINK

    def path(self, name: str) -> Path:
        return self.directory / (validate_name(name) + SUFFIX)

    def _ensure_directory(self) -> None:
        if self.directory.is_symlink():
            raise ScriptNameError(f"{self.directory} is a symbolic link; refusing to follow it")
        if not self.directory.is_dir():
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            fsync_dir(self.home)  # the new sieve/ entry is durable, as the scripts in it

    def names(self) -> list[str]:
        """Every script name, sorted."""
        try:
            entries = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        out = []
        for entry in entries:
            if entry.endswith(SUFFIX) and not entry.startswith("."):
                try:
                    out.append(validate_name(entry[: -len(SUFFIX)]))
                except ScriptNameError:
                    continue
        return sorted(out)

    def list(self) -> list[tuple[str, bool]]:
        """(name, is active) for every script (RFC 5804 §2.7 LISTSCRIPTS)."""
        active = self.active()
        return [(name, name == active) for name in self.names()]

    def active(self) -> str | None:
        """The active script's name, or None.  Only a link into C{sieve/} counts."""
        try:
            target = os.readlink(self.link)
        except (FileNotFoundError, OSError):
            return None
        parts = Path(target).parts
        if len(parts) == 2 and parts[0] == SCRIPTS_DIR and parts[1].endswith(SUFFIX):
            name = parts[1][: -len(SUFFIX)]
        elif Path(target).is_absolute() and Path(target).parent == self.directory:
            name = Path(target).name[: -len(SUFFIX)] if target.endswith(SUFFIX) else ""
        else:
            return None
        try:
            validate_name(name)
        except ScriptNameError:
            return None
        return name if self.path(name).is_file() else None

    def get(self, name: str) -> bytes:
        """The script's bytes.  @raise ScriptNotFoundError."""
        try:
            fd = os.open(self.path(name), os.O_RDONLY | os.O_NOFOLLOW)
        except (FileNotFoundError, OSError):
            raise ScriptNotFoundError(name) from None
        with os.fdopen(fd, "rb") as f:
            return f.read()

    def put(self, name: str, data: bytes) -> None:
        """Create or replace a script, atomically (RFC 5804 §2.6 PUTSCRIPT)."""
        target = self.path(name)
        self._ensure_directory()
        tmp = self.directory / f".{os.getpid()}.{id(data)}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(self.directory)

    def activate(self, name: str) -> None:
        """Make C{name} the active script (RFC 5804 §2.8 SETACTIVE), by an atomic link swap."""
        if not self.path(name).is_file():
            raise ScriptNotFoundError(name)
        if self.link.exists() and not self.link.is_symlink():
            # A script Pigeonhole users kept as a plain file: keep it, as Pigeonhole does.
            self._ensure_directory()
            os.replace(self.link, self.path(ORIGINAL_NAME))
        tmp = self.home / f"{ACTIVE_LINK}.{os.getpid()}.tmp"
        tmp.unlink(missing_ok=True)
        os.symlink(f"{SCRIPTS_DIR}/{name}{SUFFIX}", tmp)
        os.replace(tmp, self.link)
        fsync_dir(self.home)

    def deactivate(self) -> None:
        """No active script (RFC 5804 §2.8 SETACTIVE "")."""
        if self.link.is_symlink():
            self.link.unlink()
            fsync_dir(self.home)

    def delete(self, name: str) -> None:
        """@raise ActiveScriptError: for the active script (RFC 5804 §2.10).
        @raise ScriptNotFoundError."""
        path = self.path(name)
        if self.active() == name:
            raise ActiveScriptError(name)
        try:
            path.unlink()
        except FileNotFoundError:
            raise ScriptNotFoundError(name) from None
        fsync_dir(self.directory)

    def rename(self, old: str, new: str) -> None:
        """RFC 5804 §2.11.1 RENAMESCRIPT; the active link follows the script."""
        source, target = self.path(old), self.path(new)
        if not source.is_file():
            raise ScriptNotFoundError(old)
        if target.exists():
            raise ScriptExistsError(new)
        was_active = self.active() == old
        os.link(source, target)  # fails if a racing writer created it: never overwrite
        if was_active:
            self.activate(new)
        source.unlink()
        fsync_dir(self.directory)
