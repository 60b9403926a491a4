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
import getpass
import sqlite3
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

from twistedmail import config as config_module
from twistedmail import control
from twistedmail import dkim as dkim_module
from twistedmail.accounts import AccountStore, Quota, StoreError
from twistedmail.address import AddressError, Mailbox, normalize_domain
from twistedmail.auth import MAX_CREDENTIAL_LENGTH
from twistedmail.maildir import mailbox_root
from twistedmail.passwords import hash_password
from twistedmail.quota import UsageCache
from twistedmail.smtp.queue import QueueEntry, QueueError, Spool
from twistedmail.tls import TLSConfigError, server_context

PROG = "twistedmail"


class UserError(Exception):
    """A mistake the admin can fix; its message is printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as a L{UserError} (one line, exit 1), not exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


# reading passwords


def _password_from_stdin(stdin: TextIO) -> str:
    """Exactly one line from stdin, without its line end (C{\\n} or C{\\r\\n}) and nothing else."""
    raw = getattr(stdin, "buffer", None)
    if raw is not None:
        try:
            line = raw.readline().decode("utf-8")
        except UnicodeDecodeError:
            raise UserError("the password on stdin is not valid UTF-8") from None
    else:
        line = stdin.readline()
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line


def _password_from_prompt() -> str:
    try:
        first = getpass.getpass("Password: ")
        second = getpass.getpass("Retype password: ")
    except EOFError:
        raise UserError("no password given (use --password-stdin to pipe one)") from None
    if first != second:
        raise UserError("passwords do not match")
    return first


def read_password(from_stdin: bool) -> str:
    """The new password, from one stdin line or two interactive prompts.

    @raise UserError: when empty, mistyped, too long for a login (L{MAX_CREDENTIAL_LENGTH}
        characters, the limit L{twistedmail.auth} enforces) or containing NUL (SASL PLAIN
        separates fields with NUL, RFC 4616 §2, so such a password could never log in).
    """
    password = _password_from_stdin(sys.stdin) if from_stdin else _password_from_prompt()
    if not password:
        raise UserError("empty password")
    if len(password) > MAX_CREDENTIAL_LENGTH:
        raise UserError(f"password longer than {MAX_CREDENTIAL_LENGTH} characters")
    if "\0" in password:
        raise UserError("password contains a NUL character")
    return password


def _address(text: str) -> Mailbox:
    try:
        return Mailbox.parse(text)
    except AddressError as e:
        raise UserError(f"invalid address {text!r}: {e}") from None


# config and store


class _Context:
    """What a command needs: the loaded config and, on demand, the account store."""

    def __init__(self, config_path: Path | None) -> None:
        self.config_path = config_path
        self.config = config_module.load_config(config_path)
        self._store: AccountStore | None = None

    def store(self, create: bool = True) -> AccountStore:
        """Open the account store; C{create=False} refuses to create a missing one (reads).

        @raise UserError: when the store is missing and C{create} is false.
        """
        if self._store is None:
            path = config_module.store_path(self.config)
            if create:
                config_module.ensure_data_dir(self.config)
            elif not path.exists():
                data_dir = self.config.server.data_dir
                raise UserError(
                    f"no account store in {data_dir} (add a user first, or check --config)"
                )
            self._store = AccountStore(path)
        return self._store

    def close(self) -> None:
        if self._store is not None:
            self._store.close()


def _out(text: str) -> None:
    print(text, file=sys.stdout)


# commands


def cmd_user_add(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.address)
    store = ctx.store()
    if store.is_user(str(mbox)):
        raise UserError(f"user {mbox} already exists")
    if store.alias_targets(str(mbox)):
        raise UserError(f"{mbox} is already an alias")
    password = read_password(args.password_stdin)
    quota = Quota(storage=ctx.config.limits.default_quota)
    mbox, added_domain = store.add_user(str(mbox), hash_password(password), quota)
    if added_domain:
        _out(f"added domain {mbox.domain}")
    _out(f"added user {mbox}")


def cmd_user_passwd(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.address)
    store = ctx.store(create=False)
    if not store.is_user(str(mbox)):
        raise UserError(f"no such user {mbox}")
    password = read_password(args.password_stdin)
    store.set_password_hash(str(mbox), hash_password(password))
    _out(f"changed password of {mbox}")


def cmd_user_del(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.address)
    ctx.store(create=False).delete_user(str(mbox))
    _out(f"deleted user {mbox} (its mail is kept)")


def cmd_user_list(ctx: _Context, args: argparse.Namespace) -> None:
    store = ctx.store(create=False)
    if not args.quota:
        for user in store.users():
            _out(user)
        return
    cache = UsageCache()
    for user, quota in store.quotas():
        _out(_quota_line(ctx, user, quota, cache))


def format_size(octets: int) -> str:
    """C{2147483648} -> C{"2GiB"}, C{500000000} -> C{"500MB"}: the largest unit that divides
    it (binary first, as C{user quota} accepts them), else octets."""
    units = (("GiB", 2**30), ("MiB", 2**20), ("GB", 10**9), ("MB", 10**6), ("KiB", 2**10))
    for unit, factor in units + (("KB", 1000),):
        if octets and octets % factor == 0:
            return f"{octets // factor}{unit}"
    return str(octets)


def _quota_line(ctx: _Context, user: str, quota: Quota, cache: UsageCache) -> str:
    """C{ADDRESS storage=USED/LIMIT messages=USED/LIMIT}, used in octets, C{none} for no
    limit."""
    usage = cache.measure(mailbox_root(config_module.mail_dir(ctx.config), user))
    storage = format_size(quota.storage) if quota.storage else "none"
    messages = str(quota.messages) if quota.messages else "none"
    return f"{user} storage={usage.storage}/{storage} messages={usage.messages}/{messages}"


def cmd_user_quota(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.address)
    store = ctx.store(create=False)
    current = store.quota(str(mbox))
    if current is None:
        raise UserError(f"no such user {mbox}")
    if args.size is None and args.messages is None:
        _out(_quota_line(ctx, str(mbox), current, UsageCache()))
        return
    storage = current.storage
    if args.size is not None:
        try:
            storage = config_module.parse_quota(args.size)
        except ValueError as e:
            raise UserError(f"invalid size {args.size!r}: {e}") from None
    messages = current.messages
    if args.messages is not None:
        if not args.messages.isdigit():
            raise UserError(f"invalid message count {args.messages!r}: 0 (none) or more")
        messages = int(args.messages)
    store.set_quota(str(mbox), Quota(storage, messages))
    _out(
        f"quota of {mbox}: storage {format_size(storage) if storage else 'unlimited'},"
        f" messages {messages or 'unlimited'}"
    )


def cmd_domain_add(ctx: _Context, args: argparse.Namespace) -> None:
    name = ctx.store().add_domain(args.domain)
    _out(f"added domain {name}")


def cmd_domain_del(ctx: _Context, args: argparse.Namespace) -> None:
    try:
        name = normalize_domain(args.domain)
    except AddressError as e:
        raise UserError(f"invalid domain {args.domain!r}: {e}") from None
    ctx.store(create=False).delete_domain(name)
    _out(f"deleted domain {name}")


def cmd_domain_list(ctx: _Context, args: argparse.Namespace) -> None:
    for domain in ctx.store(create=False).domains():
        _out(domain)


def cmd_alias_add(ctx: _Context, args: argparse.Namespace) -> None:
    alias = ctx.store().add_alias(args.alias, args.targets)
    _out(f"{alias.address} -> {', '.join(alias.targets)}")


def cmd_alias_del(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.alias)
    ctx.store(create=False).delete_alias(str(mbox))
    _out(f"deleted alias {mbox}")


def cmd_alias_list(ctx: _Context, args: argparse.Namespace) -> None:
    for alias in ctx.store(create=False).aliases():
        _out(" ".join((alias.address, *alias.targets)))


def cmd_check_config(ctx: _Context, args: argparse.Namespace) -> None:
    tls = ctx.config.tls
    if tls.cert is not None and tls.key is not None:
        server_context(tls.cert, tls.key)
    from twistedmail.service import smarthost  # the smarthost's CA and password files

    smarthost(ctx.config)
    source = ctx.config.source
    _out(f"config OK: {source if source is not None else 'defaults'}")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def _spool(ctx: _Context) -> Spool:
    return Spool(config_module.queue_dir(ctx.config))


def _entry(ctx: _Context, queue_id: str) -> QueueEntry:
    hex_id = all(c in "0123456789abcdefABCDEF" for c in queue_id)
    entry = _spool(ctx).load(queue_id.upper() if hex_id else queue_id)
    if entry is None:
        raise UserError(f"no queued message {queue_id}")
    return entry


def _dkim_keys(ctx: _Context) -> dkim_module.KeyStore:
    return dkim_module.KeyStore(ctx.config.server.data_dir / "dkim")


def cmd_dkim_generate(ctx: _Context, args: argparse.Namespace) -> None:
    keys = _dkim_keys(ctx)
    key = keys.generate(args.domain, args.selector, args.algorithm)
    name, value = keys.txt_record(key)
    _out(f"# {key.path}")
    _out(f"{name}. IN TXT {dkim_module.quoted_strings(value)}")


def cmd_dns_records(ctx: _Context, args: argparse.Namespace) -> None:
    for line in dkim_module.dns_records(args.domain, ctx.config.server.hostname, _dkim_keys(ctx)):
        _out(line)


def cmd_queue_list(ctx: _Context, args: argparse.Namespace) -> None:
    now = time.time()
    for entry in _spool(ctx).entries():
        waiting = [r.address for r in entry.recipients if r.state == "pending"]
        _out(
            f"{entry.id} age={_age(now - entry.created)} from=<{entry.sender or ''}>"
            f" to={','.join(waiting) or '-'} attempts={entry.attempts}"
            f" next={_when(entry.next_try)} error={_one_line(entry.last_error) or '-'}"
        )


def cmd_queue_show(ctx: _Context, args: argparse.Namespace) -> None:
    entry = _entry(ctx, args.id)
    _out(f"id: {entry.id}")
    _out(f"from: <{entry.sender or ''}>")
    _out(f"created: {_when(entry.created)}")
    _out(f"size: {entry.size}")
    _out(f"attempts: {entry.attempts}")
    _out(f"next try: {_when(entry.next_try)}")
    _out(f"last error: {_one_line(entry.last_error) or '-'}")
    for r in entry.recipients:
        detail = f" {r.status} {_one_line(r.diagnostic)}" if r.diagnostic else ""
        _out(f"to: <{r.address}> {r.state}{detail}")
    try:
        message = _spool(ctx).read_message(entry.id)
    except FileNotFoundError:
        raise UserError(f"queued message {entry.id} has no message file") from None
    end = message.find(b"\r\n\r\n")
    _out("")
    _out(message[: end if end >= 0 else len(message)].decode("utf-8", "replace"))


def cmd_queue_delete(ctx: _Context, args: argparse.Namespace) -> None:
    entry = _entry(ctx, args.id)
    _spool(ctx).remove(entry.id)
    _out(f"deleted {entry.id}")


def cmd_queue_flush(ctx: _Context, args: argparse.Namespace) -> None:
    try:
        count = control.flush(config_module.control_path(ctx.config))
    except control.NoServer:
        raise UserError("no running server") from None
    _out(f"flushed: {count} message(s) in the queue, all due now")


def cmd_connections(ctx: _Context, args: argparse.Namespace) -> None:
    try:
        counts = control.connections(config_module.control_path(ctx.config))
    except control.NoServer:
        raise UserError("no running server") from None
    for name, count in counts.items():
        _out(f"{name} {count}")


Command = Callable[[_Context, argparse.Namespace], None]


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog=PROG, description="Administer twistedmail users, domains and aliases.")
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

    users = group("user", "manage users (mailboxes that can log in)")
    p = action(users, "add", cmd_user_add, "add a user (and its domain if new)")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = action(users, "passwd", cmd_user_passwd, "set a user's password")
    p.add_argument("address")
    p.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    p = action(users, "del", cmd_user_del, "delete a user (the Maildir is kept)")
    p.add_argument("address")
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
    action(domains, "list", cmd_domain_list, "list domains, one per line")

    aliases = group("alias", "manage aliases (addresses that forward to others)")
    p = action(aliases, "add", cmd_alias_add, "point ALIAS at TARGETs (adds to existing)")
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

    p = commands.add_parser("check-config", help="load the config and TLS files, report errors")
    p.set_defaults(func=cmd_check_config)

    p = commands.add_parser(
        "connections", help="show the running server's open connections per listener"
    )
    p.set_defaults(func=cmd_connections)
    return parser


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def _error(message: str) -> int:
    print(f"{PROG}: error: {_one_line(message)}", file=sys.stderr)
    return 1


def main(argv: Sequence[str] | None = None) -> int:
    """Run one admin command; return the exit status (0 ok, 1 user error)."""
    ctx: _Context | None = None
    try:
        args = build_parser().parse_args(argv)
        ctx = _Context(args.config)
        args.func(ctx, args)
        return 0
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
    except OSError as e:
        where = f": {e.filename}" if e.filename else ""
        return _error(f"{e.strerror or e}{where}")
    except KeyboardInterrupt:
        return _error("interrupted")
    finally:
        if ctx is not None:
            ctx.close()


if __name__ == "__main__":
    sys.exit(main())
