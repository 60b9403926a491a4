"""Sieve actions as records; vacation reply rules (RFC 5228 §4, RFC 5230-5232, RFC 5429).

L{Keep}, L{FileInto} (with :flags RFC 5232 §5, :create RFC 5490, :copy RFC 3894),
L{Redirect}, L{Discard}, L{Reject} (RFC 5429) and L{Vacation} (RFC 5230 §4) are what a run
returns in a L{Result}, with the implicit keep (RFC 5228 §2.10.2); delivery carries them out.
L{flag_list} reads imap4flags flag strings (RFC 5232 §3).  L{vacation_reply_allowed} decides
whether a vacation reply may be sent at all (RFC 5230 §4.5, RFC 3834 §2).
"""

from __future__ import annotations

import email.utils
import re
from collections.abc import Sequence
from typing import Union

import attr

from twistedmail.sieve.message import Envelope, SieveMessage

VACATION_MIN_SECONDS = 86400
VACATION_MAX_SECONDS = 60 * 86400
VACATION_DEFAULT_SECONDS = 7 * 86400
"""Pigeonhole's C{sieve_vacation_min_period}, C{_max_period} and C{_default_period}."""


@attr.frozen
class Keep:
    flags: tuple[str, ...] = ()


@attr.frozen
class FileInto:
    folder: str
    flags: tuple[str, ...] = ()
    create: bool = False
    copy: bool = False


@attr.frozen
class Redirect:
    address: str
    copy: bool = False


@attr.frozen
class Discard:
    pass


@attr.frozen
class Reject:
    reason: str
    extended: bool = False


@attr.frozen
class Vacation:
    """RFC 5230 §4 parameters; C{seconds} already clamped to the server's period limits."""

    reason: str
    seconds: int = VACATION_DEFAULT_SECONDS
    subject: str | None = None
    from_: str | None = None
    addresses: tuple[str, ...] = ()
    mime: bool = False
    handle: str | None = None


Action = Union[Keep, FileInto, Redirect, Discard, Reject, Vacation]


@attr.frozen
class Result:
    """The outcome: explicit C{actions} in order, the C{implicit_keep} (or None when
    cancelled), and C{error} when the script failed at run time (then only the keep)."""

    actions: tuple[Action, ...]
    implicit_keep: Keep | None
    error: str | None = None

    @property
    def all_actions(self) -> tuple[Action, ...]:
        return self.actions + ((self.implicit_keep,) if self.implicit_keep is not None else ())


_FLAG_SPLIT = re.compile(r"\s+")


def store_target(action: Action) -> str | None:
    if isinstance(action, Keep):
        return "INBOX"
    if isinstance(action, FileInto):
        return "INBOX" if action.folder.upper() == "INBOX" else action.folder
    return None


def flag_list(values: Sequence[str]) -> list[str]:
    """Space-separated flag strings -> a list without duplicates (RFC 5232 §3, case-insensitive)."""
    out: list[str] = []
    seen: set[str] = set()
    for value in values:
        for flag in _FLAG_SPLIT.split(value.strip()):
            if flag and flag.lower() not in seen:
                seen.add(flag.lower())
                out.append(flag)
    return out


_LIST_HEADERS = (
    "list-id",
    "list-owner",
    "list-subscribe",
    "list-post",
    "list-unsubscribe",
    "list-help",
    "list-archive",
)
_RECIPIENT_HEADERS = ("to", "cc", "bcc", "resent-to", "resent-cc", "resent-bcc")


def vacation_reply_allowed(
    message: bytes,
    envelope: Envelope,
    user_addresses: Sequence[str],
    vacation: Vacation,
    recipient_delimiter: str = "+",
) -> bool:
    """Whether a vacation reply may be sent at all (RFC 5230 §4.5, RFC 3834 §2), before the
    once-per-period memory: never to <>, to ourselves, to a system or list address, for a list
    or automatic message, or when none of the user's addresses is in To/Cc/Bcc.

    @param recipient_delimiter: the subaddress separator (C{[delivery] recipient_delimiter},
        C{""}: none): C{user+detail@} counts as C{user@} (RFC 5233)."""
    sender = envelope.sender.lower()
    if not sender:
        return False
    mine = {
        a.lower()
        for a in (
            *user_addresses,
            *vacation.addresses,
            envelope.recipient,
            envelope.original_recipient,
        )
        if a
    }

    def base(address: str) -> str:
        # Mail to me+detail@ is mail to me@ (RFC 5233): both count as the user's address.
        local_part, _, domain = address.rpartition("@")
        if recipient_delimiter and recipient_delimiter in local_part:
            return local_part.split(recipient_delimiter, 1)[0] + "@" + domain
        return address

    mine |= {base(a) for a in mine}
    if sender in mine or base(sender) in mine:
        return False
    local = sender.rpartition("@")[0] if "@" in sender else sender
    if (
        local in ("mailer-daemon", "listserv", "majordomo")
        or local.startswith("owner-")
        or local.endswith("-request")
    ):
        return False
    parsed = SieveMessage(message)
    for value in parsed.headers("auto-submitted"):
        if value.lower().split(";")[0].strip() != "no":
            return False
    if any(v.lower() in ("junk", "bulk", "list") for v in parsed.headers("precedence")):
        return False
    if any(parsed.raw_headers(h) for h in _LIST_HEADERS):
        return False
    addressed = {
        base(a.lower())
        for h in _RECIPIENT_HEADERS
        for _, a in email.utils.getaddresses(parsed.headers(h))
        if a
    }
    return bool(addressed & mine)
