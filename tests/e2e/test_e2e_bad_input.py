"""Bad input over the real server gets a clear protocol error and changes nothing: IMAP
flags and tags with 8-bit octets (RFC 3501 §9 flag, tag: ATOM-CHAR and ASTRING-CHAR are
CHARs, %x01-7F), SMTP parameter values with them (RFC 5321 §4.1.2 esmtp-value; RFC 3463
§3.6 X.5.4)."""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator

import pytest
from e2e_server import PASSWORDS, LineClient, Server, client_tls, deliver, running

ALICE = "alice@example.test"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    with running(Server(tmp_path_factory.mktemp("bad-input")), {ALICE: PASSWORDS[ALICE]}) as srv:
        deliver(srv, ALICE, "one")
        srv.wait_for_messages(ALICE, 1)
        yield srv


@pytest.fixture
def imap(server: Server) -> Iterator[LineClient]:
    """A logged-in IMAPS session with INBOX selected."""
    sock = client_tls().wrap_socket(
        socket.create_connection(("127.0.0.1", server.ports["imaps"]), timeout=30)
    )
    c = LineClient(sock)
    try:
        assert c.line().startswith(b"* OK ")
        c.send(b'L LOGIN %s "%s"\r\n' % (ALICE.encode(), PASSWORDS[ALICE].encode()))
        assert c.until(lambda line: line.startswith(b"L ")).startswith(b"L OK ")
        c.send(b"S SELECT INBOX\r\n")
        assert c.until(lambda line: line.startswith(b"S ")).startswith(b"S OK ")
        yield c
    finally:
        sock.close()


def files(server: Server) -> list[tuple[str, bytes]]:
    """INBOX's message files: (name, content), sorted."""
    return [(p.name, p.read_bytes()) for p in server.messages(ALICE)]


def test_imap_store_and_append_of_a_non_atom_flag_are_bad(server: Server, imap: LineClient) -> None:
    """RFC 3501 §9 flag: STORE and APPEND of C{\\xff} are BAD (as Dovecot: "8bit data in
    atom"), APPEND before its literal is asked for; no file is renamed or added."""
    before = files(server)
    imap.send(b"a STORE 1 +FLAGS (\\Seen \xff)\r\n")
    assert imap.line() == b"a BAD Syntax error: 8bit data in atom"
    imap.send(b"b APPEND INBOX (\xff) {5}\r\n")
    assert imap.line() == b"b BAD Syntax error: 8bit data in atom"
    imap.send(b"c NOOP\r\n")  # the client sent no literal: the session goes on
    assert imap.until(lambda line: line.startswith(b"c ")) == b"c OK NOOP completed"
    assert files(server) == before


def test_imap_unknown_system_flag_and_quoted_flag_are_bad(server: Server, imap: LineClient) -> None:
    """RFC 3501 §9 flag: a system flag other than the five (flag-extension is reserved;
    \\Recent cannot be set, §2.3.2) and a quoted string are not flags: STORE and APPEND
    are BAD with Dovecot's words, APPEND before its literal is asked for; nothing stored."""
    before = files(server)
    imap.send(b"a STORE 1 +FLAGS (\\Seen \\Foo)\r\n")
    assert imap.line() == b"a BAD Syntax error: Invalid system flag \\FOO"
    imap.send(b"b STORE 1 FLAGS \\Recent\r\n")
    assert imap.line() == b"b BAD Syntax error: Invalid system flag \\RECENT"
    imap.send(b'c STORE 1 +FLAGS ("x")\r\n')
    assert imap.line() == b"c BAD Syntax error: Flags list contains non-atoms."
    imap.send(b'd APPEND INBOX (\\Seen "x") {5}\r\n')
    assert imap.line() == b"d BAD Syntax error: Flags list contains non-atoms."
    imap.send(b"e APPEND INBOX (\\Foo) {5}\r\n")
    assert imap.line() == b"e BAD Syntax error: Invalid system flag \\FOO"
    imap.send(b"f NOOP\r\n")  # the client sent no literal: the session goes on
    assert imap.until(lambda line: line.startswith(b"f ")) == b"f OK NOOP completed"
    assert files(server) == before
    assert (server.maildir(ALICE) / "dovecot-keywords").exists() is False


def test_imap_invalid_tag_is_untagged_bad_not_echoed(server: Server, imap: LineClient) -> None:
    """RFC 3501 §9 tag: a tag with 8-bit octets gets an untagged BAD, not an echo of them;
    its APPEND asks for no literal and stores nothing."""
    before = files(server)
    imap.send(b"\xff NOOP\r\n\xff APPEND INBOX {5}\r\nd NOOP\r\n")
    assert imap.line() == b"* BAD Invalid tag"
    assert imap.line() == b"* BAD Invalid tag"
    assert imap.until(lambda line: line.startswith(b"d ")) == b"d OK NOOP completed"
    assert files(server) == before


def command(s: smtplib.SMTP, line: bytes) -> bytes:
    s.send(line + b"\r\n")
    code, text = s.getreply()
    return b"%d %s" % (code, text)


def test_smtp_bad_parameter_value_is_501_5_5_4(server: Server) -> None:
    """RFC 5321 §4.1.2: BODY=\\xff and NOTIFY=\\xff are 501 5.5.4 in Postfix's words, not a
    bad address, and the transaction goes on without them."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="client.test") as s:
        s.ehlo()
        assert command(s, b"MAIL FROM:<a@sender.test> BODY=\xff") == (
            b"501 5.5.4 Bad BODY parameter syntax"
        )
        assert command(s, b"MAIL FROM:<a@sender.test>") == b"250 2.1.0 Sender OK"
        assert command(s, b"RCPT TO:<%s> NOTIFY=\xff" % ALICE.encode()) == (
            b"501 5.5.4 Bad NOTIFY parameter syntax"
        )
        assert command(s, b"DATA") == b"503 5.5.1 Need RCPT command first"


def test_imap_numbers_over_their_range_are_bad(server: Server, imap: LineClient) -> None:
    """RFC 3501 §9: a partial's origin and length and a section's part numbers are
    C{number}/C{nz-number}, unsigned 32-bit, and so is QRESYNC's UIDVALIDITY; RFC 7162 §7:
    SEARCH MODSEQ's C{mod-sequence-valzer} is at most 2^63-1.  Each over its range is BAD,
    never an OK answer with the value taken as it is (a partial at 2^32 answered OK with an
    empty literal and set \\Seen; Dovecot 2.3.19 does the same, the RFC's grammar rules)."""
    for command in (
        b"a FETCH 1 BODY.PEEK[]<4294967296.5>",
        b"a FETCH 1 BODY.PEEK[]<0.4294967296>",
        b"a FETCH 1 BODY.PEEK[4294967296]",
        b"a FETCH 1 BODY.PEEK[1.4294967296.MIME]",
    ):
        imap.send(command + b"\r\n")
        assert imap.line() == b"a BAD Syntax error: Number out of range", command
    imap.send(b"b SEARCH MODSEQ 9223372036854775808\r\n")
    assert imap.line() == b"b BAD bad MODSEQ value"
    imap.send(b"c FETCH 1 (BODY.PEEK[]<4294967295.4294967295> BODY.PEEK[4294967295])\r\n")
    assert imap.line() == b"* 1 FETCH (BODY[]<4294967295> {0}"
    assert imap.line() == b" BODY[4294967295] NIL)"
    assert imap.line() == b"c OK FETCH completed"
    imap.send(b"d FETCH 1 FLAGS\r\n")
    assert imap.until(lambda line: line.startswith(b"d ")) == b"d OK FETCH completed"
    # RFC 7162 §7 SELECT's QRESYNC uidvalidity is an nz-number too
    imap.send(b"e UNSELECT\r\nf ENABLE QRESYNC\r\n")
    assert imap.until(lambda line: line.startswith(b"f ")) == b"f OK ENABLE completed"
    imap.send(b"g SELECT INBOX (QRESYNC (4294967296 1))\r\n")
    assert imap.line() == b"g BAD Number out of range"


def test_imap_idle_ended_by_anything_but_done_is_bad(server: Server, imap: LineClient) -> None:
    """RFC 2177 §3: IDLE ends with C{DONE} (any case); any other line ends it with BAD, and
    a literal announced on that line is not read as one: its octets are the next command
    line, as Dovecot 2.3.19 answers (C{BAD Expected DONE}, then runs them)."""
    imap.send(b"i IDLE\r\n")
    assert imap.line() == b"+ idling"
    imap.send(b"DONE {6+}\r\nx NOOP\r\n")
    assert imap.line() == b"i BAD Expected DONE"
    assert imap.until(lambda line: line.startswith(b"x ")) == b"x OK NOOP completed"
    imap.send(b"j IDLE\r\n")
    assert imap.line() == b"+ idling"
    imap.send(b"done\r\n")
    assert imap.until(lambda line: line.startswith(b"j ")) == b"j OK IDLE terminated"
