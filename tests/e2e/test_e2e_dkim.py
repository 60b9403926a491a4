"""DKIM end to end (RFC 6376, RFC 8463): keys made with C{twistedmail dkim generate} (RSA and
Ed25519), a message submitted on 587 to a remote domain, and both signatures of the copy the
scripted MTA received verify with dkimpy against the TXT records C{twistedmail dns-records}
prints."""

from __future__ import annotations

import dkim
import pytest
from e2e_server import Server
from test_e2e_outbound import BODY, World, submit, wait_queue_empty, world_and_server

__all__ = ["world_and_server"]

PLAIN = [{"name": "mx1", "host": "127.0.0.2", "tls": True, "rcpt": {}}]


def published_keys(server: Server, domain: str) -> dict[str, bytes]:
    lines = server.cli("dns-records", domain).stdout.splitlines()
    records = {}
    for record in [line for line in lines if "._domainkey." in line]:
        name, _, value = record.partition(" IN TXT ")
        records[name.rstrip(".")] = "".join(value.split('" "')).strip('"').encode("ascii")
    return records


@pytest.mark.parametrize("world_and_server", [PLAIN], indirect=True)
def test_submitted_mail_is_signed_and_verifies(world_and_server: tuple[World, Server]) -> None:
    """Submitted mail is DKIM-signed with the RSA and ed25519 keys made by the CLI, and both
    signatures verify against the published records."""
    world, server = world_and_server
    server.cli("dkim", "generate", "example.test")
    server.cli("dkim", "generate", "example.test", "--algorithm", "ed25519")
    records = published_keys(server, "example.test")
    assert sorted(records) == [
        "twistedmail-ed25519._domainkey.example.test",
        "twistedmail._domainkey.example.test",
    ]
    submit(server, ["ok@remote.test"])
    ((meta, data),) = world.wait_received("mx1", 1)
    wait_queue_empty(server)
    assert data.startswith(b"DKIM-Signature: ")
    assert data.endswith(BODY)

    def dnsfunc(qname: bytes, timeout: int = 5) -> bytes:
        return records.get(qname.decode().rstrip("."), b"")

    def verifies(message: bytes, idx: int) -> bool:
        try:
            return bool(dkim.DKIM(message).verify(idx=idx, dnsfunc=dnsfunc))
        except dkim.DKIMException:
            return False

    signatures = [v for k, v in dkim.rfc822_parse(data)[0] if k == b"DKIM-Signature"]
    assert [b"a=ed25519-sha256" in b"".join(v.split()) for v in signatures] == [False, True]
    tampered = data.replace(b"Hello out", b"Hello OUT")
    for idx in (0, 1):  # rsa-sha256, then ed25519-sha256
        assert verifies(data, idx)
        assert not verifies(tampered, idx)
