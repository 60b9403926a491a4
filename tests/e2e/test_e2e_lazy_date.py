"""A Maildir copied from another server with its C{dovecot-uidlist}: the first SELECT stats
none of its message files (issue 10; INTERNALDATE, the file's mtime, is read when asked,
as Dovecot takes the received date), and every date the server then gives is the file's
mtime exactly: FETCH INTERNALDATE (RFC 3501 §2.3.3), SEARCH BEFORE/ON/SINCE (§6.4.4),
SORT ARRIVAL and DATE's fallback (RFC 5256 §3), COPY and MOVE keeping it (§6.4.7,
RFC 6851 §3); a file removed by another program before its date was read is left out."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_server import Server, serving_pid
from test_e2e_lazy_size import ALICE, login

# (base, Date: header or None, mtime): UIDs 1..5 in this order in dovecot-uidlist
MESSAGES = [
    ("1700000001.M1P1.otherhost,S=60", b"Mon, 01 Jan 2001 00:00:00 +0000", 1_700_000_000),
    ("1700000002.M1P1.otherhost,S=60", None, 1_699_913_600.5),
    ("1700000003.M1P1.otherhost", b"Tue, 02 Jan 2001 00:00:00 +0000", 1_700_172_800),
    ("1700000004.M1P1.otherhost,S=60", None, 1_699_999_999),
    ("1700000005.M1P1.otherhost,S=60", b"Wed, 03 Jan 2001 00:00:00 +0000", 1_700_086_400),
]
DATES = [
    b'"14-Nov-2023 22:13:20 +0000"',
    b'"13-Nov-2023 22:13:20 +0000"',
    b'"16-Nov-2023 22:13:20 +0000"',
    b'"14-Nov-2023 22:13:19 +0000"',
    b'"15-Nov-2023 22:13:20 +0000"',
]


def drop_folder(server: Server) -> None:
    """The five files in C{cur/} with their mtimes, and the UID list naming them."""
    root = server.maildir(ALICE)
    for sub in ("cur", "new", "tmp"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    records = []
    for uid, (base, date, mtime) in enumerate(MESSAGES, 1):
        head = b"From: a@example.test\r\nSubject: s\r\n"
        if date is not None:
            head += b"Date: " + date + b"\r\n"
        path = root / "cur" / f"{base}:2,S"
        path.write_bytes(head + b"\r\nbody\r\n")
        os.utime(path, (mtime, mtime))
        records.append(f"{uid} :{base}\n")
    (root / "dovecot-uidlist").write_text("3 V1700000000 N6 Gabc\n" + "".join(records))


def internaldates(numbers: list[int], dates: list[bytes]) -> bytes:
    pairs = zip(numbers, dates, strict=True)
    return b"".join(b"* %d FETCH (INTERNALDATE %s)\r\n" % pair for pair in pairs)


def traced_select(w, pid: int, trace: Path) -> bytes:  # type: ignore[no-untyped-def]
    """SELECT INBOX while strace records the server process's stat calls."""
    strace = subprocess.Popen(
        ["strace", "-f", "-qq", "-e", "trace=%stat,%lstat,%fstat,statx", "-o", str(trace)]
        + ["-p", str(pid)],
        stderr=subprocess.PIPE,
    )
    try:
        for _ in range(500):  # every thread of the process traced
            tracers = set()
            for task in os.listdir(f"/proc/{pid}/task"):
                status = Path(f"/proc/{pid}/task/{task}/status").read_text()
                tracers.add(status.split("TracerPid:")[1].split()[0])
            if tracers == {str(strace.pid)} or strace.poll() is not None:
                break
            time.sleep(0.02)
        if strace.poll() is not None:
            pytest.skip(f"strace cannot attach: {strace.stderr.read()!r}")  # type: ignore[union-attr]
        out: bytes = w.send(b"b SELECT INBOX", b"b OK")
    finally:
        strace.send_signal(signal.SIGINT)
        strace.wait(timeout=30)
    return out


def test_first_select_stats_no_message_file(server: Server, tmp_path: Path) -> None:
    """The first SELECT lists and indexes the folder without a stat of one message file
    (strace of the serving process); then FETCH INTERNALDATE, SEARCH BEFORE/ON/SINCE and
    SORT ARRIVAL/DATE answer with the files' mtimes."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    drop_folder(server)
    w = login(server)
    try:
        trace = tmp_path / "trace"
        out = traced_select(w, serving_pid(server, w.sock), trace)
        assert b"* 5 EXISTS\r\n" in out
        calls = trace.read_text().splitlines()
        assert any("dovecot-uidlist" in line for line in calls)  # (the trace saw the SELECT)
        assert [line for line in calls if "/cur/" in line] == []
        w.until(b"\r\n")
        assert w.send(b"c SEARCH ON 14-Nov-2023", b"c OK").startswith(b"* SEARCH 1 4\r\n")
        w.until(b"\r\n")
        assert w.send(b"d SEARCH SINCE 15-Nov-2023", b"d OK").startswith(b"* SEARCH 3 5\r\n")
        w.until(b"\r\n")
        out = w.send(b"e SEARCH BEFORE 14-Nov-2023 NOT ON 1-Jan-2001", b"e OK")
        assert out.startswith(b"* SEARCH 2\r\n"), out
        w.until(b"\r\n")
        out = w.send(b"f SORT (ARRIVAL) UTF-8 ALL", b"f OK")
        assert out.startswith(b"* SORT 2 4 1 5 3\r\n"), out
        w.until(b"\r\n")
        out = w.send(b"g SORT (REVERSE DATE) UTF-8 ALL", b"g OK")
        assert out.startswith(b"* SORT 4 2 5 3 1\r\n"), out
        w.until(b"\r\n")
        out = w.send(b"h FETCH 1:* (INTERNALDATE)", b"h OK")
        assert out == internaldates([1, 2, 3, 4, 5], DATES) + b"h OK"
    finally:
        w.close()


def test_sort_date_alone_reads_the_dates_it_needs(server: Server) -> None:
    """SORT DATE as the first command that needs a date: the messages without a Date:
    take their INTERNALDATE (RFC 5256 §3), read then; a FETCH after gives the same."""
    drop_folder(server)
    w = login(server)
    try:
        w.send(b"b SELECT INBOX", b"b OK")
        w.until(b"\r\n")
        out = w.send(b"c SORT (DATE) UTF-8 ALL", b"c OK")
        assert out.startswith(b"* SORT 1 3 5 2 4\r\n"), out
        w.until(b"\r\n")
        out = w.send(b"d UID FETCH 2,4 (UID INTERNALDATE)", b"d OK")
        assert out == (
            b"* 2 FETCH (UID 2 INTERNALDATE " + DATES[1] + b")\r\n"
            b"* 4 FETCH (UID 4 INTERNALDATE " + DATES[3] + b")\r\nd OK"
        ), out
    finally:
        w.close()


def test_copy_and_move_keep_the_date(server: Server) -> None:
    """COPY and MOVE of messages whose date was not read yet give the copies the
    originals' INTERNALDATE (RFC 3501 §6.4.7, RFC 6851 §3)."""
    drop_folder(server)
    w = login(server)
    try:
        for n, name in enumerate((b"Moved", b"Copied")):
            assert w.send(b"m%d CREATE %s" % (n, name), b"\r\n").startswith(b"m%d OK" % n)
        w.send(b"b SELECT INBOX", b"b OK")
        w.until(b"\r\n")
        assert b"c OK" in w.send(b"c UID MOVE 2 Moved", b"c OK")
        w.until(b"\r\n")
        assert b"d OK" in w.send(b"d COPY 1:* Copied", b"d OK")
        w.until(b"\r\n")
        w.send(b"e SELECT Moved", b"e OK")
        w.until(b"\r\n")
        assert w.send(b"f FETCH 1:* (INTERNALDATE)", b"f OK") == (
            internaldates([1], DATES[1:2]) + b"f OK"
        )
        w.until(b"\r\n")
        w.send(b"g SELECT Copied", b"g OK")
        w.until(b"\r\n")
        out = w.send(b"h FETCH 1:* (INTERNALDATE)", b"h OK")
        assert out == internaldates([1, 2, 3, 4], DATES[:1] + DATES[2:]) + b"h OK", out
    finally:
        w.close()


def test_file_gone_before_its_date_was_read(server: Server) -> None:
    """A message file another program removed after the SELECT, before its date or size
    was read: FETCH leaves it out (as a message expunged meanwhile, RFC 3501 §7.4.1) and
    answers OK [EXPUNGEISSUED] (RFC 5530 §3), SEARCH by date does not match it, the others
    answer."""
    drop_folder(server)
    w = login(server)
    try:
        w.send(b"b SELECT INBOX", b"b OK")
        w.until(b"\r\n")
        (server.maildir(ALICE) / "cur" / f"{MESSAGES[0][0]}:2,S").unlink()
        out = w.send(b"c FETCH 1:* (INTERNALDATE)", b"c OK")
        assert out == internaldates([2, 3, 4, 5], DATES[1:]) + b"c OK", out
        # RFC 5530 §3: the tagged OK tells the client a message of the set was expunged
        assert w.until(b"\r\n") == b" [EXPUNGEISSUED] Some messages were already expunged.\r\n"
        out = w.send(b"d FETCH 1:* (RFC822.SIZE)", b"d OK")
        assert out.startswith(b"* 2 FETCH (RFC822.SIZE 42)\r\n"), out
        assert b"* 1 FETCH" not in out, out
        assert w.until(b"\r\n") == b" [EXPUNGEISSUED] Some messages were already expunged.\r\n"
        assert w.send(b"e SEARCH ON 14-Nov-2023", b"e OK").startswith(b"* SEARCH 4\r\n")
    finally:
        w.close()
