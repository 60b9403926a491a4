"""What every C{twistedmail} command shares: the one-line L{UserError}, the argument
parser that raises it, and L{_Context} (the loaded config and, on demand, the account store,
opened as the data dir's owner)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import NoReturn

from twistedmail import config as config_module
from twistedmail.accounts import AccountStore
from twistedmail.address import AddressError, Mailbox
from twistedmail.maildir import MaildirError, mailbox_root

PROG = "twistedmail"


class UserError(Exception):
    """A mistake the admin can fix; its message is printed as one line, exit status 1."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage mistakes as a L{UserError} (one line, exit 1), not exit 2."""

    def error(self, message: str) -> NoReturn:
        raise UserError(f"{message} (see '{self.prog} --help')")


def _address(text: str) -> Mailbox:
    try:
        return Mailbox.parse(text)
    except AddressError as e:
        raise UserError(f"invalid address {text!r}: {e}") from None


# config and store


def _user_name(uid: int) -> str:
    """The user name of C{uid}, else the number as text."""
    return config_module.user_name(uid) or str(uid)


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
        _, groups = config_module.user_groups(st.st_uid, st.st_gid)
        self._root_ids = (os.getgroups(), os.getegid())
        os.setgroups(sorted(groups))
        os.setegid(st.st_gid)
        os.seteuid(st.st_uid)

    def require_data_dir(self) -> None:
        """@raise UserError: the data dir does not exist: a command never creates it (a CLI
        run with another config, or from another directory, would start a second, empty
        account store that the server never reads); C{twistedmail init} does (issue 9)."""
        data_dir = self.config.server.data_dir
        if data_dir.is_dir():
            if not os.access(data_dir, os.X_OK, effective_ids=True):
                st = data_dir.stat()
                raise UserError(
                    f"cannot enter data dir {data_dir} as {_user_name(os.geteuid())}"
                    f" (uid {os.geteuid()}): it belongs to {_user_name(st.st_uid)},"
                    f" mode {st.st_mode & 0o777:o}; run {PROG} as {_user_name(st.st_uid)}"
                    " or as root"
                )
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


def _maildir(ctx: _Context, mbox: Mailbox) -> Path:
    try:
        return mailbox_root(config_module.mail_dir(ctx.config), str(mbox))
    except MaildirError:
        raise UserError(f"invalid address {str(mbox)!r} for a mailbox") from None


def _one_line(text: str) -> str:
    return " ".join(str(text).split())
