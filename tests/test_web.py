"""Tests for the HTTP listener (twistedmail.web): autoconfig, autodiscover, the Apple
profile, the MTA-STS policy, Host dispatch and the listener's limits.  Requests go through
the real Site over a StringTransport, the exact bytes a client would send."""

from __future__ import annotations

import plistlib
from xml.etree import ElementTree

from twisted.internet.interfaces import ISSLTransport
from twisted.internet.task import Clock
from twisted.internet.testing import StringTransport
from twisted.trial import unittest
from zope.interface import implementer

from twistedmail.limits import refusal_for
from twistedmail.testing import autoconfig_servers
from twistedmail.web import MailService, MailSettings, build_site, mtasts, web_factory
from twistedmail.web.autodiscover import OUTLOOK_NS, RESPONSE_NS
from twistedmail.web.site import MAX_BODY, MAX_HEADER_OCTETS, MAX_HEADERS

LOCAL = {"example.org", "example.net"}
SETTINGS = MailSettings(
    "mail.example.org",
    (
        MailService("imap", 993, "SSL"),
        MailService("imap", 143, "STARTTLS"),
        MailService("pop3", 995, "SSL"),
        MailService("pop3", 110, "STARTTLS"),
        MailService("smtp", 465, "SSL"),
        MailService("smtp", 587, "STARTTLS"),
    ),
    LOCAL.__contains__,
)
POLICY = mtasts.policy("mail.example.org", "testing", 604800)
AUTODISCOVER = (
    b'<?xml version="1.0" encoding="utf-8"?>\r\n'
    b'<Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/'
    b'requestschema/2006"><Request><EMailAddress>%s</EMailAddress>'
    b"<AcceptableResponseSchema>http://schemas.microsoft.com/exchange/autodiscover/outlook/"
    b"responseschema/2006a</AcceptableResponseSchema></Request></Autodiscover>"
)


@implementer(ISSLTransport)
class TLSStringTransport(StringTransport):
    """What a request over the https listener sees: an ISSLTransport."""

    def setTcpNoDelay(self, enabled: bool) -> None:
        pass


class Response:
    def __init__(self, raw: bytes) -> None:
        head, _, self.body = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        self.status = int(lines[0].split()[1])
        self.headers: dict[bytes, bytes] = {}
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            self.headers[name.strip().lower()] = value.strip()


class WebTests(unittest.TestCase):
    def setUp(self) -> None:
        self.clock = Clock()
        self.site = web_factory(build_site(SETTINGS, POLICY), self.clock)

    def connect(self, secure: bool = False) -> tuple[object, StringTransport]:
        transport = TLSStringTransport() if secure else StringTransport()
        protocol = self.site.buildProtocol(None)
        protocol.makeConnection(transport)
        return protocol, transport

    def request(
        self,
        path: str,
        host: str = "mail.example.org",
        method: str = "GET",
        body: bytes = b"",
        secure: bool = False,
        headers: bytes = b"",
    ) -> Response:
        protocol, transport = self.connect(secure)
        protocol.dataReceived(  # type: ignore[attr-defined]
            f"{method} {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n".encode()
            + headers
            + (b"Content-Length: %d\r\n" % len(body) if body or method == "POST" else b"")
            + b"\r\n"
            + body
        )
        return Response(transport.value())

    # -- Thunderbird autoconfig --------------------------------------------------------

    def test_autoconfig_document(self) -> None:
        """/mail/config-v1.1.xml on autoconfig.DOMAIN: every port in order, implicit TLS
        first, %EMAILADDRESS%, password-cleartext, the public hostname."""
        r = self.request("/mail/config-v1.1.xml", host="autoconfig.example.net")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers[b"content-type"], b"text/xml; charset=utf-8")
        root = ElementTree.fromstring(r.body)
        self.assertEqual(root.tag, "clientConfig")
        self.assertEqual(root.get("version"), "1.1")
        provider = root.find("emailProvider")
        assert provider is not None
        self.assertEqual(provider.get("id"), "example.net")
        self.assertEqual([d.text for d in provider.findall("domain")], ["example.net"])
        servers = autoconfig_servers(r.body)
        common = ("password-cleartext", "%EMAILADDRESS%")
        host = "mail.example.org"
        self.assertEqual(
            servers,
            [
                ("incomingServer", "imap", host, "993", "SSL", *common),
                ("incomingServer", "imap", host, "143", "STARTTLS", *common),
                ("incomingServer", "pop3", host, "995", "SSL", *common),
                ("incomingServer", "pop3", host, "110", "STARTTLS", *common),
                ("outgoingServer", "smtp", host, "465", "SSL", *common),
                ("outgoingServer", "smtp", host, "587", "STARTTLS", *common),
            ],
        )

    def test_autoconfig_by_address(self) -> None:
        """?emailaddress= names the domain on any host, also under /.well-known/autoconfig/."""
        for path in (
            "/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=Fred%40Example.NET",
            "/mail/config-v1.1.xml?emailaddress=fred@example.net",
        ):
            r = self.request(path, host="127.0.0.1")
            self.assertEqual(r.status, 200, path)
            root = ElementTree.fromstring(r.body)
            self.assertEqual(root.findtext("emailProvider/domain"), "example.net")
        r = self.request("/.well-known/autoconfig/mail/config-v1.1.xml", host="example.org")
        self.assertEqual(
            ElementTree.fromstring(r.body).findtext("emailProvider/domain"), "example.org"
        )

    def test_unknown_domain_404(self) -> None:
        """A domain that is not local gets 404 and no settings, whatever the Host says."""
        for path, host in (
            ("/mail/config-v1.1.xml", "autoconfig.other.test"),
            ("/mail/config-v1.1.xml?emailaddress=a@other.test", "autoconfig.example.org"),
            ("/mail/config-v1.1.xml?emailaddress=not-an-address", "autoconfig.example.org"),
            ("/mail/config-v1.1.xml", "127.0.0.1"),
            ("/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=a@[127.0.0.1]", "x"),
            ("/apple/email.mobileconfig?emailaddress=a@other.test", "example.org"),
            ("/apple/email.mobileconfig", "example.org"),
        ):
            r = self.request(path, host=host)
            self.assertEqual(r.status, 404, (path, host))
            self.assertNotIn(b"mail.example.org", r.body)

    def test_head_and_no_listing(self) -> None:
        """HEAD is GET without a body; directories and unknown paths are 404; the Server
        header names no version."""
        r = self.request("/mail/config-v1.1.xml", host="autoconfig.example.org", method="HEAD")
        self.assertEqual((r.status, r.body), (200, b""))
        get = self.request("/mail/config-v1.1.xml", host="autoconfig.example.org")
        self.assertEqual(r.headers[b"content-length"], str(len(get.body)).encode())
        for path in ("/", "/mail/", "/mail", "/.well-known/", "/.well-known/autoconfig/", "/x"):
            r = self.request(path)
            self.assertEqual(r.status, 404, path)
            self.assertEqual(r.headers[b"server"], b"twistedmail")

    # -- MTA-STS ------------------------------------------------------------------------

    def test_mta_sts_policy(self) -> None:
        """RFC 8461 §3.3: the policy at https://mta-sts.DOMAIN/.well-known/mta-sts.txt,
        text/plain; not over plain HTTP, not for another domain."""
        r = self.request("/.well-known/mta-sts.txt", host="mta-sts.example.org", secure=True)
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers[b"content-type"], b"text/plain")
        self.assertEqual(
            r.body,
            b"version: STSv1\r\nmode: testing\r\nmx: mail.example.org\r\nmax_age: 604800\r\n",
        )
        for host, secure in (
            ("mta-sts.example.org", False),
            ("mta-sts.other.test", True),
            ("example.org", True),
        ):
            r = self.request("/.well-known/mta-sts.txt", host=host, secure=secure)
            self.assertEqual(r.status, 404, (host, secure))

    def test_mta_sts_id_follows_policy(self) -> None:
        """RFC 8461 §3.1: the TXT id changes when the policy changes, and only then."""
        a = mtasts.dns_records("example.org", "mail.example.org", "testing", 604800)
        b = mtasts.dns_records("example.org", "mail.example.org", "testing", 604800)
        c = mtasts.dns_records("example.org", "mail.example.org", "enforce", 604800)
        self.assertEqual(a, b)
        self.assertNotEqual(a[1], c[1])
        self.assertEqual(
            a,
            [
                "mta-sts.example.org. IN CNAME mail.example.org.",
                '_mta-sts.example.org. IN TXT "v=STSv1; id=%s"' % mtasts.policy_id(POLICY),
            ],
        )
        self.assertRegex(mtasts.policy_id(POLICY), r"^[0-9a-f]{20}$")
        self.assertEqual(
            mtasts.tlsrpt_record("example.org"),
            '_smtp._tls.example.org. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@example.org"',
        )

    # -- Outlook autodiscover -----------------------------------------------------------

    def test_autodiscover(self) -> None:
        """POX request -> one Protocol per port, LoginName the address, SSL/TLS encryption."""
        r = self.request(
            "/autodiscover/autodiscover.xml",
            host="autodiscover.example.org",
            method="POST",
            body=AUTODISCOVER % b"Alice@Example.org",
        )
        self.assertEqual(r.status, 200)
        root = ElementTree.fromstring(r.body)
        self.assertEqual(root.tag, f"{{{RESPONSE_NS}}}Autodiscover")
        ns = {"o": OUTLOOK_NS}
        self.assertEqual(
            root.findtext("o:Response/o:Account/o:AccountType", namespaces=ns), "email"
        )
        self.assertEqual(root.findtext("o:Response/o:Account/o:Action", namespaces=ns), "settings")
        protocols = [
            (
                p.findtext("o:Type", namespaces=ns),
                p.findtext("o:Server", namespaces=ns),
                p.findtext("o:Port", namespaces=ns),
                p.findtext("o:Encryption", namespaces=ns),
                p.findtext("o:LoginName", namespaces=ns),
            )
            for p in root.iterfind("o:Response/o:Account/o:Protocol", namespaces=ns)
        ]
        h, a = "mail.example.org", "alice@example.org"
        self.assertEqual(
            protocols,
            [
                ("IMAP", h, "993", "SSL", a),
                ("IMAP", h, "143", "TLS", a),
                ("POP3", h, "995", "SSL", a),
                ("POP3", h, "110", "TLS", a),
                ("SMTP", h, "465", "SSL", a),
                ("SMTP", h, "587", "TLS", a),
            ],
        )

    def test_autodiscover_refuses(self) -> None:
        """Not XML, not the request schema, entities and DTDs: 400; another domain: 404;
        GET: 405."""
        bomb = (
            b'<?xml version="1.0"?><!DOCTYPE a [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
            + (AUTODISCOVER % b"&e;").split(b"?>", 1)[1]
        )
        for body in (b"not xml", b"<a/>", bomb, AUTODISCOVER.replace(b"Request>", b"R>") % b"x"):
            r = self.request(
                "/autodiscover/autodiscover.xml", method="POST", body=body, host="example.org"
            )
            self.assertEqual(r.status, 400, body)
            self.assertNotIn(b"root:", r.body)
        r = self.request(
            "/Autodiscover/Autodiscover.xml",
            method="POST",
            body=AUTODISCOVER % b"a@other.test",
            host="autodiscover.other.test",
        )
        self.assertEqual(r.status, 404)
        self.assertEqual(self.request("/autodiscover/autodiscover.xml").status, 405)

    # -- Apple profile ------------------------------------------------------------------

    def test_mobileconfig(self) -> None:
        """An unsigned profile with one com.apple.mail.managed payload: IMAP 993 in, 465 out,
        the address as user name, the same UUIDs each time."""
        r = self.request("/apple/email.mobileconfig?emailaddress=alice@example.org")
        self.assertEqual(r.status, 200)
        self.assertEqual(r.headers[b"content-type"], b"application/x-apple-aspen-config")
        profile = plistlib.loads(r.body)
        self.assertEqual(profile["PayloadType"], "Configuration")
        self.assertEqual(profile["PayloadVersion"], 1)
        (mail,) = profile["PayloadContent"]
        self.assertEqual(
            {k: v for k, v in mail.items() if k not in ("PayloadUUID", "PayloadIdentifier")},
            {
                "PayloadType": "com.apple.mail.managed",
                "PayloadVersion": 1,
                "PayloadDisplayName": "alice@example.org",
                "EmailAccountDescription": "alice@example.org",
                "EmailAccountType": "EmailTypeIMAP",
                "EmailAddress": "alice@example.org",
                "IncomingMailServerAuthentication": "EmailAuthPassword",
                "IncomingMailServerHostName": "mail.example.org",
                "IncomingMailServerPortNumber": 993,
                "IncomingMailServerUseSSL": True,
                "IncomingMailServerUsername": "alice@example.org",
                "OutgoingMailServerAuthentication": "EmailAuthPassword",
                "OutgoingMailServerHostName": "mail.example.org",
                "OutgoingMailServerPortNumber": 465,
                "OutgoingMailServerUseSSL": True,
                "OutgoingMailServerUsername": "alice@example.org",
                "OutgoingPasswordSameAsIncomingPassword": True,
            },
        )
        again = plistlib.loads(
            self.request("/apple/email.mobileconfig?emailaddress=alice@example.org").body
        )
        self.assertEqual(again["PayloadUUID"], profile["PayloadUUID"])
        self.assertEqual(again["PayloadContent"][0]["PayloadUUID"], mail["PayloadUUID"])

    # -- limits ---------------------------------------------------------------------------

    def test_too_many_headers(self) -> None:
        """More than MAX_HEADERS header lines: 400 and the connection closed."""
        extra = b"".join(b"X-H%d: v\r\n" % i for i in range(MAX_HEADERS))
        protocol, transport = self.connect()
        protocol.dataReceived(  # type: ignore[attr-defined]
            b"GET / HTTP/1.1\r\nHost: example.org\r\n" + extra + b"\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request"))
        self.assertTrue(transport.disconnecting)

    def test_request_line_and_headers_too_long(self) -> None:
        """A request line and headers over MAX_HEADER_OCTETS: 400 and the connection closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(  # type: ignore[attr-defined]
            b"GET /mail/config-v1.1.xml?emailaddress=" + b"a" * MAX_HEADER_OCTETS + b" HTTP/1.1\r\n"
        )
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 400 Bad Request"))
        self.assertTrue(transport.disconnecting)

    def test_body_too_large(self) -> None:
        """A body over MAX_BODY, announced or sent chunked: 413 and the connection closed."""
        protocol, transport = self.connect()
        protocol.dataReceived(  # type: ignore[attr-defined]
            b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: example.org\r\n"
            b"Content-Length: %d\r\n\r\n" % (MAX_BODY + 1)
        )
        self.assertEqual(
            transport.value(),
            b"HTTP/1.1 413 Content Too Large\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )
        self.assertTrue(transport.disconnecting)
        protocol, transport = self.connect()
        protocol.dataReceived(  # type: ignore[attr-defined]
            b"POST /autodiscover/autodiscover.xml HTTP/1.1\r\nHost: example.org\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = b"x" * 8192
        for _ in range(MAX_BODY // len(chunk) + 1):
            protocol.dataReceived(b"%x\r\n%s\r\n" % (len(chunk), chunk))  # type: ignore[attr-defined]
        self.assertTrue(transport.value().startswith(b"HTTP/1.1 413 Content Too Large\r\n"))
        self.assertTrue(transport.disconnecting)

    def test_refusal_over_the_connection_limit(self) -> None:
        """Over [limits] max_connections an HTTP client gets a 503, not an SMTP line."""
        self.assertEqual(
            refusal_for("https", "mail.example.org"),
            b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
        )

    def test_idle_timeout(self) -> None:
        """A connection that sends no complete request is closed after the idle timeout."""
        protocol, transport = self.connect()
        protocol.dataReceived(b"GET / HTTP/1.1\r\n")  # type: ignore[attr-defined]
        self.clock.advance(29)
        self.assertFalse(transport.disconnecting)
        self.clock.advance(2)
        self.assertTrue(transport.disconnecting)


class MountTests(unittest.TestCase):
    def test_mount_below_well_known(self) -> None:
        """Another feature mounts below .well-known in one line; the documents there stay."""
        from twisted.web.static import Data

        from twistedmail.web import mount

        root = build_site(SETTINGS, POLICY)
        mount(root, (b".well-known", b"acme-challenge", b"token1"), Data(b"key-auth", "text/plain"))
        root.putChild(b"metrics", Data(b"up 1\n", "text/plain"))
        site = web_factory(root, Clock())

        def get(path: bytes, host: bytes = b"mta-sts.example.org") -> bytes:
            transport = TLSStringTransport()
            protocol = site.buildProtocol(None)
            protocol.makeConnection(transport)
            protocol.dataReceived(b"GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, host))
            return transport.value()

        self.assertTrue(get(b"/.well-known/acme-challenge/token1").endswith(b"\r\n\r\nkey-auth"))
        self.assertTrue(get(b"/metrics").endswith(b"\r\n\r\nup 1\n"))
        self.assertTrue(get(b"/.well-known/mta-sts.txt").endswith(POLICY))
        self.assertTrue(get(b"/.well-known/acme-challenge/").startswith(b"HTTP/1.1 404 "))
