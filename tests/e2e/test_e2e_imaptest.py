"""Dovecot's imaptest scripted compliance suite against the real server (RFC 3501 and the
extensions we advertise).

Each file in imaptest's ``tests/`` directory is one test group and one pytest parameter here;
a group runs alone in its own imaptest process under a timeout, so a group that leaves the
client waiting fails that group instead of hanging the run. A group whose capability the server
does not advertise is skipped by imaptest itself and passes here. Groups that cannot pass yet
are listed with their reason in docs/rfc-status.md, section "imaptest groups not passed"; they
are expected to fail (``xfail``, not strict, so one that starts passing is reported).

imaptest is found at C{$IMAPTEST} (its scripted tests beside it in C{tests/}), else at
C{.imaptest-build/imaptest} (where .ci/run builds it), else it is built there with
C{../shared/tools/imaptest/build.sh}; when none works the whole module is skipped.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import Server, running

REPO = Path(__file__).resolve().parents[2]
BUILD_DIR = REPO / ".imaptest-build"
BUILD_SCRIPT = REPO.parent / "shared" / "tools" / "imaptest" / "build.sh"
USERS = ("imaptest1@example.test", "imaptest2@example.test")
PASSWORD = "imaptest-secret-1"
# seconds one group may take: the slowest groups take about 5 s; this only bounds a hang.
GROUP_TIMEOUT = 60


def _imaptest() -> Path | None:
    """The imaptest binary (its scripted tests in C{tests/} beside it), built when needed."""
    given = os.environ.get("IMAPTEST")
    if given:
        return Path(given) if Path(given).is_file() else None
    binary = BUILD_DIR / "imaptest"
    if binary.is_file() and (BUILD_DIR / "tests").is_dir():
        return binary
    if not BUILD_SCRIPT.is_file():
        return None
    try:
        subprocess.run(
            [str(BUILD_SCRIPT), str(BUILD_DIR)], check=True, capture_output=True, timeout=900
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return binary if binary.is_file() else None


def known_failures() -> dict[str, str]:
    """Group -> reason, from docs/rfc-status.md's section "imaptest groups not passed"
    (lines C{- `group`: reason})."""
    text = (REPO / "docs" / "rfc-status.md").read_text()
    section = text.split("## imaptest groups not passed", 1)[1].split("\n## ", 1)[0]
    return dict(re.findall(r"^- `([^`]+)`: (.+)$", section, re.MULTILINE))


IMAPTEST = _imaptest()
TESTS_DIR = IMAPTEST.parent / "tests" if IMAPTEST else None
GROUPS = (
    sorted(
        p.name
        for p in TESTS_DIR.iterdir()
        if p.is_file() and not p.name.endswith(".mbox") and p.name != "default.mbox"
    )
    if TESTS_DIR and TESTS_DIR.is_dir()
    else []
)
KNOWN = known_failures()
pytestmark = pytest.mark.skipif(
    IMAPTEST is None,
    reason="imaptest could not be built (needs dovecot-dev and a C toolchain: see .ci/run)",
)


def test_known_list_names_real_groups() -> None:
    """Every group listed as not passing in docs/rfc-status.md exists in imaptest's suite."""
    assert set(KNOWN) <= set(GROUPS)


@pytest.fixture(scope="module")
def imap_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = Server(tmp_path_factory.mktemp("imaptest"))
    with running(srv, dict.fromkeys(USERS, PASSWORD)):
        yield srv


@pytest.mark.parametrize(
    "group",
    [
        pytest.param(g, marks=pytest.mark.xfail(reason=KNOWN[g], strict=False)) if g in KNOWN else g
        for g in GROUPS
    ],
)
def test_imaptest_group(imap_server: Server, group: str) -> None:
    """One imaptest group passes over IMAPS with no failed command and no hang."""
    assert IMAPTEST is not None and TESTS_DIR is not None
    try:
        result = subprocess.run(
            [
                str(IMAPTEST),
                "host=127.0.0.1",
                f"port={imap_server.ports['imaps']}",
                "ssl=any-cert",
                f"user={USERS[0]}",
                f"user2={USERS[1]}",
                f"pass={PASSWORD}",
                f"test={TESTS_DIR / group}",
            ],
            capture_output=True,
            text=True,
            timeout=GROUP_TIMEOUT,
            cwd=imap_server.root,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"imaptest group {group} hung (no answer within {GROUP_TIMEOUT} s): {e.stdout}")
    assert result.returncode == 0, result.stdout + result.stderr
