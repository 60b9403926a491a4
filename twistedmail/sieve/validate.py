"""Sieve validation ("compile"): commands, tests, arguments and C{require} (RFC 5228 §3.2, §8.3).

L{compile_script} turns the syntax tree of L{twistedmail.sieve.grammar} into an immutable
L{Script}: every command and test is known, its tagged and positional arguments have the types
its RFC gives, every extension it uses was named in C{require} (RFC 5228 §3.2: "MUST NOT use an
extension that is not required"), constant regular expressions compile, and encoded characters
(RFC 5228 §2.4.2.4) are decoded.  A L{Script} is a frozen value: compile once, cache, run many.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Union

import attr
import re2

from twistedmail.sieve.grammar import (
    MAX_SCRIPT_SIZE,
    Argument,
    Command,
    Number,
    SieveError,
    StringList,
    Tag,
    Test,
    parse,
)

EXTENSIONS = frozenset(
    {
        "fileinto",
        "reject",
        "envelope",
        "encoded-character",
        "comparator-i;octet",
        "comparator-i;ascii-casemap",
        "comparator-i;ascii-numeric",
        "copy",
        "imap4flags",
        "body",
        "variables",
        "vacation",
        "vacation-seconds",
        "relational",
        "subaddress",
        "date",
        "index",
        "ereject",
        "regex",
        "include",
        "mailbox",
    }
)
"""What we implement, as named in C{require} and in ManageSieve's SIEVE capability."""

COMPARATORS = {
    "i;octet": None,
    "i;ascii-casemap": None,
    "i;ascii-numeric": "comparator-i;ascii-numeric",
}
RELATIONAL_OPS = frozenset({"gt", "ge", "lt", "le", "eq", "ne"})
DATE_PARTS = frozenset(
    {
        "year",
        "month",
        "day",
        "date",
        "julian",
        "hour",
        "minute",
        "second",
        "time",
        "iso8601",
        "std11",
        "zone",
        "weekday",
    }
)
ADDRESS_HEADERS = frozenset(
    {
        "from",
        "sender",
        "to",
        "cc",
        "bcc",
        "resent-from",
        "resent-sender",
        "resent-to",
        "resent-cc",
        "resent-bcc",
        "reply-to",
        "resent-reply-to",
        "return-receipt-to",
        "disposition-notification-to",
        "errors-to",
        "delivered-to",
        "envelope-to",
        "x-original-to",
        "x-envelope-to",
        "original-recipient",
        "mail-followup-to",
        "mail-reply-to",
    }
)
"""RFC 5228 §5.1: the address test only applies to headers that hold addresses."""

TagValue = Union[bool, int, str, tuple[str, ...]]


@attr.frozen
class Node:
    """A validated command or test: C{tags} by name, C{positional} values in order."""

    name: str
    tags: tuple[tuple[str, TagValue], ...]
    positional: tuple[Union[int, str, tuple[str, ...]], ...]
    tests: tuple[Node, ...]
    block: tuple[Node, ...] | None
    line: int
    _tag_map: dict[str, TagValue] = attr.field(init=False, eq=False, hash=False, repr=False)

    def __attrs_post_init__(self) -> None:
        object.__setattr__(self, "_tag_map", dict(self.tags))

    def tag(self, name: str, default: TagValue | None = None) -> TagValue | None:
        return self._tag_map.get(name, default)


@attr.frozen
class Script:
    """A compiled script: its C{require}d extensions and validated commands."""

    requires: frozenset[str]
    commands: tuple[Node, ...]


# Tag table: tag -> (argument kind or None, extension or None, exclusive group).
_T = tuple[Union[str, None], Union[str, None], str]
_COMPARATOR: dict[str, _T] = {"comparator": ("string", None, "comparator")}
_MATCH: dict[str, _T] = {
    "is": (None, None, "match"),
    "contains": (None, None, "match"),
    "matches": (None, None, "match"),
    "regex": (None, "regex", "match"),
    "count": ("string", "relational", "match"),
    "value": ("string", "relational", "match"),
}
_ADDRESS_PART: dict[str, _T] = {
    "all": (None, None, "part"),
    "localpart": (None, None, "part"),
    "domain": (None, None, "part"),
    "user": (None, "subaddress", "part"),
    "detail": (None, "subaddress", "part"),
}
_INDEX: dict[str, _T] = {"index": ("number", "index", "index"), "last": (None, "index", "last")}
_ZONE: dict[str, _T] = {"zone": ("string", None, "zone"), "originalzone": (None, None, "zone")}
_MATCHING = {**_COMPARATOR, **_MATCH}


@attr.frozen
class _Spec:
    extension: str | None
    tags: dict[str, _T]
    positional: tuple[str, ...]
    optional_first: bool = False
    tests: str = "none"  # none | one | list
    block: bool = False


_COMMANDS: dict[str, _Spec] = {
    "require": _Spec(None, {}, ("stringlist",)),
    "if": _Spec(None, {}, (), tests="one", block=True),
    "elsif": _Spec(None, {}, (), tests="one", block=True),
    "else": _Spec(None, {}, (), block=True),
    "stop": _Spec(None, {}, ()),
    "keep": _Spec(None, {"flags": ("stringlist", "imap4flags", "flags")}, ()),
    "discard": _Spec(None, {}, ()),
    "redirect": _Spec(None, {"copy": (None, "copy", "copy")}, ("string",)),
    "fileinto": _Spec(
        "fileinto",
        {
            "copy": (None, "copy", "copy"),
            "flags": ("stringlist", "imap4flags", "flags"),
            "create": (None, "mailbox", "create"),
        },
        ("string",),
    ),
    "reject": _Spec("reject", {}, ("string",)),
    "ereject": _Spec("ereject", {}, ("string",)),
    "vacation": _Spec(
        "vacation",
        {
            "days": ("number", None, "period"),
            "seconds": ("number", "vacation-seconds", "period"),
            "subject": ("string", None, "subject"),
            "from": ("string", None, "from"),
            "addresses": ("stringlist", None, "addresses"),
            "mime": (None, None, "mime"),
            "handle": ("string", None, "handle"),
        },
        ("string",),
    ),
    "setflag": _Spec("imap4flags", {}, ("string", "stringlist"), optional_first=True),
    "addflag": _Spec("imap4flags", {}, ("string", "stringlist"), optional_first=True),
    "removeflag": _Spec("imap4flags", {}, ("string", "stringlist"), optional_first=True),
    "set": _Spec(
        "variables",
        {
            m: (None, None, "mod-" + m)
            for m in ("lower", "upper", "lowerfirst", "upperfirst", "quotewildcard", "length")
        },
        # No :quoteregex (draft-ietf-sieve-regex §3): Pigeonhole 0.5 refuses it too.
        ("string", "string"),
    ),
    "include": _Spec(
        "include",
        {
            "personal": (None, None, "location"),
            "global": (None, None, "location"),
            "once": (None, None, "once"),
            "optional": (None, None, "optional"),
        },
        ("string",),
    ),
    "return": _Spec("include", {}, ()),
    "global": _Spec("include", {}, ("stringlist",)),
}

_TESTS: dict[str, _Spec] = {
    "address": _Spec(None, {**_MATCHING, **_ADDRESS_PART, **_INDEX}, ("stringlist", "stringlist")),
    "envelope": _Spec("envelope", {**_MATCHING, **_ADDRESS_PART}, ("stringlist", "stringlist")),
    "header": _Spec(None, {**_MATCHING, **_INDEX}, ("stringlist", "stringlist")),
    "exists": _Spec(None, {}, ("stringlist",)),
    "size": _Spec(None, {"over": ("number", None, "size"), "under": ("number", None, "size")}, ()),
    "allof": _Spec(None, {}, (), tests="list"),
    "anyof": _Spec(None, {}, (), tests="list"),
    "not": _Spec(None, {}, (), tests="one"),
    "true": _Spec(None, {}, ()),
    "false": _Spec(None, {}, ()),
    "body": _Spec(
        "body",
        {
            **_MATCHING,
            "raw": (None, None, "transform"),
            "text": (None, None, "transform"),
            "content": ("stringlist", None, "transform"),
        },
        ("stringlist",),
    ),
    "string": _Spec("variables", dict(_MATCHING), ("stringlist", "stringlist")),
    "hasflag": _Spec(
        "imap4flags", dict(_MATCHING), ("stringlist", "stringlist"), optional_first=True
    ),
    "date": _Spec("date", {**_MATCHING, **_ZONE, **_INDEX}, ("string", "string", "stringlist")),
    "currentdate": _Spec("date", {**_MATCHING, "zone": _ZONE["zone"]}, ("string", "stringlist")),
    "mailboxexists": _Spec("mailbox", {}, ("stringlist",)),
}


def compile_regex(pattern: str | bytes, casemap: bool = False, octets: bool = False) -> Any:
    """An RE2 regex (linear time; POSIX-ERE-like syntax as Pigeonhole's :regex), errors quiet.

    @param octets: match bytes, one octet per '.' (Latin-1 mode), for C{:matches}.
    @raise re2.error: when the pattern is invalid.
    """
    options = re2.Options()
    options.case_sensitive = not casemap
    options.log_errors = False
    if octets:
        options.encoding = re2.Options.Encoding.LATIN1
    return re2.compile(pattern, options=options)


_ENCODED = re.compile(r"\$\{(hex|unicode):([ \t\r\n0-9A-Fa-f]*)\}", re.IGNORECASE)
_VARIABLE_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_ZONE_RE = re.compile(r"[+-][0-9]{4}\Z")
REDIRECT_ADDRESS = re.compile(r"<?[^@\s<>]+@[^@\s<>]+>?\Z")
"""A redirect target: local@domain, optionally in angle brackets (RFC 5228 §4.2)."""


def _decode_encoded(value: str) -> str:
    """RFC 5228 §2.4.2.4: C{${hex:..}} / C{${unicode:..}}; malformed ones stay as written."""

    def one(m: re.Match[str]) -> str:
        digits = m.group(2).split()
        try:
            if m.group(1).lower() == "hex":
                return bytes(int(d, 16) for d in digits).decode("utf-8")
            chars = []
            for d in digits:
                cp = int(d, 16)
                if cp > 0x10FFFF or 0xD800 <= cp <= 0xDFFF:
                    raise ValueError
                chars.append(chr(cp))
            return "".join(chars)
        except (ValueError, UnicodeDecodeError):
            return m.group()

    return _ENCODED.sub(one, value)


IncludeExists = Callable[[str, str], bool]
"""C{(name, "personal" | "global") -> bool}: whether an include target exists (RFC 6609)."""


class _Compiler:
    def __init__(
        self, requires: frozenset[str], encoded: bool, include_exists: IncludeExists | None
    ) -> None:
        self.requires = requires
        self.encoded = encoded
        self.include_exists = include_exists

    def need(self, extension: str, line: int, what: str) -> None:
        if extension not in self.requires:
            raise SieveError(line, f"{what} requires extension '{extension}' (missing require)")

    def strings(self, arg: StringList) -> tuple[str, ...]:
        if self.encoded:
            return tuple(_decode_encoded(v) for v in arg.values)
        return arg.values

    def node(
        self,
        name: str,
        arguments: tuple[Argument, ...],
        tests: tuple[Test, ...],
        block: tuple[Command, ...] | None,
        line: int,
        spec: _Spec,
        kind: str,
    ) -> Node:
        if spec.extension is not None:
            self.need(spec.extension, line, f"{kind} '{name}'")
        if name == "global":
            self.need("variables", line, "command 'global'")
        tags: dict[str, TagValue] = {}
        groups: dict[str, str] = {}
        positional_args: list[Argument] = []
        i = 0
        while i < len(arguments):
            arg = arguments[i]
            i += 1
            if not isinstance(arg, Tag):
                positional_args.append(arg)
                continue
            if positional_args:
                raise SieveError(arg.line, f"tag :{arg.name} after positional arguments of {name}")
            tspec = spec.tags.get(arg.name)
            if tspec is None:
                raise SieveError(
                    arg.line, f"unknown tagged argument :{arg.name} for {kind} '{name}'"
                )
            akind, ext, group = tspec
            if ext is not None:
                self.need(ext, arg.line, f"tag :{arg.name}")
            if group in groups:
                raise SieveError(arg.line, f":{arg.name} conflicts with :{groups[group]} in {name}")
            groups[group] = arg.name
            value: TagValue = True
            if akind is not None:
                if i >= len(arguments) or isinstance(arguments[i], Tag):
                    raise SieveError(arg.line, f":{arg.name} needs a {akind} argument")
                value = self.value(arguments[i], akind, f":{arg.name}")
                i += 1
            tags[arg.name] = value
        positional = spec.positional
        if spec.optional_first and len(positional_args) == len(positional) - 1:
            positional = positional[1:]
        if len(positional_args) != len(positional):
            raise SieveError(
                line,
                f"{kind} '{name}' takes {len(spec.positional)} positional "
                f"argument(s), {len(positional_args)} given",
            )
        pairs = zip(positional_args, positional, strict=True)
        values = tuple(self.value(a, k, name) for a, k in pairs)
        if spec.tests == "none" and tests:
            raise SieveError(line, f"{kind} '{name}' takes no test")
        if spec.tests == "one" and (len(tests) != 1 or tests[0] is None):
            raise SieveError(line, f"{kind} '{name}' needs exactly one test")
        if spec.tests == "list" and not tests:
            raise SieveError(line, f"{kind} '{name}' needs a test list")
        if spec.block and block is None:
            raise SieveError(line, f"command '{name}' needs a block")
        if not spec.block and block is not None:
            raise SieveError(line, f"command '{name}' takes no block")
        node = Node(
            name,
            tuple(tags.items()),
            values,
            tuple(self.test(t) for t in tests),
            self.commands(block) if block is not None else None,
            line,
        )
        self.check(node)
        return node

    def value(self, arg: Argument, akind: str, what: str) -> int | str | tuple[str, ...]:
        if akind == "number":
            if not isinstance(arg, Number):
                raise SieveError(arg.line, f"{what} expects a number")
            return arg.value
        if not isinstance(arg, StringList):
            raise SieveError(
                arg.line, f"{what} expects a string{' list' if akind == 'stringlist' else ''}"
            )
        values = self.strings(arg)
        if akind == "string":
            if len(values) != 1:
                raise SieveError(arg.line, f"{what} expects a single string, not a list")
            return values[0]
        return values

    def check(self, node: Node) -> None:
        """Command-specific rules beyond argument types."""
        line = node.line
        comparator = node.tag("comparator")
        if isinstance(comparator, str):
            if comparator not in COMPARATORS:
                raise SieveError(line, f"unknown comparator '{comparator}'")
            ext = COMPARATORS[comparator]
            if ext is not None:
                self.need(ext, line, f"comparator '{comparator}'")
            if comparator == "i;ascii-numeric" and any(
                node.tag(m) for m in ("contains", "matches", "regex")
            ):
                raise SieveError(
                    line, "comparator 'i;ascii-numeric' does not support substring matching"
                )
        for rel in ("count", "value"):
            op = node.tag(rel)
            if isinstance(op, str) and op.lower() not in RELATIONAL_OPS:
                raise SieveError(line, f"invalid relational match '{op}'")
        if node.tag("regex") and node.positional:
            keys = node.positional[-1]
            assert isinstance(keys, tuple)
            for key in keys:
                if "${" in key and "variables" in self.requires:
                    continue
                try:
                    compile_regex(key.encode("utf-8", "surrogateescape"), octets=True)
                except Exception:
                    raise SieveError(line, f"invalid regular expression '{key}'") from None
        index = node.tag("index")
        if isinstance(index, int) and not isinstance(index, bool) and index < 1:
            raise SieveError(line, ":index counts from 1 (RFC 5260 §6)")
        if node.tag("last") and node.tag("index") is None:
            raise SieveError(line, ":last needs :index")
        zone = node.tag("zone")
        if isinstance(zone, str) and not _ZONE_RE.match(zone):
            raise SieveError(line, f"invalid time zone '{zone}'")
        if node.name == "size" and node.tag("over") is None and node.tag("under") is None:
            raise SieveError(line, "size needs :over or :under")
        if node.name == "address":
            headers = node.positional[0]
            assert isinstance(headers, tuple)
            for h in headers:
                if "${" not in h and h.lower() not in ADDRESS_HEADERS:
                    raise SieveError(line, f"address test on non-address header '{h}'")
        if node.name == "envelope":
            parts = node.positional[0]
            assert isinstance(parts, tuple)
            for p in parts:
                if "${" not in p and p.lower() not in ("from", "to", "auth"):
                    raise SieveError(line, f"unknown envelope part '{p}'")
                if p.lower() == "auth" and any(node.tag(t) for t in _ADDRESS_PART):
                    # As Pigeonhole: "auth" is not an address, so no address part applies.
                    raise SieveError(line, "address part given for envelope part 'auth'")
        if node.name in ("date", "currentdate"):
            part = node.positional[-2]
            assert isinstance(part, str)
            if "${" not in part and part.lower() not in DATE_PARTS:
                raise SieveError(line, f"unknown date part '{part}'")
        if node.name == "redirect":
            address = node.positional[0]
            assert isinstance(address, str)
            constant = "${" not in address or "variables" not in self.requires
            if constant and not REDIRECT_ADDRESS.match(address.strip()):
                raise SieveError(line, f"invalid redirect address '{address}'")
        if node.name == "set":
            name = node.positional[0]
            assert isinstance(name, str)
            if not _VARIABLE_NAME.match(name):
                raise SieveError(line, f"invalid variable name '{name}'")
        if node.name == "global":
            names = node.positional[0]
            assert isinstance(names, tuple)
            for n in names:
                if not _VARIABLE_NAME.match(n):
                    raise SieveError(line, f"invalid variable name '{n}'")
        if node.name == "include":
            name = node.positional[0]
            assert isinstance(name, str)
            if not name or "/" in name or "\0" in name:
                raise SieveError(line, f"invalid script name '{name}'")
            location = "global" if node.tag("global") else "personal"
            # Pigeonhole resolves includes when compiling: a missing script is an error
            # unless :optional (RFC 6609 §3.2).
            if (
                self.include_exists is not None
                and not node.tag("optional")
                and not self.include_exists(name, location)
            ):
                raise SieveError(line, f"included {location} script '{name}' does not exist")

    def test(self, test: Test) -> Node:
        spec = _TESTS.get(test.name)
        if spec is None:
            if test.name in _COMMANDS:
                raise SieveError(test.line, f"'{test.name}' is a command, not a test")
            raise SieveError(test.line, f"unknown test '{test.name}'")
        return self.node(test.name, test.arguments, test.tests, None, test.line, spec, "test")

    def commands(self, commands: Iterable[Command]) -> tuple[Node, ...]:
        out: list[Node] = []
        previous = ""
        for command in commands:
            spec = _COMMANDS.get(command.name)
            if spec is None:
                if command.name in _TESTS:
                    raise SieveError(command.line, f"'{command.name}' is a test, not a command")
                raise SieveError(command.line, f"unknown command '{command.name}'")
            if command.name == "require":
                raise SieveError(
                    command.line, "require must come before any other command (RFC 5228 §3.2)"
                )
            if command.name in ("elsif", "else") and previous not in ("if", "elsif"):
                raise SieveError(command.line, f"'{command.name}' without a preceding 'if'")
            out.append(
                self.node(
                    command.name,
                    command.arguments,
                    command.tests,
                    command.block,
                    command.line,
                    spec,
                    "command",
                )
            )
            previous = command.name
        return tuple(out)


def compile_script(
    source: str | bytes,
    include_exists: IncludeExists | None = None,
    max_size: int = MAX_SCRIPT_SIZE,
) -> Script:
    """Parse and validate a script.

    @param max_size: bytes; a larger script is refused (C{[delivery] sieve_max_script_size}).

    @param include_exists: checks that each non-optional C{include} target exists (as
        Pigeonhole does when compiling); None leaves that to run time.

    @raise SieveError: with the line and message of the first error (RFC 5804 §2.6 reports it).
    """
    commands = parse(source, max_size)
    requires: set[str] = set()
    i = 0
    while i < len(commands) and commands[i].name == "require":
        command = commands[i]
        if (
            command.tests
            or command.block is not None
            or len(command.arguments) != 1
            or not isinstance(command.arguments[0], StringList)
        ):
            raise SieveError(command.line, "require takes one string list")
        for name in command.arguments[0].values:
            if name not in EXTENSIONS:
                raise SieveError(command.line, f"unsupported extension '{name}'")
            requires.add(name)
            if name == "vacation-seconds":
                requires.add("vacation")  # RFC 6131 §2 builds on vacation; Pigeonhole implies it
        i += 1
    compiler = _Compiler(frozenset(requires), "encoded-character" in requires, include_exists)
    return Script(frozenset(requires), compiler.commands(commands[i:]))
