"""Failed-login throttle shared by SMTP AUTH, IMAP and POP3 (RFC 4954 §6, RFC 5530 §3,
RFC 3206 §4), shaped like Dovecot's auth penalty and the usual fail2ban jails.

One L{LoginThrottle} serves every listener: it sits in the password checker
(L{twistedmail.auth.PasswordChecker}), which learns the client IP from
L{twistedmail.auth.ClientCredentials}.  Failed logins are counted over a sliding window
(L{ThrottlePolicy.window} seconds), by client IP (IPv6 clients by their /64 prefix) I{and}
account, so that one phone with a stale password behind a family's or an office's NAT slows
and blocks only itself:

  - per (IP, account): each failure makes the next login of that account from that IP wait
    longer before it is checked (1, 2, 4 ... up to L{ThrottlePolicy.max_delay} seconds);
    after L{ThrottlePolicy.block_after} failures that account is blocked from that IP for
    L{ThrottlePolicy.block_time} seconds: its logins there are refused with a temporary
    error (L{LoginBlocked}) without checking the password.  Other accounts from the same IP
    are neither delayed nor blocked;
  - per IP (many-account guessing, "password spraying"): after
    L{ThrottlePolicy.ip_block_after} failures on any accounts the IP is blocked, except for
    the accounts that logged in from it successfully;
  - per account (failures from any IP, distributed guessing): after
    L{ThrottlePolicy.account_block_after} failures the account is blocked, except from the
    IPs it logged in from, so its owner's clients keep working.

Clients in L{ThrottlePolicy.exempt} networks (config C{[limits] login_throttle_exempt}) are
never delayed, blocked or counted.  A successful login forgets that IP's failures on that
account (a typo does not slow the next session) and never lifts a block; L{unblock} does
(C{twistedmail throttle unblock}, over the control socket), and L{blocks} lists them
(C{twistedmail throttle list}).

State is in memory, bounded by L{ThrottlePolicy.max_entries} keys per table;
L{LoginThrottle.snapshot} and L{LoginThrottle.restore} carry it over a restart as JSON-able
data (the server keeps it in C{DATA_DIR/throttle.json}; version 1 files of the per-IP
throttle still load), so restarting does not lift a block.  Time comes from the injected
clock (wall-clock seconds for the reactor, so saved times stay meaningful across a restart).

Several processes (C{[server] workers}, L{twistedmail.workers}): each has its own
L{LoginThrottle}; every outcome (L{LoginThrottle.failed}, L{LoginThrottle.succeeded},
L{LoginThrottle.unblock}) is also handed to L{LoginThrottle.share}, which the worker module
sets to send it to the other processes, where L{LoginThrottle.replay} applies it (without
sharing it again and without logging a second time), so a block made in one process holds in
all of them.  Only the parent process saves the state.
"""

from __future__ import annotations

import ipaddress
import json
import os
from collections import deque
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import deferLater
from twisted.logger import Logger

log = Logger(namespace="twistedmail.throttle")
_quiet = Logger(namespace="twistedmail.throttle", observer=lambda event: None)  # type: ignore[arg-type]
SHARED = {"failed": 2, "succeeded": 2, "unblock": 1}  # outcome -> number of arguments

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


@attrs.frozen
class ThrottlePolicy:
    """The throttle's knobs (config C{[limits] login_*}).

    @ivar window: seconds over which failures are counted.
    @ivar block_after: failures of one account from one IP within C{window} that block that
        account from that IP.
    @ivar ip_block_after: failures from one IP on any accounts within C{window} that block
        the IP (for the accounts that never logged in from it).
    @ivar account_block_after: failures on one account within C{window} that block it
        (for IPs it has not logged in from).
    @ivar block_time: seconds a block lasts.
    @ivar base_delay: seconds of delay after the first failure, doubled for each further one.
    @ivar max_delay: ceiling of that delay, seconds.
    @ivar max_entries: most keys tracked per table; the oldest are forgotten first.
    @ivar exempt: networks never throttled (nor counted).
    """

    window: float = 600.0
    block_after: int = 10
    ip_block_after: int = 100
    account_block_after: int = 30
    block_time: float = 900.0
    base_delay: float = 1.0
    max_delay: float = 16.0
    max_entries: int = 100_000
    exempt: tuple[Network, ...] = ()


class LoginBlocked(Exception):
    """A login refused for now, without checking the password (too many failures).

    Answered C{454 4.7.0} in SMTP (RFC 4954 §6), C{NO [UNAVAILABLE]} in IMAP (RFC 5530 §3),
    C{-ERR [SYS/TEMP]} in POP3 (RFC 3206 §4).
    """


IP, PAIR, ACCOUNT = "ip", "ip+account", "account"


@attrs.frozen
class Block:
    """One block in force, for L{LoginThrottle.blocks} (C{twistedmail throttle list}).

    @ivar kind: L{IP} (every account that never logged in from C{ip}), L{PAIR} (C{account}
        from C{ip}) or L{ACCOUNT} (C{account} from IPs it never logged in from).
    @ivar ip: the IP key (L{ip_key}), C{""} for an account block.
    @ivar account: the account key (L{account_key}), C{""} for an IP block.
    @ivar seconds_left: seconds until the block ends.
    @ivar failures: the failed logins counted for it within the window now.
    """

    kind: str
    ip: str
    account: str
    seconds_left: float
    failures: int


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


def parse_networks(values: Sequence[str]) -> tuple[Network, ...]:
    """C{["192.0.2.0/24", "2001:db8::/32", "198.51.100.7"]} -> networks (a bare address is
    a network of one; host bits are ignored).  @raise ValueError: not an IP network."""
    return tuple(ipaddress.ip_network(v.strip(), strict=False) for v in values)


def _target_ip(target: str) -> str | None:
    """The IP key C{target} names (an address, or an IP key as L{blocks} shows it)."""
    try:
        return ip_key(str(ipaddress.ip_address(target)))
    except ValueError:
        pass
    try:
        network = ipaddress.ip_network(target, strict=False)
    except ValueError:
        return None
    if isinstance(network, ipaddress.IPv6Network) and network.prefixlen == 64:
        return str(network)
    return None


class LoginThrottle:
    """Growing delays, then temporary blocks, for failed logins (see the module docstring).

    @param clock: time source (C{IReactorTime}); the delays are scheduled on it.
    @param policy: the limits.
    """

    def __init__(self, clock: IReactorTime, policy: ThrottlePolicy | None = None) -> None:
        self.clock = clock
        self.policy = policy or ThrottlePolicy()
        # (ip key, account) -> failure times, oldest first
        self._pair_failures: dict[tuple[str, str], deque[float]] = {}
        # ip key -> deque of (time, account) failures, oldest first
        self._ip_failures: dict[str, deque[tuple[float, str]]] = {}
        # account -> deque of failure times, oldest first
        self._account_failures: dict[str, deque[float]] = {}
        self._pair_blocked: dict[tuple[str, str], float] = {}  # (ip, account) -> until
        self._ip_blocked: dict[str, float] = {}  # ip key -> blocked until
        self._account_blocked: dict[str, float] = {}  # account -> blocked until
        self._trusted: dict[str, dict[str, float]] = {}  # account -> ip key -> last success
        self.share: Callable[[str, tuple[str, ...]], None] | None = None
        """Called with each outcome (C{"failed"}, C{"succeeded"} or C{"unblock"} and its
        arguments), to hand it to the other processes (L{twistedmail.workers})."""
        self._log = log

    def replay(self, kind: str, args: Sequence[str]) -> None:
        """Apply an outcome another process shared (see L{share}): counted here as if it
        happened here, neither shared again nor logged twice.

        @raise ValueError: an unknown C{kind} or wrong arguments.
        """
        if (
            kind not in SHARED
            or len(args) != SHARED[kind]
            or not all(isinstance(a, str) for a in args)
        ):
            raise ValueError(f"not a throttle outcome: {kind} {args!r}")
        share, self.share, self._log = self.share, None, _quiet
        try:
            getattr(self, kind)(*args)
        finally:
            self.share, self._log = share, log

    def _shared(self, kind: str, *args: str) -> None:
        if self.share is not None:
            self.share(kind, args)

    # -- queries -------------------------------------------------------------------------

    def exempt(self, ip: str) -> bool:
        """Whether C{ip} is in a network of L{ThrottlePolicy.exempt} (never throttled)."""
        if not self.policy.exempt:
            return False
        try:
            address = ipaddress.ip_address(ip.split("%", 1)[0])
        except ValueError:
            return False
        if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
            address = address.ipv4_mapped
        return any(address in network for network in self.policy.exempt)

    def blocked(self, ip: str, user: str) -> bool:
        """Whether a login by C{user} from C{ip} is refused now (L{LoginBlocked})."""
        if self.exempt(ip):
            return False
        now = self.clock.seconds()
        key, account = ip_key(ip), account_key(user)
        if self._pair_blocked.get((key, account), 0.0) > now:
            return True
        trusted = key in self._trusted.get(account, {})
        if self._ip_blocked.get(key, 0.0) > now and not trusted:
            return True
        return self._account_blocked.get(account, 0.0) > now and not trusted

    def delay_for(self, ip: str, user: str) -> float:
        """Seconds to wait before checking a login of C{user} from C{ip}: 0 with no recent
        failure of that account from that IP, then C{base_delay * 2**(n-1)} after n
        failures, at most C{max_delay}.  Other accounts' failures never count here."""
        if self.exempt(ip):
            return 0.0
        failures = self._pair_failures.get((ip_key(ip), account_key(user)))
        if not failures:
            return 0.0
        self._expire_times(failures, self.clock.seconds())
        n = len(failures)
        if n == 0:
            return 0.0
        return float(min(self.policy.base_delay * 2 ** min(n - 1, 32), self.policy.max_delay))

    async def admit(self, ip: str, user: str) -> None:
        """Wait out the delay for C{user} from C{ip}, then return; @raise LoginBlocked: when
        blocked (before or after the wait)."""
        if self.blocked(ip, user):
            raise LoginBlocked()
        delay = self.delay_for(ip, user)
        if delay > 0:
            await deferLater(self.clock, delay, lambda: None)
            if self.blocked(ip, user):
                raise LoginBlocked()

    def blocks(self) -> list[Block]:
        """Every block in force now: IP blocks, then (IP, account) blocks, then account
        blocks, each sorted by key."""
        now = self.clock.seconds()
        horizon = now - self.policy.window
        out = [
            Block(IP, key, "", until - now, self._count(self._ip_failures.get(key), horizon))
            for key, until in sorted(self._ip_blocked.items())
            if until > now
        ]
        out += [
            Block(
                PAIR,
                key,
                account,
                until - now,
                self._count(self._pair_failures.get((key, account)), horizon),
            )
            for (key, account), until in sorted(self._pair_blocked.items())
            if until > now
        ]
        out += [
            Block(
                ACCOUNT,
                "",
                account,
                until - now,
                self._count(self._account_failures.get(account), horizon),
            )
            for account, until in sorted(self._account_blocked.items())
            if until > now
        ]
        return out

    # -- outcomes ------------------------------------------------------------------------

    def failed(self, ip: str, user: str) -> None:
        """Count a failed login (wrong password, unknown user) by C{user} from C{ip}."""
        if self.exempt(ip):
            return
        self._shared("failed", ip, user)
        now = self.clock.seconds()
        key, account = ip_key(ip), account_key(user)
        pair = (key, account)
        seconds = self.policy.block_time

        times = self._pair_failures.pop(pair, None) or deque()
        self._expire_times(times, now)
        times.append(now)
        self._pair_failures[pair] = times  # re-inserted: the dict stays oldest-first
        if len(times) >= self.policy.block_after and self._pair_blocked.get(pair, 0.0) <= now:
            self._pair_blocked.pop(pair, None)
            self._pair_blocked[pair] = now + seconds
            self._log.warn(
                "login throttle: blocking user={user} from ip={ip} for {seconds:.0f}s after"
                " {count} failed logins",
                user=account,
                ip=key,
                seconds=seconds,
                count=len(times),
            )

        failures = self._ip_failures.pop(key, None) or deque()
        while failures and failures[0][0] <= now - self.policy.window:
            failures.popleft()
        failures.append((now, account))
        self._ip_failures[key] = failures
        if len(failures) >= self.policy.ip_block_after and self._ip_blocked.get(key, 0.0) <= now:
            self._ip_blocked.pop(key, None)
            self._ip_blocked[key] = now + seconds
            self._log.warn(
                "login throttle: blocking ip={ip} for {seconds:.0f}s after {count} failed"
                " logins on {accounts} accounts (except the accounts that logged in from it)",
                ip=key,
                seconds=seconds,
                count=len(failures),
                accounts=len({a for _, a in failures}),
            )

        account_times = self._account_failures.pop(account, None) or deque()
        self._expire_times(account_times, now)
        account_times.append(now)
        self._account_failures[account] = account_times
        if (
            len(account_times) >= self.policy.account_block_after
            and self._account_blocked.get(account, 0.0) <= now
        ):
            self._account_blocked.pop(account, None)
            self._account_blocked[account] = now + seconds
            self._log.warn(
                "login throttle: blocking user={user} for {seconds:.0f}s after {count} failed"
                " logins (except from the IPs it logged in from)",
                user=account,
                seconds=seconds,
                count=len(account_times),
            )
        self._bound(now)

    def succeeded(self, ip: str, user: str) -> None:
        """Count a successful login: C{ip} is trusted for C{user} from now on, and its
        failures on C{user} are forgotten (not those on other accounts, nor a block)."""
        if self.exempt(ip):
            return
        self._shared("succeeded", ip, user)
        now = self.clock.seconds()
        key, account = ip_key(ip), account_key(user)
        self._pair_failures.pop((key, account), None)
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

    def unblock(self, target: str) -> tuple[int, int]:
        """Lift the blocks of an IP or an account and forget their failures (the admin's
        C{twistedmail throttle unblock IP|ADDRESS}).

        @param target: an IP address (or an IPv6 /64 as L{blocks} shows it): its IP block
            and every (IP, account) block from it; else an account: its account block and
            its (IP, account) blocks from every IP.
        @return: (blocks lifted, failed logins forgotten).
        """
        self._shared("unblock", target)
        key = _target_ip(target.strip())
        lifted = forgotten = 0
        if key is not None:
            lifted += self._ip_blocked.pop(key, None) is not None
            forgotten += len(self._ip_failures.pop(key, ()))
            pairs = [p for p in set(self._pair_blocked) | set(self._pair_failures) if p[0] == key]
        else:
            account = account_key(target.strip())
            lifted += self._account_blocked.pop(account, None) is not None
            forgotten += len(self._account_failures.pop(account, ()))
            pairs = [
                p for p in set(self._pair_blocked) | set(self._pair_failures) if p[1] == account
            ]
            for ip, failures in list(self._ip_failures.items()):
                kept = deque(f for f in failures if f[1] != account)
                if kept:
                    self._ip_failures[ip] = kept
                else:
                    del self._ip_failures[ip]
        now = self.clock.seconds()
        for pair in pairs:
            until = self._pair_blocked.pop(pair, None)
            lifted += until is not None and until > now
            self._pair_failures.pop(pair, None)  # counted in the IP's or account's failures
        if lifted or forgotten:
            self._log.info(
                "login throttle: {target} unblocked by the admin ({lifted} blocks lifted,"
                " {forgotten} failed logins forgotten)",
                target=key or account_key(target.strip()),
                lifted=lifted,
                forgotten=forgotten,
            )
        return lifted, forgotten

    # -- across a restart ----------------------------------------------------------------

    SNAPSHOT_VERSION = 2

    def snapshot(self) -> dict[str, Any]:
        """The live state as JSON-able data (lists, dicts, str, float), expired parts left
        out: failures in the window, blocks not yet over, trusted IPs."""
        now = self.clock.seconds()
        horizon = now - self.policy.window
        ip_failures = {
            key: [[t, account] for t, account in failures if t > horizon]
            for key, failures in self._ip_failures.items()
        }
        pair_failures = [
            [key, account, [t for t in times if t > horizon]]
            for (key, account), times in self._pair_failures.items()
        ]
        account_failures = {
            account: [t for t in times if t > horizon]
            for account, times in self._account_failures.items()
        }
        return {
            "version": self.SNAPSHOT_VERSION,
            "pair_failures": [p for p in pair_failures if p[2]],
            "ip_failures": {k: v for k, v in ip_failures.items() if v},
            "account_failures": {k: v for k, v in account_failures.items() if v},
            "pair_blocked": [[k, a, t] for (k, a), t in self._pair_blocked.items() if t > now],
            "ip_blocked": {k: t for k, t in self._ip_blocked.items() if t > now},
            "account_blocked": {k: t for k, t in self._account_blocked.items() if t > now},
            "trusted": {k: dict(v) for k, v in self._trusted.items()},
        }

    def restore(self, state: object) -> None:
        """Replace the state with a L{snapshot}'s (expired parts dropped).

        A version 1 snapshot (the per-IP throttle before version 2) is converted: its
        failures count per (IP, account) too, and an IP block it holds becomes blocks of
        the accounts that failed from that IP, unless the IP has reached
        L{ThrottlePolicy.ip_block_after} (an old block whose failures are already out of
        the window is lifted).

        @raise ValueError: C{state} is not a snapshot of version 1 or 2; nothing changed.
        """
        if not isinstance(state, dict) or state.get("version") not in (1, 2):
            raise ValueError("not a login throttle snapshot of version 1 or 2")
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
            pair_failures: dict[tuple[str, str], deque[float]] = {}
            pair_blocked: dict[tuple[str, str], float] = {}
            if state["version"] == 2:
                for key, account, times in state["pair_failures"]:
                    pair_failures[(str(key), str(account))] = deque(float(t) for t in times)
                for key, account, until in state["pair_blocked"]:
                    pair_blocked[(str(key), str(account))] = float(until)
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise ValueError(f"malformed login throttle snapshot: {e!r}") from None
        now = self.clock.seconds()
        for failures in ip_failures.values():
            while failures and failures[0][0] <= now - self.policy.window:
                failures.popleft()
        if state["version"] == 1:
            for key, failures in ip_failures.items():
                for t, account in failures:
                    pair_failures.setdefault((key, account), deque()).append(t)
            for key, until in list(ip_blocked.items()):
                failures = ip_failures.get(key, deque())
                if len(failures) >= self.policy.ip_block_after:
                    continue
                del ip_blocked[key]
                for account in {a for _, a in failures}:
                    pair_blocked[(key, account)] = until
        self._pair_failures, self._pair_blocked = pair_failures, pair_blocked
        self._ip_failures, self._account_failures = ip_failures, account_failures
        self._ip_blocked, self._account_blocked = ip_blocked, account_blocked
        self._trusted = trusted
        self._bound(now)

    # -- bookkeeping ---------------------------------------------------------------------

    def _expire_times(self, times: deque[float], now: float) -> None:
        while times and times[0] <= now - self.policy.window:
            times.popleft()

    @staticmethod
    def _count(failures: Sequence[Any] | None, horizon: float) -> int:
        if not failures:
            return 0
        return sum(1 for f in failures if (f[0] if isinstance(f, tuple) else f) > horizon)

    def _bound(self, now: float) -> None:
        """Keep memory bounded: drop expired state, then the oldest keys over the limit."""
        limit = self.policy.max_entries
        tables: list[dict[Any, Any]] = [
            self._pair_failures,
            self._ip_failures,
            self._account_failures,
            self._pair_blocked,
            self._ip_blocked,
            self._account_blocked,
            self._trusted,
        ]
        if all(len(t) <= limit for t in tables):
            return
        horizon = now - self.policy.window
        for pair in [k for k, t in self._pair_failures.items() if not t or t[-1] <= horizon]:
            del self._pair_failures[pair]
        for key in [k for k, v in self._ip_failures.items() if not v or v[-1][0] <= horizon]:
            del self._ip_failures[key]
        for key in [k for k, t in self._account_failures.items() if not t or t[-1] <= horizon]:
            del self._account_failures[key]
        block_tables: list[dict[Any, float]] = [
            self._pair_blocked,
            self._ip_blocked,
            self._account_blocked,
        ]
        for blocks in block_tables:
            for ended in [k for k, until in blocks.items() if until <= now]:
                del blocks[ended]
        for table in tables:
            while len(table) > limit:
                del table[next(iter(table))]


def load_throttle(throttle: LoginThrottle, path: Path) -> None:
    """Restore the failed-login throttle saved by the last clean stop (L{save_throttle}).

    A missing file is a first start; an unreadable or malformed one is logged and ignored
    (the throttle starts empty: a lost block is safer than a server that does not start).
    """
    try:
        state = json.loads(path.read_bytes())
        throttle.restore(state)
    except FileNotFoundError:
        return
    except (OSError, ValueError) as e:
        log.warn("login throttle state {path} ignored: {error}", path=str(path), error=str(e))
        return
    kinds = [block.kind for block in throttle.blocks()]
    log.info(
        "login throttle state restored: {ips} blocked IPs, {pairs} blocked IP+account pairs,"
        " {accounts} blocked accounts",
        ips=kinds.count("ip"),
        pairs=kinds.count("ip+account"),
        accounts=kinds.count("account"),
    )


def save_throttle(throttle: LoginThrottle, path: Path) -> None:
    """Write the throttle's state to C{path} (owner-only, through a temporary file and a
    rename, so a crash leaves the old file or the new one).  Called at stop; a failure is
    logged, never raised."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(throttle.snapshot(), f)
        os.replace(tmp, path)
    except OSError as e:
        log.warn("login throttle state not saved to {path}: {error}", path=str(path), error=e)
