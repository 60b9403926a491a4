"""C{twistedmail import}, C{export}, C{backup} and C{restore}: mail moved in and out
(issue 13; the work is in L{twistedmail.importer} and L{twistedmail.backup})."""

from __future__ import annotations

import argparse
import getpass
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import twistedmail
from twistedmail import backup as backup_module
from twistedmail import config as config_module
from twistedmail import control, importer
from twistedmail.cli.common import (
    PROG,
    UserError,
    _address,
    _Context,
    _maildir,
    _out,
)
from twistedmail.maildir import MaildirError, UserMaildir

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


def _run_import(
    ctx: _Context, run: Callable[[importer.Ledger], list[importer.FolderReport]]
) -> None:
    """C{run(ledger)}, one of L{importer}'s imports (its progress through L{_progress}),
    then a line per folder it reports.  @raise UserError: the import failed."""
    ledger = _ledger(ctx)
    try:
        _print_reports(run(ledger))
    except (importer.MigrationError, MaildirError) as e:
        raise UserError(str(e)) from None
    finally:
        ledger.close()
        _end_progress()


def cmd_import_maildir(ctx: _Context, args: argparse.Namespace) -> None:
    address, user = _user_maildir(ctx, args.address)
    tree = Path(args.path)
    _run_import(ctx, lambda ledger: importer.import_maildir(tree, user, address, ledger, _progress))


def cmd_import_mbox(ctx: _Context, args: argparse.Namespace) -> None:
    address, user = _user_maildir(ctx, args.address)
    if not Path(args.file).is_file():
        raise UserError(f"{args.file} is not a file")
    _run_import(
        ctx,
        lambda ledger: [
            importer.import_mbox(
                Path(args.file), user, address, args.folder, ledger, _progress, args.quoting
            )
        ],
    )


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
    _run_import(ctx, lambda ledger: importer.import_imap(source, user, address, ledger, _progress))


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
