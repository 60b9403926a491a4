"""DKIM signing of outgoing mail (RFC 6376, RFC 8463) and the DNS records a domain publishes.

Keys live in C{DATA_DIR/dkim/}, PEM, mode 0600: C{<domain>.<selector>.key} an RSA 2048-bit
key (RFC 6376 §3.3.3: at least 1024 bits, 2048 recommended by RFC 8301 §3.2), and
C{<domain>.<selector>.ed25519} an Ed25519 key (RFC 8463, PKCS#8).  The default selectors are
C{twistedmail} (RSA) and C{twistedmail-ed25519}; a new selector (e.g. C{tm2027}) is how a key
is rotated: the most recently written key of each algorithm signs, so generate the new key,
publish its TXT record, wait for DNS, and the next message uses it.

A message is signed (relaxed/relaxed, RFC 6376 §3.4.2, §3.4.4) when the domain of its
C{From:} header (the author domain DMARC aligns with, RFC 7489 §3.1) has a key; otherwise it
is left unchanged: rsa-sha256 (RFC 6376 §3.3) with the RSA key, and ed25519-sha256 as well
when the domain has an Ed25519 key (RFC 8463 §4: sign with both, as verifiers that do not
know Ed25519 ignore that signature).  The RSA signature comes first.  Each covers the
headers of L{SIGNED_HEADERS} that the message has (RFC 6376 §5.4.1: From is REQUIRED).

C{dkimpy} does the cryptography and canonicalization; this module chooses keys and headers.
All functions do blocking file I/O and CPU work: call them in a thread from reactor code.
"""

from __future__ import annotations

import base64
import email.parser
import email.policy
import email.utils
import os
import re
from pathlib import Path
from typing import Any

import attrs
import dkim as dkimpy
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa
from twisted.logger import Logger

from twistedmail.address import AddressError, normalize_domain
from twistedmail.fsync import fsync_dir, write_file

log = Logger()

RSA, ED25519 = "rsa", "ed25519"  # the k= tag values (RFC 6376 §3.6.1, RFC 8463 §4)
ALGORITHMS = (RSA, ED25519)
DEFAULT_SELECTOR = "twistedmail"
DEFAULT_SELECTORS = {RSA: DEFAULT_SELECTOR, ED25519: "twistedmail-ed25519"}
KEY_BITS = 2048
_SUFFIX = {RSA: ".key", ED25519: ".ed25519"}  # file name endings
KEY_SUFFIXES = tuple(_SUFFIX.values())
_SIGNATURE_ALGORITHM = {RSA: b"rsa-sha256", ED25519: b"ed25519-sha256"}

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
    """One domain's private key: C{domain} (d=), C{selector} (s=), C{path} of the PEM file,
    C{algorithm} L{RSA} or L{ED25519} (k=)."""

    domain: str
    selector: str
    path: Path
    algorithm: str = RSA


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
        self._reported: set[tuple[str, str]] = set()  # (path, error) already logged

    def _report_once(self, path: Path, error: str) -> None:
        """Log a key (or the key directory) the server cannot read, once per path and
        error: mail goes on, signed with the keys that can be read (issue 9)."""
        if (str(path), error) in self._reported:
            return
        self._reported.add((str(path), error))
        log.error(
            "dkim: cannot read {path}: {error}; signing with the keys that can be read"
            " (make it readable by the server's user, e.g. chown it like the data dir)",
            path=str(path),
            error=error,
        )

    def path(self, domain: str, selector: str, algorithm: str = RSA) -> Path:
        return self.directory / f"{domain}.{selector}{_SUFFIX[algorithm]}"

    def generate(
        self, domain: str, selector: str | None = None, algorithm: str = RSA
    ) -> SigningKey:
        """Make a new key for C{domain} (RSA 2048 or Ed25519); write it with mode 0600.

        @param selector: default L{DEFAULT_SELECTORS}C{[algorithm]}.
        @raise DKIMError: bad domain, selector or algorithm, or the domain has a key with
            that selector already (of either algorithm: they would share one DNS name).
        """
        if algorithm not in ALGORITHMS:
            raise DKIMError(f"unknown algorithm {algorithm!r} (rsa or ed25519)")
        domain = _check_domain(domain)
        selector = _check_selector(selector or DEFAULT_SELECTORS[algorithm])
        for other in ALGORITHMS:
            existing = self.path(domain, selector, other)
            if existing.exists():
                raise DKIMError(
                    f"a key for {domain} with selector {selector} already exists: {existing}"
                )
        path = self.path(domain, selector, algorithm)
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        key: rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
        if algorithm == RSA:
            key = rsa.generate_private_key(public_exponent=65537, key_size=KEY_BITS)
            pem_format = serialization.PrivateFormat.TraditionalOpenSSL
        else:
            key = ed25519.Ed25519PrivateKey.generate()
            pem_format = serialization.PrivateFormat.PKCS8
        pem = key.private_bytes(
            serialization.Encoding.PEM, pem_format, serialization.NoEncryption()
        )
        tmp = path.with_name(path.name + ".tmp")
        write_file(tmp, pem, exclusive=False)  # every byte, fsynced
        os.replace(tmp, path)
        fsync_dir(path.parent)
        return SigningKey(domain, selector, path, algorithm)

    def keys(self, domain: str) -> list[SigningKey]:
        """C{domain}'s keys of both algorithms, newest (by modification time) first; empty
        when there are none."""
        prefix = f"{domain}."
        found: list[tuple[float, SigningKey]] = []
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        except OSError as e:  # e.g. a dkim/ made by root for a server that dropped root
            self._report_once(self.directory, e.strerror or str(e))
            return []
        for name in names:
            p = self.directory / name
            for algorithm, suffix in _SUFFIX.items():
                if not (name.startswith(prefix) and name.endswith(suffix)):
                    continue
                selector = name[len(prefix) : -len(suffix)]
                if not selector or "." in selector:
                    continue
                try:
                    mtime = p.stat().st_mtime
                except OSError as e:
                    self._report_once(p, e.strerror or str(e))
                    continue
                found.append((mtime, SigningKey(domain, selector, p, algorithm)))
        return [k for _, k in sorted(found, key=lambda t: (-t[0], t[1].selector))]

    def signing_keys(self, domain: str) -> list[SigningKey]:
        """The keys that sign C{domain}'s mail now: the newest of each algorithm, RSA first."""
        newest: dict[str, SigningKey] = {}
        for key in self.keys(domain):
            newest.setdefault(key.algorithm, key)
        return [newest[a] for a in ALGORITHMS if a in newest]

    def _readable(self, key: SigningKey) -> bool:
        """Whether the server can open C{key}'s file; if not, it is reported once and the
        message is signed with the other keys (an older key of the same algorithm is not
        used instead: its DNS record may be gone)."""
        try:
            with open(key.path, "rb"):
                return True
        except OSError as e:
            self._report_once(key.path, e.strerror or str(e))
            return False

    def signing_key(self, domain: str) -> SigningKey | None:
        """The newest RSA key of C{domain}, or None."""
        return next((k for k in self.keys(domain) if k.algorithm == RSA), None)

    def txt_record(self, key: SigningKey) -> tuple[str, str]:
        """The DNS name and TXT value to publish for C{key} (RFC 6376 §3.6.1): for RSA the
        DER SubjectPublicKeyInfo, for Ed25519 the raw 32-octet public key (RFC 8463 §4).

        @return: C{("<selector>._domainkey.<domain>", "v=DKIM1; k=rsa; p=...")}.
        @raise DKIMError: the key file cannot be read.
        """
        private = _load(key)
        if key.algorithm == ED25519:
            public = private.public_key().public_bytes(
                serialization.Encoding.Raw, serialization.PublicFormat.Raw
            )
        else:
            public = private.public_key().public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        p = base64.b64encode(public).decode("ascii")
        return f"{key.selector}._domainkey.{key.domain}", f"v=DKIM1; k={key.algorithm}; p={p}"

    def sign(self, message: bytes) -> bytes:
        """C{message} with a C{DKIM-Signature:} header prepended per signing key (RSA, then
        Ed25519 when the domain has one), or unchanged when its From: domain has no key or it
        cannot be signed (logged; mail is never held up).

        @param message: the whole message, header and body, as queued.
        """
        domain = author_domain(message)
        if domain is None:
            return message
        keys = [k for k in self.signing_keys(domain) if self._readable(k)]
        if not keys:
            return message
        linesep = b"\r\n" if b"\r\n" in message[:4096] or not message else b"\n"
        present = _header_names(message)
        include = [h.encode("ascii") for h in SIGNED_HEADERS if h in present]
        signatures = b""
        for key in keys:
            try:
                signatures += dkimpy.sign(
                    message,
                    key.selector.encode("ascii"),
                    key.domain.encode("ascii"),
                    _dkimpy_private_key(key),
                    canonicalize=(b"relaxed", b"relaxed"),
                    signature_algorithm=_SIGNATURE_ALGORITHM[key.algorithm],
                    include_headers=include,
                    linesep=linesep,
                )
            except Exception:
                log.failure(
                    "dkim: not signed for {domain} (selector {selector}, {algorithm})",
                    domain=key.domain,
                    selector=key.selector,
                    algorithm=key.algorithm,
                )
        return signatures + message if signatures else message


def _load(key: SigningKey) -> Any:
    try:
        return serialization.load_pem_private_key(key.path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as e:
        raise DKIMError(f"cannot read DKIM key {key.path}: {e}") from None


def _dkimpy_private_key(key: SigningKey) -> bytes:
    """The key as dkimpy takes it: the PEM for RSA, the base64 32-octet seed for Ed25519."""
    if key.algorithm == RSA:
        return key.path.read_bytes()
    seed = _load(key).private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )
    return base64.b64encode(seed)


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


_FIELD_NAME = re.compile(rb"[\x21-\x39\x3b-\x7e]+:")  # RFC 5322 §3.6.8 ftext, then ":"


def _from_fields(block: bytes) -> list[str] | None:
    """The From: fields of a header block as Python's email parser (compat32) returns
    them, read by a scan of the lines (RFC 5322 §2.2, §2.2.3 folding); C{None} for a block
    the scan does not read the parser's way (a line that is no field and no folding, a
    folded first line, non-ASCII in a From: field): the parser reads those."""
    fields: list[list[bytes]] = []
    current: list[bytes] | None = None
    first = True
    for line in block.splitlines(keepends=True):
        if line in (b"\r\n", b"\n", b"\r"):
            break
        if line[:1] in (b" ", b"\t"):
            if first:
                return None
            if current is not None:
                current.append(line)
        elif _FIELD_NAME.match(line):
            if line[: line.index(b":")].lower() == b"from":
                current = [line[line.index(b":") + 1 :].lstrip(b" \t")]
                fields.append(current)
            else:
                current = None
        else:
            return None
        first = False
    values = [b"".join(f) for f in fields]
    if any(not v.isascii() for v in values):
        return None
    return [v.decode("ascii").rstrip("\r\n") for v in values]


_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"  # RFC 5322 §3.2.3 atext
_DOT_ATOM = rf"{_ATOM}(?:\.{_ATOM})*"
_LABELS = r"[A-Za-z0-9-]+(?:\.[A-Za-z0-9-]+)*"
_SIMPLE_FROM = re.compile(
    rf"[ \t]*(?:{_DOT_ATOM}@({_LABELS})"
    rf"|(?:(?:{_ATOM}[ \t]+)*{_ATOM}[ \t]*)?<{_DOT_ATOM}@({_LABELS})>)[ \t]*"
)
"""A From: value that is one plain address, bare or in angle brackets after a display name of
atoms or none (RFC 5322 §3.4): no quotes, comments, groups, literals or folding; its domain
is group 1 or 2.  (L{author_domain}'s test holds it to what C{getaddresses} reads.)"""


def author_domain(message: bytes) -> str | None:
    """The domain of the single address in the From: header (RFC 5322 §3.6.2), lower
    case, or None when there is no From:, several, or it does not parse."""
    block = _header_block(message)
    values: list[Any] | None = _from_fields(block)  # the email parser costs ~0.1 ms
    if values is None:
        parsed = email.parser.BytesHeaderParser(policy=email.policy.compat32).parsebytes(block)
        values = parsed.get_all("From") or []
    if len(values) != 1:
        return None
    simple = _SIMPLE_FROM.fullmatch(values[0]) if type(values[0]) is str else None
    if simple is not None:  # getaddresses (~20 us) reads these the same way
        domain = simple[1] or simple[2]
    else:
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
    for key in keys.signing_keys(domain):
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
