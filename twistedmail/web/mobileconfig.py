"""An Apple configuration profile (C{.mobileconfig}) that sets up one mail account on iOS,
iPadOS and macOS: an unsigned property list with one C{com.apple.mail.managed} payload
(Apple's "Mail" payload: IMAP, else POP3, in, SMTP out, the address as user name).

The UUIDs are derived from the address and the hostname, so installing the profile again
replaces the account instead of adding a second one.  Built with plistlib.
"""

from __future__ import annotations

import plistlib
import uuid

from twistedmail.address import Mailbox
from twistedmail.web.mailsettings import MailSettings

PATH = (b"apple", b"email.mobileconfig")
CONTENT_TYPE = b"application/x-apple-aspen-config"
ACCOUNT_TYPES = {"imap": "EmailTypeIMAP", "pop3": "EmailTypePOP"}


def profile(address: Mailbox, settings: MailSettings) -> bytes | None:
    """The profile for C{address} (of a local domain), as an XML plist; C{None} when no
    incoming or no submission port listens."""
    incoming = settings.of("imap") or settings.of("pop3")
    outgoing = settings.of("smtp")
    if not incoming or not outgoing:
        return None
    text = str(address)
    reverse = ".".join(reversed(settings.hostname.split(".")))
    identifier = f"{reverse}.mail.{address.local}.{address.domain}"
    account = {
        "PayloadType": "com.apple.mail.managed",
        "PayloadVersion": 1,
        "PayloadIdentifier": f"{identifier}.account",
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"mail:{text}@{settings.hostname}")),
        "PayloadDisplayName": text,
        "EmailAccountDescription": text,
        "EmailAccountType": ACCOUNT_TYPES[incoming[0].protocol],
        "EmailAddress": text,
        "IncomingMailServerAuthentication": "EmailAuthPassword",
        "IncomingMailServerHostName": settings.hostname,
        "IncomingMailServerPortNumber": incoming[0].port,
        "IncomingMailServerUseSSL": True,  # implicit TLS, or STARTTLS on the plain port
        "IncomingMailServerUsername": text,
        "OutgoingMailServerAuthentication": "EmailAuthPassword",
        "OutgoingMailServerHostName": settings.hostname,
        "OutgoingMailServerPortNumber": outgoing[0].port,
        "OutgoingMailServerUseSSL": True,
        "OutgoingMailServerUsername": text,
        "OutgoingPasswordSameAsIncomingPassword": True,
    }
    document = {
        "PayloadType": "Configuration",
        "PayloadVersion": 1,
        "PayloadIdentifier": identifier,
        "PayloadUUID": str(uuid.uuid5(uuid.NAMESPACE_URL, f"profile:{text}@{settings.hostname}")),
        "PayloadDisplayName": f"Mail: {text}",
        "PayloadDescription": f"Sets up the mail account {text} on {settings.hostname}.",
        "PayloadRemovalDisallowed": False,
        "PayloadContent": [account],
    }
    return plistlib.dumps(document, fmt=plistlib.FMT_XML, sort_keys=False)
