"""A message expunged under a session that still has it in its view (expunged by another
session, or its file removed by another program): RFC 2180 §4.1 lets FETCH answer what can
still be read; what cannot is answered as Dovecot 2.3 does, C{NIL} (ENVELOPE and BODY with
empty values), and the tagged OK carries C{[EXPUNGEISSUED]} (RFC 5530 §3).  COPY and MOVE of
such a message copy nothing and answer C{NO [EXPUNGEISSUED]} (RFC 2180 §4.4.1, as Dovecot);
STORE still answers OK.  The server answered a plain OK and sent nothing for the message."""

from __future__ import annotations

import socket
from pathlib import Path

from e2e_server import LineClient, Server, client_tls, imap_client, running

EXPUNGED = b"OK [EXPUNGEISSUED] Some messages were already expunged."
COPY_EXPUNGED = b"NO [EXPUNGEISSUED] Some of the requested messages no longer exist."


def _message(n: int) -> bytes:
    return b"Subject: m%d\r\n\r\nbody %d\r\n" % (n, n)


def _session(server: Server) -> LineClient:
    sock = client_tls().wrap_socket(
        socket.create_connection(("127.0.0.1", server.ports["imaps"])), server_hostname="x"
    )
    sock.settimeout(60)
    c = LineClient(sock)
    c.line()
    assert _reply(c, b"a LOGIN alice@example.test alice-secret-1")[-1].startswith(b"a OK")
    assert _reply(c, b"s SELECT INBOX")[-1].startswith(b"s OK")
    return c


def _reply(c: LineClient, command: bytes) -> list[bytes]:
    """The lines answering C{command}, up to its tagged reply."""
    tag = command.split(b" ", 1)[0] + b" "
    c.send(command + b"\r\n")
    lines = [c.line()]
    while not lines[-1].startswith(tag):
        lines.append(c.line())
    return lines


def _three_and_expunge_second(server: Server) -> LineClient:
    """INBOX with three messages, a session that selected it, and the second expunged by
    another session."""
    other = imap_client(server)
    other.create_folder("Other")
    for n in (1, 2, 3):
        other.append("INBOX", _message(n))
    c = _session(server)
    other.select_folder("INBOX")
    other.delete_messages([2])
    # the flag change reported first, so that the answers below do not depend on when this
    # session's view learns of it
    assert _reply(c, b"n NOOP") == [
        b"* 2 FETCH (FLAGS (\\Deleted \\Recent))",
        b"n OK NOOP completed",
    ]
    other.expunge()
    other.logout()
    return c


def test_fetch_of_a_message_expunged_by_another_session(tmp_path: Path) -> None:
    with running(Server(tmp_path)) as server:
        c = _three_and_expunge_second(server)
        got = _reply(c, b"f FETCH 1:3 (UID BODY.PEEK[])")
        assert got == [
            b"* 1 FETCH (UID 1 BODY[] {%d}" % len(_message(1)),
            *_message(1).split(b"\r\n")[:-1],
            b")",
            b"* 2 FETCH (UID 2 BODY[] NIL)",
            b"* 3 FETCH (UID 3 BODY[] {%d}" % len(_message(3)),
            *_message(3).split(b"\r\n")[:-1],
            b")",
            b"f " + EXPUNGED,
        ]
        # what the index still knows is answered; what needs the file is NIL (as Dovecot)
        assert _reply(
            c, b"g FETCH 2 (FLAGS RFC822.SIZE ENVELOPE BODY BODY.PEEK[TEXT]<0.3> RFC822.HEADER)"
        ) == [
            b"* 2 FETCH (FLAGS (\\Deleted \\Recent) RFC822.SIZE %d"
            % len(_message(2))
            + b" ENVELOPE (NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL)"
            b' BODY ("text" "plain" NIL NIL NIL "7bit" 0 0) BODY[TEXT]<0> NIL RFC822.HEADER NIL)',
            b"g " + EXPUNGED,
        ]
        assert _reply(c, b"u UID FETCH 2 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")[-2:] == [
            b"* 2 FETCH (BODY[HEADER.FIELDS (SUBJECT)] NIL UID 2)",
            b"u " + EXPUNGED,
        ]
        assert "Traceback" not in server.log.read_text()


def test_fetch_of_a_message_whose_file_was_removed(tmp_path: Path) -> None:
    """Another program removes a message file: a FETCH that would set \\Seen answers NIL
    for it (no flag can be set on a file that is gone) and the others' data."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        for n in (1, 2):
            other.append("INBOX", _message(n))
        other.logout()
        c = _session(server)
        (second,) = [p for p in server.messages("alice@example.test") if b"m2" in p.read_bytes()]
        second.unlink()
        assert _reply(c, b"f FETCH 1:2 (RFC822.TEXT)") == [
            b"* 1 FETCH (RFC822.TEXT {8}",
            b"body 1",
            b" FLAGS (\\Seen \\Recent))",
            b"* 2 FETCH (RFC822.TEXT NIL)",
            b"f " + EXPUNGED,
        ]
        assert _reply(c, b"n NOOP") == [b"* 2 EXPUNGE", b"n OK NOOP completed"]
        assert "Traceback" not in server.log.read_text()


def test_copy_and_move_of_a_message_expunged_by_another_session(tmp_path: Path) -> None:
    """COPY, UID COPY and MOVE of a set with such a message copy nothing and answer NO
    [EXPUNGEISSUED], as Dovecot (RFC 2180 §4.4.1 lets the server refuse); STORE answers OK.
    (A message whose file goes between the check and its copy gets the same NO; those
    copied before it stay.)"""
    with running(Server(tmp_path)) as server:
        c = _three_and_expunge_second(server)
        for command in (b"c COPY 1:3 Other", b"c UID COPY 2 Other", b"c MOVE 1:* Other"):
            assert _reply(c, command) == [b"c " + COPY_EXPUNGED], command
        assert _reply(c, b"s STORE 1 +FLAGS.SILENT (\\Flagged)") == [b"s OK STORE completed"]
        assert _reply(c, b"n NOOP") == [b"* 2 EXPUNGE", b"n OK NOOP completed"]
        assert _reply(c, b"c COPY 1:* Other")[-1].startswith(b"c OK [COPYUID ")
        assert "Traceback" not in server.log.read_text()


def test_file_put_back_under_an_expunged_name_gets_a_new_uid(tmp_path: Path) -> None:
    """A message file another program puts back after its EXPUNGE is a new message with a
    new UID (RFC 3501 §2.3.1.1: a UID is never reused); it came back under its old UID."""
    with running(Server(tmp_path)) as server:
        other = imap_client(server)
        for n in (1, 2):
            other.append("INBOX", _message(n))
        other.select_folder("INBOX")
        (path,) = [p for p in server.messages("alice@example.test") if b"m2" in p.read_bytes()]
        data = path.read_bytes()
        other.delete_messages([2])
        other.expunge()
        other.logout()
        path.write_bytes(data)
        c = _session(server)
        assert _reply(c, b"f FETCH 1:* (UID BODY.PEEK[HEADER.FIELDS (SUBJECT)])") == [
            b"* 1 FETCH (UID 1 BODY[HEADER.FIELDS (SUBJECT)] {15}",
            b"Subject: m1",
            b"",
            b")",
            b"* 2 FETCH (UID 3 BODY[HEADER.FIELDS (SUBJECT)] {15}",
            b"Subject: m2",
            b"",
            b")",
            b"f OK FETCH completed",
        ]
