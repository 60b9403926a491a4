"""Sizes and durations as an admin writes them: C{"25MiB"}, C{"500MB"}, C{"5m"}, C{"7d"}.

Read from the config (L{twistedmail.config}) and from the command line (C{twistedmail user
quota}), written back the same way (L{format_size}).  Binary and decimal units both (IEC
60027-2: KiB = 1024, KB = 1000); durations in s, m, h, d.
"""

from __future__ import annotations

import re

MIN_BARE_SIZE = 1024  # a size without a unit below this is refused (see parse_size)
_SIZE = re.compile(r"^\s*(\d+)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)
_DURATION = re.compile(r"^\s*(\d+)\s*(s|m|h|d)?\s*$")
_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_UNITS = {"b": 1, "kb": 1000, "kib": 1024, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
MAX_SIZE = 2**50
"""The largest size read (1 PiB): above it a value is a typo, and SQLite's INTEGER (quotas) and
the SIZE keyword (RFC 1870) would carry nonsense."""
MAX_COUNT = 2**31 - 1
"""The largest count or number of seconds read from the config ([limits] timeouts, limits)."""


class UnitlessSizeError(ValueError):
    """A size without a unit too small to be meant as octets (see L{parse_size})."""


def parse_size(text: object) -> int:
    """C{"25MiB"} -> 26214400, C{"25B"} -> 25; an integer without a unit is octets, and
    refused below L{MIN_BARE_SIZE} (1 KiB).

    Why refuse: C{max_message_size = 25} meant 25 MiB; read as 25 octets it loaded without
    complaint and the server then refused every message.  No size read here (message size,
    header section, quota) is sensibly under 1 KiB, so a small bare number is a forgotten
    unit, and stopping at start-up with a line naming file and key fails safe where
    guessing a unit would not.  From 1 KiB up a bare number is a plausible octet count
    (Postfix's C{message_size_limit} is one): it loads, and check-config warns
    (L{twistedmail.config.Config.warnings}).  Writing the unit C{B} says octets on purpose.

    @raise UnitlessSizeError: for a unit-less size below 1 KiB.
    @raise ValueError: for anything else that is not a positive size.
    """
    if isinstance(text, int) and not isinstance(text, bool) and text > 0:
        number, unit = text, None
    else:
        m = _SIZE.match(text) if isinstance(text, str) else None
        if not m or int(m.group(1)) <= 0:
            raise ValueError("must be a positive size such as 25MiB")
        number, unit = int(m.group(1)), m.group(2)
    if unit is None and number < MIN_BARE_SIZE:
        raise UnitlessSizeError(
            f'{number} has no unit, so it would be {number} octets; write "{number}MiB"'
            " (units B, KB, KiB, MB, MiB, GB, GiB)"
        )
    octets = number * _UNITS[(unit or "b").lower()]
    if octets > MAX_SIZE:
        raise ValueError("too large: at most 1PiB")
    return octets


def parse_quota(text: object) -> int:
    """A storage quota: C{"2GiB"} -> 2147483648, C{"0"}, C{"none"} or C{"unlimited"} -> 0
    (no limit); plain integers are octets.  @raise ValueError: otherwise."""
    if isinstance(text, int) and not isinstance(text, bool) and text == 0:
        return 0
    if isinstance(text, str) and text.strip().lower() in ("0", "none", "unlimited"):
        return 0
    try:
        return parse_size(text)
    except UnitlessSizeError:
        raise
    except ValueError as e:
        if str(e).startswith("too large"):
            raise
        raise ValueError('must be a size such as "1GiB", or "0" / "none" for unlimited') from None


def parse_duration(value: object) -> int:
    """C{"5m"} -> 300; units s, m, h, d; plain integers are seconds.

    @raise ValueError: otherwise (zero and negative values included).
    """
    if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= MAX_COUNT:
        return value
    m = _DURATION.match(value) if isinstance(value, str) else None
    if not m or not 0 < int(m.group(1)) * _SECONDS[m.group(2) or "s"] <= MAX_COUNT:
        raise ValueError('must be a positive duration such as "30s", "5m", "1h" or "5d"')
    return int(m.group(1)) * _SECONDS[m.group(2) or "s"]


def format_size(octets: int) -> str:
    """C{2147483648} -> C{"2GiB"}, C{500000000} -> C{"500MB"}: the largest unit that divides
    it (binary first, as L{parse_size} reads them), else octets."""
    units = (("GiB", 2**30), ("MiB", 2**20), ("GB", 10**9), ("MB", 10**6), ("KiB", 2**10))
    for unit, factor in units + (("KB", 1000),):
        if octets and octets % factor == 0:
            return f"{octets // factor}{unit}"
    return str(octets)


def bare_octets(value: object) -> int | None:
    """The number of a size written without a unit (C{4096}, C{"4096"}), else C{None}."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    m = _SIZE.match(str(value))
    return None if m is None or m.group(2) is not None else int(m.group(1))
