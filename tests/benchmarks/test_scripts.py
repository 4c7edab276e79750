"""The benchmark scripts that run `activelab compare` (benchmarks/*.sh through benchmarks/lib.sh), run with a stub in
place of activelab: every comparison they name is launched with the knobs from the environment (seeds, jobs,
rounds, run folder) and its outputs are copied to the results folder; an unknown comparison is a one-line error
with exit 2. The comparisons themselves are not run here (they take minutes to hours)."""
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

STUB = """#!{python}
import json, os, sys
from pathlib import Path
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
if args and args[0] == "compare":
    out = Path(args[args.index("--out") + 1])
    out.mkdir(parents=True, exist_ok=True)
    (out / "compare.md").write_text("table of " + args[1] + "\\n")
    (out / "compare.json").write_text(json.dumps({{"recipe": args[1]}}))
"""

# script, its arguments, and per comparison: (recipe, result name, strategies)
CASES = {
    "plugin_results.sh": ([], [
        ("recipes/ceal_mnist.yaml", "plugin_mnist", "ceal,entropy,random"),
        ("recipes/curriculum_nmt.yaml", "plugin_nmt",
         "curriculum_al,uncertainty,uncertainty_curriculum,random,random_curriculum"),
        ("recipes/miaod_digits.yaml", "plugin_detection", "miaod,random,entropy,no_stages"),
        ("recipes/ondemand_denoise.yaml", "plugin_restoration",
         "ondemand,rigid,fixated_1,fixated_2,fixated_3,fixated_4,fixated_5")]),
    "pool_strategies.sh": (["digits", "mnist", "rotation"], [
        ("recipes/pool_strategies_digits.yaml", "pool_strategies_digits",
         "eer,eer_approx,suggestive,usdm,learning_loss,entropy,margin,random"),
        ("recipes/pool_strategies_mnist.yaml", "pool_strategies_mnist",
         "eer,eer_approx,suggestive,usdm,learning_loss,entropy,margin,random"),
        ("recipes/emcm_rotation_digits.yaml", "pool_strategies_rotation", "emcm,committee_variance,gsx,random")]),
    "low_budget.sh": (["digits", "fashion"], [
        ("recipes/lowbudget_digits.yaml", "low_budget_digits",
         "random,typiclust,probcover,entropy,margin,badge,typiclust_then_margin"),
        ("recipes/lowbudget_fashion.yaml", "low_budget_fashion",
         "random,typiclust,probcover,entropy,margin,badge,typiclust_then_margin")]),
    "large_batch.sh": ([], [("recipes/largebatch_mnist.yaml", "large_batch_mnist",
                             "random,entropy,margin,bald,badge,power_bald,softrank_margin")]),
    "label_efficiency.sh": ([], [
        ("recipes/ceal_digits.yaml", "label_efficiency_digits", "ceal,entropy,margin,bald,random"),
        ("recipes/ceal_fashion_mnist.yaml", "label_efficiency_fashion", "ceal,entropy,random")]),
    "pal.sh": ([], [("recipes/pal_digits.yaml", "pal_digits", "pal,random_rate,threshold_entropy,entropy,random"),
                    ("recipes/pal_transfer_mnist.yaml", "pal_transfer_mnist",
                     "pal,random_rate,threshold_entropy,entropy,random")]),
    "asal.sh": ([], [("recipes/asal_mnist.yaml", "asal_mnist", "asal,entropy,random")]),
    "speech_cost.sh": ([], [("recipes/lossprediction_asr.yaml", "speech_cost",
                             "lossprediction_raw,lossprediction,least_confidence,least_confidence_per_second,random")]),
}


def run_script(tmp_path, script, args, **env):
    stub = tmp_path / "activelab-stub"
    stub.write_text(STUB.format(python=sys.executable))
    stub.chmod(stub.stat().st_mode | stat.S_IXUSR)
    log = tmp_path / "calls.jsonl"
    environ = {**os.environ, "ACTIVELAB": str(stub), "PYTHON": str(stub), "STUB_LOG": str(log),
               "RUNS": str(tmp_path / "runs"), "RESULTS": str(tmp_path / "results"), **env}
    done = subprocess.run(["bash", f"benchmarks/{script}", *args], cwd=ROOT, env=environ, capture_output=True,
                          text=True, timeout=60)
    calls = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    return done, calls


def option(call, name):
    return call[call.index(name) + 1]


@pytest.mark.parametrize("script", sorted(CASES))
def test_each_comparison_is_launched_with_the_knobs_and_published(tmp_path, script):
    args, expected = CASES[script]
    done, calls = run_script(tmp_path, script, args, SEEDS="2", JOBS="3", ROUNDS="1")
    assert done.returncode == 0, done.stderr
    compares = [c for c in calls if c[0] == "compare"]
    assert [(c[1], option(c, "--strategies")) for c in compares] == [(r, s) for r, _, s in expected]
    for call, (recipe, name, _) in zip(compares, expected):
        assert option(call, "--seeds") == "2" and option(call, "--jobs") == "3" and "-q" in call
        assert "loop.rounds=1" in call
        out = Path(option(call, "--out"))
        assert out.parent == tmp_path / "runs"
        assert (tmp_path / "results" / f"{name}.md").read_text() == f"table of {recipe}\n"
        assert json.loads((tmp_path / "results" / f"{name}.json").read_text()) == {"recipe": recipe}


def test_defaults_are_five_seeds_one_job_and_the_recipes_rounds(tmp_path):
    done, calls = run_script(tmp_path, "large_batch.sh", [])
    assert done.returncode == 0, done.stderr
    (call,) = calls
    assert option(call, "--seeds") == "5" and option(call, "--jobs") == "1"
    assert not any(arg.startswith("loop.rounds=") for arg in call)


def test_pal_learns_the_policy_once_and_every_comparison_uses_it(tmp_path):
    done, calls = run_script(tmp_path, "pal.sh", ["mnist"])
    assert done.returncode == 0, done.stderr
    policy = f"scorer.params.policy={tmp_path / 'runs' / 'pal' / 'digits' / 'policy.pt'}"
    assert calls[0][:2] == ["pal", "learn"] and policy in calls[0]
    assert calls[1][:2] == ["pal", "info"]
    (compare,) = calls[2:]
    assert compare[1] == "recipes/pal_transfer_mnist.yaml" and policy in compare


def test_asal_adds_its_cost_table(tmp_path):
    done, calls = run_script(tmp_path, "asal.sh", [])
    assert done.returncode == 0, done.stderr
    assert calls[-1] == ["benchmarks/asal_cost.py", str(tmp_path / "runs" / "asal-mnist"),
                         str(tmp_path / "results" / "asal_mnist")]


@pytest.mark.parametrize("script", ["plugin_results.sh", "pool_strategies.sh", "low_budget.sh",
                                    "label_efficiency.sh", "pal.sh"])
def test_an_unknown_comparison_is_a_one_line_error(tmp_path, script):
    done, calls = run_script(tmp_path, script, ["nosuch"])
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "unknown comparison 'nosuch'" in done.stderr
    assert not calls                                    # checked before anything runs (PAL's learning too)


def test_low_budget_on_simclr_features_overrides_the_pca_recipe(tmp_path):
    done, calls = run_script(tmp_path, "low_budget.sh", ["mnist_simclr"])
    assert done.returncode == 0, done.stderr
    (call,) = calls
    assert call[1] == "recipes/lowbudget_mnist.yaml"
    features = f"task.params.features={{kind: simclr, seed: 0, cache_dir: {tmp_path / 'runs'}/features-cache, " \
               "max_steps: 1000}"
    assert features in call and option(call, "--out") == str(tmp_path / "runs" / "lowbudget-mnist-simclr")
    assert (tmp_path / "results" / "low_budget_mnist_simclr.md").exists()
