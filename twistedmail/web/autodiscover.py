"""Outlook's POX autodiscover ("Plain Old XML", the 2006 schemas), which Outlook and many
phone mail apps POST to C{https://autodiscover.DOMAIN/autodiscover/autodiscover.xml}.

Request (MS-OXDSCLI §2.2.3)::

    <Autodiscover xmlns="http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006">
      <Request><EMailAddress>user@example.org</EMailAddress>
      <AcceptableResponseSchema>...responseschema/2006a</AcceptableResponseSchema></Request>
    </Autodiscover>

The answer has one C{Protocol} per IMAP, POP3 and SMTP port that listens, implicit TLS
first.  The request is parsed with defusedxml: no DTD, no entity, no external reference is
ever resolved; anything that is not such a request is L{AutodiscoverError} (HTTP 400).
"""

from __future__ import annotations

from xml.etree import ElementTree

import defusedxml.ElementTree
from defusedxml import DefusedXmlException

from twistedmail.web.mailsettings import IMPLICIT, MailSettings

REQUEST_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
RESPONSE_NS = "http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006"
OUTLOOK_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
PATHS = ((b"autodiscover", b"autodiscover.xml"), (b"Autodiscover", b"Autodiscover.xml"))
MAX_REQUEST = 16384  # octets; a real request is about 400
TYPES = {"imap": "IMAP", "pop3": "POP3", "smtp": "SMTP"}


class AutodiscoverError(Exception):
    """The request body is not an autodiscover request (HTTP 400)."""


def requested_address(body: bytes) -> str:
    """The C{EMailAddress} of a POX request.  @raise AutodiscoverError: otherwise."""
    try:
        root = defusedxml.ElementTree.fromstring(body, forbid_dtd=True)
    except (ElementTree.ParseError, DefusedXmlException, ValueError) as e:
        raise AutodiscoverError(f"not XML: {e}") from None
    if root.tag != f"{{{REQUEST_NS}}}Autodiscover":
        raise AutodiscoverError("not an Outlook autodiscover request")
    address = root.findtext(f"{{{REQUEST_NS}}}Request/{{{REQUEST_NS}}}EMailAddress")
    if not address:
        raise AutodiscoverError("no EMailAddress")
    return address.strip()


def response(address: str, settings: MailSettings) -> bytes:
    """The POX response for C{address} (already known to be of a local domain)."""
    # Default namespaces written as plain xmlns attributes, as Exchange does: clients that
    # match tag names without a namespace (many phone apps) read it too.
    root = ElementTree.Element("Autodiscover", xmlns=RESPONSE_NS)
    answer = ElementTree.SubElement(root, "Response", xmlns=OUTLOOK_NS)
    account = ElementTree.SubElement(answer, "Account")
    _text(account, "AccountType", "email")
    _text(account, "Action", "settings")
    for protocol in ("imap", "pop3", "smtp"):
        for service in settings.of(protocol):
            entry = ElementTree.SubElement(account, "Protocol")
            _text(entry, "Type", TYPES[protocol])
            _text(entry, "Server", settings.hostname)
            _text(entry, "Port", str(service.port))
            _text(entry, "DomainRequired", "off")
            _text(entry, "LoginName", address)
            _text(entry, "SPA", "off")
            # Encryption overrides SSL: "SSL" implicit TLS, "TLS" STARTTLS
            _text(entry, "SSL", "on")
            _text(entry, "Encryption", "SSL" if service.tls == IMPLICIT else "TLS")
            _text(entry, "AuthRequired", "on")
            if protocol == "smtp":
                _text(entry, "UsePOPAuth", "off")
                _text(entry, "SMTPLast", "off")
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _text(parent: ElementTree.Element, name: str, value: str) -> None:
    ElementTree.SubElement(parent, name).text = value
