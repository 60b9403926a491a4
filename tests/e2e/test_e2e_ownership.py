"""Issue 9: the admin CLI run as root against a server that runs as another user
(C{twistd -u nobody -g nogroup}, daemonized), end to end.  What the CLI creates in the data
dir belongs to the server's user; a DKIM key the server cannot read never fails outbound
mail, and C{check-config} reports it."""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import BIN, PASSWORDS, Server, deliver, imap_client, imap_login
from test_e2e_daemon import rcpt
from test_e2e_outbound import BODY, World, configure, submit, wait_queue_empty

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (twistd -u, chown)")

PLAIN = [{"name": "mx1", "host": "127.0.0.2", "tls": True, "rcpt": {}}]


def _world_usable(path: Path) -> bool:
    return all(p.stat().st_mode & 0o005 == 0o005 for p in [path, *path.parents])


@pytest.fixture
def as_nobody() -> Iterator[tuple[World, Server]]:
    import twistedmail

    package = Path(twistedmail.__file__).parent
    if not (_world_usable(Path(sys.prefix)) and _world_usable(package)):
        pytest.skip(f"user nobody cannot read the venv {sys.prefix} or {package}")
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, nobody cannot enter it.
    root = Path(tempfile.mkdtemp(prefix="twistedmail-owner-"))
    root.chmod(0o755)
    world = World(root, [dict(m) for m in PLAIN])
    server = Server(root / "server")
    try:
        for address, password in PASSWORDS.items():
            server.add_user(address, password)
        # An admin, so check-config has no warning to add to the errors compared below.
        server.cli("alias", "add", "postmaster@example.test", "alice@example.test")
        configure(server, world)
        server.start(twistd_args=("-u", "nobody", "-g", "nogroup"), daemon=True)
        yield world, server
    finally:
        server.stop()
        world.stop()
        shutil.rmtree(root, ignore_errors=True)


def not_owned_by(path: Path, uid: int, gid: int) -> list[str]:
    return [
        str(p.relative_to(path))
        for p in [path, *path.rglob("*")]
        if (p.lstat().st_uid, p.lstat().st_gid) != (uid, gid)
    ]


def test_root_cli_leaves_the_data_dir_to_the_server_user(as_nobody: tuple[World, Server]) -> None:
    """Run as root, user add / passwd, domain add, alias add, quota and dkim generate create
    nothing the server's user does not own (store -wal/-shm and dkim/ included), and the
    running server sees each change and signs with the new key."""
    world, server = as_nobody
    nobody = pwd.getpwnam("nobody")
    ids = (nobody.pw_uid, nobody.pw_gid)
    assert os.stat(server.data_dir)[4:6] == ids  # handed over at start

    server.add_user("carol@example.test", "carol-secret-3")
    server.cli("user", "passwd", "carol@example.test", "--password-stdin", stdin="carol-new-4\n")
    server.cli("user", "quota", "carol@example.test", "1GiB")
    server.cli("domain", "add", "other.test")
    server.cli("alias", "add", "info@other.test", "carol@example.test")
    server.cli("dkim", "generate", "example.test")
    assert not_owned_by(server.data_dir, *ids) == []
    assert (server.data_dir / "dkim").stat().st_mode & 0o777 == 0o700

    assert rcpt(server, "info@other.test") == (250, b"2.1.5 Recipient OK")
    assert imap_login(server, "carol@example.test", "carol-new-4") == "OK"
    submit(server, ["ok@remote.test"])
    ((_, data),) = world.wait_received("mx1", 1)
    wait_queue_empty(server)
    assert data.startswith(b"DKIM-Signature: ")
    assert data.endswith(BODY)
    assert server.cli("check-config").stdout == f"config OK: {server.config}\n"


def test_unreadable_dkim_key_signs_with_the_others(as_nobody: tuple[World, Server]) -> None:
    """A key the server's user cannot read (left by root) does not fail outbound mail: the
    message goes out signed with the readable key, the problem is logged once (per process), and
    check-config names the file and the fix (exit 1)."""
    world, server = as_nobody
    server.cli("dkim", "generate", "example.test")
    server.cli("dkim", "generate", "example.test", "--algorithm", "ed25519")
    ed25519 = server.data_dir / "dkim" / "example.test.twistedmail-ed25519.ed25519"
    os.chown(ed25519, 0, 0)  # what the CLI as root did before
    submit(server, ["ok@remote.test"])
    submit(server, ["ok@remote.test"])
    received = world.wait_received("mx1", 2)
    wait_queue_empty(server)
    for _, data in received:
        assert data.count(b"DKIM-Signature: ") == 1
        assert b"a=rsa-sha256" in b"".join(data.split(b"\r\n\r\n")[0].split())
    log = server.log.read_text()
    # once per process (not per message): [server] workers processes each load the keys
    warned = log.count(f"dkim: cannot read {ed25519}: Permission denied; signing with")
    assert 1 <= warned <= server.workers
    assert "Traceback" not in log

    out = server.cli("check-config", check=False)
    assert (out.returncode, out.stdout) == (1, "")
    nobody = pwd.getpwnam("nobody")
    assert out.stderr == (
        f"twistedmail: error: {ed25519}: DKIM key not readable (Permission denied) by nobody,"
        f" the data dir's owner the server runs as (owner uid 0, mode 600); run: chown -R"
        f" {nobody.pw_uid}:{nobody.pw_gid} {server.data_dir / 'dkim'}\n"
    )


def test_root_without_u_runs_as_the_data_dirs_owner() -> None:
    """Started as root without C{-u} on a data dir a C{-u nobody} start handed to nobody,
    the server binds its ports and runs as the data dir's owner (as the CLI acts as it):
    what it writes (throttle.json, Maildir, index, queue) stays nobody's, a root-owned
    leftover is handed back, and C{twistedmail backup}, which acts as nobody, then
    succeeds (it failed on the files root had left)."""
    import twistedmail

    package = Path(twistedmail.__file__).parent
    if not (_world_usable(Path(sys.prefix)) and _world_usable(package)):
        pytest.skip(f"user nobody cannot read the venv {sys.prefix} or {package}")
    root = Path(tempfile.mkdtemp(prefix="twistedmail-owner-"))
    root.chmod(0o755)
    server = Server(root / "server")
    nobody = pwd.getpwnam("nobody")
    ids = (nobody.pw_uid, nobody.pw_gid)
    try:
        for address, password in PASSWORDS.items():
            server.add_user(address, password)
        server.start(twistd_args=("-u", "nobody", "-g", "nogroup"))
        server.stop()
        assert not_owned_by(server.data_dir, *ids) == []
        (server.data_dir / "leftover").write_bytes(b"root's\n")  # by an older version as root

        server.start()  # as root, no -u
        assert f"running as uid {ids[0]} gid {ids[1]}" in server.log.read_text()
        for pid in [server.pid, *server.worker_pids()]:
            status = Path(f"/proc/{pid}/status").read_text().splitlines()
            uids = next(line.split()[1:] for line in status if line.startswith("Uid:"))
            gids = next(line.split()[1:] for line in status if line.startswith("Gid:"))
            assert (uids, gids) == ([str(ids[0])] * 4, [str(ids[1])] * 4), pid
        deliver(server, "alice@example.test", "hello")
        server.wait_for_messages("alice@example.test", 1)
        c = imap_client(server)
        c.select_folder("INBOX")
        c.logout()
        assert imap_login(server, "bob@example.test", "wrong") != "OK"  # throttle state
        server.stop()
        assert (server.data_dir / "throttle.json").exists()
        assert not_owned_by(server.data_dir, *ids) == []

        backup = root / "backup"
        backup.mkdir()
        os.chown(backup, *ids)
        # as root, the CLI acts as the data dir's owner (its effective user and groups)
        out = server.cli("backup", str(backup), check=False)
        assert (out.returncode, out.stderr) == (0, "")
        assert (backup / "manifest.json").exists()
    finally:
        server.stop()
        shutil.rmtree(root, ignore_errors=True)


def test_root_without_u_on_a_data_dir_of_an_unnamed_uid() -> None:
    """Started as root without C{-u} on a data dir whose owner has no user name (copied from
    another machine, a numeric C{chown}), the start stops with one line saying what to do
    (twistd's switch to that uid needs a name for its groups: a KeyError traceback)."""
    uid = next(n for n in range(4242, 65000) if not _has_name(n))
    # Not under pytest's tmp_path: /tmp/pytest-of-root is 0700, that uid cannot enter it.
    root = Path(tempfile.mkdtemp(prefix="twistedmail-owner-"))
    root.chmod(0o755)
    try:
        server = Server(root)
        server.add_user("alice@example.test", PASSWORDS["alice@example.test"])
        for path in [server.data_dir, *server.data_dir.rglob("*")]:
            os.lchown(path, uid, uid)
        command = ["-n", "--pidfile=", "twistedmail", "--config", str(server.config)]
        out = subprocess.run(
            [str(BIN / "twistd"), *command], capture_output=True, text=True, timeout=120, cwd=root
        )
    finally:
        shutil.rmtree(root, ignore_errors=True)
    assert out.returncode == 1
    assert (out.stderr + out.stdout).strip().splitlines() == [
        f"twistedmail: error: {server.config}: [server] data_dir: {server.data_dir} belongs to"
        f" uid {uid}, which has no user name here (the server, started as root without -u,"
        " would run as it): chown -R it to the server's user, or start with -u USER -g GROUP"
    ]


def _has_name(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def test_u_of_an_unnamed_uid(tmp_path: Path) -> None:
    """C{twistd -u N} of a uid without a user name stops the start with one line (twistd's
    switch, initgroups, needs the name: a KeyError traceback after the ports were bound)."""
    uid = next(n for n in range(4242, 65000) if not _has_name(n))
    server = Server(tmp_path)
    server.add_user("alice@example.test", PASSWORDS["alice@example.test"])
    for given in (["-u", str(uid)], ["-u", str(uid), "-g", str(uid)]):
        command = [*given, "-n", "--pidfile=", "twistedmail", "--config", str(server.config)]
        out = subprocess.run(
            [str(BIN / "twistd"), *command],
            capture_output=True,
            text=True,
            timeout=120,
            cwd=tmp_path,
        )
        assert out.returncode == 1
        assert (out.stderr + out.stdout).strip().splitlines() == [
            f"twistedmail: error: {server.config}: twistd -u {uid}: uid {uid} has no user name"
            " here (twistd needs one to switch to it): create the user, or give -u a user"
            " that exists"
        ]
