"""MTA-STS (RFC 8461): the policy file and its DNS record; TLS reporting (RFC 8460).

The policy (RFC 8461 §3.2) is the same for every local domain: this server is the one MX.
It is served at C{https://mta-sts.DOMAIN/.well-known/mta-sts.txt} (§3.3: HTTPS only, media
type text/plain, no redirects).  The C{_mta-sts} TXT record's id (§3.1) is derived from the
policy text, so it changes exactly when the policy does, which is what tells senders to
fetch it again.
"""

from __future__ import annotations

import hashlib

PATH = (b".well-known", b"mta-sts.txt")


def policy(hostname: str, mode: str, max_age: int) -> bytes:
    """The policy text, RFC 8461 §3.2: C{version}, C{mode}, C{mx}, C{max_age}, CRLF lines."""
    return (f"version: STSv1\r\nmode: {mode}\r\nmx: {hostname}\r\nmax_age: {max_age}\r\n").encode(
        "ascii"
    )


def policy_id(text: bytes) -> str:
    """RFC 8461 §3.1 C{id}: 1-32 letters and digits; here 20 hex digits of the SHA-256."""
    return hashlib.sha256(text).hexdigest()[:20]


def dns_records(domain: str, hostname: str, mode: str, max_age: int) -> list[str]:
    """Zone-file lines for C{domain}: the policy host C{mta-sts.DOMAIN} (a CNAME to this
    server, which must then hold a certificate for that name, §3.3) and the C{_mta-sts}
    TXT record (§3.1)."""
    text = policy(hostname, mode, max_age)
    return [
        f"mta-sts.{domain}. IN CNAME {hostname}.",
        f'_mta-sts.{domain}. IN TXT "v=STSv1; id={policy_id(text)}"',
    ]


def tlsrpt_record(domain: str) -> str:
    """The TLS-RPT record, RFC 8460 §3: reports of failed TLS go to postmaster@DOMAIN."""
    return f'_smtp._tls.{domain}. IN TXT "v=TLSRPTv1; rua=mailto:postmaster@{domain}"'
