"""C{twistedmail sieve} and C{vacation}: a user's Sieve scripts (RFC 5228) in Pigeonhole's
layout, compiled as delivery will before they are stored (L{twistedmail.sieve.store})."""

from __future__ import annotations

import argparse
import sys
from typing import cast

from twistedmail.address import Mailbox
from twistedmail.cli.common import (
    PROG,
    UserError,
    _address,
    _Context,
    _maildir,
    _out,
)
from twistedmail.maildir import make_maildir
from twistedmail.sieve import store as sieve_store
from twistedmail.sieve import vacation as vacation_module
from twistedmail.sieve.grammar import SieveError
from twistedmail.sieve.store import SieveStore
from twistedmail.sieve.validate import compile_script


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
        subject, message_file = cast(str, args.subject), cast(str, args.message_file)  # checked
        if message_file == "-":
            raw = sys.stdin.buffer.read() if hasattr(sys.stdin, "buffer") else b""
        else:
            with open(message_file, "rb") as f:
                raw = f.read(ctx.config.delivery.sieve.max_script_size + 1)
        try:
            message = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(f"{message_file}: the message is not UTF-8 text") from None
        days = 7 if args.days is None else args.days
        outcome = vacation_module.turn_on(
            scripts,
            subject,
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
