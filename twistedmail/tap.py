"""twistd glue: C{twistd -n twistedmail [--config PATH]} (DESIGN §3).

C{[log] format = "json"} replaces twistd's text lines by one JSON object a line
(L{json_line}), written where twistd would write its lines (C{--logfile}, stdout under
C{-n}); C{--syslog} keeps its own format.

Every start-up error a user can cause (a bad config key, an unreadable or mismatched
certificate, a listen address that is in use or not local) stops the start with one line on
stderr naming the file and the key, and exit status 1 (no traceback).
"""

from __future__ import annotations

import contextlib
import datetime
import encodings
import importlib
import json
import os
import pkgutil
import pwd
import sys
from pathlib import Path
from typing import Any, NoReturn

from twisted.application.service import IService, MultiService
from twisted.internet.error import CannotListenError
from twisted.logger import (
    FileLogObserver,
    ILogObserver,
    LogEvent,
    Logger,
    formatEvent,
    globalLogPublisher,
)
from twisted.python import logfile, usage
from twisted.python.components import Componentized

from twistedmail.config import Config, ConfigError, load_config, user_groups, user_name
from twistedmail.dns import quiet_dns_client
from twistedmail.tls import TLSConfigError

log = Logger(namespace="twistedmail.tap")


class Options(usage.Options):
    optParameters = [
        [
            "config",
            "c",
            None,
            "TOML config file (default: $TWISTEDMAIL_CONFIG, else ./twistedmail.toml,"
            " else built-in defaults)",
        ],
    ]

    longdesc = "Run the twistedmail server: SMTP, submission, IMAP and POP3 over Maildir."


def _fail(message: str) -> NoReturn:
    # The process's real stderr: once twistd starts logging, sys.stderr feeds the log.
    stderr = sys.__stderr__ or sys.stderr
    stderr.write(f"twistedmail: error: {message}\n")
    stderr.flush()
    raise SystemExit(1)


def _where(config: Config) -> str:
    return str(config.source) if config.source else "built-in defaults"


FIELD_NAMES = {  # the names our log calls use -> the JSON field
    "session_id": "session",
    "peer": "ip",
    "peer_ip": "ip",
    "client_ip": "ip",
    "id": "message_id",
    "result": "outcome",
}
SERVICE_NAMESPACES = ("twistedmail.imap", "twistedmail.pop3")
_LEGACY_KEYS = {"message", "isError", "system", "time", "format", "why", "failure", "printed"}


def json_line(event: LogEvent) -> str:
    """One log event as one line of JSON: C{time} (UTC, ISO 8601), C{level}, C{namespace},
    C{text} (the formatted message), then the event's own fields (session, service, ip,
    user, message_id, outcome, size...) where they are plain values, and C{traceback}
    for a logged failure.  Never a password: no log call passes one (DESIGN §5.10)."""
    level = event.get("log_level")
    when = datetime.datetime.fromtimestamp(event.get("log_time") or 0, datetime.timezone.utc)
    record: dict[str, Any] = {
        "time": when.isoformat(timespec="milliseconds"),
        "level": level.name if level is not None else "info",
        "namespace": event.get("log_namespace", "-"),
        "text": formatEvent(event),
    }
    for key, value in event.items():
        if key.startswith("log_") or key in _LEGACY_KEYS or key in record:
            continue
        if value is None or isinstance(value, str | int | float | bool):
            name = FIELD_NAMES.get(key, key)
            if name not in record or key == name:
                record[name] = value
    namespace = record["namespace"]
    if namespace in SERVICE_NAMESPACES:  # IMAP and POP3 sessions log no service field
        record.setdefault("service", namespace.rpartition(".")[2])
    failure = event.get("log_failure")
    if failure is not None:
        record["traceback"] = failure.getTraceback()
    return json.dumps(record, ensure_ascii=False, default=str) + "\n"


def json_log_observer(options: usage.Options) -> FileLogObserver | None:
    """For C{[log] format = "json"}: a L{json_line} observer on the file twistd would log
    to (C{--logfile PATH}, C{-} or, under C{-n} without it, stdout; else C{twistd.log}),
    or C{None} under C{--syslog} (syslog keeps its own lines)."""
    parent = getattr(options, "parent", None) or {}
    if parent.get("syslog"):
        return None
    name = parent.get("logfile")
    if name == "-" or (not name and parent.get("nodaemon", True)):
        return FileLogObserver(sys.stdout, json_line)
    return FileLogObserver(logfile.LogFile.fromFullPath(name or "twistd.log"), json_line)


class StartError(Exception):
    """A start-up error after twistd forked into the background (no C{-n})."""


StartError.__module__ = "builtins"  # twistd shows "StartError: ..." in its 100-byte report


class _StartGuard(MultiService):
    """Turns a listen failure at start into the one-line error of the module docstring.

    Without C{-n}, twistd forks before starting the services and its first process waits
    for the child's report, which only an C{Exception} makes (a C{SystemExit} there leaves
    that process waiting forever, and the child's stderr is /dev/null): the line then goes
    to the log and to twistd's "An error has occurred: ..." on the terminal, exit status 1.
    """

    def __init__(
        self,
        config: Config,
        server: IService,
        daemon: bool = False,
        log_observer: FileLogObserver | None = None,
    ) -> None:
        super().__init__()
        self.config = config
        self.daemon = daemon
        self.log_observer = log_observer
        server.setServiceParent(self)

    def setServiceParent(self, parent: Any) -> None:
        # twistd makes the Application, adds this service to it, then starts logging to the
        # application's ILogObserver component if it has one (AppLogger.start): so the
        # JSON observer gets every event, twistd's first lines and the config warnings too.
        if self.log_observer is not None and isinstance(parent, Componentized):
            parent.setComponent(ILogObserver, self.log_observer)
        super().setServiceParent(parent)

    def _fail(self, message: str) -> NoReturn:
        if not self.daemon:
            _fail(message)
        log.error("twistedmail: error: {message}", message=message)
        raise StartError(message.removeprefix(f"{_where(self.config)}: "))

    def privilegedStartService(self) -> None:
        try:
            super().privilegedStartService()
        except CannotListenError as e:
            self._cannot_listen(e)

    def startService(self) -> None:
        quiet_dns_client(globalLogPublisher)  # twistd's log observer is in place by now
        from twisted.internet import reactor

        from twistedmail.loglines import batch_log

        batch_log(globalLogPublisher, reactor)  # its lines written once per reactor turn
        # The control socket is bound and the store opened here, after twistd forked and
        # dropped root (service.py).
        try:
            super().startService()
        except CannotListenError as e:
            self._cannot_listen(e)
        except ConfigError as e:
            self._fail(str(e))

    def _cannot_listen(self, e: CannotListenError) -> NoReturn:
        reason = e.socketError.strerror if hasattr(e.socketError, "strerror") else e.socketError
        if isinstance(e.port, bytes | str):  # the UNIX control socket in the data dir
            path = e.port.decode(errors="replace") if isinstance(e.port, bytes) else e.port
            hint = " (is another server running on this data_dir?)" if "lock" in str(reason) else ""
            self._fail(
                f"{_where(self.config)}: [server] data_dir: cannot listen on {path}: {reason}{hint}"
            )
        # The service is named "<listener>@<host:port>" (service.MailServer).
        name = next(
            (
                s.name
                for server in self
                for s in server
                if s.name and s.name.endswith(f"@{e.interface}:{e.port}")
            ),
            None,
        )
        key = f"[listen] {name.split('@')[0]}" if name else "[listen]"
        self._fail(
            f"{_where(self.config)}: {key}: cannot listen on {e.interface}:{e.port}: {reason}"
        )


def run_as(options: usage.Options) -> tuple[int, int] | None:
    """The C{(uid, gid)} of C{twistd -u USER [-g GROUP]}, or C{None} without C{-u}/C{-g}.

    twistd binds the ports (C{privilegedStartService}) as root, then switches to them; a
    missing C{-g} means the user's primary group, as twistd does.
    """
    parent = getattr(options, "parent", None)
    if parent is None:
        return None
    uid, gid = parent.get("uid"), parent.get("gid")
    if uid is None and gid is None:
        return None
    if uid is None:
        uid = os.getuid()
    if gid is None:
        gid = pwd.getpwuid(uid).pw_gid
    return int(uid), int(gid)


def require_named_user(config: Config, options: usage.Options) -> None:
    """@raise ConfigError: C{twistd -u N} names a uid without a user name (L{_switch_name})."""
    parent = getattr(options, "parent", None)
    uid = parent.get("uid") if parent is not None else None
    if uid is not None:
        _switch_name(config, int(uid), owner=False)


def _switch_name(config: Config, uid: int, owner: bool) -> str:
    """The user name of C{uid}, which twistd switches to after binding the ports: given
    with C{-u}, or (C{owner}) the data dir's owner L{take_data_dir_owner} takes.  The one
    check that it has one.

    @raise ConfigError: it has none: twistd's switch (initgroups) would fail with a KeyError
        traceback after the ports were bound.
    """
    name = user_name(uid)
    if name is not None:
        return name
    if owner:
        raise ConfigError(
            f"{_where(config)}: [server] data_dir: {config.server.data_dir} belongs to uid"
            f" {uid}, which has no user name here (the server, started as root without"
            " -u, would run as it): chown -R it to the server's user, or start with -u USER"
            " -g GROUP"
        )
    raise ConfigError(
        f"{_where(config)}: twistd -u {uid}: uid {uid} has no user name here (twistd needs"
        " one to switch to it): create the user, or give -u a user that exists"
    )


def take_data_dir_owner(config: Config, options: usage.Options) -> tuple[int, int] | None:
    """Started as root without C{-u}/C{-g} on a data dir another user owns (handed over by a
    C{twistd -u} start, or made by that user): run as its owner, as with C{twistd -u
    OWNER -g GROUP}, so that nothing is written there as root (the CLI acts as that owner
    too; Postfix and Dovecot never write their data as root).  Sets twistd's C{uid}/C{gid},
    which it switches to after binding the ports (C{privilegedStartService}).

    @return: the (uid, gid) taken, or C{None}: not root, C{-u}/C{-g} given, not run by
        twistd, or a data dir that root owns or that does not exist yet (made by root: the
        quick start runs as root; give C{-u} in production).
    @raise ConfigError: the owner's uid has no user name (twistd could not switch to it).
    """
    parent = getattr(options, "parent", None)
    if parent is None or os.geteuid() != 0 or run_as(options) is not None:
        return None
    try:
        st = config.server.data_dir.stat()
    except OSError:
        return None
    if st.st_uid == 0:
        return None
    name = _switch_name(config, st.st_uid, owner=True)
    parent["uid"], parent["gid"] = st.st_uid, st.st_gid
    log.info(
        "started as root without -u: running as uid {uid} gid {gid} ({name}), the owner of"
        " data dir {data}",
        uid=st.st_uid,
        gid=st.st_gid,
        name=name,
        data=str(config.server.data_dir),
    )
    return st.st_uid, st.st_gid


def _searchable_by(path: Path, uid: int, gids: set[int]) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid in gids:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def hand_over_data_dir(config: Config, uid: int, gid: int) -> int:
    """Make the data dir usable by C{uid:gid}, the user twistd switches to (C{-u}/C{-g}).

    Called as root before the privileges are dropped: every file and directory under the
    data dir (store, Maildirs, queue, self-signed certificate, DKIM keys) not yet owned by
    C{uid:gid} is chowned to it (symlinks are not followed).  Returns how many were.

    @raise ConfigError: a directory above the data dir cannot be entered by that user (the
        one-line message says what to C{chmod}), or a chown fails.
    """
    data_dir = config.server.data_dir
    name, gids = user_groups(uid, gid)
    where = f"{config.source or 'built-in defaults'}: [server] data_dir"
    for parent in reversed(data_dir.parents):
        if not _searchable_by(parent, uid, gids):
            raise ConfigError(
                f"{where}: user {name} cannot enter {parent} (run: chmod o+x {parent},"
                f" or choose a data_dir it can reach)"
            )
    changed = 0
    try:
        for path in [data_dir, *data_dir.rglob("*")]:
            st = path.lstat()
            if (st.st_uid, st.st_gid) != (uid, gid):
                os.lchown(path, uid, gid)
                changed += 1
    except OSError as e:
        raise ConfigError(
            f"{where}: cannot hand {e.filename} to user {name}: {e.strerror}"
            f" (run: chown -R {uid}:{gid} {data_dir})"
        ) from None
    return changed


def load_before_the_drop() -> None:
    """Import now what is otherwise imported at first use: every text codec (a message's
    charset in SEARCH, RFC 2047 headers, IDNA's punycode), the IDNA mapping table and the
    Public Suffix List (DMARC).  After C{twistd -u} the server may no longer read its own
    Python installation (a venv whose base interpreter lives under a 0700 home, as pyenv's
    under C{/root}): a first use then failed with C{LookupError: unknown encoding} — inbound
    checks were skipped with a traceback per message and a SEARCH in ISO-8859-2 silently
    found nothing (found by QA).  About 0.3 s and 5 MiB, only when privileges are dropped."""
    for module in pkgutil.iter_modules(encodings.__path__):
        with contextlib.suppress(Exception):  # a codec of another platform (mbcs, oem)
            importlib.import_module(f"encodings.{module.name}")
    from twistedmail.address import normalize_domain
    from twistedmail.mailauth import organizational_domain

    normalize_domain("xn--fa-hia.test")  # idna's UTS 46 table
    organizational_domain("example.org")  # the bundled Public Suffix List


def hand_over_privileges(config: Config, run_as: tuple[int, int] | None) -> None:
    """Before twistd drops root for C{run_as} (C{twistd -u/-g}): load what a first use would
    import later (L{load_before_the_drop}) and hand the data dir to that user
    (L{hand_over_data_dir}).  Nothing when not root or not switching user.

    @raise ConfigError: see L{hand_over_data_dir}.
    """
    if run_as is None or os.geteuid() != 0 or run_as[0] == 0:
        return
    load_before_the_drop()
    changed = hand_over_data_dir(config, *run_as)
    if changed:
        log.info(
            "data dir {data} handed to uid {uid} gid {gid} ({n} entries)",
            data=str(config.server.data_dir),
            uid=run_as[0],
            gid=run_as[1],
            n=changed,
        )


def makeService(options: Options) -> IService:
    from twisted.internet import reactor

    try:
        config = load_config(Path(options["config"]) if options["config"] else None)
    except ConfigError as e:
        _fail(str(e))
    for warning in config.warnings:  # what check-config warns about, for the log too
        log.warn("config warning: {warning}", warning=warning)
    from twistedmail.service import MailServer
    from twistedmail.workers import supervise

    try:
        require_named_user(config, options)
        take_data_dir_owner(config, options)  # (before run_as is read: it sets -u/-g)
        server = MailServer(config, reactor)
        supervise(server, reactor, run_as(options))  # [server] workers (issue 10)
        hand_over_privileges(config, run_as(options))
    except ConfigError as e:
        _fail(str(e))
    except TLSConfigError as e:
        key = "[tls] cert/key" if config.tls.cert else "[server] data_dir (self-signed certificate)"
        _fail(f"{_where(config)}: {key}: {e}")
    parent = getattr(options, "parent", None)
    daemon = parent is not None and not parent.get("nodaemon", True)
    observer = json_log_observer(options) if config.log.format == "json" else None
    return _StartGuard(config, server, daemon=daemon, log_observer=observer)
