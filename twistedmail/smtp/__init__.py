"""SMTP: the ESMTP session (L{server}), the port-25 policy (L{inbound}) and submission on
587/465 (L{submission}).  RFC 5321, 6409, 8314."""

from twistedmail.smtp.inbound import inbound_factory
from twistedmail.smtp.submission import submission_factory

__all__ = ["inbound_factory", "submission_factory"]
