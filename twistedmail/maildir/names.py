"""Maildir names and sizes: unique file names, the C{:2,} info flags and keywords, the
,S=/,W= sizes, CRLF reading, Maildir++ folder names (modified UTF-7, RFC 3501 §5.1.3),
and the errors of the store (the cr.yp.to/proto/maildir.html spec; Dovecot's and Courier's
extensions)."""

from __future__ import annotations

import io
import os
import re
import socket
import threading
import time
from pathlib import Path
from typing import IO

import attrs
from twisted.mail import imap4  # noqa: F401  (registers the "imap4-utf-7" codec, RFC 3501 §5.1.3)

from twistedmail.index import LEARNED

_BARE_LF = re.compile(rb"(?<!\r)\n")
UIDLIST = "dovecot-uidlist"
KEYWORDS = "dovecot-keywords"
MAX_KEYWORDS = 26
"""Keyword letters a..z per folder (Dovecot's MAILDIR_MAX_KEYWORDS)."""
MAX_KEYWORD_LENGTH = 50
"""Longest keyword name accepted, in octets (Dovecot's mail_max_keyword_length)."""
LOCKFILE = "twistedmail-uidlist.lock"
UIDVALIDITY_FILE = "twistedmail-uidvalidity"  # the last UIDVALIDITY given out in a Maildir
UIDLIST_LOCK = "dovecot-uidlist.lock"
"""Dovecot's dotlock of the UID list (maildir-uidlist.c), taken with the C{flock} above so that
a Dovecot or doveadm on the same Maildir never hands out a UID we hand out."""
SUBSCRIPTIONS = "subscriptions"
MAX_DIRNAME = 255  # NAME_MAX: a Maildir++ folder, .A.B.C, is one directory name
DELIMITER = "."
INBOX = "INBOX"
FLAG_LETTERS = "DFPRST"
# IMAP system flag <-> Maildir info letter (RFC 3501 §2.3.2; Maildir spec "info").
IMAP_TO_LETTER = {
    "\\Draft": "D",
    "\\Flagged": "F",
    "\\Answered": "R",
    "\\Seen": "S",
    "\\Deleted": "T",
}
LETTER_TO_IMAP = {v: k for k, v in IMAP_TO_LETTER.items()}
UNKNOWN_SIZE: int = LEARNED["size"]  # (-1)
"""The size of a message whose file name carries no Dovecot C{,W=}: its size with CRLF line
ends is not known until a consumer asks for it (L{Folder.sizes} measures it once)."""
UNKNOWN_MTIME: float = LEARNED["mtime"]  # (-inf)
"""The INTERNALDATE (the file's mtime, RFC 3501 §2.3.3) of a message indexed without a
C{stat} of its file (the first sync of a folder whose C{dovecot-uidlist} lists it): not known
until a consumer asks for it (L{Folder.dates} reads it once).  Never a file's mtime."""

_counter_lock = threading.Lock()
_counter = 0


class MaildirError(Exception):
    """A request against the store that cannot be done; the message is safe to show a client."""


class FolderGoneError(MaildirError):
    """The folder does not exist (deleted under a session that had it selected)."""


class FolderNameError(MaildirError):
    """A folder name that is not allowed (empty part, path characters, control characters)."""


def _safe_host() -> str:
    host = socket.gethostname() or "localhost"
    return host.replace("/", "\\057").replace(":", "\\072").replace(",", "\\054")


_HOST = _safe_host()


def unique_name(size: int, now: float | None = None, wire: int | None = None) -> str:
    """A new Maildir base name C{<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>[,W=<wire>]},
    unique per process (C{wire}: the size with CRLF line ends, Dovecot's virtual size)."""
    global _counter
    with _counter_lock:
        _counter += 1
        n = _counter
    t = time.time() if now is None else now
    secs = int(t)
    usecs = int((t - secs) * 1_000_000)
    # Zero-padded microseconds so that names of one process sort in creation order (Dovecot
    # does not pad; both are valid Maildir names).
    name = f"{secs}.M{usecs:06d}P{_pid}Q{n}.{_HOST},S={size}"
    return name if wire is None else f"{name},W={wire}"


_pid = os.getpid()
"""This process's id, for L{unique_name}: C{os.getpid()} is a system call, one per message
(issue 10); a forked child (a worker) takes its own at once (L{_forked})."""


def _forked() -> None:
    global _pid
    _pid = os.getpid()


os.register_at_fork(after_in_child=_forked)


_ARRIVAL = re.compile(r"(\d+)\.M(\d+)P\d+Q(\d+)\.")


def arrival_key(base: str) -> tuple[int, int, int, str]:
    """Sort key for new messages of equal mtime: (secs, usecs, counter, base) read from a
    C{unique_name}-shaped base name (Dovecot's too), so C{M99} sorts before C{M100}; other
    names sort after them, by name."""
    m = _ARRIVAL.match(base)
    if m is None:
        return (2**63, 0, 0, base)
    return (int(m.group(1)), int(m.group(2)), int(m.group(3)), base)


def split_name(filename: str) -> tuple[str, str]:
    """Split C{base:2,FLAGS} into (base, flags); a name without info has flags C{""}."""
    base, sep, info = filename.partition(":2,")
    return base, info if sep else ""


def size_from_name(base: str) -> int | None:
    """The C{,S=} size in a base name, or C{None} when absent."""
    for field in base.split(",")[1:]:
        if field.startswith("S=") and field[2:].isdigit():
            return int(field[2:])
    return None


def wire_size(data: bytes) -> int:
    """Octets of C{data} with every bare LF made CRLF (RFC 5322 §2.1, RFC 3501 §2.3.4)."""
    return len(data) + data.count(b"\n") - data.count(b"\r\n")


def to_crlf(data: bytes) -> bytes:
    """C{data} with every bare LF made CRLF (the wire form, RFC 3501 §2.3.4, RFC 1939 §3)."""
    if data.count(b"\n") == data.count(b"\r\n"):
        return data
    return _BARE_LF.sub(b"\r\n", data)


class CRLFReader(io.BufferedIOBase):
    """A binary message file read with bare LF line ends made CRLF, chunk by chunk (a CR
    at the end of one chunk and the LF starting the next stay one line end): what POP3
    streams (RFC 1939 §3) for a file another program wrote with LF line ends."""

    def __init__(self, file: IO[bytes]) -> None:
        super().__init__()
        self._file = file
        self._after_cr = False

    def readable(self) -> bool:
        return True

    def _convert(self, data: bytes) -> bytes:
        out = to_crlf(data)
        if self._after_cr and data[:1] == b"\n":
            out = out[1:]  # the CR added before this LF came in the previous chunk
        if data:
            self._after_cr = data[-1:] == b"\r"
        return out

    def read(self, size: int | None = -1) -> bytes:
        return self._convert(self._file.read(-1 if size is None else size))

    read1 = read

    def readline(self, size: int | None = -1) -> bytes:
        return self._convert(self._file.readline(-1 if size is None else size))

    def close(self) -> None:
        self._file.close()
        super().close()


def measure(path: str | Path) -> int:
    """The size of message file C{path} with CRLF line ends, read a chunk at a time (a CR
    ending one chunk and the LF starting the next are one line end, L{MEASURE_CHUNK}).

    @raise OSError: unreadable."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return measure_fd(fd)
    finally:
        os.close(fd)


def measure_fd(fd: int) -> int:
    """L{measure} of the open file C{fd}, read from where it stands to its end (left open).

    @raise OSError: unreadable."""
    total, after_cr = 0, False
    # (os.read allocates what it is asked for: a small file's size, not a whole chunk)
    chunk = os.read(fd, min(os.fstat(fd).st_size + 1, MEASURE_CHUNK))
    while chunk:
        total += wire_size(chunk) - (after_cr and chunk[:1] == b"\n")
        after_cr = chunk[-1:] == b"\r"
        chunk = os.read(fd, MEASURE_CHUNK)
    return total


MEASURE_CHUNK = 1 << 20
"""Octets L{measure} reads at a time."""


def read_fd(fd: int) -> bytes:
    """All of the open file C{fd} from where it stands (left open): one C{fstat} and, for a
    Maildir message (never written again once linked in), one C{read} of its size.  Python's
    C{open(fd).read()} costs three more system calls (C{ioctl}, two C{lseek}) and a second
    C{read} that finds the end (issue 10: a FETCH of bodies opens a file per message).  A
    short read goes on reading, and so does a file whose C{fstat} size is 0 (a pipe);
    what a file gained after the C{fstat} is not read (a message file is whole before it is
    linked into C{cur/} or C{new/}).

    @raise OSError: unreadable."""
    size = os.fstat(fd).st_size
    data = os.read(fd, size)
    if len(data) < size or not size:  # a short read, or a size unknown (not a regular file)
        parts = [data]
        chunk = os.read(fd, max(size - len(data), MEASURE_CHUNK))
        while chunk:
            parts.append(chunk)
            chunk = os.read(fd, MEASURE_CHUNK)
        return b"".join(parts)
    return data


def wire_size_from_name(base: str) -> int | None:
    """The size with CRLF line ends: Dovecot's C{,W=} when present, else C{,S=}, else C{None}.

    Dovecot saves messages with LF line ends (C{mail_save_crlf = no}) and names them
    C{,S=<file size>,W=<size with CRLF>}; ours are CRLF on disk and carry both (older
    versions wrote only C{,S=}).
    """
    for field in base.split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return size_from_name(base)


def dovecot_wire_size(base: str) -> int | None:
    """Dovecot's C{,W=} size (the message with CRLF line ends), or C{None} when absent."""
    for field in base.split(",")[1:]:
        if field.startswith("W=") and field[2:].isdigit():
            return int(field[2:])
    return None


def is_keyword(name: str) -> bool:
    """Whether C{name} is a keyword the store can keep: an RFC 3501 §9 C{flag-keyword} (an
    atom: ASCII, no CTL, SP or C{( ) { % * " \\ ]}) of at most L{MAX_KEYWORD_LENGTH}."""
    if not name or len(name) > MAX_KEYWORD_LENGTH:
        return False
    return all(0x20 < ord(c) < 0x7F and c not in '(){%*"\\]' for c in name)


def normalize_flags(letters: str) -> str:
    """Maildir info flags, deduplicated, in ASCII order as the spec requires."""
    return "".join(sorted(set(letters)))


ALL_LETTERS = FLAG_LETTERS + "abcdefghijklmnopqrstuvwxyz"
"""Every info letter a message can carry here (the system flags and the keyword letters)."""


@attrs.frozen
class FlagChange:
    """A change of a message's info letters, applied to the letters it has on disk at the
    moment of the change (DESIGN §6: flags change by delta, never by writing back a set read
    earlier): the result is (current - C{remove}) | C{add}, in ASCII order.

    STORE +FLAGS is C{FlagChange(add=...)}, -FLAGS C{FlagChange(remove=...)}, FLAGS a change
    that removes every letter IMAP can set and adds the new ones (RFC 3501 §6.4.6).
    """

    add: str = ""
    remove: str = ""

    def apply(self, letters: str) -> str:
        return normalize_flags("".join(c for c in letters if c not in self.remove) + self.add)


def encode_folder_name(name: str) -> str:
    """IMAP folder name (text) -> the Maildir++ directory name C{.A.B} (mUTF-7 parts).

    @raise FolderNameError: for INBOX, empty parts, C{/}, NUL or control characters, or a
        part beginning with C{.} (RFC 3501 §5.1 leaves names to the server; these would
        escape the folder or confuse Maildir++), or a directory name over L{MAX_DIRNAME}.
    """
    parts = name.split(DELIMITER)
    if name.upper() == INBOX:
        raise FolderNameError("INBOX is not a subfolder")
    for part in parts:
        if not part or part in (".", "..") or "/" in part or "\\" in part:
            raise FolderNameError("invalid folder name")
        if any(ord(c) < 0x20 or ord(c) == 0x7F for c in part):
            raise FolderNameError("invalid folder name")
        if len(part.encode("utf-8")) > 200:
            raise FolderNameError("folder name too long")
    encoded = "." + name.encode("imap4-utf-7").decode("ascii")
    if len(encoded) > MAX_DIRNAME:  # ENAMETOOLONG, after the parents were made
        raise FolderNameError("folder name too long")
    return encoded


def decode_folder_name(dirname: str) -> str:
    """The inverse of L{encode_folder_name}.  @raise FolderNameError: for a bad encoding."""
    try:
        return dirname[1:].encode("ascii").decode("imap4-utf-7")
    except (UnicodeError, ValueError):
        raise FolderNameError("undecodable folder name") from None
