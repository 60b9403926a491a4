"""End-to-end fixtures: a fresh real server per test (see e2e_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import Server, running


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    with running(srv):
        yield srv
