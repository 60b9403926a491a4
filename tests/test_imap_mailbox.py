"""MaildirMailbox: the session view of one folder (RFC 3501 §2.3.1, §6.4, §7.4.1)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.internet.defer import Deferred
from twisted.mail import imap4
from twisted.trial import unittest

from twistedmail.imap.mailbox import MaildirMailbox, letters_for
from twistedmail.imap.message import (
    parse_entity,
    parse_internaldate,
    resolve_part,
    select_headers,
    split_message,
)
from twistedmail.imap.searchkeys import MAX_SEARCH_DEPTH, SearchError
from twistedmail.maildir import ChangeNotifier, Folder, make_maildir, write_durably
from twistedmail.testing import run_now


class Recorder:
    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def newMessages(self, exists: int, recent: int) -> None:
        self.events.append(("new", (exists, recent)))

    def flagsChanged(self, flags: dict[int, list[str]]) -> None:
        self.events.append(("flags", flags))

    def expungesPending(self) -> None:
        self.events.append(("expunge", None))


class MailboxTests(unittest.TestCase):
    def setUp(self) -> None:
        self.path = Path(self.mktemp())
        make_maildir(self.path)
        self.notifier = ChangeNotifier()
        for i in range(3):
            write_durably(self.path / "cur", b"Subject: %d\r\n\r\nbody\r\n" % i, "", 1000.0 + i)

    def open(self, readwrite: bool = True) -> MaildirMailbox:
        box = MaildirMailbox("INBOX", Folder(self.path), self.notifier, run_now, readwrite)
        self.successResultOf(Deferred.fromCoroutine(box.open()))
        return box

    def test_uids_stable_across_sessions(self) -> None:
        """RFC 3501 §2.3.1.1: two sessions see the same UIDs and UIDVALIDITY, and UIDNEXT follows
        the last UID."""
        a = self.open()
        b = self.open()
        self.assertEqual([a.getUID(n) for n in (1, 2, 3)], [1, 2, 3])
        self.assertEqual(a.getUIDValidity(), b.getUIDValidity())
        self.assertEqual(b.getUIDNext(), 4)

    def test_new_mail_is_recent_once_and_appended(self) -> None:
        """RFC 3501 §2.3.2: new mail is announced to listeners, fetchable only after its EXISTS,
        and \\Recent in one session only."""
        a = self.open()
        rec = Recorder()
        a.addListener(rec)
        write_durably(self.path / "new", b"Subject: new\r\n\r\nx\r\n")
        self.notifier.changed(self.path)
        self.assertEqual(rec.events, [("new", (4, 1))])
        self.assertEqual(a.fetch(imap4.parseIdList(b"4"), False), [])  # before its EXISTS
        self.assertEqual(a.announce(), 4)
        self.assertEqual(a.fetch(imap4.parseIdList(b"4"), False)[0][1].getFlags(), ["\\Recent"])
        self.assertEqual(self.open().getRecentCount(), 0)

    def test_expunge_elsewhere_waits_for_take_expunged(self) -> None:
        """RFC 3501 §7.4.1: another session's flag change and expunge reach the listener, and the
        expunge waits until the session may send EXPUNGE."""
        a, b = self.open(), self.open()
        rec = Recorder()
        a.addListener(rec)
        self.successResultOf(
            Deferred.fromCoroutine(b.store(imap4.parseIdList(b"2"), ["\\Deleted"], 1, False))
        )
        self.assertEqual(rec.events, [("flags", {2: ["\\Deleted"]})])
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(b.expunge())), [2])
        self.assertEqual(rec.events[-1], ("expunge", None))
        self.assertEqual(a.getMessageCount(), 3)  # numbering unchanged until reported
        self.assertEqual([s for s, _ in a.fetch(imap4.parseIdList(b"1:*"), False)], [1, 3])
        self.assertEqual(a.take_expunged(), [2])
        self.assertEqual([a.getUID(n) for n in (1, 2)], [1, 3])

    def test_expunge_sequence_numbers_are_adjusted(self) -> None:
        """RFC 3501 §7.4.1: expunging all three messages reports sequence number 1 three times
        and removes the files."""
        a = self.open()
        self.successResultOf(
            Deferred.fromCoroutine(a.store(imap4.parseIdList(b"1:*"), ["\\Deleted"], 1, False))
        )
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(a.expunge())), [1, 1, 1])
        self.assertEqual(list((self.path / "cur").iterdir()), [])

    def test_store_modes_keep_passed_letter(self) -> None:
        """Replacing the flags keeps the Maildir P (passed) letter, which has no IMAP flag."""
        name = write_durably(self.path / "cur", b"Subject: p\r\n\r\n", "PS", 2000.0)
        a = self.open()
        seq = imap4.parseIdList(b"4")
        result = self.successResultOf(Deferred.fromCoroutine(a.store(seq, ["\\Flagged"], 0, False)))
        self.assertEqual(result, {4: ["\\Flagged"]})
        self.assertTrue((self.path / "cur" / f"{name}:2,FP").exists())

    def test_read_only_refuses_store(self) -> None:
        """RFC 3501 §6.3.2: STORE on a read-only (EXAMINE) mailbox fails with ReadOnlyMailbox."""
        a = self.open(readwrite=False)
        d = Deferred.fromCoroutine(a.store(imap4.parseIdList(b"1"), ["\\Seen"], 1, False))
        self.failureResultOf(d, imap4.ReadOnlyMailbox)

    def test_add_message_is_durable_with_flags_and_date(self) -> None:
        """RFC 3501 §6.3.11: an appended message gets the next UID, its flags, and the given date
        as mtime (INTERNALDATE)."""
        a = self.open()
        uid = self.successResultOf(
            a.addMessage(b"Subject: a\r\n\r\n", None, b"01-Jan-2024 10:00:00 +0000")
        )
        self.assertEqual(uid, 4)
        (path,) = [p for p in (self.path / "cur").iterdir() if b"Subject: a" in p.read_bytes()]
        self.assertTrue(path.name.endswith(":2,"))
        self.assertEqual(path.stat().st_mtime, 1704103200.0)

    def test_copy_keeps_flags_and_date(self) -> None:
        """RFC 3501 §6.4.7: COPY keeps the flags and INTERNALDATE of the message."""
        other = Path(self.mktemp())
        make_maildir(other)
        a = self.open()
        self.successResultOf(
            Deferred.fromCoroutine(a.store(imap4.parseIdList(b"1"), ["\\Seen"], 1, False))
        )
        target = MaildirMailbox("Trash", Folder(other), self.notifier, run_now)
        self.successResultOf(Deferred.fromCoroutine(target.open()))
        msg = a.fetch(imap4.parseIdList(b"1"), False)[0][1]
        self.assertEqual(self.successResultOf(Deferred.fromCoroutine(target.copy(msg))), 1)
        (path,) = (other / "cur").iterdir()
        self.assertTrue(path.name.endswith(":2,S"))
        self.assertEqual(path.stat().st_mtime, 1000.0)

    def test_search_errors(self) -> None:
        """An unknown search key or a bad date raises SearchError; a valid search answers the
        matches."""
        a = self.open()
        self.failureResultOf(Deferred.fromCoroutine(a.search([b"BOGUS"])), SearchError)
        self.failureResultOf(
            Deferred.fromCoroutine(a.search([b"SINCE", b"yesterday"])), SearchError
        )
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(a.search([b"SUBJECT", b"1"]))), [2]
        )

    def test_search_header_line_without_colon(self) -> None:
        """A header line without a colon (an mbox "From " line, junk) is no field named "":
        SEARCH HEADER "" "" matches nothing instead of failing with IndexError."""
        raw = b"From x@y Sun Nov 29\r\nSubject: s\r\n\r\nb\r\n"
        write_durably(self.path / "cur", raw, "", 2000.0)
        a = self.open()
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(a.search([b"HEADER", b"", b""]))), []
        )
        self.assertEqual(
            self.successResultOf(Deferred.fromCoroutine(a.search([b"HEADER", b"subject", b""]))),
            [1, 2, 3, 4],
        )

    def test_search_nesting_too_deep(self) -> None:
        """A client's NOT/OR/paren chain deeper than the limit is a SearchError (BAD), not a
        RecursionError (SERVERBUG); at the limit it still works."""
        a = self.open()
        for query in (
            [b"NOT"] * 15000 + [b"ALL"],
            [b"OR", b"ALL"] * 15000 + [b"ALL"],
            [b"NOT"] * (MAX_SEARCH_DEPTH + 1) + [b"ALL"],
        ):
            self.failureResultOf(Deferred.fromCoroutine(a.search(query)), SearchError)
        nested: list[Any] = [b"ALL"]
        for _ in range(MAX_SEARCH_DEPTH + 1):
            nested = [nested]
        self.failureResultOf(Deferred.fromCoroutine(a.search(nested)), SearchError)
        self.assertEqual(
            self.successResultOf(
                Deferred.fromCoroutine(
                    a.search([b"NOT", b"NOT"] * ((MAX_SEARCH_DEPTH - 1) // 2) + [b"ALL"])
                )
            ),
            [1, 2, 3],
        )

    def test_letters_for(self) -> None:
        """letters_for maps IMAP flags (any case) to Maildir letters, leaving out \\Recent and
        keywords."""
        self.assertEqual(letters_for(["\\seen", "\\Recent", "$Junk", "\\DELETED"]), "ST")


class MessageTests(unittest.TestCase):
    def test_split_without_body(self) -> None:
        """split_message of a message without a blank line gives it all as header; one starting
        with CRLF has an empty header."""
        self.assertEqual(split_message(b"Subject: x\r\n"), (b"Subject: x\r\n", b""))
        self.assertEqual(split_message(b"\r\nbody"), (b"\r\n", b"body"))

    def test_select_headers_with_folding(self) -> None:
        """RFC 3501 §6.4.5: select_headers keeps folded lines and every field of a name, any
        case."""
        header = b"Subject: a\r\n  b\r\nFrom: x\r\nsubject: c\r\n\r\n"
        self.assertEqual(
            select_headers(header, [b"SUBJECT"], False), b"Subject: a\r\n  b\r\nsubject: c\r\n\r\n"
        )

    def test_nested_rfc822_parts(self) -> None:
        """RFC 3501 §6.4.5: part numbers reach into a message/rfc822 part's encapsulated message."""
        inner = b"Subject: inner\r\nContent-Type: text/plain\r\n\r\ninner body\r\n"
        raw = (
            b'Content-Type: multipart/mixed; boundary="b"\r\n\r\n--b\r\n\r\nfirst\r\n'
            b"--b\r\nContent-Type: message/rfc822\r\n\r\n" + inner + b"--b--\r\n"
        )
        root = parse_entity(raw)
        self.assertEqual(resolve_part(root, [1]).body, b"first")
        self.assertEqual(
            resolve_part(root, [2]).encapsulated.header,
            b"Subject: inner\r\nContent-Type: text/plain\r\n\r\n",
        )
        self.assertEqual(resolve_part(root, [2, 1]).body, b"inner body")
        self.assertIsNone(resolve_part(root, [3]))
        self.assertIsNone(resolve_part(root, [1, 1]))

    def test_parse_internaldate(self) -> None:
        """RFC 3501 §9: date-time with a zone, day padded with a space, is parsed to UTC; a bad
        date is None."""
        self.assertEqual(parse_internaldate(b"02-Jan-2024 11:00:00 +0100"), 1704189600.0)
        self.assertEqual(parse_internaldate(b" 2-Jan-2024 09:00:00 -0100"), 1704189600.0)
        self.assertIsNone(parse_internaldate(b"32-Foo-2024 11:00:00 +0100"))
