"""The internet, for outbound end-to-end tests: an authoritative DNS server for test zones
and scripted receiving SMTP servers, in one process on loopback addresses.

Run as ``python remote_world.py CONFIG.json``.  The config::

    {"dns_port": 5353,
     "zones": [{"origin": "remote.test", "mx": {"remote.test": [[10, "mx1.remote.test"]]},
                "a": {"mx1.remote.test": ["127.0.0.2"]}}],
     "mtas": [{"name": "mx1", "host": "127.0.0.2", "port": 2525, "tls": true,
               "rcpt": {"gone@remote.test": ["550 5.1.1 No such user"]}}],
     "out": "/path/to/dir"}

An MTA may also have ``"tls": "ca"`` (STARTTLS with a certificate for
smarthost.remote.test signed by the test CA ``out/ca/ca.pem``), ``"implicit_tls": true``
(TLS from the first byte, with that certificate) and ``"accounts": {"user": "password"}``
(AUTH PLAIN LOGIN after TLS): a smarthost; ``"answer_quit": false`` leaves QUIT
unanswered and the connection open.

Each transaction an MTA answers with 250 is written to ``out/<name>-<n>.json`` (helo,
sender, recipients, tls, auth) and ``out/<name>-<n>.eml`` (the exact data); every command
line it receives is appended to ``out/<name>.commands``; ``out/ready`` appears once
everything listens.  Stop it with SIGTERM.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.names import dns, server
from twisted.protocols.tls import TLSMemoryBIOFactory

from twistedmail import tls
from twistedmail.testing import ScriptedMTA, TestZone, Transaction, create_test_ca

SMARTHOST = "smarthost.remote.test"


def main(config_path: str) -> None:
    config: dict[str, Any] = json.loads(Path(config_path).read_text())
    out = Path(config["out"])
    out.mkdir(parents=True, exist_ok=True)
    zones = [
        TestZone(
            z["origin"],
            mx={k: [tuple(x) for x in v] for k, v in z.get("mx", {}).items()},
            a=z.get("a", {}),
            aaaa=z.get("aaaa", {}),
            txt=z.get("txt", {}),
        )
        for z in config["zones"]
    ]
    factory = server.DNSServerFactory(authorities=zones)
    reactor.listenUDP(config["dns_port"], dns.DNSDatagramProtocol(factory), interface="127.0.0.1")
    reactor.listenTCP(config["dns_port"], factory, interface="127.0.0.1")

    cert, key = out / "mta-cert.pem", out / "mta-key.pem"
    tls.create_self_signed(cert, key, "mx.remote.test")
    context = tls.server_context(cert, key)
    _, ca_cert, ca_key = create_test_ca(out / "ca", SMARTHOST)
    ca_context = tls.server_context(ca_cert, ca_key)
    for spec in config["mtas"]:
        counter = [0]

        def record(t: Transaction, name: str = spec["name"], counter: list[int] = counter) -> None:
            counter[0] += 1
            base = out / f"{name}-{counter[0]}"
            base.with_suffix(".eml").write_bytes(t.data)
            meta = {
                "helo": t.helo,
                "sender": t.sender,
                "recipients": list(t.recipients),
                "tls": t.tls,
                "mail_parameters": t.mail_parameters,
                "auth": list(t.auth) if t.auth else None,
            }
            base.with_suffix(".json").write_text(json.dumps(meta))

        def command(line: bytes, path: Path = out / f"{spec['name']}.commands") -> None:
            with path.open("ab") as f:
                f.write(line + b"\n")

        mta = ScriptedMTA(
            rcpt=spec.get("rcpt", {}),
            data_replies=spec.get("data_replies", ["250 2.0.0 Queued"]),
            tls={True: context, "ca": ca_context}.get(spec.get("tls", False)),
            implicit_tls=spec.get("implicit_tls", False),
            accounts=spec.get("accounts"),
            answer_quit=spec.get("answer_quit", True),
            on_transaction=record,
            on_command=command,
        )
        factory = TLSMemoryBIOFactory(ca_context, False, mta) if mta.implicit_tls else mta
        reactor.listenTCP(spec["port"], factory, interface=spec.get("host", "127.0.0.1"))
    (out / "ready").write_text("ok")
    reactor.run()


if __name__ == "__main__":
    main(sys.argv[1])
