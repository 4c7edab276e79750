"""Neural machine translation with curriculum active learning: the task the nlp plugin offers as ``translation``.

- Data (:mod:`.data`): the pool is the untranslated source sentences; a label is the target sentence (a string)
  an oracle gives: the reference for the simulated oracle, or what a person types (``describe`` shows the
  source, ``suggest`` the current model's translation). Evaluation translates a held-out test split.
- Model, ``model.kind``:

  - ``transformer`` (the default, :mod:`.transformer`): a small pre-norm Transformer encoder-decoder trained from
    scratch (no download), on one byte-level BPE vocabulary (``tokenizers``, ``vocab_size`` entries) trained
    once, at construction, on the pool's source sentences and the pool's references taken as monolingual
    target-language text (no alignment is used; a vocabulary must exist before the first label, and a
    byte-level one still encodes any text a person types). Each round trains a fresh model (``fine_tune:
    false``, the default, as the curriculum starts from c0 each time) or continues from the previous round's.
  - ``huggingface`` (:mod:`.hf`): a local ``transformers`` seq2seq checkpoint (MarianMT, T5, mBART, NLLB, ...)
    and its own tokenizer, fine-tuned each round from the checkpoint (``restart_each_round: true``, the
    default) or from the previous round's weights; it decodes with its own ``generate`` (``beam_size``).

- :meth:`TranslationTask.fit`: ``T = max(steps, ceil(epochs * n_labelled / batch_size))`` Adam steps on the
  labelled pairs with linear warm-up, label smoothing and gradient clipping; the batches come from the
  competence-based curriculum sampler (:mod:`.curriculum`) over the labelled pairs' CDF source difficulty, or
  from plain shuffling with ``curriculum.enabled: false``. Optionally (``track.every``) BLEU on the first
  ``track.sentences`` test pairs is measured during training, and the fit statistics report ``steps_to_bleu``:
  the first tracked step reaching ``track.bleu`` (left out of the round's metrics when it is not reached), and
  ``final_tracked_bleu``.
- :meth:`predict` outputs ``nll`` (length-normalised negative log-likelihood of the model's own translation,
  greedy or, for a checkpoint, ``beam_size`` beams; under MC dropout, one value per dropout pass over the same
  translation) and ``difficulty`` (the source sentence's CDF difficulty over the whole pool), which the plugin's
  scorers use.
- Metrics: sacrebleu corpus BLEU (primary) and chrF of the model's translations of the test split.

The model's operations (tokens, loss, decoding, NLL, MC dropout, what a checkpoint must match) are a backend's:
:class:`OwnTransformer` here, :class:`~activelab.plugins.nlp.hf.HFSeq2Seq` for a checkpoint; the task does the rest.
All randomness of a fit (initialisation, batches, dropout) comes from (seed, round) inside
:func:`activelab.torchkit.seeded`: the same labels give bit-identical weights on the CPU.
"""
from __future__ import annotations

import hashlib
import json
import math
from contextlib import AbstractContextManager
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator
from torch import nn
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import MC, MC_DROPOUT, Context, Env, ItemId, rng_for, seed_for
from activelab.torchkit import ItemIndex, build_optimizer, check, checkpoint, mc_dropout, restore, seeded
from activelab.torchkit.dropout import MCDropout

from .curriculum import POWERS, CompetenceSampler, CurriculumConfig, difficulty, empirical_cdf
from .data import DataConfig, check_text, load_data  # check_text: the label rule the data readers apply too
from .hf import HFModelConfig  # the config only: transformers is imported when a checkpoint loads
from .transformer import Seq2SeqTransformer

NLL = "nll"                 # (B,) length-normalised NLL of the greedy translation; (T, B) under MC dropout
DIFFICULTY = "difficulty"   # (B,) CDF difficulty of the source over the pool; broadcast to (T, B) under MC
SPECIALS = ("<pad>", "<s>", "</s>")
PAD, BOS, EOS = 0, 1, 2


class TokenizerConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    vocab_size: int = Field(1000, ge=300, description="joint byte-level BPE vocabulary (256 bytes + merges)")
    min_frequency: int = Field(2, ge=1)


class ModelConfig(BaseModel):
    """The own small Transformer, trained from scratch (the default; ``kind`` may be left out)."""

    model_config = ConfigDict(extra="forbid")
    kind: Literal["transformer"] = Field("transformer", description="transformer: our own, trained from scratch")
    d_model: int = Field(64, ge=8)
    heads: int = Field(4, ge=1)
    layers: int = Field(2, ge=1, description="encoder layers = decoder layers")
    d_ff: int = Field(256, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)
    max_len: int = Field(64, ge=4, description="tokens per sentence, EOS included; longer ones are cut")


class TrackConfig(BaseModel):
    """BLEU measured during training, for the steps each setting needs to reach a fixed BLEU (off by default)."""

    model_config = ConfigDict(extra="forbid")
    every: int = Field(0, ge=0, description="measure every this many steps (0 = off)")
    bleu: float = Field(50.0, ge=0, le=100, description="the BLEU whose first tracked step is reported")
    sentences: int = Field(100, ge=1, description="first test pairs translated for tracking")


MODEL_KINDS = {"transformer": ModelConfig, "huggingface": HFModelConfig}
DEFAULT_LR = {"transformer": 1e-3, "huggingface": 5e-5}


class TranslationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    tokenizer: TokenizerConfig = Field(default_factory=TokenizerConfig)
    model: ModelConfig | HFModelConfig = Field(
        default_factory=ModelConfig,
        description="kind transformer (default): our own, from scratch; kind huggingface: a local transformers "
                    "seq2seq checkpoint, fine-tuned")
    curriculum: CurriculumConfig = Field(default_factory=CurriculumConfig)
    steps: int = Field(600, ge=1, description="training steps per round (at least)")
    epochs: float | None = Field(None, gt=0, description="or this many passes over the labels, if more steps")
    batch_size: int = Field(32, ge=1)
    lr: float | None = Field(None, gt=0, description="Adam learning rate (default 1e-3 for kind transformer, 5e-5 "
                                                     "for kind huggingface)")
    warmup: int = Field(100, ge=0, description="linear learning-rate warm-up steps")
    label_smoothing: float = Field(0.1, ge=0, lt=1)
    clip_norm: float = Field(1.0, gt=0)
    fine_tune: bool = Field(False, description="kind transformer: continue from the previous round's weights instead "
                                               "of a fresh model (kind huggingface: model.restart_each_round)")
    max_decode: int | None = Field(None, ge=1, description="longest translation in tokens (default: 2 x source + 10)")
    eval_batch_size: int = Field(256, ge=1)
    track: TrackConfig = Field(default_factory=TrackConfig)

    @field_validator("model", mode="before")
    @classmethod
    def _model_of_its_kind(cls, value: Any) -> Any:
        """The model section's class by its ``kind`` (absent: transformer), so errors name ``model.<field>``."""
        if not isinstance(value, Mapping):
            return value
        kind = value.get("kind", "transformer")
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        return MODEL_KINDS[kind].model_validate(value)

    @model_validator(mode="after")
    def _settings_of_the_model_kind(self) -> "TranslationConfig":
        if isinstance(self.model, HFModelConfig):      # (a run folder's recipe holds every default: compare values)
            if self.tokenizer != TokenizerConfig():
                raise ValueError("tokenizer: kind huggingface uses the checkpoint's own tokenizer; remove this section")
            if self.fine_tune:
                raise ValueError("fine_tune: for kind huggingface set model.restart_each_round instead (false = "
                                 "continue from the previous round's weights)")
        return self

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.model.kind]


def _pad(seqs: Sequence[Sequence[int]], device: torch.device) -> torch.Tensor:
    width = max((len(s) for s in seqs), default=1)
    out = torch.full((len(seqs), max(width, 1)), PAD, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = torch.as_tensor(list(s), dtype=torch.long)
    return out.to(device)


def build_tokenizer(texts: Sequence[str], cfg: TokenizerConfig):
    """A byte-level BPE tokenizer trained on ``texts`` (deterministic for the same texts and settings)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=cfg.vocab_size, min_frequency=cfg.min_frequency,
                                  special_tokens=list(SPECIALS), initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(list(texts), trainer)
    assert [tok.token_to_id(s) for s in SPECIALS] == [PAD, BOS, EOS]
    return tok


class OwnTransformer:
    """The translation task's model operations for the own :class:`Seq2SeqTransformer` and byte-level BPE.

    A source or target is its token ids without BOS/EOS (at most ``max_len - 1``); a decode is the greedy
    translation's ids without BOS/EOS."""

    def __init__(self, tokenizer, cfg: ModelConfig, device: torch.device):
        self.tokenizer = tokenizer
        self.cfg = cfg
        self.device = device

    def encode_sources(self, texts: Sequence[str]) -> list[list[int]]:
        limit = self.cfg.max_len - 1
        return [e.ids[:limit] for e in self.tokenizer.encode_batch(list(texts))]

    encode_targets = encode_sources          # one joint vocabulary

    def detokenize(self, hyps: Sequence[Sequence[int]]) -> list[str]:
        return self.tokenizer.decode_batch([list(h) for h in hyps])

    def new_model(self, seed: int) -> Seq2SeqTransformer:
        m = self.cfg
        with seeded(seed):
            model = Seq2SeqTransformer(self.tokenizer.get_vocab_size(), PAD, m.d_model, m.heads, m.layers, m.d_ff,
                                       m.dropout, m.max_len)
        return model.to(self.device).eval()

    def matches(self, pool_size: int) -> dict[str, Any]:
        return {"pool_size": pool_size, "tokenizer": self.tokenizer.to_str()}

    def loss(self, model: nn.Module, sources: list[list[int]], targets: list[list[int]],
             label_smoothing: float) -> torch.Tensor:
        src = _pad([s + [EOS] for s in sources], self.device)
        tgt_in = _pad([[BOS] + t for t in targets], self.device)
        tgt_out = _pad([t + [EOS] for t in targets], self.device)
        logits = model(src, tgt_in)
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), tgt_out.reshape(-1), ignore_index=PAD,
                               label_smoothing=label_smoothing)

    def decode(self, model: nn.Module, sources: Sequence[Sequence[int]], max_decode: int | None) -> list[list[int]]:
        """Greedy translations (token ids without BOS/EOS) with the model in its current mode."""
        if not sources:
            return []
        src = _pad([list(s) + [EOS] for s in sources], self.device)
        memory, key_mask = model.encode(src)
        limit = max_decode or 2 * src.shape[1] + 10
        limit = min(limit, self.cfg.max_len - 1)
        ys = torch.full((len(sources), 1), BOS, dtype=torch.long, device=self.device)
        done = torch.zeros(len(sources), dtype=torch.bool, device=self.device)
        for _ in range(limit):
            nxt = model.decode(ys, memory, key_mask)[:, -1].argmax(-1)
            nxt = nxt.masked_fill(done, PAD)
            ys = torch.cat([ys, nxt[:, None]], dim=1)
            done |= nxt == EOS
            if bool(done.all()):
                break
        out = []
        for row in ys[:, 1:].tolist():
            cut = row.index(EOS) if EOS in row else len(row)
            out.append([t for t in row[:cut] if t != PAD])
        return out

    def nll(self, model: nn.Module, sources: Sequence[Sequence[int]], hyps: Sequence[Sequence[int]]) -> torch.Tensor:
        """Length-normalised NLL (per token, EOS included) of ``hyps`` given ``sources``, in the model's mode."""
        src = _pad([list(s) + [EOS] for s in sources], self.device)
        hyps = [list(h)[: self.cfg.max_len - 1] for h in hyps]
        tgt_in = _pad([[BOS] + h for h in hyps], self.device)
        tgt_out = _pad([h + [EOS] for h in hyps], self.device)
        logp = model(src, tgt_in).float().log_softmax(-1)
        token = -logp.gather(-1, tgt_out[..., None])[..., 0]
        mask = (tgt_out != PAD).float()
        return (token * mask).sum(1) / mask.sum(1)

    def mc(self, model: nn.Module, mode: str, seed: int, chunk: int) -> AbstractContextManager[MCDropout]:
        return mc_dropout(model, mode, seed, chunk=chunk)


class TranslationTask:
    """Curriculum active learning for NMT: a small Transformer trained from scratch on the translated sentences,
    or a local transformers checkpoint fine-tuned on them (``model.kind: huggingface``)."""

    Config = TranslationConfig
    outputs = frozenset({NLL, DIFFICULTY, MC_DROPOUT})
    primary_metric = "bleu"
    metrics = ("bleu", "chrf", "exact", "n_train", "steps", "curriculum_steps", "competence", "train_loss",
               "final_tracked_bleu", "steps_to_bleu")
    query_type = "pool"

    def __init__(self, config: TranslationConfig, env: Env):
        try:
            import sacrebleu  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            raise UserError(f"task: the translation task needs {exc.name}: pip install 'activelab[nlp]'") from None
        self.cfg = config
        self.env = env
        self.device = torch.device(env.device)
        self.hf = isinstance(config.model, HFModelConfig)
        if self.hf:                          # the checkpoint first: its errors show before the data loads
            from .hf import HFSeq2Seq

            self.backend: OwnTransformer | HFSeq2Seq = HFSeq2Seq(config.model, self.device)
        data = load_data(config.data)
        self.pool, self.test = data.pool, data.test
        self.items = ItemIndex(self.pool.ids)
        if not self.hf:
            tokenizer = build_tokenizer([*self.pool.sources, *self.pool.targets], config.tokenizer)
            self.backend = OwnTransformer(tokenizer, config.model, self.device)
        self.tokenizer = self.backend.tokenizer
        self._src = self.backend.encode_sources(self.pool.sources)
        self._test_src = self.backend.encode_sources(self.test.sources)
        kind = config.curriculum.difficulty
        self._raw_difficulty = difficulty(self.pool.sources, kind, corpus=self.pool.sources)
        self.pool_difficulty = empirical_cdf(self._raw_difficulty)
        self.model = self.backend.new_model(seed_for(env.seed, "nlp-init"))
        self.optimizer = self._new_optimizer(self.model)
        self.fitted = False

    # ------------------------------------------------------------------------------------------ building
    def _new_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model.parameters(), "adam", lr=self.cfg.learning_rate, betas=(0.9, 0.98), eps=1e-9)

    @property
    def restarts(self) -> bool:
        """Whether each fit starts from the initial weights (a fresh model, or the checkpoint's)."""
        return self.cfg.model.restart_each_round if self.hf else not self.cfg.fine_tune

    # ------------------------------------------------------------------------------------------ training
    @property
    def predict_batch_size(self) -> int:
        """The items of each chunk predict yields (hook): several processes split a query along them."""
        return self.cfg.eval_batch_size

    def pool_ids(self) -> Sequence[ItemId]:
        return list(self.pool.ids)

    cost_unit = "source words"

    def label_cost(self, ids: Sequence[ItemId], labels: Sequence[Any] | None = None) -> np.ndarray:
        """Words of the source sentence a translator reads (whitespace-separated, at least 1 per sentence)."""
        return np.array([max(1, len(self.pool.sources[p].split())) for p in self.items.positions(ids).tolist()],
                        dtype=np.float64)

    def data_fingerprint(self) -> str:
        """SHA-256 (hex) over every pool and test pair, in order: its id, source and reference. The core refuses
        to resume a run whose data changed."""
        digest = hashlib.sha256()
        for split, pairs in (("pool", self.pool), ("test", self.test)):
            for item, source, target in zip(pairs.ids, pairs.sources, pairs.targets):
                digest.update(json.dumps([split, item, source, target]).encode() + b"\n")
        return digest.hexdigest()

    def training_steps(self, n: int) -> int:
        """T for a round with ``n`` labelled pairs."""
        steps = self.cfg.steps
        if self.cfg.epochs is not None:
            steps = max(steps, math.ceil(self.cfg.epochs * n / self.cfg.batch_size))
        return steps

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        if not labels:
            raise ValueError("fit needs at least one label")
        items = sorted(labels, key=self.items.position)     # independent of the labels' order
        positions = self.items.positions(items)
        targets = self.backend.encode_targets([self.check_label(i, labels[i]) for i in items])
        sources = [self._src[p] for p in positions]
        cur = self.cfg.curriculum
        steps = self.training_steps(len(items))
        T = cur.steps or steps
        # the training corpus's own CDF: competence c admits the easiest fraction c of the labelled pairs
        cdf = empirical_cdf(self._raw_difficulty[positions])
        sampler = CompetenceSampler(cdf, self.cfg.batch_size, steps, rng_for(ctx.seed, ctx.round, "nlp-batches"),
                                    enabled=cur.enabled, T=T, c0=cur.c0, p=POWERS[cur.competence])
        if not self.fitted or self.restarts:
            self.model = self.backend.new_model(seed_for(ctx.seed, ctx.round, "nlp-init"))
            self.optimizer = self._new_optimizer(self.model)
        track = self.cfg.track
        reached, tracked = -1, {}
        losses: list[float] = []
        last_c = 1.0
        base_lr = self.cfg.learning_rate
        self.model.train()
        with seeded(seed_for(ctx.seed, ctx.round, "nlp-dropout"), self.device):
            bar = tqdm(sampler, total=steps, desc=f"fit round {ctx.round}", unit="step", leave=False,
                       disable=not (self.env.progress and ctx.progress))
            for t, batch, c in bar:
                lr = base_lr * min(1.0, (t + 1) / self.cfg.warmup) if self.cfg.warmup else base_lr
                for group in self.optimizer.param_groups:
                    group["lr"] = lr
                loss = self.backend.loss(self.model, [sources[b] for b in batch], [targets[b] for b in batch],
                                         self.cfg.label_smoothing)
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.clip_norm)
                self.optimizer.step()
                losses.append(float(loss.detach()))
                last_c = c
                if track.every and ((t + 1) % track.every == 0 or t + 1 == steps):
                    self.model.eval()
                    score = self._bleu(self.test.sources[: track.sentences], self.test.targets[: track.sentences],
                                       self._test_src[: track.sentences])
                    self.model.train()
                    tracked[t + 1] = score
                    if reached < 0 and score >= track.bleu:
                        reached = t + 1
        self.model.eval()
        self.fitted = True
        tail = losses[-max(1, len(losses) // 10):]
        stats: dict[str, Any] = {"n_train": len(items), "steps": steps, "curriculum_steps": T if cur.enabled else 0,
                                 "competence": float(last_c), "train_loss": float(np.mean(tail))}
        if track.every:
            stats["final_tracked_bleu"] = tracked[max(tracked)]
            if reached > 0:       # left out when not reached, so means over seeds count only real values
                stats["steps_to_bleu"] = reached
        return stats

    # ------------------------------------------------------------------------------------------ inference
    def _translate(self, token_ids: Sequence[Sequence[int]]) -> list[str]:
        self.model.eval()
        out: list[str] = []
        bs = self.cfg.eval_batch_size
        with torch.inference_mode():
            for start in range(0, len(token_ids), bs):
                hyps = self.backend.decode(self.model, token_ids[start:start + bs], self.cfg.max_decode)
                out.extend(self.backend.detokenize(hyps))
        return [s.strip() for s in out]

    def translate(self, sentences: Sequence[str]) -> list[str]:
        """The model's translations of arbitrary source sentences (greedy; ``beam_size`` beams for a checkpoint)."""
        return self._translate(self.backend.encode_sources(sentences))

    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        if mc is not None:         # checked here, not in the generator, so a mistake shows at the call
            if mc.mode not in ("dropout", "batchwise"):
                raise ValueError(f"the translation task offers MC modes dropout and batchwise, not {mc.mode!r}")
            if mc.samples < 1:
                raise ValueError(f"MC needs samples >= 1, got {mc.samples}")
        positions = self.items.positions(ids).tolist()   # no lookup when ids travel as positions (Candidates)
        return self._predict(positions, set(want), mc)

    def _predict(self, positions: list[int], want: set[str], mc: MC | None) -> Iterator[dict[str, np.ndarray]]:
        bs = self.cfg.eval_batch_size
        for n, start in enumerate(range(0, len(positions), bs)):
            chunk = positions[start:start + bs]
            out: dict[str, np.ndarray] = {}
            with torch.inference_mode():
                if NLL in want:
                    self.model.eval()
                    sources = [self._src[p] for p in chunk]
                    hyps = self.backend.decode(self.model, sources, self.cfg.max_decode)
                    if mc is None:
                        out[NLL] = self.backend.nll(self.model, sources, hyps).cpu().numpy().astype(np.float64)
                    else:
                        with self.backend.mc(self.model, mc.mode, mc.seed, chunk=mc.chunk + n) as drop:
                            passes = [self.backend.nll(self.model, sources, hyps) for _ in drop.members(mc.samples)]
                        out[NLL] = torch.stack(passes).cpu().numpy().astype(np.float64)
            if DIFFICULTY in want:
                d = self.pool_difficulty[np.asarray(chunk, dtype=np.int64)].astype(np.float64)
                out[DIFFICULTY] = d if mc is None else np.broadcast_to(d, (mc.samples, len(d))).copy()
            yield out

    def _bleu(self, sources: Sequence[str], refs: Sequence[str], token_ids: Sequence[Sequence[int]]) -> float:
        import sacrebleu

        return float(sacrebleu.corpus_bleu(self._translate(token_ids), [list(refs)]).score)

    def evaluate(self) -> Mapping[str, float]:
        import sacrebleu

        hyps = self._translate(self._test_src)
        refs = [list(self.test.targets)]
        return {"bleu": float(sacrebleu.corpus_bleu(hyps, refs).score),
                "chrf": float(sacrebleu.corpus_chrf(hyps, refs).score),
                "exact": float(np.mean([h == r for h, r in zip(hyps, self.test.targets)]))}

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> str:
        return self.pool.targets[self.items.position(item_id)]

    def check_label(self, item_id: ItemId, value: Any) -> str:
        self.items.check(item_id)
        return check_text(value)

    def label_schema(self) -> dict[str, Any]:
        return {"type": "text"}

    def parse_label(self, text: str) -> str:
        return text.strip()

    def suggest(self, ids: Sequence[ItemId]) -> list[str | None]:
        """The current model's translation per item (None where it produces nothing usable; before the first fit
        the own Transformer has none, a checkpoint offers its own)."""
        if not self.fitted and not self.hf:
            return [None] * len(ids)
        out: list[str | None] = []
        for text in self._translate([self._src[self.items.position(i)] for i in ids]):
            try:
                out.append(check_text(text))
            except ValueError:
                out.append(None)
        return out

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        position = self.items.position(item_id)
        return {"text": self.pool.sources[position], "source_lang": self.cfg.data.source_lang,
                "target_lang": self.cfg.data.target_lang,
                "difficulty": round(float(self.pool_difficulty[position]), 4)}

    # ------------------------------------------------------------------------------------------ checkpoints
    def _matches(self) -> dict[str, Any]:
        return self.backend.matches(len(self.pool))

    def state_dict(self) -> dict[str, Any]:
        # a checkpoint model restarting each round gets a fresh optimiser at the next fit: its state is not kept
        optimizer = None if self.hf and self.restarts else self.optimizer
        return checkpoint(matches=self._matches(), model=self.model, optimizer=optimizer, fitted=self.fitted)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, self._matches())
        self.model = restore(self.backend.new_model(0), state["model"]).eval()
        self.optimizer = self._new_optimizer(self.model)
        if state.get("optimizer") is not None or not self.hf:
            self.optimizer = restore(self.optimizer, state["optimizer"])
        self.fitted = bool(state["fitted"])
