"""Inbound authentication with a dead nameserver, end to end: C{[relay] nameservers} points
at a UDP socket the test binds and never answers.  Many SMTP clients at once, each from its
own sender domain (so no cached answer helps), must all get their 250 within one check
budget (L{twistedmail.mailauth.CHECK_TIMEOUT}) with C{temperror} results (RFC 7208 §4.6.4,
RFC 7489 §6.6.3), and Twisted's DNS client must not fill the log.
"""

from __future__ import annotations

import smtplib
import socket
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from e2e_server import Server

from twistedmail.mailauth import CHECK_TIMEOUT

ALICE = "alice@example.test"
CLIENTS = 20  # the per-IP connection limit; 2.5 times the eight check threads once used
# A client waits one budget for the server's reply to the final dot (a dead nameserver
# costs a message the 6 s of its query timeouts; once it cost 12 s per eight messages).
REPLY_WAIT = CHECK_TIMEOUT


def message(domain: str) -> bytes:
    return (
        f"From: Sender <sender@{domain}>\r\nTo: {ALICE}\r\n"
        f"Subject: dead DNS\r\nMessage-ID: <dead-dns@{domain}>\r\n\r\nHello\r\n".encode()
    )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never read, never answered
    silent.bind(("127.0.0.1", 0))
    port = silent.getsockname()[1]
    server = Server(tmp_path_factory.mktemp("dead-dns"), inbound="check_authentication = true\n")
    try:
        server.add_user(ALICE, "alice-password")
        server.config.write_text(
            server.config.read_text() + f'\n[relay]\nnameservers = ["127.0.0.1:{port}"]\n'
        )
        server.start()
        yield server
    finally:
        server.stop()
        silent.close()


def send(port: int, index: int) -> tuple[int, bytes]:
    domain = f"sender{index}.test"
    helo = f"client.{domain}"
    with smtplib.SMTP("127.0.0.1", port, local_hostname=helo, timeout=REPLY_WAIT) as s:
        s.ehlo()
        s.mail(f"bounce@{domain}")
        s.rcpt(ALICE)
        return s.data(message(domain))


def test_concurrent_sessions_all_delivered_with_temperror(server: Server) -> None:
    """A dead nameserver costs each message at most one budget and holds no other session:
    every client gets 250 and the stored copy says temperror (RFC 7208 §4.6.4)."""
    before = len(server.messages(ALICE))
    with ThreadPoolExecutor(CLIENTS) as pool:
        replies = list(pool.map(lambda i: send(server.ports["smtp"], i), range(CLIENTS)))
    assert replies == [(250, b"2.0.0 Message accepted for delivery")] * CLIENTS
    stored = server.wait_for_messages(ALICE, before + CLIENTS)
    assert len(stored) == before + CLIENTS
    for path in stored:
        data = path.read_bytes()
        domain = data.split(b"header.from=", 1)[1].split(b"\r\n", 1)[0]
        assert data.startswith(
            b"Return-Path: <bounce@%s>\r\n"
            b"Delivered-To: alice@example.test\r\n"
            b"Authentication-Results: mail.example.test;\r\n"
            b"\tspf=temperror smtp.mailfrom=%s;\r\n"
            b"\tdkim=none;\r\n"
            b"\tdmarc=temperror header.from=%s\r\n" % (domain, domain, domain)
        ), data


def test_dns_client_chatter_stays_out_of_the_log(server: Server) -> None:
    """Twisted's DNS client logs every UDP port it opens and closes; none of it reaches the
    twistd log (the deliveries above made DNS queries), while our own lines do."""
    assert send(server.ports["smtp"], 999)[0] == 250
    log = server.log.read_text()
    assert "spf=temperror" in log
    for chatter in ("DNSDatagramProtocol starting on", "Stopping protocol", "(UDP Port"):
        assert chatter not in log
