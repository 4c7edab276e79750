"""benchmarks/query_speed.py end to end on tiny data: activelab and the numpy reference only (no peers venv), one
thread, three workloads (probabilities, MC samples, embeddings), each case in its own process as in the full run."""
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
WORKLOADS = ["entropy", "bald", "kcenter_mixture"]


def test_tiny_run_writes_the_table_and_activelab_matches_the_reference(tmp_path):
    out = subprocess.run(
        [sys.executable, "benchmarks/query_speed.py", "--tiny", "--libraries", "activelab", "numpy",
         "--workloads", *WORKLOADS, "--threads", "1", "--repeats", "1", "--out-dir", str(tmp_path / "results"),
         "--cache-dir", str(tmp_path / "cache")],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads((tmp_path / "results" / "query_speed.json").read_text())
    assert {"command", "machine", "versions", "data", "cases"} <= set(result)
    assert result["machine"]["cpu_count"] >= 1
    cases = result["cases"]
    assert {(c["library"], c["workload"]) for c in cases} == {(lib, w) for lib in ("activelab", "numpy")
                                                             for w in WORKLOADS}
    for case in cases:
        assert {"library", "workload", "threads", "median_s", "extra_peak_mb", "overlap"} <= set(case), case
        assert case["error"] is None, case
        assert case["threads"] == 1
        assert case["median_s"] > 0 and case["repeats"] == 1 and not case["lower_bound"]
        assert case["extra_peak_mb"] is None or case["extra_peak_mb"] >= 0
        assert case["overlap"] == 1.0, case        # activelab's picks are the reference's; the reference is itself
    table = (tmp_path / "results" / "query_speed.md").read_text()
    assert "| workload | library | threads | median s | extra peak MB | overlap | ratio vs fastest peer |" in table
    assert table.count("| activelab | 1 |") == len(WORKLOADS)
    assert result["command"] in table
