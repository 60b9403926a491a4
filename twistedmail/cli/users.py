"""C{twistedmail init}, C{user}, C{domain} and C{alias}: the account store
(L{twistedmail.accounts}), the new passwords read for it, and the Maildirs moved aside when
a user or a domain is deleted (issue 9)."""

from __future__ import annotations

import argparse
import getpass
import hashlib
import os
import sys
import time
from pathlib import Path
from typing import TextIO

from twistedmail import config as config_module
from twistedmail import control, units
from twistedmail.accounts import Quota
from twistedmail.address import AddressError, normalize_domain
from twistedmail.auth import MAX_CREDENTIAL_LENGTH
from twistedmail.cli.common import (
    UserError,
    _address,
    _Context,
    _maildir,
    _out,
)
from twistedmail.maildir import announce_moved, mailbox_root
from twistedmail.passwords import hash_password
from twistedmail.quota import UsageCache
from twistedmail.units import format_size

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


# commands


def cmd_init(ctx: _Context, args: argparse.Namespace) -> None:
    """The explicit first setup: create the data dir (0700), C{mail/} and the account store;
    nothing is changed when they exist."""
    data_dir = ctx.config.server.data_dir
    existed = config_module.store_path(ctx.config).exists()
    config_module.ensure_data_dir(ctx.config)
    ctx.store()
    _out(f"data dir {data_dir} {'already set up' if existed else 'created'}")


MAX_ASIDE_NAME = 234  # NAME_MAX 255 less "-20261206T221500Z-NN"


def _move_aside(ctx: _Context, path: Path, name: str) -> Path:
    """Move C{path} (a Maildir, or a domain's directory of them) to
    C{DATA_DIR/deleted/NAME-TIMESTAMP/} (UTC, e.g. C{20261206T221500Z}), where nobody can
    log in to it, and return the new path (issue 9).  A C{NAME} over L{MAX_ASIDE_NAME}
    octets (an address near RFC 5321's 254) is cut there, with C{~} and a hash of it, to
    keep the directory's name within NAME_MAX (255)."""
    deleted = ctx.config.server.data_dir / "deleted"
    deleted.mkdir(mode=0o700, exist_ok=True)
    if len(name.encode("utf-8")) > MAX_ASIDE_NAME:
        digest = hashlib.sha256(name.encode("utf-8")).hexdigest()[:16]
        name = name.encode("utf-8")[: MAX_ASIDE_NAME - 17].decode("utf-8", "ignore") + "~" + digest
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
        aside = _move_aside(ctx, maildir, str(mbox))
        announce_moved(aside, children=True)  # idling sessions told at once
        _out(f"deleted user {mbox}; its mail is moved to {aside}")


def cmd_user_list(ctx: _Context, args: argparse.Namespace) -> None:
    store = ctx.store(create=False)
    if not args.quota:
        for user in store.users():
            _out(user)
        return
    cache = UsageCache()
    for user, quota in store.quotas():
        _out(_quota_line(ctx, user, quota, cache))


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
            storage = units.parse_quota(args.size)
        except ValueError as e:
            raise UserError(f"invalid size {args.size!r}: {e}") from None
    messages = current.messages
    if args.messages is not None:
        if not args.messages.isdigit():
            raise UserError(f"invalid message count {args.messages!r}: 0 (none) or more")
        if int(args.messages) > units.MAX_COUNT:
            raise UserError(f"invalid message count {args.messages!r}: at most {units.MAX_COUNT}")
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
