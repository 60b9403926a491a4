"""The HTTP listener end to end: the real twistd with C{[listen] http} and C{https}, fetched
over HTTP and HTTPS with Host headers as Thunderbird, Outlook, an iPhone and an MTA-STS
sender would; the documents are parsed and every field asserted.  Also: a SIGHUP reloads
the HTTPS certificate, C{dns-records} prints the id of the policy actually served, and
C{[log] format = "json"} writes one JSON object a line with Twisted's DNS chatter kept out.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import plistlib
import signal
import smtplib
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path
from xml.etree import ElementTree

import pytest
from e2e_server import Server, client_tls, make_test_ca

from twistedmail.testing import autoconfig_servers

ALICE = "alice@example.test"
OUTLOOK = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"
AUTODISCOVER = (
    '<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="http://schemas.microsoft.com/'
    'exchange/autodiscover/outlook/requestschema/2006"><Request><EMailAddress>{}</EMailAddress>'
    "<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
    "responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("web")
    _, cert, key = make_test_ca(root / "ca")
    live = root / "live"
    live.mkdir()
    (live / "fullchain.pem").write_bytes(cert.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())
    srv = Server(
        root / "srv",
        tls=(live / "fullchain.pem", live / "privkey.pem"),
        web=True,
        extra_config='\n[mta_sts]\nmode = "enforce"\nmax_age = "1d"\n',
    )
    srv.add_user(ALICE, "alice-secret-1")
    srv.cli("domain", "add", "example.net")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def fetch(
    server: Server,
    path: str,
    host: str,
    secure: bool,
    method: str = "GET",
    body: bytes | None = None,
) -> tuple[int, dict[str, str], bytes]:
    if secure:
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            "127.0.0.1", server.ports["https"], context=client_tls(), timeout=30
        )
    else:
        conn = http.client.HTTPConnection("127.0.0.1", server.ports["http"], timeout=30)
    try:
        conn.request(method, path, body=body, headers={"Host": host})
        response = conn.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        conn.close()


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_autoconfig(server: Server, secure: bool) -> None:
    """Thunderbird's two URLs, over HTTP and HTTPS: every port the server listens on, as
    configured, implicit TLS first, user %EMAILADDRESS%, the configured hostname."""
    p, h = server.ports, "mail.example.test"
    auth = ("password-cleartext", "%EMAILADDRESS%")
    expected = [
        ("incomingServer", "imap", h, str(p["imaps"]), "SSL", *auth),
        ("incomingServer", "imap", h, str(p["imap"]), "STARTTLS", *auth),
        ("incomingServer", "pop3", h, str(p["pop3s"]), "SSL", *auth),
        ("incomingServer", "pop3", h, str(p["pop3"]), "STARTTLS", *auth),
        ("outgoingServer", "smtp", h, str(p["submissions"]), "SSL", *auth),
        ("outgoingServer", "smtp", h, str(p["submission"]), "STARTTLS", *auth),
    ]
    for path, host, domain in (
        (
            "/mail/config-v1.1.xml?emailaddress=alice%40example.test",
            "autoconfig.example.test",
            "example.test",
        ),
        ("/mail/config-v1.1.xml", "autoconfig.example.net", "example.net"),
        (
            "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=bob%40example.net",
            "example.net",
            "example.net",
        ),
    ):
        status, headers, body = fetch(server, path, host, secure)
        assert (status, headers["content-type"], headers["server"]) == (
            200,
            "text/xml; charset=utf-8",
            "twistedmail",
        )
        assert ElementTree.fromstring(body).findtext("emailProvider/domain") == domain
        assert autoconfig_servers(body) == expected


@pytest.mark.parametrize("secure", [False, True], ids=["http", "https"])
def test_unknown_domain_and_paths_404(server: Server, secure: bool) -> None:
    """A domain the server does not hold gets 404 and none of our settings; so do
    directories and unknown paths."""
    for path, host in (
        ("/mail/config-v1.1.xml", "autoconfig.other.test"),
        ("/mail/config-v1.1.xml?emailaddress=a%40other.test", "autoconfig.example.test"),
        ("/.well-known/autoconfig/mail/config-v1.1.xml", "other.test"),
        ("/apple/email.mobileconfig?emailaddress=a%40other.test", "example.test"),
        ("/", "example.test"),
        ("/mail/", "example.test"),
        ("/.well-known/", "example.test"),
        ("/etc/passwd", "example.test"),
    ):
        status, headers, body = fetch(server, path, host, secure)
        assert status == 404, (path, host)
        assert b"mail.example.test" not in body
        assert headers["server"] == "twistedmail"


def test_mta_sts_policy(server: Server) -> None:
    """RFC 8461 §3.3: the policy over HTTPS at mta-sts.DOMAIN, as configured; never over
    HTTP; and dns-records publishes the id of exactly this policy (§3.1)."""
    status, headers, body = fetch(server, "/.well-known/mta-sts.txt", "mta-sts.example.net", True)
    assert (status, headers["content-type"]) == (200, "text/plain")
    assert body == b"version: STSv1\r\nmode: enforce\r\nmx: mail.example.test\r\nmax_age: 86400\r\n"
    assert fetch(server, "/.well-known/mta-sts.txt", "mta-sts.example.net", False)[0] == 404
    assert fetch(server, "/.well-known/mta-sts.txt", "mta-sts.other.test", True)[0] == 404
    records = server.cli("dns-records", "example.net").stdout.splitlines()
    policy_id = hashlib.sha256(body).hexdigest()[:20]
    assert f'_mta-sts.example.net. IN TXT "v=STSv1; id={policy_id}"' in records
    assert "mta-sts.example.net. IN CNAME mail.example.test." in records
    assert (
        '_smtp._tls.example.net. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.net"' in records
    )
    assert (
        f"_autodiscover._tcp.example.net. IN SRV 0 1 {server.ports['https']} mail.example.test."
        in records
    )


def test_autodiscover(server: Server) -> None:
    """Outlook's POST over HTTPS: one Protocol per port with the address as LoginName; a
    body that is not a request gets 400, a GET 405, an unknown domain 404."""
    status, headers, body = fetch(
        server,
        "/autodiscover/autodiscover.xml",
        "autodiscover.example.test",
        True,
        "POST",
        AUTODISCOVER.format(ALICE).encode(),
    )
    assert (status, headers["content-type"]) == (200, "text/xml; charset=utf-8")
    account = ElementTree.fromstring(body).find(f"{OUTLOOK}Response/{OUTLOOK}Account")
    assert account is not None
    assert account.findtext(f"{OUTLOOK}AccountType") == "email"
    got = [
        tuple(
            p.findtext(f"{OUTLOOK}{n}")
            for n in ("Type", "Server", "Port", "Encryption", "LoginName")
        )
        for p in account.iterfind(f"{OUTLOOK}Protocol")
    ]
    p, h = server.ports, "mail.example.test"
    assert got == [
        ("IMAP", h, str(p["imaps"]), "SSL", ALICE),
        ("IMAP", h, str(p["imap"]), "TLS", ALICE),
        ("POP3", h, str(p["pop3s"]), "SSL", ALICE),
        ("POP3", h, str(p["pop3"]), "TLS", ALICE),
        ("SMTP", h, str(p["submissions"]), "SSL", ALICE),
        ("SMTP", h, str(p["submission"]), "TLS", ALICE),
    ]
    xxe = (
        b'<!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        + AUTODISCOVER.format("&e;").encode().split(b"?>", 1)[1]
    )
    for bad in (b"<x", xxe):
        status, _, body = fetch(
            server, "/autodiscover/autodiscover.xml", "example.test", True, "POST", bad
        )
        assert status == 400 and b"root:" not in body
    assert fetch(server, "/autodiscover/autodiscover.xml", "example.test", True)[0] == 405
    status, _, _ = fetch(
        server,
        "/Autodiscover/Autodiscover.xml",
        "autodiscover.other.test",
        True,
        "POST",
        AUTODISCOVER.format("x@other.test").encode(),
    )
    assert status == 404


def test_mobileconfig(server: Server) -> None:
    """The Apple profile over HTTPS: one com.apple.mail.managed payload, IMAPS in and
    submissions out on the configured ports, the address as user name."""
    status, headers, body = fetch(
        server, "/apple/email.mobileconfig?emailaddress=alice%40example.test", "example.test", True
    )
    assert (status, headers["content-type"]) == (200, "application/x-apple-aspen-config")
    assert headers["content-disposition"] == "attachment; filename=example.test.mobileconfig"
    profile = plistlib.loads(body)
    assert profile["PayloadType"] == "Configuration"
    (mail,) = profile["PayloadContent"]
    assert (
        mail["PayloadType"],
        mail["EmailAddress"],
        mail["IncomingMailServerHostName"],
        mail["IncomingMailServerPortNumber"],
        mail["IncomingMailServerUsername"],
        mail["OutgoingMailServerPortNumber"],
        mail["OutgoingMailServerUseSSL"],
    ) == (
        "com.apple.mail.managed",
        ALICE,
        "mail.example.test",
        server.ports["imaps"],
        ALICE,
        server.ports["submissions"],
        True,
    )


def test_head(server: Server) -> None:
    """HEAD gives GET's status and headers without the body."""
    path, host = "/mail/config-v1.1.xml", "autoconfig.example.test"
    _, got, body = fetch(server, path, host, False)
    status, headers, empty = fetch(server, path, host, False, "HEAD")
    assert (status, empty, headers["content-length"]) == (200, b"", str(len(body)))


def https_cert(server: Server) -> bytes:
    with socket.create_connection(("127.0.0.1", server.ports["https"]), timeout=30) as raw:
        with client_tls().wrap_socket(raw, server_hostname="mail.example.test") as tls:
            der = tls.getpeercert(binary_form=True)
    assert der is not None
    return der


def test_sighup_reloads_https_certificate(server: Server, tmp_path: Path) -> None:
    """The HTTPS listener shares the [tls] certificate and its SIGHUP reload."""
    live = Path(str(server.config.read_text().split('cert = "')[1].split('"')[0])).parent
    old = https_cert(server)
    _, cert, key = make_test_ca(tmp_path / "ca2")
    (live / "fullchain.pem").write_bytes(cert.read_bytes())
    (live / "privkey.pem").write_bytes(key.read_bytes())
    new = ssl.PEM_cert_to_DER_cert(
        cert.read_text().split("-----END CERTIFICATE-----")[0] + "-----END CERTIFICATE-----\n"
    )
    assert new != old and server.proc is not None
    os.kill(server.proc.pid, signal.SIGHUP)
    deadline = time.monotonic() + 30
    while "TLS certificate reloaded from" not in server.log.read_text():
        assert time.monotonic() < deadline, "no reload logged"
        time.sleep(0.05)
    assert https_cert(server) == new


def test_json_log(tmp_path: Path) -> None:
    """[log] format = "json": every line of the log is one JSON object, a message and a
    failed login carry session, ip, message_id, service, user and outcome, and Twisted's
    DNS client lines (a query to a nameserver that never answers) stay out."""
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    srv = Server(
        tmp_path / "srv",
        inbound="check_authentication = true\n",
        extra_config='\n[log]\nformat = "json"\n\n[relay]\n'
        f'nameservers = ["127.0.0.1:{silent.getsockname()[1]}"]\n',
    )
    srv.add_user(ALICE, "alice-secret-1")
    srv.start()
    try:
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=60) as s:
            s.sendmail("x@sender.test", [ALICE], b"From: x@sender.test\r\nSubject: j\r\n\r\nhi\r\n")
        with smtplib.SMTP("127.0.0.1", srv.ports["submission"], timeout=60) as s:
            s.starttls(context=client_tls())
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.login(ALICE, "wrong")
    finally:
        srv.stop()
        silent.close()
    text = srv.log.read_text()
    records = [json.loads(line) for line in text.splitlines()]  # each line is JSON
    assert records and all({"time", "level", "namespace", "text"} <= r.keys() for r in records)
    (accepted,) = [
        r for r in records if r.get("message_id") and r.get("outcome", "").startswith("250")
    ]
    assert (
        accepted["ip"] == "127.0.0.1"
        and accepted["session"]
        and accepted["sender"] == "x@sender.test"
    )
    failed = [r for r in records if r["text"].startswith("login failed")]
    assert failed  # smtplib tries each mechanism the server offers, so one or more
    assert {(r["service"], r["user"], r["ip"], r["outcome"]) for r in failed} == {
        ("smtp", ALICE, "127.0.0.1", "failed")  # SMTP AUTH logs its service as smtp
    }
    assert "spf=temperror" in srv.messages(ALICE)[0].read_text()
    for chatter in ("DNSDatagramProtocol starting on", "Stopping protocol", "(UDP Port"):
        assert chatter not in text


def test_http_port_in_use(tmp_path: Path) -> None:
    """A [listen] http address that is taken stops the start with one line naming the key."""
    srv = Server(tmp_path / "srv", web=True)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", srv.ports["http"]))
        taken.listen()
        with pytest.raises(AssertionError) as failed:
            srv.start()
        srv.stop()
    assert (
        f"twistedmail: error: {srv.config}: [listen] http: cannot listen on"
        f" 127.0.0.1:{srv.ports['http']}: Address already in use"
    ) in str(failed.value)
