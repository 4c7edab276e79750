"""Speech recognition with a local transformers CTC checkpoint (``model: {kind: huggingface, path: DIR}``): tiny
randomly initialised wav2vec2 / HuBERT / WavLM checkpoints saved into a temporary folder, the spelling of
transcripts in their vocabulary, the loss-prediction module on their hidden states, the frozen feature encoder,
every scorer, the state round trip, a run through the CLI killed with SIGKILL and resumed, and one-line errors
for folders that are not what the task needs."""
from __future__ import annotations

import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("transformers")

from activelab.cli import main  # noqa: E402
from activelab.errors import UserError  # noqa: E402
from activelab.plugins.speech import synth  # noqa: E402
from activelab.plugins.speech.hf import CTCCheckpoint, PretrainedCTC, tap_indices  # noqa: E402
from activelab.plugins.speech.scorers import CTCEntropy, CTCLeastConfidence, PredictedLoss  # noqa: E402
from activelab.plugins.speech.task import (  # noqa: E402
    CTC_ENTROPY,
    CTC_LEAST_CONFIDENCE,
    DURATION,
    PREDICTED_LOSS,
    PREDICTED_LOSS_NORM,
    RecognitionConfig,
    RecognitionTask,
)
from activelab.protocol import Env  # noqa: E402
from activelab.testing import ScorerConformance, TaskConformance, make_context, true_labels  # noqa: E402
from activelab.testing.runs import metrics_rows, snapshot

UPPER = "ABCDEFGHIJKLMNOPQRSTUVWXYZ'"          # wav2vec2-base-960h's characters
SPECIALS = ["<pad>", "<s>", "</s>", "<unk>", "|"]
# a few thousand weights: two 8-channel convolutions with strides 10 and 8 (200 frames per second of 16 kHz audio),
# two 16-wide Transformer layers
ARCH = {"hidden_size": 16, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 32,
        "conv_dim": (8, 8), "conv_kernel": (10, 8), "conv_stride": (10, 8), "num_conv_pos_embeddings": 16,
        "num_conv_pos_embedding_groups": 2}
TINY = {"epochs": 1, "min_steps": 4, "batch_size": 8, "eval_batch_size": 16, "lr": 1e-3}


def save_checkpoint(folder: Path, chars: str = UPPER, family: str = "wav2vec2", layout: str = "processor",
                    attention_mask: bool = True, vocab_size: int | None = None, sampling_rate: int = 16000,
                    architectures: list[str] | None = None, seed: int = 0, **config) -> Path:
    """A randomly initialised CTC checkpoint as ``save_pretrained`` writes it. ``layout``: ``processor`` (a
    Wav2Vec2Processor saved by transformers 5) or ``hub`` (the files of facebook/wav2vec2-base-960h on the hub:
    preprocessor_config.json, tokenizer_config.json and special_tokens_map.json written by hand, as a folder
    copied from elsewhere has them)."""
    import transformers as hf
    from transformers import Wav2Vec2CTCTokenizer, Wav2Vec2FeatureExtractor, Wav2Vec2Processor

    families = {"wav2vec2": (hf.Wav2Vec2Config, hf.Wav2Vec2ForCTC, {}),
                "hubert": (hf.HubertConfig, hf.HubertForCTC, {}),
                "wavlm": (hf.WavLMConfig, hf.WavLMForCTC, {}),
                "data2vec-audio": (hf.Data2VecAudioConfig, hf.Data2VecAudioForCTC,
                                   {"conv_pos_kernel_size": 5, "num_conv_pos_embeddings": 2}),
                "unispeech-sat": (hf.UniSpeechSatConfig, hf.UniSpeechSatForCTC, {}),
                "wav2vec2-conformer": (hf.Wav2Vec2ConformerConfig, hf.Wav2Vec2ConformerForCTC,
                                       {"conv_depthwise_kernel_size": 3, "position_embeddings_type": "relative"})}
    folder.mkdir(parents=True, exist_ok=True)
    vocab = {t: i for i, t in enumerate(SPECIALS + list(chars))}
    (folder / "vocab.json").write_text(json.dumps(vocab))
    if layout == "processor":
        tokenizer = Wav2Vec2CTCTokenizer(str(folder / "vocab.json"), word_delimiter_token="|")
        extractor = Wav2Vec2FeatureExtractor(sampling_rate=sampling_rate, return_attention_mask=attention_mask)
        Wav2Vec2Processor(feature_extractor=extractor, tokenizer=tokenizer).save_pretrained(folder)
    else:
        files = {"preprocessor_config.json": {"do_normalize": True, "feature_size": 1, "padding_side": "right",
                                              "padding_value": 0.0, "return_attention_mask": attention_mask,
                                              "sampling_rate": sampling_rate},
                 "tokenizer_config.json": {"unk_token": "<unk>", "bos_token": "<s>", "eos_token": "</s>",
                                           "pad_token": "<pad>", "do_lower_case": False,
                                           "return_attention_mask": False, "do_normalize": True},
                 "special_tokens_map.json": {"bos_token": "<s>", "eos_token": "</s>", "unk_token": "<unk>",
                                             "pad_token": "<pad>"}}
        for name, content in files.items():
            (folder / name).write_text(json.dumps(content))
    config_class, model_class, shape = families[family]
    cfg = config_class(**{**ARCH, **shape, **config}, vocab_size=vocab_size or len(vocab), pad_token_id=0)
    if architectures is not None:
        cfg.architectures = architectures
        cfg.save_pretrained(folder)               # a config of another kind: the task refuses it before weights
        (folder / "model.safetensors").write_bytes(b"")
        return folder
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        model_class(cfg).save_pretrained(folder)
    return folder


def folder_digest(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir())}


@pytest.fixture(scope="module")
def commands(tmp_path_factory) -> Path:
    if not (shutil.which("espeak-ng") and shutil.which("sox")):
        pytest.skip("espeak-ng and sox are not installed (sudo apt-get install espeak-ng sox)")
    return synth.make_spoken_commands(tmp_path_factory.mktemp("asr"), utterances=40, test_utterances=8, seed=5)


@pytest.fixture(scope="module")
def wav2vec2(tmp_path_factory) -> Path:
    return save_checkpoint(tmp_path_factory.mktemp("ckpt") / "wav2vec2-tiny")


def params(commands: Path, checkpoint: Path, **extra) -> dict:
    return {"data": {"path": str(commands / "train.jsonl"), "test_path": str(commands / "test.jsonl")},
            "model": {"kind": "huggingface", "path": str(checkpoint), **extra.pop("model", {})}, **TINY, **extra}


def make_task(commands: Path, checkpoint: Path, seed: int = 0, **extra) -> RecognitionTask:
    config = RecognitionConfig.model_validate(params(commands, checkpoint, **extra))
    return RecognitionTask(config, Env(seed=seed, progress=False))


@pytest.fixture(scope="module")
def fitted(commands, wav2vec2) -> RecognitionTask:
    task = make_task(commands, wav2vec2)
    task.fit(true_labels(task, list(task.pool_ids())[:16]), make_context(round=0))
    return task


def outputs(task: RecognitionTask, ids) -> dict[str, np.ndarray]:
    chunks = list(task.predict(ids, set(task.outputs)))
    return {k: np.concatenate([c[k] for c in chunks]) for k in task.outputs}


# ------------------------------------------------------------------------------------------ the vocabulary
def test_transcripts_are_spelt_in_the_checkpoints_vocabulary(tmp_path, wav2vec2):
    upper = CTCCheckpoint(wav2vec2)
    ids = upper.spell("open the door's")
    assert [upper.tokens[i] for i in ids] == list("OPEN|THE|DOOR'S")        # a space is the word delimiter
    assert upper.decode(ids) == "open the door's"                            # back in the normalised form
    assert upper.decode([upper.blank, 1, 2, 3] + ids[:4]) == "open"           # special tokens spell nothing
    assert upper.missing("grüße 42") == ["ü", "ß", "4", "2"]
    assert upper.blank == 0 and upper.sample_rate == 16000 and upper.kind == "Wav2Vec2ForCTC"
    lower = CTCCheckpoint(save_checkpoint(tmp_path / "lower", chars="abcdefghijklmnopqrstuvwxyzü"))
    assert [lower.tokens[i] for i in lower.spell("grün tür")] == list("grün|tür")
    assert lower.missing("grüße") == ["ß"]


def test_a_checkpoint_copied_from_the_hub_layout_loads(tmp_path, commands):
    """preprocessor_config.json + tokenizer_config.json + special_tokens_map.json, as wav2vec2-base-960h has
    them (no processor_config.json, no tokenizer class named), without an attention mask for padding."""
    folder = save_checkpoint(tmp_path / "hub", layout="hub", attention_mask=False, feat_extract_norm="group")
    checkpoint = CTCCheckpoint(folder)
    assert checkpoint.attention_mask is False and checkpoint.delimiter == 4
    task = make_task(commands, folder)
    task.fit(true_labels(task, list(task.pool_ids())[:8]), make_context(round=0))
    out = outputs(task, list(task.pool_ids())[8:20])
    assert all(np.all(np.isfinite(v)) and v.shape == (12,) for v in out.values())


# ------------------------------------------------------------------------------------------ the task
class TestHuggingFaceRecognitionConformance(TaskConformance):
    covers = ("speech", "task", "recognition")

    @pytest.fixture(autouse=True)
    def _data(self, commands, wav2vec2):
        self.folder, self.checkpoint = commands, wav2vec2

    def make_task(self):
        return make_task(self.folder, self.checkpoint)

    def initial_labels(self, task):
        return true_labels(task, list(task.pool_ids())[:16])

    def wants(self, task):
        return set(task.outputs)


def test_every_output_on_the_pretrained_model(fitted):
    ids = list(fitted.pool_ids())[16:]
    out = outputs(fitted, ids)
    for key in (PREDICTED_LOSS, PREDICTED_LOSS_NORM, CTC_LEAST_CONFIDENCE, CTC_ENTROPY, DURATION):
        assert out[key].shape == (len(ids),) and np.all(np.isfinite(out[key]))
    assert np.all((out[CTC_LEAST_CONFIDENCE] >= 0) & (out[CTC_LEAST_CONFIDENCE] <= 1))
    seconds = [fitted.label_cost([i])[0] for i in ids]
    np.testing.assert_allclose(out[DURATION], seconds, rtol=1e-5)           # samples / the extractor's rate
    # the loss module is attached to the hidden states: its predictions differ from item to item
    assert np.std(out[PREDICTED_LOSS]) > 0 and np.std(out[PREDICTED_LOSS_NORM]) > 0
    model = fitted.model
    assert isinstance(model, PretrainedCTC) and model.taps == [0, 1, 2]       # 2 layers: all 3 hidden states
    assert any(k.startswith("loss_module.") for k in fitted.state_dict()["model"])
    metrics = fitted.evaluate()
    assert {"wer", "cer", "spearman_raw", "spearman_norm"} <= set(metrics)
    assert fitted.vocab == SPECIALS + list(UPPER)


def test_tap_indices_spread_over_depth():
    assert tap_indices(13, 4) == [0, 4, 8, 12]          # wav2vec2-base: the encoder's input and 12 layers
    assert tap_indices(3, 4) == [0, 1, 2]
    assert tap_indices(13, 1) == [12]


@pytest.mark.filterwarnings("ignore:Support for mismatched key_padding_mask")   # WavLM, called directly below
@pytest.mark.parametrize("family", ["wav2vec2", "wavlm", "data2vec-audio", "unispeech-sat", "wav2vec2-conformer"])
def test_the_taps_are_the_hidden_states_even_under_layerdrop(tmp_path, family):
    """The hooks read what ``output_hidden_states`` returns; transformers 5 returns no hidden state for a layer
    LayerDrop skipped, where the hooks repeat the layer's input, so the loss module always reads the same depths.
    (Every supported family; a model with an adapter after the encoder has fewer CTC frames than hidden states.)"""
    stable = {"do_stable_layer_norm": True} if family in ("wav2vec2", "wavlm") else {}
    adapter = {"add_adapter": True, "adapter_stride": 2, "num_adapter_layers": 1} if family == "wav2vec2" else {}
    checkpoint = CTCCheckpoint(save_checkpoint(tmp_path / family, family=family, **stable, **adapter))
    net = checkpoint.load()
    model = PretrainedCTC(net, taps=4, loss_hidden=8, attention_mask=True, blank=0).eval()
    model.freeze_feature_encoder()
    waves, samples = torch.randn(2, 4000), torch.tensor([4000, 3000])
    mask = (torch.arange(4000)[None] < samples[:, None]).long()
    with torch.no_grad():
        _, mine = model.encode(waves, samples)
        theirs = net(input_values=waves, attention_mask=mask, output_hidden_states=True).hidden_states
    assert len(mine) == len(theirs) == 3 and all(torch.equal(a, b) for a, b in zip(mine, theirs))
    out = model(waves, samples)
    frames = model.frames(samples).tolist()
    assert out.log_probs.shape[1] == frames[0] == (mine[0].shape[1] // 2 if adapter else mine[0].shape[1])
    assert out.lengths.tolist() == frames
    net.config.layerdrop = 0.6
    model.train()
    torch.manual_seed(0)
    for _ in range(10):
        out = model(waves, samples)
        assert out.predicted.shape == (2, 2) and torch.isfinite(out.predicted).all()
        assert len(model.encode(waves, samples)[1]) == 3


def test_the_feature_encoder_stays_frozen(commands, wav2vec2, fitted):
    before = {k: v.clone() for k, v in CTCCheckpoint(wav2vec2).load().state_dict().items()}
    after = {k.removeprefix("net."): v for k, v in fitted.model.state_dict().items()}
    encoder = [k for k in before if k.startswith("wav2vec2.feature_extractor.")]
    assert encoder and all(torch.equal(before[k], after[k]) for k in encoder)
    assert not torch.equal(before["lm_head.weight"], after["lm_head.weight"])          # the rest is fine-tuned
    assert not torch.equal(before["wav2vec2.encoder.layers.0.attention.q_proj.weight"],
                           after["wav2vec2.encoder.layers.0.attention.q_proj.weight"])
    free = make_task(commands, wav2vec2, model={"freeze_feature_encoder": False})
    free.fit(true_labels(free, list(free.pool_ids())[:16]), make_context(round=0))
    state = {k.removeprefix("net."): v for k, v in free.model.state_dict().items()}
    assert any(not torch.equal(before[k], state[k]) for k in encoder)


def test_a_state_round_trip_is_exact_and_leaves_the_folder_alone(commands, wav2vec2, fitted, tmp_path):
    digest = folder_digest(wav2vec2)
    state = fitted.state_dict()
    torch.save(state, tmp_path / "state.pt")
    restored = make_task(commands, wav2vec2)
    restored.load_state_dict(torch.load(tmp_path / "state.pt", weights_only=False))
    ids = list(fitted.pool_ids())[16:]
    for key, value in outputs(fitted, ids).items():
        np.testing.assert_array_equal(value, outputs(restored, ids)[key])
    assert restored.transcribe(restored.test) == fitted.transcribe(fitted.test)
    for name, tensor in fitted.model.state_dict().items():
        assert torch.equal(tensor, restored.model.state_dict()[name]), name
    assert folder_digest(wav2vec2) == digest                 # fine-tuned weights live in activelab's checkpoint
    # a checkpoint of another vocabulary does not fit
    other = make_task(commands, save_checkpoint(tmp_path / "other", chars=UPPER + "-"))
    with pytest.raises(UserError, match="checkpoint does not match"):
        other.load_state_dict(state)


def test_fine_tune_false_starts_each_round_from_the_folder(commands, wav2vec2):
    task = make_task(commands, wav2vec2, fine_tune=False)
    labels = true_labels(task, list(task.pool_ids())[:16])
    task.fit(labels, make_context(round=0))
    first = task.model
    task.fit(labels, make_context(round=0))
    assert task.model is not first
    for name, tensor in first.state_dict().items():          # same weights, same seed: the same model again
        assert torch.equal(tensor, task.model.state_dict()[name]), name


def test_labels_the_vocabulary_cannot_spell_are_refused(fitted):
    item = fitted.pool_ids()[0]
    assert fitted.check_label(item, "Open the DOOR") == "open the door"
    with pytest.raises(ValueError, match="vocabulary has no"):
        fitted.check_label(item, "öffne die tür")
    assert all(h is None or fitted.check_label(i, h) == h
               for i, h in zip(fitted.pool_ids()[:5], fitted.suggest(fitted.pool_ids()[:5])))


@pytest.mark.parametrize("family", ["hubert", "wavlm"])
def test_hubert_and_wavlm_checkpoints_train_and_score(commands, tmp_path, family):
    folder = save_checkpoint(tmp_path / family, family=family, layout="hub", attention_mask=False)
    task = make_task(commands, folder)
    assert task.hf.kind == {"hubert": "HubertForCTC", "wavlm": "WavLMForCTC"}[family]
    task.fit(true_labels(task, list(task.pool_ids())[:8]), make_context(round=0))
    out = outputs(task, list(task.pool_ids())[8:20])
    assert all(np.all(np.isfinite(v)) for v in out.values()) and np.std(out[PREDICTED_LOSS]) > 0
    encoder = task.model.feature_encoder()
    assert encoder is not None and not any(p.requires_grad for p in encoder.parameters())


def test_audio_is_read_at_the_extractors_rate(commands, tmp_path):
    folder = save_checkpoint(tmp_path / "8k", sampling_rate=8000)
    task = make_task(commands, folder)
    utt = task.pool[0]
    assert task.sample_rate == 8000
    assert len(task._features(str(utt.path))) == pytest.approx(task.label_cost([utt.id])[0] * 8000, abs=2)
    with pytest.raises(UserError, match="expects 8000 Hz"):
        make_task(commands, folder, data={"path": str(commands / "train.jsonl"), "resample": False})


# ------------------------------------------------------------------------------------------ scorers
class TestPredictedLossOnACheckpoint(ScorerConformance):
    covers = ("core", "scorer", "predicted_loss")

    @pytest.fixture(autouse=True)
    def _task(self, fitted):
        self.task = fitted

    def make_scorer(self):
        return PredictedLoss()

    def make_task(self):
        return self.task


class TestCTCLeastConfidenceOnACheckpoint(TestPredictedLossOnACheckpoint):
    covers = ("speech", "scorer", "ctc_least_confidence")

    def make_scorer(self):
        return CTCLeastConfidence()


class TestCTCEntropyOnACheckpoint(TestPredictedLossOnACheckpoint):
    covers = ("speech", "scorer", "ctc_entropy")

    def make_scorer(self):
        return CTCEntropy()


# ------------------------------------------------------------------------------------------ errors
def recipe(commands: Path, checkpoint: Path | str, **model) -> dict:
    return {"name": "w2v-asr", "seed": 3,
            "task": {"plugin": "speech", "name": "recognition",
                     "params": params(commands, Path(checkpoint), model=model)},
            "scorer": {"name": "predicted_loss"},
            "oracle": {"name": "simulated", "params": {"delay_s": 0.1}},
            "loop": {"rounds": 1, "initial": 8, "batch": 8, "keep_checkpoints": 1}}


def run_error(tmp_path: Path, data: dict, capsys) -> str:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(data))
    capsys.readouterr()                                  # what making the checkpoints printed
    assert main(["run", str(path), "--out", str(tmp_path / "run"), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


def broken(tmp_path: Path, wav2vec2: Path, name: str, drop: tuple[str, ...] = ()) -> Path:
    folder = tmp_path / name
    shutil.copytree(wav2vec2, folder)
    for file in drop:
        (folder / file).unlink()
    return folder


def test_folders_that_are_not_a_ctc_checkpoint_are_one_line_errors(commands, wav2vec2, tmp_path, capsys):
    from transformers import MarianConfig

    missing = tmp_path / "nowhere"
    assert "does not exist" in run_error(tmp_path, recipe(commands, missing), capsys)
    seq2seq = tmp_path / "marian"
    MarianConfig(vocab_size=12, d_model=8, encoder_layers=1, decoder_layers=1, architectures=["MarianMTModel"]
                 ).save_pretrained(seq2seq)
    line = run_error(tmp_path, recipe(commands, seq2seq), capsys)
    assert str(seq2seq) in line and "MarianMTModel" in line and "not a CTC speech recogniser" in line
    classifier = save_checkpoint(tmp_path / "classifier", architectures=["Wav2Vec2ForSequenceClassification"])
    line = run_error(tmp_path, recipe(commands, classifier), capsys)
    assert "Wav2Vec2ForSequenceClassification" in line and "not a CTC speech recogniser" in line
    cases = [(broken(tmp_path, wav2vec2, "no-vocab", ("vocab.json",)), "no vocab.json"),
             (broken(tmp_path, wav2vec2, "no-extractor", ("processor_config.json",)), "no preprocessor_config.json"),
             (broken(tmp_path, wav2vec2, "no-weights", ("model.safetensors",)), "no weights file"),
             (save_checkpoint(tmp_path / "mismatch", vocab_size=40), "tokenizer has 32 tokens but the model's CTC "
                                                                     "output layer has 40"),
             (save_checkpoint(tmp_path / "no-z", chars="ABCDEFGHIJKLMNOPQRSTUVWXY"), "cannot spell")]
    for folder, fragment in cases:
        line = run_error(tmp_path, recipe(commands, folder), capsys)
        assert "error: task.params.model.path: " in line and str(folder) in line and fragment in line, line
    own = recipe(commands, wav2vec2, kind="own")
    assert "path is for kind huggingface" in run_error(tmp_path, own, capsys)
    pathless = recipe(commands, wav2vec2)
    del pathless["task"]["params"]["model"]["path"]
    assert "kind huggingface needs path" in run_error(tmp_path, pathless, capsys)


def test_the_missing_package_is_named(commands, wav2vec2, monkeypatch):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"needs the transformers package: pip install 'activelab\[speech\]'"):
        make_task(commands, wav2vec2)


# ------------------------------------------------------------------------------------------ the CLI
@pytest.mark.slow
def test_a_run_through_the_cli_and_a_sigkill_then_resume(commands, wav2vec2, tmp_path):
    """`activelab run` with the checkpoint; then the same recipe killed (SIGKILL) after round 0's metrics row,
    while round 1 is being queried, labelled or fitted, and resumed: it restores the fine-tuned model from the
    run's checkpoint and ends where the uninterrupted run ended."""
    digest = folder_digest(wav2vec2)
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump(recipe(commands, wav2vec2)))
    assert main(["run", str(path), "--out", str(tmp_path / "ref"), "-q"]) == 0
    want = snapshot(tmp_path / "ref")
    assert len(want[0]) == 16 and [m["round"] for m in want[2]] == [0, 1]
    assert all({"wer", "cer", "spearman_raw", "spearman_norm", "train_ctc", "train_rank"} <= set(m) for m in want[2])

    killed = tmp_path / "killed"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "activelab.cli", "run", str(path), "--out", str(killed), "-q"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while proc.poll() is None and time.time() < deadline and metrics_rows(killed) < 1:
        time.sleep(0.05)
    time.sleep(random.Random(7).uniform(0.0, 0.8))
    assert proc.poll() is None, f"the run ended before the kill; make it slower: {proc.stderr.read().decode()}"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert main(["resume", str(killed), "-q"]) == 0
    assert snapshot(killed) == want
    assert folder_digest(wav2vec2) == digest
