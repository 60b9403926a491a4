"""End-to-end fixtures: a fresh real server per test (see e2e_server.py)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from e2e_server import PASSWORDS, Server


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    for address, password in PASSWORDS.items():
        srv.add_user(address, password)
    srv.start()
    try:
        yield srv
    finally:
        srv.stop()
