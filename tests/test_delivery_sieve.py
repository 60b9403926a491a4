"""Tests for Sieve at local delivery (L{twistedmail.delivery.LocalDelivery} with a user's
active script): folders, flags, discard, errors kept in INBOX, redirect, vacation, reject."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from twisted.internet import defer
from twisted.logger import capturedLogs, formatEvent
from twisted.trial import unittest

from twistedmail.accounts import AccountStore
from twistedmail.address import Mailbox
from twistedmail.delivery import LocalDelivery, ScriptCache
from twistedmail.maildir import ChangeNotifier
from twistedmail.sieve.interpret import SieveLimits
from twistedmail.sieve.store import SieveStore
from twistedmail.testing import run_now

M = Mailbox.parse
LIST = (
    b"From: List <list@lists.example>\r\n"
    b"To: dev@lists.example\r\n"
    b"List-Id: <dev.lists.example>\r\n"
    b"Subject: [dev] release\r\n"
    b"Message-ID: <l1@lists.example>\r\n"
    b"\r\n"
    b"body\r\n"
)
BOSS = (
    b"From: The Boss <boss@corp.example>\r\n"
    b"To: alice@example.org\r\n"
    b"Subject: meeting\r\n"
    b"Message-ID: <b1@corp.example>\r\n"
    b"\r\n"
    b"come\r\n"
)
SCRIPT = b"""require ["fileinto", "imap4flags", "vacation", "mailbox"];
if header :contains "list-id" "dev.lists.example" {
    fileinto :create :flags ["\\\\Seen", "$list"] "Lists.dev";
    stop;
}
if address :is "from" "boss@corp.example" {
    addflag "\\\\Flagged";
}
vacation :days 3 :subject "Away" "I am away.";
"""


class SieveDeliveryTests(unittest.TestCase):
    def setUp(self) -> None:
        base = Path(self.mktemp())
        base.mkdir()
        self.mail_dir = base / "mail"
        self.store = AccountStore(base / "accounts.sqlite3")
        self.addCleanup(self.store.close)
        self.store.add_user("alice@example.org", "h")
        self.store.add_user("bob@example.org", "h")
        self.sent: list[tuple[str, list[str], bytes]] = []
        self.delivery = LocalDelivery(
            self.store,
            self.mail_dir,
            ChangeNotifier(),
            run_now,
            hostname="mail.example.org",
            outbound=self.enqueue,
        )
        self.home = self.mail_dir / "example.org" / "alice"

    async def enqueue(
        self,
        reverse_path: Mailbox | None,
        recipients: Sequence[Mailbox],
        message: bytes,
        sign: bool = False,
    ) -> None:
        self.sent.append(
            (str(reverse_path) if reverse_path else "", [str(r) for r in recipients], message)
        )

    def script(self, source: bytes) -> None:
        scripts = SieveStore(self.home)
        scripts.put("main", source)
        scripts.activate("main")

    def deliver(self, message: bytes, sender: str | None = "boss@corp.example") -> None:
        d = defer.ensureDeferred(
            self.delivery.deliver_all(
                M(sender) if sender else None, [M("alice@example.org")], message
            )
        )
        self.successResultOf(d)

    def files(self, folder: str = "") -> list[str]:
        root = self.home / folder if folder else self.home
        return sorted(f"{sub}/{name}" for sub in ("new", "cur") for name in os.listdir(root / sub))

    def test_no_script_delivers_to_new_with_delivered_to(self) -> None:
        """Without a script the message lands in INBOX/new, with Delivered-To as every
        local copy (Postfix and Dovecot LMTP style)."""
        self.deliver(BOSS)
        (name,) = self.files()
        self.assertTrue(name.startswith("new/"))
        self.assertEqual(
            (self.home / name).read_bytes(),
            b"Return-Path: <boss@corp.example>\r\nDelivered-To: alice@example.org\r\n" + BOSS,
        )

    def test_fileinto_create_with_flags(self) -> None:
        """RFC 5228 §4.1 / RFC 5490 :create / RFC 5232 :flags: the list message is filed into
        the new folder, in cur/ with info ':2,Sa' ($list is keyword letter a)."""
        self.script(SCRIPT)
        self.deliver(LIST, "list@lists.example")
        self.assertEqual(self.files(), [])
        (name,) = self.files(".Lists.dev")
        self.assertTrue(name.startswith("cur/") and name.endswith(":2,Sa"), name)
        self.assertEqual(
            (self.home / ".Lists.dev" / name).read_bytes(),
            b"Return-Path: <list@lists.example>\r\nDelivered-To: alice@example.org\r\n" + LIST,
        )
        self.assertEqual((self.home / ".Lists.dev" / "dovecot-keywords").read_text(), "0 $list\n")
        self.assertEqual(self.sent, [])

    def test_flag_and_vacation_once_per_sender(self) -> None:
        """RFC 5232 addflag sets \\Flagged on the kept copy; RFC 5230 §4.2: one vacation
        reply per sender per period, from <>, with Auto-Submitted and In-Reply-To."""
        self.script(SCRIPT)
        self.deliver(BOSS)
        self.deliver(BOSS)
        names = self.files()
        self.assertEqual(len(names), 2)
        self.assertTrue(all(n.startswith("cur/") and n.endswith(":2,F") for n in names), names)
        self.assertEqual(len(self.sent), 1)
        sender, to, reply = self.sent[0]
        self.assertEqual((sender, to), ("", ["boss@corp.example"]))
        self.assertIn(b"\r\nFrom: alice@example.org\r\n", b"\r\n" + reply)
        self.assertIn(b"\r\nTo: <boss@corp.example>\r\n", reply)
        self.assertIn(b"\r\nSubject: Away\r\n", reply)
        self.assertIn(b"\r\nAuto-Submitted: auto-replied (vacation)\r\n", reply)
        self.assertIn(b"\r\nIn-Reply-To: <b1@corp.example>\r\n", reply)
        self.assertIn(b"\r\nReferences: <b1@corp.example>\r\n", reply)
        self.assertTrue(reply.endswith(b"\r\n\r\nI am away.\r\n"))
        self.assertTrue((self.home / ".vacation.db").is_file())

    def test_vacation_memory_survives_a_new_delivery_agent(self) -> None:
        """The once-per-period memory is on disk: a restarted server does not answer again."""
        self.script(SCRIPT)
        self.deliver(BOSS)
        self.delivery = LocalDelivery(
            self.store, self.mail_dir, ChangeNotifier(), run_now, outbound=self.enqueue
        )
        self.deliver(BOSS)
        self.assertEqual(len(self.sent), 1)

    def test_vacation_default_subject(self) -> None:
        """RFC 5230 §5.6: without :subject the reply's subject is "Auto: " and the original."""
        self.script(b'require "vacation"; vacation "gone";')
        self.deliver(BOSS)
        self.assertIn(b"\r\nSubject: Auto: meeting\r\n", self.sent[0][2])

    def test_vacation_to_local_sender_delivered_here(self) -> None:
        """A reply to a local sender is stored in their INBOX, from <> (not queued)."""
        self.script(b'require "vacation"; vacation :subject "Away" "gone";')
        self.deliver(BOSS.replace(b"boss@corp.example", b"bob@example.org"), "bob@example.org")
        self.assertEqual(self.sent, [])
        new = self.mail_dir / "example.org" / "bob" / "new"
        (name,) = os.listdir(new)
        reply = (new / name).read_bytes()
        self.assertTrue(
            reply.startswith(
                b"Return-Path: <>\r\nDelivered-To: bob@example.org\r\nFrom: alice@example.org\r\n"
            )
        )
        self.assertIn(b"\r\nSubject: Away\r\n", reply)

    def test_no_vacation_to_null_sender(self) -> None:
        """RFC 5230 §4.5: never a reply to <>."""
        self.script(SCRIPT)
        self.deliver(BOSS, None)
        self.assertEqual(self.sent, [])
        self.assertEqual(len(self.files()), 1)

    def test_discard(self) -> None:
        """RFC 5228 §4.4: discard stores nothing."""
        self.script(b"discard;")
        self.deliver(BOSS)
        self.assertEqual(self.files(), [])

    def test_duplicates_merged(self) -> None:
        """RFC 5228 §2.10.3: keep twice and fileinto "INBOX" store one copy."""
        self.script(b'require "fileinto"; keep; fileinto "INBOX"; keep;')
        self.deliver(BOSS)
        self.assertEqual(len(self.files()), 1)

    def test_missing_folder_without_create_goes_to_inbox(self) -> None:
        """A fileinto to a missing folder without :create keeps in INBOX (as Pigeonhole)."""
        self.script(b'require "fileinto"; fileinto "Nowhere";')
        self.deliver(BOSS)
        self.assertEqual(len(self.files()), 1)
        self.assertFalse((self.home / ".Nowhere").exists())

    def test_hostile_folder_name_kept_in_inbox(self) -> None:
        """A folder name that would leave the home is refused; the message stays in INBOX."""
        self.script(b'require ["fileinto", "mailbox"]; fileinto :create "../../x";')
        with capturedLogs() as events:
            self.deliver(BOSS)
        self.assertEqual(len(self.files()), 1)
        self.assertEqual(sorted(os.listdir(self.mail_dir)), ["example.org"])
        self.assertFalse(any((self.home / d).is_dir() for d in os.listdir(self.home) if ".." in d))
        text = [formatEvent(e) for e in events]
        self.assertTrue(any("user=alice@example.org" in t for t in text), text)

    def test_compile_error_kept_and_logged_with_line(self) -> None:
        """A script that does not compile never loses the message: INBOX, and the error
        logged with the user and the line."""
        self.script(b'require "fileinto";\nfileinto "A"\nkeep;')
        with capturedLogs() as events:
            self.deliver(BOSS)
        self.assertEqual(len(self.files()), 1)
        text = [formatEvent(e) for e in events]
        self.assertTrue(
            any("sieve: user=alice@example.org" in t and "line 2: " in t for t in text), text
        )

    def test_plain_file_active_script(self) -> None:
        """Pigeonhole also runs ~/.dovecot.sieve when it is a regular file."""
        self.home.mkdir(parents=True)
        (self.home / ".dovecot.sieve").write_bytes(b"discard;")
        self.deliver(BOSS)
        self.assertEqual(self.files(), [])

    def test_redirect_through_outbound_with_delivered_to(self) -> None:
        """RFC 5228 §4.2: the redirected copy goes to the queue with the original sender and
        our Delivered-To; nothing is kept."""
        self.script(b'redirect "elsewhere@remote.example";')
        self.deliver(BOSS)
        self.assertEqual(self.files(), [])
        self.assertEqual(
            self.sent,
            [
                (
                    "boss@corp.example",
                    ["elsewhere@remote.example"],
                    b"Delivered-To: alice@example.org\r\n" + BOSS,
                )
            ],
        )

    def test_redirect_loop_not_redirected_again(self) -> None:
        """A message already carrying our Delivered-To for the user is not redirected; it
        is kept in INBOX rather than lost."""
        self.script(b'redirect "elsewhere@remote.example";')
        self.deliver(b"Delivered-To: alice@example.org\r\n" + BOSS)
        self.assertEqual(self.sent, [])
        self.assertEqual(len(self.files()), 1)

    def test_redirect_to_local_user_and_back_ends(self) -> None:
        """A redirect to a local user is delivered here (not queued); alice -> bob -> alice
        stops at alice's Delivered-To: alice keeps it, bob keeps nothing, nothing queued."""
        self.script(b'redirect "bob@example.org";')
        bob = SieveStore(self.mail_dir / "example.org" / "bob")
        bob.put("fw", b'redirect "alice@example.org";')
        bob.activate("fw")
        self.deliver(BOSS)
        self.assertEqual(self.sent, [])
        (name,) = self.files()
        self.assertEqual(
            (self.home / name).read_bytes(),
            b"Return-Path: <boss@corp.example>\r\nDelivered-To: alice@example.org\r\n"
            b"Delivered-To: bob@example.org\r\nDelivered-To: alice@example.org\r\n" + BOSS,
        )
        bob_root = self.mail_dir / "example.org" / "bob"
        self.assertEqual(os.listdir(bob_root / "new") + os.listdir(bob_root / "cur"), [])

    def test_reject_sends_mdn_and_stores_nothing(self) -> None:
        """RFC 5429 §2.1: after acceptance, a refusal goes to the envelope sender from <>."""
        self.script(b'require "reject"; reject "not wanted";')
        self.deliver(BOSS)
        self.assertEqual(self.files(), [])
        ((sender, to, refusal),) = self.sent
        self.assertEqual((sender, to), ("", ["boss@corp.example"]))
        self.assertIn(b"Disposition: automatic-action/MDN-sent-automatically; deleted", refusal)
        self.assertIn(b"\r\nnot wanted\r\n", refusal)

    def test_reject_refused_at_smtp_time_when_the_caller_can(self) -> None:
        """RFC 5429 §2.1.1: with refuse (one recipient, before the reply to DATA) the reason
        comes back for a 550 and no rejection notice is sent; nothing is stored."""
        self.script(b'require "reject"; reject "not wanted";')
        d = defer.ensureDeferred(
            self.delivery.deliver_all(
                M("boss@corp.example"), [M("alice@example.org")], BOSS, refuse=True
            )
        )
        delivered = self.successResultOf(d)
        self.assertEqual(delivered.refused, "not wanted")
        self.assertEqual((self.files(), self.sent), ([], []))

    def test_subaddress_detail_from_recipient_as_given(self) -> None:
        """RFC 5233: envelope :detail comes from the recipient as the client gave it."""
        self.script(
            b'require ["envelope", "subaddress", "fileinto"];\n'
            b'if envelope :detail "to" "lists" { discard; }'
        )
        self.store.add_alias("alice+lists@example.org", ["alice@example.org"])
        d = defer.ensureDeferred(
            self.delivery.deliver_all(M("x@remote.example"), [M("alice+lists@example.org")], BOSS)
        )
        self.successResultOf(d)
        self.assertEqual(self.files(), [])

    def delivery_with(self, delimiter: str | None = None, **limits: int) -> None:
        """Rebuild the delivery agent with another [delivery] recipient_delimiter / limits."""
        if delimiter is not None:
            self.store.recipient_delimiter = delimiter
        self.delivery = LocalDelivery(
            self.store,
            self.mail_dir,
            ChangeNotifier(),
            run_now,
            hostname="mail.example.org",
            outbound=self.enqueue,
            sieve_limits=SieveLimits(**limits),
        )

    def deliver_to(self, recipient: str, message: bytes = BOSS) -> None:
        d = defer.ensureDeferred(
            self.delivery.deliver_all(M("x@remote.example"), [M(recipient)], message)
        )
        self.successResultOf(d)

    def logged(self, message: bytes = BOSS) -> list[str]:
        with capturedLogs() as events:
            self.deliver(message)
        return [formatEvent(e) for e in events]

    def test_subaddress_with_configured_delimiter(self) -> None:
        """RFC 5233 with [delivery] recipient_delimiter = "-": alice-lists@ reaches alice and
        Sieve's :user/:detail split at "-", not "+"."""
        self.delivery_with("-")
        self.script(
            b'require ["envelope", "subaddress", "fileinto", "mailbox"];\n'
            b'if allof (envelope :user "to" "alice", envelope :detail "to" "lists")'
            b' { fileinto :create "Split"; }'
        )
        self.deliver_to("alice-lists@example.org")
        self.assertEqual(len(self.files(".Split")), 1)

    def test_subaddress_with_no_delimiter(self) -> None:
        """With recipient_delimiter = "" nothing is split: alice+x is a user of its own whose
        envelope :user is the whole local part and :detail matches nothing (RFC 5233 §4)."""
        self.delivery_with("")
        self.store.add_user("alice+x@example.org", "h")
        home = self.mail_dir / "example.org" / "alice+x"
        scripts = SieveStore(home)
        scripts.put(
            "main",
            b'require ["envelope", "subaddress", "fileinto", "mailbox"];\n'
            b'if envelope :user "to" "alice+x" { fileinto :create "Whole"; }\n'
            b'if envelope :detail "to" "*" { fileinto :create "Detail"; }',
        )
        scripts.activate("main")
        self.deliver_to("alice+x@example.org")
        self.assertEqual(len(os.listdir(home / ".Whole" / "new")), 1)
        self.assertFalse((home / ".Detail").exists())

    def test_vacation_own_address_uses_the_delimiter(self) -> None:
        """RFC 5230 §4.5 with recipient_delimiter "-": a message To alice-news@ names one of
        alice's addresses, so it is answered; with "+" the same To names nobody of hers."""
        script = b'require "vacation"; vacation :subject "Away" "gone";'
        message = BOSS.replace(b"To: alice@example.org", b"To: alice-news@example.org")
        self.script(script)
        self.deliver(message)
        self.assertEqual(self.sent, [])
        self.delivery_with("-")
        self.deliver(message)
        self.assertEqual([to for _, to, _ in self.sent], [["boss@corp.example"]])

    def test_catastrophic_regex_on_hostile_header_at_delivery(self) -> None:
        """A backtracking-bomb :regex against a 200 kB header ends (RE2 runs in linear time;
        Python's re would take 2^200000 steps) and the message is kept."""
        self.script(
            b'require ["regex", "fileinto"];\n'
            b'if header :regex "subject" "^(a+)+$" { fileinto "X"; }\n'
            b'if header :regex "subject" "(x+x+)+y" { fileinto "X"; }'
        )
        self.deliver(b"Subject: " + b"a" * 200_000 + b"!\r\n" + BOSS)
        self.assertEqual(len(self.files()), 1)

    def test_script_over_the_size_limit_kept_in_inbox(self) -> None:
        """A script larger than [delivery] sieve_max_script_size (placed by hand) is not read:
        the message is kept in INBOX and the error logged."""
        self.delivery_with(max_script_size=1024)
        self.script(b"# " + b"x" * 2000 + b"\ndiscard;\n")
        text = self.logged()
        self.assertEqual(len(self.files()), 1)
        self.assertTrue(any("line 0: script larger than 1024 bytes" in t for t in text), text)

    def test_folder_name_with_nul_kept_in_inbox(self) -> None:
        """fileinto a name with NUL (RFC 5228 §2.4.2.4 encoded) fails the run: INBOX, the
        error logged, no folder made."""
        self.script(
            b'require ["fileinto", "mailbox", "encoded-character"];\n'
            b'fileinto :create "a${hex:00}b";'
        )
        text = self.logged()
        self.assertEqual(len(self.files()), 1)
        self.assertEqual(
            sorted(os.listdir(self.home)), [".dovecot.sieve", "cur", "new", "sieve", "tmp"]
        )
        self.assertTrue(
            any("user=alice@example.org" in t and "invalid folder name" in t for t in text), text
        )

    def test_action_and_redirect_limits(self) -> None:
        """Past [delivery] sieve_max_actions or sieve_max_redirects the run fails: the
        message is kept in INBOX, nothing is redirected (Pigeonhole's limits)."""
        self.delivery_with(max_actions=2)
        self.script(b'require ["fileinto", "copy"]; fileinto :copy "A"; fileinto :copy "B"; keep;')
        text = self.logged()
        self.assertEqual(len(self.files()), 1)
        self.assertTrue(any("more than 2 actions" in t for t in text), text)
        self.delivery_with(max_redirects=1)
        self.script(b'redirect "a@remote.example"; redirect "b@remote.example";')
        text = self.logged()
        self.assertEqual((len(self.files()), self.sent), (2, []))
        self.assertTrue(any("more than 1 redirect actions" in t for t in text), text)

    def test_step_limit_bounds_a_run(self) -> None:
        """[delivery] sieve_max_steps: a body test over a big message costs one step per KiB;
        past the limit the run fails and the message is kept (delivery is not held up)."""
        script = b'require ["body", "fileinto"]; if body :raw :contains "zzz" { discard; }'
        big = BOSS + b"x" * (100 * 1024) + b"\r\n"
        self.delivery_with(max_steps=50)
        self.script(script)
        text = self.logged(big)
        self.assertEqual(len(self.files()), 1)
        self.assertTrue(any("script run exceeded 50 steps" in t for t in text), text)
        self.delivery_with(max_steps=1000)
        text = self.logged(big + b"zzz\r\n")
        self.assertEqual(text[-1], "sieve: user=alice@example.org: not stored (discard)")
        self.assertEqual(len(self.files()), 1)  # discarded: the run fits in 1000 steps


class ScriptCacheTests(unittest.TestCase):
    def test_recompiled_when_changed(self) -> None:
        """Scripts compile once and again only when the file changes; the cache is bounded."""
        base = Path(self.mktemp())
        base.mkdir()
        cache = ScriptCache(size=2)
        a = base / "a.sieve"
        a.write_bytes(b"keep;")
        first = cache.get(a)
        self.assertIs(cache.get(a), first)
        a.write_bytes(b"discard;")
        self.assertIsNot(cache.get(a), first)
        for n in "bcd":
            (base / n).write_bytes(b"keep;")
            cache.get(base / n)
        self.assertEqual(len(cache._entries), 2)
