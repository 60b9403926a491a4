"""Tests for C{twistedmail sieve ...} and C{twistedmail vacation ...} (issue 12): scripts in
Pigeonhole's layout in the user's Maildir home, compile-checked before they are stored, one
line on stderr and exit 1 for every user error."""

from __future__ import annotations

import os

from test_cli import CLITestCase

from twistedmail.sieve.store import SieveStore
from twistedmail.sieve.validate import compile_script

ALICE = "alice@example.org"
FILTER = b'require "fileinto";\r\nif header :contains "list-id" "dev" { fileinto "Lists"; }\r\n'


class SieveCommandTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user(ALICE)
        self.home = self.data_dir / "mail" / "example.org" / "alice"
        self.script_file = self.base / "filter.sieve"
        self.script_file.write_bytes(FILTER)

    def test_put_list_show_activate_deactivate_delete(self) -> None:
        """The whole life of a script, in Pigeonhole's layout (~/sieve/NAME.sieve, the active
        one linked as ~/.dovecot.sieve), files 0600 in a 0700 directory."""
        self.assertEqual(
            self.run_cli("sieve", "put", ALICE, "main", str(self.script_file)),
            (0, f"stored script main of {ALICE}\n", ""),
        )
        path = self.home / "sieve" / "main.sieve"
        self.assertEqual(path.read_bytes(), FILTER)
        self.assertEqual(path.stat().st_mode & 0o777, 0o600)
        self.assertEqual((self.home / "sieve").stat().st_mode & 0o777, 0o700)
        self.assertEqual(self.run_cli("sieve", "list", ALICE), (0, "main\n", ""))
        self.assertEqual(self.run_cli("sieve", "show", ALICE, "main")[0], 0)
        self.assertEqual(
            self.run_cli("sieve", "activate", ALICE, "main"),
            (0, f"activated script main of {ALICE}\n", ""),
        )
        self.assertEqual(os.readlink(self.home / ".dovecot.sieve"), "sieve/main.sieve")
        self.assertEqual(self.run_cli("sieve", "list", ALICE), (0, "main (active)\n", ""))
        self.assertUserError(
            self.run_cli("sieve", "delete", ALICE, "main"),
            f"script 'main' of {ALICE} is active: deactivate it first"
            f" ('twistedmail sieve deactivate {ALICE}')",
        )
        self.assertEqual(
            self.run_cli("sieve", "deactivate", ALICE),
            (0, f"deactivated script main of {ALICE}\n", ""),
        )
        self.assertFalse(os.path.lexists(self.home / ".dovecot.sieve"))
        self.assertEqual(
            self.run_cli("sieve", "deactivate", ALICE), (0, f"{ALICE} has no active script\n", "")
        )
        self.assertEqual(
            self.run_cli("sieve", "delete", ALICE, "main"),
            (0, f"deleted script main of {ALICE}\n", ""),
        )
        self.assertEqual(self.run_cli("sieve", "list", ALICE), (0, "", ""))

    def test_put_from_stdin_and_activate(self) -> None:
        """C{put ADDRESS NAME -} reads the script from stdin; C{--activate} activates it."""
        result = self.run_cli("sieve", "put", ALICE, "main", "-", "--activate", stdin=FILTER)
        self.assertEqual(result, (0, f"stored and activated script main of {ALICE}\n", ""))
        self.assertEqual(SieveStore(self.home).active(), "main")
        self.assertEqual(SieveStore(self.home).get("main"), FILTER)

    def test_bad_script_refused_with_line_and_message(self) -> None:
        """RFC 5804 §2.6: a script that does not compile is refused with its line and the
        message, and nothing is stored (an earlier version stays)."""
        self.run_cli("sieve", "put", ALICE, "main", str(self.script_file))
        result = self.run_cli(
            "sieve", "put", ALICE, "main", "-", stdin=b'require "fileinto";\nfileinto "A"\nkeep;\n'
        )
        self.assertUserError(
            result, "script 'main' not stored: line 2: command 'fileinto' takes no test"
        )
        self.assertEqual(SieveStore(self.home).get("main"), FILTER)
        self.assertUserError(
            self.run_cli("sieve", "put", ALICE, "x", "-", stdin=b'require "nope";'),
            "script 'x' not stored: line 1: unsupported extension 'nope'",
        )
        self.assertUserError(
            self.run_cli(
                "sieve", "put", ALICE, "x", "-", stdin=b'require "include";\ninclude "missing";'
            ),
            "script 'x' not stored: line 2: included personal script 'missing' does not exist",
        )

    def test_script_over_the_size_limit_refused(self) -> None:
        """A 1 MB script is refused ([delivery] sieve_max_script_size, 512KiB by default);
        a lower configured limit applies too."""
        big = b"# " + b"x" * (1 << 20) + b"\nkeep;\n"
        self.assertUserError(
            self.run_cli("sieve", "put", ALICE, "big", "-", stdin=big),
            "script 'big' not stored: line 0: script larger than 524288 bytes",
        )
        self.assertFalse((self.home / "sieve" / "big.sieve").exists())
        with self.config.open("a") as f:
            f.write('\n[delivery]\nsieve_max_script_size = "1KiB"\n')
        self.assertUserError(
            self.run_cli("sieve", "put", ALICE, "mid", "-", stdin=b"#" * 2000 + b"\nkeep;\n"),
            "script 'mid' not stored: line 0: script larger than 1024 bytes",
        )

    def test_user_errors_are_one_line(self) -> None:
        """Unknown users, scripts and bad names: one line, exit 1, nothing written."""
        self.assertUserError(
            self.run_cli("sieve", "list", "nobody@example.org"), "no such user nobody@example.org"
        )
        self.assertUserError(
            self.run_cli("sieve", "show", ALICE, "nope"), f"{ALICE} has no script 'nope'"
        )
        self.assertUserError(
            self.run_cli("sieve", "activate", ALICE, "nope"), f"{ALICE} has no script 'nope'"
        )
        self.assertUserError(
            self.run_cli("sieve", "delete", ALICE, "nope"), f"{ALICE} has no script 'nope'"
        )
        self.assertUserError(
            self.run_cli("sieve", "put", ALICE, "../x", str(self.script_file)),
            "invalid script name '../x': script name contains '/' or starts with '.'",
        )
        self.assertUserError(
            self.run_cli("sieve", "put", ALICE, "a\x00b", str(self.script_file)),
            "invalid script name 'a\\x00b': control character in script name",
        )
        self.assertUserError(
            self.run_cli("sieve", "put", ALICE, "main", str(self.base / "missing")),
            f"No such file or directory: {self.base / 'missing'}",
        )
        self.assertEqual(sorted(os.listdir(self.home)), ["cur", "new", "tmp"])


class VacationCommandTests(CLITestCase):
    def setUp(self) -> None:
        super().setUp()
        self.add_user(ALICE)
        self.home = self.data_dir / "mail" / "example.org" / "alice"
        self.text = self.base / "away.txt"
        self.text.write_text('Hello,\n\nI am away until "Monday".\n.\n', "utf-8")

    def on(self, *extra: str) -> tuple[int, str, str]:
        return self.run_cli(
            "vacation",
            ALICE,
            *("--subject", "Out of office", "--message-file", str(self.text), *extra),
        )

    def test_on_writes_an_active_vacation_script(self) -> None:
        """RFC 5230: a one-rule script named vacation, active, that compiles and says what was
        asked (quotes escaped, a lone "." line kept)."""
        self.assertEqual(
            self.on("--days", "3"),
            (0, f"vacation reply of {ALICE} on, at most once per sender every 3 days\n", ""),
        )
        scripts = SieveStore(self.home)
        self.assertEqual(scripts.active(), "vacation")
        data = scripts.get("vacation")
        self.assertEqual(
            data,
            b"# Written by 'twistedmail vacation' (twistedmail vacation ADDRESS --off removes it)"
            b'\r\nrequire ["vacation"];\r\n'
            b'vacation :days 3 :subject "Out of office"\r\n'
            b'    "Hello,\r\n\r\nI am away until \\"Monday\\".\r\n.\r\n";\r\n',
        )
        compile_script(data)
        # Again: replaced in place, still active.
        self.assertEqual(self.on()[0], 0)
        self.assertIn(b":days 7 ", scripts.get("vacation"))
        self.assertEqual(
            self.run_cli("vacation", ALICE, "--off"), (0, f"vacation reply of {ALICE} off\n", "")
        )
        self.assertEqual(scripts.list(), [])
        self.assertFalse(os.path.lexists(self.home / ".dovecot.sieve"))
        self.assertEqual(
            self.run_cli("vacation", ALICE, "--off"), (0, f"{ALICE} had no vacation reply\n", "")
        )

    def test_own_active_script_refused_unless_replace(self) -> None:
        """Sieve runs one script: the user's own active script is never silently replaced;
        with --replace it is kept and active again after --off."""
        scripts = SieveStore(self.home)
        scripts.put("mine", FILTER)
        scripts.activate("mine")
        self.assertUserError(
            self.on(),
            "the user's own Sieve script 'mine' is active and Sieve runs one script: add a"
            " vacation rule to it, or pass --replace to activate the vacation script instead"
            " (that script is kept, and active again after --off)",
        )
        self.assertEqual(scripts.list(), [("mine", True)])
        self.assertEqual(
            self.on("--replace"),
            (
                0,
                f"vacation reply of {ALICE} on, at most once per sender every 7 days; script"
                " mine kept, active again after --off\n",
                "",
            ),
        )
        self.assertEqual(scripts.list(), [("mine", False), ("vacation", True)])
        self.assertEqual(self.on()[0], 0)  # a second on keeps the memory of "mine"
        self.assertEqual(
            self.run_cli("vacation", ALICE, "--off"),
            (0, f"vacation reply of {ALICE} off; script mine is active again\n", ""),
        )
        self.assertEqual(scripts.list(), [("mine", True)])
        self.assertEqual(scripts.get("mine"), FILTER)

    def test_plain_dovecot_sieve_file_kept(self) -> None:
        """A plain ~/.dovecot.sieve (Pigeonhole's old style) counts as the user's own script;
        --replace keeps it as sieve/dovecot.orig.sieve, --off makes that active."""
        self.home.mkdir(parents=True)
        (self.home / ".dovecot.sieve").write_bytes(FILTER)
        self.assertEqual(self.on()[0], 1)
        self.assertEqual(self.on("--replace")[0], 0)
        scripts = SieveStore(self.home)
        self.assertEqual(scripts.get("dovecot.orig"), FILTER)
        self.run_cli("vacation", ALICE, "--off")
        self.assertEqual(scripts.list(), [("dovecot.orig", True)])

    def test_users_own_script_named_vacation_left_alone(self) -> None:
        """A script the user named "vacation" is neither overwritten nor deleted."""
        scripts = SieveStore(self.home)
        scripts.put("vacation", FILTER)
        message = (
            "the user has a Sieve script named 'vacation' of their own: rename or delete it"
            " first ('twistedmail sieve delete ADDRESS vacation')"
        )
        self.assertUserError(self.on(), message)
        self.assertUserError(self.run_cli("vacation", ALICE, "--off"), message)
        self.assertEqual(scripts.get("vacation"), FILTER)

    def test_user_errors(self) -> None:
        """Missing options, --off with others, days out of range, an empty or non-UTF-8
        message, a multi-line subject: one line, exit 1, nothing written."""
        self.assertUserError(
            self.run_cli("vacation", ALICE, "--subject", "x"),
            "give --subject and --message-file (or --off)",
        )
        self.assertUserError(
            self.run_cli("vacation", ALICE, "--off", "--days", "3"),
            "--off takes no --subject, --message-file nor --days",
        )
        self.assertUserError(self.on("--days", "0"), "--days must be from 1 to 60")
        self.assertUserError(self.on("--days", "61"), "--days must be from 1 to 60")
        self.text.write_bytes(b"\n \n")
        self.assertUserError(self.on(), "the vacation message is empty")
        self.text.write_bytes(b"caf\xe9\n")
        self.assertUserError(self.on(), f"{self.text}: the message is not UTF-8 text")
        self.text.write_bytes(b"ok\n")
        self.assertUserError(
            self.run_cli("vacation", ALICE, "--subject", "a\nb", "--message-file", str(self.text)),
            "the subject must be one line of text",
        )
        self.assertUserError(
            self.run_cli("vacation", "x@example.org", "--off"), "no such user x@example.org"
        )
        self.assertFalse((self.home / "sieve").exists())

    def test_message_from_stdin(self) -> None:
        """--message-file - reads the text from stdin."""
        result = self.run_cli(
            "vacation", ALICE, "--subject", "Away", "--message-file", "-", stdin=b"Gone.\n"
        )
        self.assertEqual(result[0], 0)
        self.assertIn(b'"Gone.\r\n";', SieveStore(self.home).get("vacation"))
