"""The HTTP listener (DESIGN §2 web/): mail client autoconfiguration and the MTA-STS policy.

One twisted.web L{Site} serves, on C{[listen] http} and C{[listen] https}:

  - Thunderbird autoconfig (L{autoconfig}): C{/mail/config-v1.1.xml} on
    C{autoconfig.DOMAIN} and C{/.well-known/autoconfig/mail/config-v1.1.xml};
  - Outlook's POX autodiscover (L{autodiscover}): C{POST /autodiscover/autodiscover.xml};
  - an Apple configuration profile (L{mobileconfig}): C{/apple/email.mobileconfig};
  - the MTA-STS policy, RFC 8461 §3.3 (L{mtasts}): C{/.well-known/mta-sts.txt} on
    C{mta-sts.DOMAIN}, over HTTPS only.

L{site.build_site} makes the root resource (a plain resource tree: another feature mounts
its own path with C{root.putChild(b"name", resource)}, or with L{site.mount} below an
existing directory such as C{.well-known}), L{site.web_factory} the Site with the
listener's limits.  The running server's root is C{MailServer.web_root}; it serves both
C{[listen] http} and C{https}.  Every answer is for one local domain, named by the C{Host}
header or the address asked about; any other domain gets 404, never another domain's
settings.
"""

from twistedmail.web.mailsettings import MailService, MailSettings
from twistedmail.web.site import build_site, mount, web_factory

__all__ = ["MailService", "MailSettings", "build_site", "mount", "web_factory"]
