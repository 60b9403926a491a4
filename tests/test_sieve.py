"""Unit tests of twistedmail.sieve: grammar, validation, interpreter, store, hostile input."""

from __future__ import annotations

import datetime
import os
from pathlib import Path

import attr
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from twistedmail.sieve.grammar import (
    MAX_NESTING,
    MAX_SCRIPT_SIZE,
    Number,
    SieveError,
    StringList,
    Tag,
    parse,
)
from twistedmail.sieve.interpret import (
    Discard,
    Envelope,
    FileInto,
    Keep,
    Redirect,
    Reject,
    Result,
    Vacation,
    evaluate,
    vacation_reply_allowed,
)
from twistedmail.sieve.store import (
    ActiveScriptError,
    ScriptExistsError,
    ScriptNameError,
    ScriptNotFoundError,
    SieveStore,
    validate_name,
)
from twistedmail.sieve.validate import compile_script

MESSAGE = (
    b"Date: Tue, 01 Dec 2026 09:30:00 +0100\r\n"
    b"From: The Boss <boss@example.com>\r\n"
    b"To: me@example.org\r\n"
    b"Subject: =?UTF-8?Q?R=C3=A9union?= [ops] disk at 91%\r\n"
    b"X-Spam-Score: 12\r\n"
    b"\r\n"
    b"Body text.\r\n"
)
ENVELOPE = Envelope("boss@example.com", "me+ops@example.org")


def run(
    source: str, message: bytes = MESSAGE, envelope: Envelope = ENVELOPE, **kw: object
) -> Result:
    return evaluate(compile_script(source), message, envelope, **kw)  # type: ignore[arg-type]


def error_of(source: str | bytes) -> SieveError:
    with pytest.raises(SieveError) as info:
        compile_script(source)
    return info.value


# -- grammar (RFC 5228 §2, §8) -----------------------------------------------------------


def test_numbers_with_quantifiers() -> None:
    """K, M and G multiply by 2^10, 2^20, 2^30 (RFC 5228 §2.4.1)."""
    (command,) = parse("size :over 1K 2M 3G;")
    assert command.arguments == (
        Tag("over", 1),
        Number(1024, 1),
        Number(2 << 20, 1),
        Number(3 << 30, 1),
    )


def test_quoted_string_escapes() -> None:
    """A backslash quotes the next character in a quoted string (RFC 5228 §2.4.2)."""
    (command,) = parse('x "a\\"b\\\\c\\d";')
    assert command.arguments == (StringList(('a"b\\cd',), 1),)


def test_multiline_string_dot_stuffing() -> None:
    """text: ... "." keeps CRLF line ends and removes one leading dot (RFC 5228 §2.4.2)."""
    (command,) = parse("x text: # comment\n..one\ntwo\n.\n;")
    assert command.arguments == (StringList((".one\r\ntwo\r\n",), 1),)


def test_comments_and_line_numbers() -> None:
    """Comments are skipped and errors carry the line of the offending token (RFC 5804 §2.6)."""
    error = error_of("# one\n/* two\nthree */\nif true {\n  keep\n}\n")
    assert error.line == 6
    assert "expected ';'" in error.message


def test_unterminated_string_reports_line() -> None:
    """An unterminated string is a syntax error on the line where it starts."""
    assert error_of('keep;\nfileinto "abc;\n').line == 2


def test_script_size_limit() -> None:
    """A 1 MB script is refused before parsing (hostile input)."""
    script = b"# " + b"x" * (1 << 20) + b"\nkeep;\n"
    assert len(script) > MAX_SCRIPT_SIZE
    assert "larger than" in error_of(script).message


def test_nesting_limit() -> None:
    """Blocks nested deeper than the limit are refused, not a RecursionError."""
    deep = "if true {" * (MAX_NESTING + 1) + "keep;" + "}" * (MAX_NESTING + 1)
    assert "nested deeper" in error_of(deep).message
    tests = "if " + "not " * 5000 + "true { keep; }"
    assert "nested deeper" in error_of(tests).message


def test_invalid_utf8_refused() -> None:
    """A script is UTF-8 (RFC 5228 §2.2)."""
    assert error_of(b'keep;\nfileinto "\xff";').line == 2


# -- validation --------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source,message",
    [
        ('fileinto "x";', "requires extension 'fileinto'"),
        ('require "fileinto"; fileinto :copy "x";', "requires extension 'copy'"),
        ('require "x-unknown"; keep;', "unsupported extension"),
        ("frobnicate;", "unknown command"),
        ("if frob { keep; }", "unknown test"),
        ('keep; require "fileinto";', "require must come before"),
        ("else { keep; }", "without a preceding 'if'"),
        ('if header :is "subject" { keep; }', "positional argument"),
        ('if header :is :contains "a" "b" { keep; }', "conflicts with"),
        ('if header :regex "a" "b" { keep; }', "requires extension 'regex'"),
        ('require "regex"; if header :regex "a" "(" { keep; }', "invalid regular expression"),
        ('if header :comparator "i;ascii-numeric" "a" "1" { keep; }', "comparator-i;ascii-numeric"),
        ('require "relational"; if header :value "xx" "a" "1" { keep; }', "invalid relational"),
        ('if address "subject" "x" { keep; }', "non-address header"),
        ("if size 10 { keep; }", "positional argument"),
        ('require "date"; if date "date" "century" "x" { keep; }', "unknown date part"),
        ('require "date"; if date :zone "CET" "date" "year" "x" { keep; }', "invalid time zone"),
        ('require "variables"; set "1a" "x";', "invalid variable name"),
        ('require "vacation"; vacation :seconds 5 "x";', "vacation-seconds"),
        ('if address :detail "to" "x" { keep; }', "requires extension 'subaddress'"),
        ('if header :index 1 "to" "x" { keep; }', "requires extension 'index'"),
        ('require ["regex", "variables"]; set :quoteregex "a" "b";', "unknown tagged argument"),
    ],
)
def test_validation_errors(source: str, message: str) -> None:
    """Unknown commands, missing require and bad arguments are compile errors (RFC 5228 §3.2)."""
    assert message in error_of(source).message


def test_compiled_script_is_immutable_and_hashable() -> None:
    """A compiled script is a frozen value that can be cached."""
    script = compile_script('require "fileinto"; if true { fileinto "A"; }')
    assert script == compile_script('require "fileinto"; if true { fileinto "A"; }')
    hash(script)
    with pytest.raises(attr.exceptions.FrozenInstanceError):
        script.requires = frozenset()  # type: ignore[misc]


def test_encoded_character() -> None:
    """${hex:} and ${unicode:} are decoded when required (RFC 5228 §2.4.2.4)."""
    result = run('require ["encoded-character", "fileinto"]; fileinto "${hex:41 42}${unicode:e9}";')
    assert result.actions == (FileInto("ABé"),)
    result = run('require "fileinto"; fileinto "${hex:41}";')
    assert result.actions == (FileInto("${hex:41}"),)


# -- interpreter -------------------------------------------------------------------------


def test_implicit_keep() -> None:
    """With no action the message is kept (RFC 5228 §2.10.2)."""
    assert run("if false { discard; }") == Result((), Keep())


def test_fileinto_cancels_implicit_keep_and_copy_does_not() -> None:
    """fileinto cancels the implicit keep; :copy does not (RFC 3894 §3)."""
    assert run('require "fileinto"; fileinto "A";') == Result((FileInto("A"),), None)
    result = run('require ["fileinto", "copy"]; fileinto :copy "A"; redirect :copy "x@y.z";')
    assert result == Result((FileInto("A", copy=True), Redirect("x@y.z", copy=True)), Keep())


def test_header_decoded_before_matching() -> None:
    """Header values are RFC 2047-decoded before comparison (RFC 5228 §2.7.2)."""
    result = run('require "fileinto"; if header :contains "subject" "réunion" { fileinto "M"; }')
    assert result.actions == (FileInto("M"),)


def test_matches_variables() -> None:
    """:matches fills ${1}.. with what each wildcard matched, shortest first (RFC 5229 §3.2)."""
    result = run(
        'require ["fileinto", "variables"];'
        'if header :matches "subject" "*[*]*" { fileinto "${2}-${0}"; }'
    )
    assert result.actions == (FileInto("ops-Réunion [ops] disk at 91%"),)


def test_regex_variables() -> None:
    """:regex sets ${0}..${9} from the groups (draft-ietf-sieve-regex)."""
    result = run(
        'require ["fileinto", "variables", "regex"];'
        'if header :regex "subject" "disk at ([0-9]+)%" { fileinto "d${1}"; }'
    )
    assert result.actions == (FileInto("d91"),)


def test_catastrophic_regex_is_linear() -> None:
    """A backtracking-bomb regex on a hostile 100 kB header finishes (RE2 is linear)."""
    message = b"Subject: " + b"a" * 100_000 + b"!\r\n\r\n"
    result = run(
        'require ["regex", "fileinto"]; if header :regex "subject" "^(a+)+$" { fileinto "X"; }',
        message=message,
    )
    assert result == Result((), Keep())
    result = run(
        'require "fileinto"; if header :matches "subject" "*a*a*a*a*a*a*a*b" { fileinto "X"; }',
        message=message,
    )
    assert result == Result((), Keep())


def test_ascii_numeric_and_relational() -> None:
    """i;ascii-numeric compares values, not strings (RFC 4790 §9.1, RFC 5231)."""
    source = (
        'require ["relational", "comparator-i;ascii-numeric", "fileinto"];'
        'if header :value "gt" :comparator "i;ascii-numeric" "x-spam-score" "9" { fileinto "N"; }'
        'if header :value "gt" "x-spam-score" "9" { fileinto "S"; }'
    )
    assert run(source).actions == (FileInto("N"),)


def test_subaddress_parts() -> None:
    """:user and :detail split at the separator (RFC 5233 §4)."""
    source = (
        'require ["envelope", "subaddress", "fileinto", "variables"];'
        'if envelope :detail :matches "to" "*" { fileinto "${1}"; }'
        'if envelope :user "to" "me" { fileinto "user"; }'
    )
    assert run(source).actions == (FileInto("ops"), FileInto("user"))


def test_envelope_null_reverse_path() -> None:
    """The null reverse path is "" for :all and has no local part or domain (RFC 5228 §5.4)."""
    source = (
        'require ["envelope", "fileinto"];'
        'if envelope :all :is "from" "" { fileinto "all"; }'
        'if envelope :localpart :is "from" "" { fileinto "local"; }'
    )
    result = run(source, envelope=Envelope("", "me@example.org"))
    assert result.actions == (FileInto("all"),)


def test_imap4flags_and_implicit_keep_flags() -> None:
    """The internal flags go to keep, fileinto and the implicit keep (RFC 5232 §3-§5)."""
    source = (
        'require ["imap4flags", "fileinto"];'
        'addflag ["\\\\Flagged", "$Work"]; removeflag "$work";'
        'fileinto :copy "A"; fileinto :copy :flags "\\\\Seen" "B";'
    )
    with pytest.raises(SieveError):
        compile_script(source)  # :copy without require "copy"
    source = source.replace('"fileinto"]', '"fileinto", "copy"]')
    result = run(source)
    assert result.actions == (
        FileInto("A", ("\\Flagged",), copy=True),
        FileInto("B", ("\\Seen",), copy=True),
    )
    assert result.implicit_keep == Keep(("\\Flagged",))


def test_body_text_multipart() -> None:
    """body :text looks at the decoded text parts of a multipart message (RFC 5173 §5)."""
    message = (
        b"From: a@b.c\r\nMIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
        b"--b\r\nContent-Type: text/plain\r\nContent-Transfer-Encoding: base64\r\n\r\n"
        b"aGlkZGVuIHdvcmQ=\r\n--b--\r\n"
    )
    source = 'require ["body", "fileinto"]; if body :text :contains "hidden word" { fileinto "F"; }'
    assert run(source, message=message).actions == (FileInto("F"),)


def test_date_zone() -> None:
    """date converts to :zone before taking the part (RFC 5260 §4.1)."""
    source = (
        'require ["date", "fileinto"];'
        'if date :zone "+0000" "date" "hour" "08" { fileinto "utc"; }'
        'if date :originalzone "date" "hour" "09" { fileinto "orig"; }'
    )
    assert run(source).actions == (FileInto("utc"), FileInto("orig"))


def test_currentdate_uses_injected_clock() -> None:
    """currentdate reads the clock it is given (RFC 5260 §5)."""
    now = datetime.datetime(2030, 6, 1, 12, tzinfo=datetime.timezone.utc)
    source = 'require ["date", "fileinto"]; if currentdate "year" "2030" { fileinto "y"; }'
    assert run(source, now=now).actions == (FileInto("y"),)


def test_redirect_limit() -> None:
    """More redirects than the limit is a runtime error: the message is kept (Pigeonhole)."""
    source = "".join(f'redirect "a{i}@example.org";' for i in range(5))
    result = run(source)
    assert result.actions == () and result.implicit_keep == Keep()
    assert result.error is not None and "redirect" in result.error
    assert len(run(source, max_redirects=5).actions) == 5


def test_action_limit() -> None:
    """More actions than max_actions is a runtime error."""
    source = 'require "fileinto";' + "".join(f'fileinto "F{i}";' for i in range(40))
    result = run(source)
    assert result.error is not None and result.implicit_keep == Keep()


def test_fileinto_path_traversal_is_refused() -> None:
    """fileinto "../../x" is an invalid folder name: error, message kept in INBOX."""
    result = run('require "fileinto"; fileinto "../../x";')
    assert result.actions == () and result.implicit_keep == Keep()
    assert result.error is not None and "invalid folder name" in result.error


def test_reject_conflicts_with_fileinto() -> None:
    """reject after fileinto is refused (RFC 5429 §2.1, as Pigeonhole)."""
    result = run('require ["reject", "fileinto"]; fileinto "A"; reject "no";')
    assert result.error is not None and result.implicit_keep == Keep()
    assert run('require "ereject"; ereject "no";').actions == (Reject("no", extended=True),)


def test_discard_and_stop() -> None:
    """discard cancels the implicit keep; stop ends the script (RFC 5228 §3.3, §4.4)."""
    assert run("discard; stop; keep;") == Result((Discard(),), None)


def test_vacation_parameters() -> None:
    """vacation records its parameters; :seconds below the minimum is raised to it (RFC 6131)."""
    result = run(
        'require "vacation-seconds";vacation :seconds 60 :subject "Away" :addresses "x@y.z" "Gone";'
    )
    assert result.actions == (Vacation("Gone", 86400, "Away", None, ("x@y.z",)),)
    assert result.implicit_keep == Keep()


def test_vacation_reply_rules() -> None:
    """No reply to <>, to lists, to auto-submitted mail, or when not addressed (RFC 5230 §4.5)."""
    vacation = Vacation("x")
    env = Envelope("boss@example.com", "me@example.org")
    assert vacation_reply_allowed(MESSAGE, env, [], vacation)
    assert not vacation_reply_allowed(MESSAGE, Envelope("", "me@example.org"), [], vacation)
    assert not vacation_reply_allowed(b"List-Id: <l.x>\r\n" + MESSAGE, env, [], vacation)
    assert not vacation_reply_allowed(
        b"Auto-Submitted: auto-replied\r\n" + MESSAGE, env, [], vacation
    )
    assert not vacation_reply_allowed(
        MESSAGE, Envelope("boss@example.com", "other@example.org"), [], vacation
    )


def test_include_once_optional_and_globals() -> None:
    """include runs another script; global variables are shared (RFC 6609 §3.2, §3.3)."""
    scripts = {
        ("personal", "child"): compile_script(
            'require ["include", "variables"]; global "f"; set "f" "${f}x";'
        ),
    }
    source = (
        'require ["include", "variables", "fileinto"]; global "f";'
        'include "child"; include "child"; include :once "child";'
        'include :optional "missing"; fileinto "F${f}";'
    )
    result = run(source, load_script=lambda name, where: scripts.get((where, name)))
    assert result.actions == (FileInto("Fxx"),)
    missing = run('require "include"; include "missing";')
    assert missing.error is not None and missing.implicit_keep == Keep()


def test_include_recursion_refused() -> None:
    """A script including itself is a runtime error, not an endless loop."""
    script = compile_script('require "include"; include "self";')
    result = evaluate(script, MESSAGE, ENVELOPE, load_script=lambda n, w: script)
    assert result.error is not None and "recursive" in result.error


def test_mailboxexists() -> None:
    """mailboxexists asks the delivery's folder lookup (RFC 5490 §3.1)."""
    source = 'require ["mailbox", "fileinto"]; if mailboxexists "A" { fileinto :create "A"; }'
    assert run(source, mailbox_exists=lambda n: n == "A").actions == (FileInto("A", create=True),)
    assert run(source).actions == ()


# -- store -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["", "a/b", ".hidden", "nul\0", "line\nbreak", "x" * 257, "a\u2028"]
)
def test_invalid_script_names(name: str) -> None:
    """Names with NUL, controls, '/' or over-long are refused (RFC 5804 §1.6)."""
    with pytest.raises(ScriptNameError):
        validate_name(name)


def test_store_layout_is_pigeonhole(tmp_path: Path) -> None:
    """Scripts live in ~/sieve/NAME.sieve; the active one is linked as ~/.dovecot.sieve."""
    store = SieveStore(tmp_path)
    store.put("vacation", b"keep;\n")
    store.put("lists", b"discard;\n")
    store.activate("vacation")
    assert (tmp_path / "sieve" / "vacation.sieve").read_bytes() == b"keep;\n"
    assert os.readlink(tmp_path / ".dovecot.sieve") == "sieve/vacation.sieve"
    assert store.list() == [("lists", False), ("vacation", True)]
    with pytest.raises(ActiveScriptError):
        store.delete("vacation")
    store.rename("vacation", "away")
    assert os.readlink(tmp_path / ".dovecot.sieve") == "sieve/away.sieve"
    with pytest.raises(ScriptExistsError):
        store.rename("away", "lists")
    store.deactivate()
    assert store.active() is None and not (tmp_path / ".dovecot.sieve").exists()
    store.delete("away")
    with pytest.raises(ScriptNotFoundError):
        store.get("away")
    assert sorted(os.listdir(tmp_path / "sieve")) == ["lists.sieve"]


def test_store_keeps_plain_dovecot_sieve(tmp_path: Path) -> None:
    """A plain ~/.dovecot.sieve file is moved aside on activation, as Pigeonhole does."""
    (tmp_path / ".dovecot.sieve").write_bytes(b"keep;\n")
    store = SieveStore(tmp_path)
    store.put("new", b"discard;\n")
    store.activate("new")
    assert store.get("dovecot.orig") == b"keep;\n"


def test_store_ignores_link_outside_home(tmp_path: Path) -> None:
    """An active link pointing outside ~/sieve is not a script of ours."""
    (tmp_path / ".dovecot.sieve").symlink_to("/etc/passwd")
    assert SieveStore(tmp_path).active() is None


_EVERY_TEST = compile_script(
    'require ["body", "envelope", "date", "index", "regex", "variables", "relational",'
    ' "subaddress", "imap4flags", "fileinto", "comparator-i;ascii-numeric"];'
    'if anyof (header :matches "subject" "*a*", address :detail "from" "x",'
    ' envelope :domain "to" "y", body :text :contains "z", body :raw :regex "q+",'
    ' body :content "text" :contains "w", date :index 1 :zone "+0100" "date" "hour" "1",'
    ' header :value "gt" :comparator "i;ascii-numeric" "x-n" "1", exists "x",'
    ' header :count "gt" :comparator "i;ascii-numeric" "received" "1") {'
    ' fileinto "${1}x"; }'
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=2000))
def test_any_message_bytes_never_raise(data: bytes) -> None:
    """Whatever the message bytes, evaluation returns a result instead of raising."""
    result = evaluate(_EVERY_TEST, data, ENVELOPE)
    assert result.implicit_keep is not None or result.actions


@settings(max_examples=100, deadline=None)
@given(
    st.lists(
        st.sampled_from(
            [
                b"Subject: =?utf-8?b?",
                b"=?x-unknown?q?a?=",
                b"Content-Type: multipart/mixed; boundary=b\r\n",
                b"--b\r\n",
                b"Content-Transfer-Encoding: base64\r\n",
                b"Date: Mon, 99 Foo 2026 25:61:61 +9999\r\n",
                b'From: <@@>, "\\\r\n',
                b"\r\n",
                b"\xff\xfe",
                b"Received: ;;;\r\n",
            ]
        ),
        max_size=30,
    )
)
def test_hostile_message_parts_never_raise(parts: list[bytes]) -> None:
    """Broken MIME, encodings, dates and addresses never make evaluation raise."""
    evaluate(_EVERY_TEST, b"".join(parts), ENVELOPE)


def test_missing_include_is_a_compile_error_with_a_resolver() -> None:
    """With a resolver, a missing non-optional include fails compilation (as Pigeonhole)."""
    source = (
        'require "include";\ninclude "there";\ninclude :optional "gone";\ninclude :global "gone";'
    )
    error = error_of_with(source, lambda name, where: name == "there")
    assert error.line == 4 and "'gone' does not exist" in error.message


def error_of_with(source: str, exists: object) -> SieveError:
    with pytest.raises(SieveError) as info:
        compile_script(source, include_exists=exists)  # type: ignore[arg-type]
    return info.value


def test_duplicate_store_takes_later_flags_and_keeps_implicit_keep() -> None:
    """A duplicate action is dropped (RFC 5228 §2.10.3): it cancels no implicit keep, and a
    repeated store takes the later flags (Pigeonhole's behaviour)."""
    result = run(
        'require ["fileinto", "copy", "imap4flags"];'
        'fileinto :copy :flags "$A" "X"; fileinto :flags "$B" "X"; redirect :copy "a@b.c";'
        'redirect "a@b.c";'
    )
    assert result.actions == (FileInto("X", ("$B",), copy=True), Redirect("a@b.c", copy=True))
    assert result.implicit_keep == Keep()


def test_set_case_modifiers_are_ascii_only() -> None:
    """:upper/:upperfirst change ASCII letters only (as Pigeonhole)."""
    result = run(
        'require ["variables", "fileinto"]; set :upper "u" "été"; set :upperfirst "f" "été";'
        'set :length "n" "été"; fileinto "${u}-${f}-${n}";'
    )
    assert result.actions == (FileInto("éTé-été-3"),)


def test_variable_expansion_is_bounded() -> None:
    """Variables stay within 4096 characters and an expanded string within 64 KiB: a script
    doubling a variable or repeating it cannot build megabytes (hostile input)."""
    doubling = 'require ["variables", "fileinto"]; set "a" "xx";' + 'set "a" "${a}${a}";' * 20
    result = run(doubling + 'fileinto "${a}";')
    assert result.error is not None  # 4096-character folder name: invalid, kept
    result = run(doubling + 'set :length "n" "${a}"; fileinto "n${n}";')
    assert result.actions == (FileInto("n4096"),)
    repeated = doubling + 'if string :is "' + "${a}" * 100 + '" "" { keep; }'
    result = run(repeated)
    assert result.error is not None and "after expansion" in result.error


def test_step_counter_counts_commands_tests_and_comparisons() -> None:
    """The run's work is counted (delivery's CPU bound, [delivery] sieve_max_steps): one
    per command, one per test, one per value x key (plus one per KiB of the value); one step
    past the limit fails the run and keeps the message."""
    source = 'if header :is "subject" ["x", "y"] { discard; }'  # if, test, 1 value x 2 keys
    message = b"Subject: w\r\n\r\n"
    assert run(source, message=message, max_steps=4) == Result((), Keep())
    assert run(source, message=message, max_steps=3) == Result(
        (), Keep(), "script run exceeded 3 steps"
    )
    matched = b"Subject: y\r\n\r\n"
    assert run(source, message=matched, max_steps=5).implicit_keep is None  # + discard
    assert run(source, message=matched, max_steps=4).error == "script run exceeded 4 steps"
    big = b"Subject: " + b"z" * 4096 + b"\r\n\r\n"  # 4 KiB: 1 + 4 steps per key
    assert run(source, message=big, max_steps=12).error is None
    assert run(source, message=big, max_steps=11).error == "script run exceeded 11 steps"
