"""DKIM signing of outgoing mail (RFC 6376) and the DNS records a domain publishes.

Keys live in C{DATA_DIR/dkim/<domain>.<selector>.key}: an RSA 2048-bit private key, PEM,
mode 0600 (RFC 6376 §3.3.3: at least 1024 bits, 2048 recommended by RFC 8301 §3.2).  The
default selector is C{twistedmail}; a new selector (e.g. C{tm2027}) is how a key is rotated:
the most recently written key of a domain signs, so generate the new key, publish its TXT
record, wait for DNS, and the next message uses it.

A message is signed (relaxed/relaxed, rsa-sha256, RFC 6376 §3.4.2, §3.4.4, §3.3) when the
domain of its C{From:} header (the author domain DMARC aligns with, RFC 7489 §3.1) has a key;
otherwise it is left unchanged.  The signature covers the headers of L{SIGNED_HEADERS} that
the message has (RFC 6376 §5.4.1: From is REQUIRED).

C{dkimpy} does the cryptography and canonicalization; this module chooses keys and headers.
All functions do blocking file I/O and CPU work: call them in a thread from reactor code.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import os
from pathlib import Path

import attrs
import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from twisted.logger import Logger

from twistedmail.address import AddressError, normalize_domain

log = Logger()

DEFAULT_SELECTOR = "twistedmail"
KEY_BITS = 2048

#: Headers signed when present, lower case (RFC 6376 §5.4.1 recommends these; From is required).
SIGNED_HEADERS: tuple[str, ...] = (
    "from",
    "to",
    "cc",
    "subject",
    "date",
    "message-id",
    "mime-version",
    "content-type",
    "reply-to",
    "in-reply-to",
    "references",
)


class DKIMError(Exception):
    """A key that cannot be made or read; the message is one line, safe to print."""


@attrs.frozen
class SigningKey:
    """One domain's private key: C{domain} (d=), C{selector} (s=), C{path} of the PEM file."""

    domain: str
    selector: str
    path: Path


def _check_selector(selector: str) -> str:
    # RFC 6376 §3.1: selector = sub-domain *( "." sub-domain ); we allow one label for a file name.
    label = selector.lower()
    if (
        not label
        or len(label) > 63
        or not all(c.isascii() and (c.isalnum() or c == "-") for c in label)
        or label.startswith("-")
        or label.endswith("-")
    ):
        raise DKIMError(f"invalid selector {selector!r} (letters, digits and '-' only)")
    return label


def _check_domain(domain: str) -> str:
    try:
        return normalize_domain(domain)
    except AddressError as e:
        raise DKIMError(f"invalid domain {domain!r}: {e}") from None


class KeyStore:
    """The key directory C{DATA_DIR/dkim}.

    @param directory: where the C{<domain>.<selector>.key} files are (created on generate).
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, domain: str, selector: str) -> Path:
        return self.directory / f"{domain}.{selector}.key"

    def generate(self, domain: str, selector: str = DEFAULT_SELECTOR) -> SigningKey:
        """Make a new RSA key for C{domain}; write it with mode 0600.

        @raise DKIMError: bad domain or selector, or that key already exists.
        """
        domain = _check_domain(domain)
        selector = _check_selector(selector)
        path = self.path(domain, selector)
        if path.exists():
            raise DKIMError(f"a key for {domain} with selector {selector} already exists: {path}")
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.TraditionalOpenSSL,
            serialization.NoEncryption(),
        )
        tmp = path.with_name(path.name + ".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.write(fd, pem)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
        return SigningKey(domain, selector, path)

    def keys(self, domain: str) -> list[SigningKey]:
        """C{domain}'s keys, newest (by modification time) first; empty when there are none."""
        prefix = f"{domain}."
        found: list[tuple[float, SigningKey]] = []
        if not self.directory.is_dir():
            return []
        for p in self.directory.iterdir():
            name = p.name
            if not (name.startswith(prefix) and name.endswith(".key")):
                continue
            selector = name[len(prefix) : -len(".key")]
            if not selector or "." in selector:
                continue
            found.append((p.stat().st_mtime, SigningKey(domain, selector, p)))
        return [k for _, k in sorted(found, key=lambda t: (-t[0], t[1].selector))]

    def signing_key(self, domain: str) -> SigningKey | None:
        """The key that signs C{domain}'s mail now (the newest), or None."""
        keys = self.keys(domain)
        return keys[0] if keys else None

    def txt_record(self, key: SigningKey) -> tuple[str, str]:
        """The DNS name and TXT value to publish for C{key} (RFC 6376 §3.6.1).

        @return: C{("<selector>._domainkey.<domain>", "v=DKIM1; k=rsa; p=...")}.
        @raise DKIMError: the key file cannot be read.
        """
        try:
            private = serialization.load_pem_private_key(key.path.read_bytes(), password=None)
        except (OSError, ValueError) as e:
            raise DKIMError(f"cannot read DKIM key {key.path}: {e}") from None
        der = private.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        value = f"v=DKIM1; k=rsa; p={base64.b64encode(der).decode('ascii')}"
        return f"{key.selector}._domainkey.{key.domain}", value

    def sign(self, message: bytes) -> bytes:
        """C{message} with a C{DKIM-Signature:} header prepended, or unchanged when its
        From: domain has no key or it cannot be signed (logged; mail is never held up).

        @param message: the whole message, header and body, as queued.
        """
        domain = author_domain(message)
        if domain is None:
            return message
        key = self.signing_key(domain)
        if key is None:
            return message
        linesep = b"\r\n" if b"\r\n" in message[:4096] or not message else b"\n"
        present = _header_names(message)
        include = [h.encode("ascii") for h in SIGNED_HEADERS if h in present]
        try:
            signature = dkimpy.sign(
                message,
                key.selector.encode("ascii"),
                key.domain.encode("ascii"),
                key.path.read_bytes(),
                canonicalize=(b"relaxed", b"relaxed"),
                signature_algorithm=b"rsa-sha256",
                include_headers=include,
                linesep=linesep,
            )
        except Exception:
            log.failure(
                "dkim: not signed for {domain} (selector {selector})",
                domain=key.domain,
                selector=key.selector,
            )
            return message
        return signature + message


def _header_block(message: bytes) -> bytes:
    for sep in (b"\r\n\r\n", b"\n\n"):
        i = message.find(sep)
        if i >= 0:
            return message[: i + len(sep)]
    return message


def _header_names(message: bytes) -> set[str]:
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        _header_block(message)
    )
    return {k.lower() for k in parsed.keys()}


def author_domain(message: bytes) -> str | None:
    """The domain of the single address in the From: header (RFC 5322 §3.6.2), lower
    case, or None when there is no From:, several, or it does not parse."""
    parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(
        _header_block(message)
    )
    values = parsed.get_all("From") or []
    if len(values) != 1:
        return None
    addresses = email.utils.getaddresses([str(values[0])])
    if len(addresses) != 1 or "@" not in addresses[0][1]:
        return None
    domain = addresses[0][1].rpartition("@")[2]
    try:
        return normalize_domain(domain)
    except AddressError:
        return None


def dns_records(domain: str, hostname: str, keys: KeyStore) -> list[str]:
    """The zone-file lines C{domain} should publish to receive and send mail through
    C{hostname}: MX (RFC 5321 §5.1), SPF (RFC 7208), the DKIM key (RFC 6376 §3.6.1),
    DMARC (RFC 7489 §6.3), the submission/IMAP/POP3 SRV records (RFC 6186 §3, RFC 8314 §5.1)
    and the autoconfig name Thunderbird tries.

    @raise DKIMError: bad domain, or its key cannot be read.
    """
    domain = _check_domain(domain)
    host = f"{hostname}."
    lines = [
        f"{domain}. IN MX 10 {host}",
        f'{domain}. IN TXT "v=spf1 mx -all"',
    ]
    key = keys.signing_key(domain)
    if key is not None:
        name, value = keys.txt_record(key)
        lines.append(f"{name}. IN TXT {quoted_strings(value)}")
    lines += [
        f'_dmarc.{domain}. IN TXT "v=DMARC1; p=quarantine; rua=mailto:postmaster@{domain}"',
        f"_submission._tcp.{domain}. IN SRV 0 1 587 {host}",
        f"_submissions._tcp.{domain}. IN SRV 0 1 465 {host}",
        f"_imap._tcp.{domain}. IN SRV 0 1 143 {host}",
        f"_imaps._tcp.{domain}. IN SRV 0 1 993 {host}",
        f"_pop3s._tcp.{domain}. IN SRV 0 1 995 {host}",
        f"autoconfig.{domain}. IN CNAME {host}",
    ]
    return lines


def quoted_strings(value: str) -> str:
    """A TXT value as quoted strings of at most 255 octets each (RFC 1035 §3.3.14)."""
    return " ".join(f'"{value[i : i + 255]}"' for i in range(0, len(value), 255))
