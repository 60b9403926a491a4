"""Per-user quota end to end: set with the CLI on a running server, enforced by SMTP (552 5.2.2,
RFC 3463) on 25 and 587, reported by IMAP QUOTA (RFC 9208) and enforced on APPEND/COPY
(NO [OVERQUOTA]), with smtplib and imapclient."""

from __future__ import annotations

import smtplib

import imapclient
import pytest
from e2e_server import PASSWORDS, Server, client_tls, imap_client

from twistedmail.cli import format_size

ALICE = "alice@example.test"
BOB = "bob@example.test"
BODY = b"x" * 76 + b"\r\n"


def message(subject: str, lines: int = 50) -> bytes:
    """About 4 KB: 50 lines of 78 octets after a short header."""
    header = b"From: sender@elsewhere.test\r\nTo: %s\r\nSubject: %s\r\n\r\n"
    return header % (ALICE.encode(), subject.encode()) + BODY * lines


def used(server: Server, address: str) -> int:
    """Octets of every message file of the user, all folders."""
    root = server.maildir(address)
    folders = [root] + [p for p in root.iterdir() if p.name.startswith(".") and p.is_dir()]
    return sum(
        f.stat().st_size
        for folder in folders
        for sub in ("new", "cur")
        if (folder / sub).is_dir()
        for f in (folder / sub).iterdir()
    )


def test_quota_set_by_cli_is_enforced_by_smtp_and_reported_by_imap(server: Server) -> None:
    """RFC 9208: a quota set with the CLI refuses SMTP mail that would pass it (552 5.2.2 at RCPT
    or DATA) and is reported over IMAP."""
    result = server.cli("user", "quota", ALICE, "10KiB")
    assert result.stdout == f"quota of {ALICE}: storage 10KiB, messages unlimited\n"
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("sender@elsewhere.test", [ALICE], message("one"))
        s.sendmail("sender@elsewhere.test", [ALICE], message("two"))
        assert len(server.messages(ALICE)) == 2
        # The third would pass 10 KiB.  smtplib announces SIZE=: refused at RCPT already.
        with pytest.raises(smtplib.SMTPRecipientsRefused) as refused:
            s.sendmail("sender@elsewhere.test", [ALICE], message("three"))
        assert refused.value.recipients == {ALICE: (552, b"5.2.2 Mailbox full")}
        # Without SIZE=: RCPT is accepted (she is not full yet), the data refused.
        s.mail("sender@elsewhere.test")
        assert s.rcpt(ALICE) == (250, b"2.1.5 Recipient OK")
        assert s.data(message("three")) == (552, b"5.2.2 Mailbox full")
    assert len(server.messages(ALICE)) == 2

    # With another local recipient the message is accepted: Bob gets it, Alice does not,
    # and the sender (Bob) gets a bounce naming Alice with status 5.2.2.
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo()
        s.mail(BOB)
        assert s.rcpt(ALICE) == (250, b"2.1.5 Recipient OK")
        assert s.rcpt(BOB) == (250, b"2.1.5 Recipient OK")
        assert s.data(message("four")) == (250, b"2.0.0 Message accepted for delivery")
    bob_files = server.wait_for_messages(BOB, 2)
    assert len(bob_files) == 2
    assert len(server.messages(ALICE)) == 2
    bounce = next(p.read_bytes() for p in bob_files if b"Returned to Sender" in p.read_bytes())
    assert b"Return-Path: <>\r\n" in bounce
    report = b"Final-Recipient: rfc822; alice@example.test\r\nAction: failed\r\nStatus: 5.2.2\r\n"
    assert report in bounce
    assert b"Diagnostic-Code: X-twistedmail; 552 5.2.2 Mailbox full\r\n" in bounce

    # IMAP: the figures are the octets on disk in KiB (RFC 9208 §5.1).
    on_disk = used(server, ALICE)
    with imap_client(server) as c:
        assert b"QUOTA" in c.capabilities() and b"QUOTA=RES-STORAGE" in c.capabilities()
        roots, quotas = c.get_quota_root("INBOX")
        assert roots.quota_roots == [""]
        assert [(q.quota_root, q.resource, q.usage, q.limit) for q in quotas] == [
            ("", "STORAGE", on_disk // 1024, 10)
        ]
        assert [(q.resource, q.usage, q.limit) for q in c.get_quota("INBOX")] == [
            ("STORAGE", on_disk // 1024, 10)
        ]
        # imapclient has no GETQUOTA of its own (get_quota sends GETQUOTAROOT): imaplib's
        typ, data = c._imap.getquota('""')
        assert (typ, data) == ("OK", [b'"" (STORAGE %d 10)' % (on_disk // 1024)])
        # APPEND over quota: NO [OVERQUOTA], nothing stored.
        sent_before = server.messages(ALICE, "Sent")
        with pytest.raises(imapclient.exceptions.IMAPClientError) as err:
            c.append("Sent", message("five"))
        assert "[OVERQUOTA] Quota exceeded" in str(err.value)
        assert server.messages(ALICE, "Sent") == sent_before
        # COPY would double the usage: refused, nothing copied; MOVE does not add: allowed.
        c.select_folder("INBOX")
        uids = c.search("ALL")
        with pytest.raises(imapclient.exceptions.IMAPClientError) as err:
            c.copy(uids, "Archive")
        assert "[OVERQUOTA] Quota exceeded" in str(err.value)
        assert server.messages(ALICE, "Archive") == []
        c.move(uids[:1], "Archive")
        assert len(server.messages(ALICE, "Archive")) == 1
        typ, data = c._imap.setquota('""', "(STORAGE 100000)")
        assert (typ, data) == ("NO", [b"[NOPERM] Quota limits are set by the administrator"])

    # Full to the octet: RCPT itself is refused with 552 5.2.2, on 25 and on 587.
    full = used(server, ALICE)
    server.cli("user", "quota", ALICE, str(full))
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo()
        s.mail("sender@elsewhere.test")
        assert s.rcpt(ALICE) == (552, b"5.2.2 Mailbox full")
    with smtplib.SMTP("127.0.0.1", server.ports["submission"]) as s:
        s.starttls(context=client_tls())
        s.login(BOB, PASSWORDS[BOB])
        s.mail(BOB)
        assert s.rcpt(ALICE) == (552, b"5.2.2 Mailbox full")
    assert len(server.messages(ALICE)) == 1  # one moved to Archive

    listing = server.cli("user", "list", "--quota").stdout.splitlines()
    assert listing == [
        f"{ALICE} storage={used(server, ALICE)}/{format_size(full)} messages=2/none",
        f"{BOB} storage={used(server, BOB)}/none messages=2/none",
    ]

    # Unlimited again: no quota root (RFC 9208 §4.2.2), and mail flows.
    assert server.cli("user", "quota", ALICE, "none").stdout == (
        f"quota of {ALICE}: storage unlimited, messages unlimited\n"
    )
    with imap_client(server) as c:
        roots, quotas = c.get_quota_root("INBOX")
        assert (roots.quota_roots, quotas) == ([], [])
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("sender@elsewhere.test", [ALICE], message("six"))
    assert len(server.messages(ALICE)) == 2
