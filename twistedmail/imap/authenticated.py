"""Commands of the authenticated state (RFC 3501 §6.3): SELECT and EXAMINE (§6.3.1-2, with
CONDSTORE and QRESYNC parameters, RFC 7162 §3.1.8, §3.2.5), CREATE, DELETE, RENAME,
SUBSCRIBE, UNSUBSCRIBE, LIST and LSUB (with LIST-EXTENDED RFC 5258, SPECIAL-USE RFC 6154,
LIST-STATUS RFC 5819), NAMESPACE (RFC 2342), STATUS (§6.3.10, with RFC 9208 §4.1.4 and
RFC 7889 §3.2 items), APPEND (§6.3.11, UIDPLUS RFC 4315 §3, UTF8 RFC 6855 §4), IDLE
(RFC 2177) and COMPRESS (RFC 4978); all but COMPRESS valid in the selected state too.

SELECT sends everything RFC 3501 §6.3.1 requires (UIDNEXT, PERMANENTFLAGS and UNSEEN, which
stock Twisted never sent); a missing mailbox is C{NO} with a response code (stock Twisted's
str/bytes mix-ups turned C{NO [TRYCREATE]} into C{BAD}); APPEND takes a message without a
flag list (stock Twisted answered C{BAD} from a C{TypeError}).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.logger import Logger
from twisted.mail import imap4

from twistedmail.imap import grammar
from twistedmail.imap.compress import DeflateTransport, Inflater
from twistedmail.imap.mailbox import MaildirMailbox
from twistedmail.imap.message import (
    encode_sexp,
    encode_string,
    parse_internaldate,
)
from twistedmail.imap.protocol import (
    ConnectionGone,
    IMAPError,
    IMAPProtocol,
    bad,
    command,
    decode_mailbox_name,
    encode_mailbox_name,
    format_flags,
    no,
    number_arg,
    option_atoms,
    paren_group,
    uid_set,
    uid_set_arg,
    utf8_mailbox,
)
from twistedmail.imap.updates import MailboxUpdates, close_quietly
from twistedmail.maildir import FolderGoneError, MaildirError
from twistedmail.wire import release_tls_buffers

log = Logger(namespace="twistedmail.imap")


STATUS_ITEMS = {"MESSAGES", "RECENT", "UIDNEXT", "UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"}
STATUS_ITEMS |= {"DELETED", "DELETED-STORAGE"}  # RFC 9208 §4.1.4 (QUOTA=RES-*)
STATUS_ITEMS |= {"APPENDLIMIT"}  # RFC 7889 §3.2

LIST_SELECT_OPTIONS = {b"SUBSCRIBED", b"REMOTE", b"RECURSIVEMATCH", b"SPECIAL-USE"}
LIST_RETURN_OPTIONS = {b"SUBSCRIBED", b"CHILDREN", b"SPECIAL-USE", b"STATUS"}


def _list_name(raw: bytes) -> str | None:
    """A LIST/LSUB reference or pattern decoded as a mailbox name; C{None} when it is not
    valid modified UTF-7 (RFC 3501 §5.1.3): it is a well-formed list-mailbox (§9) that no
    mailbox name matches, so LIST answers OK with nothing, as Dovecot does."""
    try:
        return decode_mailbox_name(raw)
    except imap4.IllegalMailboxEncoding:
        return None


def _list_return_options(inner: bytes) -> list[Any]:
    """RFC 5258 §3 return options, upper-cased; C{STATUS (items)} (RFC 5819 §2) becomes
    C{b"STATUS"} followed by the item list.  @raise imap4.IllegalClientResponse: nesting
    elsewhere, or STATUS without its list."""
    items = imap4.parseNestedParens(inner)
    out: list[Any] = []
    for i, item in enumerate(items):
        if isinstance(item, list):
            if not out or out[-1] != b"STATUS" or not all(isinstance(x, bytes) for x in item):
                raise imap4.IllegalClientResponse("Unexpected list")
            out.append([x.upper() for x in item])
        elif isinstance(item, bytes):
            out.append(item.upper())
            if item.upper() == b"STATUS" and not isinstance(
                items[i + 1] if i + 1 < len(items) else None, list
            ):
                raise imap4.IllegalClientResponse("STATUS needs a list of items")
        else:
            raise imap4.IllegalClientResponse("Bad LIST return option")
    return out


def _status_option(returns: list[Any] | None) -> list[str]:
    """The STATUS items of a LIST RETURN (RFC 5819), C{[]} when not asked; the item lists
    are removed from C{returns}.  @raise IMAPError: BAD for an unknown STATUS item."""
    if not returns:
        return []
    out: list[str] = []
    for item in [r for r in returns if isinstance(r, list)]:
        returns.remove(item)
        if not item:  # RFC 5819 §3: "STATUS" SP "(" status-att *(SP status-att) ")"
            raise bad(b"STATUS items expected")
        for name in item:
            if not isinstance(name, bytes):
                raise bad(b"Unknown STATUS item")
            text = name.decode("ascii", "replace").upper()  # atoms are case-insensitive
            if text not in STATUS_ITEMS:
                raise bad(b"Unknown STATUS item")
            if text not in out:
                out.append(text)
    return out


async def _status(mbox: MaildirMailbox, names: Sequence[str], appendlimit: int) -> dict[str, int]:
    """The STATUS items C{names} of C{mbox}, in that order: the mailbox's own, plus DELETED
    and DELETED-STORAGE (RFC 9208 §4.1.4) and APPENDLIMIT (RFC 7889 §3.2: C{appendlimit},
    the largest APPEND in octets)."""
    extra = ("DELETED", "DELETED-STORAGE", "APPENDLIMIT")
    wanted = [n for n in names if n not in extra]
    status = mbox.requestStatus(wanted)
    if len(wanted) < len(names):
        if "DELETED" in names or "DELETED-STORAGE" in names:
            status = {**status, **await _deleted_status(mbox)}
        status = {**status, "APPENDLIMIT": appendlimit}
        status = {n: status[n] for n in names}
    return status


async def _deleted_status(mbox: MaildirMailbox) -> dict[str, int]:
    """STATUS DELETED and DELETED-STORAGE (RFC 9208 §4.1.4): the messages flagged
    C{\\Deleted} and the sum of their RFC822.SIZE (what EXPUNGE would free)."""
    if not mbox.getMessageCount():
        return {"DELETED": 0, "DELETED-STORAGE": 0}
    messages = mbox.fetch(imap4.MessageSet(1, None), False)
    doomed = [m for _, m in messages if "\\Deleted" in m.getFlags()]
    await mbox.sized([(0, m) for m in doomed])
    return {"DELETED": len(doomed), "DELETED-STORAGE": sum(m.getSize() for m in doomed)}


class AuthenticatedCommands(MailboxUpdates):
    """The authenticated state (RFC 3501 §6.3), also valid when a mailbox is selected."""

    if TYPE_CHECKING:  # provided by QuotaCommands in IMAPServer

        async def check_quota(self, size: int, count: int) -> None: ...

    # authenticated (RFC 3501 §6.3)

    def do_NAMESPACE(self, tag: bytes) -> bytes:
        presenter = imap4.INamespacePresenter(self.account, None)
        spaces: list[Any] = [None, None, None]
        if presenter is not None:
            spaces = [
                presenter.getPersonalNamespaces(),
                presenter.getSharedNamespaces(),
                presenter.getUserNamespaces(),
            ]
        # RFC 2342 §5: personal, other users', shared
        encoded = [
            b"(" + b"".join(b"(" + encode_sexp(list(ns)) + b")" for ns in group) + b")"
            if group
            else b"NIL"
            for group in (spaces[0], spaces[2], spaces[1])
        ]
        self.sendUntaggedResponse(b"NAMESPACE " + b" ".join(encoded))
        return b"NAMESPACE completed"

    auth_NAMESPACE = command(do_NAMESPACE)
    select_NAMESPACE = auth_NAMESPACE

    def do_COMPRESS(self, tag: bytes, mechanism: bytes) -> None:
        """COMPRESS DEFLATE (RFC 4978 §3): the tagged OK goes out uncompressed, everything
        after it (both ways) is raw DEFLATE; input the client pipelined after the command is
        already compressed."""
        if self._inflater is not None:
            raise no(b"DEFLATE already active", b"COMPRESSIONACTIVE")
        if mechanism.upper() != b"DEFLATE":
            raise bad(b"Unknown compression mechanism", b"CANNOT")
        self.sendPositiveResponse(tag, b"DEFLATE active")
        leftover = self.clearLineBuffer()
        self._inflater = Inflater()
        self.transport = DeflateTransport(self.transport)
        # inflated when the dispatcher resumes input (dataReceived(b""))
        self._inflater.queue(leftover)
        log.info("imap compress session={session} deflate", session=self.session)

    auth_COMPRESS = command(do_COMPRESS, imap4.IMAP4Server.arg_atom)
    select_COMPRESS = auth_COMPRESS

    async def _open(self, name: bytes, readwrite: bool) -> MaildirMailbox:
        mbox = await self.mail_account.select(decode_mailbox_name(name), readwrite)
        if mbox is None:
            raise no(b"No such mailbox", b"NONEXISTENT")
        return mbox

    async def do_SELECT(
        self, tag: bytes, name: bytes, params: list[Any] | None, readwrite: int, command: bytes
    ) -> bytes:
        if self.mbox is not None and b"QRESYNC" in self.enabled:
            self.sendLine(b"* OK [CLOSED] Previous mailbox closed")  # RFC 7162 §3.2.11
        self._close_mailbox()  # RFC 3501 §6.3.1: a failed SELECT leaves no mailbox selected
        qresync = self._select_params(params)
        mbox = await self._open(name, bool(readwrite))
        if self._lost:  # the client left during the scan: watch nothing for nobody
            closeable = imap4.ICloseableMailbox(mbox, None)
            if closeable is not None:
                await maybeDeferred(closeable.close)
            raise ConnectionGone()
        if "\\noselect" in [f.lower() for f in mbox.getFlags()]:
            raise no(b"Mailbox cannot be selected", b"CANNOT")
        flags = format_flags(mbox.flags_announced())
        # RFC 3501 §6.3.1: FLAGS, EXISTS, RECENT, UNSEEN, PERMANENTFLAGS, UIDNEXT, UIDVALIDITY
        self.sendLine(b"* FLAGS (" + flags + b")")
        self.sendLine(b"* %d EXISTS" % mbox.getMessageCount())
        self.sendLine(b"* %d RECENT" % mbox.getRecentCount())
        first_unseen = mbox.first_unseen()
        if first_unseen is not None:
            self.sendLine(b"* OK [UNSEEN %d] First unseen" % first_unseen)
        writeable = mbox.isWriteable()
        permanent = format_flags(mbox.permanent_flags()) if writeable else b""
        self.sendLine(b"* OK [PERMANENTFLAGS (" + permanent + b")] Flags permitted")
        self.sendLine(b"* OK [UIDNEXT %d] Predicted next UID" % mbox.getUIDNext())
        self.sendLine(b"* OK [UIDVALIDITY %d] UIDs valid" % mbox.getUIDValidity())
        # RFC 7162 §3.1.2.1: sent on every SELECT/EXAMINE by a server keeping modseqs
        self.sendLine(b"* OK [HIGHESTMODSEQ %d] Highest" % mbox.getHighestModSeq())
        mbox.addListener(self)
        self.mbox = mbox
        self.state = "select"
        if qresync is not None:
            await self._qresync(*qresync)
        mode = b"[READ-WRITE] " if writeable else b"[READ-ONLY] "
        return mode + command + b" completed"

    def opt_select_params(self, line: bytes) -> tuple[list[Any] | None, bytes]:
        """RFC 4466 §2.1 select parameters: C{(CONDSTORE)}, C{(QRESYNC (...))}."""
        if (line or b"")[:1] != b"(":
            return None, line
        inner, rest = paren_group(line)
        return imap4.parseNestedParens(inner), rest

    auth_SELECT = command(do_SELECT, IMAPProtocol.arg_astring, opt_select_params, 1, b"SELECT")
    select_SELECT = auth_SELECT
    auth_EXAMINE = command(do_SELECT, IMAPProtocol.arg_astring, opt_select_params, 0, b"EXAMINE")
    select_EXAMINE = auth_EXAMINE

    def _select_params(self, params: list[Any] | None) -> tuple[int, int, Any] | None:
        """Check SELECT/EXAMINE parameters: C{CONDSTORE} (RFC 7162 §3.1.8) enables
        CONDSTORE; C{QRESYNC (uidvalidity modseq [known-uids [seq-match]])} (§3.2.5) gives
        (uidvalidity, modseq, known-uids or None).  @raise IMAPError: BAD otherwise."""
        if params is None:
            return None
        items = list(params)
        qresync = None
        while items:
            name = items.pop(0)
            if not isinstance(name, bytes):
                raise bad(b"Select parameter expected")
            if name.upper() == b"CONDSTORE":
                self.enabled |= {b"CONDSTORE"}
            elif name.upper() == b"QRESYNC":
                if b"QRESYNC" not in self.enabled:
                    raise bad(b"QRESYNC is not enabled")  # RFC 7162 §3.2.5
                args = items.pop(0) if items else None
                if not isinstance(args, list) or not 2 <= len(args) <= 4:
                    raise bad(b"QRESYNC (uidvalidity modseq [known-uids [seq-match]])")
                # RFC 7162 §7: uidvalidity is nz-number (32-bit, RFC 3501 §9)
                uidvalidity = number_arg(args[0], 1, grammar.MAX_NUMBER)
                modseq = number_arg(args[1], 1)
                known = uid_set_arg(args[2]) if len(args) > 2 else None
                if len(args) > 3:
                    match = args[3]  # RFC 7162 §3.2.5.2 seq-match-data: checked, not needed
                    if not isinstance(match, list) or len(match) != 2:
                        raise bad(b"Bad sequence match data")
                    uid_set_arg(match[0]), uid_set_arg(match[1])
                qresync = (uidvalidity, modseq, known)
            else:
                raise bad(b"Unknown select parameter")
        return qresync

    async def _qresync(self, uidvalidity: int, modseq: int, known: Any) -> None:
        """RFC 7162 §3.2.5.2: after SELECT (QRESYNC ...), C{VANISHED (EARLIER)} for UIDs
        expunged since C{modseq} and C{FETCH (UID FLAGS MODSEQ)} for messages changed since,
        both limited to the client's known UIDs; nothing when UIDVALIDITY changed."""
        mbox = self.selected
        if uidvalidity != mbox.getUIDValidity():
            return
        vanished = await mbox.vanished_since(modseq, known)
        if vanished:
            self.sendLine(b"* VANISHED (EARLIER) " + uid_set(vanished))
        every = imap4.MessageSet(1, None)
        for seq, msg in mbox.fetch(every if known is None else known, True):
            if msg.entry.modseq > modseq:
                self.sendLine(
                    b"* %d FETCH (UID %d FLAGS (%s) MODSEQ (%d))"
                    % (seq, msg.getUID(), self._fetch_flags(msg.getFlags()), msg.entry.modseq)
                )

    async def do_CREATE(self, tag: bytes, name: bytes) -> bytes:
        if not await self._in_thread(self.mail_account.create, decode_mailbox_name(name)):
            raise no(b"Mailbox not created", b"CANNOT")
        return b"CREATE completed"

    auth_CREATE = command(do_CREATE, IMAPProtocol.arg_finalastring)
    select_CREATE = auth_CREATE

    async def do_DELETE(self, tag: bytes, name: bytes) -> bytes:
        await self._in_thread(self.mail_account.delete, decode_mailbox_name(name))
        return b"DELETE completed"

    auth_DELETE = command(do_DELETE, IMAPProtocol.arg_finalastring)
    select_DELETE = auth_DELETE

    async def do_RENAME(self, tag: bytes, old: bytes, new: bytes) -> bytes:
        await self._in_thread(
            self.mail_account.rename, decode_mailbox_name(old), decode_mailbox_name(new)
        )
        return b"RENAME completed"

    auth_RENAME = command(do_RENAME, IMAPProtocol.arg_astring, IMAPProtocol.arg_finalastring)
    select_RENAME = auth_RENAME

    async def do_SUBSCRIBE(self, tag: bytes, name: bytes) -> bytes:
        await self._in_thread(self.mail_account.subscribe, decode_mailbox_name(name))
        return b"SUBSCRIBE completed"

    auth_SUBSCRIBE = command(do_SUBSCRIBE, IMAPProtocol.arg_finalastring)
    select_SUBSCRIBE = auth_SUBSCRIBE

    async def do_UNSUBSCRIBE(self, tag: bytes, name: bytes) -> bytes:
        await self._in_thread(self.mail_account.unsubscribe, decode_mailbox_name(name))
        return b"UNSUBSCRIBE completed"

    auth_UNSUBSCRIBE = command(do_UNSUBSCRIBE, IMAPProtocol.arg_finalastring)
    select_UNSUBSCRIBE = auth_UNSUBSCRIBE

    async def do_LIST(
        self, tag: bytes, ref: bytes, pattern: bytes, subscribed: int, command: bytes
    ) -> bytes:
        reference, wildcard = _list_name(ref), _list_name(pattern)
        if reference is None or wildcard is None:
            return command + b" completed"  # no mailbox name matches (see _list_name)
        if not wildcard and not subscribed:
            # RFC 3501 §6.3.8: the hierarchy delimiter and root name
            self.sendLine(b'* LIST (\\Noselect) "." ""')
            return b"LIST completed"
        if subscribed:
            boxes = await self.mail_account.list_subscribed(reference, wildcard)
        else:
            boxes = await self.mail_account.listMailboxes(reference, wildcard)
        for name, info in boxes:
            attributes = format_flags(info.getFlags())
            delimiter = encode_string(info.getHierarchicalDelimiter())
            self.sendLine(
                b"* "
                + command
                + b" ("
                + attributes
                + b") "
                + delimiter
                + b" "
                + self.wire_name(name)
            )
        return command + b" completed"

    auth_LSUB = command(do_LIST, IMAPProtocol.arg_astring, IMAPProtocol.arg_astring, 1, b"LSUB")
    select_LSUB = auth_LSUB

    def opt_list_select(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """RFC 5258 §3: optional C{(selection options)} before the reference name."""
        if (line or b"")[:1] != b"(":
            return None, line
        inner, rest = paren_group(line)
        return option_atoms(inner), rest

    def arg_list_patterns(self, line: bytes) -> Any:
        """One mailbox pattern, or RFC 5258 §3 C{(pattern pattern ...)}."""
        if (line or b"")[:1] != b"(":
            result = self.arg_astring(line)
            if isinstance(result, Deferred):
                return result.addCallback(lambda r: ([r[0]], r[1]))
            return [result[0]], result[1]
        inner, rest = paren_group(line)
        patterns = grammar.parse_list(inner)
        if not patterns or not all(isinstance(p, bytes) for p in patterns):
            raise imap4.IllegalClientResponse("Bad mailbox patterns")
        if self.utf8_accept():
            patterns = [utf8_mailbox(p) for p in patterns]
        return patterns, rest

    def opt_list_return(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """RFC 5258 §3: optional C{RETURN (return options)} at the end."""
        if not line:
            return None, b""
        keyword, _, rest = line.partition(b" ")
        if keyword.upper() != b"RETURN" or rest[:1] != b"(":
            raise imap4.IllegalClientResponse("RETURN expected")
        inner, rest = paren_group(rest)
        return _list_return_options(inner), rest

    async def do_LIST_EXTENDED(
        self,
        tag: bytes,
        selection: list[bytes] | None,
        ref: bytes,
        patterns: list[bytes],
        returns: list[bytes] | None,
    ) -> bytes:
        """LIST with RFC 5258 selection and return options, RFC 6154 special-use."""
        status_items = _status_option(returns)
        chosen, wanted = set(selection or ()), {r for r in returns or () if r != b"STATUS"}
        if chosen - LIST_SELECT_OPTIONS:
            raise bad(b"Unknown LIST selection option")
        if wanted - LIST_RETURN_OPTIONS:
            raise bad(b"Unknown LIST return option")
        if b"RECURSIVEMATCH" in chosen and not chosen - {b"RECURSIVEMATCH", b"REMOTE"}:
            raise bad(b"RECURSIVEMATCH needs another selection option")  # RFC 5258 §3.1
        reference = _list_name(ref)
        wildcards = [w for w in map(_list_name, patterns) if w is not None]
        if reference is None or not wildcards:
            return b"LIST completed"  # no mailbox name matches (see _list_name)
        if selection is None and wildcards == [""]:
            # RFC 3501 §6.3.8: the hierarchy delimiter and root name
            self.sendLine(b'* LIST (\\Noselect) "." ""')
            return b"LIST completed"
        entries = await self.mail_account.list_folders(
            reference,
            [w for w in wildcards if w],
            subscribed=b"SUBSCRIBED" in chosen,
            recursive=b"RECURSIVEMATCH" in chosen,
            special_use=b"SPECIAL-USE" in chosen,
        )
        # RFC 5258 §3.1: the SUBSCRIBED selection option implies the SUBSCRIBED return option
        show_subscribed = b"SUBSCRIBED" in chosen or b"SUBSCRIBED" in wanted
        for entry in entries:
            attributes = [a for a in entry.attributes if show_subscribed or a != "\\Subscribed"]
            extra = b' ("CHILDINFO" ("SUBSCRIBED"))' if entry.child_subscribed else b""
            self._list_line(b"LIST", entry.name, attributes, ".", extra)
            lowered = {a.lower() for a in attributes}
            if status_items and not lowered & {"\\noselect", "\\nonexistent"}:
                await self._list_status(entry.name, status_items)  # RFC 5819 §2
        return b"LIST completed"

    async def _list_status(self, name: str, items: list[str]) -> None:
        """The STATUS line after a LIST line (RFC 5819 §2); a mailbox that cannot be
        opened (deleted meanwhile) gets none."""
        mbox = await self.mail_account.select(name, False)
        if mbox is None:
            return
        try:
            status = await _status(mbox, items, self.max_literal_size)
        finally:
            close_quietly(mbox)
        data = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in status.items())
        self.sendLine(b"* STATUS " + self.wire_name(name) + b" (" + data + b")")

    def wire_name(self, name: str) -> bytes:
        """A mailbox name for a response: modified UTF-7 (RFC 3501 §5.1.3), or UTF-8 once
        UTF8=ACCEPT is enabled (RFC 6855 §3), quoted when it can be."""
        if not self.utf8_accept():
            return encode_mailbox_name(name)
        raw = name.encode("utf-8", "surrogateescape")
        if len(raw) < 1000 and not any(b < 0x20 or b == 0x7F for b in raw):
            return b'"' + raw.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'
        return b"{%d}\r\n" % len(raw) + raw

    def _list_line(
        self,
        command: bytes,
        name: str,
        attributes: Sequence[str],
        delimiter: str,
        extra: bytes = b"",
    ) -> None:
        self.sendLine(
            b"* %s (%s) %s %s%s"
            % (
                command,
                format_flags(attributes),
                encode_string(delimiter),
                self.wire_name(name),
                extra,
            )
        )

    auth_LIST = command(
        do_LIST_EXTENDED,
        opt_list_select,
        IMAPProtocol.arg_astring,
        arg_list_patterns,
        opt_list_return,
    )
    select_LIST = auth_LIST

    async def do_STATUS(self, tag: bytes, name: bytes, items: list[Any]) -> bytes:
        names = []
        for item in items:
            if (
                not isinstance(item, bytes)
                or item.upper().decode("ascii", "replace") not in STATUS_ITEMS
            ):
                raise bad(b"Unknown STATUS item")
            names.append(item.upper().decode("ascii"))
        if "HIGHESTMODSEQ" in names:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
        mailbox = decode_mailbox_name(name)
        mbox = await self._open(name, False)
        try:
            status = await _status(mbox, names, self.max_literal_size)
        finally:
            close_quietly(mbox)
        data = b" ".join(b"%s %d" % (k.encode("ascii"), v) for k, v in status.items())
        self.sendLine(b"* STATUS " + self.wire_name(mailbox) + b" (" + data + b")")
        return b"STATUS completed"

    auth_STATUS = command(do_STATUS, IMAPProtocol.arg_astring, IMAPProtocol.arg_plist)
    select_STATUS = auth_STATUS

    async def do_APPEND(
        self, tag: bytes, name: bytes, flags: list[bytes] | None, date: bytes | None, message: Any
    ) -> bytes | None:
        # RFC 3501 §6.3.11; the flag list and date are optional (stock Twisted iterated a
        # missing flag list, None, and answered BAD)
        if date is not None and parse_internaldate(date) is None:
            raise bad(b"Invalid date-time")
        flag_names = [f.decode("ascii") for f in flags or ()]
        target = decode_mailbox_name(name)
        mbox = self.mbox
        opened = mbox is None or mbox.path != self.mail_account.folder_path(target)
        shown = False  # the selected folder's rescan after the APPEND is applied
        if opened:
            # not scanned (its \Recent messages stay for a SELECT, RFC 3501 §2.3.2): whether
            # the folder is there is known when the message is stored
            mbox = self.mail_account.append_target(target)
            if mbox is None:
                raise no(b"No such mailbox", b"TRYCREATE")
        # (else the selected folder's own mailbox stores it: no second one opened, whose
        # scan and view of every message were a third of APPEND's time)
        assert mbox is not None
        try:
            data = message.read()
            if not data:
                raise no(b"Empty message", b"CANNOT")
            await self.check_quota(len(data), 1)  # RFC 9208 §4.3.1: NO [OVERQUOTA]
            try:
                if opened:
                    uidvalidity, new_uid = await mbox.append(data, flag_names, date)
                else:  # the selected folder: stored and rescanned in one thread hop
                    uidvalidity, new_uid, shown = await mbox.append_seen(data, flag_names, date)
            except MaildirError as e:
                if opened and not isinstance(e, FolderGoneError):
                    raise
                # RFC 3501 §6.3.11: not there (or deleted meanwhile): NO [TRYCREATE]
                raise no(b"No such mailbox", b"TRYCREATE") from None
        finally:
            if opened:
                close_quietly(mbox)
        # RFC 4315 §3: APPENDUID <uidvalidity> <uid>, the UIDVALIDITY the new UID belongs to
        done = b"[APPENDUID %d %d] APPEND completed" % (uidvalidity, new_uid)
        try:
            if opened or not shown:
                await self._refresh_if_selected(mbox)
        except IMAPError as e:
            if not e.close:
                raise
            # the selected folder was deleted and made again, and the message is stored in
            # the new one: say so (a NO would make the client store it twice), then BYE
            self.sendPositiveResponse(tag, done)
            self.bye(b"[" + e.code + b"] " + e.text)
            return None
        return done

    def opt_flag_list(self, line: bytes) -> tuple[list[bytes] | None, bytes]:
        """APPEND's optional flag list (RFC 3501 §9 append: C{[SP flag-list]}), checked
        before the literal is asked for: stock C{opt_plist} took any list, and the flags
        that were not atoms (C{\\xff}, a nested list) were dropped with an OK.

        @raise imap4.IllegalClientResponse: a list item that is not a flag (L{grammar.flags}).
        """
        if not line.startswith(b"("):
            return None, line
        inner, rest = paren_group(line)
        return grammar.flags(grammar.parse_list(inner)), rest

    auth_APPEND = command(
        do_APPEND,
        IMAPProtocol.arg_astring,
        opt_flag_list,
        imap4.IMAP4Server.opt_datetime,
        IMAPProtocol.arg_literal_or_utf8,
    )
    select_APPEND = auth_APPEND

    async def do_IDLE(self, tag: bytes) -> None:
        """RFC 2177: push EXISTS/EXPUNGE/FETCH until the client sends DONE.

        The command ends here, without its tagged reply: the session is left in the
        C{idle} parse state with the tag, and L{parse_idle} answers the client's next line.
        (Awaiting that line held the dispatcher's coroutine, the handler's and their
        Deferreds, ~1.6 KiB, for as long as the client idles: issue 10.)"""
        await self._refresh()
        if self.mbox is not None:
            self._send_expunges()
        self._flush_unsolicited()
        self.sendContinuationRequest(b"idling")
        self._idling = True
        self._idle_tag = tag
        self.parseState = "idle"

    def parse_idle(self, line: bytes) -> None:
        """The line that ends IDLE (RFC 2177 §3: only DONE; anything else is BAD), answered
        with the IDLE command's tag."""
        tag, self._idle_tag = self._idle_tag, None
        self._idling = False
        self.parseState = "command"
        assert tag is not None
        if line.strip().upper() != b"DONE":
            self._respond(b"BAD", tag, b"Expected DONE")
        else:
            self._completed(tag, b"IDLE terminated")
        release_tls_buffers(self.transport)  # the session may idle now

    auth_IDLE = command(do_IDLE)
    select_IDLE = auth_IDLE
