"""Resolving sequence and UID sets against a session's view (RFC 3501 §9 sequence-set,
§6.4.8 UID): the ranges merged and looked up by bisection give exactly the messages a
test of every message against the set gives, in sequence order, each once."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.mail import imap4
from twisted.trial import unittest

from twistedmail.imap.grammar import in_set
from twistedmail.imap.mailbox import MaildirMailbox
from twistedmail.maildir import ChangeNotifier, Folder, MessageEntry

number = st.one_of(st.none(), st.integers(1, 40))


def every(view: list[MessageEntry], gone: set[int], messages: imap4.MessageSet, uid: bool):  # type: ignore[no-untyped-def]
    """The reference: each message of the view tested against the set."""
    if not view:
        return []
    last = view[-1].uid if uid else len(view)
    return [
        (i + 1, e)
        for i, e in enumerate(view)
        if in_set(messages, e.uid if uid else i + 1, last) and e.uid not in gone
    ]


class ResolveTests(unittest.TestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        uids=st.sets(st.integers(1, 40), max_size=25),
        gone=st.sets(st.integers(1, 40), max_size=5),
        ranges=st.lists(st.tuples(number, number), min_size=1, max_size=4),
        uid=st.booleans(),
    )
    def test_same_as_testing_every_message(
        self, uids: set[int], gone: set[int], ranges: list[tuple[int | None, int | None]], uid: bool
    ) -> None:
        """Any set (C{*}, reversed, overlapping, past the end) against any view."""
        mbox = MaildirMailbox("INBOX", Folder(self.mktemp()), ChangeNotifier(), None)  # type: ignore[arg-type]
        mbox._view = [MessageEntry(u, f"b{u}", f"b{u}:2,", 10, 0.0) for u in sorted(uids)]
        mbox._announced = len(mbox._view)
        mbox._gone = set(gone)
        messages = imap4.MessageSet()
        for low, high in ranges:
            messages.add(low, high)
        self.assertEqual(mbox.resolve(messages, uid), every(mbox._view, mbox._gone, messages, uid))


class SequenceOfTests(unittest.TestCase):
    @settings(max_examples=200, deadline=None)
    @given(uids=st.sets(st.integers(1, 60), max_size=30), asked=st.integers(0, 61))
    def test_same_as_a_map_of_the_view(self, uids: set[int], asked: int) -> None:
        """sequence_of(uid) (untagged FETCH of a flag change, RFC 3501 §7.4.2) by bisection
        answers as a map {uid: sequence number} of the whole view does."""
        mbox = MaildirMailbox("INBOX", Folder(self.mktemp()), ChangeNotifier(), None)  # type: ignore[arg-type]
        mbox._view = [MessageEntry(u, f"b{u}", f"b{u}:2,", 10, 0.0) for u in sorted(uids)]
        by_uid = {mbox.getUID(n): n for n in range(1, mbox.getMessageCount() + 1)}
        self.assertEqual(mbox.sequence_of(asked), by_uid.get(asked))
