"""Sieve interpreter: run a compiled script on one message (RFC 5228 and its extensions).

L{evaluate} returns a L{Result}: the explicit actions as frozen records and the implicit keep
if no action cancelled it (RFC 5228 §2.10.2).  Nothing is stored or sent here; delivery does
that.  A runtime error (too many actions or redirects, an invalid folder name or redirect
address, a missing include, conflicting reject) discards the actions and keeps the message in
INBOX, as Pigeonhole does, with the error in L{Result.error}.

The run loop (RFC 5228 §3 control commands, §4 actions, §5 tests) lives here with the
variables (RFC 5229), the duplicate-action and conflict rules (RFC 5228 §2.10.3, RFC 5429
§2.1), imap4flags (RFC 5232), vacation parameters (RFC 5230 §4), date tests (RFC 5260) and
include (RFC 6609).  Comparators and match types are in L{twistedmail.sieve.match}, the parsed
message and envelope in L{twistedmail.sieve.message}, the action records and the vacation
reply rules in L{twistedmail.sieve.actions}; their public names are re-exported here.
"""

from __future__ import annotations

import datetime
import email.utils
import re
from collections.abc import Callable
from typing import TypeVar, Union

import attr

from twistedmail.maildir import FolderNameError, encode_folder_name
from twistedmail.sieve.actions import (
    VACATION_DEFAULT_SECONDS,
    VACATION_MAX_SECONDS,
    VACATION_MIN_SECONDS,
    Action,
    Discard,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Vacation,
    flag_list,
    store_target,
    vacation_reply_allowed,
)
from twistedmail.sieve.grammar import MAX_SCRIPT_SIZE
from twistedmail.sieve.match import (
    ASCII_UPPER,
    ascii_casemap,
    glob_pattern,
    order_key,
    regex_pattern,
    relational,
)
from twistedmail.sieve.message import Envelope, SieveMessage
from twistedmail.sieve.validate import REDIRECT_ADDRESS, Node, Script

__all__ = [
    "MAX_ACTIONS",
    "MAX_REDIRECTS",
    "VACATION_DEFAULT_SECONDS",
    "VACATION_MAX_SECONDS",
    "VACATION_MIN_SECONDS",
    "Action",
    "Discard",
    "Envelope",
    "FileInto",
    "Keep",
    "Redirect",
    "Reject",
    "Result",
    "ScriptLoader",
    "SieveLimits",
    "SieveRuntimeError",
    "Vacation",
    "evaluate",
    "vacation_reply_allowed",
]

MAX_ACTIONS = 32
"""Pigeonhole's C{sieve_max_actions} default."""
MAX_REDIRECTS = 4
"""Pigeonhole's C{sieve_max_redirects} default."""
MAX_INCLUDE_DEPTH = 10
"""Pigeonhole's C{sieve_include_max_nesting_depth} default."""
MAX_STEPS = 1_000_000
"""Work units one run may take (C{[delivery] sieve_max_steps}): one per command and test run,
and per value compared with one key, one more per KiB of that value.  Sieve has no loops, but
C{include} repeats scripts and a body test reads the whole message, so this bounds a run's CPU
whatever the script and the message (a run past it fails and keeps the message)."""
MAX_VARIABLE_SIZE = 4096
"""Characters; Pigeonhole's C{sieve_variables_max_variable_size} default."""
MAX_EXPANDED_SIZE = 64 * 1024
"""Characters of one string after variable expansion; beyond it the script fails (kept)."""


@attr.frozen
class SieveLimits:
    """What one user's script may cost at delivery (C{[delivery] sieve_max_*}): its size in
    bytes, its actions, its redirects, and the work of one run (L{MAX_STEPS})."""

    max_script_size: int = MAX_SCRIPT_SIZE
    max_actions: int = MAX_ACTIONS
    max_redirects: int = MAX_REDIRECTS
    max_steps: int = MAX_STEPS


class SieveRuntimeError(Exception):
    pass


class _Stop(Exception):
    pass


class _Return(Exception):
    pass


ScriptLoader = Callable[[str, str], Union[Script, None]]
"""C{(name, "personal" | "global") -> Script or None}: compiled include targets (RFC 6609)."""


def _split_address(address: str) -> tuple[str, str | None]:
    if "@" not in address:
        return address, None
    local, _, domain = address.rpartition("@")
    return local, domain


_VARIABLE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_.]*|[0-9]+)\}")


_V = TypeVar("_V")


class _Run:
    def __init__(
        self,
        message: SieveMessage,
        envelope: Envelope,
        *,
        now: datetime.datetime,
        local_zone: datetime.tzinfo,
        mailbox_exists: Callable[[str], bool],
        load_script: ScriptLoader | None,
        max_actions: int,
        max_redirects: int,
        recipient_delimiter: str,
        max_steps: int = MAX_STEPS,
    ) -> None:
        self.message = message
        self.envelope = envelope
        self.now = now
        self.local_zone = local_zone
        self.mailbox_exists = mailbox_exists
        self.load_script = load_script
        self.max_actions = max_actions
        self.max_redirects = max_redirects
        self.delimiter = recipient_delimiter
        self.max_steps = max_steps
        self.steps = 0
        self.actions: list[Action] = []
        self.implicit_keep = True
        self.match_values: list[str] = []
        self.flags: list[str] = []
        self.globals: dict[str, str] = {}
        self.included: set[tuple[str, str]] = set()
        self.stack: list[tuple[str, str]] = []
        # Per-script state, swapped on include.
        self.requires: frozenset[str] = frozenset()
        self.variables: dict[str, str] = {}
        self.global_names: set[str] = set()

    # -- strings and variables (RFC 5229 §3) ---------------------------------------------

    def expand(self, s: str) -> str:
        if "variables" not in self.requires or "${" not in s:
            return s

        out: list[str] = []
        size = 0
        pos = 0
        for m in _VARIABLE.finditer(s):
            name = m.group(1)
            if name.isdigit():
                n = int(name)
                value = self.match_values[n] if n < len(self.match_values) else ""
            elif "." in name:
                value = m.group()
            else:
                value = self.get_variable(name)
            out.append(s[pos : m.start()])
            out.append(value)
            size += m.start() - pos + len(value)
            pos = m.end()
            if size > MAX_EXPANDED_SIZE:
                # "${a}${a}..." with a 4 KiB variable must not build megabytes.
                raise SieveRuntimeError(f"string longer than {MAX_EXPANDED_SIZE} after expansion")
        out.append(s[pos:])
        return "".join(out)

    def expand_all(self, values: object) -> list[str]:
        assert isinstance(values, tuple)
        return [self.expand(v) for v in values]

    def get_variable(self, name: str) -> str:
        name = name.lower()
        if name in self.global_names:
            return self.globals.get(name, "")
        return self.variables.get(name, "")

    def set_variable(self, name: str, value: str) -> None:
        name = name.lower()
        value = value[:MAX_VARIABLE_SIZE]
        if name in self.global_names:
            self.globals[name] = value
        else:
            self.variables[name] = value

    def charge(self, units: int) -> None:
        """Count work (L{MAX_STEPS}); past the limit the run fails."""
        self.steps += units
        if self.steps > self.max_steps:
            raise SieveRuntimeError(f"script run exceeded {self.max_steps} steps")

    # -- matching ------------------------------------------------------------------------

    def match(
        self,
        node: Node,
        values: list[str],
        keys: list[str],
        count_filter: bool = False,
        capture: bool = True,
    ) -> bool:
        # Every value against every key, plus its length: an upper bound of the work below.
        self.charge(len(keys) * sum(1 + (len(v) >> 10) for v in values))
        comparator = str(node.tag("comparator", "i;ascii-casemap"))
        capture = capture and "variables" in self.requires
        count = node.tag("count")
        if isinstance(count, str):
            n = str(len([v for v in values if v != ""] if count_filter else values))
            return any(
                relational(count, order_key(comparator, n), order_key(comparator, k)) for k in keys
            )
        value_op = node.tag("value")
        if isinstance(value_op, str):
            return any(
                relational(value_op, order_key(comparator, v), order_key(comparator, k))
                for v in values
                for k in keys
            )
        casemap = comparator == "i;ascii-casemap"
        if node.tag("matches"):
            for v in values:
                # ascii_casemap changes ASCII letters only: the octet offsets stay those of v.
                octets = v.encode("utf-8", "surrogateescape")
                subject = ascii_casemap(v).encode("utf-8", "surrogateescape") if casemap else octets
                for k in keys:
                    m = glob_pattern(ascii_casemap(k) if casemap else k).fullmatch(subject)
                    if m is not None:
                        if capture:
                            spans = [m.span(i) for i in range(m.re.groups + 1)]
                            self.match_values = [
                                octets[a:b].decode("utf-8", "replace") for a, b in spans
                            ]
                        return True
            return False
        if node.tag("regex"):
            for k in keys:
                try:
                    pattern = regex_pattern(k, casemap)
                except Exception:
                    raise SieveRuntimeError(f"invalid regular expression '{k}'") from None
                for v in values:
                    m = pattern.search(v.encode("utf-8", "surrogateescape"))
                    if m is not None:
                        if capture:
                            self.match_values = [
                                (m.group(i) or b"").decode("utf-8", "replace")
                                for i in range(min(m.re.groups, 9) + 1)
                            ]
                        return True
            return False
        if node.tag("contains"):
            if casemap:
                return any(ascii_casemap(k) in ascii_casemap(v) for v in values for k in keys)
            return any(k in v for v in values for k in keys)
        # :is (the default match type, RFC 5228 §2.7.1)
        return any(
            order_key(comparator, v) == order_key(comparator, k) for v in values for k in keys
        )

    # -- tests ---------------------------------------------------------------------------

    def test(self, node: Node) -> bool:
        self.charge(1)
        name = node.name
        if name == "true":
            return True
        if name == "false":
            return False
        if name == "not":
            return not self.test(node.tests[0])
        if name == "allof":
            return all(self.test(t) for t in node.tests)
        if name == "anyof":
            return any(self.test(t) for t in node.tests)
        if name == "exists":
            return all(self.message.raw_headers(h) for h in self.expand_all(node.positional[0]))
        if name == "size":
            size = len(self.message.data)
            over = node.tag("over")
            if isinstance(over, int) and not isinstance(over, bool):
                return size > over
            under = node.tag("under")
            assert isinstance(under, int)
            return size < under
        if name == "header":
            values: list[str] = []
            for h in self.expand_all(node.positional[0]):
                values.extend(self.indexed(node, self.message.headers(h)))
            return self.match(node, values, self.expand_all(node.positional[1]))
        if name == "address":
            values = []
            for h in self.expand_all(node.positional[0]):
                all_part = not any(node.tag(t) for t in ("localpart", "domain", "user", "detail"))
                for occurrence in self.indexed(node, self.message.addresses(h)):
                    for address, valid in occurrence:
                        if not valid:
                            # RFC 5228 §5.1 leaves it open; Pigeonhole matches the text
                            # with :all and nothing for the other parts.
                            values.extend([address] if all_part else [])
                            continue
                        p = self.address_part(node, address)
                        values.extend([p] if p is not None else [])
            return self.match(node, values, self.expand_all(node.positional[1]))
        if name == "envelope":
            values = []
            for part in self.expand_all(node.positional[0]):
                part = part.lower()
                if part == "auth":
                    if self.envelope.auth:
                        values.append(self.envelope.auth)
                    continue
                if part not in ("from", "to"):
                    continue
                address = self.envelope.sender if part == "from" else self.envelope.recipient
                if address == "":
                    # RFC 5228 §5.4: the null reverse path is "" for :all, nothing else.
                    if (
                        node.tag("localpart")
                        or node.tag("domain")
                        or node.tag("user")
                        or node.tag("detail")
                    ):
                        continue
                    values.append("")
                    continue
                p = self.address_part(node, address)
                if p is not None:
                    values.append(p)
            return self.match(node, values, self.expand_all(node.positional[1]))
        if name == "string":
            return self.match(
                node,
                self.expand_all(node.positional[0]),
                self.expand_all(node.positional[1]),
                count_filter=True,
            )
        if name == "hasflag":
            if len(node.positional) == 2:
                flags: list[str] = []
                for var in self.expand_all(node.positional[0]):
                    flags.extend(flag_list([self.get_variable(var)]))
            else:
                flags = list(self.flags)
            return self.match(node, flags, self.expand_all(node.positional[-1]))
        if name == "body":
            if node.tag("raw"):
                values = [self.message.raw_body()]
            elif isinstance(node.tag("content"), tuple):
                content = node.tag("content")
                values = self.message.parts(self.expand_all(content))
            else:
                values = self.message.text_parts()
            # Pigeonhole's body test leaves the match variables alone.
            return self.match(node, values, self.expand_all(node.positional[0]), capture=False)
        if name == "date":
            header = self.expand(str(node.positional[0]))
            part = self.expand(str(node.positional[1])).lower()
            values = []
            for raw in self.indexed(node, self.message.headers(header)):
                when = _parse_date(raw, header)
                if when is None:
                    continue
                if not node.tag("originalzone"):
                    when = when.astimezone(self.zone(node))
                values.append(_date_part(when, part))
            return self.match(node, values, self.expand_all(node.positional[2]))
        if name == "currentdate":
            part = self.expand(str(node.positional[0])).lower()
            when = self.now.astimezone(self.zone(node))
            return self.match(node, [_date_part(when, part)], self.expand_all(node.positional[1]))
        if name == "mailboxexists":
            return all(self.mailbox_exists(m) for m in self.expand_all(node.positional[0]))
        raise SieveRuntimeError(f"unknown test {name}")

    def zone(self, node: Node) -> datetime.tzinfo:
        zone = node.tag("zone")
        if isinstance(zone, str):
            sign = -1 if zone[0] == "-" else 1
            return datetime.timezone(
                sign * datetime.timedelta(hours=int(zone[1:3]), minutes=int(zone[3:5]))
            )
        return self.local_zone

    def indexed(self, node: Node, values: list[_V]) -> list[_V]:
        """RFC 5260 §6: :index N (1-based) picks one occurrence, counted from the end with :last."""
        index = node.tag("index")
        if not isinstance(index, int) or isinstance(index, bool):
            return values
        if index < 1 or index > len(values):
            return []
        return [values[-index] if node.tag("last") else values[index - 1]]

    def address_part(self, node: Node, address: str) -> str | None:
        local, domain = _split_address(address)
        if node.tag("localpart"):
            return local
        if node.tag("domain"):
            return domain
        if node.tag("user") or node.tag("detail"):
            # RFC 5233 §4: no separator -> :user is the local part and :detail matches nothing.
            cut = (
                min((i for i in (local.find(d) for d in self.delimiter) if i >= 0), default=-1)
                if self.delimiter
                else -1
            )
            if node.tag("user"):
                return local if cut < 0 else local[:cut]
            return None if cut < 0 else local[cut + 1 :]
        return address

    # -- commands ------------------------------------------------------------------------

    def block(self, nodes: tuple[Node, ...]) -> None:
        skip_else = False
        for node in nodes:
            self.charge(1)
            name = node.name
            if name in ("elsif", "else"):
                if skip_else:
                    continue
            else:
                skip_else = False
            if name in ("if", "elsif"):
                if self.test(node.tests[0]):
                    assert node.block is not None
                    self.block(node.block)
                    skip_else = True
                continue
            if name == "else":
                assert node.block is not None
                self.block(node.block)
                continue
            self.command(node)

    def command(self, node: Node) -> None:
        name = node.name
        if name == "stop":
            raise _Stop()
        if name == "return":
            raise _Return()
        if name == "keep":
            if self.add(Keep(self.action_flags(node))):
                self.implicit_keep = False
        elif name == "discard":
            self.add(Discard())
            self.implicit_keep = False
        elif name == "fileinto":
            folder = self.expand(str(node.positional[0]))
            if folder.upper() != "INBOX":
                try:
                    encode_folder_name(folder)
                except FolderNameError as e:
                    raise SieveRuntimeError(
                        f"fileinto: invalid folder name '{folder}': {e}"
                    ) from None
            copy = bool(node.tag("copy"))
            action = FileInto(folder, self.action_flags(node), bool(node.tag("create")), copy)
            if self.add(action) and not copy:
                self.implicit_keep = False
        elif name == "redirect":
            address = self.expand(str(node.positional[0])).strip()
            if not REDIRECT_ADDRESS.match(address):
                raise SieveRuntimeError(f"redirect: invalid address '{address}'")
            address = address.removeprefix("<").removesuffix(">")
            copy = bool(node.tag("copy"))
            if self.add(Redirect(address, copy)) and not copy:
                self.implicit_keep = False
        elif name in ("reject", "ereject"):
            self.add(Reject(self.expand(str(node.positional[0])), extended=name == "ereject"))
            self.implicit_keep = False
        elif name == "vacation":
            self.add(self.vacation(node))
        elif name in ("setflag", "addflag", "removeflag"):
            self.flag_command(node)
        elif name == "set":
            self.set_command(node)
        elif name == "include":
            self.include(node)
        elif name == "global":
            for var in self.expand_all(node.positional[0]):
                self.global_names.add(var.lower())
        else:
            raise SieveRuntimeError(f"unknown command {name}")

    def action_flags(self, node: Node) -> tuple[str, ...]:
        flags = node.tag("flags")
        if isinstance(flags, tuple):
            return tuple(flag_list(self.expand_all(flags)))
        return tuple(self.flags)

    def add(self, action: Action) -> bool:
        """Record an action, enforcing limits; False for a duplicate (RFC 5228 §2.10.3), which
        is dropped (and so cancels no implicit keep) except that a store's flags become the
        later ones, as Pigeonhole does."""
        for i, done in enumerate(self.actions):
            target = store_target(done)
            if target is not None and target == store_target(action):
                assert isinstance(done, (Keep, FileInto)) and isinstance(action, (Keep, FileInto))
                self.actions[i] = attr.evolve(done, flags=action.flags)
                return False
            if (
                isinstance(done, Redirect)
                and isinstance(action, Redirect)
                and done.address.lower() == action.address.lower()
            ):
                return False
            if isinstance(done, Discard) and isinstance(action, Discard):
                return False
            if isinstance(done, Vacation) and isinstance(action, Vacation):
                raise SieveRuntimeError("duplicate vacation action")
            # RFC 5429 §2.1: reject/ereject conflicts with delivering actions and vacation.
            if isinstance(action, Reject) or isinstance(done, Reject):
                other = done if isinstance(action, Reject) else action
                if isinstance(other, (Keep, FileInto, Redirect, Vacation, Reject)):
                    raise SieveRuntimeError("reject action conflicts with other action")
        if (
            isinstance(action, Redirect)
            and sum(isinstance(a, Redirect) for a in self.actions) >= self.max_redirects
        ):
            raise SieveRuntimeError(f"more than {self.max_redirects} redirect actions")
        if len(self.actions) >= self.max_actions:
            raise SieveRuntimeError(f"more than {self.max_actions} actions")
        self.actions.append(action)
        return True

    def vacation(self, node: Node) -> Vacation:
        seconds = node.tag("seconds")
        days = node.tag("days")
        if isinstance(seconds, int) and not isinstance(seconds, bool):
            period = seconds
        elif isinstance(days, int) and not isinstance(days, bool):
            period = days * 86400
        else:
            period = VACATION_DEFAULT_SECONDS
        if period != 0 or VACATION_MIN_SECONDS != 0:
            period = max(VACATION_MIN_SECONDS, min(VACATION_MAX_SECONDS, period))
        subject = node.tag("subject")
        from_ = node.tag("from")
        handle = node.tag("handle")
        addresses = node.tag("addresses")
        return Vacation(
            reason=self.expand(str(node.positional[0])),
            seconds=period,
            subject=self.expand(subject) if isinstance(subject, str) else None,
            from_=self.expand(from_) if isinstance(from_, str) else None,
            addresses=tuple(self.expand_all(addresses)) if isinstance(addresses, tuple) else (),
            mime=bool(node.tag("mime")),
            handle=self.expand(handle) if isinstance(handle, str) else None,
        )

    def flag_command(self, node: Node) -> None:
        """RFC 5232 §3: setflag/addflag/removeflag on the internal variable or a named one."""
        new = flag_list(self.expand_all(node.positional[-1]))
        variable = self.expand(str(node.positional[0])) if len(node.positional) == 2 else None
        current = flag_list([self.get_variable(variable)]) if variable is not None else self.flags
        if node.name == "setflag":
            result = new
        elif node.name == "addflag":
            result = flag_list([" ".join(current + new)])
        else:
            drop = {f.lower() for f in new}
            result = [f for f in current if f.lower() not in drop]
        if variable is not None:
            self.set_variable(variable, " ".join(result))
        else:
            self.flags = result

    def set_command(self, node: Node) -> None:
        """RFC 5229 §4: modifiers applied by precedence (40 case, 30 first-letter, 20 quoting,
        10 length)."""
        value = self.expand(str(node.positional[1]))
        # Case changes are ASCII-only, as Pigeonhole's ("été" :upper is "éTé").
        if node.tag("lower"):
            value = ascii_casemap(value)
        if node.tag("upper"):
            value = value.translate(ASCII_UPPER)
        if node.tag("lowerfirst"):
            value = ascii_casemap(value[:1]) + value[1:]
        if node.tag("upperfirst"):
            value = value[:1].translate(ASCII_UPPER) + value[1:]
        if node.tag("quotewildcard"):
            value = re.sub(r"([*?\\])", r"\\\1", value)
        if node.tag("length"):
            value = str(len(value))
        self.set_variable(str(node.positional[0]), value)

    def include(self, node: Node) -> None:
        """RFC 6609 §3.2: run another script; its own variables, shared C{global} ones."""
        name = self.expand(str(node.positional[0]))
        location = "global" if node.tag("global") else "personal"
        key = (location, name)
        if node.tag("once") and key in self.included:
            return
        if key in self.stack:
            raise SieveRuntimeError(f"include: recursive include of '{name}'")
        if len(self.stack) >= MAX_INCLUDE_DEPTH:
            raise SieveRuntimeError("include: nested too deeply")
        script = self.load_script(name, location) if self.load_script is not None else None
        if script is None:
            if node.tag("optional"):
                return
            raise SieveRuntimeError(f"include: script '{name}' not found")
        self.included.add(key)
        saved = (self.requires, self.variables, self.global_names)
        self.requires, self.variables, self.global_names = script.requires, {}, set()
        self.stack.append(key)
        try:
            self.block(script.commands)
        except _Return:
            pass
        finally:
            self.stack.pop()
            self.requires, self.variables, self.global_names = saved


def _parse_date(raw: str, header: str) -> datetime.datetime | None:
    if header.lower() == "received" and ";" in raw:
        raw = raw.rsplit(";", 1)[1]
    parsed = email.utils.parsedate_tz(raw.strip())
    if parsed is None:
        return None
    offset = parsed[9] or 0
    try:
        return datetime.datetime(
            *parsed[:6], tzinfo=datetime.timezone(datetime.timedelta(seconds=offset))
        )
    except (ValueError, OverflowError):
        return None


def _zone_text(when: datetime.datetime) -> str:
    offset = when.utcoffset() or datetime.timedelta(0)
    minutes = int(offset.total_seconds()) // 60
    sign = "-" if minutes < 0 else "+"
    minutes = abs(minutes)
    return f"{sign}{minutes // 60:02d}{minutes % 60:02d}"


def _date_part(when: datetime.datetime, part: str) -> str:
    """RFC 5260 §4.2 date parts."""
    if part == "year":
        return f"{when.year:04d}"
    if part == "month":
        return f"{when.month:02d}"
    if part == "day":
        return f"{when.day:02d}"
    if part == "date":
        return f"{when.year:04d}-{when.month:02d}-{when.day:02d}"
    if part == "julian":
        return str((when.date() - datetime.date(1858, 11, 17)).days)
    if part == "hour":
        return f"{when.hour:02d}"
    if part == "minute":
        return f"{when.minute:02d}"
    if part == "second":
        return f"{when.second:02d}"
    if part == "time":
        return f"{when.hour:02d}:{when.minute:02d}:{when.second:02d}"
    if part == "iso8601":
        zone = _zone_text(when)
        return when.strftime("%Y-%m-%dT%H:%M:%S") + zone[:3] + ":" + zone[3:]
    if part == "std11":
        return email.utils.format_datetime(when)
    if part == "zone":
        return _zone_text(when)
    if part == "weekday":
        return str((when.weekday() + 1) % 7)
    raise SieveRuntimeError(f"unknown date part '{part}'")


def evaluate(
    script: Script,
    message: bytes,
    envelope: Envelope,
    *,
    now: datetime.datetime | None = None,
    local_zone: datetime.tzinfo = datetime.timezone.utc,
    mailbox_exists: Callable[[str], bool] = lambda name: False,
    load_script: ScriptLoader | None = None,
    max_actions: int = MAX_ACTIONS,
    max_redirects: int = MAX_REDIRECTS,
    recipient_delimiter: str = "+",
    max_steps: int = MAX_STEPS,
) -> Result:
    """Run C{script} on C{message} (the bytes as delivered) for C{envelope}.

    @param now: the time for C{currentdate} (aware; default: the system clock).
    @param local_zone: the zone for C{date}/C{currentdate} without C{:zone} (RFC 5260 §4.1).
    @param mailbox_exists: the user's folder lookup for C{mailboxexists} (RFC 5490 §3.1).
    @param load_script: resolves C{include} (RFC 6609); None: every include is missing.
    @param recipient_delimiter: separator characters of C{:user}/C{:detail} (RFC 5233).
    @param max_steps: the work a run may take (L{MAX_STEPS}); past it the run fails.
    @return: L{Result}; never raises for a problem of the script or the message.
    """
    run = _Run(
        SieveMessage(message),
        envelope,
        now=now or datetime.datetime.now(datetime.timezone.utc),
        local_zone=local_zone,
        mailbox_exists=mailbox_exists,
        load_script=load_script,
        max_actions=max_actions,
        max_redirects=max_redirects,
        recipient_delimiter=recipient_delimiter,
        max_steps=max_steps,
    )
    run.requires = script.requires
    try:
        run.block(script.commands)
    except (_Stop, _Return):
        pass
    except SieveRuntimeError as e:
        return Result((), Keep(), str(e))
    except RecursionError:
        return Result((), Keep(), "script nested too deeply")
    return Result(tuple(run.actions), Keep(tuple(run.flags)) if run.implicit_keep else None)
