"""Tests for L{twistedmail.maildir}: durable writes, file names, flags, the Dovecot UID list,
folder names and the folder tree (Maildir++), subscriptions."""

from __future__ import annotations

import errno
import os
import re
import socket
import stat
import threading
import time
from pathlib import Path

from twisted.trial import unittest

from twistedmail import maildir
from twistedmail.index import INDEX_FILE
from twistedmail.maildir import (
    ChangeNotifier,
    Folder,
    FolderNameError,
    MaildirError,
    UserMaildir,
    decode_folder_name,
    durable,
    encode_folder_name,
    is_enospc,
    mailbox_root,
    make_maildir,
    normalize_flags,
    split_name,
    uidlist,
    write_durably,
)
from twistedmail.maildir import folder as folder_module
from twistedmail.maildir.names import read_fd

MSG1 = b"From: a@example.org\r\nSubject: one\r\n\r\nbody one\r\n"
MSG2 = b"From: b@example.org\r\nSubject: two\r\n\r\nbody two, longer\r\n"
MSG3 = b"Subject: three\r\n\r\n3\r\n"
NAME = re.compile(r"\A(\d+)\.M(\d+)P(\d+)Q(\d+)\.([^/:,]+),S=(\d+),W=(\d+)\Z")


def first_guid(header: str) -> str:
    """The C{G} field of a C{dovecot-uidlist} header line."""
    return header.split(" G", 1)[1]


def listing(path: Path) -> list[str]:
    return sorted(os.listdir(path))


class MaildirTestCase(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp())
        make_maildir(self.root)
        self.folder = Folder(self.root)

    def deliver(self, data: bytes, mtime: float | None = None) -> str:
        return write_durably(self.root / "new", data, mtime=mtime)


class WriteTests(MaildirTestCase):
    def test_layout(self) -> None:
        """A new Maildir has cur, new and tmp, each mode 0700, and no maildirfolder marker (it is
        the INBOX)."""
        self.assertEqual(listing(self.root), ["cur", "new", "tmp"])
        for sub in ("cur", "new", "tmp"):
            self.assertEqual(stat.S_IMODE((self.root / sub).stat().st_mode), 0o700)
        self.assertFalse((self.root / "maildirfolder").exists())

    def test_name_and_bytes(self) -> None:
        """C{<secs>.M<usecs>P<pid>Q<n>.<host>,S=<size>,W=<size>} in new/, the bytes exactly
        as given, mode 0600, nothing left in tmp/."""
        base = self.deliver(MSG1)
        m = NAME.match(base)
        assert m is not None, base
        self.assertEqual(int(m.group(3)), os.getpid())
        self.assertEqual(int(m.group(6)), len(MSG1))
        self.assertEqual(int(m.group(7)), len(MSG1))
        self.assertEqual(listing(self.root / "new"), [base])
        self.assertEqual((self.root / "new" / base).read_bytes(), MSG1)
        self.assertEqual(stat.S_IMODE((self.root / "new" / base).stat().st_mode), 0o600)
        self.assertEqual(listing(self.root / "tmp"), [])

    def test_exact_names_carry_the_crlf_size(self) -> None:
        """Every name we write is C{<secs>.M<usecs>P<pid>Q<n>.<host>,S=<file size>,W=<size
        with CRLF line ends>} (Dovecot's fields), so the index never reads the file to size
        it; a bare LF counts two octets in W= (RFC 3501 §2.3.4)."""
        host = re.escape(maildir._HOST)
        pid = os.getpid()
        crlf = self.deliver(MSG1)
        self.assertRegex(crlf, rf"\A\d+\.M\d{{6}}P{pid}Q\d+\.{host},S=47,W=47\Z")
        lf = write_durably(self.root / "cur", b"a\nb\r\nc\n", flags="S")
        self.assertRegex(lf, rf"\A\d+\.M\d{{6}}P{pid}Q\d+\.{host},S=7,W=9\Z")
        self.assertEqual(sorted(listing(self.root / "new")), [crlf])
        self.assertEqual(sorted(listing(self.root / "cur")), [f"{lf}:2,S"])
        counter = int(crlf.split("Q")[1].split(".")[0])
        name = maildir.unique_name(5, now=1000.000042, wire=7)
        self.assertEqual(name, f"1000.M000042P{pid}Q{counter + 2}.{maildir._HOST},S=5,W=7")

    def test_index_takes_the_size_from_the_name(self) -> None:
        """Indexing a delivered message does not read it: the size is the name's W= (the
        file is changed behind the index's back here to show it is not read)."""
        base = self.deliver(MSG1)
        (self.root / "new" / base).write_bytes(b"x")
        (entry,) = self.folder.scan().messages
        self.assertEqual((entry.base, entry.size), (base, len(MSG1)))

    def test_unique_names(self) -> None:
        """Fifty deliveries in a row get fifty different file names."""
        names = {self.deliver(b"x") for _ in range(50)}
        self.assertEqual(len(names), 50)

    def test_text_paths(self) -> None:
        """The directory may be given as text, with or without a trailing slash: the same
        file, and the same Maildir steps (tmp/ beside it, info only in cur/)."""
        new = write_durably(str(self.root / "new") + "/", MSG1)
        cur = write_durably(str(self.root / "cur"), MSG1, flags="S")
        self.assertEqual(listing(self.root / "new"), [new])
        self.assertEqual(listing(self.root / "cur"), [f"{cur}:2,S"])
        self.assertEqual(listing(self.root / "tmp"), [])
        self.assertEqual((self.root / "new" / new).read_bytes(), MSG1)

    def test_forked_child_names_carry_its_pid(self) -> None:
        """The pid in a name is the writing process's: a forked child (a worker) names its
        files with its own, not the parent's it was forked from."""
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:  # the child: its name, then out without the test runner's cleanup
            try:
                os.write(write, maildir.unique_name(1).encode())
            finally:
                os._exit(0)
        os.close(write)
        with os.fdopen(read, "rb") as f:
            name = f.read().decode()
        os.waitpid(pid, 0)
        m = NAME.match(name + ",W=1")
        assert m is not None, name
        self.assertEqual(int(m.group(3)), pid)
        self.assertNotEqual(pid, os.getpid())
        m = NAME.match(maildir.unique_name(1, wire=1))
        assert m is not None
        self.assertEqual(int(m.group(3)), os.getpid())

    def test_into_cur_with_flags(self) -> None:
        """write_durably into cur/ appends the ':2,' info with the flags sorted and deduplicated."""
        base = write_durably(self.root / "cur", MSG1, flags="SFS")
        self.assertEqual(listing(self.root / "cur"), [f"{base}:2,FS"])

    def test_mtime(self) -> None:
        """write_durably sets the file's mtime to the given time (the INTERNALDATE)."""
        base = self.deliver(MSG1, mtime=1_000_000_000.0)
        self.assertEqual((self.root / "new" / base).stat().st_mtime, 1_000_000_000.0)

    def test_durable(self) -> None:
        """The file is fsynced before it is linked in, and the directory after."""
        events: list[str] = []
        real_fsync, real_link = os.fsync, os.link
        self.patch(os, "fsync", lambda fd: (events.append("fsync file"), real_fsync(fd)))
        self.patch(os, "link", lambda a, b: (events.append("link"), real_link(a, b)))
        self.patch(
            durable, "fsync_dir", lambda path: events.append(f"fsync {os.path.basename(path)}/")
        )
        self.deliver(MSG1)
        self.assertEqual(events, ["fsync file", "link", "fsync new/"])

    def test_never_overwrites(self) -> None:
        """A name clash (in new/ or tmp/) picks a fresh name; the existing file is untouched."""
        names = iter(["taken,S=5", "taken,S=5", "busy,S=5", "fresh,S=5"])
        self.patch(durable, "unique_name", lambda size, now=None, wire=None: next(names))
        (self.root / "new" / "taken,S=5").write_bytes(b"first")
        (self.root / "tmp" / "busy,S=5").write_bytes(b"other")
        self.assertEqual(self.deliver(b"later"), "fresh,S=5")
        self.assertEqual((self.root / "new" / "taken,S=5").read_bytes(), b"first")
        self.assertEqual((self.root / "new" / "fresh,S=5").read_bytes(), b"later")
        self.assertEqual(listing(self.root / "tmp"), ["busy,S=5"])

    def test_host_escaped(self) -> None:
        """The Maildir spec: C{/} and C{:} in the host name are escaped (and C{,} for S=)."""
        self.patch(socket, "gethostname", lambda: "a/b:c,d")
        self.assertEqual(maildir._safe_host(), "a\\057b\\072c\\054d")

    def test_failure_leaves_nothing(self) -> None:
        """When the link into new/ fails (ENOSPC) the error is raised and neither new/ nor tmp/
        keeps a file."""

        def refuse(src: object, dst: object) -> None:
            raise OSError(28, "No space left on device")

        self.patch(os, "link", refuse)
        e = self.assertRaises(OSError, self.deliver, MSG1)
        self.assertTrue(is_enospc(e))
        self.assertEqual(listing(self.root / "new"), [])
        self.assertEqual(listing(self.root / "tmp"), [])

    def test_helpers(self) -> None:
        """split_name, normalize_flags, size_from_name (the S= field) and is_enospc."""
        self.assertEqual(split_name("123.M1P2Q3.h,S=10:2,RS"), ("123.M1P2Q3.h,S=10", "RS"))
        self.assertEqual(split_name("123.M1P2Q3.h,S=10"), ("123.M1P2Q3.h,S=10", ""))
        self.assertEqual(normalize_flags("TSSDR"), "DRST")
        self.assertEqual(maildir.size_from_name("1.M2P3Q4.h,S=42,W=44"), 42)
        self.assertIsNone(maildir.size_from_name("1.M2P3Q4.h"))
        self.assertFalse(is_enospc(ValueError()))


class WriteFileTests(unittest.TestCase):
    def test_write_file(self) -> None:
        """write_file writes every byte, mode 0600; a new file unless told to truncate (the
        helper of write_durably, the queue spool and the importer)."""
        from twistedmail.maildir import write_file

        path = Path(self.mktemp())
        data = os.urandom(300_000)
        write_file(path, data)
        self.assertEqual(path.read_bytes(), data)
        self.assertEqual(stat.S_IMODE(path.stat().st_mode), 0o600)
        self.assertRaises(FileExistsError, write_file, path, b"other")
        self.assertEqual(path.read_bytes(), data)
        write_file(path, b"short", exclusive=False)
        self.assertEqual(path.read_bytes(), b"short")


class ScanTests(MaildirTestCase):
    def uidlist(self) -> str:
        return (self.root / "dovecot-uidlist").read_text()

    def test_empty(self) -> None:
        """Scanning an empty folder gives UIDNEXT 1 and writes a version-3 dovecot-uidlist header
        with UIDVALIDITY and a GUID."""
        result = self.folder.scan()
        self.assertEqual((result.uidnext, result.messages, result.recent), (1, (), frozenset()))
        self.assertRegex(self.uidlist(), r"\A3 V%d N1 G[0-9a-f]{32}\n\Z" % result.uidvalidity)

    def test_new_moves_to_cur(self) -> None:
        """New mail moves to cur/ with an empty info (C{:2,}) and is \\Recent once."""
        b1 = self.deliver(MSG1, mtime=1000.0)
        b2 = self.deliver(MSG2, mtime=2000.0)
        result = self.folder.scan()
        self.assertEqual(listing(self.root / "new"), [])
        self.assertEqual(listing(self.root / "cur"), sorted([f"{b1}:2,", f"{b2}:2,"]))
        self.assertEqual(
            [(e.uid, e.base, e.filename, e.size, e.mtime, e.flags) for e in result.messages],
            [
                (1, b1, f"{b1}:2,", len(MSG1), 1000.0, ""),
                (2, b2, f"{b2}:2,", len(MSG2), 2000.0, ""),
            ],
        )
        self.assertEqual(result.recent, frozenset({1, 2}))
        self.assertEqual(self.folder.scan(claim_recent=True).recent, frozenset({1, 2}))
        self.assertEqual(self.folder.scan().recent, frozenset())

    def test_recent_until_claimed(self) -> None:
        """RFC 3501 §2.3.2: a message delivered to new/ or added (APPEND, COPY) is \\Recent
        in every scan until one claims it (a SELECT), then in none; one found in cur/ by a
        scan (moved there by another program) is not."""
        self.deliver(MSG1, mtime=1000.0)
        self.folder.add(MSG2, "S")
        write_durably(self.root / "cur", MSG1, "", 500.0)
        # UID 1: the new/ one, synced by the add (its index was not in step); 2 the added
        # one; 3 the cur/ file written after
        self.assertEqual(self.folder.scan().recent, frozenset({1, 2}))
        self.assertEqual(self.folder.scan().recent, frozenset({1, 2}))
        self.assertEqual(self.folder.scan(claim_recent=True).recent, frozenset({1, 2}))
        self.assertEqual(self.folder.scan(claim_recent=True).recent, frozenset())
        self.folder.add(MSG1)
        self.assertEqual(self.folder.scan().recent, frozenset({4}))

    def test_uidlist_format(self) -> None:
        """Dovecot's format exactly: C{3 V<uidvalidity> N<uidnext> G<guid>}, then
        C{<uid> :<base>} per message, in UID order."""
        b1 = self.deliver(MSG1, mtime=1000.0)
        b2 = self.deliver(MSG2, mtime=2000.0)
        result = self.folder.scan()
        guid = self.uidlist().split("\n")[0].split()[3][1:]
        self.assertRegex(guid, r"\A[0-9a-f]{32}\Z")
        self.assertEqual(self.uidlist(), f"3 V{result.uidvalidity} N3 G{guid}\n1 :{b1}\n2 :{b2}\n")

    def test_uids_in_arrival_order(self) -> None:
        """UIDs follow the mtime (arrival) order, not the name order."""
        late = self.deliver(MSG1, mtime=2000.0)
        early = self.deliver(MSG2, mtime=1000.0)
        uids = {e.base: e.uid for e in self.folder.scan().messages}
        self.assertEqual(uids, {early: 1, late: 2})

    def test_equal_mtimes_in_name_arrival_order(self) -> None:
        """Equal mtimes: UIDs follow the numbers in the name (M99 before M100, Q9 before Q10),
        not the string order, which put a later message first (seen as a flaky FETCH test)."""
        names = [
            "1000.M100P7Q1.h,S=5",
            "1000.M99P7Q2.h,S=5",
            "1000.M99P7Q10.h,S=5",
            "1000.M99P7Q9.h,S=5",
            "999.M5P7Q3.h,S=5",
            "odd-name,S=5",
        ]
        for name in names:
            path = self.root / "new" / name
            path.write_bytes(b"x\r\n\r\n")
            os.utime(path, (1000.0, 1000.0))
        uids = {e.base: e.uid for e in self.folder.scan().messages}
        self.assertEqual(
            sorted(uids, key=uids.__getitem__),
            [
                "999.M5P7Q3.h,S=5",
                "1000.M99P7Q2.h,S=5",
                "1000.M99P7Q9.h,S=5",
                "1000.M99P7Q10.h,S=5",
                "1000.M100P7Q1.h,S=5",
                "odd-name,S=5",
            ],
        )

    def test_usecs_zero_padded(self) -> None:
        """A unique name's microseconds are zero-padded to six digits (M000042)."""
        self.assertRegex(maildir.unique_name(5, now=1000.000042), r"\A1000\.M000042P\d+Q\d+\.")

    def test_uids_stable(self) -> None:
        """UIDs and UIDVALIDITY survive a new Folder object, new mail, flag changes and
        expunges; an expunged UID is never reused (RFC 3501 §2.3.1.1)."""
        b1, b2 = self.deliver(MSG1, mtime=1000.0), self.deliver(MSG2, mtime=2000.0)
        first = self.folder.scan()
        again = Folder(self.root).scan()
        self.assertEqual(again.uidvalidity, first.uidvalidity)
        self.assertEqual([(e.uid, e.base) for e in again.messages], [(1, b1), (2, b2)])
        self.folder.set_flags(again.messages[0], "S")
        self.folder.remove(again.messages[1])
        b3 = self.deliver(MSG3)
        later = Folder(self.root).scan()
        self.assertEqual(later.uidvalidity, first.uidvalidity)
        self.assertEqual(
            [(e.uid, e.base, e.flags) for e in later.messages], [(1, b1, "S"), (3, b3, "")]
        )
        self.assertEqual(later.uidnext, 4)
        self.assertEqual(self.uidlist().split("\n")[1:], [f"1 :{b1}", f"3 :{b3}", ""])

    def test_file_put_back_after_its_expunge_gets_a_new_uid(self) -> None:
        """A message file put back under an expunged message's base name (another program
        restores it) is a new message: a new UID, never the expunged one (RFC 3501
        §2.3.1.1).  Our own EXPUNGE left the base name in dovecot-uidlist until the next
        full sync, which gave the file back its old UID."""
        b1, b2 = self.deliver(MSG1, mtime=1000.0), self.deliver(MSG2, mtime=2000.0)
        first = self.folder.scan()
        (path,) = [p for p in (self.root / "cur").iterdir() if p.name.startswith(b2)]
        data = path.read_bytes()
        self.folder.remove(first.messages[1])
        self.assertEqual([e.uid for e in self.folder.scan().messages], [1])
        path.write_bytes(data)  # put back, before any full sync listed the folder
        os.utime(self.root / "cur", (time.time() + 5, time.time() + 5))
        later = Folder(self.root).scan()
        self.assertEqual([(e.uid, e.base) for e in later.messages], [(1, b1), (3, b2)])
        self.assertEqual(later.uidnext, 4)

    def test_unchanged_scan_does_not_rewrite(self) -> None:
        """A scan that finds nothing new does not rewrite dovecot-uidlist (same inode)."""
        self.deliver(MSG1)
        self.folder.scan()
        before = (self.root / "dovecot-uidlist").stat().st_ino
        self.folder.scan()
        self.assertEqual((self.root / "dovecot-uidlist").stat().st_ino, before)

    def test_reads_dovecot_uidlist(self) -> None:
        """A uidlist written by Dovecot (extension fields before the colon) keeps its UIDs."""
        base = "1700000000.M1P2Q3.oldhost,S=%d,W=%d" % (len(MSG1), len(MSG1))
        (self.root / "cur" / f"{base}:2,S").write_bytes(MSG1)
        (self.root / "dovecot-uidlist").write_text(
            f"3 V1234567 N42 G0123456789abcdef0123456789abcdef\n41 W{len(MSG1)} :{base}\n"
        )
        b2 = self.deliver(MSG2)
        result = self.folder.scan()
        self.assertEqual(result.uidvalidity, 1234567)
        self.assertEqual(
            [(e.uid, e.base, e.flags, e.size) for e in result.messages],
            [(41, base, "S", len(MSG1)), (42, b2, "", len(MSG2))],
        )
        self.assertEqual(
            self.uidlist().split("\n")[0], "3 V1234567 N43 G0123456789abcdef0123456789abcdef"
        )

    def test_size_without_s_field(self) -> None:
        """A file named by another program (no C{,S=}): its size is measured when asked."""
        (self.root / "cur" / "12345.foreign:2,").write_bytes(MSG1)
        (entry,) = self.folder.scan().messages
        self.assertEqual((entry.base, entry.size), ("12345.foreign", maildir.UNKNOWN_SIZE))
        self.assertEqual(self.folder.sizes([entry]), {"12345.foreign": len(MSG1)})

    def test_dovecot_saved_lf_file(self) -> None:
        """A message Dovecot saved (LF line ends, C{,S=<file size>,W=<CRLF size>}): the size
        is the W= one and it reads back with CRLF, as IMAP sends it (found by
        tests/e2e/test_e2e_dovecot.py)."""
        lf = MSG1.replace(b"\r\n", b"\n")
        base = f"1700000000.M1P2.dovecot,S={len(lf)},W={len(MSG1)}"
        (self.root / "cur" / f"{base}:2,S").write_bytes(lf)
        (entry,) = self.folder.scan().messages
        self.assertEqual((entry.base, entry.size), (base, len(MSG1)))
        self.assertEqual(self.folder.read(entry), MSG1)
        self.assertEqual(maildir.wire_size_from_name(base), len(MSG1))
        self.assertEqual(maildir.wire_size_from_name("1.M2P3Q4.h,S=42"), 42)
        self.assertIsNone(maildir.wire_size_from_name("1.M2P3Q4.h"))

    def test_dotfiles_ignored(self) -> None:
        """Dot files in new/ and cur/ are not messages."""
        (self.root / "new" / ".hidden").write_bytes(b"x")
        (self.root / "cur" / ".hidden").write_bytes(b"x")
        self.assertEqual(self.folder.scan().messages, ())

    def test_missing_folder(self) -> None:
        """Scanning or adding to a missing folder raises MaildirError 'no such folder'."""
        missing = Folder(self.root / ".Nope")
        self.assertFalse(missing.exists())
        e = self.assertRaises(MaildirError, missing.scan)
        self.assertEqual(str(e), "no such folder")
        self.assertRaises(MaildirError, missing.add, MSG1)


class AddTests(MaildirTestCase):
    def test_append(self) -> None:
        """APPEND: into cur/ with its flags and INTERNALDATE, durably, with the next UID and
        the folder's UIDVALIDITY (RFC 4315 §3 APPENDUID)."""
        self.deliver(MSG1)
        uidvalidity = self.folder.scan().uidvalidity
        self.assertEqual(self.folder.add(MSG2, "SD", mtime=1_500_000_000.0), (uidvalidity, 2))
        entry = self.folder.scan().messages[-1]
        self.assertEqual(
            (entry.uid, entry.flags, entry.mtime, entry.size), (2, "DS", 1_500_000_000.0, len(MSG2))
        )
        self.assertEqual(self.folder.read(entry), MSG2)
        self.assertEqual(self.folder.add(MSG3)[1], 3)

    def test_append_first(self) -> None:
        """The first message added to a folder gets UID 1 and UIDNEXT becomes 2."""
        self.assertEqual(self.folder.add(MSG1)[1], 1)
        result = self.folder.scan()
        self.assertEqual([e.uid for e in result.messages], [1])
        self.assertEqual(result.uidnext, 2)

    def test_append_racing_scan(self) -> None:
        """Regression: a scan() between the link into cur/ and the UID assignment gave the
        message a UID, then add() gave it a second one, changing its UID under the session
        that had seen it.  The link now happens under the folder lock: a scan in another
        thread waits for the UID and sees the same one."""
        real = maildir.write_durably
        seen: list[maildir.ScanResult] = []
        threads: list[threading.Thread] = []

        def write_then_scan(*args: object, **kwargs: object) -> str:
            base = real(*args, **kwargs)  # type: ignore[arg-type]
            thread = threading.Thread(target=lambda: seen.append(Folder(self.root).scan()))
            thread.start()
            threads.append(thread)
            thread.join(0.2)
            self.assertTrue(thread.is_alive())  # blocked on the folder lock
            return base

        self.patch(folder_module, "write_durably", write_then_scan)
        _, uid = self.folder.add(MSG1)
        threads[0].join()
        self.assertEqual([e.uid for e in seen[0].messages], [uid])
        after = self.folder.scan()
        self.assertEqual([e.uid for e in after.messages], [uid])
        self.assertEqual(after.uidnext, uid + 1)

    def test_append_adds_one_uidlist_line(self) -> None:
        """APPEND to a folder whose index is in step with dovecot-uidlist adds one
        C{<uid> :<base>} line at its end, as Dovecot appends records (the same file, the
        header's N left behind: the last record's UID + 1 is UIDNEXT), and a reader that
        rebuilds from the list finds every UID."""
        b1 = self.deliver(MSG1, mtime=1000.0)
        first = self.folder.scan()
        path = self.root / "dovecot-uidlist"
        before, ino = path.read_text(), path.stat().st_ino
        _, uid = self.folder.add(MSG2, "S")
        self.assertEqual(uid, 2)
        base = split_name(self.folder.scan().messages[-1].filename)[0]
        self.assertEqual(path.read_text(), before + f"2 :{base}\n")
        self.assertEqual(path.stat().st_ino, ino)
        self.assertEqual(self.folder.add(MSG3)[1], 3)
        os.unlink(self.root / INDEX_FILE)  # a rebuild reads the list alone
        maildir._snapshots.forget(self.root)
        rebuilt = Folder(self.root).scan()
        self.assertEqual([(e.uid, e.base) for e in rebuilt.messages][:2], [(1, b1), (2, base)])
        self.assertEqual((rebuilt.uidvalidity, rebuilt.uidnext), (first.uidvalidity, 4))

    def test_append_after_torn_uidlist_line(self) -> None:
        """A dovecot-uidlist whose last line was cut short (a crash while a line was
        added) is written whole again, not continued on the torn line."""
        self.deliver(MSG1, mtime=1000.0)
        self.folder.scan()
        path = self.root / "dovecot-uidlist"
        with open(path, "a") as f:
            f.write("7 :torn")  # no newline
        self.folder.add(MSG2)
        lines = path.read_text().split("\n")
        self.assertEqual(lines[-1], "")
        header = r"3 V\d+ N\d+ G[0-9a-f]{32}"
        self.assertTrue(all(re.fullmatch(rf"{header}|\d+ :\S+", x) for x in lines[:-1]))
        self.assertNotIn(":torn", path.read_text())  # dropped, not glued to the next line
        self.assertEqual(len(lines), 4)  # the header, MSG1's and MSG2's records

    def test_torn_uidlist_line_names_no_file(self) -> None:
        """The last line of dovecot-uidlist cut short by a crash (no newline: never made
        durable, so no APPEND answered OK with its UID) is not a record, even when what is
        left of the name is the base name of another message: that message keeps its UID,
        the cut one's file gets the next, and the list is written whole without the torn
        line (as Dovecot's reader, which skips an unterminated line)."""
        (self.root / "cur" / "abc:2,").write_bytes(MSG1)  # delivered by another program
        first = self.folder.scan()
        self.assertEqual([(e.uid, e.base) for e in first.messages], [(1, "abc")])
        path = self.root / "dovecot-uidlist"
        header = path.read_text().split("\n")[0]
        # a crashed APPEND: its file is in cur/, its record "2 :abcdef\n" cut after "abc"
        (self.root / "cur" / "abcdef:2,").write_bytes(MSG2)
        with open(path, "a") as f:
            f.write("2 :abc")
        self.assertEqual(uidlist.read(self.folder.path)[1:], (2, first_guid(header), {"abc": 1}))
        after = self.folder.scan()
        self.assertEqual([(e.uid, e.base) for e in after.messages], [(1, "abc"), (2, "abcdef")])
        self.assertEqual(
            path.read_text(),
            f"3 V{first.uidvalidity} N3 G{first_guid(header)}\n1 :abc\n2 :abcdef\n",
        )

    def test_append_uidlist_line_fails(self) -> None:
        """When the record cannot be made durable (a full disk at the fsync), APPEND fails
        whole: the list is cut back to what it was and the message file is gone."""
        self.deliver(MSG1, mtime=1000.0)
        self.folder.scan()
        path = self.root / "dovecot-uidlist"
        before = path.read_bytes()
        real = os.fsync

        def fsync(fd: int) -> None:
            if os.readlink(f"/proc/self/fd/{fd}") == str(path.resolve()):
                raise OSError(errno.ENOSPC, "No space left on device")
            real(fd)

        self.patch(os, "fsync", fsync)
        with self.assertRaises(OSError):
            self.folder.add(MSG2)
        self.assertEqual(path.read_bytes(), before)
        self.assertEqual(len(listing(self.root / "cur")), 1)
        self.patch(os, "fsync", real)  # room again: the next APPEND gets the UID not given
        self.assertEqual(self.folder.add(MSG3)[1], 2)

    def test_append_after_outside_uidlist_change(self) -> None:
        """A UID given out by another program (Dovecot appending a record) since the index
        last saw dovecot-uidlist is not given again."""
        self.deliver(MSG1, mtime=1000.0)
        self.folder.scan()
        other = write_durably(self.root / "cur", MSG3, "", 1500.0)
        with open(self.root / "dovecot-uidlist", "a") as f:
            f.write(f"5 :{other}\n")
        self.assertEqual(self.folder.add(MSG2)[1], 6)
        self.assertEqual([e.uid for e in self.folder.scan().messages], [1, 5, 6])


class MessageTests(MaildirTestCase):
    def setUp(self) -> None:
        super().setUp()
        self.base = self.deliver(MSG1)
        (self.entry,) = self.folder.scan().messages

    def test_read(self) -> None:
        """read returns the stored bytes and open the file's path in cur/."""
        self.assertEqual(self.folder.read(self.entry), MSG1)
        self.assertEqual(self.folder.open(self.entry), self.root / "cur" / f"{self.base}:2,")

    def test_read_costs_one_read(self) -> None:
        """read opens the file, fstats it and reads it in one read(2) (no ioctl, lseek or
        second read as Python's open().read() makes: issue 10)."""
        calls: list[str] = []
        real_read, real_fstat = os.read, os.fstat
        self.patch(os, "read", lambda fd, n: (calls.append(f"read {n}"), real_read(fd, n))[1])
        self.patch(os, "fstat", lambda fd: (calls.append("fstat"), real_fstat(fd))[1])
        self.assertEqual(self.folder.read(self.entry), MSG1)
        self.assertEqual(calls, ["fstat", f"read {len(MSG1)}"])

    def test_read_fd_short_reads_and_pipes(self) -> None:
        """read_fd goes on after a short read, reads a pipe (fstat size 0) to its end, and
        reads an empty file as b''."""
        path = Path(self.mktemp())
        path.write_bytes(b"0123456789")
        real_read = os.read
        fd = os.open(path, os.O_RDONLY)
        try:
            self.patch(os, "read", lambda fd, n: real_read(fd, min(n, 4)))  # 4 octets a call
            self.assertEqual(read_fd(fd), b"0123456789")
        finally:
            os.close(fd)
        self.patch(os, "read", real_read)
        r, w = os.pipe()
        os.write(w, b"piped")
        os.close(w)
        try:
            self.assertEqual(read_fd(r), b"piped")
        finally:
            os.close(r)
        path.write_bytes(b"")
        fd = os.open(path, os.O_RDONLY)
        try:
            self.assertEqual(read_fd(fd), b"")
        finally:
            os.close(fd)

    def test_set_flags_renames(self) -> None:
        """set_flags renames the file to the sorted, deduplicated letters, keeps the UID and the
        content, and '' clears them."""
        entry = self.folder.set_flags(self.entry, "SRS")
        self.assertEqual((entry.filename, entry.flags, entry.uid), (f"{self.base}:2,RS", "RS", 1))
        self.assertEqual(listing(self.root / "cur"), [f"{self.base}:2,RS"])
        self.assertEqual(self.folder.read(entry), MSG1)
        entry = self.folder.set_flags(entry, "")
        self.assertEqual(listing(self.root / "cur"), [f"{self.base}:2,"])

    def test_stale_entry_relocated(self) -> None:
        """Another session renamed the file (flags): reads by the old entry still work."""
        self.folder.set_flags(self.entry, "F")
        self.assertEqual(self.folder.read(self.entry), MSG1)
        entry = self.folder.set_flags(self.entry, "FS")
        self.assertEqual(listing(self.root / "cur"), [f"{self.base}:2,FS"])
        self.assertEqual(entry.flags, "FS")

    def test_remove(self) -> None:
        """remove deletes the file and is harmless twice; reading, opening or flagging it then
        raises 'message no longer exists'."""
        self.folder.remove(self.entry)
        self.assertEqual(listing(self.root / "cur"), [])
        self.folder.remove(self.entry)  # twice: no error
        self.assertEqual(self.folder.scan().messages, ())
        for f in (self.folder.read, self.folder.open):
            e = self.assertRaises(MaildirError, f, self.entry)
            self.assertEqual(str(e), "message no longer exists")
        self.assertRaises(MaildirError, self.folder.set_flags, self.entry, "S")

    def test_flag_tables(self) -> None:
        """The IMAP system flags map to the Maildir letters S, R, T, F and D and back."""
        self.assertEqual(maildir.IMAP_TO_LETTER["\\Seen"], "S")
        self.assertEqual(maildir.IMAP_TO_LETTER["\\Answered"], "R")
        self.assertEqual(maildir.IMAP_TO_LETTER["\\Deleted"], "T")
        self.assertEqual(maildir.LETTER_TO_IMAP["F"], "\\Flagged")
        self.assertEqual(maildir.LETTER_TO_IMAP["D"], "\\Draft")


class FolderNameTests(unittest.TestCase):
    def test_encode(self) -> None:
        """Folder names map to Maildir++ directory names in modified UTF-7 (RFC 3501 §5.1.3) and
        back."""
        cases = {
            "Sent": ".Sent",
            "Lists.Work": ".Lists.Work",
            "Entwürfe": ".Entw&APw-rfe",  # RFC 3501 §5.1.3 modified UTF-7
            "A&B": ".A&-B",
            "INBOX.Sub": ".INBOX.Sub",
            "a b": ".a b",
        }
        for name, dirname in cases.items():
            self.assertEqual(encode_folder_name(name), dirname)
            self.assertEqual(decode_folder_name(dirname), name)

    def test_refused(self) -> None:
        """Names that would escape the user's directory or confuse Maildir++."""
        for name in (
            "INBOX",
            "inbox",
            "",
            ".",
            "..",
            "a..b",
            ".a",
            "a.",
            "../x",
            "a/b",
            "/",
            "a\\b",
            "a\0b",
            "a\tb",
            "a\nb",
            "a\x7fb",
            "x" * 201,
        ):
            self.assertRaises(FolderNameError, encode_folder_name, name)

    def test_undecodable(self) -> None:
        """A directory name that is not valid modified UTF-7 raises FolderNameError."""
        self.assertRaises(FolderNameError, decode_folder_name, ".bad&zz")

    def test_long_part(self) -> None:
        """A folder name of 200 characters is accepted; 201 is 'folder name too long'."""
        self.assertEqual(encode_folder_name("x" * 200), "." + "x" * 200)
        e = self.assertRaises(FolderNameError, encode_folder_name, "x" * 201)
        self.assertEqual(str(e), "folder name too long")


class UserMaildirTests(unittest.TestCase):
    def setUp(self) -> None:
        self.root = Path(self.mktemp()) / "example.org" / "alice"
        self.user = UserMaildir(self.root)
        self.user.ensure()

    def test_ensure(self) -> None:
        """ensure creates the INBOX Maildir, is idempotent, and the folder list is just INBOX."""
        self.assertEqual(listing(self.root), ["cur", "new", "tmp"])
        self.user.ensure()  # idempotent
        self.assertEqual(self.user.folders(), ["INBOX"])

    def test_folder_path(self) -> None:
        """folder_path maps INBOX in any case to the root and other names to .Name; '../../bob'
        is refused."""
        self.assertEqual(self.user.folder_path("INBOX"), self.root)
        self.assertEqual(self.user.folder_path("Inbox"), self.root)
        self.assertEqual(self.user.folder_path("Sent"), self.root / ".Sent")
        self.assertEqual(self.user.folder("Lists.Work").path, self.root / ".Lists.Work")
        self.assertRaises(FolderNameError, self.user.folder_path, "../../bob")

    def test_create(self) -> None:
        """create makes Maildir++ folders with a maildirfolder marker (non-ASCII names in
        modified UTF-7); an existing name or INBOX in any case is refused."""
        for name in ("Sent", "Entwürfe", "Lists.Work"):
            self.user.create(name)
        self.assertEqual(self.user.folders(), ["INBOX", "Entwürfe", "Lists.Work", "Sent"])
        self.assertEqual(listing(self.root / ".Sent"), ["cur", "maildirfolder", "new", "tmp"])
        self.assertTrue((self.root / ".Entw&APw-rfe" / "cur").is_dir())
        for name in ("Sent", "INBOX", "inbox"):
            e = self.assertRaises(MaildirError, self.user.create, name)
            self.assertEqual(str(e), "mailbox already exists")

    def test_create_on_missing_root(self) -> None:
        """A user whose root does not exist yet lists INBOX and can create a folder."""
        user = UserMaildir(Path(self.mktemp()) / "fresh")
        self.assertEqual(user.folders(), ["INBOX"])
        user.create("Sent")
        self.assertEqual(user.folders(), ["INBOX", "Sent"])

    def test_delete(self) -> None:
        """RFC 3501 §6.3.4: the folder and its messages go; its children stay, and so does
        its subscription (§6.3.6: never removed unilaterally)."""
        self.user.create("A")
        self.user.create("A.B")
        write_durably(self.root / ".A" / "new", MSG1)
        self.user.subscribe("A")
        self.user.delete("A")
        self.assertEqual(self.user.folders(), ["INBOX", "A.B"])
        self.assertEqual(
            listing(self.root),
            [".A.B", "cur", "new", "subscriptions", "tmp", "twistedmail-subscriptions.lock"],
        )
        self.assertEqual(self.user.subscriptions(), ["A"])

    def test_recreated_folder_gets_a_new_uidvalidity(self) -> None:
        """RFC 3501 §2.3.1.1: a folder deleted and created again (within one second) gets a
        UIDVALIDITY above the old one's, remembered in C{twistedmail-uidvalidity}."""
        self.user.create("A")
        first = self.user.folder("A").scan().uidvalidity
        self.user.delete("A")
        self.user.create("A")
        second = self.user.folder("A").scan().uidvalidity
        self.assertGreater(second, first)
        self.assertEqual((self.root / "twistedmail-uidvalidity").read_text(), f"{second}\n")

    def test_delete_errors(self) -> None:
        """Deleting INBOX or a missing folder raises MaildirError with the reason."""
        e = self.assertRaises(MaildirError, self.user.delete, "INBOX")
        self.assertEqual(str(e), "INBOX cannot be deleted")
        e = self.assertRaises(MaildirError, self.user.delete, "Nope")
        self.assertEqual(str(e), "no such mailbox")

    def test_rename_with_children(self) -> None:
        """RFC 3501 §6.3.5: inferior names are renamed too; messages and UIDs move along."""
        self.user.create("A")
        self.user.create("A.B")
        self.user.create("AB")  # a sibling sharing the prefix is not a child
        folder = self.user.folder("A")
        folder.add(MSG1)
        uidvalidity = folder.scan().uidvalidity
        self.user.rename("A", "C")
        self.assertEqual(self.user.folders(), ["INBOX", "AB", "C", "C.B"])
        moved = self.user.folder("C").scan()
        self.assertEqual(moved.uidvalidity, uidvalidity)
        self.assertEqual([e.uid for e in moved.messages], [1])

    def test_rename_errors(self) -> None:
        """Renaming onto an existing folder or INBOX, from a missing one, or to a path escape is
        refused."""
        self.user.create("A")
        self.user.create("B")
        e = self.assertRaises(MaildirError, self.user.rename, "A", "B")
        self.assertEqual(str(e), "mailbox already exists")
        e = self.assertRaises(MaildirError, self.user.rename, "A", "INBOX")
        self.assertEqual(str(e), "mailbox already exists")
        e = self.assertRaises(MaildirError, self.user.rename, "Nope", "C")
        self.assertEqual(str(e), "no such mailbox")
        self.assertRaises(FolderNameError, self.user.rename, "A", "../x")

    def test_rename_inbox(self) -> None:
        """RFC 3501 §6.3.5: renaming INBOX moves its messages; INBOX stays, empty; its
        subfolders are not moved."""
        self.user.create("Sub")
        inbox = self.user.folder("INBOX")
        write_durably(self.root / "new", MSG1)
        inbox.add(MSG2, "S")
        self.user.rename("INBOX", "Old")
        self.assertEqual(self.user.folders(), ["INBOX", "Old", "Sub"])
        self.assertEqual(inbox.scan().messages, ())
        old = self.user.folder("Old")
        self.assertEqual(sorted(old.read(e) for e in old.scan().messages), sorted([MSG1, MSG2]))

    def test_subscriptions(self) -> None:
        """Subscriptions are stored sorted and once each in the 'subscriptions' file;
        unsubscribing an unknown name is harmless."""
        self.assertEqual(self.user.subscriptions(), [])
        for name in ("Sent", "Entwürfe", "Sent", "Archive"):
            self.user.subscribe(name)
        self.assertEqual(self.user.subscriptions(), ["Archive", "Entwürfe", "Sent"])
        self.assertEqual(
            (self.root / "subscriptions").read_text("utf-8"), "Archive\nEntwürfe\nSent\n"
        )
        self.user.unsubscribe("Sent")
        self.user.unsubscribe("Never")
        self.assertEqual(self.user.subscriptions(), ["Archive", "Entwürfe"])


class MailboxRootTests(unittest.TestCase):
    def test_root(self) -> None:
        """A user's Maildir is base/domain/local, lower-cased."""
        base = Path("/data/mail")
        self.assertEqual(mailbox_root(base, "Alice@Example.ORG"), base / "example.org" / "alice")

    def test_escape_refused(self) -> None:
        """Addresses with path parts, NUL, dot domains or no local part or domain are refused as
        Maildir roots."""
        for address in (
            "../x@example.org",
            "a@..",
            "a@.",
            "@example.org",
            "a@",
            "a/b@example.org",
            "a@b/c",
            "a\0@example.org",
            "noat",
        ):
            e = self.assertRaises(MaildirError, mailbox_root, Path("/data/mail"), address)
            self.assertEqual(str(e), "invalid address for a mailbox")


class ChangeNotifierTests(unittest.TestCase):
    def test_notify(self) -> None:
        """changed(path) calls that path's subscribers in order; unsubscribing twice or changing
        an unwatched path is harmless."""
        notifier = ChangeNotifier()
        calls: list[str] = []
        a, b = Path("/m/a"), Path("/m/b")

        def one() -> None:
            calls.append("one")

        def two() -> None:
            calls.append("two")

        notifier.subscribe(a, one)
        notifier.subscribe(a, two)
        notifier.subscribe(b, two)
        notifier.changed(a)
        self.assertEqual(calls, ["one", "two"])
        notifier.unsubscribe(a, one)
        notifier.unsubscribe(a, one)  # twice: no error
        notifier.changed(a)
        notifier.changed(Path("/m/none"))
        self.assertEqual(calls, ["one", "two", "two"])

    def test_unsubscribe_while_notifying(self) -> None:
        """A subscriber may unsubscribe itself while being notified; the others are still called."""
        notifier = ChangeNotifier()
        calls: list[str] = []
        path = Path("/m/a")

        def once() -> None:
            calls.append("once")
            notifier.unsubscribe(path, once)

        notifier.subscribe(path, once)
        notifier.subscribe(path, lambda: calls.append("other"))
        notifier.changed(path)
        notifier.changed(path)
        self.assertEqual(calls, ["once", "other", "other"])


class TmpCleanupTests(unittest.TestCase):
    """Maildir spec: a file in tmp/ untouched for 36 hours is a crash's leftover."""

    def test_old_tmp_files_of_every_folder_of_every_user_go(self) -> None:
        """Old tmp/ files go in INBOX and subfolders of all users; new ones and cur/ stay."""
        from twistedmail.maildir import TMP_MAX_AGE, clean_tmp

        mail = Path(self.mktemp())
        alice, bob = mail / "example.test" / "alice", mail / "example.org" / "bob"
        for root in (alice, alice / ".Sent", bob):
            make_maildir(root)
            (root / "tmp" / "1.M1P1Q1.host,S=3").write_bytes(b"abc")
        write_durably(alice / "cur", b"kept\r\n")
        now = time.time()
        self.assertEqual(clean_tmp(mail, now), 0)  # fresh: kept
        self.assertEqual(clean_tmp(mail, now + TMP_MAX_AGE + 60), 3)
        for root in (alice, alice / ".Sent", bob):
            self.assertEqual(os.listdir(root / "tmp"), [])
        self.assertEqual(len(os.listdir(alice / "cur")), 1)
        self.assertEqual(clean_tmp(mail / "missing", now), 0)
