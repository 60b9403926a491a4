"""IMAP QUOTA (RFC 9208) over a fake transport: capabilities, GETQUOTAROOT, GETQUOTA,
SETQUOTA, STATUS DELETED/DELETED-STORAGE (§4.1.4) and NO [OVERQUOTA] on APPEND and COPY
with nothing stored (§4.3.1); MOVE is allowed (it does not grow the usage)."""

from __future__ import annotations

from pathlib import Path

from test_imap_server import MSG1, MSG2, USER, Harness, run_now
from twisted.trial import unittest

from twistedmail.accounts import AccountStore, Quota
from twistedmail.passwords import hash_password
from twistedmail.quota import QuotaTracker

QUOTA_CAPS = b" QUOTA QUOTA=RES-STORAGE QUOTA=RES-MESSAGE"


class QuotaTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        base = Path(self.mktemp())
        base.mkdir()
        self.store = AccountStore(base / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        self.store.add_user(USER, hash_password("pw"), Quota(storage=10 * 1024))
        mail_dir = self.h.root.parent.parent  # .../example.test/alice
        self.h.server.quota = QuotaTracker(self.store, mail_dir, run_now)
        self.h.login()
        self.h.add(MSG1, "S")  # 108 octets
        self.h.add(MSG2, "ST")  # 56 octets, \Deleted

    def test_capabilities(self) -> None:
        """RFC 9208 §3: CAPABILITY lists QUOTA, QUOTA=RES-STORAGE, QUOTA=RES-MESSAGE last (no
        QUOTASET)."""
        (caps, ok) = self.h.cmd(b"a CAPABILITY")
        self.assertTrue(caps.endswith(b"COMPRESS=DEFLATE" + QUOTA_CAPS), caps)
        self.assertEqual(ok, b"a OK CAPABILITY completed")

    def test_getquotaroot_and_getquota(self) -> None:
        """RFC 9208 §4.2: GETQUOTAROOT names the root "" with usage and limit in KiB (rounded
        down), and GETQUOTA answers the same."""
        self.h.add(b"x" * 3000)
        self.assertEqual(
            self.h.cmd(b"a GETQUOTAROOT INBOX"),
            [
                b'* QUOTAROOT "INBOX" ""',
                b'* QUOTA "" (STORAGE 3 10)',  # 3164 octets: 3 KiB, rounded down
                b"a OK GETQUOTAROOT completed",
            ],
        )
        self.store.set_quota(USER, Quota(storage=10 * 1024, messages=100))
        self.assertEqual(
            self.h.cmd(b'b GETQUOTA ""'),
            [b'* QUOTA "" (STORAGE 3 10 MESSAGE 3 100)', b"b OK GETQUOTA completed"],
        )
        self.assertEqual(
            self.h.cmd(b"c GETQUOTA user.alice"), [b"c NO [NONEXISTENT] No such quota root"]
        )
        self.assertEqual(
            self.h.cmd(b"d GETQUOTAROOT Nope"), [b"d NO [NONEXISTENT] No such mailbox"]
        )
        self.assertEqual(self.h.cmd(b"e GETQUOTAROOT"), [b"e BAD Syntax error: Missing argument"])

    def test_no_quota_root_when_unlimited(self) -> None:
        """RFC 9208 §4.2: an unlimited user has no quota root, and GETQUOTA "" is NO
        [NONEXISTENT]."""
        self.store.set_quota(USER, Quota())
        self.assertEqual(
            self.h.cmd(b"a GETQUOTAROOT Sent"),
            [b'* QUOTAROOT "Sent"', b"a OK GETQUOTAROOT completed"],
        )
        self.assertEqual(self.h.cmd(b'b GETQUOTA ""'), [b"b NO [NONEXISTENT] No such quota root"])

    def test_setquota_is_refused(self) -> None:
        """RFC 9208 §4.1.3: SETQUOTA is NO [NOPERM] (the administrator sets quotas); without
        limits it is BAD."""
        self.assertEqual(
            self.h.cmd(b'a SETQUOTA "" (STORAGE 512)'),
            [b"a NO [NOPERM] Quota limits are set by the administrator"],
        )
        self.assertEqual(self.h.cmd(b'b SETQUOTA ""'), [b"b BAD Syntax error: Missing argument"])

    def test_status_deleted(self) -> None:
        """RFC 9208 §4.3: STATUS DELETED and DELETED-STORAGE count the \\Deleted messages and
        their size."""
        self.assertEqual(
            self.h.cmd(b"a STATUS INBOX (MESSAGES DELETED-STORAGE DELETED)"),
            [
                b'* STATUS "INBOX" (MESSAGES 2 DELETED-STORAGE %d DELETED 1)' % len(MSG2),
                b"a OK STATUS completed",
            ],
        )
        self.assertEqual(
            self.h.cmd(b"b STATUS Sent (DELETED DELETED-STORAGE)"),
            [b'* STATUS "Sent" (DELETED 0 DELETED-STORAGE 0)', b"b OK STATUS completed"],
        )

    def sent(self) -> list[str]:
        return sorted(p.name for p in (self.h.maildir.folder_path("Sent") / "cur").iterdir())

    def test_append_over_quota(self) -> None:
        """RFC 9208 §4.3: APPEND over the storage or message limit is NO [OVERQUOTA] and stores
        nothing; exactly at the limit fits."""
        self.store.set_quota(USER, Quota(storage=len(MSG1) + len(MSG2) + 10))
        self.h.send(b"a APPEND Sent {11}\r\n")
        self.assertEqual(self.h.send(b"hello world\r\n"), b"a NO [OVERQUOTA] Quota exceeded\r\n")
        self.assertEqual(self.sent(), [])
        self.h.send(b"b APPEND Sent {10}\r\n")
        self.assertTrue(self.h.send(b"hello worl\r\n").startswith(b"b OK [APPENDUID "))
        self.store.set_quota(USER, Quota(messages=3))
        self.h.send(b"c APPEND Sent {1}\r\n")
        self.assertEqual(self.h.send(b"x\r\n"), b"c NO [OVERQUOTA] Quota exceeded\r\n")
        self.assertEqual(len(self.sent()), 1)

    def test_copy_over_quota_copies_nothing_move_is_allowed(self) -> None:
        """RFC 9208 §4.3: COPY that would exceed the quota is NO [OVERQUOTA] and copies nothing;
        MOVE (no growth) is allowed."""
        self.store.set_quota(USER, Quota(storage=len(MSG1) * 2 + len(MSG2)))
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(self.h.cmd(b"a COPY 1:2 Sent"), [b"a NO [OVERQUOTA] Quota exceeded"])
        self.assertEqual(self.sent(), [])
        self.assertTrue(self.h.cmd(b"b COPY 1 Sent")[-1].startswith(b"b OK [COPYUID "))
        self.assertEqual(len(self.sent()), 1)  # exactly at the limit now
        self.assertEqual(self.h.cmd(b"c COPY 2 Sent"), [b"c NO [OVERQUOTA] Quota exceeded"])
        self.assertEqual(self.h.cmd(b"d MOVE 2 Sent")[-1], b"d OK MOVE completed")
        self.assertEqual(len(self.sent()), 2)

    def test_bad_input_gets_a_clean_answer(self) -> None:
        """GETQUOTAROOT with an invalid mailbox name is NO [CANNOT]; a literal mailbox name
        works."""
        self.assertEqual(
            self.h.cmd(b"a GETQUOTAROOT &Jjo"), [b"a NO [CANNOT] Invalid mailbox name"]
        )
        self.assertEqual(
            self.h.send(b"b GETQUOTAROOT {5}\r\n"), b"+ Ready for 5 octets of text\r\n"
        )
        self.assertEqual(
            self.h.send(b"INBOX\r\n"),
            b'* QUOTAROOT "INBOX" ""\r\n* QUOTA "" (STORAGE 0 10)\r\n'
            b"b OK GETQUOTAROOT completed\r\n",
        )
        self.assertEqual(self.h.cmd(b'c GETQUOTA "" extra'), [b"c BAD Too many arguments"])

    def test_list_status_deleted(self) -> None:
        """LIST-STATUS (RFC 5819) takes the same items as STATUS."""
        self.assertEqual(
            self.h.cmd(b'a LIST "" INBOX RETURN (STATUS (DELETED DELETED-STORAGE))')[1:],
            [
                b'* STATUS "INBOX" (DELETED 1 DELETED-STORAGE %d)' % len(MSG2),
                b"a OK LIST completed",
            ],
        )
