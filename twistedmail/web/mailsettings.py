"""What a mail client needs to know to set up an account: the public hostname and, per
protocol, the ports that listen and their TLS (RFC 8314 §3 implicit TLS, RFC 3207/2595
STARTTLS).  Shared by autoconfig, autodiscover and the Apple profile."""

from __future__ import annotations

from collections.abc import Callable

import attrs

from twistedmail.address import AddressError, Mailbox, normalize_domain

IMPLICIT = "SSL"
STARTTLS = "STARTTLS"


@attrs.frozen
class MailService:
    """One listening port a client may use.  C{protocol}: C{"imap"}, C{"pop3"} or
    C{"smtp"} (submission); C{tls}: L{IMPLICIT} or L{STARTTLS}."""

    protocol: str
    port: int
    tls: str


@attrs.frozen
class MailSettings:
    """The public face of the server: C{hostname} (what clients connect to and the
    certificate names), C{services} in order of preference (implicit TLS first, RFC 8314
    §3), C{is_local_domain} (the account store's, read live)."""

    hostname: str
    services: tuple[MailService, ...]
    is_local_domain: Callable[[str], bool]

    def of(self, protocol: str) -> tuple[MailService, ...]:
        """The services of one protocol, in order of preference."""
        return tuple(s for s in self.services if s.protocol == protocol)

    def local_domain(self, text: str) -> str | None:
        """C{text} as a normalized local domain, or C{None} (not a domain, or not ours)."""
        try:
            domain = normalize_domain(text)
        except AddressError:
            return None
        return domain if self.is_local_domain(domain) else None

    def local_address(self, text: str) -> Mailbox | None:
        """C{text} as an address of a local domain, or C{None}."""
        try:
            mailbox = Mailbox.parse(text.strip())
        except AddressError:
            return None
        if mailbox.literal or mailbox.quoted or self.local_domain(mailbox.domain) is None:
            return None
        return mailbox
