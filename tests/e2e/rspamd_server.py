"""The real rspamd (Debian package rspamd) and redis-server on loopback, for the spam tests.

rspamd runs with the packaged C{/etc/rspamd/rspamd.conf} and a test C{LOCAL_CONFDIR}
written here: its normal, controller and proxy workers on free 127.0.0.1 ports, the
controller open to 127.0.0.1 (C{secure_ip}, no password), Bayes on a private redis-server
(the backend of the packaged statistic.conf), DNS to a closed local port (no query leaves the
machine), GTUBE enabled for loopback clients (C{enable_test_patterns}) and two test rules:
C{X-Test-Spam: yes} scores 10 (over C{add_header = 6}), C{X-Test-Later: yes} forces
C{soft reject}.  Both are stopped by PID.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.request
from pathlib import Path

from e2e_server import free_ports

LUA_RULES = """
rspamd_config.TWISTEDMAIL_TEST_SPAM = {
  callback = function(task)
    local h = task:get_header('X-Test-Spam')
    return h ~= nil and h:lower() == 'yes'
  end,
  score = 10.0,
  description = 'X-Test-Spam: yes (twistedmail tests)',
}
rspamd_config.TWISTEDMAIL_TEST_LATER = {
  callback = function(task)
    local h = task:get_header('X-Test-Later')
    if h ~= nil and h:lower() == 'yes' then
      task:set_pre_result('soft reject', 'Try again later')
      return true
    end
    return false
  end,
  score = 0.0,
  type = 'prefilter',
  priority = 10,
  description = 'X-Test-Later: yes forces soft reject (twistedmail tests)',
}
"""


def available() -> str | None:
    """Why the real rspamd cannot run here (a skip reason), or C{None}."""
    for tool in ("rspamd", "redis-server"):
        if shutil.which(tool) is None:
            return f"{tool} is not installed (Debian packages rspamd, redis-server)"
    if not Path("/etc/rspamd/rspamd.conf").is_file():
        return "/etc/rspamd/rspamd.conf is missing"
    return None


class Rspamd:
    """rspamd and its redis in C{root}; L{url} is the normal worker, L{controller} the
    controller."""

    def __init__(self, root: Path) -> None:
        self.root = root
        normal, controller, proxy, redis, dns = free_ports(5)
        self.url = f"http://127.0.0.1:{normal}"
        self.controller = f"http://127.0.0.1:{controller}"
        self.redis_port = redis
        local = root / "local.d"
        for sub in ("local.d", "run", "db", "log"):
            (root / sub).mkdir(parents=True, exist_ok=True)
        (local / "worker-normal.inc").write_text(f'bind_socket = "127.0.0.1:{normal}";\n')
        (local / "worker-controller.inc").write_text(
            f'bind_socket = "127.0.0.1:{controller}";\nsecure_ip = "127.0.0.1";\n'
        )
        (local / "worker-proxy.inc").write_text(f'bind_socket = "127.0.0.1:{proxy}";\n')
        (local / "options.inc").write_text(
            f'dns {{ nameserver = ["127.0.0.1:{dns}"]; timeout = 1s; retransmits = 1; }}\n'
            "enable_test_patterns = true;\n"
        )
        (local / "logging.inc").write_text(
            f'type = "file"; filename = "{root}/log/rspamd.log"; level = "info";\n'
        )
        (local / "redis.conf").write_text(f'servers = "127.0.0.1:{redis}";\n')
        (local / "classifier-bayes.conf").write_text(
            f'backend = "redis"; servers = "127.0.0.1:{redis}"; min_learns = 1; min_tokens = 1;\n'
        )
        (local / "greylist.conf").write_text("enabled = false;\n")
        (local / "actions.conf").write_text("reject = 50; add_header = 6; greylist = null;\n")
        (root / "rspamd.local.lua").write_text(LUA_RULES)
        self.redis: subprocess.Popen[bytes] | None = None
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 600) -> None:
        """Start redis and rspamd; wait until the normal worker answers C{/ping}.  rspamd
        compiles its Hyperscan databases at the first start (a minute or more on a busy
        machine)."""
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1",
             "--save", "", "--appendonly", "no", "--dir", str(self.root / "db")],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        command = [
            "rspamd", "-f", "-c", "/etc/rspamd/rspamd.conf",
            "--var", f"LOCAL_CONFDIR={self.root}",
            "--var", f"RUNDIR={self.root / 'run'}",
            "--var", f"DBDIR={self.root / 'db'}",
            "--var", f"LOGDIR={self.root / 'log'}",
        ]  # fmt: skip
        if os.geteuid() == 0:
            command.insert(1, "-i")  # rspamd refuses root workers without it
        self.proc = subprocess.Popen(
            command, stdout=subprocess.DEVNULL, stderr=open(self.root / "log" / "stderr", "wb")
        )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise AssertionError(f"rspamd exited: {self.log()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        pass
                with urllib.request.urlopen(self.controller + "/ping", timeout=2) as r:
                    if r.read().strip() == b"pong":
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise AssertionError(f"rspamd did not answer in {timeout} s: {self.log()[-3000:]}")
            time.sleep(0.5)

    def log(self) -> str:
        path = self.root / "log" / "rspamd.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def stat(self) -> dict[str, object]:
        """The controller's C{/stat} (C{learned}: messages learned since start)."""
        with urllib.request.urlopen(self.controller + "/stat", timeout=10) as r:
            result: dict[str, object] = json.loads(r.read())
        return result

    def stop(self) -> None:
        for proc in (self.proc, self.redis):
            if proc is None or proc.poll() is not None:
                continue
            os.kill(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=15)
        self.proc = self.redis = None
