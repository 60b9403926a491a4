"""Thunderbird's own autoconfig code reads our answer: the real Thunderbird (headless,
driven over Marionette in its chrome context) fetches C{/mail/config-v1.1.xml} from the
real twistd with its C{fetchHTTP} (the function its account setup uses, which parses the
response as XML into JXON) and hands it to C{readFromXML} (C{readFromXML.sys.mjs}, the
parser that checks every field); the resulting account config is compared field by field.
Skips when Thunderbird is not installed.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import Server, free_ports

HERE = Path(__file__).parent
ALICE = "alice@example.test"

pytestmark = pytest.mark.skipif(
    shutil.which("thunderbird") is None,
    reason="Thunderbird is not installed (apt-get install thunderbird); .ci/run installs it",
)

# Run in Thunderbird's chrome context; arguments[0] the URL, arguments[1] the address.
# Marionette waits for the promise the script returns.
READ_CONFIG = r"""
const [url, address] = arguments;
const { fetchHTTP } = ChromeUtils.importESModule(
  "resource:///modules/accountcreation/FetchHTTP.sys.mjs");
const { readFromXML } = ChromeUtils.importESModule(
  "resource:///modules/accountcreation/readFromXML.sys.mjs");
const sockets = {[Ci.nsMsgSocketType.plain]: "plain", [Ci.nsMsgSocketType.SSL]: "SSL",
                 [Ci.nsMsgSocketType.alwaysSTARTTLS]: "STARTTLS"};
const auths = {[Ci.nsMsgAuthMethod.passwordCleartext]: "password-cleartext"};
const server = s => [s.type, s.hostname, s.port, sockets[s.socketType] ?? s.socketType,
                     auths[s.auth] ?? s.auth, s.username];
return (async () => {
 try {
  const xml = await fetchHTTP(url, {urlArgs: {emailaddress: address}});
  const config = readFromXML(xml, "isp-http");
  return {
    id: config.id,
    domains: config.domains,
    source: config.subSource,
    incoming: [config.incoming, ...config.incomingAlternatives].map(server),
    outgoing: [config.outgoing, ...config.outgoingAlternatives].map(server),
    complete: config.isComplete(),
  };
} catch (e) {
  return {error: String(e && e.message || e)};
}
})();
"""


def _tool() -> object:
    """The team's Thunderbird driver (vendored byte-identical), for its Marionette client."""
    path = HERE / "tools" / "tb_imap_sync.py"
    spec = importlib.util.spec_from_file_location("tb_imap_sync", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _prefs(marionette_port: int, dead_proxy: int) -> str:
    prefs: dict[str, object] = {
        "marionette.port": marionette_port,
        "mail.shell.checkDefaultClient": False,
        "mailnews.start_page.enabled": False,
        "mail.provider.enabled": False,
        "mail.rights.version": 1,
        "mail.inappnotifications.enabled": False,
        "app.update.disabledForTesting": True,
        "datareporting.policy.dataSubmissionEnabled": False,
        "toolkit.telemetry.enabled": False,
        "network.trr.mode": 5,
        # anything but loopback goes to a closed port: nothing leaves the machine
        "network.proxy.type": 1,
        "network.proxy.http": "127.0.0.1",
        "network.proxy.http_port": dead_proxy,
        "network.proxy.ssl": "127.0.0.1",
        "network.proxy.ssl_port": dead_proxy,
        "network.proxy.no_proxies_on": "localhost, 127.0.0.1, ::1",
    }
    return "".join(f"user_pref({json.dumps(k)}, {json.dumps(v)});\n" for k, v in prefs.items())


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("tb-autoconfig"), web=True)
    srv.add_user(ALICE, "alice-secret-1")
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()


def test_thunderbird_reads_our_autoconfig(server: Server, tmp_path: Path) -> None:
    """Thunderbird's readFromXML accepts the document and finds what we serve: IMAP over
    SSL first then STARTTLS, POP3 as alternatives, SMTP SSL then STARTTLS, each on the port
    that listens, password-cleartext, user name %EMAILADDRESS% (replaced later by
    Thunderbird with the address); the config is complete."""
    tool = _tool()
    marionette_port, dead_proxy = free_ports(2)
    profile = tmp_path / "profile"
    profile.mkdir()
    (profile / "user.js").write_text(_prefs(marionette_port, dead_proxy))
    env = dict(os.environ, MOZ_HEADLESS="1")
    with open(tmp_path / "thunderbird.out", "wb") as out:
        tb = subprocess.Popen(
            [
                "thunderbird",
                "--headless",
                "--no-remote",
                "--profile",
                str(profile),
                "--marionette",
                "--remote-allow-system-access",
            ],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        mar = tool.Marionette(marionette_port, timeout=60)  # type: ignore[attr-defined]
        mar.cmd("WebDriver:NewSession", {"capabilities": {}})
        mar.cmd("Marionette:SetContext", {"value": "chrome"})
        mar.cmd("WebDriver:SetTimeouts", {"script": 60000})
        url = f"http://127.0.0.1:{server.ports['http']}/mail/config-v1.1.xml"
        result = mar.cmd("WebDriver:ExecuteScript", {"script": READ_CONFIG, "args": [url, ALICE]})[
            "value"
        ]
        unknown = mar.cmd(
            "WebDriver:ExecuteScript", {"script": READ_CONFIG, "args": [url, "a@other.test"]}
        )["value"]
        mar.close()
    finally:
        if tb.poll() is None:
            os.killpg(tb.pid, signal.SIGTERM)
            deadline = time.monotonic() + 15
            while tb.poll() is None and time.monotonic() < deadline:
                time.sleep(0.1)
            if tb.poll() is None:
                os.killpg(tb.pid, signal.SIGKILL)
        tb.wait()
    p, h = server.ports, "mail.example.test"
    auth = ("password-cleartext", "%EMAILADDRESS%")
    assert result == {
        "id": "example.test",
        "domains": ["example.test"],
        "source": "xml-from-isp-http",
        "incoming": [
            ["imap", h, p["imaps"], "SSL", *auth],
            ["imap", h, p["imap"], "STARTTLS", *auth],
            ["pop3", h, p["pop3s"], "SSL", *auth],
            ["pop3", h, p["pop3"], "STARTTLS", *auth],
        ],
        "outgoing": [
            ["smtp", h, p["submissions"], "SSL", *auth],
            ["smtp", h, p["submission"], "STARTTLS", *auth],
        ],
        "complete": True,
    }, result
    assert "error" in unknown, unknown  # 404: Thunderbird gets nothing for another domain
