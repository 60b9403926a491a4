"""Forwarding through an alias to an outside address, end to end against the real twistd
and a scripted remote MX (issue 14): the copy leaves with an SRS0 envelope sender in the
alias's domain and an ARC set that dkimpy verifies; a bounce to the SRS address goes on to
the original sender; forged and expired SRS addresses are refused at RCPT."""

from __future__ import annotations

import re
import smtplib
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dkim
import pytest
import srslib
from e2e_server import Server
from test_e2e_outbound import World, configure, wait_queue_empty

from twistedmail.dkim import KeyStore
from twistedmail.srs import arc_seal

FWD = "fwd@example.test"
ORIGINAL = "bob@remote.test"
MESSAGE = (
    b"From: Bob <bob@remote.test>\r\n"
    b"To: <fwd@example.test>\r\n"
    b"Subject: forwarded\r\n"
    b"Message-ID: <fwd-1@remote.test>\r\n"
    b"\r\n"
    b"Passed along.\r\n"
)
MX1 = [{"name": "mx1", "host": "127.0.0.2", "tls": True}]


REMOTE_ZONE = {
    "origin": "remote.test",
    "mx": {"remote.test": [[10, "mx1.remote.test"]]},
    "a": {"mx1.remote.test": ["127.0.0.2"]},
}


def start(root: Path, zones: list[dict[str, Any]] | None = None) -> tuple[World, Server]:
    """The scripted remote world and a server with SPF/DKIM/DMARC checks on (our
    Authentication-Results feed the ARC set), the alias fwd@ -> friend@remote.test and a
    DKIM key for example.test."""
    world = World(root, [dict(m) for m in MX1], zones)
    server = Server(root / "server", inbound="check_authentication = true\n")
    server.add_user("alice@example.test", "alice-secret-1")
    server.cli("alias", "add", FWD, "friend@remote.test")
    server.cli("dkim", "generate", "example.test")
    configure(server, world)
    try:
        server.start()
    except BaseException:
        world.stop()
        raise
    return world, server


@pytest.fixture
def forwarding(tmp_path: Path) -> Iterator[tuple[World, Server]]:
    world, server = start(tmp_path)
    try:
        yield world, server
    finally:
        server.stop()
        world.stop()


def secret(server: Server) -> bytes:
    return (server.data_dir / "srs.secret").read_bytes().strip()


def dns_txt(server: Server, more: dict[str, str] | None = None) -> Any:
    """A dkimpy dnsfunc answering the DKIM key records of the server's keys (and C{more})."""
    keys = KeyStore(server.data_dir / "dkim")
    records = dict(keys.txt_record(k) for k in keys.signing_keys("example.test"))
    records.update(more or {})

    def lookup(name: bytes, timeout: int = 5) -> bytes | None:
        value = records.get(name.decode().rstrip("."))
        return value.encode() if value else None

    return lookup


def forward_one(world: World, server: Server) -> tuple[dict[str, Any], bytes]:
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="mx.remote.test") as s:
        assert s.sendmail(ORIGINAL, [FWD], MESSAGE) == {}
    [(meta, data)] = world.wait_received("mx1", 1)
    wait_queue_empty(server)
    return meta, data


def test_forwarded_with_srs_sender_and_arc_seal(forwarding: tuple[World, Server]) -> None:
    """The forwarded copy's MAIL FROM is SRS0 in the alias's domain and reverses to the
    original sender under our secret (0600); its ARC set (RFC 8617 §4.1) is instance 1,
    cv=none, d=example.test, carries our Authentication-Results, and verifies."""
    world, server = forwarding
    meta, data = forward_one(world, server)
    assert meta["recipients"] == ["friend@remote.test"]
    sender = meta["sender"]
    assert re.fullmatch(r"srs0=[a-z0-9+/]{4}=[a-z2-7]{2}=remote\.test=bob@example\.test", sender)
    assert srslib.SRS(secret(server)).reverse(sender) == ORIGINAL
    assert stat.S_IMODE((server.data_dir / "srs.secret").stat().st_mode) == 0o600
    assert data.startswith(b"ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.test;")
    assert b"ARC-Authentication-Results: i=1; mail.example.test;" in data
    assert data.endswith(MESSAGE)
    cv, results, reason = dkim.arc_verify(data, dnsfunc=dns_txt(server))
    assert (cv, reason) == (b"pass", "success")
    assert [r["instance"] for r in results] == [1]


def test_bounce_to_srs_address_goes_to_original_sender(
    forwarding: tuple[World, Server],
) -> None:
    """A bounce (from <>) to the SRS address is accepted and sent on to the original
    sender, with the null reverse-path kept (RFC 5321 §4.5.5)."""
    world, server = forwarding
    meta, _ = forward_one(world, server)
    bounce = b"From: MAILER-DAEMON@remote.test\r\nSubject: Undelivered\r\n\r\nreturned\r\n"
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="mx.remote.test") as s:
        s.ehlo()
        s.mail("")
        assert s.rcpt(meta["sender"]) == (250, b"2.1.5 Recipient OK")
        assert s.data(bounce)[0] == 250
    received = world.wait_received("mx1", 2)
    assert len(received) == 2
    back, data = received[1]
    assert (back["sender"], back["recipients"]) == ("", [ORIGINAL])
    assert data.endswith(bounce)


def test_forged_and_expired_srs_addresses_refused_at_rcpt(
    forwarding: tuple[World, Server],
) -> None:
    """An SRS address with a wrong hash, or older than 21 days, is refused with
    550 5.1.1 at RCPT (as Postfix with postsrsd refuses one it cannot reverse)."""
    world, server = forwarding
    meta, _ = forward_one(world, server)
    good = meta["sender"]
    forged = good[:5] + ("aaaa" if good[5:9] != "aaaa" else "bbbb") + good[9:]
    srs = srslib.SRS(secret(server))
    old = srs.generate_ts(time.time() - 30 * 86400)
    expired = "SRS0={}={}=remote.test=bob@example.test".format(
        srs.generate_hash(old + "remote.test" + "bob", secret(server), 4), old
    )
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="mx.remote.test") as s:
        s.ehlo()
        s.mail("")
        for address in (forged, expired, "SRS0=junk@example.test"):
            assert s.rcpt(address) == (550, b"5.1.1 Invalid or expired SRS address"), address
        assert s.rcpt(good) == (250, b"2.1.5 Recipient OK")
    text = server.log.read_text()
    assert f"rcpt <{forged}> refused: Invalid hash in SRS address" in text
    assert "refused: Invalid timestamp in SRS address" in text


def test_arriving_arc_chain_is_validated_and_extended(tmp_path: Path) -> None:
    """A message sealed by an earlier forwarder (hop1.test, its key in the test DNS) gets
    arc=pass in our Authentication-Results (RFC 8617 §5.2) and leaves with our set as
    instance 2, cv=pass; the whole chain verifies."""
    hop1 = KeyStore(tmp_path / "hop1")
    hop1.generate("hop1.test")
    name, value = hop1.txt_record(hop1.signing_keys("hop1.test")[0])
    zones = [REMOTE_ZONE, {"origin": "hop1.test", "txt": {name: [value]}}]
    arrived = arc_seal(
        b"Authentication-Results: mx.hop1.test; spf=pass smtp.mailfrom=remote.test\r\n" + MESSAGE,
        hop1,
        "hop1.test",
        "mx.hop1.test",
    )
    assert arrived.startswith(b"ARC-Seal: i=1; cv=none;")
    (tmp_path / "run").mkdir()
    world, server = start(tmp_path / "run", zones)
    try:
        with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="mx.hop1.test") as s:
            assert s.sendmail(ORIGINAL, [FWD], arrived) == {}
        [(meta, data)] = world.wait_received("mx1", 1)
    finally:
        server.stop()
        world.stop()
    assert meta["sender"].startswith("srs0=")
    assert data.startswith(b"ARC-Seal: i=2; cv=pass; a=rsa-sha256; d=example.test;")
    assert b"\tarc=pass\r\n" in data
    assert data.endswith(arrived)
    cv, chain, reason = dkim.arc_verify(data, dnsfunc=dns_txt(server, {name: value}))
    assert (cv, reason, [r["instance"] for r in chain]) == (b"pass", "success", [2, 1])
