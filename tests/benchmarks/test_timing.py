"""benchmarks/timing.py end to end on a one-round digits run without the scorer table: it writes the markdown and
JSON it promises, with the run's own numbers."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_timing_writes_its_tables(tmp_path):
    done = subprocess.run([sys.executable, "benchmarks/timing.py", "--recipe", "recipes/ceal_digits.yaml", "--set",
                           "loop.rounds=1", "--no-scorers", "--out-dir", str(tmp_path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads((tmp_path / "timing.json").read_text())
    (demo,) = result["demos"]
    assert demo["recipe"] == "recipes/ceal_digits.yaml" and demo["overrides"] == ["loop.rounds=1"]
    assert demo["rounds"] == 2 and demo["metric"] == "accuracy" and 0 < demo["final"] <= 1
    assert demo["wall_s"] > demo["fit_s"] > 0 and result["scorers"] == []
    table = (tmp_path / "timing.md").read_text()
    assert "recipes/ceal_digits.yaml loop.rounds=1 | 2 |" in table and table == done.stdout
