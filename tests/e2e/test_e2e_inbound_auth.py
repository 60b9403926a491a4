"""Inbound authentication end to end: the real server with C{[relay] nameservers} on a local
twisted.names server (remote_world.py) serving SPF, DKIM and DMARC records; mail sent to
port 25 with smtplib from 127.0.0.1.

good.test authorizes 127.0.0.1 (SPF), publishes the DKIM key the test signs with and
C{p=reject}; bad.test authorizes only 192.0.2.1 and publishes C{p=reject}.  The server runs
with C{[inbound] dmarc_reject = true}.
"""

from __future__ import annotations

import smtplib
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server
from test_e2e_outbound import World

from twistedmail.dkim import KeyStore

ALICE = "alice@example.test"


def message(domain: str) -> bytes:
    return (
        f"From: Sender <sender@{domain}>\r\n"
        f"To: {ALICE}\r\n"
        "Subject: inbound authentication\r\n"
        f"Message-ID: <auth-1@{domain}>\r\n"
        "\r\n"
        "Hello Alice,\r\n"
        ".a dot-stuffed line\r\n".encode()
    )


def new_message(server: Server, before: list[Path]) -> bytes:
    """The one message stored since C{before} (file names do not sort by arrival)."""
    (new,) = set(server.wait_for_messages(ALICE, len(before) + 1)) - set(before)
    return new.read_bytes()


@pytest.fixture(scope="module")
def world_and_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[KeyStore, Server]]:
    root = tmp_path_factory.mktemp("inbound-auth")
    keys = KeyStore(root / "signer")
    key = keys.generate("good.test", "sel")
    name, value = keys.txt_record(key)
    zones = [
        {
            "origin": "good.test",
            "txt": {
                "good.test": ["v=spf1 ip4:127.0.0.1 -all"],
                "client.good.test": ["v=spf1 ip4:127.0.0.1 -all"],
                name: [value],
                "_dmarc.good.test": ["v=DMARC1; p=reject"],
            },
        },
        {
            "origin": "bad.test",
            "txt": {
                "bad.test": ["v=spf1 ip4:192.0.2.1 -all"],
                "_dmarc.bad.test": ["v=DMARC1; p=reject"],
            },
        },
    ]
    world = World(root, [], zones)
    server = Server(root / "server", inbound="check_authentication = true\ndmarc_reject = true\n")
    try:
        for address, password in PASSWORDS.items():
            server.add_user(address, password)
        server.config.write_text(
            server.config.read_text() + f'\n[relay]\nnameservers = ["127.0.0.1:{world.dns_port}"]\n'
        )
        server.start()
        yield keys, server
    finally:
        server.stop()
        world.stop()


def test_authentication_results_in_the_stored_copy(
    world_and_server: tuple[KeyStore, Server],
) -> None:
    """RFC 8601 §5: the stored copy has our Authentication-Results (DKIM pass) and forged ones
    for our host removed."""
    keys, server = world_and_server
    before = server.messages(ALICE)
    signed = keys.sign(message("good.test"))
    assert signed.startswith(b"DKIM-Signature: ")
    forged = (
        b"Authentication-Results: MAIL.example.test; dmarc=pass header.from=good.test\r\n"
        b"Authentication-Results: mx.elsewhere.test; spf=fail\r\n"
    )
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="client.good.test") as s:
        assert s.sendmail("bounce@good.test", [ALICE], forged + signed) == {}
    data = new_message(server, before)
    return_path, _, rest = data.partition(b"\r\n")
    assert return_path == b"Return-Path: <bounce@good.test>"
    delivered_to, _, rest = rest.partition(b"\r\n")
    assert delivered_to == b"Delivered-To: alice@example.test"
    header = (
        b"Authentication-Results: mail.example.test;\r\n"
        b"\tspf=pass smtp.mailfrom=good.test;\r\n"
        b"\tdkim=pass header.d=good.test header.s=sel;\r\n"
        b"\tdmarc=pass (p=reject sp=reject) header.from=good.test\r\n"
    )
    assert rest.startswith(header + b"Received: from client.good.test ([127.0.0.1])\r\n"), rest
    # The forged result claiming our name is gone; another host's result stays, above the
    # message as sent (smtplib dot-stuffed the body, the server stored it unstuffed).
    received_end = rest.index(b"\r\nAuthentication-Results: mx.elsewhere.test")
    assert (
        rest[received_end + 2 :]
        == b"Authentication-Results: mx.elsewhere.test; spf=fail\r\n" + signed
    )
    assert b"MAIL.example.test" not in data


def test_dmarc_reject_refuses_and_stores_nothing(
    world_and_server: tuple[KeyStore, Server],
) -> None:
    """dmarc_reject: a message failing DMARC under p=reject is refused at DATA with 550 and not
    stored."""
    _, server = world_and_server
    before = server.messages(ALICE)
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="client.bad.test") as s:
        with pytest.raises(smtplib.SMTPDataError) as e:
            s.sendmail("someone@bad.test", [ALICE], message("bad.test"))
        assert (e.value.smtp_code, e.value.smtp_error) == (
            550,
            b"5.7.1 Rejected by the sender domain's DMARC policy",
        )
        # The session goes on: the next message (SPF and DMARC pass) is accepted.
        assert s.sendmail("x@good.test", [ALICE], message("good.test")) == {}
    data = new_message(server, before)  # exactly one: the refused message was not stored
    assert b"\tdmarc=pass (p=reject sp=reject) header.from=good.test\r\n" in data


def test_null_sender_is_checked_by_its_helo(world_and_server: tuple[KeyStore, Server]) -> None:
    """RFC 7208 §2.4: for MAIL FROM:<> the HELO identity is what SPF checks."""
    _, server = world_and_server
    before = server.messages(ALICE)
    with smtplib.SMTP("127.0.0.1", server.ports["smtp"], local_hostname="client.good.test") as s:
        assert s.sendmail("<>", [ALICE], message("good.test")) == {}
    data = new_message(server, before)
    assert data.startswith(
        b"Return-Path: <>\r\n"
        b"Delivered-To: alice@example.test\r\n"
        b"Authentication-Results: mail.example.test;\r\n"
        b"\tspf=pass smtp.helo=client.good.test;\r\n"
        b"\tdkim=none;\r\n"
        b"\tdmarc=pass (p=reject sp=reject) header.from=good.test\r\n"
        b"Received: "
    ), data
