"""The import layers of DESIGN §2, checked by import-linter (contract in pyproject.toml)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_imports_flow_one_way() -> None:
    """The import-linter layers contract holds: imports in twistedmail run one way."""
    lint = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    if not Path(lint).exists():
        pytest.skip("import-linter is not installed (pip install '.[test]')")
    result = subprocess.run([lint], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]
    assert "Contracts: 1 kept, 0 broken." in result.stdout


def test_no_global_reactor_below_the_top_layer() -> None:
    """DESIGN §2: only tap, workers and cli import the global reactor; the rest is given it."""
    offenders = []
    for path in sorted((ROOT / "twistedmail").rglob("*.py")):
        # tap.py and workers.py are process mains; the twistedmail.cli package is the CLI's
        if path.name in ("tap.py", "workers.py") or path.parent.name == "cli":
            continue
        text = path.read_text()
        if "from twisted.internet import reactor" in text or "twisted.internet.reactor" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
