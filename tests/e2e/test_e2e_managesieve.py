"""ManageSieve (RFC 5804) end to end: the real server, a certificate from a test CA, and the
real clients: sieve-connect (Debian package) and the managesieve Python client (PyPI), over
STARTTLS.  Then the issue's "done when": a script uploaded with sieve-connect files list
mail, flags the boss and answers with a vacation message, as Pigeonhole's sieve-test says
it should; hostile input gets a clear NO and nothing outside the user's sieve dir; 200
sessions give back their descriptors."""

from __future__ import annotations

import base64
import functools
import os
import shutil
import smtplib
import socket
import ssl
import struct
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_server import PASSWORDS, LineClient, Server, free_ports, make_test_ca, running

from twistedmail import control

ALICE, BOB = "alice@example.test", "bob@example.test"
SIEVE_CONNECT = shutil.which("sieve-connect")
SIEVE_TEST = shutil.which("sieve-test")
SCRIPT = b"""require ["fileinto", "imap4flags", "vacation", "mailbox"];
if header :contains "list-id" "dev.lists.example" {
    fileinto :create "Lists.dev";
    stop;
}
if address :is "from" "boss@corp.example" {
    addflag "\\\\Flagged";
}
vacation :days 3 :subject "Away until Monday" "I am away.";
"""


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[tuple[Server, Path]]:
    ca, cert, key = make_test_ca(tmp_path / "ca")
    srv = Server(tmp_path / "srv", tls=(cert, key))
    (closed,) = free_ports(1)
    with srv.config.open("a") as f:
        # Vacation replies to corp.example wait in the queue: the route is a closed port.
        f.write(f'\n[relay.routes]\n"corp.example" = "127.0.0.1:{closed}"\n')
    with running(srv):
        yield srv, ca


def sieve_connect(
    srv: Server, ca: Path, *args: str, user: str = ALICE, password: str | None = None
) -> subprocess.CompletedProcess[str]:
    """sieve-connect, non-interactive: the password (by default C{user}'s) on stdin
    (--passwordfd 0), the test CA trusted (--tlscafile) for the certificate's name."""
    if SIEVE_CONNECT is None:
        pytest.skip("sieve-connect not installed (Debian package sieve-connect)")
    command = [
        SIEVE_CONNECT,
        "--nosrv",
        "-s",
        "127.0.0.1",
        "-p",
        str(srv.ports["managesieve"]),
        "-u",
        user,
        "--passwordfd",
        "0",
        "--tlscafile",
        str(ca),
        "--tlshostname",
        "mail.example.test",
        *args,
    ]
    return subprocess.run(
        command,
        input=(PASSWORDS[user] if password is None else password) + "\n",
        capture_output=True,
        text=True,
        timeout=60,
    )


def sieve_dir(srv: Server, address: str = ALICE) -> Path:
    return srv.maildir(address) / "sieve"


def test_sieve_connect_upload_list_activate_download_delete(
    tls_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """sieve-connect over STARTTLS with a verified certificate and AUTHENTICATE PLAIN:
    upload, list, activate, download, deactivate, delete (RFC 5804 §2.6 - §2.10)."""
    srv, ca = tls_server
    local = tmp_path / "rules.sieve"
    local.write_bytes(SCRIPT)
    up = sieve_connect(srv, ca, "--upload", "--localsieve", str(local), "--remotesieve", "rules")
    assert up.returncode == 0, up.stderr
    assert (sieve_dir(srv) / "rules.sieve").read_bytes() == SCRIPT
    assert sieve_connect(srv, ca, "--activate", "--remotesieve", "rules").returncode == 0
    assert os.readlink(srv.maildir(ALICE) / ".dovecot.sieve") == "sieve/rules.sieve"
    listed = sieve_connect(srv, ca, "--list")
    assert (listed.returncode, listed.stdout) == (0, '"rules" ACTIVE\n')
    back = tmp_path / "back.sieve"
    got = sieve_connect(srv, ca, "--download", "--remotesieve", "rules", "--localsieve", str(back))
    assert got.returncode == 0, got.stderr
    assert back.read_bytes() == SCRIPT
    refused = sieve_connect(srv, ca, "--delete", "--remotesieve", "rules")
    assert refused.returncode != 0
    assert "NO (ACTIVE)" in refused.stderr
    assert sieve_connect(srv, ca, "--deactivate").returncode == 0
    assert sieve_connect(srv, ca, "--delete", "--remotesieve", "rules").returncode == 0
    assert list(sieve_dir(srv).iterdir()) == []
    assert not os.path.lexists(srv.maildir(ALICE) / ".dovecot.sieve")
    assert "login ok: service=managesieve user=alice@example.test ip=127.0.0.1" in (
        srv.log.read_text()
    )


def test_sieve_connect_exec_and_wrong_password(
    tls_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """--exec runs several commands in one session; a wrong password is refused (the
    shared login path logs it as for every protocol)."""
    srv, ca = tls_server
    local = tmp_path / "a.sieve"
    local.write_bytes(b"keep;\n")
    commands = tmp_path / "commands"
    commands.write_text(f"upload {local} first\nupload {local} second\nactivate second\nlist\n")
    run = sieve_connect(srv, ca, "--exec", str(commands))
    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ['"first"', '"second" ACTIVE', ""]
    if SIEVE_CONNECT is None:
        return
    bad = sieve_connect(srv, ca, "--list", password="wrong")
    assert bad.returncode != 0
    assert "Authentication failed" in bad.stderr
    assert "login failed: service=managesieve user=alice@example.test ip=127.0.0.1" in (
        srv.log.read_text()
    )


def python_client(srv: Server, ca: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The managesieve client over STARTTLS, verifying the certificate against the test CA
    (it builds its context with ssl.create_default_context(); the CA is added there)."""
    managesieve = pytest.importorskip("managesieve")
    monkeypatch.setattr(
        managesieve.ssl,
        "create_default_context",
        functools.partial(ssl.create_default_context, cafile=str(ca)),
    )
    return managesieve.MANAGESIEVE("127.0.0.1", srv.ports["managesieve"], use_tls=True, timeout=30)


def test_python_managesieve_client(
    tls_server: tuple[Server, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The managesieve client (PyPI): STARTTLS, PLAIN and LOGIN, upload, list, activate,
    get, rename (raw command), havespace, delete."""
    srv, ca = tls_server
    c = python_client(srv, ca, monkeypatch)
    assert c.loginmechs == ["PLAIN", "LOGIN"]
    assert "vacation" in c.capabilities
    assert c.authenticate("PLAIN", ALICE, PASSWORDS[ALICE]) == "OK"
    assert c.putscript("main", SCRIPT.decode()) == "OK"
    assert c.putscript("spare", "keep;\r\n") == "OK"
    assert c.listscripts() == ("OK", [("main", False), ("spare", False)])
    assert c.setactive("main") == "OK"
    assert c.getscript("main") == ("OK", SCRIPT.decode())
    assert c.havespace("big", 10_000_000) == "NO"
    assert c.response_code == "QUOTA/MAXSIZE"
    # The client has no method for RENAMESCRIPT (RFC 5804 §2.11): its raw command.
    monkeypatch.setitem(pytest.importorskip("managesieve").commands, b"RENAMESCRIPT", ("AUTH",))
    typ, _ = c._command(b"RENAMESCRIPT", b'"spare"', b'"old"')
    assert typ == "OK"
    assert c.deletescript("main") == "NO"
    assert c.response_code == "ACTIVE"
    assert c.deletescript("old") == "OK"
    assert c.listscripts() == ("OK", [("main", True)])
    assert c.logout() == "OK"
    assert sorted(p.name for p in sieve_dir(srv).iterdir()) == ["main.sieve"]
    # LOGIN, as Pigeonhole offers it (the client sends the password without waiting).
    other = python_client(srv, ca, monkeypatch)
    assert other.authenticate("LOGIN", BOB, PASSWORDS[BOB]) == "OK"
    assert other.listscripts() == ("OK", [])
    assert other.logout() == "OK"


# -- the "done when" -----------------------------------------------------------


def message(sender: str, to: str, subject: str, extra: str = "") -> bytes:
    return (
        f"From: <{sender}>\r\nTo: <{to}>\r\nSubject: {subject}\r\n{extra}"
        f"Message-ID: <{subject.replace(' ', '.')}@e2e>\r\n\r\nbody\r\n"
    ).encode()


LIST_MAIL = message(
    "list@lists.example", "dev@lists.example", "release", "List-Id: <dev.lists.example>\r\n"
)


def send(srv: Server, sender: str, data: bytes) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as smtp:
        smtp.sendmail(sender, [ALICE], data)


def pigeonhole_says(sender: str, data: bytes) -> set[str]:
    """The actions Pigeonhole's sieve-test reports for SCRIPT on C{data} (its "* ..." and
    "+ ..." lines), run as nobody when we are root (Dovecot refuses root)."""
    if SIEVE_TEST is None:
        pytest.skip("sieve-test not installed (Debian package dovecot-sieve)")
    home = Path(tempfile.mkdtemp(prefix="managesieve-e2e-"))  # nobody can reach /tmp/X
    try:
        return _sieve_test(home, sender, data)
    finally:
        shutil.rmtree(home, ignore_errors=True)


def _sieve_test(home: Path, sender: str, data: bytes) -> set[str]:
    assert SIEVE_TEST is not None
    for sub in ("cur", "new", "tmp"):
        (home / "mail" / sub).mkdir(parents=True)
    (home / "dovecot.conf").write_text("protocols =\n")
    (home / "script.sieve").write_bytes(SCRIPT)
    (home / "message.eml").write_bytes(data)
    command = [
        SIEVE_TEST,
        "-c",
        str(home / "dovecot.conf"),
        "-l",
        f"maildir:{home / 'mail'}",
        "-f",
        sender,
        "-a",
        ALICE,
        str(home / "script.sieve"),
        str(home / "message.eml"),
    ]
    if os.geteuid() == 0:
        for path in [home, *home.rglob("*")]:
            os.chown(path, 65534, 65534)
        command = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", *command]
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": str(home), "TZ": "UTC"}
    run = subprocess.run(command, capture_output=True, text=True, env=env, timeout=60)
    assert run.returncode == 0, run.stderr
    return {
        line.strip()
        for line in run.stdout.splitlines()
        if line.strip().startswith(("* ", "+ add IMAP flags"))
    }


def test_done_when_script_from_sieve_connect_files_flags_and_answers(
    tls_server: tuple[Server, Path], tmp_path: Path
) -> None:
    """The issue's "done when": a script uploaded and activated with sieve-connect files list
    mail into Lists.dev (fileinto :create, RFC 5490), flags the boss's mail \\Flagged
    (RFC 5232) and answers with a vacation message exactly once per sender within :days
    (RFC 5230 §4.2) through the outbound queue, never to the list (RFC 5230 §4.5) — the
    actions Pigeonhole's sieve-test reports for the same script and messages."""
    srv, ca = tls_server
    boss = message("boss@corp.example", ALICE, "first")
    assert pigeonhole_says("list@lists.example", LIST_MAIL) == {
        "* store message in folder: Lists.dev"
    }
    assert pigeonhole_says("boss@corp.example", boss) == {
        "* send vacation message:",
        "* store message in folder: INBOX",
        "+ add IMAP flags: \\flagged",
    }
    local = tmp_path / "away.sieve"
    local.write_bytes(SCRIPT)
    up = sieve_connect(srv, ca, "--upload", "--localsieve", str(local), "--remotesieve", "away")
    assert up.returncode == 0, up.stderr
    assert sieve_connect(srv, ca, "--activate", "--remotesieve", "away").returncode == 0

    send(srv, "list@lists.example", LIST_MAIL)
    (listed,) = srv.wait_for_messages(ALICE, 1, folder="Lists.dev")
    assert listed.parent == srv.maildir(ALICE, "Lists.dev") / "new"
    assert ":2," not in listed.name
    for subject in ("first", "second"):
        send(srv, "boss@corp.example", message("boss@corp.example", ALICE, subject))
    paths = srv.wait_for_messages(ALICE, 2)
    assert [(p.parent.name, p.name.split(":2,")[1]) for p in paths] == [("cur", "F"), ("cur", "F")]
    lines = srv.cli("queue", "list").stdout.splitlines()
    assert len(lines) == 1, lines
    assert " from=<> to=boss@corp.example " in lines[0]
    shown = srv.cli("queue", "show", lines[0].split()[0]).stdout
    assert "Subject: Away until Monday" in shown
    assert "Auto-Submitted: auto-replied" in shown
    assert "In-Reply-To: <first@e2e>" in shown


# -- hostile input ------------------------------------------------------------------------


class Raw(LineClient):
    """A line client: STARTTLS (trusting the test CA) and AUTHENTICATE PLAIN by hand."""

    def __init__(self, srv: Server, ca: Path, login: bool = True) -> None:
        super().__init__(
            socket.create_connection(("127.0.0.1", srv.ports["managesieve"]), timeout=30)
        )
        self.until_ok()
        if login:
            self.send(b"STARTTLS\r\n")
            assert self.line() == b'OK "Begin TLS negotiation now"'
            ctx = ssl.create_default_context(cafile=str(ca))
            self.sock = ctx.wrap_socket(self.sock, server_hostname="mail.example.test")
            self.buf = b""
            self.until_ok()
            token = base64.b64encode(f"\0{ALICE}\0{PASSWORDS[ALICE]}".encode())
            self.send(b'AUTHENTICATE "PLAIN" "' + token + b'"\r\n')
            assert self.line() == b'OK "Logged in"'

    def until_ok(self) -> bytes:
        return self.until(lambda line: line.startswith(b"OK"))

    def close(self) -> None:
        self.sock.close()


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_hostile_input_gets_a_clear_no_and_writes_nothing_outside(
    tls_server: tuple[Server, Path],
) -> None:
    """A literal larger than announced, one over the size limit, a 1 MB script, names with
    NUL or '/', a fileinto "../../x": each a clear NO (RFC 5804 §1.3 codes), the session
    goes on, and nothing is written but the one good script in the user's sieve dir."""
    srv, ca = tls_server
    before = tree(srv.data_dir)
    c = Raw(srv, ca)
    c.send(b'PUTSCRIPT "a" {5+}\r\nkeep;;;;\r\n')
    assert c.line() == b'NO "Expected a space after a literal"'
    c.send(b'PUTSCRIPT "big" {300000+}\r\n' + b"#" * 300000 + b"\r\n")
    assert c.line() == b'NO (QUOTA/MAXSIZE) "Script is too large: at most 262144 bytes"'
    mb = b"# filler\r\n" * 104858
    c.send(b'PUTSCRIPT "mb" {%d+}\r\n%s\r\n' % (len(mb), mb))
    assert c.line() == b'NO (QUOTA/MAXSIZE) "Script is too large: at most 262144 bytes"'
    c.send(b'PUTSCRIPT {3+}\r\na\x00b "keep;"\r\n')
    assert c.line() == b'NO "Invalid script name: control character in script name"'
    c.send(b'PUTSCRIPT "../../x" "keep;"\r\n')
    assert c.line() == b"NO \"Invalid script name: script name contains '/' or starts with '.'\""
    c.send(b'PUTSCRIPT "x" "require \\"fileinto\\"; fileinto \\"../../x\\";"\r\n')
    assert c.line() == (
        b"NO \"line 1: fileinto: invalid folder name '../../x': invalid folder name\""
    )
    c.send(b'PUTSCRIPT "good" "keep;"\r\nLOGOUT\r\n')
    assert c.line() == b'OK "Script stored"'
    assert c.line() == b'OK "Logout completed"'
    c.close()
    assert tree(srv.data_dir) - before == {
        "mail/example.test",
        "mail/example.test/alice",
        "mail/example.test/alice/sieve",
        "mail/example.test/alice/sieve/good.sieve",
    }
    assert sorted(p.name for p in sieve_dir(srv).iterdir()) == ["good.sieve"]


def test_a_name_whose_file_name_is_too_long_gets_a_clear_no(
    tls_server: tuple[Server, Path],
) -> None:
    """A script name of at most 256 characters whose file, NAME.sieve, would pass 255 octets
    (250 ASCII letters, or 200 two-octet ones) is refused as a name (RFC 5804 §1.6), not
    "NO (TRYLATER) Internal server error", for PUTSCRIPT and RENAMESCRIPT; nothing written."""
    srv, ca = tls_server
    c = Raw(srv, ca)
    c.send(b'PUTSCRIPT "good" "keep;"\r\n')
    assert c.line() == b'OK "Script stored"'
    before = tree(srv.data_dir)
    refused = b'NO "Invalid script name: script file name longer than 255 octets"'
    for name in (b"n" * 250, "\u00e9".encode() * 200):
        c.send(b'PUTSCRIPT "%s" "keep;"\r\n' % name)
        assert c.line() == refused
        c.send(b'RENAMESCRIPT "good" "%s"\r\n' % name)
        assert c.line() == refused
    c.send(b'PUTSCRIPT "%s" "keep;"\r\nLOGOUT\r\n' % (b"n" * 249))
    assert c.line() == b'OK "Script stored"'
    assert c.line() == b'OK "Logout completed"'
    c.close()
    assert tree(srv.data_dir) - before == {f"mail/example.test/alice/sieve/{'n' * 249}.sieve"}


def test_before_tls_nothing_but_capability_starttls_logout_noop(
    tls_server: tuple[Server, Path],
) -> None:
    """Pigeonhole with ssl=required: no SASL mechanism before TLS, AUTHENTICATE refused with
    ENCRYPT-NEEDED (RFC 5804 §1.3)."""
    srv, ca = tls_server
    c = Raw(srv, ca, login=False)
    c.send(b'AUTHENTICATE "PLAIN" "AGFsaWNlAHg="\r\nNOOP\r\nLOGOUT\r\n')
    assert c.line() == b'NO (ENCRYPT-NEEDED) "STARTTLS first"'
    assert c.line() == b'OK "Done"'
    assert c.line() == b'OK "Logout completed"'
    c.close()


def test_200_sessions_give_back_descriptors_and_slots(tls_server: tuple[Server, Path]) -> None:
    """200 ManageSieve sessions (logged in over STARTTLS and LOGOUT, greeting only and LOGOUT,
    cut with a RST) leave the server's descriptors and connection counts where they were."""
    srv, ca = tls_server
    # Warm up, a login included: what a login opens for good once is not per session.
    warm = Raw(srv, ca, login=True)
    warm.send(b"LOGOUT\r\n")
    assert warm.until_ok() == b'OK "Logout completed"'
    warm.close()
    assert srv.proc is not None
    fds_dir = f"/proc/{srv.proc.pid}/fd"
    if not os.path.isdir(fds_dir):
        pytest.skip("needs /proc to count descriptors")
    start_fds = len(os.listdir(fds_dir))
    start = control.connections(srv.data_dir / "control")
    assert start["managesieve"] == 0
    for i in range(200):
        c = Raw(srv, ca, login=i % 4 == 0)
        if i % 2:
            c.send(b"LOGOUT\r\n")
            assert c.until_ok() == b'OK "Logout completed"'
            c.close()
        else:
            c.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            c.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        now = control.connections(srv.data_dir / "control")
        if len(os.listdir(fds_dir)) <= start_fds + 2 and now == start:
            break
        time.sleep(0.1)
    assert control.connections(srv.data_dir / "control") == start
    # A worker thread may open a handle of its own once (at most the two hashing threads); a
    # leak would be one descriptor per session, 50 to 200 here.
    assert len(os.listdir(fds_dir)) <= start_fds + 2
