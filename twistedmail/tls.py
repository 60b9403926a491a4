"""TLS: load or create the server certificate, build server contexts (RFC 8314, RFC 3207).

A first start without a configured certificate creates a self-signed one (RSA 2048, 10 years,
the hostname as CN and subjectAltName) in C{DATA_DIR/tls/}, key mode 0600.  Server contexts
allow TLS 1.2 and newer only.

L{ServerTLS} is the one server context every listener shares (the implicit-TLS ports
465/993/995 and STARTTLS on 25/587/143/110): L{ServerTLS.replace} swaps the certificate for
new connections (the server does it on SIGHUP), while sessions already under TLS keep the
context they started with.
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from OpenSSL import SSL
from OpenSSL.crypto import FILETYPE_PEM
from twisted.internet import ssl
from twisted.internet.interfaces import IOpenSSLContextFactory
from zope.interface import implementer


class TLSConfigError(Exception):
    """A certificate or key that cannot be loaded; the message names the file."""


def create_self_signed(cert_path: Path, key_path: Path, hostname: str) -> None:
    """Write a self-signed certificate for C{hostname} and its key (0600) as PEM."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName([x509.DNSName(hostname)]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.TraditionalOpenSSL,
                serialization.NoEncryption(),
            )
        )
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))


def server_context(cert_path: Path, key_path: Path) -> ssl.CertificateOptions:
    """A server TLS context from PEM files (the cert file may hold the chain), TLS >= 1.2.

    @raise TLSConfigError: when a file is missing or not a matching PEM cert/key.
    """
    try:
        cert_pem = cert_path.read_bytes()
        key_pem = key_path.read_bytes()
    except OSError as e:
        raise TLSConfigError(f"cannot read {e.filename}: {e.strerror}") from None
    try:
        chain = x509.load_pem_x509_certificates(cert_pem)
        cert = ssl.Certificate.loadPEM(chain[0].public_bytes(serialization.Encoding.PEM))
        key = ssl.KeyPair.load(key_pem, FILETYPE_PEM)
        extra = [
            ssl.Certificate.loadPEM(c.public_bytes(serialization.Encoding.PEM)).original
            for c in chain[1:]
        ]
        options = ssl.CertificateOptions(
            privateKey=key.original,
            certificate=cert.original,
            extraCertChain=extra or None,
            raiseMinimumTo=ssl.TLSVersion.TLSv1_2,
        )
        options.getContext()  # builds (and caches) the context: checks the key matches the cert
        return options
    except Exception as e:  # OpenSSL and cryptography raise many types for bad PEM
        raise TLSConfigError(f"cannot load certificate {cert_path} / key {key_path}: {e}") from None


@implementer(IOpenSSLContextFactory)
class ServerTLS:
    """The server TLS context of every listener, replaceable while the server runs.

    Twisted asks C{getContext()} once per TLS connection (implicit TLS and STARTTLS
    alike), so after L{replace} every new handshake presents the new certificate; an open
    TLS session keeps the OpenSSL context it was built with.

    @ivar cert_path: the certificate (chain) PEM file, reread by the reload.
    @ivar key_path: the private key PEM file.
    @ivar options: the current L{ssl.CertificateOptions}.
    """

    def __init__(self, cert_path: Path, key_path: Path, options: ssl.CertificateOptions) -> None:
        self.cert_path = cert_path
        self.key_path = key_path
        self.options = options

    @classmethod
    def load(cls, cert_path: Path, key_path: Path) -> ServerTLS:
        """@raise TLSConfigError: see L{server_context}."""
        return cls(cert_path, key_path, server_context(cert_path, key_path))

    def getContext(self) -> SSL.Context:
        return self.options.getContext()

    def reread(self) -> ssl.CertificateOptions:
        """Load C{cert_path}/C{key_path} again (blocking file I/O: call it in a thread).

        @raise TLSConfigError: the files are missing, unreadable or do not match; the
            current context is left as it was.
        """
        return server_context(self.cert_path, self.key_path)

    def replace(self, options: ssl.CertificateOptions) -> None:
        """Use C{options} for every TLS connection from now on."""
        self.options = options


def fingerprint(options: ssl.CertificateOptions) -> str:
    """The SHA-256 fingerprint of C{options}' certificate, hex with colons (for the log)."""
    assert options.certificate is not None, "a server context always has its certificate"
    cert = options.certificate.to_cryptography()
    return cert.fingerprint(hashes.SHA256()).hex(":")
