"""Issue 5, operations, end to end against the real twistd process: the TLS certificate
reloaded on SIGHUP without dropping connections, and C{twistd -u nobody -g nogroup}
dropping root after binding the ports."""

from __future__ import annotations

import hashlib
import imaplib
import os
import poplib
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import (
    BIN,
    PASSWORDS,
    Server,
    client_tls,
    imap_login,
    make_test_ca,
    running,
    serving_pid,
)

ALICE = "alice@example.test"


def der_of(sock: socket.socket) -> bytes:
    der = sock.getpeercert(binary_form=True)  # type: ignore[attr-defined]
    assert der is not None
    return der


def implicit_tls_cert(port: int) -> bytes:
    """The DER certificate a new implicit-TLS connection to C{port} is given."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
        with client_tls().wrap_socket(raw) as tls:
            return der_of(tls)


def starttls_certs(server: Server) -> dict[str, bytes]:
    """The certificate presented after STARTTLS/STLS on 25, 587, 143 and 110."""
    certs = {}
    for name in ("smtp", "submission"):
        with smtplib.SMTP("127.0.0.1", server.ports[name], timeout=10) as s:
            s.starttls(context=client_tls())
            certs[name] = der_of(s.sock)
    imap = imaplib.IMAP4("127.0.0.1", server.ports["imap"], timeout=10)
    imap.starttls(client_tls())
    certs["imap"] = der_of(imap.sock)
    imap.logout()
    pop = poplib.POP3("127.0.0.1", server.ports["pop3"], timeout=10)
    pop.stls(client_tls())
    certs["pop3"] = der_of(pop.sock)
    pop.quit()
    return certs


def all_certs(server: Server) -> dict[str, bytes]:
    certs = starttls_certs(server)
    for name in ("submissions", "imaps", "pop3s"):
        certs[name] = implicit_tls_cert(server.ports[name])
    return certs


def pem_der(path: Path) -> bytes:
    return ssl.PEM_cert_to_DER_cert(
        path.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )


def install(src_cert: Path, src_key: Path, cert: Path, key: Path) -> None:
    """Replace cert and key the way certbot's deploy hooks do: new files renamed in place."""
    for src, dst in ((src_cert, cert), (src_key, key)):
        tmp = dst.with_suffix(".new")
        shutil.copyfile(src, tmp)
        os.replace(tmp, dst)


def wait_for_log(server: Server, text: str, timeout: float = 10) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        log = server.log.read_text(errors="replace")
        if text in log:
            return log
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in the log:\n{server.log.read_text(errors='replace')}")


@pytest.fixture
def tls_server(tmp_path: Path) -> Iterator[Server]:
    first = tmp_path / "ca1"
    first.mkdir()
    _, cert, key = make_test_ca(first)
    live = tmp_path / "live"
    live.mkdir()
    install(cert, key, live / "fullchain.pem", live / "privkey.pem")
    srv = Server(tmp_path / "srv", tls=(live / "fullchain.pem", live / "privkey.pem"))
    with running(srv):
        yield srv


def test_sighup_reloads_certificate_keeping_open_sessions(
    tls_server: Server, tmp_path: Path
) -> None:
    """SIGHUP reloads the certificate on every TLS listener while an open IMAPS session keeps
    working."""
    server = tls_server
    live = tmp_path / "live"
    old = pem_der(live / "fullchain.pem")
    assert set(all_certs(server).values()) == {old}

    # An open IMAPS session, logged in, across the reload.
    session = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
    session.login(ALICE, PASSWORDS[ALICE])
    assert der_of(session.sock) == old

    second = tmp_path / "ca2"
    second.mkdir()
    _, cert, key = make_test_ca(second)
    install(cert, key, live / "fullchain.pem", live / "privkey.pem")
    new = pem_der(live / "fullchain.pem")
    assert new != old
    assert server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    fp = hashlib.sha256(new).hexdigest()
    wait_for_log(server, "TLS certificate reloaded from")
    assert ":".join(fp[i : i + 2] for i in range(0, len(fp), 2)) in server.log.read_text()

    # Every listener, implicit TLS and STARTTLS alike, presents the new certificate.
    assert all_certs(server) == dict.fromkeys(
        ("smtp", "submission", "imap", "pop3", "submissions", "imaps", "pop3s"), new
    )
    # The open session still works, on its old certificate.
    assert session.noop()[0] == "OK"
    assert session.select("INBOX")[0] == "OK"
    session.logout()
    assert server.proc.poll() is None

    # A broken new pair: logged, the working one kept, the server still up.
    (live / "fullchain.pem").write_text("-----BEGIN CERTIFICATE-----\nnot base64\n")
    os.kill(server.proc.pid, signal.SIGHUP)
    log = wait_for_log(server, "TLS reload failed, keeping the current certificate")
    assert f"cannot load certificate {live / 'fullchain.pem'}" in log
    assert implicit_tls_cert(server.ports["imaps"]) == new
    assert starttls_certs(server)["smtp"] == new
    assert server.proc.poll() is None


def _world_usable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@pytest.mark.skipif(os.geteuid() != 0, reason="twistd -u/-g needs root (run the tests as root)")
def _descendants(pid: int) -> list[int]:
    """C{pid}'s children, their children, and so on (from /proc)."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in _descendants(c)]


def _ids(pid: int) -> dict[str, list[str]]:
    status = Path(f"/proc/{pid}/status").read_text()
    return {line.split(":")[0]: line.split()[1:] for line in status.splitlines()}


def test_twistd_drops_privileges_after_binding() -> None:
    """twistd -u/-g: the server binds its ports as root, then every process (the parent, the
    workers' zygote, each worker, a worker started again after kill -9) runs as nobody, the
    data dir and delivered mail owned by nobody."""
    import pwd

    import twistedmail

    nobody = pwd.getpwnam("nobody")
    package = Path(twistedmail.__file__).parent
    if not (_world_usable(Path(sys.prefix)) and _world_usable(package)):
        pytest.skip(f"user nobody cannot read the venv {sys.prefix} or {package}")
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, nobody cannot enter it.
    root = Path(tempfile.mkdtemp(prefix="twistedmail-privdrop-"))
    root.chmod(0o755)
    server = Server(root)
    try:
        for address, password in PASSWORDS.items():
            server.add_user(address, password)  # as root: the store is root's until start
        server.start(twistd_args=("-u", "nobody", "-g", "nogroup"))
        assert server.proc is not None
        workers = server.worker_pids()
        assert len(workers) == server.workers - 1
        for pid in [server.proc.pid, *_descendants(server.proc.pid)]:
            ids = _ids(pid)
            assert ids["Uid"] == [str(nobody.pw_uid)] * 4, pid
            assert ids["Gid"] == [str(nobody.pw_gid)] * 4, pid
            assert ids["Groups"] == [str(nobody.pw_gid)], pid
        for path in [server.data_dir, *server.data_dir.rglob("*")]:
            st = path.lstat()
            assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path

        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
            s.sendmail("someone@remote.test", [ALICE], b"Subject: as nobody\r\n\r\nhello\r\n")
        [message] = server.wait_for_messages(ALICE, 1)
        assert message.read_bytes().endswith(b"Subject: as nobody\r\n\r\nhello\r\n")
        assert message.stat().st_uid == nobody.pw_uid
        imap = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        imap.login(ALICE, PASSWORDS[ALICE])
        assert imap.select("INBOX") == ("OK", [b"1"])
        # A codec first used after the drop (QA: pyenv's Python under a 0700 /root made
        # every lazily imported codec fail, and this SEARCH silently found nothing).
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=10) as s:
            s.sendmail(
                "someone@remote.test", [ALICE], b"Subject: =?iso-8859-2?Q?J=F3zsef?=\r\n\r\nhi\r\n"
            )
        server.wait_for_messages(ALICE, 2)
        imap.noop()
        imap.literal = "József".encode()
        assert imap.search("UTF-8", "SUBJECT") == ("OK", [b"2"])
        imap.logout()
        # The control socket belongs to the server's user: queue flush reaches it.
        assert (server.data_dir / "control").stat().st_uid == nobody.pw_uid
        assert server.cli("queue", "flush").returncode == 0

        def deliver_through(pids: set[int], count: int) -> int:
            """Mail through each process of C{pids}; returns the INBOX count after."""
            left = set(pids)
            for _ in range(400):
                with smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=30) as s:
                    assert s.sock is not None
                    pid = serving_pid(server, s.sock)
                    if pid in left:
                        body = b"Subject: via %d\r\n\r\nhi\r\n" % pid
                        s.sendmail("someone@remote.test", [ALICE], body)
                        left.discard(pid)
                        count += 1
                if not left:
                    break
            assert not left, f"no connection landed on {sorted(left)}"
            for path in server.wait_for_messages(ALICE, count):
                assert path.stat().st_uid == nobody.pw_uid
            return count

        count = deliver_through({server.proc.pid, *workers}, 2)
        if workers:
            # A worker killed is started again through the zygote: as nobody too.
            os.kill(workers[0], signal.SIGKILL)
            restarted = server.wait_for_workers(exclude=(workers[0],))
            new = next(pid for pid in restarted if pid not in workers)
            ids = _ids(new)
            assert ids["Uid"] == [str(nobody.pw_uid)] * 4
            assert ids["Gid"] == [str(nobody.pw_gid)] * 4
            deliver_through({new}, count)
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_login_block_survives_a_restart(tmp_path: Path) -> None:
    """A login block is saved at stop and still holds after a restart."""
    server = Server(tmp_path)
    server.config.write_text(
        server.config.read_text().replace("[limits]\n", "[limits]\nlogin_block_after = 2\n")
    )
    for address, password in PASSWORDS.items():
        server.add_user(address, password)
    server.start()

    def login(password: str) -> str:
        m = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        try:
            m.login(ALICE, password)
            return "OK"
        except imaplib.IMAP4.error as e:
            return e.args[0].decode() if isinstance(e.args[0], bytes) else str(e.args[0])
        finally:
            m.shutdown()

    blocked = "[UNAVAILABLE] Too many failed logins, try again later"
    try:
        assert login("wrong-1") == "[AUTHENTICATIONFAILED] Authentication failed"
        assert login("wrong-2") == "[AUTHENTICATIONFAILED] Authentication failed"
        assert login(PASSWORDS[ALICE]) == blocked
        server.restart()  # SIGTERM: a clean stop saves the state
        assert (server.data_dir / "throttle.json").stat().st_mode & 0o777 == 0o600
        assert login(PASSWORDS[ALICE]) == blocked
        assert (
            "login throttle state restored: 0 blocked IPs, 1 blocked IP+account pairs,"
            " 0 blocked accounts" in server.log.read_text()
        )
    finally:
        server.stop()


def test_second_server_on_the_same_data_dir_is_one_line(server: Server, tmp_path: Path) -> None:
    """The control socket is bound after the privilege drop (in startService): its lock
    failure is still the one-line error, not a traceback."""
    other = Server(tmp_path / "other")
    text = other.config.read_text()
    other.config.write_text(text.replace(str(other.data_dir), str(server.data_dir)))
    out = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "twistedmail", "--config", str(other.config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=other.root,
    )
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"twistedmail: error: {other.config}: [server] data_dir: cannot listen on"
        f" {server.data_dir / 'control'}: Cannot acquire lock (is another server running on"
        " this data_dir?)"
    ]
    assert server.proc is not None and server.proc.poll() is None


@pytest.mark.skipif(os.geteuid() != 0, reason="twistd -u/-g needs root (run the tests as root)")
def test_workers_serve_tls_with_a_key_only_root_can_read() -> None:
    """twistd -u/-g with a 0600 root-owned TLS key (as Let's Encrypt's privkey.pem): the
    workers, running as nobody, serve TLS with the key their zygote read as root."""
    import twistedmail

    package = Path(twistedmail.__file__).parent
    if not (_world_usable(Path(sys.prefix)) and _world_usable(package)):
        pytest.skip(f"user nobody cannot read the venv {sys.prefix} or {package}")
    root = Path(tempfile.mkdtemp(prefix="twistedmail-rootkey-"))
    root.chmod(0o755)
    live = root / "live"
    live.mkdir(mode=0o700)
    _, cert, key = make_test_ca(live)
    key.chmod(0o600)
    server = Server(root / "srv", tls=(cert, key))
    root.joinpath("srv").chmod(0o755)
    try:
        for address, password in PASSWORDS.items():
            server.add_user(address, password)
        server.start(twistd_args=("-u", "nobody", "-g", "nogroup"))
        assert server.proc is not None
        for pid in [server.proc.pid, *server.worker_pids()]:
            assert imap_login(server, ALICE, PASSWORDS[ALICE], on=pid) == "OK"
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)
