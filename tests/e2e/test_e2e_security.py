"""Issue 5 end to end, over real sockets against the real server: open-relay tricks on port 25,
names from the network never becoming paths outside the user's Maildir, the failed-login
throttle (and the fail2ban filter on the real log), connection limits, and 0600/0700 files."""

from __future__ import annotations

import base64
import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket
import ssl
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, running

ROOT = Path(__file__).resolve().parents[2]
FILTER = ROOT / "etc" / "fail2ban" / "filter.d" / "twistedmail.conf"
ALICE = "alice@example.test"


def tree(root: Path) -> set[str]:
    """Every path under C{root}, relative, as text."""
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def stored_messages(server: Server) -> list[Path]:
    """Every message file anywhere in the Maildirs, and every file in the queue."""
    found = [
        p
        for p in (server.data_dir / "mail").rglob("*")
        if p.is_file() and p.parent.name in ("new", "cur", "tmp")
    ]
    queue = server.data_dir / "queue"
    if queue.exists():
        found += [p for p in queue.rglob("*") if p.is_file()]
    return found


# -- relay tricks (RFC 5321 §3.6, RFC 2505) ----------------------------------------------

RELAY_TRICKS = [
    # percent hack: a local-looking address whose local part names a remote one
    ("<bob%remote.test@example.test>", b"550 5.1.1 No such user here"),
    ("<bob%remote.test%example.test>", b"501 5.1.3 Bad address syntax"),
    # source routes: accepted as syntax and ignored (RFC 5321 §3.6.1, Appendix C), never
    # followed: what is left is a remote address
    ("<@example.test:bob@remote.test>", b"554 5.7.1 Relay access denied"),
    ("<@a.test,@example.test:bob@remote.test>", b"554 5.7.1 Relay access denied"),
    # quoted local part hiding an @: a valid local part (RFC 5321 §4.1.2) of no user
    ('<"bob@remote.test"@example.test>', b"550 5.1.1 No such user here"),
    ("<bob@remote.test@example.test>", b"501 5.1.3 Bad address syntax"),
    # UUCP bang paths
    ("<remote.test!bob@example.test>", b"550 5.1.1 No such user here"),
    ("<remote.test!bob>", b"501 5.1.3 Bad address syntax"),
    # IP-literal domains (ours included): valid syntax (RFC 5321 §4.1.3), not ours to serve
    ("<bob@[127.0.0.1]>", b"554 5.7.1 Relay access denied"),
    ("<postmaster@[127.0.0.1]>", b"554 5.7.1 Relay access denied"),
    ("<bob@[IPv6:::1]>", b"554 5.7.1 Relay access denied"),
    # trailing dots
    ("<bob@remote.test.>", b"501 5.1.3 Bad address syntax"),
    ("<alice@example.test.>", b"501 5.1.3 Bad address syntax"),
    # upper case does not make a remote domain local
    ("<BOB@REMOTE.TEST>", b"554 5.7.1 Relay access denied"),
    ("<bob@EXAMPLE.test.remote.test>", b"554 5.7.1 Relay access denied"),
    # and the plain case
    ("<bob@remote.test>", b"554 5.7.1 Relay access denied"),
]


@pytest.mark.parametrize(("recipient", "reply"), RELAY_TRICKS)
def test_relay_trick_refused_on_port_25(server: Server, recipient: str, reply: bytes) -> None:
    """RFC 5321 §3.6.1: relay tricks (percent hack, source routes, quoted @, bang paths, IP
    literals) are refused at RCPT on port 25 and nothing is stored."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="evil.test") as s:
        s.ehlo()
        assert s.docmd("MAIL FROM:<spammer@evil.test>") == (250, b"2.1.0 Sender OK")
        code, text = s.docmd("RCPT TO:" + recipient)
        assert b"%d %s" % (code, text) == reply
        assert s.docmd("DATA") == (503, b"5.5.1 Need RCPT command first")
    assert stored_messages(server) == []


def test_upper_case_local_address_is_delivered_not_relayed(server: Server) -> None:
    """An upper-case local address is delivered to the local user, not relayed."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="friend.test") as s:
        s.sendmail("friend@friend.test", ["ALICE@EXAMPLE.TEST"], b"Subject: hi\r\n\r\nhi\r\n")
    assert len(server.messages(ALICE)) == 1
    assert [p for p in stored_messages(server) if ALICE.split("@")[0] not in str(p)] == []


# -- names from the network never become paths outside DATA_DIR/mail/DOMAIN/USER --------

HOSTILE_FOLDERS = [
    b"..",
    b"../x",
    b"../../../../tmp/evil",
    b"/",
    b"/etc",
    b"a/../../x",
    b"INBOX/../..",
    b".",
    b"a..b",
    b".hidden",
    b"x\x00y",
    b"x\x01y",
    b"x\ty",
    b"x\x7fy",
    b"&",
    b"&Jjo",
    b"&AC4ALg-",  # mUTF-7 for ".."
    b"&AC8-",  # mUTF-7 for "/"
]


def imap_command(m: imaplib.IMAP4, command: bytes, *literals: bytes) -> bytes:
    """Send one command, each C{{}} in it replaced by the next of C{literals} as a
    synchronizing literal (RFC 3501 §4.3); return its tagged completion line."""
    tag = m._new_tag()  # type: ignore[attr-defined]
    parts = command.split(b"{}")
    m.send(tag + b" " + parts[0])
    for literal, rest in zip(literals, parts[1:], strict=True):
        m.send(b"{%d}\r\n" % len(literal))
        line = m.readline()
        if line.startswith(tag + b" "):  # refused before the literal
            return line[len(tag) + 1 :].rstrip(b"\r\n")
        assert line.startswith(b"+"), line
        m.send(literal + rest)
    m.send(b"\r\n")
    while True:
        line = m.readline()
        if line.startswith(tag + b" "):
            return line[len(tag) + 1 :].rstrip(b"\r\n")


@pytest.fixture
def alice_imap(server: Server) -> Iterator[imaplib.IMAP4_SSL]:
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    m.login(ALICE, PASSWORDS[ALICE])
    try:
        yield m
    finally:
        m.logout()


def test_hostile_folder_names_stay_inside_the_maildir(
    server: Server, alice_imap: imaplib.IMAP4_SSL
) -> None:
    """Hostile folder names in CREATE, RENAME, SELECT and DELETE are refused and nothing is
    created outside the user's Maildir."""
    home = server.maildir(ALICE)
    before_data = tree(server.data_dir)
    before_root = tree(server.root)
    invalid = b"NO [CANNOT] Invalid mailbox name"
    for name in HOSTILE_FOLDERS:
        assert imap_command(alice_imap, b"CREATE {}", name) == invalid, name
        assert imap_command(alice_imap, b"RENAME INBOX {}", name) == invalid, name
        assert imap_command(alice_imap, b"SELECT {}", name).startswith(b"NO ["), name
        assert imap_command(alice_imap, b"DELETE {}", name).startswith(b"NO ["), name
        assert imap_command(alice_imap, b"SUBSCRIBE {}", name).startswith(b"NO ["), name
        if b"\0" not in name:
            # Quoted: STATUS with a literal mailbox name is answered BAD by the IMAP
            # parser (reported; not a path problem).
            status = imap_command(alice_imap, b'STATUS "%s" (MESSAGES)' % name)
            assert status.startswith(b"NO ["), name
            # Quoted too: APPEND after a literal mailbox name says "Literal expected".
            append = imap_command(alice_imap, b'APPEND "%s" {}' % name, b"Subject: x\r\n\r\nx\r\n")
            assert append in (b"NO [TRYCREATE] No such mailbox", invalid), name
    # Nothing new anywhere: not in the data dir, not next to it.
    assert tree(server.data_dir) - before_data == set()
    assert tree(server.root) - before_root <= {"twistd.log"}
    assert not Path("/tmp/evil").exists()
    assert stored_messages(server) == []
    assert home.is_dir()


def test_folder_names_past_the_directory_name_limit_create_nothing(
    server: Server, alice_imap: imaplib.IMAP4_SSL
) -> None:
    """A folder whose Maildir++ directory (C{.A.B.C}, one name) would pass 255 octets
    (NAME_MAX) is an invalid name for CREATE and RENAME: no half-made parents, and a RENAME
    whose children's names would pass it renames nothing."""
    home = server.maildir(ALICE)
    invalid = b"NO [CANNOT] Invalid mailbox name"
    before = tree(home)
    deep = b"a." * 127 + b"a"  # 255 octets, and the directory's leading dot
    wide = "\u00e9".encode() * 100  # 200 octets of UTF-8, 270 of modified UTF-7
    for name in (deep, wide, b"x." + b"b" * 253):
        assert imap_command(alice_imap, b"CREATE {}", name) == invalid, name
        assert imap_command(alice_imap, b"RENAME INBOX {}", name) == invalid, name
    assert tree(home) == before
    assert imap_command(alice_imap, b"CREATE {}", b"p." + b"c" * 200) == b"OK CREATE completed"
    before = tree(home)
    assert imap_command(alice_imap, b"RENAME p {}", b"q." + b"r" * 60) == invalid
    assert tree(home) == before
    assert imap_command(alice_imap, b"RENAME p {}", b"q." + b"r" * 50) == b"OK RENAME completed"
    assert (home / (".q." + "r" * 50 + "." + "c" * 200) / "cur").is_dir()


def test_hostile_user_names_stay_inside_the_data_dir(server: Server) -> None:
    """Hostile user names in IMAP, POP3 and SMTP logins fail to authenticate and create nothing
    outside the data dir."""
    before = tree(server.root)
    evil = "../../etc"
    # IMAP LOGIN and AUTHENTICATE
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    assert imap_command(m, b"LOGIN {} x", evil.encode()) == (
        b"NO [AUTHENTICATIONFAILED] Authentication failed"
    )
    plain = base64.b64encode(b"\0../../etc\0x")
    assert imap_command(m, b"AUTHENTICATE PLAIN " + plain) == (
        b"NO [AUTHENTICATIONFAILED] Authentication failed"
    )
    m.logout()
    # POP3 USER/PASS
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
    assert p.user(evil) == b"+OK send PASS"
    with pytest.raises(poplib.error_proto, match=r"-ERR \[AUTH\] Authentication failed"):
        p.pass_("x")
    p.quit()
    # SMTP AUTH on 465
    with smtplib.SMTP_SSL("127.0.0.1", server.ports["submissions"], context=client_tls()) as s:
        s.ehlo()
        assert s.docmd("AUTH PLAIN", plain.decode()) == (
            535,
            b"5.7.8 Authentication credentials invalid",
        )
    # RCPT of path-like local parts on 25
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.ehlo()
        s.docmd("MAIL FROM:<x@evil.test>")
        for rcpt, reply in (
            ("<../../etc@example.test>", (501, b"5.1.3 Bad address syntax")),
            ("<a/../../b@example.test>", (501, b"5.1.3 Bad address syntax")),
            ("<a/b@example.test>", (550, b"5.1.1 No such user here")),
            # a valid Quoted-string (RFC 5321 §4.1.2), but no account has one
            ('<"../x"@example.test>', (550, b"5.1.1 No such user here")),
            ("<x@../example.test>", (501, b"5.1.3 Bad address syntax")),
        ):
            assert s.docmd("RCPT TO:" + rcpt) == reply, rcpt
    assert tree(server.root) - before <= {"twistd.log"}
    assert not (server.data_dir / "etc").exists()
    assert stored_messages(server) == []


# -- data dir permissions ------------------------------------------------------------------


def test_data_dir_is_owner_only(server: Server, alice_imap: imaplib.IMAP4_SSL) -> None:
    """Everything the server and the CLI create in the data dir has no group or other permission
    bits (files and sockets 0600, directories 0700)."""
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"]) as s:
        s.sendmail("x@friend.test", [ALICE], b"Subject: hi\r\n\r\nhi\r\n")
    assert imap_command(alice_imap, b"CREATE Projects") == b"OK CREATE completed"
    assert imap_command(alice_imap, b"APPEND Projects {}", b"Subject: x\r\n\r\nx\r\n").startswith(
        b"OK"
    )
    server.add_user("carol@other.test", "carol-secret-3")  # the CLI creates things too
    server.cli("alias", "add", "team@example.test", ALICE)
    wrong = []
    for path in [server.data_dir, *server.data_dir.rglob("*")]:
        if path.is_symlink():
            continue  # the control socket's lock (FilesystemLock): a symlink, no permissions
        mode = stat.S_IMODE(path.lstat().st_mode)
        if path.is_socket():
            expected = 0o600
        elif path.is_dir():
            expected = 0o700
        else:
            expected = 0o600
        if mode & ~expected:
            wrong.append(f"{oct(mode)} {path.relative_to(server.data_dir)}")
    assert wrong == []


# -- throttle, fail2ban, connection limits (a server with small limits) -------------------


@pytest.fixture
def strict_server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.config.write_text(
        srv.config.read_text().replace(
            "[limits]\n",
            "[limits]\nlogin_block_after = 3\nmax_connections_per_ip = 3\n",
        )
    )
    with running(srv):
        yield srv


def can_bind(ip: str) -> bool:
    try:
        with socket.socket() as s:
            s.bind((ip, 0))
        return True
    except OSError:
        return False


def smtp_auth(server: Server, password: str, source: str = "127.0.0.1") -> tuple[int, bytes]:
    with smtplib.SMTP_SSL(
        "127.0.0.1",
        server.ports["submissions"],
        context=client_tls(),
        source_address=(source, 0),
    ) as s:
        s.ehlo()
        credentials = base64.b64encode(f"\0{ALICE}\0{password}".encode()).decode()
        return s.docmd("AUTH PLAIN", credentials)


def fail2ban_failregex() -> str:
    text = FILTER.read_text()
    m = re.search(r"^failregex\s*=\s*(.+)$", text, re.M)
    assert m is not None
    return m.group(1).strip()


def test_failed_logins_are_throttled_then_blocked(strict_server: Server) -> None:
    """Failed logins are delayed 1 then 2 s, then the IP is blocked (454 4.7.0 even with the
    right password) in SMTP, IMAP and POP3 alike."""
    server = strict_server
    started = time.monotonic()
    assert smtp_auth(server, "wrong-1") == (535, b"5.7.8 Authentication credentials invalid")
    assert smtp_auth(server, "wrong-2") == (535, b"5.7.8 Authentication credentials invalid")
    assert smtp_auth(server, "wrong-3") == (535, b"5.7.8 Authentication credentials invalid")
    assert time.monotonic() - started >= 3  # delays of 1 and 2 s before the 2nd and 3rd
    blocked = (454, b"4.7.0 Too many failed logins, try again later")
    assert smtp_auth(server, PASSWORDS[ALICE]) == blocked  # even the right password
    # The same block holds in IMAP and POP3 (one throttle).
    m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    assert imap_command(m, b"LOGIN {} {}", ALICE.encode(), PASSWORDS[ALICE].encode()) == (
        b"NO [UNAVAILABLE] Too many failed logins, try again later"
    )
    m.logout()
    p = poplib.POP3_SSL("127.0.0.1", server.ports["pop3s"], context=client_tls())
    p.user(ALICE)
    with pytest.raises(poplib.error_proto) as e:
        p.pass_(PASSWORDS[ALICE])
    assert e.value.args[0] == b"-ERR [SYS/TEMP] too many failed logins, try again later"
    p.quit()
    if can_bind("127.0.0.2"):  # another client IP is not affected
        assert smtp_auth(server, PASSWORDS[ALICE], source="127.0.0.2") == (
            235,
            b"2.7.0 Authentication successful",
        )
    # The log: one "login failed" line per attempt, which the fail2ban filter matches.
    log = server.log.read_text()
    failed = [line for line in log.splitlines() if "login failed:" in line]
    assert len(failed) == 6
    # (" worker=PID" in the system field when a worker process served the attempt)
    assert re.search(
        r" \[twistedmail\.auth#warn(?: worker=\d+)?\] login failed: service=smtp"
        r" user=alice@example\.test ip=127\.0\.0\.1$",
        failed[0],
    ), failed[0]
    assert (
        "login throttle: blocking user=alice@example.test from ip=127.0.0.1 for 900s after 3"
        " failed logins" in log
    )
    pattern = fail2ban_failregex().replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)")
    body = re.compile(pattern)
    hosts = []
    for line in log.splitlines():
        rest = line.split(" ", 1)[1] if " " in line else line  # fail2ban cuts the time stamp
        m2 = body.search(rest)
        if m2:
            hosts.append(m2.group("host"))
    assert hosts == ["127.0.0.1"] * 6
    if shutil.which("fail2ban-regex"):
        out = subprocess.run(
            ["fail2ban-regex", "--print-all-matched", str(server.log), str(FILTER)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert re.search(r"Failregex: 6 total", out), out


def read_greeting(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    data = b""
    while not data.endswith(b"\r\n"):
        chunk = sock.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def test_connections_per_ip_are_limited_politely(strict_server: Server) -> None:
    """Past max_connections_per_ip each service refuses politely: SMTP 421 4.7.0, IMAP BYE
    [UNAVAILABLE], POP3 -ERR [SYS/TEMP]."""
    server = strict_server
    expected = {
        "smtp": b"421 4.7.0 mail.example.test Too many connections, try again later\r\n",
        "imap": b"* BYE [UNAVAILABLE] Too many connections, try again later\r\n",
        "pop3": b"-ERR [SYS/TEMP] Too many connections, try again later\r\n",
    }
    for service, refusal in expected.items():
        port = server.ports[service]
        held = [socket.create_connection(("127.0.0.1", port)) for _ in range(3)]
        try:
            for sock in held:
                assert not read_greeting(sock).startswith(refusal[:4])
            with socket.create_connection(("127.0.0.1", port)) as extra:
                assert read_greeting(extra) == refusal
                assert extra.recv(100) == b""  # and closed
            if can_bind("127.0.0.2"):
                with socket.create_connection(
                    ("127.0.0.1", port), source_address=("127.0.0.2", 0)
                ) as other:
                    assert not read_greeting(other).startswith(refusal[:4])
        finally:
            for sock in held:
                sock.close()
        # Closed connections free their slots.
        deadline = time.monotonic() + 10
        while True:
            with socket.create_connection(("127.0.0.1", port)) as again:
                if read_greeting(again) != refusal or time.monotonic() > deadline:
                    break
            time.sleep(0.1)
        assert time.monotonic() <= deadline
    # Implicit TLS listeners: the refusal comes inside TLS.
    held_tls = [
        client_tls().wrap_socket(socket.create_connection(("127.0.0.1", server.ports["imaps"])))
        for _ in range(3)
    ]
    raw = socket.create_connection(("127.0.0.1", server.ports["imaps"]))
    try:
        for sock in held_tls:
            assert read_greeting(sock).startswith(b"* OK")
        tls = client_tls().wrap_socket(raw)
        assert read_greeting(tls) == expected["imap"]
    except ssl.SSLError:
        pytest.fail("TLS refused instead of a polite BYE")
    finally:
        raw.close()
        for sock in held_tls:
            sock.close()
    assert os.path.exists(server.log)
