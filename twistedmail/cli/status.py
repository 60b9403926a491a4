"""C{twistedmail check-config}, C{check}, C{dns-records}, C{dkim}, C{queue}, C{throttle},
C{connections} and C{status}: the config and the DNS checked, the spool read, and the running
server asked over its control socket (L{twistedmail.control})."""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import sys
import time
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any, NoReturn, TypeVar

from twistedmail import config as config_module
from twistedmail import control, dnscheck
from twistedmail import dkim as dkim_module
from twistedmail.address import AddressError, Mailbox, normalize_domain
from twistedmail.cli.common import (
    PROG,
    UserError,
    _Context,
    _one_line,
    _out,
)
from twistedmail.smtp.queue import QueueEntry, Spool
from twistedmail.tls import server_context


def cmd_check_config(ctx: _Context, args: argparse.Namespace) -> None:
    tls = ctx.config.tls
    if tls.cert is not None and tls.key is not None:
        server_context(tls.cert, tls.key)
    from twistedmail.service import smarthost  # the smarthost's CA and password files

    smarthost(ctx.config)
    for warning in ctx.config.warnings:  # loads, but likely not what was meant
        print(f"{PROG}: warning: {_one_line(warning)}", file=sys.stderr)
    ctx.act_as_data_dir_owner()
    _warn_domains_without_admin(ctx)
    _warn_https_names(ctx)
    _check_dkim_keys(ctx)
    source = ctx.config.source
    _out(f"config OK: {source if source is not None else 'defaults'}")


def _warn_domains_without_admin(ctx: _Context) -> None:
    """A warning per local domain without a postmaster@ user or alias: its postmaster@ and
    abuse@ mail (RFC 5321 §4.5.1, RFC 2142) falls back to the first user; and one per alias
    target in a local domain that nobody has (that copy is dropped)."""
    if not config_module.store_path(ctx.config).exists():
        return
    for domain in ctx.store(create=False).domains_without_admin():
        print(
            f"{PROG}: warning: {domain} has no configured admin: postmaster@{domain} and"
            f" abuse@{domain} go to the first user; run: {PROG} alias add"
            f" postmaster@{domain} ADMIN",
            file=sys.stderr,
        )
    for alias, target in ctx.store(create=False).unknown_alias_targets():
        print(
            f"{PROG}: warning: alias {alias} -> {target}: no such user or alias here, the"
            f" alias's mail never reaches it; run: {PROG} alias del {alias}, then alias add"
            " it with the targets to keep",
            file=sys.stderr,
        )


HTTPS_NAMES = ("mta-sts", "autodiscover")  # RFC 8461 §3.3; Outlook's autodiscover host


def _certificate_covers(patterns: list[str], name: str) -> bool:
    """Whether a DNS name of the certificate matches C{name} (RFC 6125 §6.4.3: a wildcard
    stands for exactly one left-most label)."""
    for pattern in patterns:
        pattern = pattern.lower().rstrip(".")
        if pattern == name:
            return True
        if pattern.startswith("*.") and name.partition(".")[2] == pattern[2:]:
            return True
    return False


def _warn_https_names(ctx: _Context) -> None:
    """With C{[listen] https} and a configured certificate: a warning per local domain whose
    C{mta-sts.DOMAIN} or C{autodiscover.DOMAIN} the certificate does not name (a sender
    fetching the MTA-STS policy checks it, RFC 8461 §3.3; so does Outlook)."""
    tls = ctx.config.tls
    if not ctx.config.listen["https"] or tls.cert is None:
        return
    if not config_module.store_path(ctx.config).exists():
        return
    from cryptography import x509

    try:
        cert = x509.load_pem_x509_certificates(tls.cert.read_bytes())[0]
        names = cert.extensions.get_extension_for_class(
            x509.SubjectAlternativeName
        ).value.get_values_for_type(x509.DNSName)
    except (OSError, ValueError, x509.ExtensionNotFound):
        names = []
    for domain in ctx.store(create=False).domains():
        missing = [
            f"{label}.{domain}"
            for label in HTTPS_NAMES
            if not _certificate_covers(names, f"{label}.{domain}")
        ]
        if missing:
            print(
                f"{PROG}: warning: [tls] cert: {tls.cert} does not name {' or '.join(missing)}:"
                " MTA-STS senders and Outlook will refuse the HTTPS listener for that domain",
                file=sys.stderr,
            )


def _readable_by(st: os.stat_result, uid: int, gids: set[int], bits: int) -> bool:
    """Whether a file of status C{st} grants C{bits} (4 read, 1 search) to C{uid}/C{gids}."""
    if uid == 0:
        return True
    if st.st_uid == uid:
        return bool(st.st_mode >> 6 & bits == bits)
    if st.st_gid in gids:
        return bool(st.st_mode >> 3 & bits == bits)
    return bool(st.st_mode & bits == bits)


def _check_dkim_keys(ctx: _Context) -> None:
    """Every DKIM key must be readable by the data dir's owner, the user the server runs as
    (it is handed the data dir under C{twistd -u}): checked by opening it when this process
    acts as that user (L{_Context.act_as_data_dir_owner}), else from the files' owner and
    mode.  @raise UserError: the first key (or the key directory) it cannot read."""
    directory = ctx.config.server.data_dir / "dkim"
    try:
        owner = ctx.config.server.data_dir.stat()
        st = directory.stat()
    except FileNotFoundError:
        return
    name, gids = config_module.user_groups(owner.st_uid, owner.st_gid)
    fix = f"run: chown -R {owner.st_uid}:{owner.st_gid} {directory}"

    def refuse(path: Path, what: str) -> NoReturn:
        raise UserError(
            f"{path}: {what} by {name}, the data dir's owner the server runs as"
            f" (owner uid {st.st_uid}, mode {st.st_mode & 0o777:o}); {fix}"
        )

    as_owner = os.geteuid() == owner.st_uid
    if not as_owner and not _readable_by(st, owner.st_uid, gids, 5):
        refuse(directory, "DKIM key directory not readable")
    try:
        names = sorted(os.listdir(directory))
    except OSError as e:
        if as_owner:
            refuse(directory, f"DKIM key directory not readable ({e.strerror})")
        return  # we cannot list it, but its owner can
    for entry in names:
        path = directory / entry
        if not entry.endswith(tuple(dkim_module.KEY_SUFFIXES)):
            continue
        try:
            st = path.stat()
            if as_owner:
                with open(path, "rb"):
                    pass
            elif not _readable_by(st, owner.st_uid, gids, 4):
                refuse(path, "DKIM key not readable")
        except OSError as e:
            refuse(path, f"DKIM key not readable ({e.strerror})")


def _when(seconds: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(seconds))


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit}"
    return f"{int(max(seconds, 0))}s"


def _spool(ctx: _Context) -> Spool:
    return Spool(config_module.queue_dir(ctx.config))


def _entry(ctx: _Context, queue_id: str) -> QueueEntry:
    hex_id = all(c in "0123456789abcdefABCDEF" for c in queue_id)
    entry = _spool(ctx).load(queue_id.upper() if hex_id else queue_id)
    if entry is None:
        raise UserError(f"no queued message {queue_id}")
    return entry


def _dkim_keys(ctx: _Context) -> dkim_module.KeyStore:
    return dkim_module.KeyStore(ctx.config.server.data_dir / "dkim")


def cmd_dkim_generate(ctx: _Context, args: argparse.Namespace) -> None:
    keys = _dkim_keys(ctx)
    key = keys.generate(args.domain, args.selector, args.algorithm)
    name, value = keys.txt_record(key)
    _out(f"# {key.path}")
    _out(f"{name}. IN TXT {dkim_module.quoted_strings(value)}")


def cmd_dns_records(ctx: _Context, args: argparse.Namespace) -> None:
    for line in dnscheck.zone_lines(ctx.config, args.domain, _dkim_keys(ctx)):
        _out(line)


def preload_check() -> None:
    """Import what L{cmd_check} runs on while the CLI is still root: it then acts as the
    data dir's owner (L{_Context.act_as_data_dir_owner}), who may not be able to read the
    interpreter's own modules (pyenv's under a 0700 C{/root}, as for the server's workers)."""
    from twisted.internet import reactor  # noqa: F401

    from twistedmail import service  # noqa: F401


def cmd_check(ctx: _Context, args: argparse.Namespace) -> int:
    """Look up what C{args.domain} publishes and judge each record (L{dnscheck.check}): one
    line per record, or with C{--json} one object; 1 when a record is wrong or missing."""
    from twisted.internet import reactor

    from twistedmail import service

    def start() -> Coroutine[Any, Any, list[dnscheck.Finding]]:
        resolver = service.dns_resolver(ctx.config, reactor)
        return dnscheck.check(resolver, reactor, ctx.config, args.domain, _dkim_keys(ctx))

    findings: list[dnscheck.Finding] = _run_reactor(start)
    bad = any(f.status != dnscheck.OK for f in findings)
    if args.json:
        domain = normalize_domain(args.domain)
        _out(
            json.dumps(
                {
                    "domain": domain,
                    "hostname": ctx.config.server.hostname,
                    "ok": not bad,
                    "checks": [f.as_json() for f in findings],
                },
                sort_keys=True,
            )
        )
    else:
        for finding in findings:
            _out(finding.line())
    return 1 if bad else 0


def _run_reactor(start: Callable[[], Coroutine[Any, Any, Any]]) -> Any:
    """Run the global reactor until the coroutine C{start()} ends; its result, or its
    exception raised here.  Once per process (a reactor does not restart)."""
    from twisted.internet import defer, reactor
    from twisted.python.failure import Failure

    outcome: list[Any] = []

    def done(result: Any) -> None:
        outcome.append(result)
        reactor.stop()

    def begin() -> None:
        defer.Deferred.fromCoroutine(start()).addBoth(done)

    reactor.callWhenRunning(begin)
    # IReactorCore declares run() without arguments; every reactor's run() takes this one.
    reactor.run(installSignalHandlers=False)  # type: ignore[call-arg]
    if not outcome:
        raise UserError("interrupted")
    if isinstance(outcome[0], Failure):
        outcome[0].raiseException()
    return outcome[0]


def cmd_queue_list(ctx: _Context, args: argparse.Namespace) -> None:
    now = time.time()
    for entry in _spool(ctx).entries():
        waiting = [r.address for r in entry.recipients if r.state == "pending"]
        _out(
            f"{entry.id} age={_age(now - entry.created)} from=<{entry.sender or ''}>"
            f" to={','.join(waiting) or '-'} attempts={entry.attempts}"
            f" next={_when(entry.next_try)} error={_one_line(entry.last_error) or '-'}"
        )


def cmd_queue_show(ctx: _Context, args: argparse.Namespace) -> None:
    entry = _entry(ctx, args.id)
    _out(f"id: {entry.id}")
    _out(f"from: <{entry.sender or ''}>")
    _out(f"created: {_when(entry.created)}")
    _out(f"size: {entry.size}")
    _out(f"attempts: {entry.attempts}")
    _out(f"next try: {_when(entry.next_try)}")
    _out(f"last error: {_one_line(entry.last_error) or '-'}")
    for r in entry.recipients:
        detail = f" {r.status} {_one_line(r.diagnostic)}" if r.diagnostic else ""
        _out(f"to: <{r.address}> {r.state}{detail}")
    try:
        message = _spool(ctx).read_message(entry.id)
    except FileNotFoundError:
        raise UserError(f"queued message {entry.id} has no message file") from None
    end = message.find(b"\r\n\r\n")
    _out("")
    _out(message[: end if end >= 0 else len(message)].decode("utf-8", "replace"))


def cmd_queue_delete(ctx: _Context, args: argparse.Namespace) -> None:
    entry = _entry(ctx, args.id)
    _spool(ctx).remove(entry.id)
    _out(f"deleted {entry.id}")


_T = TypeVar("_T")


def _ask_server(ctx: _Context, ask: Callable[[Path], _T]) -> _T:
    """C{ask(control socket)} of the running server (L{twistedmail.control}).

    @raise UserError: no server is running, or its socket is not ours to open.
    """
    path = config_module.control_path(ctx.config)
    try:
        return ask(path)
    except control.NoServer:
        raise UserError("no running server") from None
    except PermissionError as e:  # connect() names no file: say which socket
        raise UserError(
            f"cannot connect to the server's control socket {path}: {e.strerror}"
        ) from None


def cmd_queue_flush(ctx: _Context, args: argparse.Namespace) -> None:
    count = _ask_server(ctx, control.flush)
    _out(f"flushed: {count} message(s) in the queue, all due now")


def _left(seconds: float) -> str:
    """Time left of a block: C{14m59s}, C{42s} (rounded up: never C{0s} while in force)."""
    whole = max(int(-(-seconds // 1)), 0)
    minutes, rest = divmod(whole, 60)
    return f"{minutes}m{rest:02d}s" if minutes else f"{rest}s"


def cmd_throttle_list(ctx: _Context, args: argparse.Namespace) -> None:
    """One line per block of the running server's failed-login throttle: C{ip=} for a
    blocked IP, C{ip= user=} for an account blocked from one IP, C{user=} for an account
    blocked from IPs it never logged in from; C{left=} time, C{failures=} counted."""
    blocks = _ask_server(ctx, control.throttle_list)
    for block in blocks:
        where = [f"ip={block.ip}"] if block.ip else []
        who = [f"user={block.account}"] if block.account else []
        _out(
            " ".join(
                [*where, *who, f"left={_left(block.seconds_left)}", f"failures={block.failures}"]
            )
        )


def _is_utf8(text: str) -> bool:
    """Whether C{text} has no lone surrogate (an argument's bytes that were not UTF-8)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _throttle_target(text: str) -> str:
    """An IP address, an IPv6 /64 as C{throttle list} shows it, or a user's address."""
    target = text.strip()
    try:
        return str(ipaddress.ip_address(target))
    except ValueError:
        pass
    if "/" in target:
        try:
            return str(ipaddress.ip_network(target, strict=False))
        except ValueError:
            raise UserError(f"invalid network {text!r}") from None
    if not target or any(c.isspace() for c in target) or not _is_utf8(target):
        raise UserError(f"not an IP address or a user address: {text!r}")
    try:
        return str(Mailbox.parse(target))
    except AddressError:
        return target  # a login name that is no address (it may still be blocked)


def cmd_throttle_unblock(ctx: _Context, args: argparse.Namespace) -> None:
    target = _throttle_target(args.target)
    lifted, forgotten = _ask_server(ctx, lambda path: control.throttle_unblock(path, target))
    if lifted or forgotten:
        _out(f"unblocked {target}: {lifted} block(s) lifted, {forgotten} failed login(s) forgotten")
    else:
        _out(f"nothing to unblock for {target}: no block and no failed login")


def cmd_connections(ctx: _Context, args: argparse.Namespace) -> None:
    counts = _ask_server(ctx, control.connections)
    for name, count in counts.items():
        _out(f"{name} {count}")


def _duration(seconds: float) -> str:
    """C{3d 04h 05m}, C{2h 03m 04s}, C{5m 06s}, C{7s}."""
    s = max(int(seconds), 0)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    if days:
        return f"{days}d {hours:02d}h {minutes:02d}m"
    if hours:
        return f"{hours}h {minutes:02d}m {s:02d}s"
    return f"{minutes}m {s:02d}s" if minutes else f"{s}s"


def cmd_status(ctx: _Context, args: argparse.Namespace) -> None:
    """The running server's status over the control socket (issue 13): a table, or with
    C{--json} the server's answer as one JSON object."""
    status = _ask_server(ctx, control.status)
    if args.json:
        _out(json.dumps(status, sort_keys=True))
        return
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(status["started"]))
    _out(f"twistedmail {status['version']}, up {_duration(status['uptime'])}")
    _out(f"started   {started} UTC")
    for name, addresses in status["listeners"].items():
        _out(f"listen    {name:<12} {' '.join(addresses)}")
    counts = status["connections"]
    _out("sessions  " + " ".join(f"{k}={v}" for k, v in counts.items()))
    for proc in status["workers"]:
        _out(
            f"worker    pid {proc['pid']} ({proc['role']}): {proc['connections']} connection(s),"
            f" {proc['imap_sessions']} IMAP session(s)"
        )
    queue = status["queue"]
    oldest = f", oldest {_duration(queue['oldest_age'])}" if queue["messages"] else ""
    _out(f"queue     {queue['messages']} message(s){oldest}")
    blocked = [f"{b['ip']} ({_left(b['seconds_left'])})" for b in status["blocked_ips"]]
    _out(f"blocked   {', '.join(blocked) or 'none'}")
    _out(f"{'DOMAIN':<30} {'USERS':>6} {'BYTES':>14} {'MESSAGES':>9}")
    for domain, d in status["domains"].items():
        _out(f"{domain:<30} {d['users']:>6} {d['bytes']:>14} {d['messages']:>9}")
