"""Writes that are on disk before we answer: a whole file written and fsynced, a directory
fsynced so a new or renamed entry in it survives a crash (fsync(2), rename(2); the Maildir
spec's "the file is safely on disk" step).

The lowest layer of the package (no twistedmail imports), so both the Maildir code and
modules beside it in the layers (C{dkim}'s key files) write files the one way;
L{twistedmail.maildir} re-exports both names.
"""

from __future__ import annotations

import os


def write_file(path: str | os.PathLike[str], data: bytes, *, exclusive: bool = True) -> None:
    """Write all of C{data} to the file C{path} (0600; a new one, else C{exclusive=False}
    truncates an existing one) and fsync it: C{os.write} may write less than asked.  Its
    directory is not fsynced (the caller renames or links the file first).

    @raise FileExistsError: C{exclusive} and C{path} exists (nothing was written).
    """
    flags = os.O_WRONLY | os.O_CREAT | (os.O_EXCL if exclusive else os.O_TRUNC)
    fd = os.open(path, flags, 0o600)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """fsync the directory C{path}: the entries created, renamed or removed in it are durable."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
