"""The tree passes the linter: ``ruff check`` with the settings in pyproject.toml ([tool.ruff]) reports nothing.
ruff comes with the dev extra; a missing ruff fails here rather than skipping."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    result = subprocess.run([sys.executable, "-m", "ruff", "check", str(ROOT)],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"ruff check failed:\n{result.stdout}\n{result.stderr}"
