#!/usr/bin/env python3
"""What imaptest's C{logout=0} workload costs in Python on Twisted alone: the floor under
twistedmail's "server CPU per IMAP command" (issue 10, run by hand, as root for Dovecot).

    .venv/bin/python bench/imap_floor.py [--rounds 3] [--secs 20] [--quick]
        [--no-twistedmail] [--no-dovecot] [--work DIR]

The workload (imaptest C{logout=0}, as bench/imaptest_bench.py runs it: 10 clients over
implicit TLS, users test1..test5, INBOX kept at 300 messages, pipelined commands), recorded
with imaptest's C{rawlog} against Dovecot: per 100 commands about 15 EXPUNGE, 15 APPEND
(5% of them MULTIAPPEND; 5.9 KB a message), 15 FETCH of ~67 messages with random items
(FLAGS, UID, INTERNALDATE, RFC822.SIZE, RFC822.HEADER, ENVELOPE, BODY, BODYSTRUCTURE,
BODY.PEEK[HEADER.FIELDS (...)]), 23 FETCH of one message's C{UID BODY.PEEK[]}, C{[TEXT]},
C{[HEADER]}, C{[1]} or C{RFC822.HEADER}, 9 STORE C{+FLAGS \\Deleted} (one message, half
C{.SILENT}; a few on a range), 7.5 STORE of flags on ~12 messages, 7.5 C{LIST "" *}, 7.3 STATUS.

The floor server (C{imap_floor.py serve}, its own process) answers that mix with the least
work: the epoll reactor, a C{Protocol} behind C{TLSMemoryBIOFactory} with twistedmail's own
server context (L{twistedmail.tls.server_context}), commands split at CRLF and literals with
C{bytes.find}, each user's INBOX in memory (UIDs, flags, sizes, internal dates, the header
block kept at APPEND as Dovecot keeps its cache, ENVELOPE and BODYSTRUCTURE built once per
message on first FETCH by a few splits: the workload's messages are all single-part
text/plain), and sessions of one user told of each other's EXPUNGE, new messages and flag
changes.  Bodies (C{BODY[]}, C{[TEXT]}, C{[1]}) are read from the message file at each
FETCH.  On disk, only the steps the durability we and Dovecot promise needs (a Maildir per
user, flags in the file name as Dovecot keeps them):

  - APPEND: write C{tmp/NAME} (C{O_CREAT|O_EXCL}), fsync it, rename it to C{cur/NAME:2,FL},
    fsync C{cur/} (twistedmail's C{write_durably}; Dovecot's C{mail_fsync = optimized}
    fsyncs the file, not the directory), and one unsynced line appended to a UID list
    (Dovecot's dovecot-uidlist is not fsynced under C{optimized} either);
  - STORE: rename each message whose flags change;
  - EXPUNGE: unlink each message marked \\Deleted.

Two variants: C{floor-thread} runs that disk work in Twisted's reactor thread pool
(C{deferToThreadPool}, as twistedmail runs its disk work), the session reading no further
command until it is done; C{floor-inline} runs it on the reactor thread.  Then this script
starts twistedmail (as bench/imaptest_bench.py does, C{[server] workers = --workers}) and
Dovecot (peers/dovecot.sh) unless told not to, prefills every server's five INBOXes with the
300 messages of imaptest's mbox, and runs imaptest C{logout=0} against each, alternating the
order, C{--rounds} rounds: the table gives per server the median commands/s, server CPU per
command (process tree, user+sys, from /proc) and imaptest's C{Error:} lines.  Then, per floor
server, where its CPU went (the server times itself with C{time.thread_time}, a few
microseconds per command, and writes the sums on SIGUSR1; each CPU second is in one bucket):
TLS decryption (C{TLSMemoryBIOProtocol.dataReceived} less the session's own work) and
encryption (the session's C{transport.write}), the command split, each imaptest state's
handlers (less TLS and disk work), the disk work (the fsyncs apart), and the rest of the
process's CPU: Twisted's loop (epoll, recv/send, Deferreds, the pool's thread hand-offs), GC.

Ports: the floors on C{--port-base} +100 and +101, twistedmail +200, Dovecot's
C{PEERS_PORT_BASE} = C{--port-base} (it listens on +1..+3, +24, +110, +143, +993, +995).
C{--quick}: one round of 5 s (a check that it runs, not a figure).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

# -- the floor server ------------------------------------------------------------------------

SYSTEM_FLAGS = {
    b"\\answered": b"R",
    b"\\flagged": b"F",
    b"\\deleted": b"T",
    b"\\seen": b"S",
    b"\\draft": b"D",
}
CAPS = b"IMAP4rev1 LITERAL+ UIDPLUS MULTIAPPEND"
_LITERAL = re.compile(rb"\{(\d+)(\+?)\}$")
_ITEMS = re.compile(rb"BODY(?:\.PEEK)?\[[^\]]*\](?:<[\d.]+>)?|[A-Z0-9.]+", re.I)
_TOKENS = re.compile(rb'\(|\)|"(?:[^"\\]|\\.)*"|\{\d+\+?\}|[^\s()]+')


def quote(value: bytes | None) -> bytes:
    if value is None:
        return b"NIL"
    if b"\r" in value or b"\n" in value or max(value, default=0) > 127:
        return b"{%d}\r\n%s" % (len(value), value)
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def unquote(token: bytes) -> bytes:
    if token.startswith(b'"'):
        return token[1:-1].replace(b'\\"', b'"').replace(b"\\\\", b"\\")
    return token


def header_fields(header: bytes) -> dict[bytes, bytes]:
    """The first value of each field of C{header}, unfolded, by lower-case name."""
    fields: dict[bytes, bytes] = {}
    for line in header.replace(b"\r\n ", b" ").replace(b"\r\n\t", b" ").split(b"\r\n"):
        name, sep, value = line.partition(b":")
        if sep:
            fields.setdefault(name.strip().lower(), value.strip())
    return fields


def addresses(value: bytes | None) -> bytes:
    """An ENVELOPE address list (RFC 3501 7.4.2) from C{Name <local@domain>, ...}."""
    if not value:
        return b"NIL"
    out = []
    for part in value.split(b","):
        name, lt, rest = part.partition(b"<")
        addr = rest.partition(b">")[0] if lt else name
        name = name.strip().strip(b'"') if lt else b""
        local, _, domain = addr.strip().partition(b"@")
        out.append(b"(%s NIL %s %s)" % (quote(name or None), quote(local), quote(domain or None)))
    return b"(" + b"".join(out) + b")"


class Message:
    __slots__ = ("uid", "base", "path", "flags", "size", "date", "header", "cache")

    def __init__(self, uid: int, base: str, path: str, flags: frozenset[bytes], size: int,
                 date: bytes, header: bytes) -> None:  # fmt: skip
        self.uid, self.base, self.path, self.flags = uid, base, path, flags
        self.size, self.date, self.header = size, date, header
        self.cache: dict[bytes, bytes] = {}

    def envelope(self) -> bytes:
        if b"ENVELOPE" not in self.cache:
            f = header_fields(self.header)
            sender = addresses(f.get(b"from"))
            self.cache[b"ENVELOPE"] = b"(%s %s %s %s %s %s %s %s %s %s)" % (
                quote(f.get(b"date")),
                quote(f.get(b"subject")),
                sender,
                addresses(f.get(b"sender")) if b"sender" in f else sender,
                addresses(f.get(b"reply-to")) if b"reply-to" in f else sender,
                addresses(f.get(b"to")),
                addresses(f.get(b"cc")),
                addresses(f.get(b"bcc")),
                quote(f.get(b"in-reply-to")),
                quote(f.get(b"message-id")),
            )
        return self.cache[b"ENVELOPE"]

    def body(self, extended: bool) -> bytes:
        """BODY / BODYSTRUCTURE of a single-part message (RFC 3501 7.4.2)."""
        key = b"BODYSTRUCTURE" if extended else b"BODY"
        if key not in self.cache:
            f = header_fields(self.header)
            ctype, _, params = f.get(b"content-type", b"text/plain").partition(b";")
            major, _, minor = ctype.strip().lower().partition(b"/")
            plist = []
            for p in params.split(b";"):
                k, eq, v = p.strip().partition(b"=")
                if eq:
                    plist += [quote(k.lower()), quote(v.strip(b'"'))]
            if not plist and major == b"text":
                plist = [b'"charset"', b'"us-ascii"']
            blen = self.size - len(self.header)
            # lines of the body: read once here (only its newline count is needed)
            lines = self.read()[len(self.header) :].count(b"\n")
            cte = f.get(b"content-transfer-encoding", b"7bit").lower()
            s = b"(%s %s (%s) NIL NIL %s %d %d" % (
                quote(major),
                quote(minor),
                b" ".join(plist),
                quote(cte),
                blen,
                lines,
            )
            self.cache[key] = s + (b" NIL NIL NIL NIL)" if extended else b")")
        return self.cache[key]

    def read(self) -> bytes:
        for _ in range(3):  # a STORE in the pool may rename it under us
            try:
                with open(self.path, "rb") as f:
                    return f.read()
            except FileNotFoundError:
                continue
        return b""


def header_lines(header: bytes, want: set[bytes]) -> bytes:
    """BODY[HEADER.FIELDS (...)] of C{header}: the wanted fields, folding kept, then CRLF."""
    return (
        b"".join(
            line + b"\r\n"
            for line in header.replace(b"\r\n ", b"\0 ").split(b"\r\n")
            if line.partition(b":")[0].lower() in want
        ).replace(b"\0 ", b"\r\n ")
        + b"\r\n"
    )


def literal(name: bytes, value: bytes) -> bytes:
    return b"%s {%d}\r\n%s" % (name, len(value), value)


_FLAGLISTS: dict[frozenset[bytes], bytes] = {}


def flaglist(flags: frozenset[bytes]) -> bytes:
    """C{(\\Seen $Label1)}, made once per set of flags."""
    text = _FLAGLISTS.get(flags)
    if text is None:
        text = _FLAGLISTS[flags] = b"(" + b" ".join(sorted(flags)) + b")"
    return text


def fetch_item(item: bytes) -> Any:
    """The function that renders one FETCH item of a L{Message} (RFC 3501 7.4.2)."""
    name = item.upper()
    simple = {
        b"UID": lambda m: b"UID %d" % m.uid,
        b"FLAGS": lambda m: b"FLAGS " + flaglist(m.flags),
        b"INTERNALDATE": lambda m: b'INTERNALDATE "%s"' % m.date,
        b"RFC822.SIZE": lambda m: b"RFC822.SIZE %d" % m.size,
        b"ENVELOPE": lambda m: b"ENVELOPE " + m.envelope(),
        b"BODYSTRUCTURE": lambda m: b"BODYSTRUCTURE " + m.body(True),
        b"BODY": lambda m: b"BODY " + m.body(False),
        b"RFC822.HEADER": lambda m: literal(b"RFC822.HEADER", m.header),
    }
    if name in simple:
        return simple[name]
    if not name.startswith(b"BODY"):
        raise ValueError(f"unknown FETCH item {item!r}")
    section = item[item.index(b"[") + 1 : item.index(b"]")]
    sec = section.upper()
    label = b"BODY[%s]" % section
    if sec == b"HEADER":
        return lambda m: literal(label, m.header)
    if sec.startswith(b"HEADER.FIELDS"):
        want = {w.lower() for w in section[section.index(b"(") + 1 : -1].split()}
        return lambda m: literal(label, header_lines(m.header, want))
    if not sec:
        return lambda m: literal(label, m.read())
    return lambda m: literal(label, m.read()[len(m.header) :])  # TEXT, 1 (single part)


def command_class(verb: bytes, args: bytes) -> str:
    """imaptest's state a command belongs to (its column in imaptest's table)."""
    if verb == b"FETCH":
        spec = args.split(b" ", 1)[0]
        return "FETCH set (Fetc)" if b"," in spec or b":" in spec else "FETCH 1 msg (Fet2)"
    if verb == b"STORE":
        flags = args.split(b" ", 2)[-1].strip(b"()")
        return "STORE \\Deleted (Dele)" if flags == b"\\Deleted" else "STORE flags (Stor)"
    return verb.decode(errors="replace")


def serve(argv: list[str]) -> None:
    """C{serve DATA PORT PIDFILE INLINE}: run the floor server until SIGTERM."""
    data, port, pidfile, inline = argv[0], int(argv[1]), argv[2], argv[3] == "1"
    from twisted.internet import epollreactor

    epollreactor.install()
    from twisted.internet import reactor, threads
    from twisted.internet.protocol import Factory, Protocol
    from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol

    from twistedmail.tls import create_self_signed, server_context

    cert, key = Path(data) / "cert.pem", Path(data) / "key.pem"
    if not cert.exists():
        create_self_signed(cert, key, "floor.example.test")
    tls = server_context(cert, key)
    pool = reactor.getThreadPool()  # type: ignore[attr-defined]
    clock = time.thread_time  # CPU of the calling thread
    cpu: dict[str, float] = {}  # seconds of thread CPU by what it was spent on
    count: dict[str, int] = {}

    sums = [0.0, 0.0, 0.0]  # running: handlers (gross), TLS encrypt, disk work

    def charge(key: str, t0: float) -> float:
        spent = clock() - t0
        cpu[key] = cpu.get(key, 0.0) + spent
        return spent

    def handler(kind: str, f: Any, *args: Any) -> None:
        """Run C{f}; charge its CPU less TLS encryption and inline disk work to C{kind}."""
        h0, e0, d0 = sums
        t0 = clock()
        f(*args)
        spent = clock() - t0
        net = spent - (sums[1] - e0) - ((sums[2] - d0) if inline else 0.0)
        sums[0] = h0 + spent
        cpu[kind] = cpu.get(kind, 0.0) + net

    def dump(*_: object) -> None:
        tmp = os.path.join(data, "stats.json.tmp")
        with open(tmp, "w") as f:
            json.dump({"cpu": cpu, "count": count}, f)
        os.rename(tmp, os.path.join(data, "stats.json"))

    signal.signal(signal.SIGUSR1, lambda *_: reactor.callFromThread(dump))  # type: ignore[attr-defined]
    pid, counter = os.getpid(), iter(range(1 << 62))

    class Box:
        """One user's INBOX: a Maildir on disk, its index in memory."""

        def __init__(self, user: str) -> None:
            self.dir = os.path.join(data, "mail", user)
            for sub in ("tmp", "new", "cur"):
                os.makedirs(os.path.join(self.dir, sub), exist_ok=True)
            self.cur = os.path.join(self.dir, "cur")
            self.validity, self.next_uid = int(time.time()), 1
            self.msgs: dict[int, Message] = {}
            self.keywords: set[bytes] = set()  # never shrinks, as Dovecot's list
            self.deleted: set[int] = set()  # UIDs flagged \Deleted, for EXPUNGE
            self.seen = 0  # messages flagged \Seen, for STATUS UNSEEN
            self.sessions: set[Session] = set()
            self.uidlist = os.open(
                os.path.join(self.dir, "uidlist"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
            )

        def save(self, items: list[tuple[frozenset[bytes], bytes, bytes]]) -> list[Message]:
            """The durable part of APPEND (in the pool or inline); UIDs are given after."""
            t0, fsyncs = clock(), 0.0
            done = []
            for flags, date, body in items:
                base = "%d.M%dP%dQ%d.floor,S=%d" % (
                    time.time(),
                    time.time_ns() % 10**6,
                    pid,
                    next(counter),
                    len(body),
                )
                tmp = os.path.join(self.dir, "tmp", base)
                path = os.path.join(self.cur, base + ":2," + letters(flags))
                fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    view = memoryview(body)
                    while view:
                        view = view[os.write(fd, view) :]
                    t1 = clock()
                    os.fsync(fd)
                    fsyncs += clock() - t1
                finally:
                    os.close(fd)
                os.rename(tmp, path)
                end = body.find(b"\r\n\r\n")
                header = body[: end + 4] if end >= 0 else body
                done.append(Message(0, base, path, flags, len(body), date, header))
            dfd = os.open(self.cur, os.O_RDONLY | os.O_DIRECTORY)
            try:
                t1 = clock()
                os.fsync(dfd)
                fsyncs += clock() - t1
            finally:
                os.close(dfd)
            cpu["disk: APPEND fsync (file, dir)"] = (
                cpu.get("disk: APPEND fsync (file, dir)", 0.0) + fsyncs
            )
            spent = clock() - t0
            cpu["disk: APPEND write, rename"] = (
                cpu.get("disk: APPEND write, rename", 0.0) + spent - fsyncs
            )
            if inline:
                sums[2] += spent
            return done

        def add(self, msgs: list[Message]) -> None:
            for m in msgs:
                self.keywords.update(f for f in m.flags if not f.startswith(b"\\"))
                m.uid, self.next_uid = self.next_uid, self.next_uid + 1
                self.msgs[m.uid] = m
                self.flagged(m, frozenset(), m.flags)
            os.write(self.uidlist, b"".join(b"%d %s\n" % (m.uid, m.base.encode()) for m in msgs))
            for s in self.sessions:
                s.new = True

        def flagged(self, m: Message, old: frozenset[bytes], new: frozenset[bytes]) -> None:
            """Keep the \\Deleted set and the \\Seen count as C{m}'s flags change."""
            if (b"\\Deleted" in new) != (b"\\Deleted" in old):
                if b"\\Deleted" in new:
                    self.deleted.add(m.uid)
                else:
                    self.deleted.discard(m.uid)
            if (b"\\Seen" in new) != (b"\\Seen" in old):
                self.seen += 1 if b"\\Seen" in new else -1

    def letters(flags: frozenset[bytes]) -> str:
        return "".join(sorted(SYSTEM_FLAGS.get(f.lower(), b"").decode() for f in flags))

    def rename_all(plan: list[tuple[Message, str]]) -> None:
        t0 = clock()
        for m, new in plan:
            try:
                os.rename(m.path, new)
            except FileNotFoundError:  # expunged meanwhile
                continue
            m.path = new
        spent = charge("disk: STORE rename", t0)
        if inline:
            sums[2] += spent

    def unlink_all(paths: list[str]) -> None:
        t0 = clock()
        for p in paths:
            try:
                os.unlink(p)
            except FileNotFoundError:
                pass
        spent = charge("disk: EXPUNGE unlink", t0)
        if inline:
            sums[2] += spent

    boxes: dict[bytes, Box] = {}

    class Session(Protocol):
        def connectionMade(self) -> None:
            self.buf = b""
            self.asked = -1  # where the literal we sent "+ OK" for ends
            self.queue: list[tuple[bytes, list[bytes]]] = []
            self.busy = False
            self.box: Box | None = None
            self.view: list[int] = []
            self.expunged: set[int] = set()
            self.changed: set[int] = set()
            self.new = False
            self.tls_write = self.transport.write
            self.transport.write(b"* OK [CAPABILITY " + CAPS + b"] floor ready\r\n")

        def connectionLost(self, reason: object = None) -> None:
            if self.box is not None:
                self.box.sessions.discard(self)

        def dataReceived(self, chunk: bytes) -> None:
            h0, t0 = sums[0], clock()
            self.received(chunk)
            cpu["command split"] = cpu.get("command split", 0.0) + clock() - t0 - (sums[0] - h0)

        def write(self, data: bytes) -> None:
            """C{transport.write}: the TLS encryption of a reply, timed."""
            t0 = clock()
            self.tls_write(data)
            sums[1] += charge("TLS: encrypt replies", t0)

        def received(self, chunk: bytes) -> None:
            self.buf += chunk
            buf, pos = self.buf, 0
            while True:  # one whole command (its literals included) at a time
                parts, lits, at = [], [], pos
                while True:
                    end = buf.find(b"\r\n", at)
                    if end < 0:
                        self.buf = buf[pos:]
                        self.pump()
                        return
                    line = buf[at:end]
                    m = _LITERAL.search(line)
                    if not m:
                        parts.append(line)
                        break
                    n = int(m.group(1))
                    if end + 2 + n > len(buf):
                        if not m.group(2) and self.asked != end:
                            self.asked = end
                            self.write(b"+ OK\r\n")
                        self.buf = buf[pos:]
                        self.pump()
                        return
                    parts.append(line[: m.start()] + b"\0")
                    lits.append(buf[end + 2 : end + 2 + n])
                    at = end + 2 + n
                pos = end + 2
                self.asked = -1
                self.queue.append((b"".join(parts), lits))

        def pump(self) -> None:
            while self.queue and not self.busy:
                line, lits = self.queue.pop(0)
                tag, _, rest = line.partition(b" ")
                verb, _, args = rest.partition(b" ")
                self.kind = kind = command_class(verb.upper(), args)
                count[kind] = count.get(kind, 0) + 1
                handler(kind, self.dispatch, tag, verb, args, lits)

        def dispatch(self, tag: bytes, verb: bytes, args: bytes, lits: list[bytes]) -> None:
            try:
                getattr(self, "do_" + verb.upper().decode(), self.bad)(tag, args, lits)
            except Exception as e:  # noqa: BLE001 -- a floor answers BAD, never dies
                self.write(tag + b" BAD %s\r\n" % repr(e).encode())

        def run(self, f: Any, args: tuple[Any, ...], k: Any) -> None:
            """Disk work C{f(*args)}, then C{k(result)}: inline, or in the pool (the session
            reads no further command meanwhile)."""
            if inline:
                k(f(*args))
                return
            self.busy = True
            d = threads.deferToThreadPool(reactor, pool, f, *args)

            def resume(r: Any) -> Any:
                self.busy = False
                reactor.callLater(0, self.pump)
                return r

            kind = self.kind

            def then(r: Any) -> None:
                handler(kind, k, r)

            d.addBoth(resume)
            d.addCallbacks(then, lambda e: self.write(b"* BAD %s\r\n" % str(e).encode()))

        def bad(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            self.write(tag + b" BAD Unknown command\r\n")

        def do_CAPABILITY(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            self.write(b"* CAPABILITY " + CAPS + b"\r\n" + tag + b" OK Capability completed\r\n")

        def do_LOGIN(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            user = unquote(args.split(b" ", 1)[0]).lower()
            self.user = user
            if user not in boxes:
                boxes[user] = Box(user.decode())
            self.write(tag + b" OK [CAPABILITY " + CAPS + b"] Logged in\r\n")

        def do_SELECT(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            box = boxes[self.user]
            if self.box is not None:
                self.box.sessions.discard(self)
            self.box, self.view = box, list(box.msgs)
            self.told = len(box.keywords)
            kw = b"".join(b" " + k for k in sorted(box.keywords))
            self.expunged, self.changed, self.new = set(), set(), False
            box.sessions.add(self)
            self.write(
                b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft%s)\r\n"
                b"* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] "
                b"Flags permitted.\r\n* %d EXISTS\r\n* 0 RECENT\r\n"
                b"* OK [UIDVALIDITY %d] UIDs valid\r\n* OK [UIDNEXT %d] Predicted next UID\r\n"
                b"%s OK [READ-WRITE] Select completed\r\n"
                % (kw, len(self.view), box.validity, box.next_uid, tag)
            )

        def keywords(self) -> bytes:
            """C{* FLAGS} when keywords were created since this session was last told
            (RFC 3501 7.2.6: before any FETCH shows them)."""
            box = self.box
            if box is None or len(box.keywords) == self.told:
                return b""
            self.told = len(box.keywords)
            kw = b"".join(b" " + k for k in sorted(box.keywords))
            return b"* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft%s)\r\n" % kw

        def updates(self) -> bytes:
            """Pending EXPUNGE / EXISTS / FETCH FLAGS of other sessions (RFC 3501 7.4.1)."""
            box = self.box
            if box is None:
                return b""
            out = [self.keywords()]
            if self.expunged:
                view = self.view
                for i in range(len(view) - 1, -1, -1):
                    if view[i] in self.expunged:
                        out.append(b"* %d EXPUNGE\r\n" % (i + 1))
                        del view[i]
                self.expunged = set()
            if self.new:
                last = self.view[-1] if self.view else 0
                self.view += [u for u in box.msgs if u > last]
                out.append(b"* %d EXISTS\r\n" % len(self.view))
                self.new = False
            if self.changed:
                for i, u in enumerate(self.view):
                    if u in self.changed and u in box.msgs:
                        out.append(
                            b"* %d FETCH (FLAGS %s)\r\n" % (i + 1, flaglist(box.msgs[u].flags))
                        )
                self.changed = set()
            return b"".join(out)

        def do_NOOP(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            self.write(self.updates() + tag + b" OK NOOP completed\r\n")

        do_CHECK = do_NOOP

        def do_LOGOUT(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            self.write(b"* BYE Logging out\r\n" + tag + b" OK Logout completed\r\n")
            self.transport.loseConnection()

        def do_LIST(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            self.write(
                b'* LIST (\\HasNoChildren) "." INBOX\r\n'
                + self.updates()
                + tag
                + b" OK List completed\r\n"
            )

        def do_STATUS(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            msgs = boxes[self.user].msgs
            unseen = len(msgs) - boxes[self.user].seen
            self.write(
                b'* STATUS "INBOX" (MESSAGES %d UNSEEN %d RECENT 0)\r\n' % (len(msgs), unseen)
                + self.updates()
                + tag
                + b" OK Status completed\r\n"
            )

        def seqs(self, spec: bytes, uid: bool) -> list[int]:
            """Positions in the view (0-based) of a sequence set (RFC 3501 9)."""
            n = len(self.view)
            out: list[int] = []
            for part in spec.split(b","):
                a, colon, b = part.partition(b":")
                lo = n if a == b"*" else int(a)
                hi = (n if b == b"*" else int(b)) if colon else lo
                if uid:
                    lo, hi = min(lo, hi), max(lo, hi)
                    out += [i for i, u in enumerate(self.view) if lo <= u <= hi]
                else:
                    out += range(min(lo, hi) - 1, min(max(lo, hi), n))
            return out

        def do_UID(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            verb, _, rest = args.partition(b" ")
            getattr(self, "do_" + verb.upper().decode(), self.bad)(tag, rest, lits, True)

        def do_FETCH(self, tag: bytes, args: bytes, lits: list[bytes], uid: bool = False) -> None:
            box = self.box
            assert box is not None
            spec, _, items_text = args.partition(b" ")
            items = [i for i in _ITEMS.findall(items_text.strip(b"()")) if i]
            if uid and not any(i.upper() == b"UID" for i in items):
                items.insert(0, b"UID")
            getters = [fetch_item(item) for item in items]  # resolved once per command
            out, gone = [self.keywords()], False
            msgs, view = box.msgs, self.view
            for i in self.seqs(spec, uid):
                m = msgs.get(view[i])
                if m is None:
                    gone = True
                    continue
                vals = b" ".join([get(m) for get in getters])
                out.append(b"* %d FETCH (%s)\r\n" % (i + 1, vals))
            out.append(
                tag + b" OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
                if gone
                else tag + b" OK Fetch completed\r\n"
            )
            self.write(b"".join(out))

        def do_STORE(self, tag: bytes, args: bytes, lits: list[bytes], uid: bool = False) -> None:
            box = self.box
            assert box is not None
            spec, _, rest = args.partition(b" ")
            op, _, flags_text = rest.partition(b" ")
            op = op.upper()
            silent = op.endswith(b".SILENT")
            given = frozenset(
                SYSTEM_FLAGS_CASE.get(f.lower(), f) for f in flags_text.strip(b"()").split()
            )
            box.keywords.update(f for f in given if not f.startswith(b"\\"))
            out, plan, changed = [self.keywords()], [], []
            gone = False
            for i in self.seqs(spec, uid):
                m = box.msgs.get(self.view[i])
                if m is None:
                    gone = True
                    continue
                if op.startswith(b"+"):
                    new = m.flags | given
                elif op.startswith(b"-"):
                    new = m.flags - given
                else:
                    new = given
                if new != m.flags:
                    if letters(new) != letters(m.flags):
                        plan.append((m, os.path.join(box.cur, m.base + ":2," + letters(new))))
                    box.flagged(m, m.flags, new)
                    m.flags = new
                    changed.append(m.uid)
                if not silent or uid:
                    uidpart = b"UID %d " % m.uid if uid else b""
                    out.append(b"* %d FETCH (%sFLAGS %s)\r\n" % (i + 1, uidpart, flaglist(new)))
            for s in box.sessions:
                if s is not self:
                    s.changed.update(changed)
            done = (
                tag + b" OK [EXPUNGEISSUED] Some messages were already expunged\r\n"
                if gone
                else tag + b" OK Store completed\r\n"
            )
            reply = b"".join(out) + done
            if not plan:
                self.write(reply)
                return
            self.run(rename_all, (plan,), lambda _: self.write(reply))

        def do_EXPUNGE(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            box = self.box
            assert box is not None
            doomed = [box.msgs.pop(u) for u in box.deleted]
            box.deleted = set()
            box.seen -= sum(1 for m in doomed if b"\\Seen" in m.flags)
            uids = {m.uid for m in doomed}
            for s in box.sessions:
                if s is not self:
                    s.expunged |= uids
            self.expunged |= uids

            def reply(_: object) -> None:
                self.write(self.updates() + tag + b" OK Expunge completed\r\n")

            if not doomed:
                reply(None)
                return
            self.run(unlink_all, ([m.path for m in doomed],), reply)

        def do_APPEND(self, tag: bytes, args: bytes, lits: list[bytes]) -> None:
            box = boxes[self.user]
            toks = _TOKENS.findall(args)[1:]  # after the mailbox name
            items: list[tuple[frozenset[bytes], bytes, bytes]] = []
            flags: frozenset[bytes] = frozenset()
            date = time.strftime("%d-%b-%Y %H:%M:%S +0000", time.gmtime()).encode()
            k, n = 0, 0
            while k < len(toks):
                t = toks[k]
                if t == b"(":
                    end = toks.index(b")", k)
                    flags = frozenset(
                        SYSTEM_FLAGS_CASE.get(f.lower(), f) for f in toks[k + 1 : end]
                    )
                    k = end
                elif t.startswith(b'"'):
                    date = unquote(t)
                elif t == b"\0":
                    items.append((flags, date, lits[n]))
                    n, flags = n + 1, frozenset()
                k += 1

            def done(msgs: list[Message]) -> None:
                box.add(msgs)
                uids = b"%d" % msgs[0].uid
                if len(msgs) > 1:
                    uids += b":%d" % msgs[-1].uid
                self.write(
                    self.updates()
                    + tag
                    + b" OK [APPENDUID %d %s] Append completed\r\n" % (box.validity, uids)
                )

            self.run(box.save, (items,), done)

    SYSTEM_FLAGS_CASE = {f: b"\\" + f[1:2].upper() + f[2:] for f in SYSTEM_FLAGS}

    class TimedTLS(TLSMemoryBIOProtocol):
        def dataReceived(self, data: bytes) -> None:
            h0, split0, t0 = sums[0], cpu.get("command split", 0.0), clock()
            super().dataReceived(data)
            spent = clock() - t0
            cpu["TLS: decrypt requests"] = (
                cpu.get("TLS: decrypt requests", 0.0)
                + spent
                - (sums[0] - h0)
                - (cpu.get("command split", 0.0) - split0)
            )

    factory = TLSMemoryBIOFactory(tls, False, Factory.forProtocol(Session))
    factory.protocol = TimedTLS
    reactor.listenTCP(port, factory, interface="127.0.0.1", backlog=128)  # type: ignore[attr-defined]
    with open(pidfile, "w") as f:
        f.write("%d\n" % pid)
    reactor.run()  # type: ignore[attr-defined]


# -- the bench -------------------------------------------------------------------------------


class Floor:
    """A floor server in its own process (C{imap_floor.py serve}), shaped for run_imaptest."""

    def __init__(self, work: Path, label: str, port: int, inline: bool) -> None:
        self.work, self.label, self.port, self.inline = work, label, port, inline
        self.proc: subprocess.Popen[bytes] | None = None

    def users(self) -> list[str]:
        from peerlib import DOMAIN

        return [f"test{i}@{DOMAIN}" for i in range(1, 7)]

    def start(self) -> int:
        from peerlib import pick_port_base, port_free, wait_port

        if not port_free(self.port):
            self.port = pick_port_base() + 7
        self.work.mkdir(parents=True, exist_ok=True)
        pidfile = self.work / "floor.pid"
        args = [str(self.work), str(self.port), str(pidfile), "1" if self.inline else "0"]
        self.proc = subprocess.Popen([sys.executable, __file__, "serve", *args])
        wait_port(self.port)
        return self.proc.pid

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def stats(self) -> dict[str, dict[str, float]]:
        """The server's cumulative per-class CPU and counts (it writes them on SIGUSR1)."""
        path = self.work / "stats.json"
        path.unlink(missing_ok=True)
        os.kill(self.pid, signal.SIGUSR1)
        for _ in range(100):
            if path.exists():
                result: dict[str, dict[str, float]] = json.loads(path.read_text())
                return result
            time.sleep(0.05)
        raise SystemExit(f"{self.label} wrote no stats")

    def stop(self) -> None:
        from peerlib import stop_process

        stop_process(self.proc)
        self.proc = None


def diff(after: dict[str, dict[str, float]], before: dict[str, dict[str, float]]) -> dict[str, Any]:
    return {
        part: {k: v - before[part].get(k, 0) for k, v in after[part].items()}
        for part in ("cpu", "count")
    }


def breakdown(d: dict[str, Any], total_cpu_s: float, commands: int) -> dict[str, list[float]]:
    """{what: [ms per command of the whole mix, commands of that class, ms per command of
    that class]} of one floor run: the server's own buckets (each CPU second in one only),
    then the rest of the process's CPU."""
    cpu, count, per = d["cpu"], d["count"], 1000 / commands
    rows = {}
    for k in sorted(cpu, key=lambda k: (not k.startswith("TLS"), k.startswith("disk"), k)):
        n = count.get(k, 0)
        if cpu[k] or n:
            rows[k] = [cpu[k] * per, n, cpu[k] * 1000 / n if n else 0.0]
    rest = total_cpu_s - sum(cpu.values())
    rows["the rest: Twisted's loop (epoll, recv/send, Deferreds, thread hops), GC"] = [
        rest * per,
        0,
        0.0,
    ]
    rows["total"] = [total_cpu_s * per, commands, 0.0]
    return rows


def main() -> int:
    from imaptest_bench import MIX_USERS, prefill, read_mbox, run_imaptest
    from peerlib import (
        DEFAULT_PEERS,
        Dovecot,
        Twistedmail,
        imaptest_work,
        load_average,
        raise_nofile,
        tree_cpu_s,
    )

    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--secs", type=int, default=20, help="seconds per imaptest run")
    ap.add_argument("--quick", action="store_true", help="one round of 5 s")
    ap.add_argument("--workers", type=int, default=1, help="twistedmail's [server] workers")
    ap.add_argument("--no-twistedmail", action="store_true")
    ap.add_argument("--no-dovecot", action="store_true")
    ap.add_argument("--port-base", type=int, default=41500, help="this bench's ports: +0..+999")
    ap.add_argument("--peers", type=Path, default=DEFAULT_PEERS)
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    if a.quick:
        a.rounds, a.secs = 1, 5
    raise_nofile()
    work, mbox = imaptest_work(a.work, "imap-floor-", a.peers)
    messages = read_mbox(mbox)
    base = a.port_base
    servers: list[Any] = [
        Floor(work / "floor-thread", "floor-thread", base + 100, inline=False),
        Floor(work / "floor-inline", "floor-inline", base + 101, inline=True),
    ]
    if not a.no_twistedmail:
        servers.append(Twistedmail(work / "tm", base + 200, MIX_USERS + 1, workers=a.workers))
    if not a.no_dovecot:  # peers/dovecot.sh: base+143, +993, +110, +995, +24, +1..+3
        servers.append(Dovecot(work / "dovecot", base, MIX_USERS + 1, "ARGON2ID", peers=a.peers))
    results: dict[str, dict[str, list[float]]] = {s.label: {} for s in servers}
    parts: dict[str, list[dict[str, list[float]]]] = {}
    loads = []
    try:
        for s in servers:
            if hasattr(s, "prepare"):
                s.prepare()
            try:
                s.start()
            except FileNotFoundError:  # Dovecot answered before it wrote master.pid
                pidfile = s.work / "dovecot" / "run" / "master.pid"
                for _ in range(100):
                    time.sleep(0.1)
                    if pidfile.exists() and pidfile.read_text().strip():
                        break
                s.pid = int(pidfile.read_text().split()[0])
        print(f"work dir {work}; prefill: {len(messages)} messages x {MIX_USERS} users", flush=True)
        for s in servers:
            t = time.monotonic()
            prefill(s.port, s.users()[:MIX_USERS], messages)
            print(f"  {s.label}: {time.monotonic() - t:.1f} s", flush=True)
        for r in range(a.rounds):
            loads.append(load_average())
            print(f"round {r + 1}/{a.rounds} (load {loads[-1]})", flush=True)
            order = servers if r % 2 == 0 else list(reversed(servers))
            for s in order:
                log = work / f"imaptest-{s.label.split()[0]}-{r + 1}.log"
                before = s.stats() if isinstance(s, Floor) else None
                cpu0 = tree_cpu_s(s.pid)
                rate, cpu_ms, errors = run_imaptest(s, s.pid, mbox, a.secs, ["logout=0"], log)
                got = results[s.label]
                got.setdefault("rate", []).append(rate)
                got.setdefault("cpu", []).append(cpu_ms)
                got.setdefault("errors", []).append(errors)
                print(
                    f"  {s.label}: {rate:.1f} cmds/s, {cpu_ms:.3f} ms CPU/cmd,"
                    f" {errors} Error: lines",
                    flush=True,
                )
                if isinstance(s, Floor) and before is not None:
                    d = diff(s.stats(), before)
                    total = tree_cpu_s(s.pid) - cpu0
                    commands = round(total * 1000 / cpu_ms) if cpu_ms else 1
                    parts.setdefault(s.label, []).append(breakdown(d, total, commands))
    finally:
        for s in servers:
            s.stop()
    print(
        "\n| server (imaptest logout=0, 10 clients, TLS, 5 users x 300 msgs) "
        "| commands/s (min-max) | server CPU ms/command (min-max) | Error: lines |"
    )
    print("| --- | --: | --: | --: |")
    for s in servers:
        got = results[s.label]
        rate, cpu = got["rate"], got["cpu"]
        print(
            f"| {s.label} | {statistics.median(rate):.0f} ({min(rate):.0f}-{max(rate):.0f}) "
            f"| {statistics.median(cpu):.3f} ({min(cpu):.3f}-{max(cpu):.3f}) "
            f"| {sum(got['errors']):.0f} |"
        )
    for label, runs in parts.items():
        print(
            f"\n| {label}: where the CPU goes (median over rounds) | ms per command of the mix "
            "| commands | ms per command of the class |"
        )
        print("| --- | --: | --: | --: |")
        for k in dict.fromkeys(k for run in runs for k in run):
            vals = [run.get(k, [0.0, 0, 0.0]) for run in runs]
            mix = statistics.median(v[0] for v in vals)
            n = statistics.median(v[1] for v in vals)
            each = statistics.median(v[2] for v in vals)
            print(
                f"| {k} | {mix:.3f} | {n:.0f} | {each:.3f} |"
                if each
                else f"| {k} | {mix:.3f} | | |"
            )
    print(f"\n(load averages per round: {'; '.join(loads)}; work dir {work})")
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve(sys.argv[2:])
    else:
        sys.exit(main())
