"""IMAP extensions: UIDPLUS (RFC 4315), MOVE (RFC 6851), LIST-EXTENDED (RFC 5258),
SPECIAL-USE (RFC 6154), ID (RFC 2971), ENABLE (RFC 5161), UNSELECT (RFC 3691) and
LITERAL+ (RFC 7888): whole response lines over a fake transport."""

from __future__ import annotations

from test_imap_server import MSG1, MSG2, PASSWORD, T1, T2, USER, Harness
from twisted.mail import imap4
from twisted.trial import unittest

from twistedmail.imap.account import PREPARED_MARKER
from twistedmail.imap.server import literal_size, uid_set

SPECIAL = ["Archive", "Drafts", "Junk", "Sent", "Trash"]


class HelperTests(unittest.TestCase):
    def test_uid_set(self) -> None:
        """RFC 4315 §3: uid_set writes ascending UIDs as the shortest sequence set (runs as a:b)."""
        self.assertEqual(uid_set([1, 2, 3, 5, 7, 8]), b"1:3,5,7:8")
        self.assertEqual(uid_set([4]), b"4")
        self.assertEqual(uid_set([]), b"")

    def test_literal_size(self) -> None:
        """RFC 7888 §3: literal_size reads {n} (synchronizing) and {n+} (non-synchronizing) and
        refuses empty, signed, non-digit and over-long sizes."""
        self.assertEqual(literal_size(b"{12}"), (12, True))
        self.assertEqual(literal_size(b"{12+}"), (12, False))
        for bad in (b"{}", b"{+}", b"{1x}", b"12", b"{-1}", b"{1234567890123}"):
            self.assertRaises(imap4.IllegalClientResponse, literal_size, bad)


class SpecialUseFolderTests(unittest.TestCase):
    def test_first_login_creates_and_subscribes(self) -> None:
        """RFC 6154: the first login creates and subscribes Archive, Drafts, Junk, Sent and
        Trash, and leaves the marker that it did."""
        h = Harness(self)
        h.login()
        self.assertEqual(h.maildir.folders(), ["INBOX"] + SPECIAL)
        for name in SPECIAL:
            self.assertTrue((h.root / ("." + name) / "maildirfolder").exists())
        self.assertEqual(h.maildir.subscriptions(), SPECIAL)
        self.assertTrue((h.root / PREPARED_MARKER).exists())

    def test_not_recreated_after_the_user_deletes_one(self) -> None:
        """A special-use folder the user deleted is not created again at the next login."""
        h = Harness(self)
        h.login()
        self.assertEqual(h.cmd(b"a DELETE Junk"), [b"a OK DELETE completed"])
        again = Harness(self, root=h.root)
        again.login()
        self.assertEqual(again.maildir.folders(), ["INBOX", "Archive", "Drafts", "Sent", "Trash"])

    def test_existing_folder_kept(self) -> None:
        """An existing Sent folder is kept with its messages when the special-use folders are
        created."""
        h = Harness(self)
        h.maildir.create("Sent")
        h.add(MSG1)
        (h.root / ".Sent" / "cur" / "x,S=3:2,S").write_bytes(b"old")
        h.login()
        self.assertEqual(
            sorted(p.name for p in (h.root / ".Sent" / "cur").iterdir()), ["x,S=3:2,S"]
        )


class ListExtendedTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.login()
        self.h.cmd(b"a CREATE Lists.Work")
        self.h.cmd(b"a CREATE Lists.Home")
        self.h.cmd(b"a SUBSCRIBE Lists.Work")
        self.h.cmd(b"a SUBSCRIBE Gone")

    def test_thunderbird_subscribed_special_use(self) -> None:
        """RFC 5258 + RFC 6154: LIST (SUBSCRIBED) RETURN (SPECIAL-USE), as Thunderbird sends it
        in lower case, lists subscriptions with \\Subscribed, special-use attributes and
        \\NonExistent for a gone one."""
        self.assertEqual(
            self.h.cmd(b'x list (subscribed) "" "*" return (special-use)'),
            [
                b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"',
                b'* LIST (\\HasNoChildren \\Subscribed \\Archive) "." "Archive"',
                b'* LIST (\\HasNoChildren \\Subscribed \\Drafts) "." "Drafts"',
                b'* LIST (\\NonExistent \\Subscribed) "." "Gone"',
                b'* LIST (\\HasNoChildren \\Subscribed \\Junk) "." "Junk"',
                b'* LIST (\\HasNoChildren \\Subscribed) "." "Lists.Work"',
                b'* LIST (\\HasNoChildren \\Subscribed \\Sent) "." "Sent"',
                b'* LIST (\\HasNoChildren \\Subscribed \\Trash) "." "Trash"',
                b"x OK LIST completed",
            ],
        )

    def test_special_use_selection(self) -> None:
        """RFC 6154 §5.1: LIST (SPECIAL-USE) lists only the special-use folders, each with its
        attribute."""
        self.assertEqual(
            self.h.cmd(b'x LIST (SPECIAL-USE) "" "*"'),
            [
                b'* LIST (\\HasNoChildren \\Archive) "." "Archive"',
                b'* LIST (\\HasNoChildren \\Drafts) "." "Drafts"',
                b'* LIST (\\HasNoChildren \\Junk) "." "Junk"',
                b'* LIST (\\HasNoChildren \\Sent) "." "Sent"',
                b'* LIST (\\HasNoChildren \\Trash) "." "Trash"',
                b"x OK LIST completed",
            ],
        )

    def test_return_children_and_subscribed_with_patterns(self) -> None:
        """RFC 5258 §3: several patterns in one LIST, with RETURN (CHILDREN SUBSCRIBED)."""
        self.assertEqual(
            self.h.cmd(b'x LIST "" ("Lists*" INBOX) RETURN (CHILDREN SUBSCRIBED)'),
            [
                b'* LIST (\\HasNoChildren \\Subscribed) "." "INBOX"',
                b'* LIST (\\HasChildren) "." "Lists"',
                b'* LIST (\\HasNoChildren) "." "Lists.Home"',
                b'* LIST (\\HasNoChildren \\Subscribed) "." "Lists.Work"',
                b"x OK LIST completed",
            ],
        )

    def test_recursivematch(self) -> None:
        """RFC 5258 §3.5: a parent matching the pattern with a subscribed child."""
        self.assertEqual(
            self.h.cmd(b'x LIST (SUBSCRIBED RECURSIVEMATCH) "" "L%"'),
            [
                b'* LIST (\\HasChildren) "." "Lists" ("CHILDINFO" ("SUBSCRIBED"))',
                b"x OK LIST completed",
            ],
        )

    def test_bad_options(self) -> None:
        """RFC 5258 §3: RECURSIVEMATCH alone, unknown selection or return options and nested
        lists are BAD."""
        self.assertEqual(
            self.h.cmd(b'x LIST (RECURSIVEMATCH) "" "*"'),
            [b"x BAD RECURSIVEMATCH needs another selection option"],
        )
        self.assertEqual(
            self.h.cmd(b'x LIST (FROB) "" "*"'), [b"x BAD Unknown LIST selection option"]
        )
        self.assertEqual(
            self.h.cmd(b'x LIST "" "*" RETURN (CHILDREN (MESSAGES))'),
            [b"x BAD Syntax error: Unexpected list"],
        )
        self.assertEqual(
            self.h.cmd(b'x LIST "" "*" RETURN (FROB)'), [b"x BAD Unknown LIST return option"]
        )
        self.assertEqual(
            self.h.cmd(b'x LIST "" "*" FROB'), [b"x BAD Syntax error: RETURN expected"]
        )
        self.assertEqual(
            self.h.cmd(b'x LIST ("" "*"'), [b"x BAD Syntax error: Mismatched parenthesis"]
        )

    def test_plain_list_has_special_use_but_not_subscribed(self) -> None:
        """RFC 6154 §2: a plain LIST shows the special-use attribute but not \\Subscribed."""
        self.assertEqual(
            self.h.cmd(b'x LIST "" "S%"'),
            [b'* LIST (\\HasNoChildren \\Sent) "." "Sent"', b"x OK LIST completed"],
        )


class UIDPlusMoveTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.add(MSG1, "S", T1)
        self.h.add(MSG2, "", T2)
        self.h.add(b"Subject: three\r\n\r\nthree\r\n", "T", T2 + 60)
        self.h.add(b"Subject: four\r\n\r\nfour\r\n", "T", T2 + 120)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")
        self.inbox = self.h.uidvalidity()
        self.trash = self.h.uidvalidity("Trash")

    def files(self, folder: str = "INBOX") -> list[tuple[str, bytes]]:
        cur = self.h.maildir.folder_path(folder) / "cur"
        return sorted((p.name.rpartition(":2,")[2], p.read_bytes()) for p in cur.iterdir())

    def test_uid_expunge_only_in_set(self) -> None:
        """RFC 4315 §2.1: UID EXPUNGE removes only the \\Deleted messages in its set; UID EXPUNGE
        without a set is BAD."""
        self.assertEqual(
            self.h.cmd(b"a UID EXPUNGE 1:3"), [b"* 3 EXPUNGE", b"a OK EXPUNGE completed"]
        )
        self.assertEqual(
            self.h.cmd(b"b FETCH 1:* (UID FLAGS)"),
            [
                b"* 1 FETCH (UID 1 FLAGS (\\Seen))",
                b"* 2 FETCH (UID 2 FLAGS ())",
                b"* 3 FETCH (UID 4 FLAGS (\\Deleted))",
                b"b OK FETCH completed",
            ],
        )
        self.assertEqual(self.h.cmd(b"c UID EXPUNGE"), [b"c BAD Syntax error: Missing argument"])

    def test_plain_expunge_still_takes_no_argument(self) -> None:
        """RFC 3501 §6.4.3: EXPUNGE with an argument is BAD."""
        self.assertEqual(self.h.cmd(b"a EXPUNGE 1"), [b"a BAD Too many arguments"])

    def test_uid_move(self) -> None:
        """Thunderbird: `uid move N "Trash"`; COPYUID before EXPUNGE (RFC 6851 §4.3)."""
        self.assertEqual(
            self.h.cmd(b'a UID MOVE 2,4 "Trash"'),
            [
                b"* OK [COPYUID %d 2,4 1:2] Moved" % self.trash,
                b"* 2 EXPUNGE",
                b"* 3 EXPUNGE",
                b"a OK MOVE completed",
            ],
        )
        self.assertEqual(
            self.files("Trash"),
            [("", MSG2), ("T", b"Subject: four\r\n\r\nfour\r\n")],
        )
        self.assertEqual(len(self.files()), 2)
        self.assertEqual(
            self.h.cmd(b"b FETCH 1:* (UID)"),
            [b"* 1 FETCH (UID 1)", b"* 2 FETCH (UID 3)", b"b OK FETCH completed"],
        )

    def test_move_by_sequence_number_and_internaldate_kept(self) -> None:
        """RFC 6851 §3: MOVE sends COPYUID in an untagged OK, then EXPUNGE; the moved file keeps
        its flags and INTERNALDATE."""
        self.assertEqual(
            self.h.cmd(b"a MOVE 1 Archive"),
            [
                b"* OK [COPYUID %d 1 1] Moved" % self.h.uidvalidity("Archive"),
                b"* 1 EXPUNGE",
                b"a OK MOVE completed",
            ],
        )
        (path,) = (self.h.maildir.folder_path("Archive") / "cur").iterdir()
        self.assertEqual(path.stat().st_mtime, T1)
        self.assertTrue(path.name.endswith(":2,S"))

    def test_move_nothing_matches(self) -> None:
        """RFC 6851 §3: UID MOVE of a UID that matches nothing is OK."""
        self.assertEqual(self.h.cmd(b"a UID MOVE 99 Trash"), [b"a OK MOVE completed"])

    def test_move_missing_target(self) -> None:
        """RFC 6851 §3: MOVE to a missing mailbox is NO [TRYCREATE] and moves nothing."""
        self.assertEqual(self.h.cmd(b"a MOVE 1 Nowhere"), [b"a NO [TRYCREATE] No such mailbox"])
        self.assertEqual(len(self.files()), 4)

    def test_move_from_read_only(self) -> None:
        """MOVE and UID EXPUNGE in an EXAMINEd (read-only) mailbox are NO [READ-ONLY]."""
        self.h.cmd(b"e EXAMINE INBOX")
        self.assertEqual(self.h.cmd(b"a MOVE 1 Trash"), [b"a NO [READ-ONLY] Mailbox is read-only"])
        self.assertEqual(self.h.cmd(b"b UID EXPUNGE 1"), [b"b NO [READ-ONLY] Mailbox is read-only"])

    def test_copyuid_ranges(self) -> None:
        """RFC 4315 §3: COPYUID gives source and destination UIDs as compact ranges."""
        self.assertEqual(
            self.h.cmd(b"a COPY 1:2,4 Trash"),
            [b"a OK [COPYUID %d 1:2,4 1:3] COPY completed" % self.trash],
        )

    def test_move_and_uid_expunge_need_a_selected_mailbox(self) -> None:
        """MOVE and UID EXPUNGE after UNSELECT are BAD (selected state only)."""
        self.h.cmd(b"u UNSELECT")
        self.assertEqual(
            self.h.cmd(b"a MOVE 1 Trash"), [b"a BAD Command unknown or not valid in this state"]
        )
        self.assertEqual(
            self.h.cmd(b"b UID EXPUNGE 1"), [b"b BAD Command unknown or not valid in this state"]
        )


class SmallExtensionTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self)

    def test_id_before_and_after_login(self) -> None:
        """RFC 2971: ID before and after login answers the server name; an odd-length list or a
        non-list is BAD."""
        self.assertEqual(
            self.h.cmd(b'a ID ("name" "Thunderbird" "version" "153.0")'),
            [b'* ID ("name" "twistedmail")', b"a OK ID completed"],
        )
        self.h.login()
        self.assertEqual(
            self.h.cmd(b"b ID NIL"), [b'* ID ("name" "twistedmail")', b"b OK ID completed"]
        )
        self.assertEqual(
            self.h.cmd(b'c ID ("name")'), [b"c BAD Syntax error: Bad ID parameter list"]
        )
        self.assertEqual(
            self.h.cmd(b"d ID nothing"),
            [b"d BAD Syntax error: NIL or a parameter list expected"],
        )

    def test_enable(self) -> None:
        """RFC 5161: ENABLE before login is BAD; it lists only extensions it turned on now,
        ignores unknown ones, and needs an argument."""
        self.assertEqual(
            self.h.cmd(b"a ENABLE CONDSTORE"),
            [b"a BAD Command unknown or not valid in this state"],
        )
        self.h.login()
        self.assertEqual(
            self.h.cmd(b"b ENABLE CONDSTORE X-UNKNOWN"),
            [b"* ENABLED CONDSTORE", b"b OK ENABLE completed"],
        )
        # RFC 5161 §3.1: only the extensions this command turned on are listed
        self.assertEqual(
            self.h.cmd(b"d ENABLE CONDSTORE"), [b"* ENABLED", b"d OK ENABLE completed"]
        )
        self.assertEqual(self.h.cmd(b"c ENABLE"), [b"c BAD Syntax error: Missing argument"])

    def test_unselect_does_not_expunge(self) -> None:
        """RFC 3691: UNSELECT leaves the selected state without expunging; a second UNSELECT is
        BAD."""
        self.h.add(MSG1, "T")
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")
        self.assertEqual(self.h.cmd(b"a UNSELECT"), [b"a OK UNSELECT completed"])
        self.assertEqual(len(list((self.h.root / "cur").iterdir())), 1)
        self.assertEqual(
            self.h.cmd(b"b FETCH 1 UID"), [b"b BAD Command unknown or not valid in this state"]
        )
        self.assertEqual(
            self.h.cmd(b"c UNSELECT"), [b"c BAD Command unknown or not valid in this state"]
        )


class LiteralPlusTests(unittest.TestCase):
    def setUp(self) -> None:
        self.h = Harness(self, max_literal_size=100)

    def test_login_with_non_synchronizing_literals(self) -> None:
        """RFC 7888: LOGIN with {n+} literals needs no continuation, and a pipelined NOOP is
        answered after it."""
        user = USER.encode()
        out = self.h.send(
            b"a LOGIN {%d+}\r\n%s {%d+}\r\n%s\r\nb NOOP\r\n"
            % (len(user), user, len(PASSWORD), PASSWORD)
        )
        lines = out.split(b"\r\n")
        self.assertTrue(lines[0].startswith(b"a OK [CAPABILITY "), out)
        self.assertEqual(lines[1:], [b"b OK NOOP completed", b""])

    def test_append_without_continuation(self) -> None:
        """RFC 7888: APPEND with a {n+} literal stores the message with its flags without a
        continuation request."""
        self.h.login()
        self.assertEqual(
            self.h.send(b'a APPEND "Sent" (\\Seen) {5+}\r\nhello\r\n'),
            b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.h.uidvalidity("Sent"),
        )
        (path,) = (self.h.maildir.folder_path("Sent") / "cur").iterdir()
        self.assertEqual((path.name.rpartition(":2,")[2], path.read_bytes()), ("S", b"hello"))

    def test_empty_final_literal(self) -> None:
        """RFC 7888: an empty {0+} literal is read as the empty string (CREATE then refuses the
        name)."""
        self.h.login()
        self.assertEqual(
            self.h.send(b"a CREATE {0+}\r\n\r\n"),
            b"a NO [CANNOT] Invalid mailbox name\r\n",  # the literal was read; "" is no name
        )

    def test_oversized_non_synchronizing_append_closes(self) -> None:
        """RFC 7888 §4: the data is already coming; it must not run as commands."""
        self.h.login()
        out = self.h.send(b"a APPEND INBOX {101+}\r\nb DELETE Sent\r\n" + b"x" * 85 + b"\r\n")
        self.assertEqual(
            out,
            b"a NO [TOOBIG] Message too large\r\n* BYE [TOOBIG] Closing the connection\r\n",
        )
        self.assertTrue(self.h.transport.disconnecting)
        self.assertTrue((self.h.root / ".Sent").is_dir())

    def test_oversized_non_synchronizing_string_closes(self) -> None:
        """RFC 7888: a {n+} literal over the limit is BAD [TOOBIG] and the connection closes
        with BYE."""
        out = self.h.send(b"a LOGIN {5000+}\r\nb CAPABILITY\r\n")
        self.assertEqual(
            out, b"a BAD [TOOBIG] Literal too large\r\n* BYE [TOOBIG] Closing the connection\r\n"
        )
        self.assertTrue(self.h.transport.disconnecting)

    def test_synchronizing_append_still_asks(self) -> None:
        """RFC 3501 §7.5: a synchronizing {n} literal still gets the continuation request."""
        self.h.login()
        self.assertEqual(
            self.h.send(b"a APPEND INBOX {5}\r\n"), b"+ Ready for 5 octets of data\r\n"
        )
        self.assertEqual(
            self.h.send(b"hello\r\n"),
            b"a OK [APPENDUID %d 1] APPEND completed\r\n" % self.h.uidvalidity(),
        )


class AppendLimitTests(unittest.TestCase):
    """APPENDLIMIT (RFC 7889): one limit for every mailbox, the configured message size."""

    def setUp(self) -> None:
        self.h = Harness(self, max_literal_size=100)

    def test_capability_carries_the_limit(self) -> None:
        """§3.1: C{APPENDLIMIT=<number>} when the limit is the same for every mailbox."""
        (caps, ok) = self.h.cmd(b"a CAPABILITY")
        self.assertIn(b" APPENDLIMIT=100", caps)
        self.assertEqual(ok, b"a OK CAPABILITY completed")

    def test_status_item(self) -> None:
        """§3.2: STATUS and LIST-STATUS answer APPENDLIMIT with the number."""
        self.h.login()
        self.assertEqual(
            self.h.cmd(b"a STATUS INBOX (MESSAGES APPENDLIMIT)"),
            [b'* STATUS "INBOX" (MESSAGES 0 APPENDLIMIT 100)', b"a OK STATUS completed"],
        )
        out = self.h.cmd(b'b LIST "" "Sent" RETURN (STATUS (APPENDLIMIT))')
        self.assertEqual(out[1:], [b'* STATUS "Sent" (APPENDLIMIT 100)', b"b OK LIST completed"])

    def test_append_over_the_limit(self) -> None:
        """A synchronizing literal over the limit is refused before it is sent."""
        self.h.login()
        self.assertEqual(
            self.h.send(b"a APPEND INBOX {101}\r\n"), b"a NO [TOOBIG] Message too large\r\n"
        )
        self.assertEqual(list((self.h.root / "new").iterdir()), [])
        self.assertEqual(list((self.h.root / "cur").iterdir()), [])


class NumberRangeTests(unittest.TestCase):
    """RFC 3501 §9: message numbers, UIDs and SEARCH numbers are unsigned 32-bit integers;
    a bigger one is BAD, not a set that silently matches nothing (found by QA)."""

    def setUp(self) -> None:
        self.h = Harness(self)
        self.h.login()
        self.h.cmd(b"s SELECT INBOX")

    def test_search_number_over_32_bits(self) -> None:
        """RFC 3501 §9: numbers are 32-bit; a larger one in SEARCH is BAD."""
        for line in (
            b"a SEARCH 4294967296",
            b"a SEARCH 99999999999999999999",
            b"a UID SEARCH UID 1:4294967296",
            b"a SEARCH LARGER 4294967296",
        ):
            (reply,) = self.h.cmd(line)
            self.assertTrue(reply.startswith(b"a BAD "), (line, reply))

    def test_fetch_set_over_32_bits(self) -> None:
        """RFC 3501 §9: a sequence set with a number over 32 bits is BAD."""
        (reply,) = self.h.cmd(b"a FETCH 1:99999999999999999999 FLAGS")
        self.assertTrue(reply.startswith(b"a BAD "), reply)

    def test_largest_number_still_accepted(self) -> None:
        """RFC 3501 §9: 4294967295 is still a valid number in SEARCH and UID FETCH."""
        self.assertEqual(
            self.h.cmd(b"a SEARCH 4294967295"), [b"* SEARCH", b"a OK SEARCH completed"]
        )
        self.assertEqual(self.h.cmd(b"b UID FETCH 4294967295 FLAGS"), [b"b OK FETCH completed"])


class EnableSyntaxTests(unittest.TestCase):
    """RFC 5161 §4: ENABLE takes capability atoms; a list or a quoted string is BAD."""

    def test_non_atoms_are_bad(self) -> None:
        """RFC 5161 §3.1: ENABLE takes atoms only; a list, a quoted string or two spaces are BAD,
        lower case is accepted."""
        h = Harness(self)
        h.login()
        for line in (
            b"a ENABLE (UTF8=ACCEPT)",
            b'a ENABLE "CONDSTORE"',
            b"a ENABLE CONDSTORE  QRESYNC",
        ):
            self.assertEqual(h.cmd(line), [b"a BAD Capability names expected"], line)
        self.assertEqual(
            h.cmd(b"b ENABLE condstore X-NONE"), [b"* ENABLED CONDSTORE", b"b OK ENABLE completed"]
        )


class ListStatusSyntaxTests(unittest.TestCase):
    """RFC 5819 §3: at least one STATUS item; items are case-insensitive atoms."""

    def test_empty_or_nested_status_list_is_bad(self) -> None:
        """RFC 5819: RETURN (STATUS ()) and a nested STATUS list are BAD."""
        h = Harness(self)
        h.login()
        self.assertEqual(
            h.cmd(b'a LIST "" "*" RETURN (STATUS ())'), [b"a BAD STATUS items expected"]
        )
        self.assertEqual(
            h.cmd(b'a LIST "" "*" RETURN (STATUS ((MESSAGES)))'),
            [b"a BAD Syntax error: Unexpected list"],
        )

    def test_lower_case_item(self) -> None:
        """RFC 5819: a STATUS item in lower case is answered in the LIST reply."""
        h = Harness(self)
        h.login()
        out = h.cmd(b'b LIST "" "Sent" RETURN (STATUS (messages))')
        self.assertEqual(out[1:], [b'* STATUS "Sent" (MESSAGES 0)', b"b OK LIST completed"])
