"""FETCH and UID FETCH (RFC 3501 §6.4.5, §7.4.2), with CHANGEDSINCE and VANISHED (RFC 7162
§3.1.4.1, §3.2.6).

ENVELOPE, BODYSTRUCTURE and BODY are rendered from the stored bytes once
(L{twistedmail.imap.message}) and then answered from the folder index; a message file is
read only for the sections asked.  Each process also keeps the items it rendered last
(L{RenderedItems}: sections, headers, ENVELOPE...; a message file never changes once
delivered, only its name's flags), so a FETCH of items rendered before neither reads the
file nor renders again.  A non-PEEK BODY[] sets C{\\Seen} (§6.4.5; stock Twisted
never set it); a partial fetch sends only the range asked (C{BODY[]<0.20>}; stock Twisted
sent the whole message, twisted #5613); raw 8-bit headers are sent as they are stored
(stock Twisted dropped the connection on a non-ASCII header).  The output loop pauses
while the client does not read (a push producer on the transport), and lets other
connections run between batches.  A message expunged elsewhere that the session still has
in its view gets what can still be read and NIL for the rest, with C{OK [EXPUNGEISSUED]}
(RFC 2180 §4.1.2, RFC 5530 §3; Dovecot 2.3's answer).
"""

from __future__ import annotations

import os
from collections import OrderedDict
from typing import Any, Final

from twisted.internet import interfaces
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.mail import imap4
from zope.interface import implementer

from twistedmail.imap.grammar import MAX_NUMBER
from twistedmail.imap.mailbox import MaildirMailbox
from twistedmail.imap.message import (
    MaildirMessage,
    bodystructure,
    encode_sexp,
    envelope,
    format_internaldate,
    parse_entity,
    partial,
    render_parts,
    section_data,
    section_label,
    split_message,
)
from twistedmail.imap.protocol import IMAPProtocol, bad, command, paren_group, uid_set
from twistedmail.imap.updates import MailboxUpdates
from twistedmail.index import CachedParts
from twistedmail.maildir import UNKNOWN_MTIME, UNKNOWN_SIZE, MaildirError, size_from_name

log = Logger(namespace="twistedmail.imap")


FETCH_BATCH = 1000

FETCH_WRITE = 64 << 10
"""A FETCH's responses are written once this many octets of them are held (and before
each thread hop that reads messages, and at the end): one C{transport.write} for many
messages (L{IMAPProtocol.hold_output})."""


@implementer(interfaces.IPushProducer)
class _FlowGate:
    """Registered on the transport during FETCH so a slow reader pauses the output loop."""

    def __init__(self) -> None:
        self.waiting: Deferred[None] | None = None
        self.paused = False

    def pauseProducing(self) -> None:
        self.paused = True

    def resumeProducing(self) -> None:
        self.paused = False
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            waiting.callback(None)

    def stopProducing(self) -> None:
        self.resumeProducing()

    async def wait(self) -> None:
        if self.paused:
            self.waiting = Deferred()
            await self.waiting


class _ModSeqItem:
    """The FETCH item C{MODSEQ} (RFC 7162 §3.1.4.1), beside Twisted's parsed items."""

    type = "modseq"
    peek = True
    header = None
    text = False
    mime = False
    empty = False


def _top_level(text: bytes) -> list[bytes]:
    """Split on spaces outside brackets and parentheses: C{BODY[HEADER.FIELDS (A B)] X}
    is two items."""
    items, depth, start = [], 0, 0
    for i, c in enumerate(text):
        if c in b"[(":
            depth += 1
        elif c in b"])":
            depth -= 1
        elif c == 0x20 and depth == 0:
            if i > start:
                items.append(text[start:i])
            start = i + 1
    if start < len(text):
        items.append(text[start:])
    return items


_CHEAP = ("flags", "uid", "internaldate", "rfc822size", "modseq")
"""FETCH items answered from the index alone."""


def _has_parts(parts: CachedParts | None, kinds: set[str]) -> bool:
    return parts is not None and all(getattr(parts, kind) is not None for kind in kinds)


def _cacheable(part: Any) -> bool:
    """ENVELOPE, BODYSTRUCTURE, BODY: rendered once, then answered from the folder index."""
    return part.type in ("envelope", "bodystructure") or (
        part.type == "body" and not _has_section(part)
    )


def _has_section(part: Any) -> bool:
    return bool(part.header is not None or part.text or part.mime or part.empty)


def _numbers_in_range(part: Any) -> bool:
    """A partial's origin and length and a section's part numbers are C{number} and
    C{nz-number}: unsigned 32-bit (RFC 3501 §9; Twisted's parser takes any size, and its
    part numbers count from 0)."""
    numbers = [getattr(part, "partialBegin", None), getattr(part, "partialLength", None)]
    numbers += [n + 1 for n in getattr(part, "part", None) or ()]
    return all(n is None or n <= MAX_NUMBER for n in numbers)


def _literal(data: bytes) -> bytes:
    return b"{%d}\r\n" % len(data) + data


_MISSING: Final = object()

_GONE: Final = object()
"""A content item of a message whose file is gone (expunged by another session or
program while this session still has it in its view) and that nothing kept."""

EXPUNGED_REPLY = b"[EXPUNGEISSUED] Some messages were already expunged."
"""FETCH's tagged OK when a message of its set could no longer be read (RFC 5530 §3;
Dovecot 2.3's text)."""

_GONE_VALUES: Final = {
    "envelope": b"NIL NIL NIL NIL NIL NIL NIL NIL NIL NIL",
    "bodystructure": b'"text" "plain" NIL NIL NIL "7bit" 0 0 NIL NIL NIL NIL',
    "body": b'"text" "plain" NIL NIL NIL "7bit" 0 0',
}
"""What stands for ENVELOPE, BODYSTRUCTURE and BODY of such a message: Dovecot's empty
values (a section is NIL)."""


class RenderedItems:
    """The FETCH items this process rendered last, by (folder, Maildir base name, item):
    a bounded LRU on the reactor thread.  A message file's content never changes once it
    is delivered (RFC 3501 §2.3.1.1: a UID names the same message; Maildir changes only
    the flags in its name), so an item rendered once is the answer for as long as it is
    kept.  The value is what goes inside the item (ENVELOPE's parentheses, a section's
    octets before any partial range), C{None} for a section the message does not have.

    @param max_octets: the values kept add up to at most this (plus L{OVERHEAD} each).
    @param max_item: a value above this is not kept (it is read from the file again).
    """

    OVERHEAD = 200
    """Octets counted per entry besides its value (the key and the LRU's links)."""

    def __init__(self, max_octets: int = 4 << 20, max_item: int = 32 << 10) -> None:
        self.max_octets = max_octets
        self.max_item = max_item
        self.octets = 0
        self._items: OrderedDict[tuple[str, str, bytes], bytes | None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, key: tuple[str, str, bytes]) -> object:
        """The value kept for C{key} (made the most recent), else L{_MISSING}."""
        value = self._items.get(key, _MISSING)
        if value is not _MISSING:
            self._items.move_to_end(key)
        return value

    def put(self, key: tuple[str, str, bytes], value: bytes | None) -> None:
        size = len(value or b"") + self.OVERHEAD
        if size > self.max_item:
            return
        old = self._items.pop(key, _MISSING)
        if old is not _MISSING:
            self.octets -= len(old or b"") + self.OVERHEAD  # type: ignore[arg-type]
        self._items[key] = value
        self.octets += size
        while self.octets > self.max_octets:
            _, gone = self._items.popitem(last=False)
            self.octets -= len(gone or b"") + self.OVERHEAD


RENDERED = RenderedItems()
"""The process's rendered FETCH items (every session's FETCH shares it)."""


def _item_key(part: Any) -> bytes:
    """What names a content item's value in L{RenderedItems}: its label as echoed
    (C{RFC822.HEADER} is C{BODY[HEADER]}'s octets, C{RFC822} those of C{BODY[]})."""
    kind = part.type
    if kind == "body":
        return section_label(part) if _has_section(part) else b"BODY"
    return {
        "envelope": b"ENVELOPE",
        "bodystructure": b"BODYSTRUCTURE",
        "rfc822": b"BODY[]",
        "rfc822header": b"BODY[HEADER]",
        "rfc822text": b"BODY[TEXT]",
    }[kind]


READ_AHEAD = 32
"""Messages a FETCH reads in one thread hop (at most L{READ_AHEAD_OCTETS} of them, but one
at least): one hop per message cost more than the read."""
READ_AHEAD_OCTETS = 1 << 20


def _read_many(mbox: MaildirMailbox, msgs: list[MaildirMessage]) -> list[bytes | None]:
    """The bytes of each message (C{None}: expunged meanwhile), in the calling thread."""
    out: list[bytes | None] = []
    for msg in msgs:
        try:
            out.append(mbox.folder.read(msg.entry))
        except MaildirError:
            out.append(None)
    return out


async def _read_ahead(
    mbox: MaildirMailbox,
    targets: list[tuple[int, MaildirMessage]],
    wanted: list[int],
    start: int,
    loaded: dict[int, bytes | None],
) -> None:
    """Read the messages at C{wanted} positions from C{start} on (up to L{READ_AHEAD} and
    L{READ_AHEAD_OCTETS}) in one thread hop, into C{loaded} by position."""
    batch: list[int] = []
    octets = 0
    for i in wanted[start:]:
        size = targets[i][1].getSize()
        if size < 0:  # not measured yet (named without ,W=): its ,S=, else read it alone
            size = size_from_name(targets[i][1].entry.base) or READ_AHEAD_OCTETS
        if batch and (len(batch) >= READ_AHEAD or octets + size > READ_AHEAD_OCTETS):
            break
        batch.append(i)
        octets += size
    raws = await mbox.run_in_thread(_read_many, mbox, [targets[i][1] for i in batch])
    loaded.update(zip(batch, raws, strict=True))


async def _next_turn(clock: IReactorTime) -> None:
    """Let other connections run between batches of a long FETCH."""
    d: Deferred[None] = Deferred()
    clock.callLater(0, d.callback, None)
    await d


class FetchCommand(MailboxUpdates):
    """FETCH (RFC 3501 §6.4.5) and its CONDSTORE/QRESYNC modifiers (RFC 7162)."""

    _gate: _FlowGate | None = None  # a FETCH's flow control, while it runs

    def opt_fetch_modifiers(self, line: bytes) -> tuple[dict[bytes, Any], bytes]:
        """RFC 7162 §3.1.4.1 C{(CHANGEDSINCE n)}, §3.2.6 C{VANISHED}, after the items."""
        return self._modifiers(line, {b"CHANGEDSINCE": 1, b"VANISHED": 0})

    def arg_fetchatt(self, line: bytes) -> tuple[Any, bytes]:
        """FETCH items, with RFC 7162 §3.1.4.1 C{MODSEQ} among them, and what follows
        (the modifiers)."""
        line = line or b""
        if line[:1] == b"(":
            inner, rest = paren_group(line)
            items = _top_level(inner)
            wants = any(i.upper() == b"MODSEQ" for i in items)
            items = [i for i in items if i.upper() != b"MODSEQ"]
            atts = b"(" + b" ".join(items) + b")" if items else b""
        else:
            head = _top_level(line)
            atts, rest = (head[0] if head else b""), b" ".join(head[1:])
            wants = atts.upper() == b"MODSEQ"
            atts = b"" if wants else atts
        result: list[Any] = []
        if atts:
            try:
                result = list(super().arg_fetchatt(atts)[0])
            except Exception:
                raise imap4.IllegalClientResponse("Invalid FETCH attributes") from None
            if not all(map(_numbers_in_range, result)):
                raise imap4.IllegalClientResponse("Number out of range")
        elif not wants:
            raise imap4.IllegalClientResponse("Invalid FETCH attributes")
        if wants:
            result.append(_ModSeqItem())
        return result, rest

    async def _fetch_changedsince(
        self,
        targets: list[tuple[int, MaildirMessage]],
        messages: imap4.MessageSet,
        query: list[Any],
        modifiers: dict[bytes, Any],
        uid: bool,
    ) -> list[tuple[int, MaildirMessage]]:
        """RFC 7162 §3.1.4.1: keep only messages changed after CHANGEDSINCE (and report
        MODSEQ); §3.2.6: UID FETCH with VANISHED first sends C{VANISHED (EARLIER)}."""
        changedsince = modifiers.get(b"CHANGEDSINCE")
        if changedsince is None and b"VANISHED" in modifiers:
            raise bad(b"VANISHED needs CHANGEDSINCE")
        if b"VANISHED" in modifiers and (not uid or b"QRESYNC" not in self.enabled):
            raise bad(b"VANISHED needs UID FETCH and ENABLE QRESYNC")  # RFC 7162 §3.2.6
        wants = any(p.type == "modseq" for p in query)
        if wants or changedsince is not None:
            self._enable_condstore()  # RFC 7162 §3.1: a CONDSTORE enabling command
        if changedsince is None:
            return targets
        if not wants:
            query.append(_ModSeqItem())
        if b"VANISHED" in modifiers:
            vanished = await self.selected.vanished_since(changedsince, messages)
            if vanished:
                self.sendLine(b"* VANISHED (EARLIER) " + uid_set(vanished))
        return [(seq, msg) for seq, msg in targets if msg.entry.modseq > changedsince]

    async def do_FETCH(  # type: ignore[override]  # this server's parsed arguments
        self,
        tag: bytes,
        messages: imap4.MessageSet,
        query: list[Any],
        modifiers: dict[bytes, Any] | None = None,
        uid: bool = False,
    ) -> bytes:
        self._check_numbers(messages, uid)
        mbox = self.selected
        # RFC 2180 §4.1.2: a message expunged elsewhere and not yet reported is answered
        # with what can still be read (the rest NIL, EXPUNGEISSUED), as Dovecot does
        targets = mbox.fetch(messages, uid, gone_too=True)
        targets = await self._fetch_changedsince(targets, messages, query, modifiers or {}, uid)
        wants_size = any(p.type == "rfc822size" for p in query)
        if wants_size:
            await mbox.sized(targets)  # sizes not known yet (no ,W= in the name): measured
        wants_date = any(p.type == "internaldate" for p in query)
        if wants_date:
            await mbox.dated(targets)  # dates not read yet (a first sync's): stat'ed
        needs_content = any(
            p.type not in ("flags", "uid", "internaldate", "rfc822size", "modseq") for p in query
        )
        # RFC 3501 §6.4.5: BODY[...] without PEEK, RFC822 and RFC822.TEXT set \Seen
        sets_seen = mbox.isWriteable() and any(
            p.type in ("rfc822", "rfc822text")
            or (p.type == "body" and not p.peek and _has_section(p))
            for p in query
        )
        wants_flags = any(p.type == "flags" for p in query)
        # the content items this process rendered before (RenderedItems), by position
        item_keys = [None if p.type in _CHEAP else _item_key(p) for p in query]
        keys = [key for key in item_keys if key is not None]
        where = os.fspath(mbox.folder.path)
        known: dict[int, dict[bytes, bytes | None]] = {}
        if keys:
            for i, (_, msg) in enumerate(targets):
                kept = {key: RENDERED.get((where, msg.entry.base, key)) for key in keys}
                if _MISSING not in kept.values():
                    known[i] = kept  # type: ignore[assignment]  # (no _MISSING left)
        # ENVELOPE, BODYSTRUCTURE and BODY come from the folder index once rendered
        part_kinds = {p.type for p in query if _cacheable(p)}
        from_cache = needs_content and all(_cacheable(p) or p.type in _CHEAP for p in query)
        cache: dict[int, CachedParts] = {}
        unknown = [msg.getUID() for i, (_, msg) in enumerate(targets) if i not in known]
        if part_kinds and unknown:  # (also when other items need the file: not rendered again)
            cache = await mbox.cached_parts(unknown)
        # the positions of the messages whose file is read, in order, and those read so far
        wanted = [
            i
            for i, (_, msg) in enumerate(targets)
            if needs_content
            and i not in known
            and not (from_cache and _has_parts(cache.get(msg.getUID()), part_kinds))
        ]
        loaded: dict[int, bytes | None] = {}
        ahead = 0  # the next index into wanted to read
        rendered: dict[tuple[int, str], CachedParts] = {}
        gone = False  # a message whose file could not be read (RFC 2180 §4.1.2)
        gate: _FlowGate | None = _FlowGate()
        try:
            self.transport.registerProducer(gate, True)
        except RuntimeError:
            gate = None
        self._gate = gate
        held = self.hold_output()
        octets = 0  # of the responses held
        try:
            for count, (seq, msg) in enumerate(targets):
                if self._lost:
                    break  # nobody to send the rest to: read no more messages
                if (wants_size and msg.entry.size == UNKNOWN_SIZE) or (
                    wants_date and msg.entry.mtime == UNKNOWN_MTIME
                ):
                    gone = True  # its file is gone (expunged meanwhile): RFC 2180 §4.1.2
                    continue  # no date or size to send: left out, the OK says so
                flags_changed = False
                if sets_seen and "\\Seen" not in msg.getFlags() and not mbox.is_gone(msg.entry.uid):
                    result = await mbox.store_entries([(seq, msg.entry)], "S", 1)
                    if seq in result:
                        msg = mbox.message(seq)
                        flags_changed = True
                raw = None
                parts = cache.get(msg.getUID())
                if parts is not None and not _has_parts(parts, part_kinds):
                    parts = None
                values = known.get(count)
                if needs_content and values is None and (parts is None or not from_cache):
                    if count not in loaded:
                        while ahead < len(wanted) and wanted[ahead] < count:
                            ahead += 1
                        if ahead < len(wanted) and wanted[ahead] == count:
                            self.release_output(hold=True)  # (sent while the files are read)
                            octets = 0
                            await _read_ahead(mbox, targets, wanted, ahead, loaded)
                    if count in loaded:
                        raw = loaded.pop(count)
                    else:
                        try:
                            raw = await msg.load(mbox.run_in_thread)
                        except MaildirError:
                            raw = None
                    if raw is None:
                        # expunged by another session or program: RFC 2180 §4.1.2, what
                        # can still be read is sent, the rest as Dovecot does (_GONE)
                        gone = True
                    elif part_kinds and parts is None:
                        parts = render_parts(raw, part_kinds)
                        rendered[(msg.entry.uid, msg.entry.base)] = parts
                learned: dict[bytes, bytes | None] = {}
                items = self._fetch_items(
                    msg,
                    query,
                    raw,
                    uid,
                    flags_changed and not wants_flags,
                    parts,
                    values,
                    learned,
                    item_keys,
                )
                for key, value in learned.items():
                    RENDERED.put((where, msg.entry.base, key), value)
                line = b" ".join(items)
                held += (b"* %d FETCH (" % seq, line, b")\r\n")
                octets += len(line)
                if octets >= FETCH_WRITE or (gate is not None and gate.paused):
                    # (a client that stopped reading: what is held goes, then we wait)
                    self.release_output(hold=True)
                    octets = 0
                    if gate is not None:
                        await gate.wait()
                if count % FETCH_BATCH == FETCH_BATCH - 1:
                    self.release_output(hold=True)
                    octets = 0
                    await _next_turn(self.clock)
        finally:
            self.release_output()
            self._gate = None
            if gate is not None:
                self.transport.unregisterProducer()
            if rendered:
                try:
                    await mbox.cache_parts(rendered)
                except Exception:
                    log.failure("caching FETCH parts failed session={s}", s=self.session)
        if gone:
            return EXPUNGED_REPLY
        return b"FETCH completed"

    select_FETCH = command(do_FETCH, IMAPProtocol.arg_seqset, arg_fetchatt, opt_fetch_modifiers)

    def _fetch_items(
        self,
        msg: MaildirMessage,
        query: list[Any],
        raw: bytes | None,
        uid: bool,
        add_flags: bool,
        parts: CachedParts | None = None,
        known: dict[bytes, bytes | None] | None = None,
        learned: dict[bytes, bytes | None] | None = None,
        item_keys: list[bytes | None] | None = None,
    ) -> list[bytes]:
        """The items of one FETCH response.  A content item's value comes from C{known}
        (L{RenderedItems}), else C{parts} (the index), else is rendered from C{raw}; what
        was not in C{known} is put in C{learned}.  C{item_keys}: L{_item_key} of each item
        of C{query} (C{None} for those answered from the index alone)."""
        items: list[bytes] = []
        seen_uid = False
        if item_keys is None:
            item_keys = [None if p.type in _CHEAP else _item_key(p) for p in query]
        for part, key in zip(query, item_keys, strict=True):
            kind = part.type
            if kind == "flags":
                items.append(b"FLAGS (" + self._fetch_flags(msg.getFlags()) + b")")
                continue
            elif kind == "uid":
                seen_uid = True
                items.append(b"UID %d" % msg.getUID())
                continue
            elif kind == "internaldate":
                items.append(b"INTERNALDATE " + format_internaldate(msg.entry.mtime))
                continue
            elif kind == "rfc822size":
                items.append(b"RFC822.SIZE %d" % msg.getSize())
                continue
            elif kind == "modseq":
                items.append(b"MODSEQ (%d)" % msg.entry.modseq)
                continue
            assert key is not None
            if known is not None and key in known:
                value = known[key]
            else:
                value = _render(part, raw, parts)
                if value is _GONE:
                    if kind in _GONE_VALUES and (kind != "body" or not _has_section(part)):
                        value = _GONE_VALUES[kind]
                    else:
                        echoed = key if kind == "body" else _item_key_rfc822(kind)
                        items.append(echoed + _origin(part) + b" NIL")
                        continue
                elif learned is not None:
                    learned[key] = value
            if kind == "envelope":
                items.append(b"ENVELOPE (" + value + b")")  # type: ignore[operator]
            elif kind == "bodystructure":
                items.append(b"BODYSTRUCTURE (" + value + b")")  # type: ignore[operator]
            elif kind == "body" and not _has_section(part):
                items.append(b"BODY (" + value + b")")  # type: ignore[operator]
            elif kind == "rfc822":
                items.append(b"RFC822 " + _literal(value))  # type: ignore[arg-type]
            elif kind == "rfc822header":
                items.append(b"RFC822.HEADER " + _literal(value))  # type: ignore[arg-type]
            elif kind == "rfc822text":
                items.append(b"RFC822.TEXT " + _literal(value))  # type: ignore[arg-type]
            else:
                label = key  # (L{section_label})
                if value is None:
                    items.append(label + b" NIL")
                else:
                    # RFC 3501 §7.4.2: a partial answer echoes only the origin, BODY[...]<0>
                    data, origin = partial(value, part)
                    items.append(label + origin + b" " + _literal(data))
        if add_flags:
            items.append(b"FLAGS (" + self._fetch_flags(msg.getFlags()) + b")")
            if b"CONDSTORE" in self.enabled and not any(p.type == "modseq" for p in query):
                # RFC 7162 §3.1.4: the FETCH that set \Seen reports the new MODSEQ
                items.append(b"MODSEQ (%d)" % msg.entry.modseq)
        if uid and not seen_uid:
            items.append(b"UID %d" % msg.getUID())  # RFC 3501 §6.4.8: UID FETCH includes UID
        return items


def _item_key_rfc822(kind: str) -> bytes:
    """The label an RFC822 item is echoed with."""
    return {"rfc822": b"RFC822", "rfc822header": b"RFC822.HEADER", "rfc822text": b"RFC822.TEXT"}[
        kind
    ]


def _origin(part: Any) -> bytes:
    """C{<start>} of a partial fetch, as echoed (RFC 3501 §7.4.2), else nothing."""
    begin = getattr(part, "partialBegin", None)
    return b"" if begin is None else b"<%d>" % begin


def _render(part: Any, raw: bytes | None, parts: CachedParts | None) -> Any:
    """The value of one content item (see L{RenderedItems}): from the index's C{parts}
    when they hold it, else rendered from the message's bytes (L{_GONE} when there are
    none: the file is gone)."""
    kind = part.type
    if kind == "envelope":
        if parts is not None and parts.envelope is not None:
            return parts.envelope
        if raw is None:
            return _GONE
        return encode_sexp(envelope(split_message(raw)[0]))
    if kind == "bodystructure":
        if parts is not None and parts.bodystructure is not None:
            return parts.bodystructure
        if raw is None:
            return _GONE
        return encode_sexp(bodystructure(parse_entity(raw), True))
    if kind == "body" and not _has_section(part):
        if parts is not None and parts.body is not None:
            return parts.body
        if raw is None:
            return _GONE
        return encode_sexp(bodystructure(parse_entity(raw), False))
    if raw is None:
        return _GONE
    if kind == "rfc822":
        return raw
    if kind == "rfc822header":
        return split_message(raw)[0]
    if kind == "rfc822text":
        return split_message(raw)[1]
    return section_data(raw, part)
