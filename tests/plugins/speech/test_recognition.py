"""The speech recognition task: the learning-loss ranking loss, the loss-prediction module finding planted
high-loss utterances, the scorers, human transcribers, the real-audio smoke test and bad manifests at the CLI."""
from __future__ import annotations

import io
import json
import shutil
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from activelab.cli import main
from activelab.labelling.terminal import TerminalOracle
from activelab.plugins.speech import synth
from activelab.plugins.speech.model import LossPredictionModule, ranking_loss
from activelab.plugins.speech.scorers import CTCEntropy, CTCLeastConfidence, PredictedLoss
from activelab.plugins.speech.task import (
    CTC_LEAST_CONFIDENCE,
    PREDICTED_LOSS,
    PREDICTED_LOSS_NORM,
    RecognitionConfig,
    RecognitionTask,
)
from activelab.protocol import Env, Label, Quit
from activelab.testing import ScorerConformance, TaskConformance, make_context, true_labels

POCKETSPHINX = Path("/usr/share/pocketsphinx/test/data")
TINY = {"dim": 32, "layers": 1, "n_mels": 20, "subsample": 4, "epochs": 1, "min_steps": 12, "batch_size": 8,
        "eval_batch_size": 16}


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are not installed (sudo apt-get install espeak-ng sox)")
    return synth.make_spoken_commands(tmp_path_factory.mktemp("asr"), utterances=40, test_utterances=8, seed=5)


def make_task(folder: Path, seed: int = 0, **params) -> RecognitionTask:
    config = {"data": {"path": str(folder / "train.jsonl"), "test_path": str(folder / "test.jsonl")}, **TINY, **params}
    return RecognitionTask(RecognitionConfig.model_validate(config), Env(seed=seed, progress=False))


# ------------------------------------------------------------------------------------------ the ranking loss
def test_ranking_loss_on_a_hand_made_batch():
    predicted = torch.tensor([3.0, 1.0, 0.0, 2.0], requires_grad=True)
    target = torch.tensor([1.0, 2.0, 3.0, 0.0], requires_grad=True)
    # pairs (0, 3): truth says l0 > l3 and lhat0 - lhat3 = 1, so max(0, -1 + 1) = 0;
    #       (1, 2): truth says l1 < l2 but lhat1 - lhat2 = 1, so max(0, 1 + 1) = 2.   Mean: 1.
    loss = ranking_loss(predicted, target, margin=1.0)
    assert loss.item() == pytest.approx(1.0)
    assert ranking_loss(predicted, target, margin=0.0).item() == pytest.approx(0.5)
    loss.backward()
    assert target.grad is None                                   # the true losses are targets, never trained
    assert predicted.grad.tolist() == pytest.approx([0.0, 0.5, -0.5, 0.0])   # only the wrongly ordered pair pushes
    # an odd middle item sits out; a batch of one has no pair
    # pair (0, 2): l0 > l2 and lhat0 - lhat2 = 5 - 0.5 = 4.5 -> max(0, -4.5 + 1) = 0, whatever the middle item
    for middle in (-100.0, 100.0):
        assert ranking_loss(torch.tensor([5.0, middle, 0.5]), torch.tensor([1.0, -4.0, 0.0])).item() == 0.0
    assert ranking_loss(torch.tensor([0.0, 9.0, 0.5]), torch.tensor([1.0, -4.0, 0.0])).item() == pytest.approx(1.5)
    assert ranking_loss(torch.tensor([1.0]), torch.tensor([2.0])).item() == 0.0
    with pytest.raises(ValueError):
        ranking_loss(torch.zeros(4), torch.zeros(3))


def test_the_loss_module_learns_to_rank_from_pooled_features():
    """Features whose first channel carries the (hidden) loss: after training on the ranking loss alone, the module
    puts unseen items with planted high loss first."""
    torch.manual_seed(0)
    module = LossPredictionModule([6, 6], hidden=16)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)

    def batch(n):
        taps = [torch.randn(n, 5, 6), torch.randn(n, 5, 6)]
        loss = taps[0][:, :, 0].mean(1) * 3 + 0.1 * torch.randn(n)
        return taps, torch.full((n,), 5), loss

    for _ in range(300):
        taps, lengths, loss = batch(16)
        step = ranking_loss(module(taps, lengths)[:, 0], loss)
        optimizer.zero_grad()
        step.backward()
        optimizer.step()
    taps, lengths, _ = batch(40)
    taps[0][:5, :, 0] += 4.0                                     # five planted high-loss items
    order = module(taps, lengths)[:, 0].argsort(descending=True)
    assert set(order[:5].tolist()) == set(range(5))


# ------------------------------------------------------------------------------------------ the task
@pytest.fixture(scope="module")
def fitted(commands) -> RecognitionTask:
    task = make_task(commands)
    task.fit(true_labels(task, list(task.pool_ids())[:16]), make_context(round=0))
    return task


class TestRecognitionConformance(TaskConformance):
    covers = ("speech", "task", "recognition")

    @pytest.fixture(autouse=True)
    def _data(self, commands):
        self.folder = commands

    def make_task(self):
        return make_task(self.folder)

    def initial_labels(self, task):
        return true_labels(task, list(task.pool_ids())[:16])

    def wants(self, task):
        return set(task.outputs)             # every output is a per-utterance array


def test_outputs_evaluation_and_determinism(commands, fitted):
    ids = list(fitted.pool_ids())[16:]
    outputs = {k for k in fitted.outputs}
    first = [c for c in fitted.predict(ids, outputs)]
    again = make_task(commands)
    again.fit(true_labels(again, list(again.pool_ids())[:16]), make_context(round=0))
    for a, b in zip(first, again.predict(ids, outputs)):
        for key in outputs:
            assert a[key].shape == (len(a[PREDICTED_LOSS]),)
            np.testing.assert_array_equal(a[key], b[key])           # same labels + seed -> same model
    lc = np.concatenate([c[CTC_LEAST_CONFIDENCE] for c in first])
    assert np.all((lc >= 0) & (lc <= 1))
    metrics = fitted.evaluate()
    assert {"wer", "cer", "spearman_raw", "spearman_norm"} <= set(metrics)
    assert metrics["wer"] >= 0 and -1 <= metrics["spearman_norm"] <= 1
    with pytest.raises(ValueError):
        fitted.predict(ids, {PREDICTED_LOSS}, mc=object())


def test_transcripts_are_checked_and_normalised(fitted):
    item = fitted.pool_ids()[0]
    assert fitted.check_label(item, "  Open  RED door ") == "open red door"
    for bad in ("   ", 3, None, ["open"]):
        with pytest.raises(ValueError):
            fitted.check_label(item, bad)
    with pytest.raises(ValueError):
        fitted.check_label("no such item", "open door")
    wrong = fitted.corrupt_label(fitted.true_label(item), np.random.default_rng(1))
    assert wrong != fitted.true_label(item) and len(wrong.split()) == len(fitted.true_label(item).split())
    assert fitted.label_schema() == {"type": "text"}
    assert Path(fitted.describe(item)["audio"]).exists()


@pytest.mark.parametrize("layout", ["torchkit", "0.1"])
def test_a_state_dict_round_trip_predicts_the_same(commands, fitted, layout, old_layout):
    ids = list(fitted.pool_ids())[20:30]
    restored = make_task(commands)
    state = fitted.state_dict()
    restored.load_state_dict(state if layout == "torchkit" else old_layout(state, drop=("optimizer", "members")))
    a = np.concatenate([c[PREDICTED_LOSS] for c in fitted.predict(ids, {PREDICTED_LOSS})])
    b = np.concatenate([c[PREDICTED_LOSS] for c in restored.predict(ids, {PREDICTED_LOSS})])
    np.testing.assert_array_equal(a, b)
    assert restored.transcribe(restored.test[:3]) == fitted.transcribe(fitted.test[:3])


class TestPredictedLossConformance(ScorerConformance):
    covers = ("core", "scorer", "predicted_loss")         # the core's scorer, on the speech task

    @pytest.fixture(autouse=True)
    def _task(self, fitted):
        self.task = fitted

    def make_scorer(self):
        return PredictedLoss()

    def make_task(self):
        return self.task


class TestCTCLeastConfidenceConformance(TestPredictedLossConformance):
    covers = ("speech", "scorer", "ctc_least_confidence")

    def make_scorer(self):
        return CTCLeastConfidence()


class TestCTCEntropyConformance(TestPredictedLossConformance):
    covers = ("speech", "scorer", "ctc_entropy")

    def make_scorer(self):
        return CTCEntropy()


def test_scorers_read_the_outputs_they_name(fitted):
    ids = list(fitted.pool_ids())[16:30]
    out = {k: np.concatenate([c[k] for c in fitted.predict(ids, fitted.outputs)]) for k in fitted.outputs}
    ctx = make_context(round=1)
    # the core's predicted_loss, normalise left unset, needs the raw estimate every such task offers and ranks by
    # the per-second head where the task has one, as speech does
    cases = [(PredictedLoss(), PREDICTED_LOSS_NORM, PREDICTED_LOSS),
             (PredictedLoss(PredictedLoss.Config(normalise=True)), PREDICTED_LOSS_NORM, PREDICTED_LOSS_NORM),
             (PredictedLoss(PredictedLoss.Config(normalise=False)), PREDICTED_LOSS, PREDICTED_LOSS),
             (CTCLeastConfidence(), CTC_LEAST_CONFIDENCE, CTC_LEAST_CONFIDENCE),
             (CTCEntropy(), "ctc_entropy", "ctc_entropy")]
    for scorer, name, needs in cases:
        assert set(scorer.needs) == {needs}
        np.testing.assert_array_equal(np.concatenate(list(scorer.score(fitted, ids, ctx))), out[name])


# ------------------------------------------------------------------------------------------ people
def test_a_person_transcribes_at_the_terminal(fitted):
    items = list(fitted.pool_ids())[30:33]
    typed = io.StringIO("Open the DOOR\n\nquit\n")
    shown = io.StringIO()
    oracle = TerminalOracle(TerminalOracle.Config(annotator="ann", player=""), stdin=typed, stdout=shown)
    answers = list(oracle.label(fitted, items, make_context(round=1)))
    assert str(fitted.describe(items[0])["audio"]) in shown.getvalue()      # the clip to play is named
    assert answers[0] == Label(items[0], "open the door", annotator="ann")    # checked: the canonical form
    suggestion = fitted.suggest([items[1]])[0]
    if suggestion:                                                   # Enter accepts the model's transcript
        assert answers[1] == Label(items[1], suggestion, annotator="ann") and isinstance(answers[2], Quit)
    else:                                                            # a model that hears nothing suggests nothing
        assert isinstance(answers[-1], Quit)


# ------------------------------------------------------------------------------------------ real audio
def test_the_pocketsphinx_recordings_train_and_decode():
    if not POCKETSPHINX.is_dir():
        pytest.skip("pocketsphinx-testdata is not installed (sudo apt-get install pocketsphinx-testdata)")
    config = RecognitionConfig.model_validate({"data": {"kind": "pocketsphinx", "test_fraction": 0.3}, **TINY})
    task = RecognitionTask(config, Env(seed=0, progress=False))
    assert len(task.pool) >= 5 and all(u.transcript for u in task.pool)
    task.fit(true_labels(task, task.pool_ids()), make_context(round=0))
    metrics = task.evaluate()
    assert np.isfinite(metrics["wer"]) and np.isfinite(metrics["cer"])


# ------------------------------------------------------------------------------------------ the CLI
def test_a_malformed_manifest_exits_2_naming_the_file_and_line(commands, tmp_path, capsys):
    lines = (commands / "train.jsonl").read_text().splitlines()
    bad = json.loads(lines[2])
    del bad["text"]
    manifest = tmp_path / "bad.jsonl"
    manifest.write_text("\n".join([lines[0], lines[1], json.dumps(bad)]) + "\n")
    shutil.copytree(commands / "wav", tmp_path / "wav")
    recipe = {"name": "bad-asr", "task": {"plugin": "speech", "name": "recognition",
                                          "params": {"data": {"path": str(manifest), "test_fraction": 0.3}, **TINY}},
              "scorer": {"name": "predicted_loss"}, "loop": {"rounds": 1, "initial": 2, "batch": 1}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and f"{manifest}:3" in err[0] and "text" in err[0], err


def test_transcripts_round_trip_through_a_jsonl_exchange(commands, tmp_path, capsys):
    """A run with the exchange oracle pauses awaiting labels; the export names each clip; imported transcripts
    (an empty one refused, naming the item) land in the store and the run resumes."""
    params = {"data": {"path": str(commands / "train.jsonl"), "test_path": str(commands / "test.jsonl")}, **TINY}
    recipe = {"name": "asr-by-hand", "task": {"plugin": "speech", "name": "recognition", "params": params},
              "scorer": {"name": "random"}, "oracle": {"name": "exchange"},
              "loop": {"rounds": 1, "initial": 6, "batch": 3}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    run = tmp_path / "run"
    assert main(["run", str(tmp_path / "r.yaml"), "--out", str(run), "-q"]) == 0        # pauses, awaiting labels
    assert main(["export", str(run), "--format", "jsonl", "--out", str(tmp_path / "b.jsonl")]) == 0
    rows = [json.loads(line) for line in (tmp_path / "b.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and all(Path(r["audio"]).exists() for r in rows)             # the clips travel as paths
    truth = {u.id: u.transcript for u in make_task(commands).pool}
    for r in rows:
        r["label"] = truth[r["item_id"]].upper()
    rows[0]["label"] = "   "
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["import", str(run), str(tmp_path / "a.jsonl")]) == 2
    assert rows[0]["item_id"] in capsys.readouterr().err
    rows[0]["label"] = truth[rows[0]["item_id"]]
    (tmp_path / "a.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["import", str(run), str(tmp_path / "a.jsonl")]) == 0
    assert main(["resume", str(run), "-q"]) == 0                 # trains round 0, pauses for round 1's batch
    assert main(["status", str(run), "--json"]) == 0
    info = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert info["labels"] == 6 and info["round"] == 1 and info["outstanding"] == 3
    stored = dict(sqlite3.connect(run / "labels.sqlite").execute("SELECT item_id, value FROM labels"))
    assert all(json.loads(v) == truth[k] for k, v in stored.items())                   # normalised transcripts


def test_label_cost_is_seconds_of_audio(fitted):
    import soundfile as sf

    ids = list(fitted.pool_ids())[:5]
    expected = [sf.info(str(fitted.pool[fitted.items.position(i)].path)).duration for i in ids]
    np.testing.assert_allclose(fitted.label_cost(ids), expected, rtol=1e-9)
    np.testing.assert_allclose(fitted.label_cost(ids, ["x"] * 5), expected, rtol=1e-9)   # the answer changes nothing
    assert fitted.cost_unit == "seconds of audio"


@pytest.mark.slow
def test_two_workers_train_together_and_finish_the_run(commands, tmp_path):
    """fits_distributed + loop.train_on_all: with --nproc 2 both workers fit on their parts of each minibatch (DDP)
    and the run ends with rank 0's model mirrored; a wiring fault (unused parameters, a collective out of step)
    hangs or fails."""
    import os
    import subprocess
    import sys

    recipe = {"name": "asr-ddp", "seed": 1,
              "task": {"plugin": "speech", "name": "recognition", "params": {
                  "data": {"path": str(commands / "train.jsonl"), "test_path": str(commands / "test.jsonl")},
                  **TINY, "loss_prediction": {"enabled": True}}},
              "scorer": {"name": "predicted_loss"}, "oracle": {"name": "simulated"},
              "loop": {"initial": 8, "batch": 8, "rounds": 1, "train_on_all": True}}
    (tmp_path / "r.yaml").write_text(yaml.safe_dump(recipe))
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}   # gloo workers, any GPUs
    env.pop("WORLD_SIZE", None)
    done = subprocess.run([str(Path(sys.executable).parent / "activelab"), "run", str(tmp_path / "r.yaml"), "--out",
                           str(tmp_path / "run"), "-q", "--nproc", "2"], env=env, capture_output=True, text=True,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [8, 16] and all(0 <= r["wer"] <= 1.5 for r in rows)
