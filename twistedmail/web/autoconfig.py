"""Thunderbird autoconfiguration: the C{clientConfig} document, version 1.1.

Format: https://wiki.mozilla.org/Thunderbird:Autoconfiguration:ConfigFileFormat (Thunderbird
reads it with C{readFromXML.sys.mjs}).  Thunderbird asks
C{http://autoconfig.DOMAIN/mail/config-v1.1.xml?emailaddress=ADDR} and
C{https://DOMAIN/.well-known/autoconfig/mail/config-v1.1.xml?emailaddress=ADDR}; both get
the same document: every IMAP, POP3 and SMTP port that listens, implicit TLS first (RFC
8314 §3), user name C{%EMAILADDRESS%}, C{password-cleartext} (always inside TLS).

Built with xml.etree: no value is pasted into markup as text.
"""

from __future__ import annotations

from xml.etree import ElementTree

from twistedmail.web.mailsettings import MailSettings

INCOMING = ("imap", "pop3")
PATH = (b"mail", b"config-v1.1.xml")
WELL_KNOWN_PATH = (b".well-known", b"autoconfig", b"mail", b"config-v1.1.xml")


def client_config(domain: str, settings: MailSettings) -> bytes:
    """The C{clientConfig} document for the local C{domain}, UTF-8 with an XML declaration."""
    root = ElementTree.Element("clientConfig", version="1.1")
    provider = ElementTree.SubElement(root, "emailProvider", id=domain)
    ElementTree.SubElement(provider, "domain").text = domain
    ElementTree.SubElement(provider, "displayName").text = f"{domain} mail"
    ElementTree.SubElement(provider, "displayShortName").text = domain
    for protocol in INCOMING:
        for service in settings.of(protocol):
            server = ElementTree.SubElement(provider, "incomingServer", type=protocol)
            _server_fields(server, settings.hostname, service.port, service.tls)
    for service in settings.of("smtp"):
        server = ElementTree.SubElement(provider, "outgoingServer", type="smtp")
        _server_fields(server, settings.hostname, service.port, service.tls)
    ElementTree.indent(root)
    return ElementTree.tostring(root, encoding="utf-8", xml_declaration=True) + b"\n"


def _server_fields(server: ElementTree.Element, hostname: str, port: int, tls: str) -> None:
    ElementTree.SubElement(server, "hostname").text = hostname
    ElementTree.SubElement(server, "port").text = str(port)
    ElementTree.SubElement(server, "socketType").text = tls  # "SSL" or "STARTTLS"
    ElementTree.SubElement(server, "authentication").text = "password-cleartext"
    ElementTree.SubElement(server, "username").text = "%EMAILADDRESS%"
