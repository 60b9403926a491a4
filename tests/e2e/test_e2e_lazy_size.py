"""Message files named without Dovecot's C{,W=} (another program's, with LF or CRLF line
ends, with or without C{,S=}): the first SELECT opens none of them (issue 10; their size is
unknown until asked), and every size the server then gives counts the CRLF form exactly:
RFC822.SIZE (RFC 3501 §2.3.4), SEARCH LARGER/SMALLER (§6.4.4), SORT SIZE (RFC 5256 §3),
STATUS DELETED-STORAGE and COPY's quota check (RFC 9208 §4.1.4, §4.3.1), POP3 LIST and STAT
(RFC 1939 §5)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, serving_pid
from test_e2e_bare_lf import Wire

ALICE = "alice@example.test"


def lines(n: int, end: bytes) -> bytes:
    return b"From: a@example.test" + end + b"Subject: s" + end + end + (b"x" + end) * n


LF30, LF20 = lines(30, b"\n"), lines(20, b"\n")
CRLF30, CRLF25, CRLF20, CRLF10 = (lines(n, b"\r\n") for n in (30, 25, 20, 10))
# sequence order (by mtime); the CRLF sizes are 126, 96, 111, 96, 66, the sizes on disk
# 93, 73, 111, 73, 66 (so LARGER, SMALLER and SORT answer differently on those)
FILES = [
    ("1700000001.M1P1.otherhost:2,T", LF30),
    (f"1700000002.M1P1.otherhost,S={len(LF20)}:2,S", LF20),
    (f"1700000003.M1P1.otherhost,S={len(CRLF25)}:2,", CRLF25),
    (f"1700000004.M1P1.otherhost,S={len(LF20)},W={len(CRLF20)}:2,", LF20),
    ("1700000005.M1P1.otherhost:2,", CRLF10),
]
SIZES = [126, 96, 111, 96, 66]


def drop_files(server: Server) -> None:
    cur = server.maildir(ALICE) / "cur"
    cur.mkdir(parents=True, exist_ok=True)
    for n, (name, data) in enumerate(FILES):
        (cur / name).write_bytes(data)
        os.utime(cur / name, (1_700_000_000 + n, 1_700_000_000 + n))


def login(server: Server) -> Wire:
    w = Wire(server.ports["imaps"])
    w.until(b"\r\n")
    w.send(b"a LOGIN %s %s" % (ALICE.encode(), PASSWORDS[ALICE].encode()), b"a OK")
    w.until(b"\r\n")
    return w


def test_sizes_are_those_of_the_crlf_form() -> None:
    """The figures of the test files are what this module says."""
    assert [len(d.replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")) for _, d in FILES] == SIZES
    assert [len(d) for _, d in FILES] == [93, 73, 111, 73, 66]


def test_first_select_opens_no_message_file(server: Server, tmp_path: Path) -> None:
    """The first SELECT of an unindexed folder lists and indexes it without opening one
    message file (strace of the serving process); then RFC822.SIZE is exact."""
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed")
    drop_files(server)
    w = login(server)
    try:
        pid = serving_pid(server, w.sock)
        trace = tmp_path / "trace"
        strace = subprocess.Popen(
            ["strace", "-f", "-qq", "-e", "trace=open,openat,openat2", "-o", str(trace)]
            + ["-p", str(pid)],
            stderr=subprocess.PIPE,
        )
        try:
            for _ in range(500):  # every thread of the process traced
                tasks = os.listdir(f"/proc/{pid}/task")
                tracers = set()
                for task in tasks:
                    status = Path(f"/proc/{pid}/task/{task}/status").read_text()
                    tracers.add(status.split("TracerPid:")[1].split()[0])
                if tracers == {str(strace.pid)} or strace.poll() is not None:
                    break
                time.sleep(0.02)
            if strace.poll() is not None:
                pytest.skip(f"strace cannot attach: {strace.stderr.read()!r}")  # type: ignore[union-attr]
            out = w.send(b"b SELECT INBOX", b"b OK")
        finally:
            strace.send_signal(signal.SIGINT)
            strace.wait(timeout=30)
        assert b"* 5 EXISTS\r\n" in out
        opened = trace.read_text().splitlines()
        assert any("dovecot-uidlist" in line for line in opened)  # (the trace saw the SELECT)
        assert [line for line in opened if "/cur/" in line] == []
        w.until(b"\r\n")
        out = w.send(b"c FETCH 1:* (RFC822.SIZE)", b"c OK")
        assert (
            out
            == b"".join(
                b"* %d FETCH (RFC822.SIZE %d)\r\n" % (n, size) for n, size in enumerate(SIZES, 1)
            )
            + b"c OK"
        )
    finally:
        w.close()


def test_search_sort_status_and_quota_count_the_crlf_form(server: Server) -> None:
    """SEARCH LARGER/SMALLER, SORT (SIZE), STATUS DELETED-STORAGE and COPY's quota check
    use the CRLF size of files whose size was not known yet."""
    drop_files(server)
    w = login(server)
    try:
        # STATUS before any SELECT: only the \Deleted message (1, 93 octets on disk)
        out = w.send(b"s STATUS INBOX (DELETED DELETED-STORAGE)", b"s OK")
        assert out.startswith(b'* STATUS "INBOX" (DELETED 1 DELETED-STORAGE 126)\r\n'), out
        w.until(b"\r\n")
        w.send(b"b SELECT INBOX", b"b OK")
        w.until(b"\r\n")
        assert w.send(b"c SEARCH LARGER 110", b"c OK").startswith(b"* SEARCH 1 3\r\n")
        w.until(b"\r\n")
        assert w.send(b"d SEARCH SMALLER 96", b"d OK").startswith(b"* SEARCH 5\r\n")
        w.until(b"\r\n")
        out = w.send(b"e SORT (SIZE) UTF-8 ALL", b"e OK")
        assert out.startswith(b"* SORT 5 2 4 3 1\r\n"), out
        w.until(b"\r\n")
        out = w.send(b"f SORT (REVERSE SIZE) UTF-8 SMALLER 112", b"f OK")
        assert out.startswith(b"* SORT 3 2 4 5\r\n"), out
        w.until(b"\r\n")
        # usage on disk: the ,S= sizes, else the file sizes (93 + 73 + 111 + 73 + 66)
        on_disk = 416
        server.cli("user", "quota", ALICE, f"{on_disk + SIZES[0] - 1}B")
        assert w.send(b"g COPY 1 INBOX", b"\r\n").startswith(b"g NO [OVERQUOTA]")
        server.cli("user", "quota", ALICE, f"{on_disk + SIZES[0]}B")
        assert w.send(b"h COPY 1 INBOX", b"h OK") == b"* 6 EXISTS\r\n* 1 RECENT\r\nh OK"
    finally:
        w.close()


def test_pop3_list_and_stat_count_the_crlf_form(server: Server) -> None:
    """RFC 1939 §5: STAT and LIST give the octets RETR sends (the CRLF form) of files whose
    size the index did not know."""
    drop_files(server)
    w = Wire(server.ports["pop3s"])
    try:
        w.until(b"\r\n")
        w.send(b"USER " + ALICE.encode(), b"\r\n")
        assert w.send(b"PASS " + PASSWORDS[ALICE].encode(), b"\r\n").startswith(b"+OK")
        assert w.send(b"STAT", b"\r\n") == b"+OK 5 495\r\n"
        assert w.send(b"LIST", b"\r\n.\r\n") == (
            b"+OK 5 messages (495 octets)\r\n1 126\r\n2 96\r\n3 111\r\n4 96\r\n5 66\r\n.\r\n"
        )
        assert w.send(b"RETR 1", b"\r\n.\r\n").startswith(b"+OK 126 octets\r\n")
        w.send(b"QUIT", b"\r\n")
    finally:
        w.close()
