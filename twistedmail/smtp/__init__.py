"""SMTP: the ESMTP session (L{session}), what a listener accepts (L{policy}), local
recipients (L{recipients}), trace headers (L{trace}), the port-25 policy (L{inbound}) and
submission on 587/465 (L{submission}); the outbound queue (L{queue}) and transport
(L{outbound}).  RFC 5321, 6409, 8314."""

from twistedmail.smtp.inbound import inbound_factory
from twistedmail.smtp.submission import submission_factory

__all__ = ["inbound_factory", "submission_factory"]
