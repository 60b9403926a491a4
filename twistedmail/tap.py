"""twistd glue: C{twistd -n twistedmail [--config PATH]} (DESIGN §3).

A configuration or TLS error stops the start with one line on stderr naming the file and the
key, and exit status 1 (no traceback).
"""

from __future__ import annotations

import sys
from pathlib import Path

from twisted.application.service import IService
from twisted.python import usage

from twistedmail.config import ConfigError, load_config
from twistedmail.tls import TLSConfigError


class Options(usage.Options):
    optParameters = [
        [
            "config",
            "c",
            None,
            "TOML config file (default: $TWISTEDMAIL_CONFIG, else ./twistedmail.toml,"
            " else built-in defaults)",
        ],
    ]

    longdesc = "Run the twistedmail server: SMTP, submission, IMAP and POP3 over Maildir."


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        config = load_config(Path(options["config"]) if options["config"] else None)
        from twistedmail.service import MailServer

        return MailServer(config, reactor)
    except (ConfigError, TLSConfigError) as e:
        sys.stderr.write(f"twistedmail: error: {e}\n")
        sys.stderr.flush()
        raise SystemExit(1) from None
