"""Maildir++ storage: durable delivery, folders, flags and the UID list.

On-disk format (chosen to match Dovecot, so a mailbox moves between the two servers):

  - a mailbox is C{ROOT/{cur,new,tmp}}; subfolders are Maildir++ siblings C{ROOT/.Sent/},
    C{ROOT/.Lists.Work/} (IMAP hierarchy delimiter C{"."}, names in modified UTF-7 on disk,
    RFC 3501 §5.1.3), each with a C{maildirfolder} marker file;
  - file names are C{<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<size>[:2,<flags>]} (the
    Maildir spec at cr.yp.to/proto/maildir.html; C{,S=} (file size), C{,W=} (size with CRLF
    line ends, so indexing never reads the file) and the C{:2,} info are Dovecot's and
    Courier's): flags C{D}raft, C{F}lagged, C{P}assed, C{R}eplied, C{S}een, C{T}rashed,
    in ASCII order;
  - keywords (RFC 3501 §2.3.2: C{$Junk}, C{$label1}, user keywords) are the lower-case info
    letters C{a}..C{z} after the system flags, each folder mapping them to names in its own
    C{dovecot-keywords} file: one C{<index> <name>} line per keyword, index 0 being C{a}, at
    most 26 per folder; like Dovecot, a keyword that finds no free letter is not stored;
  - UIDs live in C{dovecot-uidlist}: a header C{3 V<uidvalidity> N<uidnext> G<guid>} then one
    C{<uid> :<base name>} line per message (Dovecot's "Maildir Mailbox Format" document);
  - messages are stored exactly as received on the wire (CRLF line ends), so the C{S=} size
    is also the RFC 822 size IMAP reports; a file another program wrote with bare LF line
    ends (Dovecot's C{,S=<file size>,W=<CRLF size>}, or a file dropped in by hand) is read
    with CRLF line ends and its size is that of the CRLF form (RFC 3501 §2.3.4).

Durability (the contract behind every C{250} and C{OK}): a message is written to C{tmp/},
fsynced, hard-linked into C{new/} or C{cur/} under a name that is never reused (a link never
overwrites), the C{tmp/} name unlinked and the directory fsynced (by an fsync that began
after the link: concurrent deliveries to one directory share it, L{fsync_dir_shared}).
Everything here is blocking file I/O: protocol code calls it through a thread
(C{deferToThread}).
"""

from __future__ import annotations

from twistedmail.maildir.dotlock import (
    DOTLOCK_PID_CHECK,
    DOTLOCK_STALE,
    DOTLOCK_TIMEOUT,
    FolderLockedError,
    _alive,
    _lock_owner,
    dotlock,
)
from twistedmail.maildir.durable import (
    StorageReserve,
    _dir_syncs,
    _dir_syncs_changed,
    _DirSyncs,
    fsync_dir,
    fsync_dir_shared,
    is_enospc,
    make_maildir,
    write_durably,
    write_file,
)
from twistedmail.maildir.folder import Folder
from twistedmail.maildir.names import (
    _ARRIVAL,
    _BARE_LF,
    _HOST,
    ALL_LETTERS,
    DELIMITER,
    FLAG_LETTERS,
    IMAP_TO_LETTER,
    INBOX,
    KEYWORDS,
    LETTER_TO_IMAP,
    LOCKFILE,
    MAX_KEYWORD_LENGTH,
    MAX_KEYWORDS,
    SUBSCRIPTIONS,
    UIDLIST,
    UIDLIST_LOCK,
    UIDVALIDITY_FILE,
    UNKNOWN_MTIME,
    UNKNOWN_SIZE,
    CRLFReader,
    FlagChange,
    FolderGoneError,
    FolderNameError,
    MaildirError,
    _counter,
    _counter_lock,
    _safe_host,
    arrival_key,
    decode_folder_name,
    dovecot_wire_size,
    encode_folder_name,
    is_keyword,
    measure,
    normalize_flags,
    size_from_name,
    split_name,
    to_crlf,
    unique_name,
    wire_size,
    wire_size_from_name,
)
from twistedmail.maildir.snapshot import (
    KEYWORD_MAPS,
    LEARNED_FIELDS,
    SNAPSHOT_LOG,
    SNAPSHOT_MESSAGES,
    MessageEntry,
    ScanResult,
    _keyword_maps,
    _patched,
    _Snapshot,
    _Snapshots,
    _snapshots,
    _uid,
    fill_learned,
    index_of,
    positions,
)
from twistedmail.maildir.tree import (
    TMP_MAX_AGE,
    ChangeNotifier,
    UserMaildir,
    announce_moved,
    clean_tmp,
    mailbox_root,
)

__all__ = [
    "_alive",
    "_ARRIVAL",
    "_BARE_LF",
    "_counter",
    "_counter_lock",
    "_dir_syncs",
    "_dir_syncs_changed",
    "_DirSyncs",
    "_HOST",
    "_keyword_maps",
    "_lock_owner",
    "_patched",
    "_safe_host",
    "_Snapshot",
    "_Snapshots",
    "_snapshots",
    "_uid",
    "ALL_LETTERS",
    "arrival_key",
    "ChangeNotifier",
    "clean_tmp",
    "CRLFReader",
    "decode_folder_name",
    "DELIMITER",
    "dotlock",
    "DOTLOCK_PID_CHECK",
    "DOTLOCK_STALE",
    "DOTLOCK_TIMEOUT",
    "dovecot_wire_size",
    "encode_folder_name",
    "FLAG_LETTERS",
    "FlagChange",
    "Folder",
    "FolderLockedError",
    "FolderNameError",
    "fsync_dir",
    "fsync_dir_shared",
    "IMAP_TO_LETTER",
    "INBOX",
    "is_enospc",
    "index_of",
    "is_keyword",
    "KEYWORD_MAPS",
    "KEYWORDS",
    "LEARNED_FIELDS",
    "LETTER_TO_IMAP",
    "LOCKFILE",
    "mailbox_root",
    "fill_learned",
    "FolderGoneError",
    "MaildirError",
    "make_maildir",
    "MAX_KEYWORD_LENGTH",
    "MAX_KEYWORDS",
    "measure",
    "MessageEntry",
    "normalize_flags",
    "positions",
    "ScanResult",
    "size_from_name",
    "SNAPSHOT_LOG",
    "SNAPSHOT_MESSAGES",
    "split_name",
    "StorageReserve",
    "SUBSCRIPTIONS",
    "TMP_MAX_AGE",
    "to_crlf",
    "UIDLIST",
    "UIDLIST_LOCK",
    "UIDVALIDITY_FILE",
    "unique_name",
    "UNKNOWN_MTIME",
    "UNKNOWN_SIZE",
    "UserMaildir",
    "announce_moved",
    "wire_size",
    "wire_size_from_name",
    "write_durably",
    "write_file",
]
