"""twistd plugin: ``twistd twistedmail`` (kept import-light: twistd imports it on every scan)."""

from twisted.application.service import ServiceMaker

twistedmail = ServiceMaker(
    "twistedmail",
    "twistedmail.tap",
    "A complete mail server: SMTP, submission, IMAP and POP3 over Maildir.",
    "twistedmail",
)
