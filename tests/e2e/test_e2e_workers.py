"""C{[server] workers} end to end (issue 10): the real twistd with workers = 2, clients
landing on both processes (told apart by the PID holding the server side of their socket,
from /proc), and what they share: one folder written by both at once (no lost flag, no
duplicate UID), IDLE seeing the other process's delivery, the throttle, the login cache,
the connection counts and the metrics; a worker killed is started again with no
acknowledged mail lost; the parent's end ends the workers."""

from __future__ import annotations

import imaplib
import json
import os
import re
import resource
import shutil
import signal
import smtplib
import subprocess
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import imapclient
import pytest
from e2e_server import (
    PASSWORDS,
    Server,
    client_tls,
    free_ports,
    imap_client,
    imap_login,
    running,
    serving_pid,
)

from twistedmail import control

pytestmark = pytest.mark.skipif(
    not os.path.isdir("/proc/self/fd"), reason="needs /proc to tell the processes apart"
)

ALICE = "alice@example.test"
FAIL2BAN_FILTER = Path(__file__).resolve().parents[2] / "etc/fail2ban/filter.d/twistedmail.conf"


def wait_for(check: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout:.0f} s: {what}")
        time.sleep(0.05)


def wait_for_workers(server: Server, exclude: tuple[int, ...] = ()) -> list[int]:
    return server.wait_for_workers(exclude)


def imap_on_each_process(server: Server) -> dict[int, imapclient.IMAPClient]:
    """One logged-in session served by each process (parent and worker): new connections
    until both have one (the kernel spreads them; the extra ones are logged out)."""
    wanted = {server.pid, *server.worker_pids()}
    found: dict[int, imapclient.IMAPClient] = {}
    for _ in range(200):
        c = imap_client(server)
        pid = serving_pid(server, c._imap.sock)
        if pid in found:
            c.logout()
        else:
            found[pid] = c
        if set(found) == wanted:
            return found
    raise AssertionError(f"200 connections, all on {sorted(found)}")


def smtp_on(server: Server, pid: int) -> smtplib.SMTP:
    """An SMTP session on port 25 served by process C{pid}."""
    for _ in range(200):
        s = smtplib.SMTP("127.0.0.1", server.ports["smtp"], timeout=60)
        assert s.sock is not None
        if serving_pid(server, s.sock) == pid:
            return s
        s.quit()
    raise AssertionError(f"200 SMTP connections, none on {pid}")


def message(subject: str) -> bytes:
    return (
        b"From: x@elsewhere.test\r\nTo: alice@example.test\r\nSubject: %s\r\n\r\nbody\r\n"
        % subject.encode()
    )


def uidlist(server: Server) -> list[tuple[int, str]]:
    """(UID, base name) of each line of INBOX's dovecot-uidlist, in file order."""
    lines = (server.maildir(ALICE) / "dovecot-uidlist").read_text().splitlines()[1:]
    out = []
    for line in lines:
        head, _, name = line.partition(":")
        out.append((int(head.split()[0]), name))
    return out


def on_disk(server: Server) -> dict[str, str]:
    """Subject -> Maildir flag letters of every message file in INBOX."""
    out = {}
    for path in server.messages(ALICE):
        subject = re.search(rb"^Subject: (.*?)\r?$", path.read_bytes(), re.M)
        assert subject is not None
        flags = path.name.partition(":2,")[2] if ":2," in path.name else ""
        out[subject.group(1).decode()] = flags
    return out


@pytest.fixture
def two(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path, workers=2)
    with running(srv):
        wait_for_workers(srv)
        yield srv


# -- tests ----------------------------------------------------------------------------------


def test_connections_are_spread_and_counted_in_every_process(two: Server) -> None:
    """With workers = 2 both processes serve IMAP sessions; `twistedmail connections` counts
    the sessions of both, and after logout every process is back to its descriptors."""
    pids = [two.pid, *two.worker_pids()]
    start_fds = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in pids}
    start = control.connections(two.data_dir / "control")
    sessions = imap_on_each_process(two)
    more = [imap_client(two) for _ in range(6)]
    counts = control.connections(two.data_dir / "control")
    assert counts["imap_sessions"] == start["imap_sessions"] + 8
    assert counts["imaps"] == start["imaps"] + 8
    for c in [*sessions.values(), *more]:
        c.logout()

    def back() -> bool:
        fds = {pid: len(os.listdir(f"/proc/{pid}/fd")) for pid in pids}
        return fds == start_fds and control.connections(two.data_dir / "control") == start

    wait_for(back, "descriptors and counts back to their start in every process")


def test_one_folder_written_by_two_workers_and_smtp_at_once(two: Server) -> None:
    """Two IMAP sessions on different processes APPEND, STORE flags and EXPUNGE in INBOX
    while SMTP delivers into it: no lost flag, no duplicate UID, UIDs strictly increasing
    in dovecot-uidlist (RFC 3501 §2.3.1.1), and exactly the expected flags on disk."""
    sessions = imap_on_each_process(two)
    (pid_a, a), (pid_b, b) = sorted(sessions.items())
    for c in (a, b):
        c.select_folder("INBOX")
    n = 25
    uids: dict[str, list[int]] = {"A": [], "B": []}
    errors: list[BaseException] = []

    def appender(name: str, client: imapclient.IMAPClient, flag: bytes) -> None:
        try:
            for i in range(n):
                reply = client.append("INBOX", message(f"{name}-{i}"))
                uid = int(re.search(rb"APPENDUID \d+ (\d+)", reply).group(1))  # type: ignore[union-attr]
                uids[name].append(uid)
                client.add_flags([uid], [flag])
            if name == "A":  # half of A's messages expunged, one at a time
                for uid in uids[name][::2]:
                    client.add_flags([uid], [b"\\Deleted"])
                    client.uid_expunge([uid])
        except BaseException as e:  # reported by the main thread
            errors.append(e)

    def smtp() -> None:
        try:
            for i in range(n):
                with smtplib.SMTP("127.0.0.1", two.ports["smtp"], timeout=60) as s:
                    s.sendmail("x@elsewhere.test", [ALICE], message(f"S-{i}"))
        except BaseException as e:
            errors.append(e)

    threads = [
        threading.Thread(target=appender, args=("A", a, b"\\Seen")),
        threading.Thread(target=appender, args=("B", b, b"\\Answered")),
        threading.Thread(target=smtp),
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    assert errors == []
    assert len(set(uids["A"]) | set(uids["B"])) == 2 * n  # no UID given twice
    expected = {f"A-{i}": "S" for i in range(1, n, 2)}
    expected |= {f"B-{i}": "R" for i in range(n)}
    expected |= {f"S-{i}": "" for i in range(n)}
    a.logout()
    b.logout()
    assert on_disk(two) == expected
    # SMTP writes to new/ without a UID; a session's scan gives it one. The last deliveries
    # may come after both sessions' last rescan: a SELECT first (RFC 3501 §2.3.1.1)
    check = imap_client(two)
    check.select_folder("INBOX")
    listed = uidlist(two)
    assert [u for u, _ in listed] == sorted({u for u, _ in listed})  # strictly increasing
    files = {p.name.partition(":2,")[0] for p in two.messages(ALICE)}
    by_name = {name: uid for uid, name in listed}
    assert files <= set(by_name)  # every message has its one UID
    stale = {uid for name, uid in by_name.items() if name not in files}
    assert stale <= set(uids["A"][::2])  # the list drops expunged lines at its next rewrite
    fetched = check.fetch(check.search("ALL"), ["FLAGS", "BODY.PEEK[HEADER.FIELDS (SUBJECT)]"])
    flags_by_subject = {
        data[b"BODY[HEADER.FIELDS (SUBJECT)]"].decode().strip().removeprefix("Subject: "): {
            f.decode() for f in data[b"FLAGS"] if f != b"\\Recent"
        }
        for data in fetched.values()
    }
    letters = {"S": "\\Seen", "R": "\\Answered"}
    assert flags_by_subject == {s: {letters[f] for f in v} for s, v in expected.items()}
    check.logout()
    assert {pid_a, pid_b} == {two.pid, *two.worker_pids()}


def test_idle_in_one_process_sees_a_delivery_by_the_other(two: Server) -> None:
    """IDLE (RFC 2177) on one process gets EXISTS for a message delivered by the other."""
    for idle_pid, c in imap_on_each_process(two).items():
        other = next(p for p in (two.pid, *two.worker_pids()) if p != idle_pid)
        c.select_folder("INBOX")
        before = c.folder_status("INBOX", ["MESSAGES"])[b"MESSAGES"]
        c.idle()
        s = smtp_on(two, other)
        s.sendmail("x@elsewhere.test", [ALICE], message(f"to {idle_pid}"))
        s.quit()
        responses = c.idle_check(timeout=30)
        c.idle_done()
        assert (before + 1, b"EXISTS") in responses
        c.logout()


def test_a_block_made_in_one_process_holds_in_the_other(tmp_path: Path) -> None:
    """Failed logins on one process block the account from that IP on the other too
    (the throttle's outcomes are shared): the right password is refused there."""
    srv = Server(tmp_path, workers=2, extra_config="")
    config = srv.config.read_text().replace("[limits]\n", "[limits]\nlogin_block_after = 2\n", 1)
    srv.config.write_text(config)
    with running(srv):
        wait_for_workers(srv)
        sessions = imap_on_each_process(srv)
        (pid_a, a), (pid_b, b) = sorted(sessions.items())
        a.logout()
        b.logout()
        bad = failing_on(srv, pid_a, 2)
        assert bad == 2
        refused = login_on(srv, pid_b, PASSWORDS[ALICE])
        assert refused.startswith("[UNAVAILABLE]"), refused


def login_on(server: Server, pid: int, password: str) -> str:
    """C{OK}, or the tagged NO text, of a LOGIN of alice on process C{pid}."""
    return imap_login(server, ALICE, password, on=pid)


def failing_on(server: Server, pid: int, count: int) -> int:
    failed = 0
    for _ in range(count):
        failed += login_on(server, pid, "wrong-password") != "OK"
    return failed


def test_a_password_change_flushes_the_login_cache_of_every_process(two: Server) -> None:
    """After `twistedmail user passwd`, the old password is refused on every process, though
    each had cached a login with it (Dovecot's auth_cache is flushed the same way)."""
    pids = [two.pid, *two.worker_pids()]
    for pid in pids:
        assert login_on(two, pid, PASSWORDS[ALICE]) == "OK"
    two.cli("user", "passwd", ALICE, "--password-stdin", stdin="a-new-password-9\n")
    for pid in pids:
        assert login_on(two, pid, PASSWORDS[ALICE]) != "OK"
        assert login_on(two, pid, "a-new-password-9") == "OK"


def test_metrics_count_the_connections_of_every_process(tmp_path: Path) -> None:
    """/metrics on [listen] metrics adds up the workers' counters and open sessions."""
    (port,) = free_ports(1)
    srv = Server(tmp_path, workers=2, extra_config="")
    srv.config.write_text(
        srv.config.read_text().replace("[listen]\n", f'[listen]\nmetrics = "127.0.0.1:{port}"\n')
    )
    with running(srv):
        wait_for_workers(srv)
        sessions = imap_on_each_process(srv)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read()
        text = body.decode()
        logins = re.search(r'twistedmail_logins_total\{outcome="ok",service="imap"\} (\S+)', text)
        assert logins is not None and float(logins.group(1)) >= 2
        open_now = re.search(r'twistedmail_sessions_open\{service="imaps"\} (\S+)', text)
        assert open_now is not None and float(open_now.group(1)) == 2.0
        accepted = re.search(r'twistedmail_connections_total\{service="imaps"\} (\S+)', text)
        assert accepted is not None and float(accepted.group(1)) >= 2
        for c in sessions.values():
            c.logout()


def test_a_killed_worker_is_started_again_and_no_acknowledged_mail_is_lost(
    two: Server,
) -> None:
    """kill -9 of the worker while it accepts SMTP: the parent starts a new one; every
    message that got its 250 is in the Maildir."""
    (worker,) = two.worker_pids()
    acknowledged: list[str] = []
    stop = threading.Event()

    def send() -> None:
        i = 0
        while not stop.is_set() and i < 5000:
            subject = f"K-{i}"
            i += 1
            try:
                with smtplib.SMTP("127.0.0.1", two.ports["smtp"], timeout=30) as s:
                    s.sendmail("x@elsewhere.test", [ALICE], message(subject))
                acknowledged.append(subject)
            except (OSError, smtplib.SMTPException):
                pass  # a connection the killed worker held: not acknowledged

    sender = threading.Thread(target=send)
    sender.start()
    try:
        wait_for(lambda: len(acknowledged) >= 10, "10 messages acknowledged")
        os.kill(worker, signal.SIGKILL)
        (new,) = wait_for_workers(two, exclude=(worker,))
        assert new != worker
        count = len(acknowledged)
        wait_for(lambda: len(acknowledged) >= count + 10, "10 more after the restart")
    finally:
        stop.set()
        sender.join(120)
    assert "worker 1 (pid %d) exited" % worker in two.log.read_text()
    assert set(acknowledged) <= set(on_disk(two))


def test_a_zygote_that_cannot_be_started_again_is_retried(two: Server) -> None:
    """kill -9 of the workers' zygote while the parent cannot start another (here out of
    descriptors; with C{twistd -u}, an interpreter the user cannot read): one log line
    and a retry, no traceback; once it can, the zygote and its worker are back."""
    (worker,) = two.worker_pids()
    status = Path(f"/proc/{worker}/status").read_text()
    zygote = int(re.search(r"^PPid:\s+(\d+)$", status, re.M).group(1))  # type: ignore[union-attr]
    limits = resource.prlimit(two.pid, resource.RLIMIT_NOFILE)
    resource.prlimit(two.pid, resource.RLIMIT_NOFILE, (3, limits[1]))  # no new descriptor
    try:
        os.kill(zygote, signal.SIGKILL)
        wait_for(
            lambda: "worker 1 not started: cannot start the workers' zygote" in two.log.read_text(),
            "the failed start logged",
        )
    finally:
        resource.prlimit(two.pid, resource.RLIMIT_NOFILE, limits)
    (new,) = wait_for_workers(two, exclude=(worker,))
    assert new != worker
    log = two.log.read_text()
    assert "Traceback" not in log
    assert "Too many open files" in log
    assert len(imap_on_each_process(two)) == 2


def test_daemonized_server_starts_and_stops_its_workers(tmp_path: Path) -> None:
    """twistd without -n: the daemon starts its worker, both serve, and stopping the daemon
    (SIGTERM) ends the worker too."""
    srv = Server(tmp_path, workers=2)
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    srv.start(daemon=True)
    try:
        (worker,) = wait_for_workers(srv)
        sessions = imap_on_each_process(srv)
        assert set(sessions) == {srv.pid, worker}
        for c in sessions.values():
            c.logout()
    finally:
        srv.stop()
    wait_for(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker), "worker gone")


def _zombie(pid: int) -> bool:
    try:
        return "\nState:\tZ" in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return True


def test_workers_stop_when_the_parent_is_killed(tmp_path: Path) -> None:
    """kill -9 of the parent leaves no worker serving on (PR_SET_PDEATHSIG)."""
    srv = Server(tmp_path, workers=2)
    with running(srv):
        (worker,) = wait_for_workers(srv)
        srv.stop(signal.SIGKILL)
    wait_for(lambda: not Path(f"/proc/{worker}").exists() or _zombie(worker), "worker gone")


def test_sighup_reloads_the_certificate_in_every_process(two: Server) -> None:
    """SIGHUP to the parent reaches the worker: both log the TLS reload."""
    (worker,) = two.worker_pids()
    assert two.pid is not None
    os.kill(two.pid, signal.SIGHUP)
    wait_for(
        lambda: f"worker={worker}] TLS certificate reloaded" in two.log.read_text(),
        "the worker's reload line",
    )
    assert two.log.read_text().count("TLS certificate reloaded") == 2


def test_logout_reports_no_change_made_by_another_session(tmp_path: Path) -> None:
    """RFC 3501 §6.1.3: LOGOUT answers BYE then the tagged OK, with no FETCH of a flag
    change another session made in between (imaptest's stress mode: "seq too high ...
    state=LOGOUT")."""
    srv = Server(tmp_path, workers=1)
    with running(srv):
        with smtplib.SMTP("127.0.0.1", srv.ports["smtp"]) as s:
            s.sendmail("x@elsewhere.test", [ALICE], message("one"))
        srv.wait_for_messages(ALICE, 1)
        leaving = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
        leaving.login(ALICE, PASSWORDS[ALICE])
        leaving.select("INBOX")
        other = imap_client(srv)
        other.select_folder("INBOX")
        other.add_flags([other.search("ALL")[0]], [b"\\Flagged"])
        other.logout()
        time.sleep(1)  # the change reaches the leaving session's folder view
        sock = leaving.sock
        sock.sendall(b"z LOGOUT\r\n")
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
        assert received.splitlines()[0].startswith(b"* BYE")
        assert [line.split()[0] for line in received.splitlines()] == [b"*", b"z"]


def imap_on(server: Server, pid: int) -> imaplib.IMAP4_SSL:
    """An IMAP connection (not logged in) served by process C{pid}."""
    for _ in range(200):
        c = imaplib.IMAP4_SSL("127.0.0.1", server.ports["imaps"], ssl_context=client_tls())
        if serving_pid(server, c.sock) == pid:
            return c
        c.logout()
    raise AssertionError(f"200 IMAP connections, none on {pid}")


@pytest.mark.parametrize("log_format", ["text", "json"])
def test_failed_logins_in_every_process_reach_the_log_for_fail2ban(
    tmp_path: Path, log_format: str
) -> None:
    """A failed login served by the parent and one served by a worker each log one line in
    the configured format, the worker's marked with its PID, and the shipped fail2ban
    filter matches both."""
    srv = Server(tmp_path, workers=2, extra_config=f'\n[log]\nformat = "{log_format}"\n')
    with running(srv):
        (worker,) = wait_for_workers(srv)
        assert srv.pid is not None
        for pid in (srv.pid, worker):
            c = imap_on(srv, pid)
            with pytest.raises(imaplib.IMAP4.error):
                c.login(ALICE, "wrong password")
            c.logout()
        wait_for(lambda: srv.log.read_text().count("login failed:") == 2, "two login failed lines")
        log = srv.log.read_text()
    failed = [line for line in log.splitlines() if "login failed:" in line]
    text = "login failed: service=imap user=alice@example.test ip=127.0.0.1"
    if log_format == "text":
        assert failed[0].endswith(f"[twistedmail.auth#warn] {text}")
        assert failed[1].endswith(f"[twistedmail.auth#warn worker={worker}] {text}")
    else:
        records = [json.loads(line) for line in failed]
        assert [(r["level"], r["namespace"], r["text"], r.get("worker")) for r in records] == [
            ("warn", "twistedmail.auth", text, None),
            ("warn", "twistedmail.auth", text, worker),
        ]
    regexes = re.search(r"^failregex\s*=\s*(.+?)\n(?=\S)", FAIL2BAN_FILTER.read_text(), re.M | re.S)
    assert regexes is not None
    hosts = []
    for line in failed:
        rest = line.split(" ", 1)[1] if log_format == "text" else line  # fail2ban cuts the time
        for regex in regexes.group(1).split("\n"):
            m = re.search(regex.strip().replace("<HOST>", r"(?P<host>[0-9a-fA-F.:]+)"), rest)
            if m:
                hosts.append(m.group("host"))
                break
    assert hosts == ["127.0.0.1", "127.0.0.1"]
    if shutil.which("fail2ban-regex"):
        out = subprocess.run(
            ["fail2ban-regex", str(srv.log), str(FAIL2BAN_FILTER)],
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        assert re.search(r"Failregex: 2 total", out), out
