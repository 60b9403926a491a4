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
import ipaddress
import json
import os
import pwd
import sqlite3
import sys
import time
from collections.abc import Callable, Coroutine, Sequence
from pathlib import Path
from typing import Any, NoReturn, TextIO

import twistedmail
from twistedmail import backup as backup_module
from twistedmail import config as config_module
from twistedmail import control, dnscheck, importer
from twistedmail import dkim as dkim_module
from twistedmail.accounts import AccountStore, Quota, StoreError
from twistedmail.address import AddressError, Mailbox, normalize_domain
from twistedmail.auth import MAX_CREDENTIAL_LENGTH
from twistedmail.maildir import MaildirError, UserMaildir, mailbox_root, make_maildir
from twistedmail.passwords import hash_password
from twistedmail.quota import UsageCache
from twistedmail.sieve import store as sieve_store
from twistedmail.sieve import vacation as vacation_module
from twistedmail.sieve.grammar import SieveError
from twistedmail.sieve.store import SieveStore
from twistedmail.sieve.validate import compile_script
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
        self._root_ids: tuple[list[int], int] | None = None

    def act_as_data_dir_owner(self) -> None:
        """Run as root against a data dir owned by another user (the server's, after
        C{twistd -u}): switch the effective user and groups to the data dir's owner, so
        every file and directory a command creates there (the store's SQLite files and
        their -wal/-shm, DKIM keys, Maildirs, deleted/) belongs to the server's user, as if
        the command had been run as that user (issue 9).  Undone by L{close}."""
        if os.geteuid() != 0 or self._root_ids is not None:
            return
        try:
            st = self.config.server.data_dir.stat()
        except OSError:
            return  # not there yet: created by root, handed over at the server's start
        if st.st_uid == 0:
            return
        try:
            groups = os.getgrouplist(pwd.getpwuid(st.st_uid).pw_name, st.st_gid)
        except KeyError:
            groups = [st.st_gid]
        self._root_ids = (os.getgroups(), os.getegid())
        os.setgroups(groups)
        os.setegid(st.st_gid)
        os.seteuid(st.st_uid)

    def require_data_dir(self) -> None:
        """@raise UserError: the data dir does not exist: a command never creates it (a CLI
        run with another config, or from another directory, would start a second, empty
        account store that the server never reads); C{twistedmail init} does (issue 9)."""
        data_dir = self.config.server.data_dir
        if data_dir.is_dir():
            return
        source = self.config.source
        origin = (
            f"[server] data_dir of {source}"
            if source is not None
            else "the default without a config file, in the current directory"
        )
        raise UserError(
            f"data dir {data_dir} does not exist ({origin}); for a first setup create it with"
            f" '{PROG} init' (or by starting the server once), else check --config"
        )

    def store(self, create: bool = True) -> AccountStore:
        """Open the account store; C{create=False} refuses to create a missing one (reads).

        @raise UserError: when the store is missing and C{create} is false.
        """
        if self._store is None:
            path = config_module.store_path(self.config)
            self.require_data_dir()
            if create:
                config_module.ensure_data_dir(self.config)  # mail/ and the umask
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
        if self._root_ids is not None:
            groups, egid = self._root_ids
            self._root_ids = None
            os.seteuid(0)
            os.setgroups(groups)
            os.setegid(egid)


def _out(text: str) -> None:
    print(text, file=sys.stdout)


# commands


def cmd_init(ctx: _Context, args: argparse.Namespace) -> None:
    """The explicit first setup: create the data dir (0700), C{mail/} and the account store;
    nothing is changed when they exist."""
    data_dir = ctx.config.server.data_dir
    existed = config_module.store_path(ctx.config).exists()
    config_module.ensure_data_dir(ctx.config)
    ctx.store()
    _out(f"data dir {data_dir} {'already set up' if existed else 'created'}")


def _maildir(ctx: _Context, mbox: Mailbox) -> Path:
    try:
        return mailbox_root(config_module.mail_dir(ctx.config), str(mbox))
    except MaildirError:
        raise UserError(f"invalid address {str(mbox)!r} for a mailbox") from None


def _move_aside(ctx: _Context, path: Path, name: str) -> Path:
    """Move C{path} (a Maildir, or a domain's directory of them) to
    C{DATA_DIR/deleted/NAME-TIMESTAMP/} (UTC, e.g. C{20261206T221500Z}), where nobody can
    log in to it, and return the new path (issue 9)."""
    deleted = ctx.config.server.data_dir / "deleted"
    deleted.mkdir(mode=0o700, exist_ok=True)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    target = deleted / f"{name}-{stamp}"
    n = 1
    while target.exists():  # deleted twice in one second
        n += 1
        target = deleted / f"{name}-{stamp}-{n}"
    os.rename(path, target)
    return target


def cmd_user_add(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.address)
    store = ctx.store()
    if store.is_user(str(mbox)):
        raise UserError(f"user {mbox} already exists")
    if store.alias_targets(str(mbox)):
        raise UserError(f"{mbox} is already an alias")
    maildir = _maildir(ctx, mbox)
    if maildir.exists() and not args.adopt_maildir:
        # Issue 9: a Maildir left by a user deleted with --keep-mail (or by hand) must not
        # become the mail of a new owner of the same address without being asked.
        raise UserError(
            f"{maildir} already exists (mail of an earlier {mbox}?): move it away, or pass"
            " --adopt-maildir to give that mail to the new user"
        )
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
    _flush_logins(ctx, str(mbox))
    _out(f"changed password of {mbox}")


def _flush_logins(ctx: _Context, address: str) -> None:
    """Tell a running server to forget the cached logins of C{address} (issue 10).  Best
    effort: with no server, or a control socket this user may not open, the server still
    refuses the old password, as its cache entries hold the hash they were verified
    against (L{twistedmail.auth.AuthCache})."""
    try:
        control.auth_flush(config_module.control_path(ctx.config), address)
    except (control.NoServer, OSError, RuntimeError):
        pass


def cmd_user_del(ctx: _Context, args: argparse.Namespace) -> None:
    mbox = _address(args.address)
    maildir = _maildir(ctx, mbox)
    ctx.store(create=False).delete_user(str(mbox))
    _flush_logins(ctx, str(mbox))
    if not maildir.exists():
        _out(f"deleted user {mbox} (it had no Maildir)")
    elif args.keep_mail:
        _out(f"deleted user {mbox} (its mail is kept in {maildir})")
    else:
        _out(f"deleted user {mbox}; its mail is moved to {_move_aside(ctx, maildir, str(mbox))}")


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
        if int(args.messages) > config_module.MAX_COUNT:
            raise UserError(
                f"invalid message count {args.messages!r}: at most {config_module.MAX_COUNT}"
            )
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
    # What is left in mail/DOMAIN/ (Maildirs of users deleted with --keep-mail) goes aside
    # with the domain, unless --keep-mail (user add refuses to adopt it either way).
    left = config_module.mail_dir(ctx.config) / name
    if left.is_dir() and not any(left.iterdir()):
        left.rmdir()
    if not left.exists():
        _out(f"deleted domain {name}")
    elif args.keep_mail:
        _out(f"deleted domain {name} (its mail is kept in {left})")
    else:
        _out(f"deleted domain {name}; its mail is moved to {_move_aside(ctx, left, name)}")


def cmd_domain_list(ctx: _Context, args: argparse.Namespace) -> None:
    for domain in ctx.store(create=False).domains():
        _out(domain)


def cmd_alias_add(ctx: _Context, args: argparse.Namespace) -> None:
    alias = ctx.store().add_alias(args.alias, args.targets)
    _out(f"{alias.address} -> {', '.join(alias.targets)}")


def cmd_alias_del(ctx: _Context, args: argparse.Namespace) -> None:
    key = ctx.store(create=False).delete_alias(args.alias)  # or @domain, a catch-all
    _out(f"deleted alias {key}")


def cmd_alias_list(ctx: _Context, args: argparse.Namespace) -> None:
    for alias in ctx.store(create=False).aliases():
        _out(" ".join((alias.address, *alias.targets)))


def cmd_check_config(ctx: _Context, args: argparse.Namespace) -> None:
    tls = ctx.config.tls
    if tls.cert is not None and tls.key is not None:
        server_context(tls.cert, tls.key)
    from twistedmail.service import smarthost  # the smarthost's CA and password files

    smarthost(ctx.config)
    for warning in ctx.config.warnings:  # loads, but likely not what was meant
        print(f"{PROG}: warning: {_one_line(warning)}", file=sys.stderr)
    ctx.act_as_data_dir_owner()
    _warn_domains_without_admin(ctx)
    _warn_https_names(ctx)
    _check_dkim_keys(ctx)
    source = ctx.config.source
    _out(f"config OK: {source if source is not None else 'defaults'}")


def _warn_domains_without_admin(ctx: _Context) -> None:
    """A warning per local domain without a postmaster@ user or alias: its postmaster@ and
    abuse@ mail (RFC 5321 §4.5.1, RFC 2142) falls back to the first user."""
    if not config_module.store_path(ctx.config).exists():
        return
    for domain in ctx.store(create=False).domains_without_admin():
        print(
            f"{PROG}: warning: {domain} has no configured admin: postmaster@{domain} and"
            f" abuse@{domain} go to the first user; run: {PROG} alias add"
            f" postmaster@{domain} ADMIN",
            file=sys.stderr,
        )


HTTPS_NAMES = ("mta-sts", "autodiscover")  # RFC 8461 §3.3; Outlook's autodiscover host


def _certificate_covers(patterns: list[str], name: str) -> bool:
    """Whether a DNS name of the certificate matches C{name} (RFC 6125 §6.4.3: a wildcard
    stands for exactly one left-most label)."""
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and name.partition(".")[2] == pattern[2:]:
            return True
    return False


def _warn_https_names(ctx: _Context) -> None:
    """With C{[listen] https} and a configured certificate: a warning per local domain whose
    C{mta-sts.DOMAIN} or C{autodiscover.DOMAIN} the certificate does not name (a sender
    fetching the MTA-STS policy checks it, RFC 8461 §3.3; so does Outlook)."""
    tls = ctx.config.tls
    if not ctx.config.listen["https"] or tls.cert is None:
        return
    if not config_module.store_path(ctx.config).exists():
        return
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(tls.cert.read_bytes())[0]
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        names = []
    for domain in ctx.store(create=False).domains():
        missing = [
            f"{label}.{domain}"
            for label in HTTPS_NAMES
            if not _certificate_covers(names, f"{label}.{domain}")
        ]
        if missing:
            print(
                f"{PROG}: warning: [tls] cert: {tls.cert} does not name {' or '.join(missing)}:"
                " MTA-STS senders and Outlook will refuse the HTTPS listener for that domain",
                file=sys.stderr,
            )


def _readable_by(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether a file of status C{st} grants C{bits} (4 read, 1 search) to C{uid}/C{gids}."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode >> 6 & bits == bits)
    if st.st_gid in gids:
        return bool(st.st_mode >> 3 & bits == bits)
    return bool(st.st_mode & bits == bits)


def _check_dkim_keys(ctx: _Context) -> None:
    """Every DKIM key must be readable by the data dir's owner, the user the server runs as
    (it is handed the data dir under C{twistd -u}): checked by opening it when this process
    acts as that user (L{_Context.act_as_data_dir_owner}), else from the files' owner and
    mode.  @raise UserError: the first key (or the key directory) it cannot read."""
    directory = ctx.config.server.data_dir / "dkim"
    try:
        owner = ctx.config.server.data_dir.stat()
        st = directory.stat()
    except FileNotFoundError:
        return
    try:
        name = pwd.getpwuid(owner.st_uid).pw_name
        gids = set(os.getgrouplist(name, owner.st_gid))
    except KeyError:
        name, gids = str(owner.st_uid), {owner.st_gid}
    fix = f"run: chown -R {owner.st_uid}:{owner.st_gid} {directory}"

    def refuse(path: Path, what: str) -> NoReturn:
        raise UserError(
            f"{path}: {what} by {name}, the data dir's owner the server runs as"
            f" (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); {fix}"
        )

    as_owner = os.geteuid() == owner.st_uid
    if not as_owner and not _readable_by(st, owner.st_uid, gids, 5):
        refuse(directory, "DKIM key directory not readable")
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        if as_owner:
            refuse(directory, f"DKIM key directory not readable ({e.strerror})")
        return  # we cannot list it, but its owner can
    for entry in names:
        path = directory / entry
        if not entry.endswith(tuple(dkim_module.KEY_SUFFIXES)):
            continue
        try:
            st = path.stat()
            if as_owner:
                with open(path, "rb"):
                    pass
            elif not _readable_by(st, owner.st_uid, gids, 4):
                refuse(path, "DKIM key not readable")
        except OSError as e:
            refuse(path, f"DKIM key not readable ({e.strerror})")


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
    for line in dnscheck.zone_lines(ctx.config, args.domain, _dkim_keys(ctx)):
        _out(line)


def cmd_check(ctx: _Context, args: argparse.Namespace) -> int:
    """Look up what C{args.domain} publishes and judge each record (L{dnscheck.check}): one
    line per record, or with C{--json} one object; 1 when a record is wrong or missing."""
    from twisted.internet import reactor

    from twistedmail import service

    def start() -> Coroutine[Any, Any, list[dnscheck.Finding]]:
        resolver = service.dns_resolver(ctx.config, reactor)
        return dnscheck.check(resolver, reactor, ctx.config, args.domain, _dkim_keys(ctx))

    findings: list[dnscheck.Finding] = _run_reactor(start)
    bad = any(f.status != dnscheck.OK for f in findings)
    if args.json:
        domain = normalize_domain(args.domain)
        _out(
            json.dumps(
                {
                    "domain": domain,
                    "hostname": ctx.config.server.hostname,
                    "ok": not bad,
                    "checks": [f.as_json() for f in findings],
                },
                sort_keys=True,
            )
        )
    else:
        for finding in findings:
            _out(finding.line())
    return 1 if bad else 0


def _run_reactor(start: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the global reactor until the coroutine C{start()} ends; its result, or its
    exception raised here.  Once per process (a reactor does not restart)."""
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def done(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    def begin() -> None:
        defer.Deferred.fromCoroutine(start()).addBoth(done)

    reactor.callWhenRunning(begin)
    reactor.run(installSignalHandlers=False)
    if not outcome:
        raise UserError("interrupted")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


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


def _left(seconds: float) -> str:
    """Time left of a block: C{14m59s}, C{42s} (rounded up: never C{0s} while in force)."""
    whole = max(int(-(-seconds // 1)), 0)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def cmd_throttle_list(ctx: _Context, args: argparse.Namespace) -> None:
    """One line per block of the running server's failed-login throttle: C{ip=} for a
    blocked IP, C{ip= user=} for an account blocked from one IP, C{user=} for an account
    blocked from IPs it never logged in from; C{left=} time, C{failures=} counted."""
    try:
        blocks = control.throttle_list(config_module.control_path(ctx.config))
    except control.NoServer:
        raise UserError("no running server") from None
    for block in blocks:
        where = [f"ip={block.ip}"] if block.ip else []
        who = [f"user={block.account}"] if block.account else []
        _out(
            " ".join(
                [*where, *who, f"left={_left(block.seconds_left)}", f"failures={block.failures}"]
            )
        )


def _throttle_target(text: str) -> str:
    """An IP address, an IPv6 /64 as C{throttle list} shows it, or a user's address."""
    target = text.strip()
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    if "/" in target:
        try:
            return str(ipaddress.ip_network(target, strict=False))
        except ValueError:
            raise UserError(f"invalid network {text!r}") from None
    if not target or any(c.isspace() for c in target):
        raise UserError(f"not an IP address or a user address: {text!r}")
    try:
        return str(Mailbox.parse(target))
    except AddressError:
        return target  # a login name that is no address (it may still be blocked)


def cmd_throttle_unblock(ctx: _Context, args: argparse.Namespace) -> None:
    target = _throttle_target(args.target)
    try:
        lifted, forgotten = control.throttle_unblock(config_module.control_path(ctx.config), target)
    except control.NoServer:
        raise UserError("no running server") from None
    if lifted or forgotten:
        _out(f"unblocked {target}: {lifted} block(s) lifted, {forgotten} failed login(s) forgotten")
    else:
        _out(f"nothing to unblock for {target}: no block and no failed login")


def cmd_connections(ctx: _Context, args: argparse.Namespace) -> None:
    try:
        counts = control.connections(config_module.control_path(ctx.config))
    except control.NoServer:
        raise UserError("no running server") from None
    for name, count in counts.items():
        _out(f"{name} {count}")


def _duration(seconds: float) -> str:
    """C{3d 04h 05m}, C{2h 03m 04s}, C{5m 06s}, C{7s}."""
    s = max(int(seconds), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    return f"{minutes}m {s:02d}s" if minutes else f"{s}s"


def cmd_status(ctx: _Context, args: argparse.Namespace) -> None:
    """The running server's status over the control socket (issue 13): a table, or with
    C{--json} the server's answer as one JSON object."""
    try:
        status = control.status(config_module.control_path(ctx.config))
    except control.NoServer:
        raise UserError("no running server") from None
    if args.json:
        _out(json.dumps(status, sort_keys=True))
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(status["started"]))
    _out(f"twistedmail {status['version']}, up {_duration(status['uptime'])}")
    _out(f"started   {started} UTC")
    for name, addresses in status["listeners"].items():
        _out(f"listen    {name:<12} {' '.join(addresses)}")
    counts = status["connections"]
    _out("sessions  " + " ".join(f"{k}={v}" for k, v in counts.items()))
    queue = status["queue"]
    oldest = f", oldest {_duration(queue['oldest_age'])}" if queue["messages"] else ""
    _out(f"queue     {queue['messages']} message(s){oldest}")
    blocked = [f"{b['ip']} ({_left(b['seconds_left'])})" for b in status["blocked_ips"]]
    _out(f"blocked   {', '.join(blocked) or 'none'}")
    _out(f"{'DOMAIN':<30} {'USERS':>6} {'BYTES':>14} {'MESSAGES':>9}")
    for domain, d in status["domains"].items():
        _out(f"{domain:<30} {d['users']:>6} {d['bytes']:>14} {d['messages']:>9}")


def _sieve_store(ctx: _Context, address: str) -> tuple[Mailbox, SieveStore]:
    """The scripts of user C{address} (Pigeonhole's layout in the Maildir home, which is
    created if the user has none yet).  @raise UserError: no such user."""
    mbox = _address(address)
    if not ctx.store(create=False).is_user(str(mbox)):
        raise UserError(f"no such user {mbox}")
    home = _maildir(ctx, mbox)
    make_maildir(home)
    return mbox, SieveStore(home)


def _script_name(name: str) -> str:
    try:
        return sieve_store.validate_name(name)
    except sieve_store.ScriptNameError as e:
        raise UserError(f"invalid script name {name!r}: {e}") from None


def _compile_for(ctx: _Context, scripts: SieveStore, name: str, data: bytes) -> None:
    """Compile as delivery will (size limit, includes that must exist, as Pigeonhole does
    and RFC 5804 §2.6 PUTSCRIPT asks).  @raise UserError: with the line and the message."""

    def include_exists(target: str, where: str) -> bool:
        try:
            return where == "personal" and (target == name or scripts.path(target).is_file())
        except sieve_store.ScriptNameError:
            return False

    try:
        compile_script(data, include_exists, max_size=ctx.config.delivery.sieve.max_script_size)
    except SieveError as e:
        raise UserError(f"script {name!r} not stored: {e}") from None


def cmd_sieve_list(ctx: _Context, args: argparse.Namespace) -> None:
    _, scripts = _sieve_store(ctx, args.address)
    for name, active in scripts.list():
        _out(f"{name} (active)" if active else name)


def cmd_sieve_show(ctx: _Context, args: argparse.Namespace) -> None:
    mbox, scripts = _sieve_store(ctx, args.address)
    name = _script_name(args.name)
    try:
        data = scripts.get(name)
    except sieve_store.ScriptNotFoundError:
        raise UserError(f"{mbox} has no script {name!r}") from None
    sys.stdout.flush()
    out = getattr(sys.stdout, "buffer", None)
    if out is None:
        sys.stdout.write(data.decode("utf-8", "replace"))
    else:
        out.write(data)
        out.flush()


def cmd_sieve_put(ctx: _Context, args: argparse.Namespace) -> None:
    mbox, scripts = _sieve_store(ctx, args.address)
    name = _script_name(args.name)
    limit = ctx.config.delivery.sieve.max_script_size
    if args.file == "-":
        source = getattr(sys.stdin, "buffer", None)
        data = source.read(limit + 1) if source is not None else sys.stdin.read().encode()
    else:
        with open(args.file, "rb") as f:
            data = f.read(limit + 1)
    _compile_for(ctx, scripts, name, data)
    scripts.put(name, data)
    if args.activate:
        scripts.activate(name)
    _out(f"stored{' and activated' if args.activate else ''} script {name} of {mbox}")


def cmd_sieve_activate(ctx: _Context, args: argparse.Namespace) -> None:
    mbox, scripts = _sieve_store(ctx, args.address)
    name = _script_name(args.name)
    try:
        _compile_for(ctx, scripts, name, scripts.get(name))
        scripts.activate(name)
    except sieve_store.ScriptNotFoundError:
        raise UserError(f"{mbox} has no script {name!r}") from None
    _out(f"activated script {name} of {mbox}")


def cmd_sieve_deactivate(ctx: _Context, args: argparse.Namespace) -> None:
    mbox, scripts = _sieve_store(ctx, args.address)
    active = scripts.active()
    if active is None:
        _out(f"{mbox} has no active script")
        return
    scripts.deactivate()
    _out(f"deactivated script {active} of {mbox}")


def cmd_sieve_delete(ctx: _Context, args: argparse.Namespace) -> None:
    mbox, scripts = _sieve_store(ctx, args.address)
    name = _script_name(args.name)
    try:
        scripts.delete(name)
    except sieve_store.ActiveScriptError:
        raise UserError(
            f"script {name!r} of {mbox} is active: deactivate it first"
            f" ('{PROG} sieve deactivate {mbox}')"
        ) from None
    except sieve_store.ScriptNotFoundError:
        raise UserError(f"{mbox} has no script {name!r}") from None
    _out(f"deleted script {name} of {mbox}")


def cmd_vacation(ctx: _Context, args: argparse.Namespace) -> None:
    if args.off:
        if args.subject is not None or args.message_file is not None or args.days is not None:
            raise UserError("--off takes no --subject, --message-file nor --days")
    elif args.subject is None or args.message_file is None:
        raise UserError("give --subject and --message-file (or --off)")
    mbox, scripts = _sieve_store(ctx, args.address)
    try:
        if args.off:
            outcome = vacation_module.turn_off(scripts)
            if not outcome.changed:
                _out(f"{mbox} had no vacation reply")
            elif outcome.previous is not None:
                _out(f"vacation reply of {mbox} off; script {outcome.previous} is active again")
            else:
                _out(f"vacation reply of {mbox} off")
            return
        if args.message_file == "-":
            raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else b""
        else:
            with open(args.message_file, "rb") as f:
                raw = f.read(ctx.config.delivery.sieve.max_script_size + 1)
        try:
            message = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{args.message_file}: the message is not UTF-8 text") from None
        days = 7 if args.days is None else args.days
        outcome = vacation_module.turn_on(
            scripts,
            args.subject,
            message,
            days,
            replace=args.replace,
            max_size=ctx.config.delivery.sieve.max_script_size,
        )
    except vacation_module.VacationError as e:
        raise UserError(str(e)) from None
    note = f"; script {outcome.previous} kept, active again after --off" if outcome.previous else ""
    _out(f"vacation reply of {mbox} on, at most once per sender every {days} days{note}")


# moving mail in and out (issue 13; the work is in twistedmail.importer and .backup)

IMPORT_PASSWORD_ENV = "TWISTEDMAIL_IMPORT_PASSWORD"


def _user_maildir(ctx: _Context, address: str) -> tuple[str, UserMaildir]:
    """A user's address and Maildir.  @raise UserError: not a user of this server."""
    mbox = _address(address)
    if not ctx.store(create=False).is_user(str(mbox)):
        raise UserError(f"no such user {mbox} (add it with '{PROG} user add' first)")
    return str(mbox), UserMaildir(_maildir(ctx, mbox))


def _ledger(ctx: _Context) -> importer.Ledger:
    return importer.Ledger(ctx.config.server.data_dir / importer.LEDGER)


def _progress(text: str) -> None:
    """A progress line: on a terminal it replaces the previous one in place (cleared by
    L{_print_reports}); otherwise one plain line each, for logs and scripts."""
    if sys.stdout.isatty():
        sys.stdout.write("\r\033[K" + text)
        sys.stdout.flush()
    else:
        _out(text)


def _end_progress() -> None:
    if sys.stdout.isatty():
        sys.stdout.write("\r\033[K")
        sys.stdout.flush()


def _print_reports(reports: list[importer.FolderReport]) -> None:
    _end_progress()
    for r in reports:
        kept = f", UIDVALIDITY {r.uidvalidity_kept} and UIDs kept" if r.uidvalidity_kept else ""
        _out(f"{r.folder}: {r.imported} imported, {r.skipped} already there{kept}")


def cmd_import_maildir(ctx: _Context, args: argparse.Namespace) -> None:
    address, user = _user_maildir(ctx, args.address)
    ledger = _ledger(ctx)
    try:
        _print_reports(importer.import_maildir(Path(args.path), user, address, ledger, _progress))
    except (importer.MigrationError, MaildirError) as e:
        raise UserError(str(e)) from None
    finally:
        ledger.close()
        _end_progress()


def cmd_import_mbox(ctx: _Context, args: argparse.Namespace) -> None:
    address, user = _user_maildir(ctx, args.address)
    if not Path(args.file).is_file():
        raise UserError(f"{args.file} is not a file")
    ledger = _ledger(ctx)
    try:
        report = importer.import_mbox(
            Path(args.file), user, address, args.folder, ledger, _progress, args.quoting
        )
        _print_reports([report])
    except (importer.MigrationError, MaildirError) as e:
        raise UserError(str(e)) from None
    finally:
        ledger.close()
        _end_progress()


def _import_password(args: argparse.Namespace) -> str:
    """The remote password: C{--password-file} (its first line), else the environment
    variable C{TWISTEDMAIL_IMPORT_PASSWORD}, else a prompt."""
    if args.password_file:
        try:
            text = Path(args.password_file).read_text("utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise UserError(f"cannot read the password file {args.password_file}: {e}") from None
        return text.splitlines()[0] if text else ""
    if os.environ.get(IMPORT_PASSWORD_ENV):
        return os.environ[IMPORT_PASSWORD_ENV]
    try:
        return getpass.getpass(f"Password of {args.user} on {args.host}: ")
    except EOFError:
        raise UserError(
            f"no password given (use --password-file or ${IMPORT_PASSWORD_ENV})"
        ) from None


def cmd_import_imap(ctx: _Context, args: argparse.Namespace) -> None:
    address, user = _user_maildir(ctx, args.address)
    port = args.port or (143 if args.starttls else 993)
    source = importer.ImapSource(
        args.host,
        port,
        args.user,
        _import_password(args),
        "starttls" if args.starttls else "imaps",
        Path(args.ca_file) if args.ca_file else None,
    )
    ledger = _ledger(ctx)
    try:
        _print_reports(importer.import_imap(source, user, address, ledger, _progress))
    except (importer.MigrationError, MaildirError) as e:
        raise UserError(str(e)) from None
    finally:
        ledger.close()
        _end_progress()


def cmd_export(ctx: _Context, args: argparse.Namespace) -> None:
    address, user = _user_maildir(ctx, args.address)
    target = Path(args.dir)
    if not backup_module.empty_or_missing(target):
        raise UserError(f"{target} is not empty")
    try:
        if args.format == "mbox":
            count = importer.export_mbox(user, target, _out)
        else:
            count = importer.export_maildir(user, target, _out)
    except MaildirError as e:
        raise UserError(str(e)) from None
    _out(f"exported {count} message(s) of {address} to {target} ({args.format})")


def cmd_backup(ctx: _Context, args: argparse.Namespace) -> None:
    try:
        summary = backup_module.backup(
            ctx.config.server.data_dir,
            Path(args.dir),
            ctx.config.source,
            _out,
            twistedmail.version(),
        )
    except backup_module.BackupError as e:
        raise UserError(str(e)) from None
    _out(
        f"backup in {args.dir}: {summary.files} file(s), {summary.octets} octets,"
        f" {summary.databases} database(s), {summary.linked} message(s) hard-linked"
    )


def cmd_restore(ctx: _Context, args: argparse.Namespace) -> None:
    data_dir = ctx.config.server.data_dir
    try:
        control.connections(config_module.control_path(ctx.config))
    except control.NoServer:
        pass
    else:
        raise UserError("the server is running: stop it before a restore")
    source = Path(args.dir)
    owner = None
    if data_dir.exists():
        st = data_dir.stat()
        owner = (st.st_uid, st.st_gid) if os.getuid() == 0 and st.st_uid != 0 else None
    try:
        backup_module.read_manifest(source)
        if not backup_module.empty_or_missing(data_dir):
            if not args.force:
                raise UserError(f"data dir {data_dir} is not empty (--force moves it aside first)")
            aside = data_dir.with_name(
                f"{data_dir.name}.before-restore-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}"
            )
            ctx.close()  # the store, if open, and root's identity back to move the dir
            os.rename(data_dir, aside)
            _out(f"moved the old data dir to {aside}")
        summary = backup_module.restore(source, data_dir, _out, owner)
    except backup_module.BackupError as e:
        raise UserError(str(e)) from None
    _out(f"restored {summary.files} file(s), {summary.octets} octets into {data_dir}")


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

    p = commands.add_parser(
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
        if args.func is not cmd_check_config:  # it reads root's TLS files first
            if args.func not in (cmd_init, cmd_restore):
                ctx.require_data_dir()
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
