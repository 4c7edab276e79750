"""Speech recognition with loss-prediction active learning (Luo et al., IJCNN 2021, after Yoo & Kweon, CVPR 2019):
the task the speech plugin offers as ``recognition``.

The model: log-mel features (computed once per utterance and cached), convolutional subsampling, a Conformer
(torchaudio's blocks) or BiLSTM encoder, a CTC output layer over a character vocabulary built from the labelled
transcripts (index 0 is the CTC blank), and the loss-prediction module on pooled features of the subsampled input
and of every encoder layer. Each round :meth:`RecognitionTask.fit` continues from the previous round's weights
(``fine_tune``; characters met for the first time get new output rows) or, with ``fine_tune: false``, rebuilds
the model from scratch (seeded by seed and round); either way with a fresh Adam optimiser and a one-cycle
learning-rate schedule. Training minimises

    mean_i CTC_i / |y_i|  +  weight * (rank(lhat_raw, CTC) + rank(lhat_per_second, CTC / seconds))

where ``rank`` is the learning-loss pair ranking loss (margin xi = 1, targets detached; shared with the vision
plugin in ``activelab.torchkit.lossnet``) and CTC_i the utterance's loss ``-log p(y_i|x_i)``. After ``detach_after``
of the steps (the card: epoch 120 of 200) the module's gradient stops at the encoder. The two heads are one
deviation from the card, which predicts one loss: a ranking-trained prediction has no fixed offset, so "normalised
by length" must be learnt, not divided out afterwards (see ``LossPredictionModule``).

Predictions (per utterance, in chunks): the two predicted losses, the CTC posteriors' least confidence and entropy
(both length-normalised), and the duration. :meth:`evaluate` decodes the test split greedily (WER and CER with
jiwer) and reports the Spearman correlation between predicted and true loss over the unlabelled pool (raw and per
second): the module's ranking quality in every round.

Bring your own model: ``model: {kind: huggingface, path: DIR}`` replaces the log-mel front end and the encoder by a
local transformers CTC checkpoint (wav2vec 2.0, HuBERT, WavLM, ...; :mod:`.hf`): audio is read at its feature
extractor's sampling rate (resampled when ``data.resample`` allows) and normalised by it, transcripts are spelt
in its character vocabulary (a transcript it cannot spell is refused, the data's at start-up), its pad token is
the CTC blank and the loss-prediction module reads ``model.taps`` of its hidden states. Each round fine-tunes
all of it but the convolutional feature encoder (``freeze_feature_encoder``, default true) at ``model.lr``
(the loss-prediction module, new weights, at ``lr``), continuing from the previous round (``fine_tune``) or from
the folder's weights; ``spec_augment`` switches the checkpoint's own masking of its latent features (its
config's ``mask_time_prob``) instead of the log-mel masks. The own model's settings (``n_mels``, ``encoder``,
``dim``, ``layers``, ``subsample``, ``dropout``) do not apply to it.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import jiwer
import numpy as np
import torch
import torchaudio
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError
from scipy.stats import spearmanr
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import (
    MC,
    PREDICTED_LOSS,
    PREDICTED_LOSS_NORM,
    Context,
    Env,
    ItemId,
    rng_for,
    seed_for,
)
from activelab.recipe import DataPath
from activelab.torchkit import ItemIndex, build_optimizer, check, checkpoint, ddp, restore, seeded
from activelab.torchkit.lossnet import LossPredictionConfig, ranking_loss

from .data import (
    SpeechDataConfig,
    Utterance,
    audio_fingerprint,
    load_speech_data,
    normalise_transcript,
    read_audio,
    transcript_problem,
)
from .model import CTCModel, LogMel, ctc_losses, greedy_decode, posterior_statistics

# PREDICTED_LOSS (B,): the module's raw-loss head; PREDICTED_LOSS_NORM (B,): its per-second head
CTC_LEAST_CONFIDENCE = "ctc_least_confidence"      # (B,) 1 - geometric-mean best-path frame confidence
CTC_ENTROPY = "ctc_entropy"                        # (B,) mean frame entropy
DURATION = "duration_s"                            # (B,) seconds of audio


class ModelConfig(BaseModel):
    """The acoustic model: ``own`` (the default) is this plugin's log-mel Conformer/BiLSTM, shaped by the task's
    ``n_mels``, ``encoder``, ``dim``, ``layers``, ``subsample`` and ``dropout``; ``huggingface`` a local
    transformers CTC checkpoint folder (wav2vec 2.0, HuBERT, WavLM, ... with its feature extractor and
    vocab.json), fine-tuned each round."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["own", "huggingface"] = "own"
    path: DataPath | None = None            # huggingface: the checkpoint folder (only read, never written)
    freeze_feature_encoder: bool = True     # huggingface: keep the convolutional feature encoder as it is
    lr: float = Field(1e-4, gt=0)           # huggingface: peak learning rate of the checkpoint's weights
    taps: int = Field(4, ge=1)              # huggingface: hidden states the loss module reads, spread over depth

    @model_validator(mode="after")
    def _path_is_for_huggingface(self):
        if self.kind == "huggingface" and self.path is None:
            raise PydanticCustomError("model", "kind huggingface needs path: the checkpoint folder")
        if self.kind == "own" and self.path is not None:
            raise PydanticCustomError("model", "path is for kind huggingface (a transformers checkpoint folder); "
                                      "kind own is this plugin's own model")
        return self


class RecognitionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: SpeechDataConfig = Field(default_factory=SpeechDataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    n_mels: int = Field(40, ge=8)
    encoder: Literal["bilstm", "conformer"] = "conformer"   # a BiLSTM learnt CTC far more slowly here (README)
    dim: int = Field(96, ge=8)
    layers: int = Field(2, ge=1)
    subsample: Literal[1, 2, 4] = 4           # 40 ms frames
    dropout: float = Field(0.1, ge=0, lt=1)
    spec_augment: bool = True                  # SpecAugment during training: 2 frequency and 2 time masks
    fine_tune: bool = True                     # continue from the previous round's weights; false = from scratch
    epochs: int = Field(30, ge=1)              # passes over the labelled set per fit
    min_steps: int = Field(300, ge=0)          # at least this many optimiser steps per fit (small labelled sets)
    max_steps: int | None = Field(None, ge=1)
    batch_size: int = Field(16, ge=2)
    lr: float = Field(2e-3, gt=0)              # peak learning rate; with a checkpoint, the loss module's (model.lr)
    weight_decay: float = Field(0.0, ge=0)
    grad_clip: float = Field(5.0, gt=0)
    loss_prediction: LossPredictionConfig = Field(default_factory=LossPredictionConfig)
    eval_batch_size: int = Field(32, ge=1)
    spearman_items: int = Field(1000, ge=0)    # unlabelled pool items in the per-round correlation (0 = off)
    feature_cache: int = Field(20000, ge=0)    # utterances whose features (a checkpoint's: waveforms) stay in memory


_FREQ_MASK = torchaudio.transforms.FrequencyMasking(freq_mask_param=8, iid_masks=True)
_TIME_MASK = torchaudio.transforms.TimeMasking(time_mask_param=15, iid_masks=True)


def spec_augment(feats: torch.Tensor) -> torch.Tensor:
    """SpecAugment (Park et al. 2019) without time warping: two masks of up to 8 mel bins and two of up to 15
    frames (150 ms) per utterance, drawn from torch's (forked, seeded) generator. (B, T, n_mels) in and out."""
    x = feats.transpose(1, 2)[:, None]          # (B, 1, n_mels, T): the layout the masks expect
    for mask in (_FREQ_MASK, _FREQ_MASK, _TIME_MASK, _TIME_MASK):
        x = mask(x)
    return x[:, 0].transpose(1, 2)



@contextmanager
def numpy_seeded(seed: int) -> Iterator[None]:
    """numpy's global generator seeded inside the block and put back after: transformers draws its SpecAugment
    masks and LayerDrop from it."""
    state = np.random.get_state()
    np.random.seed(seed % 2**32)
    try:
        yield
    finally:
        np.random.set_state(state)


class RecognitionTask:
    """Character CTC speech recognition on an audio manifest, a Hugging Face dataset on disk, an audiofolder or
    Debian's pocketsphinx recordings; labels are transcripts."""

    Config = RecognitionConfig
    outputs = frozenset({PREDICTED_LOSS, PREDICTED_LOSS_NORM, CTC_LEAST_CONFIDENCE, CTC_ENTROPY, DURATION})
    primary_metric = "wer"
    lower_is_better = frozenset({"wer", "cer"})
    metrics = ("wer", "cer", "spearman_raw", "spearman_norm", "train_ctc", "train_rank", "n_train", "vocab",
               "train_seconds")
    query_type = "pool"
    # with several workers (--nproc, torchrun) every one trains on its part of each minibatch (DDP, torchkit.ddp);
    # the pairs of the ranking loss then form within a part, and train_ctc is rank 0's part's
    fits_distributed = True

    def __init__(self, config: RecognitionConfig, env: Env):
        self.cfg = config
        self.env = env
        self.device = torch.device(env.device)
        self.hf = None                        # the checked checkpoint folder of model kind huggingface
        if config.model.kind == "huggingface":
            from .hf import CTCCheckpoint
            self.hf = CTCCheckpoint(config.model.path)
            if not config.data.resample and config.data.sample_rate != self.hf.sample_rate:
                raise UserError(f"task.params.data.sample_rate: {config.data.sample_rate} Hz, but the checkpoint's "
                                f"feature extractor ({self.hf.path}) expects {self.hf.sample_rate} Hz: set "
                                f"resample: true, or sample_rate: {self.hf.sample_rate} for audio at that rate")
        data = load_speech_data(config.data, env.seed)
        self.sample_rate = data.sample_rate if self.hf is None else self.hf.sample_rate
        self.per_second = 100 if self.hf is None else self.sample_rate   # input frames per second of audio
        self.pool, self.test = data.pool, data.test
        self.items = ItemIndex(u.id for u in self.pool)
        self.logmel = LogMel(self.sample_rate, config.n_mels) if self.hf is None else None
        self._features = lru_cache(maxsize=config.feature_cache)(self._compute_features)
        self.vocab: list[str] = []
        self.model: torch.nn.Module | None = None
        self.labelled: list[ItemId] = []
        if self.hf is not None:
            self._check_spelling()
            self.vocab = list(self.hf.tokens)

    def _check_spelling(self) -> None:
        """Refuse a checkpoint whose vocabulary cannot spell the pool's and the test set's transcripts."""
        missing: dict[str, Utterance] = {}
        for u in self.pool + self.test:
            for char in self.hf.missing(u.transcript):
                missing.setdefault(char, u)
        if missing:
            chars = list(missing)
            first = missing[chars[0]]
            raise UserError(f"task.params.model.path: {self.hf.path}: its vocabulary cannot spell the data's "
                            f"transcripts: it has no {self.hf.describe_missing(chars)} (e.g. item {first.id!r}: "
                            f"{first.transcript!r}); use a checkpoint whose vocab.json has them, or transcripts "
                            f"without them")

    # ------------------------------------------------------------------------------------------ data
    def _compute_features(self, path: str) -> torch.Tensor:
        with torch.inference_mode():
            wave = read_audio(path, self.sample_rate, self.cfg.data.resample)
            if self.hf is not None:
                return self.hf.features(wave)
            return self.logmel(wave).clone()

    cost_unit = "seconds of audio"

    def label_cost(self, ids: Sequence[ItemId], labels: Sequence[Any] | None = None) -> np.ndarray:
        """Seconds of audio a person listens to per item (from the file's header; the answer does not change it)."""
        return np.array([self._seconds(str(self.pool[p].path)) for p in self.items.positions(ids).tolist()])

    @staticmethod
    @lru_cache(maxsize=None)
    def _seconds(path: str) -> float:
        _, frames, rate, _ = audio_fingerprint(Path(path))
        return frames / rate

    def _utterance(self, item_id: ItemId) -> Utterance:
        return self.pool[self.items.position(item_id)]

    def _batch(self, utts: Sequence[Utterance]) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded features (B, T, n_mels) and frame counts (B,) (100 frames per second); for a transformers
        checkpoint padded waveforms (B, S) and sample counts (B,)."""
        feats = [self._features(str(u.path)) for u in utts]
        padding = 0.0 if self.hf is None else self.hf.padding_value
        return (torch.nn.utils.rnn.pad_sequence(feats, batch_first=True, padding_value=padding).to(self.device),
                torch.tensor([len(f) for f in feats]).to(self.device))

    def _targets(self, transcripts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """Concatenated target ids and lengths; characters outside the vocabulary are dropped."""
        if self.hf is not None:
            ids = [self.hf.spell(t) for t in transcripts]
        else:
            index = {c: i + 1 for i, c in enumerate(self.vocab)}
            ids = [[index[c] for c in t if c in index] for t in transcripts]
        flat = torch.tensor([i for row in ids for i in row], dtype=torch.long)
        return flat.to(self.device), torch.tensor([len(r) for r in ids], dtype=torch.long).to(self.device)

    def _text(self, tokens: list[int]) -> str:
        if self.hf is not None:
            return self.hf.decode(tokens)
        return "".join(self.vocab[t - 1] for t in tokens)

    # ------------------------------------------------------------------------------------------ protocol
    def pool_ids(self) -> Sequence[ItemId]:
        return [u.id for u in self.pool]

    def data_fingerprint(self) -> str:
        """SHA-256 (hex) over every pool and test utterance, in order: its id, transcript and audio (the file's
        size, sample count, rate and channels: a header read per file, cheap for thousands). The core refuses to
        resume a run whose data changed."""
        digest = hashlib.sha256()
        for split, utts in (("pool", self.pool), ("test", self.test)):
            for u in utts:
                digest.update(json.dumps([split, u.id, u.transcript, audio_fingerprint(u.path)]).encode() + b"\n")
        return digest.hexdigest()

    def _new_model(self, vocab_size: int, seed: int) -> CTCModel:
        lp = self.cfg.loss_prediction
        with seeded(seed):
            model = CTCModel(vocab_size, self.cfg.n_mels, self.cfg.dim, self.cfg.layers,
                             self.cfg.encoder, self.cfg.subsample, self.cfg.dropout,
                             lp.hidden if lp.enabled else None)
        return model.to(self.device)

    def _new_pretrained(self, seed: int, pretrained: bool = True) -> torch.nn.Module:
        """The checkpoint's model (its weights, or fresh ones to restore into) with a new loss-prediction module
        (seeded) and, by default, its feature encoder frozen."""
        from .hf import PretrainedCTC
        lp, m = self.cfg.loss_prediction, self.cfg.model
        net = self.hf.load(pretrained)
        net.config.apply_spec_augment = self.cfg.spec_augment     # the checkpoint's own masking of its latents
        with seeded(seed):
            model = PretrainedCTC(net, m.taps, lp.hidden if lp.enabled else None, self.hf.attention_mask,
                                  self.hf.blank)
        if m.freeze_feature_encoder:
            model.freeze_feature_encoder()
        return model.to(self.device)

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        if not labels:
            raise ValueError("fit needs at least one label")
        ids = sorted(labels)
        transcripts = [self.check_label(i, labels[i]) for i in ids]
        utts = [self._utterance(i) for i in ids]
        chars = {c for t in transcripts for c in t}
        if self.hf is not None:
            if self.model is None or not self.cfg.fine_tune:       # from the folder's weights
                self.model = self._new_pretrained(seed_for(ctx.seed, ctx.round, "speech-init"))
        elif self.model is not None and self.cfg.fine_tune:
            self.vocab += sorted(chars - set(self.vocab))
            with seeded(seed_for(ctx.seed, ctx.round, "speech-grow")):
                self.model.grow_vocabulary(len(self.vocab))
        else:
            self.vocab = sorted(chars)
            self.model = self._new_model(len(self.vocab), seed_for(ctx.seed, ctx.round, "speech-init"))
        self.labelled = ids
        started = time.perf_counter()
        stats = self._train(utts, transcripts, seed_for(ctx.seed, ctx.round, "speech-fit"),
                            progress=self.env.progress and ctx.progress, desc=f"fit round {ctx.round}")
        stats.update(n_train=len(ids), vocab=len(self.vocab), train_seconds=time.perf_counter() - started)
        return stats

    def _train(self, utts: list[Utterance], transcripts: list[str], seed: int, progress: bool,
               desc: str) -> dict[str, float]:
        cfg, lp = self.cfg, self.cfg.loss_prediction
        model = self.model
        n, bs = len(utts), min(self.cfg.batch_size, len(utts))
        per_epoch = max(1, n // bs)
        steps = max(cfg.epochs * per_epoch, cfg.min_steps)
        if cfg.max_steps is not None:
            steps = min(steps, cfg.max_steps)
        detach_from = math.inf if lp.detach_after is None else lp.detach_after * steps
        if self.hf is None:
            optimizer = build_optimizer(model.parameters(), "adam", lr=cfg.lr, weight_decay=cfg.weight_decay)
            peaks: float | list[float] = cfg.lr
        else:           # the checkpoint's weights at model.lr, the new loss-prediction module at lr
            groups = [{"params": [p for p in model.net.parameters() if p.requires_grad], "lr": cfg.model.lr}]
            if model.loss_module is not None:
                groups.append({"params": list(model.loss_module.parameters()), "lr": cfg.lr})
            optimizer = torch.optim.Adam(groups, weight_decay=cfg.weight_decay)
            peaks = [g["lr"] for g in groups]
        schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=peaks, total_steps=steps, pct_start=0.15)
        shuffle = torch.Generator().manual_seed(seed)
        seconds = torch.tensor([0.0])
        sums = {"train_ctc": 0.0, "train_rank": 0.0}
        counted = 0
        model.train()
        net = ddp.wrap(model)        # several workers (fits_distributed): each takes a part of every minibatch
        order: list[int] = []
        with seeded(seed, self.device), numpy_seeded(seed):
            for step in tqdm(range(steps), desc=desc, unit="step", disable=not progress, leave=False):
                if len(order) < bs:
                    order += torch.randperm(n, generator=shuffle).tolist()
                batch, order = order[:bs], order[bs:]
                mine, factor = ddp.share(batch)
                feats, frames = self._batch([utts[i] for i in mine])
                targets, target_lengths = self._targets([transcripts[i] for i in mine])
                if cfg.spec_augment and self.hf is None:     # a checkpoint masks its own latents
                    feats = spec_augment(feats)
                out = net(feats, frames, detach_taps=step >= detach_from)
                losses = ctc_losses(out, targets, target_lengths)
                per_item = losses / target_lengths.clamp_min(1)
                # the minibatch's mean (on one process exactly as before; a worker's part: its sum x world / size)
                ctc = per_item.mean() if len(mine) == len(batch) else per_item.sum() * factor
                loss = ctc
                rank = torch.zeros(())
                if model.loss_module is not None:
                    seconds = frames.to(losses.dtype) / self.per_second
                    rank = (ranking_loss(out.predicted[:, 0], losses, lp.margin)
                            + ranking_loss(out.predicted[:, 1], losses / seconds, lp.margin))
                    loss = loss + lp.weight * rank
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                optimizer.step()
                schedule.step()
                if step >= steps - per_epoch:       # the last epoch's mean
                    sums["train_ctc"] += float(ctc.detach())
                    sums["train_rank"] += float(rank.detach())
                    counted += 1
        model.eval()
        return {k: v / max(counted, 1) for k, v in sums.items()}

    def _forward_chunks(self, utts: Sequence[Utterance]):
        if self.model is None:
            raise RuntimeError("the speech model has not been fitted yet")
        self.model.eval()
        bs = self.cfg.eval_batch_size
        for start in range(0, len(utts), bs):
            chunk = utts[start:start + bs]
            feats, frames = self._batch(chunk)
            with torch.inference_mode():
                yield chunk, frames.to(torch.float32) / self.per_second, self.model(feats, frames)

    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        if mc is not None:
            raise ValueError("the speech task has no Monte-Carlo predictions (mc must be None)")
        utts = [self.pool[p] for p in self.items.positions(ids).tolist()]   # no lookup for Candidates
        return self._predict(utts, set(want))

    def _predict(self, utts: Sequence[Utterance], want: set[str]) -> Iterator[dict[str, np.ndarray]]:
        for _, seconds, out in self._forward_chunks(utts):
            lc, ent = posterior_statistics(out)
            values = {PREDICTED_LOSS: out.predicted[:, 0], PREDICTED_LOSS_NORM: out.predicted[:, 1],
                      CTC_LEAST_CONFIDENCE: lc, CTC_ENTROPY: ent, DURATION: seconds}
            yield {k: values[k].float().cpu().numpy() for k in want if k in values}

    def transcribe(self, utts: Sequence[Utterance]) -> list[str]:
        return [self._text(tokens) for _, _, out in self._forward_chunks(utts) for tokens in greedy_decode(out)]

    def evaluate(self) -> Mapping[str, float]:
        hypotheses = self.transcribe(self.test)
        references = [u.transcript for u in self.test]
        metrics = {"wer": float(jiwer.wer(references, hypotheses)), "cer": float(jiwer.cer(references, hypotheses))}
        if self.model is not None and self.model.loss_module is not None and self.cfg.spearman_items:
            metrics.update(self.loss_correlation())
        return metrics

    def loss_correlation(self) -> dict[str, float]:
        """Spearman correlation between predicted and true loss over (a seeded subset of) the unlabelled pool:
        raw head vs CTC loss, per-second head vs CTC loss per second."""
        labelled = set(self.labelled)
        rest = [u for u in self.pool if u.id not in labelled]
        if len(rest) > self.cfg.spearman_items:
            pick = rng_for(self.env.seed, "speech-spearman").permutation(len(rest))[: self.cfg.spearman_items]
            rest = [rest[i] for i in sorted(pick)]
        if len(rest) < 3:
            return {}
        true, pred, true_norm, pred_norm = [], [], [], []
        for chunk, seconds, out in self._forward_chunks(rest):
            targets, target_lengths = self._targets([u.transcript for u in chunk])
            losses = ctc_losses(out, targets, target_lengths).float().cpu()
            seconds = seconds.cpu()
            true += losses.tolist()
            true_norm += (losses / seconds).tolist()
            pred += out.predicted[:, 0].float().cpu().tolist()
            pred_norm += out.predicted[:, 1].float().cpu().tolist()
        return {"spearman_raw": float(spearmanr(pred, true).statistic),
                "spearman_norm": float(spearmanr(pred_norm, true_norm).statistic)}

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> str:
        return self._utterance(item_id).transcript

    def check_label(self, item_id: ItemId, value: Any) -> str:
        self.items.check(item_id)
        if not isinstance(value, str):
            raise ValueError(f"invalid transcript {value!r}: a transcript is text")
        problem = transcript_problem(value)          # the rule the data readers apply too
        if problem:
            raise ValueError(f"invalid transcript {value!r}: {problem}")
        text = normalise_transcript(value)
        if not text:
            raise ValueError("empty transcript: type what is said")
        if self.hf is not None:
            missing = self.hf.missing(text)
            if missing:
                raise ValueError(f"invalid transcript {value!r}: the model's vocabulary has no "
                                 f"{self.hf.describe_missing(missing)}")
        return text

    def label_schema(self) -> dict[str, Any]:
        return {"type": "text"}

    def suggest(self, ids: Sequence[ItemId]) -> list[str | None]:
        """The current model's greedy transcript per utterance (None before the first fit)."""
        if self.model is None:
            return [None] * len(ids)
        return [t or None for t in self.transcribe([self._utterance(i) for i in ids])]

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> str:
        """A transcriber's slip: one word replaced by another word of the pool's transcripts (or dropped)."""
        words = normalise_transcript(str(value)).split() or [""]
        vocabulary = sorted({w for u in self.pool for w in u.transcript.split()} - set(words))
        position = int(rng.integers(len(words)))
        if vocabulary:
            words[position] = vocabulary[int(rng.integers(len(vocabulary)))]
        elif len(words) > 1:
            del words[position]
        return " ".join(words)

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        utt = self._utterance(item_id)
        info: dict[str, Any] = {"audio": str(utt.path)}
        if utt.speaker:
            info["speaker"] = utt.speaker
        return info

    # ------------------------------------------------------------------------------------------ checkpoints
    def _matches(self) -> dict[str, Any]:
        matches: dict[str, Any] = {"pool_size": len(self.pool)}
        if self.hf is not None:               # a checkpoint of another folder's vocabulary does not fit
            matches["checkpoint_vocab"] = list(self.hf.tokens)
        return matches

    def state_dict(self) -> dict[str, Any]:
        # no optimizer: every fit starts a fresh Adam and one-cycle schedule. A transformers model's fine-tuned
        # weights are all here (the checkpoint folder is only read).
        return checkpoint(matches=self._matches(), model=self.model, vocab=list(self.vocab),
                          labelled=list(self.labelled))

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, self._matches())
        self.vocab = list(state["vocab"])
        self.labelled = list(state["labelled"])
        self.model = None
        if state["model"] is not None:
            fresh = (self._new_model(len(self.vocab), 0) if self.hf is None
                     else self._new_pretrained(0, pretrained=False))
            self.model = restore(fresh, state["model"]).eval()
