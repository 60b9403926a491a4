"""Suite-wide fixtures."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import settings

# Fuzz tests explore the same examples on every run, so CI is deterministic; a new search is
# one environment variable away: HYPOTHESIS_PROFILE=explore pytest tests/test_fuzz_*.py
settings.register_profile("default", derandomize=True)
settings.register_profile("explore", derandomize=False, max_examples=2000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))


@pytest.fixture(autouse=True, scope="session")
def _run_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """trial's C{TestCase.mktemp} makes relative paths under the working directory: run the
    whole suite from a temp dir so nothing is written into the checkout."""
    old = os.getcwd()
    os.chdir(tmp_path_factory.mktemp("cwd"))
    try:
        yield
    finally:
        os.chdir(old)


@pytest.fixture(autouse=True)
def _keep_the_umask() -> Iterator[None]:
    """Each test starts with the suite's umask: the data-dir setup the server and the CLI run
    in-process sets 077 for the process (config.ensure_data_dir), which made later tests'
    directories 0700 (a Dovecot started by an e2e test then could not read its passwd file)."""
    old = os.umask(0o022)
    os.umask(old)
    try:
        yield
    finally:
        os.umask(old)
