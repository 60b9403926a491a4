"""Commands of the selected state (RFC 3501 §6.4) but FETCH (L{twistedmail.imap.fetch}):
CHECK, CLOSE, EXPUNGE (and UID EXPUNGE, RFC 4315 §2.1), UNSELECT (RFC 3691), SEARCH
(§6.4.4, ESEARCH RFC 4731) and SORT (RFC 5256) over the mailbox's index, STORE (§6.4.6,
UNCHANGEDSINCE RFC 7162 §3.1.3), COPY (§6.4.7, COPYUID RFC 4315 §3) and MOVE (RFC 6851).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol

from twisted.internet.defer import Deferred
from twisted.logger import Logger
from twisted.mail import imap4

from twistedmail.imap import grammar
from twistedmail.imap.mailbox import MaildirMailbox
from twistedmail.imap.message import MaildirMessage, encode_string
from twistedmail.imap.protocol import (
    IMAPProtocol,
    bad,
    command,
    decode_mailbox_name,
    no,
    option_atoms,
    paren_group,
    safe_text,
    uid_set,
)
from twistedmail.imap.searchkeys import SearchError
from twistedmail.imap.sort import SortError, parse_criteria
from twistedmail.imap.updates import MailboxUpdates, close_quietly
from twistedmail.maildir import MaildirError

log = Logger(namespace="twistedmail.imap")


ESEARCH_RETURN_OPTIONS = {b"MIN", b"MAX", b"ALL", b"COUNT"}
"""RFC 4731 §3.1 return options (SAVE, RFC 5182 SEARCHRES, is not offered)."""


class CopyObserver(Protocol):
    """Told, after COPY or MOVE, that C{messages} of folder C{source} were copied into
    C{target} for C{user} (the messages can be read with C{run_in_thread})."""

    def copied(
        self, user: str, source: str, target: str, messages: Sequence[Any], run_in_thread: Any
    ) -> None: ...


def esearch_response(
    tag: bytes, returns: Sequence[bytes], numbers: Sequence[int], uid: bool
) -> bytes:
    """C{* ESEARCH (TAG "a") [UID] MIN n MAX n ALL set COUNT n} (RFC 4731 §3.1): the
    requested items in that order; with no match only COUNT (RFC 4731 §3.1: no MIN, MAX
    or ALL).  C{ALL} is a compact sequence set (C{1:3,7})."""
    out = [b"* ESEARCH (TAG " + encode_string(tag) + b")"]
    if uid:
        out.append(b"UID")
    if numbers:
        ordered = sorted(numbers)
        if b"MIN" in returns:
            out.append(b"MIN %d" % ordered[0])
        if b"MAX" in returns:
            out.append(b"MAX %d" % ordered[-1])
        if b"ALL" in returns:
            out.append(b"ALL " + uid_set(ordered))
    if b"COUNT" in returns:
        out.append(b"COUNT %d" % len(numbers))
    return b" ".join(out)


class SelectedCommands(MailboxUpdates):
    """The selected state (RFC 3501 §6.4), but FETCH."""

    if TYPE_CHECKING:  # provided by QuotaCommands in IMAPServer

        async def check_quota(self, size: int, count: int) -> None: ...

    def opt_store_modifiers(self, line: bytes) -> tuple[dict[bytes, Any], bytes]:
        """RFC 7162 §3.1.3 C{(UNCHANGEDSINCE n)} between the set and the action."""
        return self._modifiers(line, {b"UNCHANGEDSINCE": 0})

    # selected (RFC 3501 §6.4)

    async def do_CHECK(self, tag: bytes) -> bytes:
        await self._refresh()
        return b"CHECK completed"

    select_CHECK = command(do_CHECK)

    async def do_CLOSE(self, tag: bytes) -> bytes:
        mbox = self.selected
        if mbox.isWriteable():
            await mbox.expunge()  # RFC 3501 §6.4.2: silently, no EXPUNGE responses
        self._close_mailbox()
        return b"CLOSE completed"

    select_CLOSE = command(do_CLOSE)

    async def do_EXPUNGE(self, tag: bytes) -> bytes:
        if not self.selected.isWriteable():
            raise no(b"Mailbox is read-only", b"READ-ONLY")
        self._report_expunged(await self.selected.expunge())
        return b"EXPUNGE completed"

    select_EXPUNGE = command(do_EXPUNGE)

    async def do_SEARCH(  # type: ignore[override]  # this server's parsed arguments
        self,
        tag: bytes,
        returns: list[bytes] | None,
        charset: bytes | None,
        query: list[Any],
        uid: bool = False,
    ) -> bytes:
        if charset is not None and charset.upper() not in (b"US-ASCII", b"UTF-8"):
            raise no(b"Unsupported charset", b"BADCHARSET (US-ASCII UTF-8)")
        mbox = self.selected
        try:
            found = await mbox.search(query, uid=uid)
        except SearchError as e:
            raise bad(safe_text(str(e))) from None
        numbers = [mbox.getUID(n) for n in found] if uid else list(found)
        modseq_tail = b""
        if mbox.searched_modseq:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
            reported = list(found)
            if returns and found and set(returns) <= {b"MIN", b"MAX"}:
                # RFC 4731 §3.2: with only MIN/MAX, the MODSEQ of the messages returned
                picks = {b"MIN": min(found), b"MAX": max(found)}
                reported = [picks[r] for r in returns]
            if reported:  # RFC 7162 §3.1.5: the highest MODSEQ of the messages found
                modseq_tail = b"MODSEQ %d" % max(mbox.modseq_of(n) for n in reported)
        if returns is not None:
            line = esearch_response(tag, returns, numbers, uid)
            self.sendLine(line + (b" " + modseq_tail if modseq_tail else b""))
            return b"SEARCH completed"
        tail = [b"(" + modseq_tail + b")"] if modseq_tail else []
        self.sendLine(b" ".join([b"* SEARCH"] + [b"%d" % n for n in numbers] + tail))
        return b"SEARCH completed"

    def opt_search_return(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """RFC 4731 §3.1: optional C{RETURN (options)} before the search keys; C{RETURN ()}
        means ALL.  @raise imap4.IllegalClientResponse: an unknown option."""
        keyword, _, rest = (line or b"").partition(b" ")
        if keyword.upper() != b"RETURN" or rest[:1] != b"(":
            return None, line
        inner, rest = paren_group(rest)
        options = option_atoms(inner) or [b"ALL"]
        if set(options) - ESEARCH_RETURN_OPTIONS:
            raise imap4.IllegalClientResponse("Unknown SEARCH return option")
        return options, rest

    async def do_SORT(
        self,
        tag: bytes,
        criteria: list[Any],
        charset: bytes,
        query: list[Any],
        uid: bool = False,
    ) -> bytes:
        """SORT / UID SORT (RFC 5256 §3): C{* SORT n n ...} in the order of the criteria."""
        try:
            parsed = parse_criteria(criteria)
        except SortError as e:
            raise bad(safe_text(str(e))) from None
        if charset.upper() not in (b"US-ASCII", b"UTF-8"):
            raise no(b"Unsupported charset", b"BADCHARSET (US-ASCII UTF-8)")
        try:
            found = await self.selected.sort(parsed, query)
        except SearchError as e:
            raise bad(safe_text(str(e))) from None
        numbers = [self.selected.getUID(n) for n in found] if uid else found
        self.sendLine(b" ".join([b"* SORT"] + [b"%d" % n for n in numbers]))
        return b"SORT completed"

    def arg_sort_criteria(self, line: bytes) -> tuple[list[Any], bytes]:
        """RFC 5256 §4: C{(sort-criterion ...)}."""
        if (line or b"")[:1] != b"(":
            raise imap4.IllegalClientResponse("Sort criteria expected")
        inner, rest = paren_group(line)
        return imap4.parseNestedParens(inner), rest

    def arg_charset(self, line: bytes) -> Any:
        """The charset SORT requires (RFC 5256 §3), an astring (a literal too), and the
        search keys after it."""

        def keys_follow(result: tuple[bytes, bytes]) -> tuple[bytes, bytes]:
            if not result[0] or not result[1]:
                raise imap4.IllegalClientResponse("Charset and search keys expected")
            return result

        if not line:
            raise imap4.IllegalClientResponse("Charset and search keys expected")
        result = self._astring(line)
        if isinstance(result, Deferred):
            return result.addCallback(keys_follow)
        return keys_follow(result)

    def opt_charset(self, line: bytes) -> Any:
        """SEARCH's optional C{CHARSET astring} (RFC 3501 §6.4.4, §9: a literal too, which
        must be read here, never run as the next command)."""
        if (line or b"")[:8].upper() != b"CHARSET ":
            return None, line
        return self._astring(line[8:])

    select_SORT = command(do_SORT, arg_sort_criteria, arg_charset, IMAPProtocol.arg_searchkeys)
    select_SEARCH = command(do_SEARCH, opt_search_return, opt_charset, IMAPProtocol.arg_searchkeys)

    async def do_STORE(  # type: ignore[override]  # this server's parsed arguments
        self,
        tag: bytes,
        messages: imap4.MessageSet,
        modifiers: dict[bytes, Any] | None,
        mode: bytes,
        flags: list[bytes],
        uid: bool = False,
    ) -> bytes:
        action = mode.upper()
        silent = action.endswith(b".SILENT")
        if silent:
            action = action[: -len(b".SILENT")]
        modes = {b"FLAGS": 0, b"+FLAGS": 1, b"-FLAGS": -1}
        if action not in modes:
            raise bad(b"Invalid STORE data item")
        self._check_numbers(messages, uid)
        if not self.selected.isWriteable():
            raise no(b"Mailbox is read-only", b"READ-ONLY")
        names = [f.decode("ascii", "replace") for f in flags]
        kwargs: dict[str, Any] = {"uid": uid}
        unchangedsince = (modifiers or {}).get(b"UNCHANGEDSINCE")
        if unchangedsince is not None:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
            kwargs["unchangedsince"] = unchangedsince
        result = await self.selected.store(messages, names, modes[action], **kwargs)
        self._flush_unsolicited()  # EXISTS before a FETCH that names a new message number
        condstore = b"CONDSTORE" in self.enabled
        for seq in sorted(result):
            extra = b" UID %d" % self.selected.getUID(seq) if uid else b""
            if condstore:
                # RFC 7162 §3.1.3: with CONDSTORE even .SILENT reports the new MODSEQ
                extra = self._condstore_items(seq)
            if not silent:
                self.sendLine(
                    b"* %d FETCH (FLAGS (%s)%s)" % (seq, self._fetch_flags(result[seq]), extra)
                )
            elif condstore:
                self.sendLine(b"* %d FETCH (%s)" % (seq, extra.lstrip(b" ")))
        modified = self.selected.modified if unchangedsince is not None else []
        if modified:
            # RFC 7162 §3.1.3: the messages that failed the UNCHANGEDSINCE test
            listed = [self.selected.getUID(n) for n in modified] if uid else modified
            return b"[MODIFIED " + uid_set(listed) + b"] Conditional STORE failed"
        return b"STORE completed"

    def arg_flags(self, line: bytes) -> tuple[list[bytes], bytes]:
        """STORE's flags (RFC 3501 §9 store-att-flags: a flag list or flags without one)."""
        return grammar.flag_list(line or b"")

    select_STORE = command(
        do_STORE,
        IMAPProtocol.arg_seqset,
        opt_store_modifiers,
        imap4.IMAP4Server.arg_atom,
        arg_flags,
    )

    async def do_COPY(
        self, tag: bytes, messages: imap4.MessageSet, name: bytes, uid: bool = False
    ) -> bytes:
        self._check_numbers(messages, uid)
        if self.quota is not None:  # RFC 9208 §4.3.1: NO [OVERQUOTA], nothing copied
            sources = self.selected.fetch(messages, uid)
            await self.selected.sized(sources)
            await self.check_quota(sum(m.getSize() for _, m in sources), len(sources))
        code, _ = await self._copy(messages, name, uid)
        return code + b"COPY completed"

    async def _copy(
        self, messages: imap4.MessageSet, name: bytes, uid: bool
    ) -> tuple[bytes, list[MaildirMessage]]:
        """Copy into mailbox C{name}; return the C{[COPYUID ...] } code (RFC 4315 §3, empty
        when nothing was copied) and the source messages copied."""
        if self.selected.any_gone(messages, uid):
            # RFC 2180 §4.4.1: a set naming a message expunged elsewhere copies nothing
            # (Dovecot's answer; RFC 5530 §3)
            raise _expunge_issued()
        # opened as for EXAMINE: the target's \Recent messages stay for a SELECT (RFC 3501 §2.3.2)
        target = await self.mail_account.select(decode_mailbox_name(name), False)
        if target is None:
            raise no(b"No such mailbox", b"TRYCREATE")  # RFC 3501 §6.4.7
        copied: list[MaildirMessage] = []
        new_uids: list[int] = []
        sources = self.selected.fetch(messages, uid)
        await self.selected.dated(sources)  # each copy keeps its INTERNALDATE (RFC 3501 §6.4.7)
        missing = False
        try:
            for _seq, msg in sources:
                try:
                    new_uid = await target.copy(msg)
                except MaildirError:
                    missing = True  # expunged meanwhile, before the view knew
                    continue
                copied.append(msg)
                new_uids.append(new_uid)
        finally:
            close_quietly(target)
        await self._refresh_if_selected(target)
        self._observe_copy(target, copied)
        if missing:
            # the same answer (those copied before stay; a MOVE expunges none)
            raise _expunge_issued()
        code = b""
        if copied and target.getUIDValidity() and all(isinstance(u, int) for u in new_uids):
            code = b"[COPYUID %d %s %s] " % (
                target.getUIDValidity(),
                uid_set([m.getUID() for m in copied]),
                uid_set(new_uids),
            )
        return code, copied

    copy_observer: CopyObserver | None = None
    """Told of every COPY and MOVE (and UID forms): the spam filter learns from moves into
    and out of Junk (L{twistedmail.rspamd.JunkLearner})."""

    def _observe_copy(self, target: MaildirMailbox, copied: list[MaildirMessage]) -> None:
        if self.copy_observer is None or not copied:
            return
        try:
            self.copy_observer.copied(
                self.mail_account.address,
                self.selected.name,
                target.name,
                copied,
                self.mail_account.run_in_thread,
            )
        except Exception:
            log.failure("copy observer failed")

    async def do_MOVE(
        self, tag: bytes, messages: imap4.MessageSet, name: bytes, uid: bool = False
    ) -> bytes:
        """RFC 6851 §3: copy, then expunge the sources; COPYUID goes in an untagged OK
        before the EXPUNGE responses (§4.3)."""
        self._check_numbers(messages, uid)
        mbox = self.selected
        if not mbox.isWriteable():
            raise no(b"Mailbox is read-only", b"READ-ONLY")
        code, copied = await self._copy(messages, name, uid)
        if code:
            self.sendLine(b"* OK " + code + b"Moved")
        self._report_expunged(await mbox.remove_entries([m.entry for m in copied]))
        return b"MOVE completed"

    select_MOVE = command(do_MOVE, IMAPProtocol.arg_seqset, IMAPProtocol.arg_finalastring)

    async def do_UID_EXPUNGE(
        self, tag: bytes, messages: imap4.MessageSet, uid: bool = True
    ) -> bytes:
        """UID EXPUNGE (RFC 4315 §2.1): expunge only the C{\\Deleted} messages in the set."""
        if not self.selected.isWriteable():
            raise no(b"Mailbox is read-only", b"READ-ONLY")
        self._report_expunged(await self.selected.expunge(messages))
        return b"EXPUNGE completed"

    select_UID_EXPUNGE = command(do_UID_EXPUNGE, IMAPProtocol.arg_seqset)

    async def do_UNSELECT(self, tag: bytes) -> bytes:
        """RFC 3691: leave the selected state without expunging."""
        self._close_mailbox()
        return b"UNSELECT completed"

    select_UNSELECT = command(do_UNSELECT)

    select_COPY = command(do_COPY, IMAPProtocol.arg_seqset, IMAPProtocol.arg_finalastring)


def _expunge_issued() -> Exception:
    """COPY's and MOVE's NO for a set naming a message expunged elsewhere (RFC 5530 §3)."""
    return no(b"Some of the requested messages no longer exist.", b"EXPUNGEISSUED")
