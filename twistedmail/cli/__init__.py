"""The C{twistedmail} admin command: users, domains, aliases, the outbound queue, and a config
check (DESIGN §3).

C{twistedmail [--config PATH] COMMAND ...} finds the config as the server does
(L{twistedmail.config.load_config}: C{--config}, else C{$TWISTEDMAIL_CONFIG}, else
C{./twistedmail.toml}, else defaults) and writes the account store
(C{DATA_DIR/accounts.sqlite3}) directly; the running server reads it live (SQLite WAL), so a
change applies to the next SMTP/IMAP/POP3 login without a restart.  C{queue list|show|
delete} work on the spool directory (C{DATA_DIR/queue}) directly; C{queue flush} asks the
running server over its control socket (L{twistedmail.control}).

Contract for scripts: exit status 0 on success; 1 on a user error, with exactly one line
C{twistedmail: error: ...} on stderr and never a traceback; list commands print one item per
line on stdout and nothing else.
"""

from __future__ import annotations

import argparse
import os
import select
import sqlite3
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import twistedmail
from twistedmail import config as config_module
from twistedmail import dkim as dkim_module
from twistedmail.accounts import StoreError
from twistedmail.cli.common import PROG, UserError, _Context, _one_line, _Parser
from twistedmail.cli.operations import (
    IMPORT_PASSWORD_ENV,
    cmd_backup,
    cmd_export,
    cmd_import_imap,
    cmd_import_maildir,
    cmd_import_mbox,
    cmd_restore,
)
from twistedmail.cli.sieve import (
    cmd_sieve_activate,
    cmd_sieve_deactivate,
    cmd_sieve_delete,
    cmd_sieve_list,
    cmd_sieve_put,
    cmd_sieve_show,
    cmd_vacation,
)
from twistedmail.cli.status import (
    cmd_check,
    cmd_check_config,
    cmd_connections,
    cmd_dkim_generate,
    cmd_dns_records,
    cmd_queue_delete,
    cmd_queue_flush,
    cmd_queue_list,
    cmd_queue_show,
    cmd_status,
    cmd_throttle_list,
    cmd_throttle_unblock,
    preload_check,
)
from twistedmail.cli.users import (
    cmd_alias_add,
    cmd_alias_del,
    cmd_alias_list,
    cmd_domain_add,
    cmd_domain_del,
    cmd_domain_list,
    cmd_init,
    cmd_user_add,
    cmd_user_del,
    cmd_user_list,
    cmd_user_passwd,
    cmd_user_quota,
)
from twistedmail.smtp.queue import QueueError
from twistedmail.tls import TLSConfigError
from twistedmail.units import format_size

__all__ = ["UserError", "build_parser", "format_size", "main"]


Command = Callable[[_Context, argparse.Namespace], None]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Administer twistedmail users, domains and aliases.")
    parser.add_argument("--version", action="version", version=f"{PROG} {twistedmail.version()}")
    parser.add_argument(
        "--config",
        type=Path,
        metavar="PATH",
        help=(
            f"config file (default: ${config_module.ENV_VAR}, "
            f"else ./{config_module.DEFAULT_FILE}, else built-in defaults)"
        ),
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def group(name: str, help_text: str) -> argparse._SubParsersAction[Any]:
        sub = commands.add_parser(name, help=help_text)
        return sub.add_subparsers(dest="action", metavar="ACTION", required=True)

    def action(
        actions: argparse._SubParsersAction[Any],
        name: str,
        func: Command,
        help_text: str,
    ) -> argparse.ArgumentParser:
        p = actions.add_parser(name, help=help_text)
        p.set_defaults(func=func)
        return p

    p: argparse.ArgumentParser = commands.add_parser(
        "init", help="first setup: create the data dir and the account store (if missing)"
    )
    p.set_defaults(func=cmd_init)

    users = group("user", "manage users (mailboxes that can log in)")
    p = action(users, "add", cmd_user_add, "add a user (and its domain if new)")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p.add_argument(
        "--adopt-maildir",
        action="store_true",
        help="give the new user the Maildir already at its path (else that is refused)",
    )
    p = action(users, "passwd", cmd_user_passwd, "set a user's password")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = action(
        users, "del", cmd_user_del, "delete a user; its Maildir is moved to DATA_DIR/deleted/"
    )
    p.add_argument("address")
    p.add_argument("--keep-mail", action="store_true", help="leave the Maildir where it is instead")
    p = action(users, "list", cmd_user_list, "list users, one per line")
    p.add_argument(
        "--quota",
        action="store_true",
        help="add storage=USED/LIMIT messages=USED/LIMIT (octets; none = no limit)",
    )
    p = action(
        users,
        "quota",
        cmd_user_quota,
        "show a user's quota and usage, or set it (SIZE like 2GiB, 500MB; 0 or none: unlimited)",
    )
    p.add_argument("address")
    p.add_argument("size", nargs="?", help="storage limit: 2GiB, 500MB, 0 or none (unlimited)")
    p.add_argument("--messages", metavar="N", help="message count limit (0: unlimited)")

    domains = group("domain", "manage local domains")
    p = action(domains, "add", cmd_domain_add, "add a local domain")
    p.add_argument("domain")
    p = action(domains, "del", cmd_domain_del, "delete a domain that has no users")
    p.add_argument("domain")
    p.add_argument(
        "--keep-mail",
        action="store_true",
        help="leave mail/DOMAIN/ where it is (default: moved to DATA_DIR/deleted/)",
    )
    action(domains, "list", cmd_domain_list, "list domains, one per line")

    aliases = group("alias", "manage aliases (addresses that forward to others)")
    p = action(aliases, "add", cmd_alias_add, "point ALIAS or @DOMAIN (catch-all) at TARGETs")
    p.add_argument("alias")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p = action(aliases, "del", cmd_alias_del, "delete an alias")
    p.add_argument("alias")
    action(aliases, "list", cmd_alias_list, "list aliases: ALIAS TARGET... one per line")

    queue = group("queue", "inspect and manage the outbound queue")
    action(queue, "list", cmd_queue_list, "list queued messages, one per line")
    p = action(queue, "show", cmd_queue_show, "show one queued message's envelope and header")
    p.add_argument("id")
    p = action(queue, "delete", cmd_queue_delete, "delete a queued message (no bounce)")
    p.add_argument("id")
    action(queue, "flush", cmd_queue_flush, "make the running server try everything now")

    throttle = group("throttle", "see and lift the running server's failed-login blocks")
    action(
        throttle,
        "list",
        cmd_throttle_list,
        "list blocks, one per line: ip=IP [user=ADDRESS] | user=ADDRESS, left=, failures=",
    )
    p = action(
        throttle,
        "unblock",
        cmd_throttle_unblock,
        "lift the blocks of an IP (and its accounts) or of an address, forget their failures",
    )
    p.add_argument("target", metavar="IP|ADDRESS")

    signing = group("dkim", "manage DKIM signing keys (RFC 6376)")
    p = action(signing, "generate", cmd_dkim_generate, "make a key, print its DNS TXT record")
    p.add_argument("domain")
    p.add_argument(
        "--selector",
        default=None,
        help="DKIM selector (default: "
        + ", ".join(f"{s} for {a}" for a, s in dkim_module.DEFAULT_SELECTORS.items())
        + ")",
    )
    p.add_argument(
        "--algorithm",
        choices=dkim_module.ALGORITHMS,
        default=dkim_module.RSA,
        help="rsa (2048-bit, rsa-sha256; the default) or ed25519 (RFC 8463, signs in addition"
        " to the RSA key)",
    )
    p = commands.add_parser("dns-records", help="print the DNS records a domain should publish")
    p.add_argument("domain")
    p.set_defaults(func=cmd_dns_records)
    p = commands.add_parser(
        "check",
        help="look up what a domain publishes in the DNS and say per record whether it is right",
    )
    p.add_argument("domain")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.set_defaults(func=cmd_check)

    p = commands.add_parser("check-config", help="load the config and TLS files, report errors")
    p.set_defaults(func=cmd_check_config)

    p = commands.add_parser(
        "connections", help="show the running server's open connections per listener"
    )
    p.set_defaults(func=cmd_connections)

    p = commands.add_parser("status", help="show the running server's status")
    p.add_argument("--json", action="store_true", help="one JSON object, for scripts")
    p.set_defaults(func=cmd_status)
    sieve = group("sieve", "manage a user's Sieve filter scripts (Pigeonhole's layout)")
    p = action(sieve, "list", cmd_sieve_list, "list a user's scripts: NAME [(active)]")
    p.add_argument("address")
    p = action(sieve, "show", cmd_sieve_show, "print a script")
    p.add_argument("address")
    p.add_argument("name")
    p = action(sieve, "put", cmd_sieve_put, "store a script (compiled first) from FILE or -")
    p.add_argument("address")
    p.add_argument("name")
    p.add_argument("file", metavar="FILE", help="the script, or - for stdin")
    p.add_argument("--activate", action="store_true", help="also make it the active script")
    p = action(sieve, "activate", cmd_sieve_activate, "make a script the one that runs")
    p.add_argument("address")
    p.add_argument("name")
    p = action(sieve, "deactivate", cmd_sieve_deactivate, "run no script for a user")
    p.add_argument("address")
    p = action(sieve, "delete", cmd_sieve_delete, "delete a script (not the active one)")
    p.add_argument("address")
    p.add_argument("name")

    p = commands.add_parser(
        "vacation", help="turn a user's automatic vacation reply on or off (a Sieve script)"
    )
    p.set_defaults(func=cmd_vacation)
    p.add_argument("address")
    p.add_argument("--subject", help="the reply's subject")
    p.add_argument("--message-file", metavar="FILE", help="the reply's text (UTF-8), - for stdin")
    p.add_argument(
        "--days",
        type=int,
        help="answer each sender at most once in this many days (default 7, from 1 to 60)",
    )
    p.add_argument(
        "--replace",
        action="store_true",
        help="activate the vacation script even when the user's own script is active"
        " (kept, and active again after --off)",
    )
    p.add_argument("--off", action="store_true", help="remove the vacation reply")
    imports = group("import", "copy mail in from a Maildir, an mbox file or an IMAP server")
    p = action(
        imports,
        "maildir",
        cmd_import_maildir,
        "import a Dovecot/Courier Maildir++ tree (flags, keywords, folders, UIDs)",
    )
    p.add_argument("path")
    p.add_argument("address")
    p = action(imports, "mbox", cmd_import_mbox, "import an mbox file into one folder")
    p.add_argument("file")
    p.add_argument("address")
    p.add_argument("--folder", default="INBOX", help="target folder (default INBOX)")
    p.add_argument(
        "--quoting",
        choices=("mboxrd", "mboxo"),
        default="mboxrd",
        help="how '>From ' lines were quoted (default mboxrd)",
    )
    p = action(imports, "imap", cmd_import_imap, "pull every folder from an IMAP server over TLS")
    p.add_argument("address")
    p.add_argument("--host", required=True)
    p.add_argument("--port", type=int, default=0, help="default 993, or 143 with --starttls")
    p.add_argument("--user", required=True, help="the login name on that server")
    p.add_argument(
        "--password-file",
        help=f"read the password from this file (else ${IMPORT_PASSWORD_ENV}, else a prompt)",
    )
    p.add_argument("--starttls", action="store_true", help="STARTTLS on port 143, not IMAPS")
    p.add_argument("--ca-file", help="CA certificates to verify the server with (PEM)")
    p = commands.add_parser("export", help="copy a user's mail out as Maildir++ or mbox files")
    p.add_argument("address")
    p.add_argument("dir")
    p.add_argument("--format", choices=("maildir", "mbox"), default="maildir")
    p.set_defaults(func=cmd_export)
    p = commands.add_parser(
        "backup", help="a consistent copy of the data dir and config (the server may run)"
    )
    p.add_argument("dir")
    p.set_defaults(func=cmd_backup)
    p = commands.add_parser("restore", help="restore a backup into the data dir (server stopped)")
    p.add_argument("dir")
    p.add_argument("--force", action="store_true", help="move a non-empty data dir aside first")
    p.set_defaults(func=cmd_restore)
    return parser


def _error(message: str) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 1


def _stdout_gone() -> bool:
    """Whether stdout is a pipe whose reader has closed it (poll reports an error on it)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), 0)  # POLLERR and POLLHUP come unasked
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (OSError, ValueError, AttributeError):
        return False


def main(argv: Sequence[str] | None = None) -> int:
    """Run one admin command; return the exit status (0 ok, 1 user error)."""
    ctx: _Context | None = None
    try:
        args = build_parser().parse_args(argv)
        ctx = _Context(args.config)
        if args.func is not cmd_check_config:  # it reads root's TLS files first
            if args.func not in (cmd_init, cmd_restore):
                ctx.require_data_dir()
            if args.func is cmd_check:
                preload_check()
            ctx.act_as_data_dir_owner()
        return int(args.func(ctx, args) or 0)
    except (
        UserError,
        StoreError,
        TLSConfigError,
        config_module.ConfigError,
        QueueError,
        dkim_module.DKIMError,
    ) as e:
        return _error(str(e))
    except sqlite3.Error as e:
        return _error(f"account store: {e}")
    except BrokenPipeError as e:
        if not _stdout_gone():
            return _error(f"{e.strerror or e}")
        # The reader went away (`twistedmail domain list | head -1`): stop quietly, as
        # other tools do; what is left in stdout's buffer goes nowhere at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return _error(f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        return _error("interrupted")
    finally:
        if ctx is not None:
            ctx.close()
