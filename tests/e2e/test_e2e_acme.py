"""Automatic certificates end to end (RFC 8555, HTTP-01 §8.3): the real twistd with
C{[tls] acme = true} against Pebble, the ACME test server Let's Encrypt publishes (Debian
package pebble), started here on loopback.

Pebble really validates: it resolves the names through a twisted.names server of ours
(remote_world.py, every name -> 127.0.0.1) and fetches
C{http://NAME:PORT/.well-known/acme-challenge/TOKEN} from our HTTP listener.  Its ACME
directory is served over HTTPS with a certificate of a throw-away test CA, which the
server trusts through C{[tls] acme_ca}.  Pebble issues certificates valid
L{VALIDITY_DAYS} days (fewer than the 30 of the renewal threshold), so a restart shows a
renewal that is hot-reloaded into the running listeners; with Pebble gone the renewal
fails, is logged, and the old certificate stays in use.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import smtplib
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from e2e_server import Server, free_ports

from twistedmail.testing import create_test_ca

HERE = Path(__file__).parent
PEBBLE = shutil.which("pebble")
VALIDITY_DAYS = 10
NAMES = {
    "mail.example.test",
    "autoconfig.example.test",
    "autodiscover.example.test",
    "mta-sts.example.test",
}
"""What the certificate names: the server listens on https, so autodiscover. is there too."""

pytestmark = pytest.mark.skipif(PEBBLE is None, reason="pebble is not installed (apt pebble)")


class Pebble:
    """Pebble and its DNS server (remote_world.py), as subprocesses."""

    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        self.port, self.management, self.dns_port, self.tls_port = free_ports(4)
        self.ca, cert, key = create_test_ca(root / "ca", "localhost", ("127.0.0.1",))
        self.cert, self.key = cert, key
        self.procs: list[subprocess.Popen[bytes]] = []

    @property
    def directory(self) -> str:
        return f"https://127.0.0.1:{self.port}/dir"

    def start_dns(self, names: set[str]) -> None:
        world = {
            "dns_port": self.dns_port,
            "zones": [{"origin": "example.test", "a": {n: ["127.0.0.1"] for n in names}}],
            "mtas": [],
            "out": str(self.root / "dns"),
        }
        path = self.root / "dns.json"
        path.write_text(json.dumps(world))
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "remote_world.py"), str(path)],
            stdout=subprocess.DEVNULL,
            stderr=(self.root / "dns.log").open("wb"),
        )
        self.procs.append(proc)
        _wait_for(lambda: (self.root / "dns" / "ready").exists(), "the DNS server")

    def start(self, http_port: int) -> None:
        """Pebble, validating HTTP-01 challenges on C{http_port}."""
        config = {
            "pebble": {
                "listenAddress": f"127.0.0.1:{self.port}",
                "managementListenAddress": f"127.0.0.1:{self.management}",
                "certificate": str(self.cert),
                "privateKey": str(self.key),
                "httpPort": http_port,
                "tlsPort": self.tls_port,
                "ocspResponderURL": "",
                "externalAccountBindingRequired": False,
                "certificateValidityPeriod": VALIDITY_DAYS * 86400,
            }
        }
        path = self.root / "pebble.json"
        path.write_text(json.dumps(config))
        env = {
            **os.environ,
            "PEBBLE_VA_NOSLEEP": "1",  # no random sleeps before validating
            "PEBBLE_WFE_NONCEREJECT": "0",  # no deliberate badNonce errors
        }
        env.pop("PEBBLE_VA_ALWAYS_VALID", None)  # really fetch the challenge
        assert PEBBLE is not None
        self.pebble = subprocess.Popen(
            [PEBBLE, "-config", str(path), "-dnsserver", f"127.0.0.1:{self.dns_port}"],
            env=env,
            stdout=(self.root / "pebble.log").open("ab"),
            stderr=subprocess.STDOUT,
        )
        self.procs.append(self.pebble)
        _wait_for(lambda: _listening(self.port) and _listening(self.management), "pebble")

    def stop_pebble(self) -> None:
        self.pebble.send_signal(signal.SIGTERM)
        self.pebble.wait(timeout=15)

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=15)

    def management_pem(self, what: str) -> x509.Certificate:
        """Pebble's root (C{roots/0}) or intermediate (C{intermediates/0}) certificate."""
        ctx = ssl.create_default_context(cafile=str(self.ca))
        url = f"https://127.0.0.1:{self.management}/{what}"
        with urllib.request.urlopen(url, context=ctx, timeout=30) as answer:
            return x509.load_pem_x509_certificates(answer.read())[0]


def _listening(port: int) -> bool:
    try:
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
        return True
    except OSError:
        return False


def _wait_for(ready: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not ready():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} not ready within {timeout} s")
        time.sleep(0.1)


def _log_count(srv: Server, text: str) -> int:
    return srv.log.read_text(errors="replace").count(text) if srv.log.exists() else 0


def _wait_for_log(srv: Server, text: str, count: int) -> None:
    try:
        _wait_for(lambda: _log_count(srv, text) >= count, f"log line {text!r} x{count}", 120)
    except AssertionError:
        raise AssertionError(srv.log.read_text(errors="replace")) from None


def presented(port: int, ca: x509.Certificate | None = None) -> x509.Certificate:
    """The certificate a TLS handshake on C{port} presents for mail.example.test; with
    C{ca}, the handshake verifies the chain to it and the name (as a mail client would)."""
    if ca is None:
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        ctx = ssl.create_default_context(cadata=ca.public_bytes(Encoding.PEM).decode())
    with socket.create_connection(("127.0.0.1", port), timeout=30) as raw:
        with ctx.wrap_socket(raw, server_hostname="mail.example.test") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _names(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return set(san.get_values_for_type(x509.DNSName))


@contextlib.contextmanager
def started(root: Path, names_in_dns: set[str]) -> Iterator[tuple[Server, Pebble]]:
    """Pebble with DNS for C{names_in_dns}, and our server with C{[tls] acme} on it."""
    pebble = Pebble(root / "pebble")
    srv = Server(
        root / "srv",
        web=True,
        extra_config=(
            '\n[tls]\nacme = true\nacme_contact = "postmaster@example.test"\n'
            f'acme_directory = "{pebble.directory}"\nacme_ca = "{pebble.ca}"\n'
        ),
    )
    srv.add_user("alice@example.test", "alice-secret-1")
    try:
        pebble.start_dns(names_in_dns)
        pebble.start(srv.ports["http"])
        srv.start()
        yield srv, pebble
    finally:
        srv.stop()
        pebble.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, Pebble]]:
    with started(tmp_path_factory.mktemp("acme"), NAMES) as both:
        yield both


def test_certificate_obtained_and_served(world: tuple[Server, Pebble]) -> None:
    """At start the server orders a certificate for its hostname and the autoconfig./
    autodiscover./mta-sts. names (RFC 8555 §7.4), answers Pebble's HTTP-01 validation
    (§8.3), and every TLS listener then presents it, chained to Pebble's intermediate."""
    srv, pebble = world
    _wait_for_log(srv, "TLS certificate reloaded", 1)
    intermediate = pebble.management_pem("intermediates/0")
    root = pebble.management_pem("roots/0")
    for service in ("imaps", "submissions", "pop3s", "https"):
        cert = presented(srv.ports[service], ca=root)  # verifies chain and name
        assert cert.issuer == intermediate.subject, service
        assert _names(cert) == NAMES, service
    for service in ("smtp", "submission"):  # STARTTLS shares the context (RFC 3207)
        ctx = ssl.create_default_context(cadata=root.public_bytes(Encoding.PEM).decode())
        ctx.check_hostname = False  # smtplib names the peer 127.0.0.1; the chain is checked
        with smtplib.SMTP("127.0.0.1", srv.ports[service], timeout=30) as smtp:
            smtp.starttls(context=ctx)
            der = smtp.sock.getpeercert(binary_form=True)  # type: ignore[union-attr]
        assert x509.load_der_x509_certificate(der).issuer == intermediate.subject, service
    assert "ACME account registered" in srv.log.read_text()


def test_state_in_data_dir(world: tuple[Server, Pebble]) -> None:
    """The account key and the certificate key are mode 0600; the account URL and the last
    order (valid, with its names) are recorded in DATA_DIR/acme."""
    srv, _ = world
    _wait_for_log(srv, "TLS certificate reloaded", 1)
    acme = srv.data_dir / "acme"
    assert acme.stat().st_mode & 0o777 == 0o700
    assert (acme / "account.key").stat().st_mode & 0o777 == 0o600
    assert (srv.data_dir / "tls" / "key.pem").stat().st_mode & 0o777 == 0o600
    account = json.loads((acme / "account.json").read_text())
    assert account["version"] == 1
    assert account["registration"]["uri"].startswith(f"https://127.0.0.1:{world[1].port}/")
    order = json.loads((acme / "order.json").read_text())
    assert (order["status"], set(order["names"])) == ("valid", NAMES)
    assert not list(acme.glob("*.tmp")) and not list((srv.data_dir / "tls").glob("*.new"))


def test_renewal_hot_reloaded(world: tuple[Server, Pebble]) -> None:
    """A certificate expiring within 30 days is renewed at the next check (here: at start
    after a restart, where the old one is loaded first) and the new one is reloaded into
    the running listeners, with the same account."""
    srv, pebble = world
    _wait_for_log(srv, "TLS certificate reloaded", 1)
    old = presented(srv.ports["imaps"])
    account = (srv.data_dir / "acme" / "account.json").read_bytes()
    srv.stop()
    srv.log.write_text("")
    srv.start()
    _wait_for_log(srv, "TLS certificate reloaded", 1)
    assert re.search(r"ordering a .* the certificate expires in \d+\.\d days", srv.log.read_text())
    new = presented(srv.ports["imaps"], ca=pebble.management_pem("roots/0"))
    assert new.serial_number != old.serial_number
    assert _names(new) == NAMES
    assert (srv.data_dir / "acme" / "account.json").read_bytes() == account
    assert "ACME account registered" not in srv.log.read_text()


def test_failure_keeps_the_old_certificate(world: tuple[Server, Pebble]) -> None:
    """With the CA unreachable the renewal fails: the error is logged and every listener
    keeps presenting the current certificate (and its files are left as they were)."""
    srv, pebble = world
    _wait_for_log(srv, "TLS certificate reloaded", 1)
    before = presented(srv.ports["imaps"])
    cert_pem = (srv.data_dir / "tls" / "cert.pem").read_bytes()
    pebble.stop_pebble()
    srv.stop()
    srv.log.write_text("")
    srv.start()
    _wait_for_log(srv, "ACME: no new certificate, keeping the current one", 1)
    assert presented(srv.ports["imaps"]).serial_number == before.serial_number
    assert presented(srv.ports["submissions"]).serial_number == before.serial_number
    assert (srv.data_dir / "tls" / "cert.pem").read_bytes() == cert_pem
    assert "TLS certificate reloaded" not in srv.log.read_text()


def test_hostname_alone_when_a_name_does_not_resolve(tmp_path: Path) -> None:
    """mta-sts.example.test not published yet: the order for every name fails (RFC 8555
    §7.1.6: one invalid authorization fails the order), so the server, still on its
    self-signed certificate, orders the hostname alone and uses that."""
    names = NAMES - {"mta-sts.example.test"}
    with started(tmp_path, names) as (srv, pebble):
        _wait_for_log(srv, "TLS certificate reloaded", 1)
        log = srv.log.read_text()
        assert "ACME: the order for every name failed, ordering mail.example.test alone" in log
        cert = presented(srv.ports["imaps"], ca=pebble.management_pem("roots/0"))
        assert _names(cert) == {"mail.example.test"}
        assert cert.issuer == pebble.management_pem("intermediates/0").subject
