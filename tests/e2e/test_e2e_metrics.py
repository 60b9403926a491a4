"""End to end (issue 13): the real Prometheus scrapes the real server's C{/metrics}
(with and without a bearer token, RFC 6750 §2.1), and C{twistedmail status} reads the
running server over the control socket."""

from __future__ import annotations

import imaplib
import json
import os
import shutil
import smtplib
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server, client_tls, free_ports

PROMETHEUS = shutil.which("prometheus") or "/usr/bin/prometheus"
TOKEN = "scrape-token-7f3a9c"
MESSAGE = (
    b"From: sender@remote.test\r\nTo: alice@example.test\r\nSubject: metrics\r\n"
    b"Message-ID: <metrics-1@remote.test>\r\n\r\nCounted once.\r\n"
)


def metrics_server(
    root: Path, token: bool = False, web: bool = False, workers: int | None = None
) -> Server:
    """A server with C{[listen] metrics} on a free loopback port (and a token file; and the
    http/https listeners; C{[server] workers} when given)."""
    srv = Server(root, web=web, workers=workers)
    srv.metrics_port = free_ports(1)[0]  # type: ignore[attr-defined]
    text = srv.config.read_text().replace(
        "[listen]\n", f'[listen]\nmetrics = "127.0.0.1:{srv.metrics_port}"\n', 1
    )
    if token:
        token_file = root / "metrics.token"
        token_file.write_text(TOKEN + "\n")
        token_file.chmod(0o600)
        text += f'\n[metrics]\ntoken_file = "{token_file}"\n'
    srv.config.write_text(text)
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    return srv


class Prometheus:
    """The real Prometheus on a loopback port, scraping one target every second."""

    def __init__(self, root: Path, target: str, credentials: str | None = None) -> None:
        root.mkdir(parents=True, exist_ok=True)
        self.port = free_ports(1)[0]
        auth = (
            f"    authorization:\n      type: Bearer\n      credentials: {credentials}\n"
            if credentials
            else ""
        )
        config = root / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n  - job_name: twistedmail\n    scrape_interval: 1s\n"
            "    scrape_timeout: 1s\n"
            f"{auth}    static_configs:\n      - targets: ['{target}']\n"
        )
        self.log = (root / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={config}",
                f"--storage.tsdb.path={root / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
        )
        deadline = time.monotonic() + 60
        while True:
            try:
                with urllib.request.urlopen(self.url("/-/ready"), timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise AssertionError("prometheus did not become ready: " + self.output())
            time.sleep(0.2)

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def output(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")

    def query(self, expression: str) -> list[dict[str, object]]:
        """The result vector of an instant query (C{/api/v1/query})."""
        query = urllib.parse.urlencode({"query": expression})
        with urllib.request.urlopen(self.url(f"/api/v1/query?{query}"), timeout=5) as r:
            answer = json.load(r)
        assert answer["status"] == "success", answer
        result: list[dict[str, object]] = answer["data"]["result"]
        return result

    def wait_for(self, expression: str, value: str, timeout: float = 60) -> list[str]:
        """Poll C{expression} until one series has C{value} (bounded wait); return the values
        of the last answer (so the caller asserts them whole)."""
        deadline = time.monotonic() + timeout
        while True:
            values = [str(s["value"][1]) for s in self.query(expression)]  # type: ignore[index]
            if value in values or time.monotonic() > deadline:
                return values
            time.sleep(0.5)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=30)
        self.log.close()


needs_prometheus = pytest.mark.skipif(
    not os.access(PROMETHEUS, os.X_OK), reason="prometheus (Debian package) not installed"
)


@pytest.fixture
def plain(tmp_path: Path) -> Iterator[Server]:
    srv = metrics_server(tmp_path / "server")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


@pytest.fixture
def with_token(tmp_path: Path) -> Iterator[Server]:
    srv = metrics_server(tmp_path / "server", token=True)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def send(srv: Server) -> None:
    with smtplib.SMTP("127.0.0.1", srv.ports["smtp"], timeout=30) as s:
        s.sendmail("sender@remote.test", ["alice@example.test"], MESSAGE)


def get(
    srv: Server, headers: dict[str, str] | None = None, port: int | None = None
) -> tuple[int, dict[str, str], bytes]:
    port = port or srv.metrics_port  # type: ignore[attr-defined]
    request = urllib.request.Request(f"http://127.0.0.1:{port}/metrics", headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=10) as r:
            return r.status, dict(r.headers), r.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


@needs_prometheus
def test_prometheus_reads_the_received_counter(plain: Server, tmp_path: Path) -> None:
    """A message over SMTP shows in Prometheus as received 1, delivered 1, and the domain's
    stored bytes equal the file written."""
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{plain.metrics_port}")  # type: ignore[attr-defined]
    try:
        assert prometheus.wait_for('up{job="twistedmail"}', "1") == ["1"]
        assert prometheus.wait_for('twistedmail_messages_received_total{service="smtp"}', "0") == [
            "0"
        ]
        send(plain)
        [stored] = plain.wait_for_messages("alice@example.test", 1)
        assert prometheus.wait_for('twistedmail_messages_received_total{service="smtp"}', "1") == [
            "1"
        ]
        assert prometheus.wait_for("twistedmail_messages_delivered_total", "1") == ["1"]
        size = str(stored.stat().st_size)
        assert prometheus.wait_for('twistedmail_stored_bytes{domain="example.test"}', size) == [
            size
        ]
        assert prometheus.wait_for('twistedmail_users{domain="example.test"}', "2") == ["2"]
        assert prometheus.wait_for("twistedmail_queue_messages", "0") == ["0"]
        assert prometheus.wait_for('twistedmail_delivery_seconds_count{path="local"}', "1") == ["1"]
    finally:
        prometheus.stop()


@needs_prometheus
def test_prometheus_with_bearer_token(with_token: Server, tmp_path: Path) -> None:
    """With [metrics] token_file, Prometheus sending the token scrapes (up 1, the login
    counters read back); one without it is refused (up 0)."""
    target = f"127.0.0.1:{with_token.metrics_port}"  # type: ignore[attr-defined]
    good = Prometheus(tmp_path / "good", target, credentials=TOKEN)
    bad = Prometheus(tmp_path / "bad", target)
    try:
        with smtplib.SMTP("127.0.0.1", with_token.ports["submission"], timeout=30) as s:
            s.starttls(context=client_tls())
            s.ehlo()
            s.user, s.password = "alice@example.test", "wrong password"
            with pytest.raises(smtplib.SMTPAuthenticationError):
                s.auth("PLAIN", s.auth_plain)  # one attempt (login() would try LOGIN too)
            s.login("alice@example.test", PASSWORDS["alice@example.test"])
        assert good.wait_for('up{job="twistedmail"}', "1") == ["1"]
        assert bad.wait_for('up{job="twistedmail"}', "0") == ["0"]
        expression = 'twistedmail_logins_total{service="smtp",outcome="%s"}'
        assert good.wait_for(expression % "ok", "1") == ["1"]
        assert good.wait_for(expression % "failed", "1") == ["1"]
        assert bad.query("twistedmail_logins_total") == []
    finally:
        good.stop()
        bad.stop()


def test_token_required(with_token: Server) -> None:
    """No token or a wrong one: 401 with a Bearer challenge (RFC 6750 §3); the right one: the
    exposition, counting the connections seen so far."""
    status, headers, _ = get(with_token)
    assert (status, headers["WWW-Authenticate"]) == (401, 'Bearer realm="twistedmail"')
    status, headers, _ = get(with_token, {"Authorization": "Bearer not-the-token"})
    assert (status, headers["WWW-Authenticate"]) == (
        401,
        'Bearer realm="twistedmail", error="invalid_token"',
    )
    status, headers, body = get(with_token, {"Authorization": f"Bearer {TOKEN}"})
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    lines = body.decode().splitlines()
    # The start-up probe of e2e_server connected once to every listener.
    assert 'twistedmail_connections_total{service="smtp"} 1.0' in lines
    assert 'twistedmail_sessions_open{service="imap"} 0.0' in lines


def test_metrics_on_the_http_listener(tmp_path: Path) -> None:
    """The http listener serves /metrics only with a token configured (a public listener
    never serves it without one): 404 without [metrics] token_file, else 401 / 200."""
    for token in (False, True):
        srv = metrics_server(tmp_path / f"server-{token}", token=token, web=True)
        srv.start()
        try:
            status, _, _ = get(srv, port=srv.ports["http"])
            assert status == (401 if token else 404)
            status, _, body = get(srv, {"Authorization": f"Bearer {TOKEN}"}, srv.ports["http"])
            assert status == (200 if token else 404)
            if token:
                assert b'twistedmail_connections_total{service="http"} 3.0' in body.splitlines()
        finally:
            srv.stop()


def test_token_file_readable_by_others_refused(tmp_path: Path) -> None:
    """A token file group/others can read stops the start with one line naming it."""
    srv = metrics_server(tmp_path / "server", token=True)
    token_file = tmp_path / "server" / "metrics.token"
    token_file.chmod(0o640)
    with pytest.raises(AssertionError) as e:
        srv.start()
    srv.stop()
    assert (
        f"[metrics] token_file: {token_file} is readable by others (mode 640); chmod 600 it"
        in str(e.value)
    )


def test_status(plain: Server) -> None:
    """`twistedmail status --json` gives every field; the table shows the same figures."""
    send(plain)
    plain.wait_for_messages("alice@example.test", 1)
    size = plain.messages("alice@example.test")[0].stat().st_size
    status = json.loads(plain.cli("status", "--json").stdout)
    assert set(status) == {
        "version",
        "started",
        "uptime",
        "listeners",
        "connections",
        "queue",
        "blocked_ips",
        "other_blocks",
        "domains",
        "workers",
    }
    assert status["version"] == plain.cli("--version").stdout.split()[1]
    assert 0 <= status["uptime"] <= time.time() - status["started"] + 1
    expected = {name: [f"127.0.0.1:{port}"] for name, port in plain.ports.items()}
    expected["metrics"] = [f"127.0.0.1:{plain.metrics_port}"]  # type: ignore[attr-defined]
    expected["control"] = [str(plain.data_dir / "control")]
    assert status["listeners"] == expected
    assert status["connections"]["smtp"] == 0
    assert status["connections"]["control"] == 1
    assert status["queue"] == {"messages": 0, "oldest": None, "oldest_age": 0}
    assert (status["blocked_ips"], status["other_blocks"]) == ([], 0)
    assert status["domains"] == {"example.test": {"users": 2, "bytes": size, "messages": 1}}
    lines = plain.cli("status").stdout.splitlines()
    assert lines[0].startswith(f"twistedmail {status['version']}, up ")
    assert f"listen    smtp         127.0.0.1:{plain.ports['smtp']}" in lines
    assert "queue     0 message(s)" in lines
    assert "blocked   none" in lines
    assert lines[-2:] == [
        "DOMAIN                          USERS          BYTES  MESSAGES",
        f"example.test                        2 {size:>14}         1",
    ]


def test_status_lists_workers(tmp_path: Path) -> None:
    """`twistedmail status` lists every process serving the listeners ([server] workers = 2:
    the parent and one worker) with its pid, open connections and logged-in IMAP sessions."""
    srv = metrics_server(tmp_path / "server", workers=2)
    srv.start()
    try:
        (worker,) = srv.worker_pids()
        imap = imaplib.IMAP4_SSL("127.0.0.1", srv.ports["imaps"], ssl_context=client_tls())
        try:
            imap.login("alice@example.test", PASSWORDS["alice@example.test"])
            status = json.loads(srv.cli("status", "--json").stdout)
            procs = status["workers"]
            assert [(p["pid"], p["role"]) for p in procs] == [
                (srv.pid, "parent"),
                (worker, "worker"),
            ]
            # the one IMAP client, served by whichever process the kernel gave it to
            assert sorted((p["connections"], p["imap_sessions"]) for p in procs) == [
                (0, 0),
                (1, 1),
            ]
            lines = srv.cli("status").stdout.splitlines()
            assert [line for line in lines if line.startswith("worker ")] == [
                f"worker    pid {p['pid']} ({p['role']}): {p['connections']} connection(s),"
                f" {p['imap_sessions']} IMAP session(s)"
                for p in procs
            ]
        finally:
            imap.logout()
    finally:
        srv.stop()


def test_status_without_server(tmp_path: Path) -> None:
    """No running server: one line on stderr, exit 1."""
    srv = metrics_server(tmp_path / "server")
    result = srv.cli("status", check=False)
    assert (result.returncode, result.stdout) == (1, "")
    assert result.stderr == "twistedmail: error: no running server\n"
