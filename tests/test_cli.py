"""Tests for the C{twistedmail} admin CLI (DESIGN §3): commands, output, exit status, errors."""

from __future__ import annotations

import contextlib
import getpass
import hashlib
import importlib.metadata
import io
import os
import pwd
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import tomllib
from pathlib import Path

from twisted.trial import unittest

import twistedmail
from twistedmail import cli, passwords
from twistedmail.accounts import AccountStore, Quota
from twistedmail.maildir import make_maildir, write_durably
from twistedmail.testing import run_cli
from twistedmail.tls import create_self_signed

ROOT = Path(__file__).resolve().parent.parent


class CLITestCase(unittest.TestCase):
    """Runs C{cli.main} in-process with a temp data dir and captured stdio."""

    def setUp(self) -> None:
        self.base = Path(self.mktemp()).resolve()
        self.base.mkdir()
        self.data_dir = self.base / "data"
        self.config = self.base / "twistedmail.toml"
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
        )
        self.getpass_answers: list[str] = []
        self.patch(getpass, "getpass", self.fake_getpass)
        # The first setup (twistedmail init, or a server start) made the data dir: without it
        # every command is refused (InitTests).
        self.data_dir.mkdir(mode=0o700)

    def write_config(self, text: str) -> None:
        self.config.write_text(text, "utf-8")

    def fake_getpass(self, prompt: str = "Password: ") -> str:
        if not self.getpass_answers:
            raise AssertionError(f"unexpected password prompt {prompt!r}")
        answer = self.getpass_answers.pop(0)
        if answer == "^C":
            raise KeyboardInterrupt
        return answer

    def run_cli(self, *argv: str, stdin: bytes = b"", config: bool = True) -> tuple[int, str, str]:
        args = ["--config", str(self.config), *argv] if config else list(argv)
        return run_cli(self, args, stdin)

    def assertUserError(self, result: tuple[int, str, str], message: str) -> None:
        """Exit 1, nothing on stdout, exactly C{twistedmail: error: <message>} on stderr."""
        self.assertEqual(result, (1, "", f"twistedmail: error: {message}\n"))

    def store(self) -> AccountStore:
        store = AccountStore(self.data_dir / "accounts.sqlite3")
        self.addCleanup(store.close)
        return store

    def add_user(self, address: str, password: str = "pw") -> None:
        code, _, err = self.run_cli(
            "user", "add", address, "--password-stdin", stdin=password.encode() + b"\n"
        )
        self.assertEqual((code, err), (0, ""))


class UserCommandTests(CLITestCase):
    def test_add_new_domain(self) -> None:
        """C{user add} on a new domain adds the domain and says so; the hash is argon2id."""
        result = self.run_cli(
            "user", "add", "Alice@Example.ORG", "--password-stdin", stdin=b"correct horse\n"
        )
        self.assertEqual(
            result, (0, "added domain example.org\nadded user alice@example.org\n", "")
        )
        store = self.store()
        self.assertEqual(store.users(), ["alice@example.org"])
        self.assertEqual(store.domains(), ["example.org"])
        stored = store.password_hash("alice@example.org")
        assert stored is not None
        self.assertTrue(stored.startswith("$argon2id$"))
        self.assertTrue(passwords.verify("correct horse", stored))

    def test_add_existing_domain(self) -> None:
        """'user add' in a domain that exists already prints only 'added user ...' and exits 0."""
        self.add_user("alice@example.org")
        result = self.run_cli("user", "add", "bob@example.org", "--password-stdin", stdin=b"x\n")
        self.assertEqual(result, (0, "added user bob@example.org\n", ""))

    def test_data_dir_created_private(self) -> None:
        """The CLI creates the data dir mode 0700 and the account store mode 0600."""
        self.add_user("alice@example.org")
        self.assertEqual(self.data_dir.stat().st_mode & 0o777, 0o700)
        self.assertEqual((self.data_dir / "accounts.sqlite3").stat().st_mode & 0o777, 0o600)

    def test_password_stdin_reads_one_line_only(self) -> None:
        """Exactly one line is read; only its line end is stripped (spaces are kept)."""
        self.add_user("alice@example.org", " two words \nsecond line")
        stored = self.store().password_hash("alice@example.org")
        assert stored is not None
        self.assertTrue(passwords.verify(" two words ", stored))
        self.assertFalse(passwords.verify(" two words \nsecond line", stored))

    def test_password_stdin_crlf_and_no_newline(self) -> None:
        """--password-stdin strips a CRLF or takes a password without a newline."""
        self.run_cli("user", "add", "a@example.org", "--password-stdin", stdin=b"pw1\r\n")
        self.run_cli("user", "add", "b@example.org", "--password-stdin", stdin=b"pw2")
        store = self.store()
        self.assertTrue(passwords.verify("pw1", store.password_hash("a@example.org") or ""))
        self.assertTrue(passwords.verify("pw2", store.password_hash("b@example.org") or ""))

    def test_password_stdin_utf8(self) -> None:
        """A UTF-8 password on stdin is stored so that it verifies."""
        self.add_user("alice@example.org", "pässwörd")
        stored = self.store().password_hash("alice@example.org") or ""
        self.assertTrue(passwords.verify("pässwörd", stored))

    def test_empty_password(self) -> None:
        """An empty password on stdin is the one-line user error 'empty password' and adds
        nobody."""
        for stdin in (b"\n", b"", b"\r\n"):
            result = self.run_cli(
                "user", "add", "alice@example.org", "--password-stdin", stdin=stdin
            )
            self.assertUserError(result, "empty password")
        self.assertEqual(self.store().users(), [])

    def test_bad_passwords(self) -> None:
        """A password that is not UTF-8, has a NUL, or is over 1024 characters is a one-line user
        error."""
        cases = [
            (b"\xff\xfe\n", "the password on stdin is not valid UTF-8"),
            (b"a\0b\n", "password contains a NUL character"),
            (b"x" * 1025 + b"\n", "password longer than 1024 characters"),
        ]
        for stdin, message in cases:
            result = self.run_cli(
                "user", "add", "alice@example.org", "--password-stdin", stdin=stdin
            )
            self.assertUserError(result, message)

    def test_no_quoted_or_literal_accounts(self) -> None:
        """SMTP accepts quoted local parts and address literals (RFC 5321 §4.1.2), but no
        account is made with one (§4.1.2: SHOULD avoid; it would become a directory)."""
        for address, message in (
            ('"a b"@example.org', "quoted local parts are not accepted"),
            ("a@[192.0.2.1]", "not a domain name"),
        ):
            result = self.run_cli("user", "add", address, "--password-stdin", stdin=b"pw\n")
            self.assertUserError(result, f"invalid address {address!r}: {message}")

    def test_prompt_twice(self) -> None:
        """Without --password-stdin the password is asked twice and stored."""
        self.getpass_answers = ["s3cret", "s3cret"]
        result = self.run_cli("user", "add", "alice@example.org")
        self.assertEqual(result[0], 0)
        self.assertEqual(self.getpass_answers, [])
        stored = self.store().password_hash("alice@example.org") or ""
        self.assertTrue(passwords.verify("s3cret", stored))

    def test_prompt_mismatch(self) -> None:
        """Two different answers at the prompt are 'passwords do not match' and add nobody."""
        self.getpass_answers = ["s3cret", "s3cr3t"]
        self.assertUserError(
            self.run_cli("user", "add", "alice@example.org"), "passwords do not match"
        )
        self.assertEqual(self.store().users(), [])

    def test_prompt_interrupted(self) -> None:
        """Ctrl-C at the password prompt is the one-line error 'interrupted'."""
        self.getpass_answers = ["^C"]
        self.assertUserError(self.run_cli("user", "add", "alice@example.org"), "interrupted")

    def test_duplicate_asks_no_password(self) -> None:
        """'user add' of an existing user (any case) fails before asking for a password."""
        self.add_user("alice@example.org")
        result = self.run_cli("user", "add", "ALICE@example.org")
        self.assertUserError(result, "user alice@example.org already exists")

    def test_add_over_alias(self) -> None:
        """'user add' of an address that is an alias is refused."""
        self.add_user("alice@example.org")
        self.run_cli("alias", "add", "info@example.org", "alice@example.org")
        self.assertUserError(
            self.run_cli("user", "add", "info@example.org"), "info@example.org is already an alias"
        )

    def test_invalid_address(self) -> None:
        """'user add' of an invalid address is a one-line error naming the reason."""
        self.assertUserError(
            self.run_cli("user", "add", "not-an-address"),
            "invalid address 'not-an-address': address must be local@domain",
        )
        self.assertUserError(
            self.run_cli("user", "add", "a b@example.org"),
            "invalid address 'a b@example.org': invalid local part",
        )
        self.assertUserError(
            self.run_cli("user", "add", "a@-bad-.org"),
            "invalid address 'a@-bad-.org': invalid domain",
        )

    def test_address_not_utf8(self) -> None:
        """An address argument with bytes that are not UTF-8 (C{$'\\xff@example.org'}) is a
        one-line error, exit 1, in every command that takes an address (no traceback)."""
        self.add_user("alice@example.org")
        bad = os.fsdecode(b"\xff@example.org")  # what sys.argv holds for those bytes
        message = "invalid address '\\udcff@example.org': invalid local part"
        self.assertUserError(self.run_cli("user", "add", bad, "--password-stdin"), message)
        self.assertUserError(self.run_cli("user", "passwd", bad, "--password-stdin"), message)
        self.assertUserError(self.run_cli("user", "del", bad), message)
        self.assertUserError(self.run_cli("alias", "add", bad, "alice@example.org"), message)
        self.assertUserError(self.run_cli("alias", "add", "x@example.org", bad), message)
        result = subprocess.run(
            [sys.executable, "-m", "twistedmail.cli", "--config", str(self.config), "user", "del"]
            + [os.fsencode(bad)],
            capture_output=True,
            cwd=ROOT,
            timeout=120,
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (1, b"", b"twistedmail: error: " + message.encode() + b"\n"),
        )
        self.assertUserError(
            self.run_cli("throttle", "unblock", os.fsdecode(b"\xff")),
            "not an IP address or a user address: '\\udcff'",
        )

    def test_passwd(self) -> None:
        """'user passwd' (case-blind) replaces the password: the new one verifies, the old one
        not."""
        self.add_user("alice@example.org", "old")
        result = self.run_cli(
            "user", "passwd", "Alice@example.org", "--password-stdin", stdin=b"new\n"
        )
        self.assertEqual(result, (0, "changed password of alice@example.org\n", ""))
        stored = self.store().password_hash("alice@example.org") or ""
        self.assertTrue(passwords.verify("new", stored))
        self.assertFalse(passwords.verify("old", stored))

    def test_passwd_prompt(self) -> None:
        """'user passwd' without --password-stdin asks twice and stores the new password."""
        self.add_user("alice@example.org", "old")
        self.getpass_answers = ["new", "new"]
        self.assertEqual(self.run_cli("user", "passwd", "alice@example.org")[0], 0)
        self.assertTrue(
            passwords.verify("new", self.store().password_hash("alice@example.org") or "")
        )

    def test_passwd_unknown_user_asks_no_password(self) -> None:
        """'user passwd' of an unknown user fails before asking for a password."""
        self.add_user("alice@example.org")
        self.assertUserError(
            self.run_cli("user", "passwd", "bob@example.org"), "no such user bob@example.org"
        )

    def test_del(self) -> None:
        """'user del' removes the user, says it had no Maildir, and keeps the others."""
        self.add_user("alice@example.org")
        self.add_user("bob@example.org")
        result = self.run_cli("user", "del", "alice@example.org")
        self.assertEqual(result, (0, "deleted user alice@example.org (it had no Maildir)\n", ""))
        self.assertEqual(self.store().users(), ["bob@example.org"])

    def make_maildir(self, address: str) -> Path:
        local, _, domain = address.partition("@")
        maildir = self.data_dir / "mail" / domain / local
        for sub in ("cur", "new", "tmp"):
            (maildir / sub).mkdir(parents=True)
        (maildir / "new" / "1.M1P1.host,S=5").write_bytes(b"old\r\n")
        return maildir

    def test_del_moves_the_maildir_aside_and_add_starts_empty(self) -> None:
        """Issue 9: user del moves the Maildir to DATA_DIR/deleted/ADDRESS-TIMESTAMP/, so a
        new user of the same address does not get the old owner's mail."""
        self.add_user("alice@example.org")
        maildir = self.make_maildir("alice@example.org")
        code, out, err = self.run_cli("user", "del", "alice@example.org")
        [moved] = (self.data_dir / "deleted").iterdir()
        self.assertEqual(
            (code, out, err),
            (0, f"deleted user alice@example.org; its mail is moved to {moved}\n", ""),
        )
        self.assertRegex(moved.name, r"^alice@example\.org-\d{8}T\d{6}Z$")
        self.assertEqual((moved / "new" / "1.M1P1.host,S=5").read_bytes(), b"old\r\n")
        self.assertEqual((self.data_dir / "deleted").stat().st_mode & 0o777, 0o700)
        self.assertFalse(maildir.exists())
        self.add_user("alice@example.org")
        self.assertFalse(maildir.exists())
        # Deleted again in the same second: a second name, nothing overwritten.
        self.make_maildir("alice@example.org")
        self.run_cli("user", "del", "alice@example.org")
        self.assertEqual(len(list((self.data_dir / "deleted").iterdir())), 2)

    def test_del_of_a_long_address_moves_the_maildir_aside(self) -> None:
        """An address of up to 254 octets (RFC 5321 §4.5.3.1.3) is too long for one file
        name with the timestamp: user del moves its Maildir aside under the address cut to
        217 octets, "~" and 16 hex digits of its SHA-256, not "File name too long"."""
        domain = f"{'a' * 63}.{'b' * 63}.{'c' * 55}.test"
        address = f"{'u' * 60}@{domain}"  # 249 octets
        self.add_user(address)
        self.make_maildir(address)
        code, out, err = self.run_cli("user", "del", address)
        [moved] = (self.data_dir / "deleted").iterdir()
        self.assertEqual(
            (code, out, err), (0, f"deleted user {address}; its mail is moved to {moved}\n", "")
        )
        digest = hashlib.sha256(address.encode()).hexdigest()[:16]
        self.assertRegex(moved.name, rf"^{re.escape(address[:217])}~{digest}-\d{{8}}T\d{{6}}Z$")
        self.assertEqual((moved / "new" / "1.M1P1.host,S=5").read_bytes(), b"old\r\n")
        self.assertEqual(self.store().users(), [])

    def test_add_refuses_an_existing_maildir_unless_adopted(self) -> None:
        """user del --keep-mail leaves the Maildir; user add then refuses it (one line, exit
        1, no password asked) unless --adopt-maildir."""
        self.add_user("alice@example.org")
        maildir = self.make_maildir("alice@example.org")
        self.assertEqual(
            self.run_cli("user", "del", "alice@example.org", "--keep-mail"),
            (0, f"deleted user alice@example.org (its mail is kept in {maildir})\n", ""),
        )
        self.assertUserError(
            self.run_cli("user", "add", "alice@example.org"),
            f"{maildir} already exists (mail of an earlier alice@example.org?): move it away,"
            " or pass --adopt-maildir to give that mail to the new user",
        )
        self.assertEqual(self.store().users(), [])
        result = self.run_cli(
            "user", "add", "alice@example.org", "--adopt-maildir", "--password-stdin",
            stdin=b"pw\n",
        )  # fmt: skip
        self.assertEqual(result, (0, "added user alice@example.org\n", ""))
        self.assertTrue((maildir / "new" / "1.M1P1.host,S=5").exists())

    def test_domain_del_moves_what_is_left_aside(self) -> None:
        """domain del moves mail/DOMAIN/ (Maildirs kept by user del --keep-mail) aside too,
        unless --keep-mail; an empty one is removed."""
        self.add_user("alice@example.org")
        self.make_maildir("alice@example.org")
        self.run_cli("user", "del", "alice@example.org", "--keep-mail")
        code, out, err = self.run_cli("domain", "del", "example.org")
        [moved] = (self.data_dir / "deleted").iterdir()
        self.assertEqual(
            (code, out, err), (0, f"deleted domain example.org; its mail is moved to {moved}\n", "")
        )
        self.assertTrue((moved / "alice" / "new" / "1.M1P1.host,S=5").exists())
        self.assertFalse((self.data_dir / "mail" / "example.org").exists())
        self.add_user("bob@example.net")
        (self.data_dir / "mail" / "example.net").mkdir()
        self.run_cli("user", "del", "bob@example.net")
        self.assertEqual(
            self.run_cli("domain", "del", "example.net"), (0, "deleted domain example.net\n", "")
        )
        self.assertFalse((self.data_dir / "mail" / "example.net").exists())

    def test_del_unknown(self) -> None:
        """'user del' of an unknown user is 'no such user'."""
        self.add_user("alice@example.org")
        self.assertUserError(
            self.run_cli("user", "del", "carol@example.org"), "no such user carol@example.org"
        )

    def test_list(self) -> None:
        """'user list' prints one address a line, sorted."""
        for address in ("zed@b.example", "alice@example.org", "bob@example.org"):
            self.add_user(address)
        result = self.run_cli("user", "list")
        self.assertEqual(result, (0, "alice@example.org\nbob@example.org\nzed@b.example\n", ""))

    def test_list_empty_store(self) -> None:
        """'user list' with no users prints nothing and exits 0."""
        self.run_cli("domain", "add", "example.org")
        self.assertEqual(self.run_cli("user", "list"), (0, "", ""))

    def test_read_commands_need_a_store(self) -> None:
        """A read on a missing store is an error and creates nothing (wrong --config?)."""
        message = f"no account store in {self.data_dir} (add a user first, or check --config)"
        for argv in (
            ["user", "list"],
            ["domain", "list"],
            ["alias", "list"],
            ["user", "del", "a@example.org"],
            ["domain", "del", "example.org"],
        ):
            self.assertUserError(self.run_cli(*argv), message)
        self.assertEqual(list(self.data_dir.iterdir()), [])

    def test_live_for_an_open_store(self) -> None:
        """The server's open store connection sees the CLI's change at its next query (WAL)."""
        self.add_user("alice@example.org", "old")
        server_store = self.store()
        self.assertTrue(
            passwords.verify("old", server_store.password_hash("alice@example.org") or "")
        )
        self.run_cli("user", "passwd", "alice@example.org", "--password-stdin", stdin=b"new\n")
        self.run_cli("user", "add", "bob@example.org", "--password-stdin", stdin=b"b\n")
        self.assertTrue(
            passwords.verify("new", server_store.password_hash("alice@example.org") or "")
        )
        self.assertTrue(server_store.is_user("bob@example.org"))


class DomainCommandTests(CLITestCase):
    def test_reader_closing_the_pipe_is_not_an_error(self) -> None:
        """`twistedmail domain list | head -1` with head gone before the output: exit 0 and
        nothing on stderr (it printed "error: Broken pipe" and exited 1)."""
        for domain in ("a.example", "b.example"):
            self.run_cli("domain", "add", domain)
        proc = subprocess.Popen(
            [sys.executable, "-m", "twistedmail.cli", "--config", str(self.config)]
            + ["domain", "list"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        self.assertEqual((proc.wait(), err), (0, b""))

    def test_add_list_del(self) -> None:
        """'domain add' lower-cases and IDNA-encodes, 'domain list' lists sorted, 'domain del'
        removes."""
        self.assertEqual(
            self.run_cli("domain", "add", "Example.ORG"), (0, "added domain example.org\n", "")
        )
        self.assertEqual(
            self.run_cli("domain", "add", "bücher.example"),
            (0, "added domain xn--bcher-kva.example\n", ""),
        )
        self.assertEqual(
            self.run_cli("domain", "list"), (0, "example.org\nxn--bcher-kva.example\n", "")
        )
        self.assertEqual(
            self.run_cli("domain", "del", "EXAMPLE.org"), (0, "deleted domain example.org\n", "")
        )
        self.assertEqual(self.run_cli("domain", "list"), (0, "xn--bcher-kva.example\n", ""))

    def test_errors(self) -> None:
        """'domain add' of an existing or invalid domain (an address literal), and 'domain del'
        of an unknown one, are one-line errors."""
        self.run_cli("domain", "add", "example.org")
        self.assertUserError(
            self.run_cli("domain", "add", "example.org"), "domain example.org already exists"
        )
        self.assertUserError(
            self.run_cli("domain", "add", "[192.0.2.1]"),
            "invalid domain '[192.0.2.1]': not a domain name",
        )
        self.assertUserError(
            self.run_cli("domain", "del", "other.example"), "no such domain other.example"
        )
        self.assertUserError(
            self.run_cli("domain", "del", "bad..name"), "invalid domain 'bad..name': invalid domain"
        )

    def test_idna2008(self) -> None:
        """domain/user/alias add take IDNA2008 names (faß.test is not fass.test) and store
        A-labels; mixed case folds; an invalid label is one line on stderr."""
        self.assertEqual(
            self.run_cli("domain", "add", "Faß.TEST"), (0, "added domain xn--fa-hia.test\n", "")
        )
        self.add_user("alice@faß.test")
        added = self.run_cli("alias", "add", "info@FAß.test", "alice@xn--fa-hia.test")
        self.assertEqual(added[0], 0, added)
        self.assertEqual(self.run_cli("domain", "list"), (0, "xn--fa-hia.test\n", ""))
        self.assertEqual(self.run_cli("user", "list")[1], "alice@xn--fa-hia.test\n")
        self.assertUserError(
            self.run_cli("domain", "add", "☃.test"),
            "invalid domain '☃.test': invalid internationalised domain",
        )

    def test_del_with_aliases(self) -> None:
        """'domain del' of a domain that still has aliases is refused, counting them."""
        self.run_cli("domain", "add", "example.org")
        self.run_cli("alias", "add", "info@example.org", "x@remote.example")
        self.assertUserError(
            self.run_cli("domain", "del", "example.org"),
            "domain example.org still has 1 alias(es); delete them first",
        )

    def test_del_with_users(self) -> None:
        """'domain del' of a domain that still has users is refused, counting them."""
        self.add_user("alice@example.org")
        self.assertUserError(
            self.run_cli("domain", "del", "example.org"),
            "domain example.org still has 1 user(s); delete them first",
        )


class AliasCommandTests(CLITestCase):
    def test_add_list_del(self) -> None:
        """'alias add' prints the alias and its lower-cased targets, 'alias list' lists them,
        'alias del' removes."""
        self.add_user("alice@example.org")
        result = self.run_cli(
            "alias", "add", "Postmaster@example.org", "alice@example.org", "Bob@Remote.example"
        )
        self.assertEqual(
            result, (0, "postmaster@example.org -> alice@example.org, bob@remote.example\n", "")
        )
        self.run_cli("alias", "add", "abuse@example.org", "postmaster@example.org")
        self.assertEqual(
            self.run_cli("alias", "list"),
            (
                0,
                (
                    "abuse@example.org postmaster@example.org\n"
                    "postmaster@example.org alice@example.org bob@remote.example\n"
                ),
                "",
            ),
        )
        self.assertEqual(
            self.run_cli("alias", "del", "abuse@example.org"),
            (0, "deleted alias abuse@example.org\n", ""),
        )
        self.assertEqual(
            self.run_cli("alias", "list"),
            (0, ("postmaster@example.org alice@example.org bob@remote.example\n"), ""),
        )

    def test_add_targets_to_existing(self) -> None:
        """'alias add' to an existing alias adds the targets and prints them all."""
        self.add_user("alice@example.org")
        self.run_cli("alias", "add", "team@example.org", "alice@example.org")
        result = self.run_cli("alias", "add", "team@example.org", "carol@remote.example")
        self.assertEqual(
            result, (0, "team@example.org -> alice@example.org, carol@remote.example\n", "")
        )

    def test_errors(self) -> None:
        """'alias add' in a non-local domain, over a user, with an invalid or no target, and
        'alias del' of an unknown alias are one-line errors."""
        self.add_user("alice@example.org")
        self.assertUserError(
            self.run_cli("alias", "add", "x@other.example", "alice@example.org"),
            "other.example is not a local domain; add it first",
        )
        self.assertUserError(
            self.run_cli("alias", "add", "alice@example.org", "b@example.org"),
            "alice@example.org is a user, not an alias",
        )
        self.assertUserError(
            self.run_cli("alias", "add", "x@example.org", "not an@address"),
            "invalid address 'not an@address': invalid local part",
        )
        self.assertUserError(
            self.run_cli("alias", "del", "x@example.org"), "no such alias x@example.org"
        )
        code, out, err = self.run_cli("alias", "add", "x@example.org")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err.count("\n"), 1)
        self.assertTrue(
            err.startswith("twistedmail: error: the following arguments are required: TARGET")
        )


class ConfigTests(CLITestCase):
    def test_check_config(self) -> None:
        """'check-config' on a valid config prints 'config OK' and creates nothing in the data
        dir."""
        self.assertEqual(self.run_cli("check-config"), (0, f"config OK: {self.config}\n", ""))
        self.assertEqual(list(self.data_dir.iterdir()), [])

    def test_check_config_tls(self) -> None:
        """'check-config' loads the [tls] certificate and key and says OK."""
        cert, key = self.base / "cert.pem", self.base / "key.pem"
        create_self_signed(cert, key, "mail.example.org")
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
            f'[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        )
        self.assertEqual(self.run_cli("check-config"), (0, f"config OK: {self.config}\n", ""))

    def test_check_config_https_names(self) -> None:
        """With [listen] https, a warning per local domain whose mta-sts. and autodiscover.
        names the certificate lacks (RFC 8461 §3.3); a wildcard covers them."""
        cert, key = self.base / "cert.pem", self.base / "key.pem"
        create_self_signed(cert, key, "mail.example.org")
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
            f'[listen]\nhttps = "127.0.0.1:8443"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        )
        self.run_cli("domain", "add", "example.org")
        self.run_cli("alias", "add", "postmaster@example.org", "root@elsewhere.test")
        self.assertEqual(
            self.run_cli("check-config"),
            (
                0,
                f"config OK: {self.config}\n",
                f"twistedmail: warning: [tls] cert: {cert} does not name mta-sts.example.org or"
                " autodiscover.example.org: MTA-STS senders and Outlook will refuse the HTTPS"
                " listener for that domain\n",
            ),
        )
        create_self_signed(cert, key, "*.example.org")
        self.assertEqual(self.run_cli("check-config"), (0, f"config OK: {self.config}\n", ""))

    def test_check_config_bad_tls(self) -> None:
        """'check-config' with a missing key or an unloadable certificate exits 1 with one line
        naming the file."""
        cert, key = self.base / "cert.pem", self.base / "key.pem"
        cert.write_text("not a certificate\n")
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\n[tls]\ncert = "{cert}"\nkey = "{key}"\n'
        )
        code, out, err = self.run_cli("check-config")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(err, f"twistedmail: error: cannot read {key}: No such file or directory\n")
        key.write_text("not a key\n")
        code, out, err = self.run_cli("check-config")
        self.assertEqual((code, out, err.count("\n")), (1, "", 1))
        self.assertTrue(err.startswith(f"twistedmail: error: cannot load certificate {cert} "))

    def test_defaults(self) -> None:
        """No --config, no $TWISTEDMAIL_CONFIG, no ./twistedmail.toml: built-in defaults."""
        empty = self.base / "empty"
        empty.mkdir()
        self.chdir(empty)
        self.setenv(cli.config_module.ENV_VAR, None)
        # The default hostname is the machine's (socket.getfqdn()): warned about if not a FQDN.
        warnings = cli.config_module.parse_config({}, None).warnings
        self.assertEqual(
            self.run_cli("check-config", config=False),
            (0, "config OK: defaults\n", "".join(f"twistedmail: warning: {w}\n" for w in warnings)),
        )
        self.assertFalse((empty / "twistedmail-data").exists())

    def test_discovery_env_and_cwd(self) -> None:
        """$TWISTEDMAIL_CONFIG, else ./twistedmail.toml, finds the same data dir as the server."""
        self.setenv(cli.config_module.ENV_VAR, str(self.config))
        self.add_user("alice@example.org")
        self.assertEqual(self.run_cli("user", "list", config=False), (0, "alice@example.org\n", ""))
        self.run_cli("alias", "add", "postmaster@example.org", "alice@example.org", config=False)
        self.setenv(cli.config_module.ENV_VAR, None)
        self.chdir(self.base)
        self.assertEqual(
            self.run_cli("check-config", config=False), (0, "config OK: twistedmail.toml\n", "")
        )
        self.assertEqual(self.run_cli("user", "list", config=False), (0, "alice@example.org\n", ""))

    def test_check_config_warns_of_domains_without_admin(self) -> None:
        """check-config warns of a local domain with no postmaster@ user or alias, where
        postmaster@ and abuse@ mail (RFC 5321 §4.5.1, RFC 2142) falls back to the first user."""
        self.add_user("alice@example.org")
        self.run_cli("domain", "add", "other.example")
        self.run_cli("alias", "add", "postmaster@other.example", "alice@example.org")
        self.assertEqual(
            self.run_cli("check-config"),
            (
                0,
                f"config OK: {self.config}\n",
                "twistedmail: warning: example.org has no configured admin: postmaster@example.org"
                " and abuse@example.org go to the first user; run: twistedmail alias add"
                " postmaster@example.org ADMIN\n",
            ),
        )

    def test_check_config_warns_of_unknown_alias_targets(self) -> None:
        """check-config warns of an alias target in a local domain that nobody has (e.g. a
        user deleted since): the alias's mail is delivered to the others, that copy dropped."""
        self.add_user("alice@example.org")
        self.run_cli("alias", "add", "postmaster@example.org", "alice@example.org")
        self.add_user("bob@example.org")
        self.run_cli("alias", "add", "team@example.org", "alice@example.org", "bob@example.org")
        self.run_cli("user", "del", "bob@example.org")
        self.assertEqual(
            self.run_cli("check-config"),
            (
                0,
                f"config OK: {self.config}\n",
                "twistedmail: warning: alias team@example.org -> bob@example.org: no such user"
                " or alias here, the alias's mail never reaches it; run: twistedmail"
                " alias del team@example.org, then alias add it with the targets to keep\n",
            ),
        )

    def test_catch_all_alias(self) -> None:
        """alias add/list/del take @domain (a catch-all); a wildcard or bare @ is one error."""
        self.add_user("alice@example.org")
        self.assertEqual(
            self.run_cli("alias", "add", "@Example.org", "alice@example.org"),
            (0, "@example.org -> alice@example.org\n", ""),
        )
        self.assertEqual(self.run_cli("alias", "list"), (0, "@example.org alice@example.org\n", ""))
        for bad, why in (
            ("*@example.org", "'*@example.org': a catch-all is written @example.org"),
            ("@", "'@': expected local@domain or @domain"),
            ("@@x", "'@@x': expected local@domain or @domain"),
        ):
            self.assertUserError(
                self.run_cli("alias", "add", bad, "alice@example.org"), f"invalid address {why}"
            )
        self.assertEqual(
            self.run_cli("alias", "del", "@EXAMPLE.org"), (0, "deleted alias @example.org\n", "")
        )
        self.assertEqual(self.run_cli("alias", "list"), (0, "", ""))

    def test_bad_config(self) -> None:
        """An unknown config key or invalid TOML is a one-line error naming the file."""
        self.write_config('[server]\ndata_dir = "x"\nhostnme = "typo"\n')
        self.assertUserError(
            self.run_cli("user", "list"), f"{self.config}: [server] hostnme: unknown key"
        )
        self.write_config("[server\n")
        code, out, err = self.run_cli("user", "list")
        self.assertEqual((code, out, err.count("\n")), (1, "", 1))
        self.assertTrue(err.startswith(f"twistedmail: error: {self.config}: invalid TOML: "))

    def test_missing_config_file(self) -> None:
        """A missing config file is a one-line error naming it."""
        self.config.unlink()
        self.assertUserError(
            self.run_cli("user", "list"),
            f"{self.config}: cannot read config file: No such file or directory",
        )

    def test_data_dir_cannot_be_created(self) -> None:
        """A data dir that cannot be created is a one-line error naming the key and the reason."""
        blocker = self.base / "file"
        blocker.write_text("")
        self.write_config(f'[server]\ndata_dir = "{blocker}/data"\n')
        self.assertUserError(
            self.run_cli("init"),
            f"{self.config}: [server] data_dir: cannot create {blocker}/data: Not a directory",
        )

    def test_corrupt_store(self) -> None:
        """A corrupt account store is the one-line error 'account store: file is not a database'."""
        (self.data_dir / "accounts.sqlite3").write_bytes(b"this is not a database" * 100)
        self.assertUserError(self.run_cli("user", "list"), "account store: file is not a database")

    def test_store_is_a_directory(self) -> None:
        """An account store path that is a directory gives one error line and no traceback."""
        (self.data_dir / "accounts.sqlite3").mkdir(parents=True)
        code, out, err = self.run_cli("user", "list")
        self.assertEqual((code, out, err.count("\n")), (1, "", 1))
        self.assertTrue(err.startswith("twistedmail: error: "))
        self.assertNotIn("Traceback", err)

    def setenv(self, name: str, value: str | None) -> None:
        old = os.environ.get(name)

        def restore() -> None:
            if old is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = old

        self.addCleanup(restore)
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value

    def chdir(self, path: Path) -> None:
        old = os.getcwd()
        self.addCleanup(os.chdir, old)
        os.chdir(path)


class InitTests(CLITestCase):
    """Issue 9: a command never creates the data dir (a CLI run from another directory, or
    with another config, would write a second account store the server never reads);
    C{twistedmail init} is the explicit first setup."""

    def setUp(self) -> None:
        super().setUp()
        self.data_dir.rmdir()

    def refusal(self, data_dir: Path, origin: str) -> str:
        return (
            f"data dir {data_dir} does not exist ({origin}); for a first setup create it with"
            " 'twistedmail init' (or by starting the server once), else check --config"
        )

    def test_commands_refuse_a_missing_data_dir(self) -> None:
        """Every command but init and check-config: one line, exit 1, nothing created."""
        message = self.refusal(self.data_dir, f"[server] data_dir of {self.config}")
        for argv in (
            ["user", "add", "a@example.org", "--password-stdin"],
            ["user", "passwd", "a@example.org", "--password-stdin"],
            ["user", "del", "a@example.org"],
            ["user", "list"],
            ["user", "quota", "a@example.org", "1GiB"],
            ["domain", "add", "example.org"],
            ["domain", "list"],
            ["alias", "add", "info@example.org", "a@example.org"],
            ["dkim", "generate", "example.org"],
            ["dns-records", "example.org"],
            ["queue", "list"],
            ["queue", "flush"],
        ):
            self.assertUserError(self.run_cli(*argv, stdin=b"pw\n"), message)
        self.assertFalse(self.data_dir.exists())

    def test_init_creates_then_keeps(self) -> None:
        """init makes the data dir (0700), mail/ and the store (0600); run again it changes
        nothing and says so; then user add works."""
        self.assertEqual(self.run_cli("init"), (0, f"data dir {self.data_dir} created\n", ""))
        self.assertEqual(self.data_dir.stat().st_mode & 0o777, 0o700)
        self.assertEqual(
            sorted(p.name for p in self.data_dir.iterdir()), ["accounts.sqlite3", "mail"]
        )
        self.assertEqual((self.data_dir / "accounts.sqlite3").stat().st_mode & 0o777, 0o600)
        self.add_user("alice@example.org")
        self.assertEqual(
            self.run_cli("init"), (0, f"data dir {self.data_dir} already set up\n", "")
        )
        self.assertEqual(self.store().users(), ["alice@example.org"])

    def test_default_data_dir_refused_in_another_directory(self) -> None:
        """Without a config file, the default ./twistedmail-data of another directory is not
        created by a command: the admin learns the CLI is not where the server is."""
        elsewhere = self.base / "elsewhere"
        elsewhere.mkdir()
        self.chdir(elsewhere)
        self.setenv(cli.config_module.ENV_VAR, None)
        code, out, err = self.run_cli(
            "user", "add", "a@example.org", "--password-stdin", stdin=b"pw\n", config=False
        )
        message = self.refusal(
            elsewhere / "twistedmail-data",
            "the default without a config file, in the current directory",
        )
        self.assertEqual((code, out, err), (1, "", f"twistedmail: error: {message}\n"))
        self.assertEqual(list(elsewhere.iterdir()), [])

    def test_relative_data_dir_is_the_config_files(self) -> None:
        """A relative data_dir (and the default when the file sets none) is resolved against
        the config file's directory, wherever the CLI runs and however --config is spelt."""
        self.write_config('[server]\ndata_dir = "data"\n')
        self.assertEqual(self.run_cli("init"), (0, f"data dir {self.data_dir} created\n", ""))
        self.add_user("alice@example.org")
        elsewhere = self.base / "elsewhere"
        elsewhere.mkdir()
        self.chdir(elsewhere)
        self.assertEqual(
            self.run_cli("--config", "../twistedmail.toml", "user", "list", config=False),
            (0, "alice@example.org\n", ""),
        )
        self.write_config('[server]\nhostname = "mail.example.org"\n')
        default = self.base / "twistedmail-data"
        self.assertEqual(self.run_cli("init"), (0, f"data dir {default} created\n", ""))
        self.assertEqual(list(elsewhere.iterdir()), [])

    chdir = ConfigTests.chdir
    setenv = ConfigTests.setenv


class UsageTests(CLITestCase):
    def test_usage_errors_are_one_line(self) -> None:
        """A missing command, action or argument is one line naming it and the --help to read."""
        cases = [
            ((), "the following arguments are required: COMMAND (see 'twistedmail --help')"),
            (
                ("user",),
                "the following arguments are required: ACTION (see 'twistedmail user --help')",
            ),
            (
                ("user", "add"),
                "the following arguments are required: address (see 'twistedmail user add --help')",
            ),
            (("user", "list", "extra"), "unrecognized arguments: extra (see 'twistedmail --help')"),
        ]
        for argv, message in cases:
            self.assertUserError(self.run_cli(*argv), message)
        code, out, err = self.run_cli("frobnicate")
        self.assertEqual((code, out, err.count("\n")), (1, "", 1))
        self.assertTrue(
            err.startswith("twistedmail: error: argument COMMAND: invalid choice: 'frobnicate'")
        )

    def test_queue_commands_on_an_empty_spool(self) -> None:
        """'queue list' on an empty spool prints nothing; show of an unknown ID, delete of an
        invalid ID, and flush with no server are one-line errors."""
        self.assertEqual(self.run_cli("queue", "list"), (0, "", ""))
        self.assertUserError(
            self.run_cli("queue", "show", "0123456789ABCDEF"), "no queued message 0123456789ABCDEF"
        )
        self.assertUserError(self.run_cli("queue", "delete", "../x"), "invalid queue ID '../x'")
        self.assertUserError(self.run_cli("queue", "flush"), "no running server")

    def test_throttle_commands_need_the_server(self) -> None:
        """throttle list/unblock talk to the running server: without one, one line, exit 1;
        a target that is neither an IP nor an address is refused before that."""
        self.assertUserError(self.run_cli("throttle", "list"), "no running server")
        self.assertUserError(self.run_cli("throttle", "unblock", "192.0.2.1"), "no running server")
        self.assertUserError(
            self.run_cli("throttle", "unblock", "alice@example.org"), "no running server"
        )
        self.assertUserError(
            self.run_cli("throttle", "unblock", "10.0.0.0/33"), "invalid network '10.0.0.0/33'"
        )
        self.assertUserError(
            self.run_cli("throttle", "unblock", "a b"), "not an IP address or a user address: 'a b'"
        )

    def test_help(self) -> None:
        """--help exits 0 and lists the commands."""
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as cm:
            cli.main(["--help"])
        self.assertEqual(cm.exception.code, 0)
        for command in ("user", "domain", "alias", "check-config"):
            self.assertIn(command, out.getvalue())

    def test_console_script_entry_point(self) -> None:
        """pyproject.toml installs the twistedmail command as twistedmail.cli:main."""
        project = tomllib.loads((ROOT / "pyproject.toml").read_text("utf-8"))
        self.assertEqual(project["project"]["scripts"]["twistedmail"], "twistedmail.cli:main")
        # twistedmail.cli is a package: a wheel without it listed would have no command.
        self.assertIn("twistedmail.cli", project["tool"]["setuptools"]["packages"])

    def test_python_dash_m(self) -> None:
        """C{python -m twistedmail.cli} runs the same command: exit 1 and one error line."""
        result = subprocess.run(
            [sys.executable, "-m", "twistedmail.cli", "--config", str(self.config), "nonsense"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        self.assertEqual(result.returncode, 1)
        self.assertRegex(result.stderr, r"\Atwistedmail: error: argument COMMAND: invalid choice")
        self.assertEqual(result.stdout, "")


class CheckConfigSmarthostTests(CLITestCase):
    def test_smarthost_password_file_and_ca_checked(self) -> None:
        """'check-config' refuses a smarthost password file readable by others (chmod 600) and a
        smarthost_ca with no certificate."""
        secret, ca = self.base / "secret", self.base / "ca.pem"
        secret.write_text("pw\n")
        secret.chmod(0o640)
        ca.write_text("not a certificate\n")
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
            f'[relay]\nsmarthost = "relay.example.net"\n'
            f'smarthost_username = "me"\nsmarthost_password_file = "{secret}"\n'
        )
        code, out, err = self.run_cli("check-config")
        self.assertEqual((code, out), (1, ""))
        self.assertEqual(
            err,
            f"twistedmail: error: {self.config}: [relay] smarthost_password_file: {secret} is"
            " readable by others (mode 640); chmod 600 it\n",
        )
        secret.chmod(0o600)
        self.assertEqual(self.run_cli("check-config"), (0, f"config OK: {self.config}\n", ""))
        self.write_config(self.config.read_text() + f'smarthost_ca = "{ca}"\n')
        code, out, err = self.run_cli("check-config")
        self.assertEqual((code, out), (1, ""))
        self.assertTrue(
            err.startswith(
                f"twistedmail: error: {self.config}: [relay] smarthost_ca: no CA certificate in"
                f" {ca}: "
            ),
            err,
        )


class QuotaCommandTests(CLITestCase):
    """C{user quota ADDRESS [SIZE] [--messages N]}, C{user list --quota}, [limits]
    default_quota for C{user add}."""

    def test_set_show_and_clear(self) -> None:
        """'user quota' sets storage and message limits, shows usage against them, and 0, none or
        unlimited clears them."""
        self.add_user("alice@example.org")
        self.assertEqual(
            self.run_cli("user", "quota", "Alice@example.org", "2GiB"),
            (0, "quota of alice@example.org: storage 2GiB, messages unlimited\n", ""),
        )
        self.assertEqual(self.store().quota("alice@example.org"), Quota(storage=2**30 * 2))
        self.assertEqual(
            self.run_cli("user", "quota", "alice@example.org", "--messages", "1000"),
            (0, "quota of alice@example.org: storage 2GiB, messages 1000\n", ""),
        )
        self.assertEqual(
            self.run_cli("user", "quota", "alice@example.org", "500MB"),
            (0, "quota of alice@example.org: storage 500MB, messages 1000\n", ""),
        )
        root = self.data_dir / "mail" / "example.org" / "alice"
        make_maildir(root)
        write_durably(root / "new", b"x" * 1234)
        self.assertEqual(
            self.run_cli("user", "quota", "alice@example.org"),
            (0, "alice@example.org storage=1234/500MB messages=1/1000\n", ""),
        )
        for none in ("0", "none", "unlimited"):
            self.assertEqual(
                self.run_cli("user", "quota", "alice@example.org", none, "--messages", "0"),
                (0, "quota of alice@example.org: storage unlimited, messages unlimited\n", ""),
            )
        self.assertEqual(self.store().quota("alice@example.org"), Quota())

    def test_errors(self) -> None:
        """'user quota' of an unknown user or with an invalid size is a one-line error."""
        self.add_user("alice@example.org")
        self.assertUserError(
            self.run_cli("user", "quota", "bob@example.org", "1GiB"),
            "no such user bob@example.org",
        )
        self.assertUserError(
            self.run_cli("user", "quota", "alice@example.org", "lots"),
            'invalid size \'lots\': must be a size such as "1GiB", or "0" / "none" for unlimited',
        )
        self.assertUserError(
            self.run_cli("user", "quota", "alice@example.org", "1GiB", "--messages", "-3"),
            "invalid message count '-3': 0 (none) or more",
        )
        # QA: numbers too big for SQLite's INTEGER ended in an OverflowError traceback
        self.assertUserError(
            self.run_cli("user", "quota", "alice@example.org", "99999999999999999999999GiB"),
            "invalid size '99999999999999999999999GiB': too large: at most 1PiB",
        )
        self.assertUserError(
            self.run_cli(
                "user", "quota", "alice@example.org", "--messages", "99999999999999999999999"
            ),
            "invalid message count '99999999999999999999999': at most 2147483647",
        )
        self.assertEqual(self.store().quota("alice@example.org"), Quota())

    def test_list_with_quota(self) -> None:
        """'user list --quota' shows each user's usage against its limits."""
        self.add_user("bob@example.org")
        self.add_user("alice@example.org")
        self.run_cli("user", "quota", "alice@example.org", "1MiB", "--messages", "50")
        self.assertEqual(
            self.run_cli("user", "list", "--quota"),
            (
                0,
                "alice@example.org storage=0/1MiB messages=0/50\n"
                "bob@example.org storage=0/none messages=0/none\n",
                "",
            ),
        )
        # Without --quota the list stays one address per line (DESIGN §3).
        self.assertEqual(
            self.run_cli("user", "list"), (0, "alice@example.org\nbob@example.org\n", "")
        )

    def test_new_users_get_the_default_quota(self) -> None:
        """[limits] default_quota is given to users added after it is set."""
        self.config.write_text(
            self.config.read_text() + '\n[limits]\ndefault_quota = "1GiB"\n', "utf-8"
        )
        self.add_user("alice@example.org")
        self.assertEqual(self.store().quota("alice@example.org"), Quota(storage=2**30))


class CheckConfigWarningTests(CLITestCase):
    """check-config reports what loads but is likely wrong: one warning line each on stderr,
    exit 0 (issue 9, issue 13)."""

    def test_bare_size_and_short_hostname_are_warned(self) -> None:
        """A unit-less size and a hostname that is not a FQDN are warned about."""
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail"\n'
            "[limits]\nmax_message_size = 10240000\n"
        )
        self.assertEqual(
            self.run_cli("check-config"),
            (
                0,
                f"config OK: {self.config}\n",
                f'twistedmail: warning: {self.config}: [server] hostname: "mail" is not a fully'
                " qualified domain name; other servers check the EHLO name and the certificate"
                " against it (RFC 5321 §4.1.1.1)\n"
                f"twistedmail: warning: {self.config}: [limits] max_message_size: 10240000 has"
                ' no unit and is read as octets; write it with one, e.g. "10000KiB"\n',
            ),
        )

    def test_tiny_bare_size_is_an_error(self) -> None:
        """max_message_size = 25 (25 octets) is refused in one line naming file and key."""
        self.write_config(
            f'[server]\ndata_dir = "{self.data_dir}"\nhostname = "mail.example.org"\n'
            "[limits]\nmax_message_size = 25\n"
        )
        self.assertUserError(
            self.run_cli("check-config"),
            f"{self.config}: [limits] max_message_size: 25 has no unit, so it would be 25"
            ' octets; write "25MiB" (units B, KB, KiB, MB, MiB, GB, GiB)',
        )

    def test_quota_command_refuses_a_tiny_bare_size(self) -> None:
        """user quota ADDRESS 25 is refused as the config key is: 25 octets is a mistake."""
        self.add_user("alice@example.org")
        self.assertUserError(
            self.run_cli("user", "quota", "alice@example.org", "25"),
            "invalid size '25': 25 has no unit, so it would be 25 octets; write \"25MiB\""
            " (units B, KB, KiB, MB, MiB, GB, GiB)",
        )


class VersionTests(CLITestCase):
    """C{twistedmail --version} (issue 11)."""

    def test_version_from_package_metadata(self) -> None:
        """--version prints "twistedmail VERSION" (the installed distribution's) and exits 0."""
        expected = importlib.metadata.version("twistedmail")
        out = io.StringIO()
        self.patch(sys, "stdout", out)
        with self.assertRaises(SystemExit) as cm:
            cli.main(["--version"])
        self.assertEqual((cm.exception.code, out.getvalue()), (0, f"twistedmail {expected}\n"))
        self.assertEqual(twistedmail.version(), expected)

    def test_version_without_metadata(self) -> None:
        """Run from a source tree without installed metadata, the version is __version__."""

        def missing(name: str) -> str:
            raise importlib.metadata.PackageNotFoundError(name)

        self.patch(importlib.metadata, "version", missing)
        self.assertEqual(twistedmail.version(), twistedmail.__version__)

    def test_console_script(self) -> None:
        """The installed twistedmail command answers --version without a config."""
        script = Path(sys.executable).parent / "twistedmail"
        if not script.exists():
            raise unittest.SkipTest(f"{script} not installed")
        result = subprocess.run(
            [str(script), "--version"], capture_output=True, text=True, timeout=60
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (0, f"twistedmail {twistedmail.version()}\n", ""),
        )


class RootAsOwnerTests(CLITestCase):
    """The CLI run as root against a data dir owned by the server's user acts as that user
    (README, running unprivileged): what a command imports must not need that user to read
    the interpreter (pyenv's under a 0700 /root, as for the server's workers), and what that
    user cannot open is named."""

    def test_check_as_root_on_a_data_dir_of_nobody(self) -> None:
        """C{twistedmail check DOMAIN} run by root against a data dir owned by nobody judges
        the records (exit 1 here: every lookup is refused), with no traceback."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (a data dir owned by nobody)")
        nobody = pwd.getpwnam("nobody")
        refuser = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        refuser.bind(("127.0.0.1", 0))
        self.addCleanup(refuser.close)

        def refuse() -> None:  # every query answered REFUSED (RFC 1035 §4.1.1, RCODE 5)
            with contextlib.suppress(OSError):
                while True:
                    query, peer = refuser.recvfrom(512)
                    refuser.sendto(query[:2] + b"\x81\x05" + query[4:], peer)

        threading.Thread(target=refuse, daemon=True).start()
        # Not under the test's temp dir: /tmp/pytest-of-root is 0700, nobody cannot enter it.
        base = Path(tempfile.mkdtemp(prefix="twistedmail-owner-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        self.config, data_dir = base / "twistedmail.toml", base / "data"
        self.write_config(
            f'[server]\ndata_dir = "{data_dir}"\nhostname = "mail.example.org"\n'
            f'[relay]\nnameservers = ["127.0.0.1:{refuser.getsockname()[1]}"]\n'
        )
        data_dir.mkdir(mode=0o700)
        os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        result = subprocess.run(
            [sys.executable, "-m", "twistedmail.cli", "--config", str(self.config)]
            + ["check", "example.org"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        self.assertEqual((result.returncode, result.stderr), (1, ""))
        self.assertIn("WRONG    MX example.org  ", result.stdout)

    def test_a_data_dir_the_caller_cannot_enter_is_named(self) -> None:
        """A command whose user cannot enter the data dir (another user's, mode 0700; here
        root acting as nobody on a dir without x) says so in one line naming the owner, not
        'cannot create' a dir that exists or 'no account store'."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (a data dir owned by nobody)")
        nobody = pwd.getpwnam("nobody")
        base = Path(tempfile.mkdtemp(prefix="twistedmail-owner-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        self.config, data_dir = base / "twistedmail.toml", base / "data"
        self.write_config(f'[server]\ndata_dir = "{data_dir}"\nhostname = "mail.example.org"\n')
        data_dir.mkdir(mode=0o700)
        (data_dir / "mail").mkdir(mode=0o700)
        os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        data_dir.chmod(0o600)
        for command in (["user", "list"], ["domain", "add", "example.net"]):
            result = subprocess.run(
                [sys.executable, "-m", "twistedmail.cli", "--config", str(self.config)] + command,
                capture_output=True,
                text=True,
                cwd=ROOT,
                timeout=120,
            )
            self.assertEqual(
                (result.returncode, result.stdout, result.stderr),
                (
                    1,
                    "",
                    f"twistedmail: error: cannot enter data dir {data_dir} as nobody"
                    f" (uid {nobody.pw_uid}): it belongs to nobody, mode 600; run twistedmail"
                    " as nobody or as root\n",
                ),
            )

    def test_a_control_socket_the_owner_cannot_open_is_named(self) -> None:
        """C{twistedmail status} as root against a data dir owned by nobody, whose control
        socket is root's (a server started as root without C{-u}): one line naming the
        socket, not a bare "Permission denied"."""
        if os.geteuid() != 0:
            raise unittest.SkipTest("needs root (a data dir owned by nobody)")
        nobody = pwd.getpwnam("nobody")
        base = Path(tempfile.mkdtemp(prefix="twistedmail-owner-"))
        self.addCleanup(shutil.rmtree, base, True)
        base.chmod(0o755)
        self.config, data_dir = base / "twistedmail.toml", base / "data"
        self.write_config(f'[server]\ndata_dir = "{data_dir}"\nhostname = "mail.example.org"\n')
        data_dir.mkdir(mode=0o700)
        os.chown(data_dir, nobody.pw_uid, nobody.pw_gid)
        control = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.addCleanup(control.close)
        control.bind(str(data_dir / "control"))
        os.chmod(data_dir / "control", 0o600)
        control.listen(1)
        result = subprocess.run(
            [sys.executable, "-m", "twistedmail.cli", "--config", str(self.config), "status"],
            capture_output=True,
            text=True,
            cwd=ROOT,
            timeout=120,
        )
        self.assertEqual(
            (result.returncode, result.stdout, result.stderr),
            (
                1,
                "",
                f"twistedmail: error: cannot connect to the server's control socket"
                f" {data_dir / 'control'}: Permission denied\n",
            ),
        )
