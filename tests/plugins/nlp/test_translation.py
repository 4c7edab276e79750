"""The nlp plugin: curriculum, data errors, the translation task's conformance, the scorers and a tiny CLI run."""
import io
import json
from functools import lru_cache

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("tokenizers")
pytest.importorskip("sacrebleu")
pytest.importorskip("num2words")

from activelab.cli import main  # noqa: E402
from activelab.plugins.nlp.curriculum import (  # noqa: E402
    CompetenceSampler,
    competence,
    difficulty,
    empirical_cdf,
    length_difficulty,
    rarity_difficulty,
)
from activelab.plugins.nlp.scorers import CurriculumNLL, GreedyNLL, MCDisagreement  # noqa: E402
from activelab.plugins.nlp.translation import DIFFICULTY, NLL, TranslationConfig, TranslationTask  # noqa: E402
from activelab.protocol import Env, collect_scores, rng_for  # noqa: E402
from activelab.testing import ScorerConformance, TaskConformance, make_context, predictions  # noqa: E402

torch.set_num_threads(1)

TINY = {
    "data": {"kind": "numbers", "size": 120, "max_digits": 3, "test_fraction": 0.2},
    "tokenizer": {"vocab_size": 300},
    "model": {"d_model": 16, "heads": 2, "layers": 1, "d_ff": 32, "max_len": 32},
    "steps": 15, "batch_size": 8, "warmup": 5, "eval_batch_size": 32, "lr": 3e-3,
}


def tiny_task(seed=0, **changes):
    return TranslationTask(TranslationConfig.model_validate({**TINY, **changes}), Env(seed=seed, progress=False))


@lru_cache(maxsize=2)
def _fitted_state(seed=0):
    task = tiny_task(seed)
    task.fit({i: task.true_label(i) for i in task.pool_ids()[:20]}, make_context(round=0, seed=seed))
    return task.state_dict()


def fitted_task(seed=0):
    task = tiny_task(seed)
    task.load_state_dict(_fitted_state(seed))
    return task


# ------------------------------------------------------------------------------------------ curriculum
@pytest.mark.parametrize("p", [1, 2])
def test_competence_at_0_half_and_T(p):
    T, c0 = 1000, 0.01
    assert competence(0, T, c0, p) == pytest.approx(c0)
    half = (0.5 * (1 - c0 ** p) + c0 ** p) ** (1 / p)
    assert competence(T / 2, T, c0, p) == pytest.approx(half)
    assert competence(T, T, c0, p) == pytest.approx(1.0)
    assert competence(3 * T, T, c0, p) == 1.0
    if p == 1:
        assert competence(T / 2, T, c0, p) == pytest.approx(0.505)
    else:
        assert competence(T / 2, T, c0, p) == pytest.approx(np.sqrt(0.50005))
    values = [competence(t, T, c0, p) for t in range(0, T + 1, 50)]
    assert values == sorted(values)


def test_cdf_difficulty_in_unit_interval_and_monotone():
    sentences = ["a", "a b c", "a b", "rare zebra words here today", "a b", "a a a a"]
    for kind in ("length", "rarity"):
        raw = difficulty(sentences, kind)
        cdf = empirical_cdf(raw)
        assert np.all((cdf > 0) & (cdf <= 1)) and cdf.max() == 1.0
        for i in range(len(raw)):
            for j in range(len(raw)):
                if raw[i] < raw[j]:
                    assert cdf[i] < cdf[j]
                if raw[i] == raw[j]:
                    assert cdf[i] == cdf[j]
    assert list(length_difficulty(["one", "one two", "one two three"])) == [1, 2, 3]
    rare = rarity_difficulty(["the the", "the zebra"], corpus=["the the the the zebra", "the the"])
    assert rare[1] > rare[0]          # a rarer word is harder


@pytest.mark.parametrize("p", [1, 2])
def test_sampler_never_draws_above_competence(p):
    rng = rng_for(0, "test")
    cdf = empirical_cdf(rng.random(500))
    steps = 400
    sampler = CompetenceSampler(cdf, batch_size=16, steps=steps, rng=rng_for(1, "sampler"), T=300, c0=0.01, p=p)
    seen = np.zeros(len(cdf), bool)
    for t, batch, c in sampler:
        assert c == pytest.approx(competence(t, 300, 0.01, p))
        assert len(batch) and len(set(batch.tolist())) == len(batch)
        assert np.all(cdf[batch] <= max(c, cdf.min()) + 1e-12)
        seen[batch] = True
    assert seen.mean() > 0.9          # competence 1 after T: everything becomes eligible
    # early on, with 5 eligible items out of 500, only those are drawn
    early = CompetenceSampler(cdf, 4, 1, rng_for(2, "s"), T=10 ** 6, c0=0.01, p=p)
    assert set(next(iter(early))[1].tolist()) <= set(np.flatnonzero(cdf <= 0.01).tolist())


def test_sampler_off_is_plain_shuffling_and_never_empty():
    cdf = empirical_cdf(np.arange(10.0))
    off = list(CompetenceSampler(cdf, 4, 5, rng_for(0, "x"), enabled=False))
    drawn = np.concatenate([b for _, b, _ in off])
    assert set(drawn[:10].tolist()) == set(range(10)) and all(c == 1.0 for _, _, c in off)
    few = CompetenceSampler(empirical_cdf(np.arange(3.0)), 8, 2, rng_for(0, "y"), T=1000, c0=0.01)   # 1/3 > c0
    assert all(b.tolist() == [0] for _, b, _ in few)


# ------------------------------------------------------------------------------------------ data errors
def _recipe(tmp_path, data):
    path = tmp_path / "r.yaml"
    task = {**TINY, "data": data}
    path.write_text(yaml.safe_dump({"name": "bad-nlp", "task": {"plugin": "nlp", "name": "translation", "params": task},
                                    "scorer": {"name": "random"}, "loop": {"rounds": 1, "initial": 4, "batch": 2}}))
    return path


def _files(tmp_path, src: bytes, tgt: bytes):
    (tmp_path / "src.txt").write_bytes(src)
    (tmp_path / "tgt.txt").write_bytes(tgt)
    return {"kind": "text", "source_path": str(tmp_path / "src.txt"), "target_path": str(tmp_path / "tgt.txt")}


GOOD = b"".join(b"sentence %d here\n" % i for i in range(8))
BAD_DATA = {
    "mismatched line counts": (lambda t: _files(t, GOOD, GOOD[: GOOD.index(b"sentence 6")]),
                               ["src.txt", "line 7", "tgt.txt"]),
    "empty line": (lambda t: _files(t, GOOD, GOOD.replace(b"sentence 3 here", b"  ")), ["tgt.txt", "line 4", "empty"]),
    "undecodable bytes": (lambda t: _files(t, GOOD.replace(b"sentence 5", b"sent\xff\xfence"), GOOD),
                          ["src.txt", "line 6", "not UTF-8"]),
    "tsv row without a tab": (lambda t: _tsv(t, b"a b\tc d\ne f\tg h\nno tab here\ni j\tk l\n"),
                              ["pairs.tsv", "line 3", "no tab"]),
    "missing file": (lambda t: {"kind": "text", "source_path": str(t / "nope.txt"),
                                "target_path": str(t / "nope2.txt")},
                     ["task.params.data.source_path", "nope.txt", "not found"]),
    "ding not installed": (lambda t: {"kind": "ding", "path": str(t / "no-de-en")},
                           ["task.params.data.path", "no-de-en"]),
}


def _tsv(tmp_path, body):
    (tmp_path / "pairs.tsv").write_bytes(body)
    return {"kind": "tsv", "path": str(tmp_path / "pairs.tsv")}


@pytest.mark.parametrize("case", list(BAD_DATA))
def test_malformed_corpus_exits_2_naming_file_and_line(tmp_path, capsys, case):
    make, words = BAD_DATA[case]
    out = tmp_path / "run"
    assert main(["run", str(_recipe(tmp_path, make(tmp_path))), "--out", str(out), "-q"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("activelab: error")]
    assert len(err) == 1, err
    for word in words:
        assert word in err[0], err[0]
    assert not (out / "recipe.yaml").exists()


def test_missing_ding_package_names_the_apt_package(monkeypatch):
    from activelab.errors import UserError
    from activelab.plugins.nlp import data

    monkeypatch.setattr(data, "DING_PATH", "/nonexistent/trans/de-en")
    with pytest.raises(UserError, match="apt-get install trans-de-en"):
        data.load_data(data.DataConfig(kind="ding"))


def test_tsv_text_and_hf_sources_agree(tmp_path):
    from activelab.plugins.nlp.data import DataConfig, load_data

    pairs = [(f"source {i}", f"cible {i}") for i in range(10)]
    (tmp_path / "p.tsv").write_text("".join(f"{s}\t{t}\n" for s, t in pairs))
    (tmp_path / "s.txt").write_text("".join(f"{s}\n" for s, _ in pairs))
    (tmp_path / "t.txt").write_text("".join(f"{t}\n" for _, t in pairs))
    a = load_data(DataConfig(kind="tsv", path=str(tmp_path / "p.tsv"), test_fraction=0.2))
    b = load_data(DataConfig(kind="text", source_path=str(tmp_path / "s.txt"), target_path=str(tmp_path / "t.txt"),
                             test_fraction=0.2))
    assert a.pool == b.pool and a.test == b.test and len(a.test) == 2
    datasets = pytest.importorskip("datasets")
    rows = [{"en": s, "fr": t} for s, t in pairs]
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"translation": rows[:8]}),
                          "test": datasets.Dataset.from_dict({"translation": rows[8:]})}).save_to_disk(
        str(tmp_path / "hf"))
    c = load_data(DataConfig(kind="hf_disk", path=str(tmp_path / "hf")))
    assert c.pool.sources == [s for s, _ in pairs[:8]] and c.test.targets == [t for _, t in pairs[8:]]


def test_numbers_corpus_is_deterministic():
    from activelab.plugins.nlp.data import DataConfig, load_data

    a, b = load_data(DataConfig(size=50, max_digits=3)), load_data(DataConfig(size=50, max_digits=3))
    assert a.pool == b.pool and a.test == b.test
    assert a.pool.targets[a.pool.ids.index(a.pool.ids[0])]
    assert not set(a.pool.ids) & set(a.test.ids)


# ------------------------------------------------------------------------------------------ the task
class TestTranslationConformance(TaskConformance):
    covers = ("nlp", "task", "translation")

    def make_task(self):
        return tiny_task()

    def fitted(self):
        return fitted_task()

    def wants(self, task):
        return {NLL, DIFFICULTY}

    def some_ids(self, task):
        return list(task.pool_ids())[:40]


@pytest.mark.parametrize("layout", ["torchkit", "0.1"])
def test_same_seed_same_weights_and_exact_round_trip(layout, old_layout):
    a, b = tiny_task(), tiny_task()
    labels = {i: a.true_label(i) for i in a.pool_ids()[:20]}
    a.fit(labels, make_context(round=2, seed=3))
    b.fit(dict(reversed(list(labels.items()))), make_context(round=2, seed=3))
    for (k, v), w in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v, w), k
    buffer = io.BytesIO()
    torch.save(a.state_dict() if layout == "torchkit" else old_layout(a.state_dict(), drop=("members",)), buffer)
    buffer.seek(0)
    c = tiny_task(fine_tune=True)
    c.load_state_dict(torch.load(buffer, weights_only=False))
    a_state, c_state = a.state_dict(), c.state_dict()
    for k, v in a_state["model"].items():
        assert torch.equal(v, c_state["model"][k]), k
    assert json.dumps(a_state["optimizer"]["param_groups"]) == json.dumps(c_state["optimizer"]["param_groups"])
    for k, st in a_state["optimizer"]["state"].items():
        for name, value in st.items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(c_state["optimizer"]["state"][k][name]))
    # fine-tuning continues identically from the restored optimiser
    a.cfg = c.cfg
    more = make_context(round=3, seed=3)
    a.fit(labels, more)
    c.fit(labels, more)
    for (k, v), w in zip(a.model.state_dict().items(), c.model.state_dict().values()):
        assert torch.equal(v, w), k
    other = tiny_task(seed=1)
    other.fit(labels, make_context(round=2, seed=4))
    assert not torch.equal(other.model.embed.weight, a.model.embed.weight)


def test_labels_hooks_and_fit_stats():
    task = fitted_task()
    item = task.pool_ids()[0]
    assert task.label_schema() == {"type": "text"}
    assert task.describe(item)["text"] == task.pool.sources[0]
    assert task.check_label(item, "  deux cents ") == "deux cents"
    for bad in ("", "   ", "a\nb", 3, None):
        with pytest.raises(ValueError):
            task.check_label(item, bad)
    stats = tiny_task().fit({i: task.true_label(i) for i in task.pool_ids()[:10]}, make_context(round=0))
    assert stats["steps"] == 15 and stats["curriculum_steps"] == 15 and 0 < stats["competence"] <= 1


# ------------------------------------------------------------------------------------------ scorers
class _NLPScorerConformance(ScorerConformance):
    n_labels = 20
    n_candidates = 40

    def make_task(self):
        return fitted_task()


class TestGreedyNLL(_NLPScorerConformance):
    covers = ("nlp", "scorer", "nll")

    def make_scorer(self):
        return GreedyNLL()


class TestMCDisagreement(_NLPScorerConformance):
    covers = ("nlp", "scorer", "mc_disagreement")

    def make_scorer(self):
        return MCDisagreement(MCDisagreement.Config(samples=3))


class TestCurriculumNLL(_NLPScorerConformance):
    covers = ("nlp", "scorer", "curriculum_nll")

    def make_scorer(self):
        return CurriculumNLL(CurriculumNLL.Config(rounds=4))


def test_curriculum_nll_ranks_in_competence_items_first():
    task = fitted_task()
    candidates = list(task.pool_ids())[20:]
    scorer = CurriculumNLL(CurriculumNLL.Config(rounds=4, competence="linear"))
    ctx = make_context(round=1)
    c = scorer.competence(1)
    assert 0.2 < c < 0.3
    scores = collect_scores(scorer.score(task, candidates, ctx))
    out = predictions(task, candidates, {NLL, DIFFICULTY})
    inside = out[DIFFICULTY] <= c
    assert inside.any() and (~inside).any()
    assert scores[inside].min() > scores[~inside].max()
    np.testing.assert_allclose(scores[inside], out[NLL][inside])
    # beyond the competence: easiest first
    hard = np.flatnonzero(~inside)
    assert np.all(np.diff(scores[hard][np.argsort(out[DIFFICULTY][hard])]) <= 0)
    # at round >= rounds every item is within the competence: plain nll
    np.testing.assert_allclose(collect_scores(scorer.score(task, candidates, make_context(round=4))), out[NLL])


# ------------------------------------------------------------------------------------------ end to end
@pytest.mark.slow
def test_tiny_cli_run_computes_bleu(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({
        "name": "tiny-nmt", "seed": 0,
        "task": {"plugin": "nlp", "name": "translation",
                 "params": {**TINY, "track": {"every": 10, "bleu": 0.0, "sentences": 8}}},
        "scorer": {"name": "curriculum_nll", "params": {"rounds": 2}},
        "loop": {"rounds": 2, "initial": 10, "batch": 5},
    }))
    out = tmp_path / "run"
    assert main(["run", str(path), "--out", str(out), "-q"]) == 0
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["n_labeled"] for r in rows] == [10, 15, 20]
    for r in rows:
        assert 0.0 <= r["bleu"] <= 100.0 and 0.0 <= r["chrf"] <= 100.0
        assert r["steps"] == 15 and r["steps_to_bleu"] == 10
    import sacrebleu

    from activelab.loop import Runner

    runner = Runner(out, progress=False)
    try:
        runner._ensure_model(2)
        task = runner.task
        hyps = task.translate(task.test.sources)
        assert task.evaluate()["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hyps, [task.test.targets]).score)
        assert rows[-1]["bleu"] == pytest.approx(task.evaluate()["bleu"])
    finally:
        runner.close()


def test_label_cost_is_source_words():
    task = tiny_task()
    ids = list(task.pool_ids())[:6]
    words = [max(1, len(task.pool.sources[task.items.position(i)].split())) for i in ids]
    assert task.label_cost(ids).tolist() == words and task.cost_unit == "source words"
    assert len(set(words)) > 1          # the demo corpus has sentences of different lengths
