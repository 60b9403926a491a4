"""The vacation script C{twistedmail vacation} writes for users who never touch Sieve (RFC 5230).

L{vacation_script} makes a one-rule script, C{vacation :days N :subject S "TEXT"}, stored as
C{~/sieve/vacation.sieve} (Pigeonhole's layout, L{twistedmail.sieve.store}) and activated.
Sieve runs one active script per user, so a user's own active script is never changed nor
silently replaced: L{turn_on} refuses while one is active, unless C{replace}; then the
vacation script names it in a comment line and L{turn_off} makes it active again.  The text
goes into the script as a quoted string (RFC 5228 §2.4.2, C{"} and C{\\} escaped), so no
subject or message can change what the script does.
"""

from __future__ import annotations

import attr

from twistedmail.sieve.actions import VACATION_MAX_SECONDS, VACATION_MIN_SECONDS
from twistedmail.sieve.grammar import MAX_SCRIPT_SIZE, SieveError
from twistedmail.sieve.store import (
    ORIGINAL_NAME,
    ScriptNotFoundError,
    SieveStore,
    validate_name,
)
from twistedmail.sieve.validate import compile_script

SCRIPT_NAME = "vacation"
"""The script's name in C{~/sieve/}."""
MARKER = "# Written by 'twistedmail vacation'"
"""The first line of a script we wrote: only such a script is replaced or deleted."""
PREVIOUS = "# Previously active: "
"""A comment line naming the user's own script that was active before (restored on --off)."""
MIN_DAYS = VACATION_MIN_SECONDS // 86400
MAX_DAYS = VACATION_MAX_SECONDS // 86400


class VacationError(ValueError):
    """The vacation reply cannot be set or removed as asked; the message says why."""


def _quoted(text: str) -> str:
    """A Sieve quoted string (RFC 5228 §2.4.2): every C{"} and C{\\} escaped."""
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def vacation_script(subject: str, message: str, days: int, previous: str | None = None) -> bytes:
    """The script: one C{vacation} rule, UTF-8, CRLF lines (RFC 5228 §2.2).

    @param previous: the user's script that was active before, recorded for L{turn_off}.
    @raise VacationError: an empty message, a subject over several lines, days out of range.
    """
    if not MIN_DAYS <= days <= MAX_DAYS:
        raise VacationError(f"--days must be from {MIN_DAYS} to {MAX_DAYS}")
    if not subject.strip() or "\r" in subject or "\n" in subject:
        raise VacationError("the subject must be one line of text")
    if "\0" in subject + message:
        raise VacationError("the subject and the message must not contain NUL")
    lines = message.splitlines()
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        raise VacationError("the vacation message is empty")
    body = "\r\n".join(lines) + "\r\n"
    head = [MARKER + " (twistedmail vacation ADDRESS --off removes it)"]
    if previous is not None:
        head.append(PREVIOUS + previous)
    script = (
        "\r\n".join(head)
        + '\r\nrequire ["vacation"];\r\n'
        + f"vacation :days {days} :subject {_quoted(subject.strip())}\r\n"
        + f"    {_quoted(body)};\r\n"
    )
    return script.encode("utf-8")


def _ours(store: SieveStore) -> bytes | None:
    """Our vacation script's bytes, None when there is none.
    @raise VacationError: a script of that name the user wrote."""
    try:
        data = store.get(SCRIPT_NAME)
    except ScriptNotFoundError:
        return None
    if not data.startswith(MARKER.encode()):
        raise VacationError(
            f"the user has a Sieve script named '{SCRIPT_NAME}' of their own: rename or delete"
            f" it first ('twistedmail sieve delete ADDRESS {SCRIPT_NAME}')"
        )
    return data


def _previous(data: bytes) -> str | None:
    for line in data.decode("utf-8", "replace").splitlines():
        if line.startswith(PREVIOUS):
            try:
                return validate_name(line[len(PREVIOUS) :])
            except ValueError:
                return None
    return None


def _own_active(store: SieveStore) -> str | None:
    """The user's own active script: a name, C{""} for a plain C{~/.dovecot.sieve} file (which
    activating another moves to C{sieve/dovecot.orig.sieve}), None when there is none or it
    is ours."""
    active = store.active()
    if active is not None:
        return None if active == SCRIPT_NAME else active
    if not store.link.is_symlink() and store.link.is_file():
        return ""
    return None


@attr.frozen
class Outcome:
    """What L{turn_on} or L{turn_off} did: C{previous} is the user's own script that was
    active before (now inactive) or made active again; None when there was none."""

    changed: bool
    previous: str | None = None


def turn_on(
    store: SieveStore,
    subject: str,
    message: str,
    days: int,
    replace: bool = False,
    max_size: int = MAX_SCRIPT_SIZE,
) -> Outcome:
    """Write and activate the vacation script.

    @param replace: activate it even when the user has an active script of their own (kept,
        and active again after L{turn_off}).
    @raise VacationError: the user's own script is active and not C{replace}, a script of the
        user's is named C{vacation}, or the text is unusable.
    """
    existing = _ours(store)
    own = _own_active(store)
    previous = _previous(existing) if existing is not None and own is None else None
    if own is not None:
        if not replace:
            which = f"'{own}'" if own else "~/.dovecot.sieve"
            raise VacationError(
                f"the user's own Sieve script {which} is active and Sieve runs one script: add"
                " a vacation rule to it, or pass --replace to activate the vacation script"
                " instead (that script is kept, and active again after --off)"
            )
        previous = own or ORIGINAL_NAME
    data = vacation_script(subject, message, days, previous)
    try:
        compile_script(data, max_size=max_size)
    except SieveError as e:
        raise VacationError(f"the vacation script would not compile: {e}") from None
    store.put(SCRIPT_NAME, data)
    store.activate(SCRIPT_NAME)
    return Outcome(True, previous)


def turn_off(store: SieveStore) -> Outcome:
    """Remove the vacation script; when it was active, the script active before it (recorded
    by L{turn_on}) is active again if it still exists, else none is.

    @raise VacationError: a script of the user's is named C{vacation} (left alone).
    """
    existing = _ours(store)
    if existing is None:
        return Outcome(False)
    previous = None
    if store.active() == SCRIPT_NAME:
        previous = _previous(existing)
        if previous is not None and previous in store.names():
            store.activate(previous)
        else:
            previous = None
            store.deactivate()
    store.delete(SCRIPT_NAME)
    return Outcome(True, previous)
