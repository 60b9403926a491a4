"""Tests for L{twistedmail.tls}: self-signed certificates, server contexts, TLS 1.2 minimum."""

from __future__ import annotations

import datetime
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from twisted.trial import unittest

from twistedmail.tls import (
    ServerTLS,
    TLSConfigError,
    create_self_signed,
    fingerprint,
    server_context,
)


def handshake(server_ctx: SSL.Context, client_ctx: SSL.Context) -> SSL.Connection:
    """Run a TLS handshake in memory (no sockets); return the client connection.

    @raise SSL.Error: when either side refuses.
    """
    server = SSL.Connection(server_ctx, None)
    server.set_accept_state()
    client = SSL.Connection(client_ctx, None)
    client.set_connect_state()
    done = {"client": False, "server": False}
    for _ in range(50):
        for name, conn, peer in (("client", client, server), ("server", server, client)):
            if not done[name]:
                try:
                    conn.do_handshake()
                    done[name] = True
                except SSL.WantReadError:
                    pass
            try:
                peer.bio_write(conn.bio_read(65536))
            except SSL.WantReadError:
                pass
        if all(done.values()):
            return client
    raise AssertionError("handshake did not finish")


def client_context(min_version: int, max_version: int) -> SSL.Context:
    ctx = SSL.Context(SSL.TLS_METHOD)
    ctx.set_min_proto_version(min_version)
    ctx.set_max_proto_version(max_version)
    ctx.set_cipher_list(b"DEFAULT:@SECLEVEL=0")  # let the client offer old versions
    return ctx


class SelfSignedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.cert = self.dir / "tls" / "cert.pem"
        self.key = self.dir / "tls" / "key.pem"
        create_self_signed(self.cert, self.key, "mail.example.org")

    def test_files(self) -> None:
        """The key is private (0600, in a 0700 directory); both are PEM."""
        self.assertEqual(self.key.stat().st_mode & 0o777, 0o600)
        self.assertEqual(self.key.parent.stat().st_mode & 0o777, 0o700)
        self.assertTrue(self.key.read_bytes().startswith(b"-----BEGIN RSA PRIVATE KEY-----\n"))
        self.assertTrue(self.cert.read_bytes().startswith(b"-----BEGIN CERTIFICATE-----\n"))

    def test_certificate(self) -> None:
        """CN and subjectAltName are the hostname; valid now, for about ten years."""
        cert = x509.load_pem_x509_certificate(self.cert.read_bytes())
        cn = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value
        self.assertEqual(cn, "mail.example.org")
        self.assertEqual(cert.issuer, cert.subject)
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        self.assertEqual(san.get_values_for_type(x509.DNSName), ["mail.example.org"])
        now = datetime.datetime.now(datetime.timezone.utc)
        self.assertLess(cert.not_valid_before_utc, now)
        self.assertGreater(cert.not_valid_after_utc, now + datetime.timedelta(days=3600))
        self.assertEqual(cert.public_key().key_size, 2048)

    def test_load(self) -> None:
        """The created pair loads into a server context (regression: C{ssl.FILETYPE_PEM} does
        not exist in twisted.internet.ssl, so every load failed)."""
        options = server_context(self.cert, self.key)
        self.assertIsInstance(options, ssl.CertificateOptions)
        client = handshake(
            options.getContext(), client_context(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        )
        peer = client.get_peer_certificate(as_cryptography=True)
        assert peer is not None
        self.assertEqual(peer.subject.rfc4514_string(), "CN=mail.example.org")

    def test_chain(self) -> None:
        """A cert file holding the chain (fullchain.pem) loads: extra certificates are sent."""
        other_cert, other_key = self.dir / "ca.pem", self.dir / "ca.key"
        create_self_signed(other_cert, other_key, "ca.example.org")
        full = self.dir / "fullchain.pem"
        full.write_bytes(self.cert.read_bytes() + other_cert.read_bytes())
        options = server_context(full, self.key)
        client = handshake(
            options.getContext(), client_context(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION)
        )
        chain = client.get_peer_cert_chain(as_cryptography=True)
        assert chain is not None
        self.assertEqual(
            [c.subject.rfc4514_string()[3:] for c in chain], ["mail.example.org", "ca.example.org"]
        )


class MinimumVersionTests(unittest.TestCase):
    """RFC 8996 / RFC 8314 §4.1: TLS 1.0 and 1.1 are refused; 1.2 and 1.3 work."""

    def setUp(self) -> None:
        d = Path(self.mktemp())
        create_self_signed(d / "cert.pem", d / "key.pem", "mail.example.org")
        self.ctx = server_context(d / "cert.pem", d / "key.pem").getContext()

    def test_options(self) -> None:
        """RFC 8996: the server context turns off TLS 1.0 and 1.1 and keeps 1.2."""
        current = self.ctx.set_options(0)  # ORs nothing in; returns the options in force
        self.assertTrue(current & SSL.OP_NO_TLSv1)
        self.assertTrue(current & SSL.OP_NO_TLSv1_1)
        self.assertFalse(current & SSL.OP_NO_TLSv1_2)

    def test_tls12_and_13_accepted(self) -> None:
        """Clients on TLS 1.2 and TLS 1.3 complete the handshake."""
        for version, name in ((SSL.TLS1_2_VERSION, "TLSv1.2"), (SSL.TLS1_3_VERSION, "TLSv1.3")):
            client = handshake(self.ctx, client_context(version, version))
            self.assertEqual(client.get_protocol_version_name(), name)

    def test_old_versions_refused(self) -> None:
        """RFC 8996: clients on TLS 1.0 or 1.1 fail the handshake."""
        for version in (SSL.TLS1_VERSION, SSL.TLS1_1_VERSION):
            self.assertRaises(SSL.Error, handshake, self.ctx, client_context(version, version))


class LoadErrorTests(unittest.TestCase):
    """Every load failure is a L{TLSConfigError} naming the file(s)."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        create_self_signed(self.cert, self.key, "mail.example.org")

    def test_missing_file(self) -> None:
        """A missing certificate or key file is one line naming it and the OS reason."""
        missing = self.dir / "nope.pem"
        e = self.assertRaises(TLSConfigError, server_context, missing, self.key)
        self.assertEqual(str(e), f"cannot read {missing}: No such file or directory")
        e = self.assertRaises(TLSConfigError, server_context, self.cert, missing)
        self.assertEqual(str(e), f"cannot read {missing}: No such file or directory")

    def test_not_pem(self) -> None:
        """A certificate or key that is not PEM, or a key given as certificate, is one line
        naming both files."""
        bad = self.dir / "bad.pem"
        bad.write_bytes(b"hello\n")
        for cert, key in ((bad, self.key), (self.cert, bad), (self.key, self.key)):
            e = self.assertRaises(TLSConfigError, server_context, cert, key)
            self.assertTrue(str(e).startswith(f"cannot load certificate {cert} / key {key}: "))
            self.assertNotIn("\n", str(e))

    def test_key_does_not_match(self) -> None:
        """A key of another certificate is refused at load time, not at the first handshake."""
        other = self.dir / "other"
        create_self_signed(other / "cert.pem", other / "key.pem", "other.example.org")
        e = self.assertRaises(TLSConfigError, server_context, self.cert, other / "key.pem")
        self.assertTrue(
            str(e).startswith(f"cannot load certificate {self.cert} / key {other / 'key.pem'}: ")
        )


def peer_subject(server_ctx: SSL.Context) -> str:
    client = handshake(server_ctx, client_context(SSL.TLS1_2_VERSION, SSL.TLS1_3_VERSION))
    peer = client.get_peer_certificate(as_cryptography=True)
    assert peer is not None
    return peer.subject.rfc4514_string()


class ServerTLSTests(unittest.TestCase):
    """L{ServerTLS}: the shared server context, replaced for new connections only."""

    def setUp(self) -> None:
        self.dir = Path(self.mktemp())
        self.cert, self.key = self.dir / "cert.pem", self.dir / "key.pem"
        create_self_signed(self.cert, self.key, "old.example.org")
        self.tls = ServerTLS.load(self.cert, self.key)

    def test_provides_context_factory(self) -> None:
        """Twisted asks it for a context per connection (TLSMemoryBIOFactory, startTLS)."""
        self.assertTrue(IOpenSSLContextFactory.providedBy(self.tls))
        self.assertEqual(peer_subject(self.tls.getContext()), "CN=old.example.org")

    def test_replace(self) -> None:
        """After replace, a new handshake presents the new certificate; a connection made
        before it keeps the old context."""
        before = SSL.Connection(self.tls.getContext(), None)
        create_self_signed(self.cert, self.key, "new.example.org")
        options = self.tls.reread()
        self.assertEqual(peer_subject(self.tls.getContext()), "CN=old.example.org")
        self.tls.replace(options)
        self.assertEqual(peer_subject(self.tls.getContext()), "CN=new.example.org")
        self.assertEqual(peer_subject(before.get_context()), "CN=old.example.org")
        self.assertEqual(
            fingerprint(options),
            x509.load_pem_x509_certificate(self.cert.read_bytes())
            .fingerprint(hashes.SHA256())
            .hex(":"),
        )

    def test_bad_new_pair(self) -> None:
        """A broken file on reread raises TLSConfigError and leaves the context in use."""
        current = self.tls.options
        self.cert.write_bytes(b"-----BEGIN CERTIFICATE-----\ngarbage\n")
        e = self.assertRaises(TLSConfigError, self.tls.reread)
        self.assertTrue(str(e).startswith(f"cannot load certificate {self.cert} / key"))
        self.assertIs(self.tls.options, current)
        self.assertEqual(peer_subject(self.tls.getContext()), "CN=old.example.org")
