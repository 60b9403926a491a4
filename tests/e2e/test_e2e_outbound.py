"""Outbound end to end: submission on 587 -> the durable queue -> MX lookup in a local test
zone (twisted.names on a loopback port) -> scripted receiving servers on 127.0.0.2/.3.

Covers: MX preference with fallback; per-recipient results; 451 then success on retry;
550 -> DSN in the sender's INBOX; null MX; no bounce to <>; kill -9 after 250 and restart
(delivered once); the queue CLI against a running and a stopped server; a smarthost over
STARTTLS and over implicit TLS with AUTH, and one without STARTTLS (deferred, nothing sent).
"""

from __future__ import annotations

import email
import email.policy
import json
import signal
import smtplib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from e2e_server import PASSWORDS, Server, client_tls, free_ports

HERE = Path(__file__).resolve().parent
ALICE = "alice@example.test"
BODY = (
    b"From: Alice <alice@example.test>\r\n"
    b"To: friends\r\n"
    b"Subject: outbound e2e\r\n"
    b"Message-ID: <outbound-1@example.test>\r\n"
    b"\r\n"
    b"Hello out there,\r\n"
    b".leading dot line\r\n"
    b"bye\r\n"
)


class World:
    """remote_world.py in a subprocess: DNS for remote.test and the scripted MTAs."""

    def __init__(
        self,
        root: Path,
        mtas: list[dict[str, Any]],
        zones: list[dict[str, Any]] | None = None,
    ) -> None:
        self.out = root / "world"
        self.dns_port, self.smtp_port = free_ports(2)
        for mta in mtas:
            mta["port"] = self.smtp_port
        config = {
            "dns_port": self.dns_port,
            "zones": zones
            or [
                {
                    "origin": "remote.test",
                    "mx": {
                        "remote.test": [[10, "mx1.remote.test"], [20, "mx2.remote.test"]],
                        "null.remote.test": [[0, "."]],
                    },
                    "a": {
                        "mx1.remote.test": ["127.0.0.2"],
                        "mx2.remote.test": ["127.0.0.3"],
                        "smarthost.remote.test": ["127.0.0.4"],
                    },
                }
            ],
            "mtas": mtas,
            "out": str(self.out),
        }
        path = root / "world.json"
        path.write_text(json.dumps(config))
        self.log = open(root / "world.log", "wb")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "remote_world.py"), str(path)],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 20
        while not (self.out / "ready").exists():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError((root / "world.log").read_text())
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout=10)
        self.log.close()

    def received(self, name: str) -> list[tuple[dict[str, Any], bytes]]:
        found = []
        for meta in sorted(
            self.out.glob(f"{name}-*.json"), key=lambda p: int(p.stem.split("-")[1])
        ):
            found.append((json.loads(meta.read_text()), meta.with_suffix(".eml").read_bytes()))
        return found

    def wait_received(self, name: str, count: int, timeout: float = 20) -> list[Any]:
        deadline = time.monotonic() + timeout
        while len(self.received(name)) < count and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received(name)


def configure(server: Server, world: World, relay: str = "") -> None:
    """Point the server at the world's DNS and MTA port; C{relay}: more [relay] lines."""
    server.config.write_text(
        server.config.read_text()
        + f'\n[relay]\nnameservers = ["127.0.0.1:{world.dns_port}"]\nport = {world.smtp_port}\n'
        + relay
        + '\n[queue]\nfirst_retry = "1s"\nmax_retry = "1s"\n'
    )


@pytest.fixture
def world_and_server(
    request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[tuple[World, Server]]:
    param = request.param if hasattr(request, "param") else []
    mtas, relay = param if isinstance(param, tuple) else (param, None)
    world = World(tmp_path, mtas)
    srv = Server(tmp_path / "server")
    try:
        for address, password in PASSWORDS.items():
            srv.add_user(address, password)
        configure(srv, world, relay(world, srv) if relay else "")
        srv.start()
        yield world, srv
    finally:
        srv.stop()
        world.stop()


def submit(server: Server, recipients: list[str], body: bytes = BODY) -> None:
    with smtplib.SMTP("127.0.0.1", server.ports["submission"], local_hostname="laptop") as s:
        s.starttls(context=client_tls())
        s.login(ALICE, PASSWORDS[ALICE])
        refused = s.sendmail(ALICE, recipients, body)
        assert refused == {}


def dsn_fields(data: bytes) -> tuple[Any, list[dict[str, str]]]:
    msg = email.message_from_bytes(data, policy=email.policy.default)
    parts = list(msg.iter_parts())
    return msg, [dict(p.items()) for p in parts[1].get_payload()]


def wait_queue_empty(server: Server, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not list((server.data_dir / "queue").glob("*.json")):
            return
        time.sleep(0.05)
    raise AssertionError(server.cli("queue", "list").stdout)


MIXED = [
    {"name": "mx2", "host": "127.0.0.3", "tls": True,
     "rcpt": {"gone@remote.test": ["550 5.1.1 No such user here"],
              "busy@remote.test": ["451 4.2.1 Busy, try later", "250 2.1.5 OK"]}},
]  # fmt: skip


@pytest.mark.parametrize("world_and_server", [MIXED], indirect=True)
def test_mx_fallback_mixed_results_retry_and_bounce(world_and_server: tuple[World, Server]) -> None:
    """mx1 (pref 10, 127.0.0.2) is down, mx2 (pref 20) answers: ok@ at once, busy@ after
    a 451 and a retry, gone@ bounced with an RFC 3464 DSN in Alice's INBOX."""
    world, server = world_and_server
    submit(server, ["ok@remote.test", "gone@remote.test", "busy@remote.test"])
    received = world.wait_received("mx2", 2)
    assert [meta["recipients"] for meta, _ in received] == [
        ["ok@remote.test"],
        ["busy@remote.test"],
    ]
    for meta, data in received:
        assert meta["sender"] == ALICE
        assert meta["tls"] is True
        assert meta["helo"] == "mail.example.test"
        assert meta["mail_parameters"].startswith("SIZE=")
        assert data.startswith(b"Received: from laptop (")
        assert data.endswith(b"\r\n" + BODY)
    [bounce] = server.wait_for_messages(ALICE, 1)
    data = bounce.read_bytes()
    assert data.startswith(b"Return-Path: <>\r\nDelivered-To: alice@example.test\r\n")
    msg, fields = dsn_fields(data)
    assert msg["Subject"] == "Undelivered Mail Returned to Sender"
    assert msg.get_content_type() == "multipart/report"
    assert fields[0]["Reporting-MTA"] == "dns; mail.example.test"
    assert {k: v for k, v in fields[1].items() if k != "Last-Attempt-Date"} == {
        "Final-Recipient": "rfc822; gone@remote.test",
        "Action": "failed",
        "Status": "5.1.1",
        "Remote-MTA": "dns; mx2.remote.test",
        "Diagnostic-Code": "smtp; 550 5.1.1 No such user here",
    }
    assert b"Subject: outbound e2e\r\n" in data
    assert b"Hello out there" not in data
    wait_queue_empty(server)
    time.sleep(1.5)
    assert len(world.received("mx2")) == 2  # nothing sent twice
    assert len(server.messages(ALICE)) == 1


@pytest.mark.parametrize(
    "world_and_server",
    [[{"name": "mx1", "host": "127.0.0.2", "rcpt": {"gone@remote.test": ["550 5.1.1 Gone"]}}]],
    indirect=True,
)
def test_null_mx_bounces_and_bounce_is_never_bounced(
    world_and_server: tuple[World, Server],
) -> None:
    """RFC 7505: mail to a null-MX domain bounces with 5.1.10 to the sender, and that bounce is
    never bounced."""
    world, server = world_and_server
    submit(server, ["someone@null.remote.test"])
    [bounce] = server.wait_for_messages(ALICE, 1)
    _, fields = dsn_fields(bounce.read_bytes())
    assert fields[1]["Status"] == "5.1.10"
    assert fields[1]["Action"] == "failed"
    assert fields[1]["Diagnostic-Code"].startswith(
        "X-twistedmail; 556 5.1.10 Domain null.remote.test"
    )
    wait_queue_empty(server)
    # A bounce arriving on port 25 for an alias forwarding to a 550 address: not bounced.
    server.cli("alias", "add", "fwd@example.test", "gone@remote.test")
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="mx.elsewhere.test") as s:
        s.sendmail("", ["fwd@example.test"], b"Subject: bounce\r\n\r\nreturned\r\n")
    wait_queue_empty(server)
    time.sleep(0.5)
    assert len(server.messages(ALICE)) == 1
    assert "not reporting failed for a message from <>" in server.log.read_text()


@pytest.mark.parametrize(
    "world_and_server",
    [[{"name": "mx1", "host": "127.0.0.2",
       "rcpt": {"later@remote.test": ["451 4.7.1 Greylisted"] * 3 + ["250 2.1.5 OK"]}}]],
    indirect=True,
)  # fmt: skip
def test_kill_after_250_restart_delivers_once_and_queue_cli(
    world_and_server: tuple[World, Server],
) -> None:
    """A queued message survives kill -9 after the 250, is listed by 'queue list', and is
    delivered once after the restart."""
    world, server = world_and_server
    submit(server, ["later@remote.test"])
    server.stop(signal.SIGKILL)
    listed = server.cli("queue", "list").stdout.splitlines()
    assert len(listed) == 1
    queue_id = listed[0].split()[0]
    assert f"from=<{ALICE}> to=later@remote.test" in listed[0]
    shown = server.cli("queue", "show", queue_id).stdout
    assert "to: <later@remote.test> pending" in shown
    assert "Subject: outbound e2e" in shown
    flush = server.cli("queue", "flush", check=False)
    assert (flush.returncode, flush.stdout, flush.stderr) == (
        1,
        "",
        "twistedmail: error: no running server\n",
    )
    server.start()
    assert server.cli("queue", "flush").stdout.startswith("flushed: ")
    received = world.wait_received("mx1", 1)
    assert [meta["recipients"] for meta, _ in received] == [["later@remote.test"]]
    wait_queue_empty(server)
    time.sleep(1.5)
    assert len(world.received("mx1")) == 1
    assert server.messages(ALICE) == []


@pytest.mark.parametrize(
    "world_and_server",
    [[{"name": "mx1", "host": "127.0.0.2", "answer_quit": False}]],
    indirect=True,
)
def test_250_recorded_before_quit_so_kill_9_then_restart_sends_nothing_twice(
    world_and_server: tuple[World, Server],
) -> None:
    """The remote answers 250 to the final dot but never to QUIT: the queue records the 250
    at once (the entry is gone while the session is still open), so a kill -9 at that
    moment and a restart send nothing again; the graceful stop does not hang on it."""
    world, server = world_and_server
    submit(server, ["once@remote.test"])
    assert len(world.wait_received("mx1", 1)) == 1
    wait_queue_empty(server, timeout=10)  # QUIT still unanswered: the 250 is on disk
    server.stop(signal.SIGKILL)
    server.start()
    time.sleep(1.5)
    assert len(world.received("mx1")) == 1
    submit(server, ["twice@remote.test"])
    assert len(world.wait_received("mx1", 2)) == 2
    wait_queue_empty(server, timeout=10)
    server.stop()  # SIGTERM with a session open: it is cut, the process exits by itself
    parent = [  # the parent's own line: it was not SIGKILLed (a worker logs one too)
        line
        for line in server.log.read_text().splitlines()
        if line.endswith("Main loop terminated.") and " worker=" not in line
    ]
    assert len(parent) == 1


@pytest.mark.parametrize(
    "world_and_server",
    [[{"name": "mx1", "host": "127.0.0.2", "rcpt": {"stuck@remote.test": ["451 4.3.0 No"]}}]],
    indirect=True,
)
def test_queue_delete(world_and_server: tuple[World, Server]) -> None:
    """'queue delete' removes a message stuck in the queue after a 451."""
    world, server = world_and_server
    submit(server, ["stuck@remote.test"])
    time.sleep(1.5)
    [line] = server.cli("queue", "list").stdout.splitlines()
    queue_id = line.split()[0]
    assert "error=451 4.3.0 No" in line
    assert server.cli("queue", "delete", queue_id).stdout == f"deleted {queue_id}\n"
    assert server.cli("queue", "list").stdout == ""
    missing = server.cli("queue", "show", queue_id, check=False)
    assert (missing.returncode, missing.stderr) == (
        1,
        f"twistedmail: error: no queued message {queue_id}\n",
    )
    time.sleep(1.5)
    assert server.cli("queue", "list").stdout == ""
    assert world.received("mx1") == []


RELAY_USER, RELAY_PASSWORD = "relay@example.test", "relay pass wörd"


def smarthost_relay(tls_mode: str) -> Any:
    """The [relay] lines for the world's smarthost: its test CA, AUTH from a 0600 file."""

    def relay(world: World, server: Server) -> str:
        secret = server.root / "smarthost.secret"
        secret.write_text(RELAY_PASSWORD + "\n", encoding="utf-8")
        secret.chmod(0o600)
        port = world.smtp_port
        return (
            f'smarthost = "smarthost.remote.test:{port}"\nsmarthost_tls = "{tls_mode}"\n'
            f'smarthost_ca = "{world.out / "ca" / "ca.pem"}"\n'
            f'smarthost_username = "{RELAY_USER}"\nsmarthost_password_file = "{secret}"\n'
        )

    return relay


def smarthost_mta(**spec: Any) -> list[dict[str, Any]]:
    return [
        {"name": "smart", "host": "127.0.0.4", "accounts": {RELAY_USER: RELAY_PASSWORD}, **spec}
    ]


@pytest.mark.parametrize(
    "world_and_server",
    [
        (smarthost_mta(tls="ca"), smarthost_relay("starttls")),
        (smarthost_mta(implicit_tls=True), smarthost_relay("implicit")),
    ],
    ids=["starttls", "implicit"],
    indirect=True,
)
def test_smarthost_with_tls_and_auth(world_and_server: tuple[World, Server]) -> None:
    """Everything goes to the smarthost (no MX lookup for the recipients' domains), in one
    transaction, over verified TLS, after AUTH with the configured credentials; the bytes
    arrive intact."""
    world, server = world_and_server
    submit(server, ["someone@elsewhere.test", "other@another.test"])
    [(meta, data)] = world.wait_received("smart", 1)
    assert meta["auth"] == ["PLAIN", RELAY_USER, RELAY_PASSWORD]
    assert meta["tls"] is True
    assert meta["sender"] == ALICE
    assert meta["recipients"] == ["someone@elsewhere.test", "other@another.test"]  # one session
    assert data.startswith(b"Received: from laptop (")
    assert data.endswith(b"\r\n" + BODY)
    wait_queue_empty(server)
    commands = (world.out / "smart.commands").read_bytes().splitlines()
    tls_first = [b"EHLO mail.example.test", b"STARTTLS", b"EHLO mail.example.test"]
    if "implicit" in server.config.read_text():
        tls_first = [b"EHLO mail.example.test"]
    assert commands[: len(tls_first)] == tls_first
    assert commands[len(tls_first)].startswith(b"AUTH PLAIN ")


@pytest.mark.parametrize(
    "world_and_server",
    [(smarthost_mta(), smarthost_relay("starttls"))],
    indirect=True,
)
def test_smarthost_without_starttls_is_deferred_nothing_sent(
    world_and_server: tuple[World, Server],
) -> None:
    """A smarthost that does not offer STARTTLS gets no password and no mail: the message
    stays queued with the reason in queue list."""
    world, server = world_and_server
    submit(server, ["someone@elsewhere.test"])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        listed = server.cli("queue", "list").stdout
        if "STARTTLS not offered" in listed:
            break
        time.sleep(0.1)
    [line] = listed.splitlines()
    assert "to=someone@elsewhere.test" in line
    assert "error=451 4.7.0 smarthost.remote.test[127.0.0.4] said: 451 4.7.0 STARTTLS not" in line
    commands = (world.out / "smart.commands").read_bytes().splitlines()
    assert commands[0] == b"EHLO mail.example.test"
    assert not [c for c in commands if c.startswith((b"AUTH", b"MAIL", b"RCPT", b"DATA"))]
    assert world.received("smart") == []
