"""Dovecot's C{dovecot-keywords} file: the folder's keyword names, one per index 0-25, each
shown in a Maildir file name as the letter C{a}-C{z} (RFC 3501 §2.3.2 keywords; Dovecot's
Maildir format, so Dovecot reads the same flags).  The caller holds the folder lock for a
write (L{twistedmail.maildir.folder.Folder.keyword_letters})."""

from __future__ import annotations

import os
from pathlib import Path

from twistedmail.maildir.durable import fsync_dir
from twistedmail.maildir.names import KEYWORDS, MAX_KEYWORDS


def read(folder: Path) -> dict[int, str]:
    """{index: name} of the folder's C{dovecot-keywords} (empty when absent); lines out of
    range or malformed are skipped."""
    try:
        text = (folder / KEYWORDS).read_text("utf-8", "surrogateescape")
    except FileNotFoundError:
        return {}
    out: dict[int, str] = {}
    for line in text.splitlines():
        index, sep, name = line.partition(" ")
        if sep and index.isdigit() and int(index) < MAX_KEYWORDS and name:
            out[int(index)] = name
    return out


def write(folder: Path, table: dict[int, str]) -> None:
    """Write the map whole: a temporary file, fsync, rename, the directory fsynced."""
    tmp = folder / f"{KEYWORDS}.tmp"
    with open(tmp, "w", encoding="utf-8", errors="surrogateescape") as f:
        f.write("".join(f"{i} {table[i]}\n" for i in sorted(table)))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, folder / KEYWORDS)
    fsync_dir(folder)
