"""DKIM end to end (RFC 6376): a key made with C{twistedmail dkim generate}, a message
submitted on 587 to a remote domain, and the copy the scripted MTA received verifies with
dkimpy against the TXT record that C{twistedmail dns-records} prints."""

from __future__ import annotations

import dkim
import pytest
from e2e_server import Server
from test_e2e_outbound import BODY, World, submit, wait_queue_empty, world_and_server

__all__ = ["world_and_server"]

PLAIN = [{"name": "mx1", "host": "127.0.0.2", "tls": True, "rcpt": {}}]


def published_key(server: Server, domain: str) -> tuple[str, bytes]:
    lines = server.cli("dns-records", domain).stdout.splitlines()
    (record,) = [line for line in lines if "._domainkey." in line]
    name, _, value = record.partition(" IN TXT ")
    return name.rstrip("."), "".join(value.split('" "')).strip('"').encode("ascii")


@pytest.mark.parametrize("world_and_server", [PLAIN], indirect=True)
def test_submitted_mail_is_signed_and_verifies(world_and_server: tuple[World, Server]) -> None:
    world, server = world_and_server
    server.cli("dkim", "generate", "example.test")
    name, value = published_key(server, "example.test")
    submit(server, ["ok@remote.test"])
    ((meta, data),) = world.wait_received("mx1", 1)
    wait_queue_empty(server)
    assert data.startswith(b"DKIM-Signature: ")
    assert data.endswith(BODY)

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes:
        return value if qname.decode().rstrip(".") == name else b""

    assert dkim.verify(data, dnsfunc=dnsfunc)
    assert not dkim.verify(data.replace(b"Hello out", b"Hello OUT"), dnsfunc=dnsfunc)
