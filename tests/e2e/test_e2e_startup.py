"""Starting the server as a user does: plugin discovery, config errors, first start."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from e2e_server import BIN, Server


def test_twistd_lists_the_plugin() -> None:
    """twistd --help lists the twistedmail plugin."""
    out = subprocess.run(
        [str(BIN / "twistd"), "--help"], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0
    assert any(line.split()[:1] == ["twistedmail"] for line in out.stdout.splitlines()), out.stdout


def test_config_error_is_one_line_and_exit_1(tmp_path: Path) -> None:
    """A config error at start is one line on stderr and exit 1, no traceback."""
    config = tmp_path / "bad.toml"
    config.write_text('[listen]\nsmtp = "nonsense"\n')
    out = subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "twistedmail", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert out.returncode == 1
    err = (out.stderr + out.stdout).strip().splitlines()
    assert err == [f'twistedmail: error: {config}: [listen] smtp: "nonsense" is not "host:port"'], (
        err
    )


def test_first_start_creates_data_dir_and_certificate(tmp_path: Path) -> None:
    """The first start creates the data dir (0700), the account store and a self-signed
    certificate with a 0600 key."""
    server = Server(tmp_path)
    server.start()
    try:
        assert (server.data_dir / "tls" / "cert.pem").exists()
        key = server.data_dir / "tls" / "key.pem"
        assert key.stat().st_mode & 0o777 == 0o600
        assert server.data_dir.stat().st_mode & 0o777 == 0o700
        assert (server.data_dir / "accounts.sqlite3").exists()
    finally:
        server.stop()


def test_config_found_through_environment(tmp_path: Path) -> None:
    """The CLI finds its config through $TWISTEDMAIL_CONFIG."""
    server = Server(tmp_path)
    env = dict(os.environ, TWISTEDMAIL_CONFIG=str(server.config))
    out = subprocess.run(
        [str(BIN / "twistedmail"), "init"], capture_output=True, text=True, timeout=60, env=env
    )
    assert (out.returncode, out.stdout) == (0, f"data dir {server.data_dir} created\n")
    out = subprocess.run(
        [str(BIN / "twistedmail"), "user", "add", "carol@example.test", "--password-stdin"],
        input="pw-carol-1\n",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.returncode == 0, out.stderr
    out = subprocess.run(
        [str(BIN / "twistedmail"), "user", "list"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
    )
    assert out.stdout.splitlines() == ["carol@example.test"]


def _twistd(config: Path, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "twistd"), "-n", "--pidfile=", "twistedmail", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )


def test_port_in_use_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """Regression: another MTA on the port gave a 40-line traceback."""
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    try:
        server = Server(tmp_path)
        text = server.config.read_text()
        text = text.replace(
            f'smtp = "127.0.0.1:{server.ports["smtp"]}"', f'smtp = "127.0.0.1:{port}"'
        )
        server.config.write_text(text)
        out = _twistd(server.config, tmp_path)
    finally:
        busy.close()
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"twistedmail: error: {server.config}: [listen] smtp: "
        f"cannot listen on 127.0.0.1:{port}: Address already in use"
    ]


def test_unreadable_certificate_is_one_line_naming_the_key(tmp_path: Path) -> None:
    """A missing [tls] certificate stops the start with one line naming the file, exit 1."""
    server = Server(tmp_path, tls=(tmp_path / "missing.pem", tmp_path / "missing-key.pem"))
    out = _twistd(server.config, tmp_path)
    assert out.returncode == 1
    assert out.stderr.splitlines() == [
        f"twistedmail: error: {server.config}: [tls] cert/key: "
        f"cannot read {tmp_path / 'missing.pem'}: No such file or directory"
    ]
