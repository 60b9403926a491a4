"""Failed-login throttle shared by SMTP AUTH, IMAP and POP3 (issue 5; RFC 4954 §6, RFC 5530).

One L{LoginThrottle} serves every listener: it sits in the password checker
(L{twistedmail.auth.PasswordChecker}), which learns the client IP from
L{twistedmail.auth.ClientCredentials}.  It counts failed logins over a sliding window
(L{ThrottlePolicy.window} seconds):

  - per client IP (IPv6 clients by their /64 prefix): each failure makes the next attempt
    from that IP wait longer before it is answered (1, 2, 4 ... up to
    L{ThrottlePolicy.max_delay} seconds); after L{ThrottlePolicy.block_after} failures the
    IP is blocked for L{ThrottlePolicy.block_time} seconds: its logins are refused with a
    temporary error (L{LoginBlocked}) without checking the password;
  - per account (failures from any IP, for distributed guessing): after
    L{ThrottlePolicy.account_block_after} failures the account is blocked the same way,
    except for the IPs it logged in from successfully, so its owner's clients keep working.

A successful login forgets that IP's failures on that account (a typo does not slow the
next session) and never lifts a block.  State is in memory, bounded by
L{ThrottlePolicy.max_entries} keys; L{LoginThrottle.snapshot} and L{LoginThrottle.restore}
carry it over a restart as JSON-able data (the server keeps it in C{DATA_DIR/throttle.json}),
so restarting does not lift a block.  Time comes from the injected clock (wall-clock seconds
for the reactor, so saved times stay meaningful across a restart).
"""

from __future__ import annotations

import ipaddress
from collections import deque
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger(namespace="twistedmail.throttle")


@attrs.frozen
class ThrottlePolicy:
    """The throttle's knobs (config C{[limits] login_*}).

    @ivar window: seconds over which failures are counted.
    @ivar block_after: failures from one IP within C{window} that block it.
    @ivar account_block_after: failures on one account within C{window} that block it
        (for IPs it has not logged in from).
    @ivar block_time: seconds a block lasts.
    @ivar base_delay: seconds of delay after the first failure, doubled for each further one.
    @ivar max_delay: ceiling of that delay, seconds.
    @ivar max_entries: most IPs (and accounts) tracked; the oldest are forgotten first.
    """

    window: float = 600.0
    block_after: int = 10
    account_block_after: int = 30
    block_time: float = 900.0
    base_delay: float = 1.0
    max_delay: float = 16.0
    max_entries: int = 100_000


class LoginBlocked(Exception):
    """A login refused for now, without checking the password (too many failures).

    Answered C{454 4.7.0} in SMTP (RFC 4954 §6), C{NO [UNAVAILABLE]} in IMAP (RFC 5530 §3),
    C{-ERR [SYS/TEMP]} in POP3 (RFC 3206 §4).
    """


def ip_key(ip: str) -> str:
    """The unit an IP is counted in: the IPv4 address, or the /64 of an IPv6 one.

    An IPv4-mapped IPv6 address counts as its IPv4 address; anything unparsable as itself.
    """
    try:
        address = ipaddress.ip_address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def account_key(user: str) -> str:
    return user.lower()[:320]


class LoginThrottle:
    """Growing delays, then temporary blocks, for failed logins (see the module docstring).

    @param clock: time source (C{IReactorTime}); the delays are scheduled on it.
    @param policy: the limits.
    """

    def __init__(self, clock: IReactorTime, policy: ThrottlePolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or ThrottlePolicy()
        # ip key -> deque of (time, account) failures, oldest first
        self._ip_failures: dict[str, deque[tuple[float, str]]] = {}
        # account -> deque of failure times, oldest first
        self._account_failures: dict[str, deque[float]] = {}
        self._ip_blocked: dict[str, float] = {}  # ip key -> blocked until
        self._account_blocked: dict[str, float] = {}  # account -> blocked until
        self._trusted: dict[str, dict[str, float]] = {}  # account -> ip key -> last success

    # -- queries -------------------------------------------------------------------------

    def blocked(self, ip: str, user: str) -> bool:
        """Whether a login by C{user} from C{ip} is refused now (L{LoginBlocked})."""
        now = self.clock.seconds()
        key, account = ip_key(ip), account_key(user)
        if self._ip_blocked.get(key, 0.0) > now:
            return True
        if self._account_blocked.get(account, 0.0) > now:
            return key not in self._trusted.get(account, {})
        return False

    def delay_for(self, ip: str, user: str) -> float:
        """Seconds to wait before checking a login from C{ip}: 0 with no recent failure,
        then C{base_delay * 2**(n-1)} after n failures, at most C{max_delay}."""
        failures = self._ip_failures.get(ip_key(ip))
        if not failures:
            return 0.0
        self._expire(failures, self.clock.seconds())
        n = len(failures)
        if n == 0:
            return 0.0
        return float(min(self.policy.base_delay * 2 ** min(n - 1, 32), self.policy.max_delay))

    async def admit(self, ip: str, user: str) -> None:
        """Wait out the delay for C{ip}, then return; @raise LoginBlocked: when blocked
        (before or after the wait)."""
        if self.blocked(ip, user):
            raise LoginBlocked()
        delay = self.delay_for(ip, user)
        if delay > 0:
            await deferLater(self.clock, delay, lambda: None)
            if self.blocked(ip, user):
                raise LoginBlocked()

    # -- outcomes ------------------------------------------------------------------------

    def failed(self, ip: str, user: str) -> None:
        """Count a failed login (wrong password, unknown user) by C{user} from C{ip}."""
        now = self.clock.seconds()
        key, account = ip_key(ip), account_key(user)
        failures = self._ip_failures.pop(key, None) or deque()
        self._expire(failures, now)
        failures.append((now, account))
        self._ip_failures[key] = failures  # re-inserted: the dict stays oldest-first
        if len(failures) >= self.policy.block_after and self._ip_blocked.get(key, 0.0) <= now:
            self._ip_blocked[key] = now + self.policy.block_time
            log.warn(
                "login throttle: blocking ip={ip} for {seconds:.0f}s after {count} failed logins",
                ip=key,
                seconds=self.policy.block_time,
                count=len(failures),
            )
        times = self._account_failures.pop(account, None) or deque()
        while times and times[0] <= now - self.policy.window:
            times.popleft()
        times.append(now)
        self._account_failures[account] = times
        if (
            len(times) >= self.policy.account_block_after
            and self._account_blocked.get(account, 0.0) <= now
        ):
            self._account_blocked[account] = now + self.policy.block_time
            log.warn(
                "login throttle: blocking user={user} for {seconds:.0f}s after {count} failed"
                " logins (except from the IPs it logged in from)",
                user=account,
                seconds=self.policy.block_time,
                count=len(times),
            )
        self._bound(now)

    def succeeded(self, ip: str, user: str) -> None:
        """Count a successful login: C{ip} is trusted for C{user} from now on, and its
        failures on C{user} are forgotten (not those on other accounts, nor a block)."""
        now = self.clock.seconds()
        key, account = ip_key(ip), account_key(user)
        failures = self._ip_failures.get(key)
        if failures:
            kept = deque(f for f in failures if f[1] != account)
            if kept:
                self._ip_failures[key] = kept
            else:
                del self._ip_failures[key]
        trusted = self._trusted.setdefault(account, {})
        trusted.pop(key, None)
        trusted[key] = now
        while len(trusted) > 64:  # the account's most recent client IPs
            del trusted[next(iter(trusted))]
        self._bound(now)

    # -- across a restart ----------------------------------------------------------------

    SNAPSHOT_VERSION = 1

    def snapshot(self) -> dict[str, Any]:
        """The live state as JSON-able data (lists, dicts, str, float), expired parts left
        out: failures in the window, blocks not yet over, trusted IPs."""
        now = self.clock.seconds()
        horizon = now - self.policy.window
        ip_failures = {
            key: [[t, account] for t, account in failures if t > horizon]
            for key, failures in self._ip_failures.items()
        }
        account_failures = {
            account: [t for t in times if t > horizon]
            for account, times in self._account_failures.items()
        }
        return {
            "version": self.SNAPSHOT_VERSION,
            "ip_failures": {k: v for k, v in ip_failures.items() if v},
            "account_failures": {k: v for k, v in account_failures.items() if v},
            "ip_blocked": {k: t for k, t in self._ip_blocked.items() if t > now},
            "account_blocked": {k: t for k, t in self._account_blocked.items() if t > now},
            "trusted": {k: dict(v) for k, v in self._trusted.items()},
        }

    def restore(self, state: object) -> None:
        """Replace the state with a L{snapshot}'s (expired parts dropped).

        @raise ValueError: C{state} is not a snapshot of this version; nothing changed.
        """
        if not isinstance(state, dict) or state.get("version") != self.SNAPSHOT_VERSION:
            raise ValueError("not a login throttle snapshot of version 1")
        try:
            ip_failures = {
                str(k): deque((float(t), str(a)) for t, a in v)
                for k, v in state["ip_failures"].items()
            }
            account_failures = {
                str(k): deque(float(t) for t in v) for k, v in state["account_failures"].items()
            }
            ip_blocked = {str(k): float(t) for k, t in state["ip_blocked"].items()}
            account_blocked = {str(k): float(t) for k, t in state["account_blocked"].items()}
            trusted = {
                str(k): {str(ip): float(t) for ip, t in v.items()}
                for k, v in state["trusted"].items()
            }
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed login throttle snapshot: {e!r}") from None
        self._ip_failures, self._account_failures = ip_failures, account_failures
        self._ip_blocked, self._account_blocked = ip_blocked, account_blocked
        self._trusted = trusted
        now = self.clock.seconds()
        for failures in self._ip_failures.values():
            self._expire(failures, now)
        self._bound(now)

    # -- bookkeeping ---------------------------------------------------------------------

    def _expire(self, failures: deque[tuple[float, str]], now: float) -> None:
        while failures and failures[0][0] <= now - self.policy.window:
            failures.popleft()

    def _bound(self, now: float) -> None:
        """Keep memory bounded: drop expired state, then the oldest keys over the limit."""
        limit = self.policy.max_entries
        tables: list[dict[str, object]] = [
            self._ip_failures,  # type: ignore[list-item]
            self._account_failures,  # type: ignore[list-item]
            self._ip_blocked,  # type: ignore[list-item]
            self._account_blocked,  # type: ignore[list-item]
            self._trusted,  # type: ignore[list-item]
        ]
        if all(len(t) <= limit for t in tables):
            return
        horizon = now - self.policy.window
        for key in [k for k, v in self._ip_failures.items() if not v or v[-1][0] <= horizon]:
            del self._ip_failures[key]
        for key in [k for k, t in self._account_failures.items() if not t or t[-1] <= horizon]:
            del self._account_failures[key]
        for blocks in (self._ip_blocked, self._account_blocked):
            for key in [k for k, until in blocks.items() if until <= now]:
                del blocks[key]
        for table in tables:
            while len(table) > limit:
                del table[next(iter(table))]
