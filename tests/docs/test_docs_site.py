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
    benchmarks = (tmp_path / "site" / "benchmarks" / "index.html").read_text(encoding="utf-8")
    assert "activelab:results" not in benchmarks                    # results files are included, not hand-copied
    for name in ("query_speed", "round_scoring"):
        table = (ROOT / "benchmarks" / "results" / f"{name}.md").read_text().splitlines()
        row = next(line for line in table if line.startswith("| ") and "---" not in line and "version" not in line
                   and "workload" not in line)
        assert row.split("|")[2].strip() in benchmarks              # a cell of a data row reached the page


def test_results_hook_includes_only_result_files_and_warns_on_a_missing_one(caplog):
    sys.path.insert(0, str(ROOT / "docs" / "hooks"))
    try:
        import results
    finally:
        sys.path.pop(0)
    assert "| workload |" in results.include("benchmarks/results/query_speed.md", "p.md")
    assert "missing" in results.include("benchmarks/results/nope.md", "p.md")
    assert "missing" in results.include("README.md", "p.md")
    assert [r.levelname for r in caplog.records].count("WARNING") == 2
