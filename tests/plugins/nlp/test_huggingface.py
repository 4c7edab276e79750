"""The translation task on a local transformers checkpoint (``model: {kind: huggingface, path: DIR}``).

No real checkpoint is needed (or downloaded): each test family is a tiny randomly initialised model written with
``save_pretrained`` into a temporary folder, with a tokenizer trained here on the demo corpus by the ``tokenizers``
library: MarianMT (the architecture of the opus-mt models; its tokenizer a fast BPE one, as the real models' needs
sentencepiece), T5 (a ``prefix``) and NLLB (an M2M100 model with an ``NllbTokenizer``: language codes). Checked:
a full CLI round, the task and scorer conformance kits, MC dropout really active (functional dropout in Marian,
``nn.Dropout`` modules in T5), exact state round trips, kill -9 and resume, and every folder problem as a one-line
user error.
"""
from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("tokenizers")
pytest.importorskip("sacrebleu")
pytest.importorskip("num2words")
transformers = pytest.importorskip("transformers")

from activelab.cli import main  # noqa: E402
from activelab.errors import UserError  # noqa: E402
from activelab.plugins.nlp.data import DataConfig, load_data  # noqa: E402
from activelab.plugins.nlp.hf import fingerprint, functional_mc_dropout  # noqa: E402
from activelab.plugins.nlp.scorers import CurriculumNLL, GreedyNLL, MCDisagreement  # noqa: E402
from activelab.plugins.nlp.translation import DIFFICULTY, NLL, TranslationConfig, TranslationTask  # noqa: E402
from activelab.protocol import MC, Env  # noqa: E402
from activelab.testing import ScorerConformance, TaskConformance, make_context, predictions  # noqa: E402

torch.set_num_threads(1)

DATA = {"kind": "numbers", "size": 120, "max_digits": 3, "test_fraction": 0.2}
TRAIN = {"steps": 12, "batch_size": 8, "warmup": 4, "eval_batch_size": 32, "lr": 3e-3}
SIZES = {"d_model": 16, "encoder_layers": 1, "decoder_layers": 1, "encoder_attention_heads": 2,
         "decoder_attention_heads": 2, "encoder_ffn_dim": 32, "decoder_ffn_dim": 32, "max_position_embeddings": 64,
         "dropout": 0.1}
ROOT = Path(__file__).resolve().parents[3]


# ------------------------------------------------------------------------------------------ tiny checkpoints
def _corpus() -> list[str]:
    data = load_data(DataConfig(**DATA))
    return [*data.pool.sources, *data.pool.targets]


def _bpe(specials: list[str], vocab_size: int = 160, eos: str | None = None):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(_corpus(), trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                                          show_progress=False))
    if eos is not None:               # "tokens </s>", as Marian and T5 tokenizers encode
        tok.post_processor = processors.TemplateProcessing(single=f"$A {eos}", pair=f"$A $B {eos}",
                                                           special_tokens=[(eos, tok.token_to_id(eos))])
    return tok


def _fast_tokenizer():
    from transformers import PreTrainedTokenizerFast

    return PreTrainedTokenizerFast(tokenizer_object=_bpe(["<pad>", "</s>", "<unk>"], eos="</s>"),
                                   pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def write_marian(folder: Path, vocab_size: int | None = None, dropout: float = 0.1) -> Path:
    """A MarianMT model (pad 0 = decoder start, EOS 1) with a fast BPE tokenizer."""
    from transformers import MarianConfig, MarianMTModel

    tokenizer = _fast_tokenizer()
    config = MarianConfig(vocab_size=vocab_size or len(tokenizer), **{**SIZES, "dropout": dropout}, pad_token_id=0,
                          eos_token_id=1, decoder_start_token_id=0, forced_eos_token_id=1)
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_t5(folder: Path) -> Path:
    from transformers import T5Config, T5ForConditionalGeneration

    tokenizer = _fast_tokenizer()
    config = T5Config(vocab_size=len(tokenizer), d_model=16, d_kv=8, d_ff=32, num_layers=1, num_decoder_layers=1,
                      num_heads=2, dropout_rate=0.1, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    torch.manual_seed(0)
    T5ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_nllb(folder: Path) -> Path:
    """An M2M100 model (NLLB's architecture) with an NllbTokenizer: ``<lang> tokens </s>`` on either side."""
    from transformers import M2M100Config, M2M100ForConditionalGeneration, NllbTokenizer

    model = json.loads(_bpe(["<s>", "<pad>", "</s>", "<unk>"]).to_str())["model"]
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
    tokenizer = NllbTokenizer(vocab=model["vocab"], merges=merges, src_lang="eng_Latn", tgt_lang="fra_Latn",
                              additional_special_tokens=["eng_Latn", "fra_Latn", "deu_Latn"])
    config = M2M100Config(vocab_size=len(tokenizer), **SIZES, pad_token_id=1, eos_token_id=2, bos_token_id=0,
                          decoder_start_token_id=2)
    torch.manual_seed(0)
    M2M100ForConditionalGeneration(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def marian(tmp_path_factory) -> Path:
    return write_marian(tmp_path_factory.mktemp("opus-mt-tiny"))


@lru_cache(maxsize=1)
def _shared_marian() -> Path:
    """One Marian folder for the conformance classes (their factories take no fixtures)."""
    import atexit
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="activelab-hf-marian-"))
    atexit.register(shutil.rmtree, folder, True)
    return write_marian(folder)


def hf_task(path: Path, seed: int = 0, **model) -> TranslationTask:
    params = {"data": DATA, "model": {"kind": "huggingface", "path": str(path), "max_len": 32, **model}, **TRAIN}
    return TranslationTask(TranslationConfig.model_validate(params), Env(seed=seed, progress=False))


@lru_cache(maxsize=1)
def _fitted_state():
    task = hf_task(_shared_marian())
    task.fit({i: task.true_label(i) for i in task.pool_ids()[:20]}, make_context(round=0, seed=0))
    return task.state_dict()


def fitted_hf_task() -> TranslationTask:
    task = hf_task(_shared_marian())
    task.load_state_dict(_fitted_state())
    return task


# ------------------------------------------------------------------------------------------ conformance
class TestHFTranslationConformance(TaskConformance):
    covers = ("nlp", "task", "translation")

    def make_task(self):
        return hf_task(_shared_marian())

    def fitted(self):
        return fitted_hf_task()

    def wants(self, task):
        return {NLL, DIFFICULTY}

    def some_ids(self, task):
        return list(task.pool_ids())[:24]


class _HFScorerConformance(ScorerConformance):
    n_labels = 20
    n_candidates = 24

    def make_task(self):
        return fitted_hf_task()


class TestHFGreedyNLL(_HFScorerConformance):
    covers = ("nlp", "scorer", "nll")

    def make_scorer(self):
        return GreedyNLL()


class TestHFMCDisagreement(_HFScorerConformance):
    covers = ("nlp", "scorer", "mc_disagreement")

    def make_scorer(self):
        return MCDisagreement(MCDisagreement.Config(samples=3))


class TestHFCurriculumNLL(_HFScorerConformance):
    covers = ("nlp", "scorer", "curriculum_nll")

    def make_scorer(self):
        return CurriculumNLL(CurriculumNLL.Config(rounds=4))


# ------------------------------------------------------------------------------------------ the model
def test_nll_is_that_of_the_models_own_generate(marian):
    task = hf_task(marian, beam_size=2)
    ids = list(task.pool_ids())[:6]
    sources = [task._src[task.items.position(i)] for i in ids]
    with torch.inference_mode():
        out = task.model.generate(input_ids=torch.tensor([sources[0]]), num_beams=2, do_sample=False,
                                  max_new_tokens=min(2 * len(sources[0]) + 10, 32))
        row = out[0].tolist()
        row = row[: row.index(1, 1) + 1] if 1 in row[1:] else row
        logits = task.model(input_ids=torch.tensor([sources[0]]), decoder_input_ids=torch.tensor([row[:-1]])).logits
        want = -logits.log_softmax(-1)[0, torch.arange(len(row) - 1), torch.tensor(row[1:])].mean()
    got = predictions(task, ids[:1], {NLL})[NLL]     # alone: the length limit is its own (2 x source + 10)
    assert got[0] == pytest.approx(float(want), rel=1e-5)
    assert task.translate([task.pool.sources[0]]) == [task.tokenizer.decode(row, skip_special_tokens=True).strip()]
    # before any fit the checkpoint already translates: its translations are offered as suggestions
    assert not task.fitted
    assert task.suggest(ids[:3]) == [t or None for t in task.translate(task.pool.sources[:3])]


@pytest.mark.parametrize("family", ["marian", "t5"])
def test_mc_dropout_is_really_active_and_eval_is_not(tmp_path, family):
    """Marian applies dropout functionally (F.dropout), T5 through nn.Dropout modules: both are sampled."""
    folder = write_marian(tmp_path / "m") if family == "marian" else write_t5(tmp_path / "t5")
    task = hf_task(folder)
    ids = list(task.pool_ids())[:8]
    plain = predictions(task, ids, {NLL})[NLL]
    np.testing.assert_array_equal(plain, predictions(task, ids, {NLL})[NLL])   # eval mode: no dropout
    for mode in ("dropout", "batchwise"):
        passes = predictions(task, ids, {NLL}, MC(samples=3, mode=mode, seed=1))[NLL]
        assert passes.shape == (3, len(ids))
        assert np.all(passes[0] != passes[1]) and np.all(passes[1] != passes[2]), (mode, passes)
        assert not np.allclose(passes.mean(0), plain, rtol=0, atol=1e-9)
        again = predictions(task, ids, {NLL}, MC(samples=3, mode=mode, seed=1))[NLL]
        np.testing.assert_array_equal(passes, again)                            # seeded
    # the block leaves nothing behind: functional dropout and the modes are as they were
    assert torch.nn.functional.dropout.__module__ == "torch.nn.functional"
    assert not any(m.training for m in task.model.modules())
    assert task.model.config._attn_implementation == "sdpa"
    np.testing.assert_array_equal(plain, predictions(task, ids, {NLL})[NLL])


def test_mc_dropout_of_a_checkpoint_without_dropout_is_a_user_error(tmp_path):
    task = hf_task(write_marian(tmp_path / "m", dropout=0.0))
    ids = list(task.pool_ids())[:4]
    with pytest.raises(UserError, match=r"task.params.model.dropout: the checkpoint's dropout is 0"):
        predictions(task, ids, {NLL}, MC(samples=2, mode="dropout", seed=0))
    # the recipe's dropout replaces the checkpoint's
    task = hf_task(tmp_path / "m", dropout=0.2)
    passes = predictions(task, ids, {NLL}, MC(samples=2, mode="dropout", seed=0))[NLL]
    assert np.all(passes[0] != passes[1])


def test_functional_mc_dropout_counts_sites_per_forward():
    class Net(torch.nn.Module):
        def forward(self, x):
            x = torch.nn.functional.dropout(x, 0.5, self.training)
            return torch.nn.functional.dropout(x, 0.5, self.training)

    net, x = Net().eval(), torch.ones(2, 3, 8)
    with functional_mc_dropout(net, "batchwise", seed=3) as drop:
        first = [net(x) for _ in drop.members(2)]
        second = [net(x) for _ in drop.members(2)]
    for a, b in zip(first, second):          # member t is the same partial network each time
        torch.testing.assert_close(a, b)
        torch.testing.assert_close(a[0], a[1])   # and the same for every item
    assert not torch.equal(first[0], first[1])
    torch.testing.assert_close(net(x), x)


def test_state_round_trip_is_exact_and_training_continues_identically(marian):
    a = hf_task(marian, restart_each_round=False)
    labels = {i: a.true_label(i) for i in a.pool_ids()[:16]}
    a.fit(labels, make_context(round=0, seed=2))
    buffer = io.BytesIO()
    torch.save(a.state_dict(), buffer)
    buffer.seek(0)
    b = hf_task(marian, restart_each_round=False)
    b.load_state_dict(torch.load(buffer, weights_only=False))
    sa, sb = a.state_dict(), b.state_dict()
    assert sa["optimizer"] is not None
    for k, v in sa["model"].items():
        assert torch.equal(v, sb["model"][k]), k
    for k, st in sa["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(sb["optimizer"]["state"][k][name]))
    more = make_context(round=1, seed=2)
    a.fit(labels, more)
    b.fit(labels, more)
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    # restarting each round: the state needs no optimiser, and a round from the checkpoint is the same either way
    c = hf_task(marian)
    c.fit(labels, make_context(round=0, seed=2))
    state = c.state_dict()
    assert state["optimizer"] is None
    d = hf_task(marian)
    d.load_state_dict(state)
    c.fit(labels, more)
    d.fit(labels, more)
    for (k, v), w in zip(c.model.state_dict().items(), d.model.state_dict().values()):
        assert torch.equal(v, w), k
    # continuing and restarting differ; the checkpoint folder was never written
    assert not torch.equal(c.model.lm_head.weight, a.model.lm_head.weight)
    assert a.backend.fingerprint == fingerprint(marian)


def test_a_changed_checkpoint_folder_is_refused_on_resume(tmp_path):
    folder = write_marian(tmp_path / "m")
    task = hf_task(folder)
    state = task.state_dict()
    write_marian(folder, dropout=0.3)              # another model in the same folder
    with pytest.raises(UserError, match="checkpoint does not match"):
        hf_task(folder).load_state_dict(state)


def test_t5_prefix_and_nllb_language_codes(tmp_path):
    t5 = hf_task(write_t5(tmp_path / "t5"), prefix="translate English to French: ")
    assert t5._src[0] == t5.tokenizer("translate English to French: " + t5.pool.sources[0])["input_ids"]
    assert t5._src[0] != t5.tokenizer(t5.pool.sources[0])["input_ids"]

    nllb = hf_task(write_nllb(tmp_path / "nllb"), source_lang="eng_Latn", target_lang="deu_Latn")
    tok = nllb.tokenizer
    eng, deu = tok.convert_tokens_to_ids("eng_Latn"), tok.convert_tokens_to_ids("deu_Latn")
    assert nllb._src[0][0] == eng and nllb._src[0][-1] == tok.eos_token_id
    assert nllb.backend.encode_targets(["cent"])[0][0] == deu
    rows = nllb.backend.decode(nllb.model, nllb._src[:3], None)
    assert all(r[0] == 2 and r[1] == deu for r in rows)            # decoder start, then the forced language code
    stats = nllb.fit({i: nllb.true_label(i) for i in nllb.pool_ids()[:10]}, make_context(round=0))
    assert np.isfinite(stats["train_loss"]) and np.isfinite(nllb.evaluate()["bleu"])
    with pytest.raises(UserError, match=r"task.params.model.target_lang: 'xx_Latn' is not a language code"):
        hf_task(tmp_path / "nllb", target_lang="xx_Latn")
    with pytest.raises(UserError, match=r"task.params.model.source_lang: .* no source language setting"):
        hf_task(tmp_path / "t5", source_lang="en")


def write_marian_spm(folder: Path) -> Path:
    """A MarianMT model with a real MarianTokenizer (source.spm, target.spm, vocab.json), as opus-mt folders hold."""
    import sentencepiece as spm
    from transformers import MarianConfig, MarianMTModel, MarianTokenizer

    data = load_data(DataConfig(**DATA))
    folder.mkdir(parents=True)
    pieces: set[str] = set()
    for side, texts in (("source", data.pool.sources), ("target", data.pool.targets)):
        (folder / f"{side}.txt").write_text("\n".join(texts))
        spm.SentencePieceTrainer.train(input=str(folder / f"{side}.txt"), model_prefix=str(folder / side),
                                       vocab_size=50, model_type="unigram", hard_vocab_limit=False, bos_id=-1,
                                       eos_id=-1, pad_id=-1, unk_id=0, minloglevel=2)
        (folder / f"{side}.model").rename(folder / f"{side}.spm")
        for name in (f"{side}.txt", f"{side}.vocab"):
            (folder / name).unlink()
        model = spm.SentencePieceProcessor(model_file=str(folder / f"{side}.spm"))
        pieces |= {model.id_to_piece(i) for i in range(model.get_piece_size())} - {"<unk>"}
    vocab = {"</s>": 0, "<unk>": 1, **{p: 2 + i for i, p in enumerate(sorted(pieces))}}
    vocab["<pad>"] = len(vocab)                       # opus-mt: EOS 0, pad = decoder start = the last id
    (folder / "vocab.json").write_text(json.dumps(vocab))
    tokenizer = MarianTokenizer(str(folder / "source.spm"), str(folder / "target.spm"), str(folder / "vocab.json"),
                                source_lang="en", target_lang="fr")
    tokenizer.save_pretrained(folder)
    config = MarianConfig(vocab_size=len(tokenizer), **SIZES, pad_token_id=tokenizer.pad_token_id, eos_token_id=0,
                          decoder_start_token_id=tokenizer.pad_token_id, forced_eos_token_id=0)
    torch.manual_seed(0)
    MarianMTModel(config).save_pretrained(folder)
    return folder


def test_marian_with_its_sentencepiece_tokenizer(tmp_path):
    """The layout of an opus-mt folder: its tokenizer needs sentencepiece (the test is skipped without it)."""
    pytest.importorskip("sentencepiece")
    task = hf_task(write_marian_spm(tmp_path / "opus-mt"), beam_size=2)
    assert type(task.tokenizer).__name__ == "MarianTokenizer"
    assert task._src[0][-1] == 0 and task.backend.start == task.tokenizer.pad_token_id
    target = task.backend.encode_targets([task.true_label(task.pool_ids()[0])])[0]
    assert target == task.tokenizer(text_target=task.true_label(task.pool_ids()[0]))["input_ids"]
    stats = task.fit({i: task.true_label(i) for i in task.pool_ids()[:16]}, make_context(round=0))
    assert np.isfinite(stats["train_loss"]) and np.isfinite(task.evaluate()["chrf"])
    passes = predictions(task, list(task.pool_ids())[:4], {NLL}, MC(samples=2, mode="dropout", seed=0))[NLL]
    assert np.all(passes[0] != passes[1])


def test_settings_of_the_other_kind_are_refused(marian):
    model = {"kind": "huggingface", "path": str(marian)}
    for extra, word in (({"tokenizer": {"vocab_size": 400}}, "tokenizer"), ({"fine_tune": True}, "restart_each_round")):
        with pytest.raises(ValueError, match=word):
            TranslationConfig.model_validate({"model": model, **extra})
    with pytest.raises(ValueError, match="d_model"):
        TranslationConfig.model_validate({"model": {**model, "d_model": 16}})
    old = TranslationConfig.model_validate({"model": {"d_model": 16}})           # old recipes: no kind
    assert old.model.kind == "transformer" and old.learning_rate == 1e-3
    assert TranslationConfig.model_validate({"model": model}).learning_rate == 5e-5


# ------------------------------------------------------------------------------------------ end to end
def _recipe(tmp_path: Path, model: dict, rounds: int = 1, **loop) -> Path:
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "hf-nmt", "seed": 0,
        "task": {"plugin": "nlp", "name": "translation", "params": {"data": DATA, "model": model, **TRAIN}},
        "scorer": {"plugin": "nlp", "name": "curriculum_nll", "params": {"rounds": 2}},
        "loop": {"rounds": rounds, "initial": 10, "batch": 5, **loop},
    }))
    return path


@pytest.mark.slow
def test_cli_round_on_a_checkpoint(tmp_path, marian):
    before = {p.name: p.stat().st_mtime_ns for p in marian.iterdir()}
    out = tmp_path / "run"
    model = {"kind": "huggingface", "path": str(marian), "max_len": 32, "beam_size": 2}
    assert main(["run", str(_recipe(tmp_path, model)), "--out", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 15]
    for r in rows:
        assert 0.0 <= r["bleu"] <= 100.0 and 0.0 <= r["chrf"] <= 100.0 and r["steps"] == 12
        assert 0 < r["competence"] <= 1
    assert {p.name: p.stat().st_mtime_ns for p in marian.iterdir()} == before      # the folder is only read


def _cli(*args):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "activelab.cli", *args], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE)


def _metrics(run: Path) -> list[dict]:
    path = run / "metrics.jsonl"
    rows = [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []
    return [{k: v for k, v in r.items() if not k.endswith("_seconds")} for r in rows]


@pytest.mark.slow
def test_kill_9_and_resume_ends_where_an_uninterrupted_run_ends(tmp_path, marian):
    model = {"kind": "huggingface", "path": str(marian), "max_len": 32, "restart_each_round": False}
    recipe = _recipe(tmp_path, model, rounds=3, keep_checkpoints=1)
    assert main(["run", str(recipe), "--out", str(tmp_path / "ref"), "-q"]) == 0
    run = tmp_path / "killed"
    proc = _cli("run", str(recipe), "--out", str(run), "-q")
    deadline = time.time() + 300
    while proc.poll() is None and len(_metrics(run)) < 2 and time.time() < deadline:
        time.sleep(0.05)
    assert proc.poll() is None, "the run ended before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert len(_metrics(run)) < 4
    proc = _cli("resume", str(run), "-q")
    assert proc.wait(timeout=600) == 0, proc.stderr.read().decode()
    assert _metrics(run) == _metrics(tmp_path / "ref")


# ------------------------------------------------------------------------------------------ errors
def _bert(folder: Path) -> Path:
    from transformers import BertConfig, BertForSequenceClassification

    BertForSequenceClassification(BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                             intermediate_size=16)).save_pretrained(folder)
    _fast_tokenizer().save_pretrained(folder)
    return folder


def _without(folder: Path, *names: str) -> Path:
    for name in names:
        (folder / name).unlink()
    return folder


BAD_CHECKPOINTS = {
    "missing folder": (lambda t, m: t / "no-such-model", ["no-such-model", "not found"]),
    "a file": (lambda t, m: Path(shutil.copy(m / "config.json", t / "config.json")), ["is not a folder"]),
    "no config": (lambda t, m: _without(Path(shutil.copytree(m, t / "c")), "config.json"), ["no config.json"]),
    "a classifier": (lambda t, m: _bert(t / "bert"),
                     ["bert", "BertForSequenceClassification", "not a sequence-to-sequence model"]),
    "no weights": (lambda t, m: _without(Path(shutil.copytree(m, t / "c")), "model.safetensors"),
                   ["no model weights"]),
    "no tokenizer": (lambda t, m: _without(Path(shutil.copytree(m, t / "c")), "tokenizer.json",
                                           "tokenizer_config.json"), ["no tokenizer files"]),
    "tokenizer.json missing": (lambda t, m: _without(Path(shutil.copytree(m, t / "c")), "tokenizer.json"),
                               ["cannot load its tokenizer", "no tokenizer.json"]),
    "vocabulary mismatch": (lambda t, m: write_marian(t / "small", vocab_size=100),
                            ["the tokenizer has 160 tokens but the model's embeddings hold 100"]),
}


@pytest.mark.parametrize("case", list(BAD_CHECKPOINTS))
def test_a_bad_checkpoint_is_one_line_naming_the_path(tmp_path, capsys, marian, case):
    make, words = BAD_CHECKPOINTS[case]
    folder = make(tmp_path, marian)
    out = tmp_path / "run"
    recipe = _recipe(tmp_path, {"kind": "huggingface", "path": str(folder)})
    assert main(["run", str(recipe), "--out", str(out), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activelab: error")]
    assert len(err) == 1, err
    assert "task.params.model.path" in err[0] and str(folder) in err[0], err[0]
    for word in words:
        assert word in err[0], err[0]
    assert not (out / "recipe.yaml").exists()


def test_transformers_not_installed_names_the_extra(monkeypatch, marian):
    monkeypatch.setitem(sys.modules, "transformers", None)
    with pytest.raises(UserError, match=r"huggingface needs the transformers package: pip install 'activelab\[nlp\]'"):
        hf_task(marian)


def test_the_gpu_recipe_reads_and_names_a_checkpoint_folder():
    recipe = yaml.safe_load((ROOT / "recipes" / "marian_nmt_gpu.yaml").read_text())
    model = recipe["task"]["params"]["model"]
    assert model["kind"] == "huggingface" and model["path"]
    config = TranslationConfig.model_validate(recipe["task"]["params"])
    assert config.model.kind == "huggingface"
