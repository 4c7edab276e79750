"""The documentation: `mkdocs build --strict` passes (no broken link, no missing page, the recipe reference is
generated from the installed components), and the README stays a short front page."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_readme_is_a_front_page():
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 200, "README.md is the front page; move details into docs/"
    for command in ("bash scripts/setup.sh && .venv/bin/activelab run recipes/ceal_digits.yaml",
                    "bash scripts/setup.sh && OMP_NUM_THREADS=1 .venv/bin/python -m pytest"):
        assert command in readme


def test_mkdocs_build_strict(tmp_path):
    import mkdocs  # noqa: F401  (the dev extra installs it: a missing mkdocs fails here rather than skipping)
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    assert "WARNING" not in result.stderr, result.stderr[-4000:]
    reference = (tmp_path / "site" / "reference" / "recipes" / "index.html").read_text(encoding="utf-8")
    assert "activelab:recipe-reference" not in reference          # the marker was replaced ...
    for name in ("classification", "curriculum_nll", "predicted_loss", "proportional", "terminal"):
        assert f"<code>{name}</code>" in reference or f"/ {name}" in reference   # ... by every component
