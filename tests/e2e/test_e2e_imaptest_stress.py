"""Dovecot's imaptest in stress mode (random commands of 10 clients on 5 users' INBOXes for
a bounded time, checking every reply against its model of the mailbox) against the real
server with [server] workers = 2: no C{Error:} line (issue 10, "Done when").

imaptest is found as in test_e2e_imaptest (C{$IMAPTEST}, C{.imaptest-build/}), else at
C{/work/imaptest/imaptest}; without it the test is skipped.  Its mailbox source is the
C{default.mbox} of imaptest's scripted tests beside the binary.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from e2e_server import Server, running

REPO = Path(__file__).resolve().parents[2]
PASSWORD = "imaptest-secret-1"
USERS = 5
SECONDS = 15  # imaptest's own run time; the timeout below only bounds a hang


def _imaptest() -> Path | None:
    for candidate in (
        os.environ.get("IMAPTEST"),
        str(REPO / ".imaptest-build" / "imaptest"),
        "/work/imaptest/imaptest",
    ):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


IMAPTEST = _imaptest()
MBOX = IMAPTEST.parent / "tests" / "default.mbox" if IMAPTEST else None
pytestmark = pytest.mark.skipif(
    IMAPTEST is None or MBOX is None or not MBOX.is_file(),
    reason="imaptest (and its tests/default.mbox) not found: see .ci/run",
)


def stress(server: Server) -> str:
    """imaptest's output for a stress run over IMAPS."""
    assert IMAPTEST is not None and MBOX is not None
    result = subprocess.run(
        [
            str(IMAPTEST),
            "host=127.0.0.1",
            f"port={server.ports['imaps']}",
            "ssl=any-cert",
            "user=stress%d@example.test",
            f"users=1-{USERS}",
            f"pass={PASSWORD}",
            f"mbox={MBOX}",
            "clients=10",
            f"secs={SECONDS}",
        ],
        capture_output=True,
        text=True,
        timeout=SECONDS + 120,
        cwd=server.root,
    )
    return result.stdout + result.stderr


def commands(output: str) -> int:
    """The commands imaptest ran: the sum of the counts under its C{Totals:} header."""
    totals = output.rsplit("Totals:", 1)[1].strip().splitlines()
    counts = next(line for line in totals if re.fullmatch(r"[\d\s]+", line) and line.strip())
    return sum(int(n) for n in counts.split())


def test_imaptest_stress_against_two_workers_prints_no_error(tmp_path: Path) -> None:
    """10 imaptest clients on 5 users for 15 s against workers = 2: imaptest reports no
    error (no reply that breaks its model: lost flags, UIDs, EXISTS/EXPUNGE counts), and
    both processes served logins."""
    srv = Server(tmp_path, workers=2)
    users = {f"stress{i}@example.test": PASSWORD for i in range(1, USERS + 1)}
    with running(srv, users):
        output = stress(srv)
        log = srv.log.read_text(errors="replace")
        (worker,) = srv.worker_pids()
    errors = [line for line in output.splitlines() if "Error:" in line]
    assert errors == [], "\n".join(errors[:20])
    assert commands(output) > 0
    logins = re.findall(r"^\S+ \[twistedmail\.auth#info( worker=\d+)?\] login ok:", log, re.M)
    assert {bool(w) for w in logins} == {True, False}, "both processes served logins"
    assert f"worker={worker}]" in log
