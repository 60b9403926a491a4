"""Sieve lexer and parser (RFC 5228 §2 lexical structure, §8 grammar).

Our own small recursive-descent parser rather than C{sievelib} (PyPI): sievelib 1.6 parses
scripts and reports line numbers, but it knows commands by a fixed table and refuses several
extensions the issue needs (C{include}, C{mailboxexists}, C{ereject}, the variables C{string}
test, C{vacation :seconds}, C{header :index}), so the syntax here is generic (any identifier,
any arguments) and L{twistedmail.sieve.compile} checks commands, tests and C{require}.

Errors are L{SieveError} with the 1-based line and a message, as ManageSieve PUTSCRIPT reports
them (RFC 5804 §2.6).  Limits: L{MAX_SCRIPT_SIZE} bytes and L{MAX_NESTING} levels of blocks and
tests, so a hostile script costs bounded memory and no Python recursion error.
"""

from __future__ import annotations

import re
from typing import Union

import attr

MAX_SCRIPT_SIZE = 512 * 1024
"""Bytes; Pigeonhole's C{sieve_max_script_size} is unlimited by default, ManageSieve quotas
are set separately.  A 1 MB script is refused."""

MAX_NESTING = 32
"""Blocks plus nested tests; Pigeonhole refuses deeper than 32 (C{SIEVE_MAX_BLOCK_NESTING})."""


class SieveError(Exception):
    """A script is invalid: C{line} (1-based, 0 when unknown) and a human-readable message."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@attr.frozen
class Tag:
    """A tagged argument C{:name} (name lower-cased, without the colon)."""

    name: str
    line: int


@attr.frozen
class Number:
    """A number with its quantifier applied (RFC 5228 §2.4.1: K, M, G)."""

    value: int
    line: int


@attr.frozen
class StringList:
    """One string or a bracketed list (RFC 5228 §2.4.2); C{bracketed} tells which."""

    values: tuple[str, ...]
    line: int
    bracketed: bool = False


Argument = Union[Tag, Number, StringList]


@attr.frozen
class Test:
    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    line: int


@attr.frozen
class Command:
    """A command; C{tests} holds its test (if/elsif) and C{block} its commands, or None."""

    name: str
    arguments: tuple[Argument, ...]
    tests: tuple[Test, ...]
    block: tuple[Command, ...] | None
    line: int


_TOKEN = re.compile(
    r"""
    (?P<ws>[ \t\r\n]+)
  | (?P<hash>\#[^\n]*)
  | (?P<bracket>/\*)
  | (?P<text>text:[ \t]*(?:\#[^\n]*)?\r?\n)
  | (?P<quoted>")
  | (?P<number>[0-9]+[KMGkmg]?)
  | (?P<tag>:[A-Za-z_][A-Za-z0-9_]*)
  | (?P<identifier>[A-Za-z_][A-Za-z0-9_]*)
  | (?P<special>[\[\](),;{}])
    """,
    re.VERBOSE,
)

_QUANTIFIER = {"k": 1 << 10, "m": 1 << 20, "g": 1 << 30}
MAX_NUMBER = (1 << 63) - 1


@attr.frozen
class _Token:
    kind: str
    value: str
    line: int


def tokenize(source: str) -> list[_Token]:
    """Split C{source} into tokens (RFC 5228 §2.2-§2.4, §8.1).  @raise SieveError."""
    tokens: list[_Token] = []
    pos, line, end = 0, 1, len(source)
    while pos < end:
        m = _TOKEN.match(source, pos)
        if m is None:
            raise SieveError(line, f"unexpected character {source[pos]!r}")
        kind = m.lastgroup
        assert kind is not None
        text = m.group()
        if kind == "ws" or kind == "hash":
            line += text.count("\n")
            pos = m.end()
        elif kind == "bracket":
            close = source.find("*/", m.end())
            if close < 0:
                raise SieveError(line, "unterminated comment")
            line += source.count("\n", pos, close)
            pos = close + 2
        elif kind == "quoted":
            value, newpos = _quoted(source, m.end(), line)
            tokens.append(_Token("string", value, line))
            line += source.count("\n", pos, newpos)
            pos = newpos
        elif kind == "text":
            value, newpos = _multiline(source, m.end(), line)
            tokens.append(_Token("string", value, line))
            line += source.count("\n", pos, newpos)
            pos = newpos
        else:
            tokens.append(_Token(kind, text, line))
            pos = m.end()
    return tokens


def _quoted(source: str, pos: int, line: int) -> tuple[str, int]:
    """A quoted string from after its opening quote: '\\' quotes the next character
    (RFC 5228 §2.4.2: other escapes are reserved; Pigeonhole drops the backslash)."""
    out: list[str] = []
    end = len(source)
    start = pos
    while pos < end:
        c = source[pos]
        if c == '"':
            return "".join(out), pos + 1
        if c == "\\" and pos + 1 < end:
            out.append(source[pos + 1])
            pos += 2
            continue
        out.append(c)
        pos += 1
    raise SieveError(line, f"unterminated string starting {source[start : start + 20]!r}")


def _multiline(source: str, pos: int, line: int) -> tuple[str, int]:
    """A C{text:} string from the start of its first line to after the lone "." line,
    with dot-stuffing removed (RFC 5228 §2.4.2)."""
    out: list[str] = []
    end = len(source)
    while pos < end:
        nl = source.find("\n", pos)
        if nl < 0:
            break
        raw = source[pos : nl + 1]
        content = raw[:-2] if raw.endswith("\r\n") else raw[:-1]
        if content == ".":
            return "".join(out), nl + 1
        if raw.startswith(".."):
            raw = raw[1:]
        # Line ends are CRLF in the value whatever the script file uses (§2.4.2).
        out.append(raw[:-2] + "\r\n" if raw.endswith("\r\n") else raw[:-1] + "\r\n")
        pos = nl + 1
    raise SieveError(line, "unterminated multi-line string (text: without a '.' line)")


class _Parser:
    def __init__(self, tokens: list[_Token]) -> None:
        self.tokens = tokens
        self.pos = 0

    def peek(self) -> _Token | None:
        return self.tokens[self.pos] if self.pos < len(self.tokens) else None

    def line(self) -> int:
        tok = self.peek()
        if tok is not None:
            return tok.line
        return self.tokens[-1].line if self.tokens else 1

    def take(self) -> _Token:
        tok = self.peek()
        if tok is None:
            raise SieveError(self.line(), "unexpected end of script")
        self.pos += 1
        return tok

    def special(self, char: str) -> bool:
        tok = self.peek()
        if tok is not None and tok.kind == "special" and tok.value == char:
            self.pos += 1
            return True
        return False

    def commands(self, depth: int, closing: bool) -> tuple[Command, ...]:
        out: list[Command] = []
        while True:
            tok = self.peek()
            if tok is None:
                if closing:
                    raise SieveError(self.line(), "missing '}' at end of script")
                return tuple(out)
            if closing and tok.kind == "special" and tok.value == "}":
                self.pos += 1
                return tuple(out)
            out.append(self.command(depth))

    def command(self, depth: int) -> Command:
        tok = self.take()
        if tok.kind != "identifier":
            raise SieveError(tok.line, f"expected a command, found {tok.value!r}")
        arguments, tests = self.arguments(depth)
        if self.special(";"):
            return Command(tok.value.lower(), arguments, tests, None, tok.line)
        if self.special("{"):
            if depth + 1 > MAX_NESTING:
                raise SieveError(tok.line, f"blocks nested deeper than {MAX_NESTING}")
            block = self.commands(depth + 1, closing=True)
            return Command(tok.value.lower(), arguments, tests, block, tok.line)
        raise SieveError(self.line(), f"expected ';' or '{{' after command {tok.value!r}")

    def arguments(self, depth: int) -> tuple[tuple[Argument, ...], tuple[Test, ...]]:
        args: list[Argument] = []
        while True:
            tok = self.peek()
            if tok is None:
                break
            if tok.kind == "tag":
                self.pos += 1
                args.append(Tag(tok.value[1:].lower(), tok.line))
            elif tok.kind == "number":
                self.pos += 1
                args.append(Number(_number(tok), tok.line))
            elif tok.kind == "string":
                self.pos += 1
                args.append(StringList((tok.value,), tok.line))
            elif tok.kind == "special" and tok.value == "[":
                self.pos += 1
                args.append(self.string_list(tok.line))
            else:
                break
        tests: tuple[Test, ...] = ()
        tok = self.peek()
        if tok is not None and tok.kind == "identifier":
            tests = (self.test(depth + 1),)
        elif tok is not None and tok.kind == "special" and tok.value == "(":
            self.pos += 1
            tests = self.test_list(depth + 1)
        return tuple(args), tests

    def string_list(self, line: int) -> StringList:
        values: list[str] = []
        while True:
            tok = self.take()
            if tok.kind != "string":
                raise SieveError(tok.line, f"expected a string in the list, found {tok.value!r}")
            values.append(tok.value)
            if self.special(","):
                continue
            if self.special("]"):
                return StringList(tuple(values), line, bracketed=True)
            raise SieveError(self.line(), "expected ',' or ']' in string list")

    def test(self, depth: int) -> Test:
        if depth > MAX_NESTING:
            raise SieveError(self.line(), f"tests nested deeper than {MAX_NESTING}")
        tok = self.take()
        if tok.kind != "identifier":
            raise SieveError(tok.line, f"expected a test, found {tok.value!r}")
        arguments, tests = self.arguments(depth)
        return Test(tok.value.lower(), arguments, tests, tok.line)

    def test_list(self, depth: int) -> tuple[Test, ...]:
        tests: list[Test] = []
        while True:
            tests.append(self.test(depth))
            if self.special(","):
                continue
            if self.special(")"):
                return tuple(tests)
            raise SieveError(self.line(), "expected ',' or ')' in test list")


def _number(tok: _Token) -> int:
    text = tok.value
    factor = 1
    if text[-1].lower() in _QUANTIFIER:
        factor = _QUANTIFIER[text[-1].lower()]
        text = text[:-1]
    value = int(text) * factor
    if value > MAX_NUMBER:
        raise SieveError(tok.line, f"number {tok.value} is too large")
    return value


def parse(source: str | bytes, max_size: int = MAX_SCRIPT_SIZE) -> tuple[Command, ...]:
    """The commands of a script (RFC 5228 §8.2).

    @param source: the script, UTF-8 when bytes (RFC 5228 §2.2).
    @param max_size: bytes (C{[delivery] sieve_max_script_size}); a larger script is refused
        before it is read.
    @raise SieveError: too large, not UTF-8, or a syntax error, with its line.
    """
    if isinstance(source, bytes):
        data = source
        if len(data) > max_size:
            raise SieveError(0, f"script larger than {max_size} bytes")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            line = data[: e.start].count(b"\n") + 1
            raise SieveError(line, "script is not valid UTF-8") from None
    else:
        text = source
        if len(text.encode("utf-8", "surrogatepass")) > max_size:
            raise SieveError(0, f"script larger than {max_size} bytes")
    parser = _Parser(tokenize(text))
    return parser.commands(0, closing=False)
