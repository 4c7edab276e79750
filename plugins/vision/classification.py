"""Image classification with CEAL (Wang et al., TCSVT 2016): the task the vision plugin offers as
``classification``.

Each round the loop queries the K most uncertain pool items (least confidence, margin or entropy: core scorers)
and calls :meth:`ClassificationTask.fit`, which

1. scores the remaining unlabelled pool with the current model (the model of the previous round, the one that
   scored the query) and gives every item with entropy below ``delta_t = delta0 - dr * t`` its pseudo-label
   ``argmax p`` (see :mod:`.ceal`); these count for this round's training only and are never stored;
2. fine-tunes the model on labelled + pseudo-labelled items (``fine_tune: false`` re-initialises it instead);
3. reports ``n_train``, ``n_pseudo``, ``pseudo_accuracy`` (against the ground truth), ``delta`` and
   ``train_loss``.

All randomness of a fit (initialisation, shuffling, dropout) is drawn from generators seeded by
(seed, round), inside :func:`activelab.torchkit.seeded`, so the same labels and state give bit-identical weights on
the CPU and the global torch RNG is left as it was.

Besides the classifier's ``probs`` and ``embeddings``, ``predict`` yields ``features``: a representation of the pool
learnt without labels (``task.params.features``: SimCLR by default, or PCA, or the pixels; see :mod:`.features`).
It is computed once per run, on first request, before any fit if a cold-start strategy asks for it in round 0,
and cached in the run folder (``<run_dir>/features/``), so a resumed run reads the same features; fits never change
it. Under ``mc`` it comes without the sample axis, (B, D), as it does not vary between members; asked for alone,
the classifier is not run at all.

``model: linear_probe`` classifies on that representation: the classifier is dropout (``dropout``) and one linear
layer on the FROZEN features (:class:`~.models.LinearProbe`), so strategies are compared on a model that starts from
a good label-free representation instead of from scratch. The encoder (or PCA projection) is fitted once per run on
the pool alone and never trained by ``fit``; the held-out test split is embedded by the same frozen map (computed
once, kept in memory). ``fit`` trains only the head, on the labelled items' features (and CEAL's pseudo-labels when
enabled): full-batch Adam, ``probe.steps`` steps at ``probe.lr`` (the CNNs' ``lr``, ``epochs``, ``min_steps``,
``batch_size``, ``optimizer`` and ``bootstrap_epochs`` do not apply), seeded like every fit. ``embeddings`` are the
frozen features (the head's input), ``probs`` the head's softmax; MC dropout, batchwise and bootstrap committees
work as for the CNNs. The checkpoint holds the head and pins the representation by its cache key; the
representation itself stays in the features cache.

Your own model: ``model: {kind: torchvision, arch: resnet50, weights: FILE, freeze: ...}`` (any classification
architecture of ``torchvision.models`` with a local state dict) or ``model: {kind: huggingface, path: DIR,
freeze: ...}`` (a local ``transformers`` image classifier) fine-tunes a pretrained network: its output layer is
replaced by a new head for the task's classes, images are resized and normalised inside the model, ``freeze``
chooses linear probe, last block or full fine-tuning (see :mod:`.backbones`). Such a model follows the CNNs' training
settings (``lr``, ``epochs``, ``min_steps``, ``batch_size``, ``optimizer``); with ``freeze: linear_probe`` the
frozen body's features of the pool and of the test split are computed once (in ``eval_batch_size`` blocks, on first
request) and kept in memory, so fits and predictions run the head only. The checkpoint holds the trainable tensors
(all of them unless ``freeze`` keeps some as loaded) and pins the architecture, ``freeze`` and a SHA-256 of the user's
weights, whose frozen tensors are restored from the file; the user's file is only read.

Learning loss (Yoo & Kweon, CVPR 2019): ``loss_prediction: {enabled: true, hidden, weight, margin, detach_after}``
attaches a loss-prediction module (:mod:`activelab.torchkit.lossnet`, shared with the speech plugin) to the
network's stages (``small_cnn``: both conv blocks and the hidden layer; ``resnet18`` and torchvision ResNets:
``layer1`` .. ``layer4``), drawn after the network so the network's weights do not change. Each training step
minimises ``cross-entropy + weight * ranking loss`` over the batch split into pairs; from epoch
``detach_after * epochs`` on (the card: 120 of 200) the module reads detached stage outputs, so its gradient stops at
the network. ``predict`` then yields ``predicted_loss`` (the core scorer of that name ranks by it; pair it with the
``subsample`` selector, as the paper scores a random 10,000 of the pool) and ``evaluate`` reports
``loss_spearman``. The module is part of the model: checkpoints, fine-tuning and bootstrap members carry it.

Lazy pools (``data.lazy``; ``auto`` for an image folder or a saved Hugging Face dataset of more than 20,000 images,
see :mod:`.datasets`): the pool and the test split stay in their files and every use decodes only what it needs, so
memory grows with the chunk, not with the pool. Predictions (scoring, evaluation, CEAL's pseudo-labels, a frozen
body's features) decode ``eval_batch_size`` images at a time; a fit decodes its labelled (and pseudo-labelled)
items once and trains on them as in memory; previews decode one image; SimCLR decodes each batch it trains on and
PCA is fitted on a seeded sample (``pixels`` features are read per chunk). What differs from the same data in
memory: the normalisation statistics come from a seeded sample of at most 10,000 images (the whole pool, hence the
same numbers and predictions, when it is no larger: :func:`.datasets.channel_stats`), the data fingerprint hashes
the stored bytes rather than the pixels, a broken image fails when first read rather than at load, and strategies
that need every pool image in memory (``pool_images``: ASAL) refuse a lazy pool.
"""
from __future__ import annotations

import hashlib
import json
import math
import re
import tempfile
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field, field_validator
from scipy.stats import spearmanr
from sklearn.metrics import accuracy_score, f1_score
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_DROPOUT,
    PREDICTED_LOSS,
    PROBS,
    Context,
    Env,
    ItemId,
    rng_for,
    seed_for,
)
from activelab.torchkit import ItemIndex, build_optimizer, check, checkpoint, ddp, mc_dropout, restore, seeded
from activelab.torchkit.lossnet import LossPredictionConfig, LossPredictionModule, Taps, channels, ranking_loss

from .backbones import MODEL_KINDS, Backbone, BackboneClassifier, HFImageModelConfig, TorchvisionModelConfig
from .ceal import ceal_delta, entropy, high_confidence
from .datasets import DataConfig, channel_stats, is_lazy, load_data
from .features import FeaturesConfig, PoolFeatures
from .images import write_preview
from .models import build_model


class PseudoLabelConfig(BaseModel):
    """CEAL's high-confidence samples. Defaults: delta0 = 0.05, dr = 0.0033 (one public setting of the paper)."""

    model_config = ConfigDict(extra="forbid")

    enabled: bool = False                   # on in the CEAL recipes; off = plain uncertainty sampling
    delta0: float = Field(0.05, ge=0)       # entropy threshold (nats) in round 0
    dr: float = Field(0.0033, ge=0)         # decrease per round: delta_t = delta0 - dr * t
    max_fraction: float | None = Field(None, gt=0, le=1)   # cap: at most this fraction of the unlabelled pool


class ProbeConfig(BaseModel):
    """How ``model: linear_probe`` trains its head: full-batch Adam on the frozen features of the labelled (and
    pseudo-labelled) items. The defaults were measured on digits: the CNNs' lr 1e-3 and 100 steps leave the head
    far from converged (unit-norm features give small logits), lr 0.01 and 500 steps do not (under a second)."""

    model_config = ConfigDict(extra="forbid")

    lr: float = Field(0.01, gt=0, description="Adam's learning rate for the probe's head")
    steps: int = Field(500, ge=1, description="full-batch Adam steps per fit (and per bootstrap member)")
    weight_decay: float = Field(0.0, ge=0, description="L2 weight decay of the probe's head")


class ClassificationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig)
    model: Literal["small_cnn", "resnet18", "linear_probe"] | TorchvisionModelConfig | HFImageModelConfig = Field(
        "small_cnn", description=(
            "small_cnn (default), resnet18 (no pretrained weights), or linear_probe: dropout and a linear layer on "
            "the frozen label-free features (see 'features' and 'probe'); or your own pretrained model: {kind: "
            "torchvision, arch, weights, freeze} or {kind: huggingface, path, freeze}"))
    epochs: int = Field(20, ge=1)           # passes over labelled + pseudo-labelled items per fit
    min_steps: int = Field(100, ge=0)       # at least this many optimiser steps per fit (tiny labelled sets)
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1)   # sgd only
    dropout: float = Field(0.5, ge=0, lt=1)
    fine_tune: bool = True                  # continue from the previous round's weights (CEAL); false = re-init
    pseudo_label: PseudoLabelConfig = Field(default_factory=PseudoLabelConfig)
    bootstrap_epochs: int | None = Field(None, ge=1)   # fit_bootstrap members; default: half of epochs
    eval_batch_size: int = Field(512, ge=1)
    features: FeaturesConfig = Field(default_factory=FeaturesConfig, description=(
        "the label-free representation of the pool (the task's 'features' output, for cold-start strategies): "
        "simclr (default), pca or pixels; computed once per run on first request and cached in the run folder; "
        "the representation model: linear_probe classifies on"))
    probe: ProbeConfig = Field(default_factory=ProbeConfig, description=(
        "model: linear_probe only: how its head is trained (full-batch Adam; lr, epochs, min_steps, batch_size and "
        "optimizer are the CNNs')"))
    loss_prediction: LossPredictionConfig = Field(
        default_factory=lambda: LossPredictionConfig(enabled=False), description=(
            "learning loss (Yoo & Kweon 2019), off unless this section is given: a loss-prediction module on the "
            "network's stages (small_cnn, resnet18, a torchvision ResNet that trains), trained with the ranking "
            "loss, its gradient stopped at the network after detach_after of the epochs; the task then offers "
            "predicted_loss (the scorer of that name)"))

    @field_validator("model", mode="before")
    @classmethod
    def _model_of_its_kind(cls, value: Any) -> Any:
        """A model section (a mapping) is read as the class of its ``kind``, so errors name ``model.<field>``."""
        if not isinstance(value, Mapping):
            return value
        kind = value.get("kind")
        if kind not in MODEL_KINDS:
            raise ValueError(f"kind: must be one of {', '.join(MODEL_KINDS)}, got {kind!r}")
        return MODEL_KINDS[kind].model_validate(value)


MC_MODES = ("dropout", "batchwise", "bootstrap")
PROBE = "linear_probe"
#: capability (an entry of ``outputs``): the task classifies images outside its pool, ``pool_images()``,
#: ``predict_images(images, want)`` and ``image_logits(images)``; what ASAL (:mod:`.asal`) asks of it
IMAGES = "images"

class ClassificationTask:
    """CEAL image classification on digits, an image folder, a saved Hugging Face dataset, MNIST or
    Fashion-MNIST; a small CNN, ResNet-18, a linear probe on the label-free features, or a pretrained torchvision
    or transformers classifier from local files."""

    Config = ClassificationConfig
    outputs = frozenset({PROBS, EMBEDDINGS, FEATURES, MC_DROPOUT, BOOTSTRAP, PREDICTED_LOSS, IMAGES})
    primary_metric = "accuracy"
    metrics = ("accuracy", "macro_f1", "n_train", "n_pseudo", "train_loss", "delta", "pseudo_accuracy", "train_rank",
               "loss_spearman")
    query_type = "pool"
    fits_distributed = True       # with several workers every one trains on its part of each minibatch (DDP)

    def __init__(self, config: ClassificationConfig, env: Env):
        self.cfg = config
        self.env = env
        self.device = torch.device(env.device)
        data = load_data(config.data, env.seed, allow_lazy=True)     # lazy images: see the module doc
        self.classes = data.classes
        self.pool, self.test = data.pool, data.test
        self.items = ItemIndex(self.pool.ids)
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        images = self.pool.images
        self._mean, self._std = channel_stats(images)      # lazy: from a seeded sample (datasets.channel_stats)
        self._preview_dir: Path | None = None
        cache = Path(env.run_dir) / "features" if env.run_dir is not None else None
        self.pool_features = PoolFeatures(config.features, self.pool.images, self._mean, self._std, env.seed,
                                          self.device, cache, self.data_fingerprint, progress=env.progress,
                                          batch_size=config.eval_batch_size)
        self._test_features: np.ndarray | None = None
        self.backbone: Backbone | None = None
        if isinstance(config.model, (TorchvisionModelConfig, HFImageModelConfig)):
            with seeded(seed_for(env.seed, "vision-backbone")):     # the checkpoint's own head draws from the RNG
                self.backbone = Backbone(config.model, images.shape[1], tuple(images.shape[-2:]), len(self.classes),
                                         config.dropout, self._mean.flatten().tolist(), self._std.flatten().tolist())
        self._frozen: dict[str, torch.Tensor] = {}     # freeze: linear_probe: the frozen body's features per split
        if not config.loss_prediction.enabled:          # predicted_loss needs the loss-prediction module
            self.outputs = type(self).outputs - {PREDICTED_LOSS}
        self.model = self._new_model(seed_for(env.seed, "vision-init"))
        self.optimizer = self._new_optimizer(self.model)
        self.fitted = False
        self.members: list[torch.nn.Module] = []

    # ------------------------------------------------------------------------------------------ building
    @property
    def probe(self) -> bool:
        """True for ``model: linear_probe`` (the classifier reads the frozen features, not the images)."""
        return self.cfg.model == PROBE

    def _new_model(self, seed: int) -> torch.nn.Module:
        if self.backbone is not None:
            with seeded(seed):
                model = self.backbone.new_model()
                self._attach_loss_module(model)
            return model.to(self.device)
        channels, size = self.pool.images.shape[1], self.pool.images.shape[-1]
        with seeded(seed):
            model = build_model(self.cfg.model, channels, len(self.classes), size, self.cfg.dropout,
                                feature_dim=self.pool_features.dim)
            self._attach_loss_module(model)
        return model.to(self.device)

    def _attach_loss_module(self, model: torch.nn.Module) -> None:
        """With ``loss_prediction`` on: ``model.loss_module``, a :class:`LossPredictionModule` reading the outputs of
        ``model.loss_taps`` (its stages), drawn from torch's generator after the network (whose weights are therefore
        the same with the module as without)."""
        lp = self.cfg.loss_prediction
        if not lp.enabled:
            return
        stages = getattr(model, "stages", None)
        if stages is None and isinstance(model, BackboneClassifier) and \
                all(hasattr(model.body, f"layer{i}") for i in range(1, 5)):      # torchvision's ResNet family
            stages = tuple(f"body.layer{i}" for i in range(1, 5))
        if stages is None or getattr(model, "frozen_body", False):
            what = "freeze: linear_probe" if getattr(model, "frozen_body", False) else \
                self.backbone.kind if self.backbone is not None else self.cfg.model
            raise UserError(f"task.params.loss_prediction: the loss-prediction module reads the stages of a network "
                            f"that trains: small_cnn, resnet18, or a torchvision ResNet (resnet*, resnext*, "
                            f"wide_resnet*) with freeze none or last_block; not {what}")
        example = torch.zeros(2, *self.pool.images.shape[1:])
        model.loss_taps = tuple(stages)
        model.loss_module = LossPredictionModule(channels(model, stages, example), lp.hidden)

    def _new_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        if self.probe:
            return build_optimizer(model.parameters(), "adam", lr=self.cfg.probe.lr,
                                   weight_decay=self.cfg.probe.weight_decay)
        return build_optimizer([p for p in model.parameters() if p.requires_grad], self.cfg.optimizer, lr=self.cfg.lr,
                               weight_decay=self.cfg.weight_decay, momentum=self.cfg.momentum)

    def test_features(self) -> np.ndarray:
        """The test split's features by the pool's frozen encoder or projection (computed once, kept in memory)."""
        if self._test_features is None:
            self._test_features = self.pool_features.embed(self.test.images)
        return self._test_features

    # ------------------------------------------------------------------------------------------ any images (ASAL)
    def pool_images(self) -> torch.Tensor:
        """The pool's images, N x C x H x W float32 in [0, 1], in ``pool_ids`` order (what a generative model of the
        pool trains on; the labels are not part of it). Not for a lazy pool (``data.lazy``): a UserError."""
        if is_lazy(self.pool.images):
            raise UserError(f"task.params.data.lazy: this strategy needs every pool image in memory and the pool "
                            f"({len(self.pool)} images) is read lazily; set task.params.data.lazy: false")
        return self.pool.images

    def predict_images(self, images: torch.Tensor, want: Collection[str]) -> dict[str, np.ndarray]:
        """``probs``, ``embeddings`` and ``features`` of any images shaped as the pool's (N x C x H x W in [0, 1]),
        by the current classifier (eval mode) and the pool's frozen feature map, in ``eval_batch_size`` blocks."""
        parts: dict[str, list[np.ndarray]] = {name: [] for name in want}
        for start in range(0, len(images), self.cfg.eval_batch_size):
            block = images[start:start + self.cfg.eval_batch_size]
            if FEATURES in want or self.probe:
                feats = self.pool_features.embed(block)
            if FEATURES in want:
                parts[FEATURES].append(feats)
            if set(want) & {PROBS, EMBEDDINGS}:
                self.model.eval()
                x = torch.from_numpy(np.ascontiguousarray(feats)).to(self.device) if self.probe \
                    else self._image_inputs(block)
                with torch.inference_mode():
                    h = self.model.features(x)
                    out = self._outputs(h[None], self.model.classify(h)[None], set(want), squeeze=True)
                for name, value in out.items():
                    parts[name].append(value)
        return {name: np.concatenate(chunks) if chunks else np.zeros((0, 0), np.float32)
                for name, chunks in parts.items()}

    def image_logits(self, images: torch.Tensor) -> torch.Tensor:
        """The current classifier's logits for any images shaped as the pool's, differentiable with respect to the
        images (eval mode: no dropout; the model's own gradients are left to the caller to not accumulate, e.g. with
        ``torch.autograd.grad``). Not for ``model: linear_probe``, whose frozen features are no torch function of
        the pixels here."""
        if self.probe:
            raise UserError("model: linear_probe classifies precomputed features, which have no gradient with respect "
                            "to the pixels: optimise generated images with a model on pixels (small_cnn, resnet18, "
                            "your own) or sample them instead")
        self.model.eval()
        return self.model(self._image_inputs(images))

    def _image_inputs(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [0, 1] as the (non-probe) model reads them: normalised, or as they are for a pretrained model."""
        images = images.to(self.device)
        if self.backbone is not None:
            return images
        return (images - self._mean.to(self.device)) / self._std.to(self.device)

    def _inputs(self, positions: np.ndarray, split: str = "pool") -> torch.Tensor:
        """The model's inputs for the items at ``positions`` of ``split`` ("pool" or "test"): the normalised images,
        for the linear probe their frozen features, for a pretrained model the images as they are (it prepares them
        itself)."""
        if self.probe:
            rows = self.pool_features.rows(positions) if split == "pool" else self.test_features()[positions]
            return torch.from_numpy(np.ascontiguousarray(rows, dtype=np.float32)).to(self.device)
        images = (self.pool if split == "pool" else self.test).images[torch.from_numpy(positions)]
        if self.backbone is not None:
            return images.to(self.device)
        return ((images - self._mean) / self._std).to(self.device)

    def _features(self, model: torch.nn.Module, positions: np.ndarray, split: str = "pool") -> torch.Tensor:
        """``model``'s penultimate features of the items at ``positions`` of ``split``. A frozen body's (``freeze:
        linear_probe``; every model of the task shares it) are computed for the whole split on first request, in
        ``eval_batch_size`` blocks, and kept (rows: positions)."""
        if not getattr(model, "frozen_body", False):
            return model.features(self._inputs(positions, split))
        with torch.inference_mode(False), torch.no_grad():     # kept tensors must serve training too
            if split not in self._frozen:
                n, bs = len(self.pool if split == "pool" else self.test), self.cfg.eval_batch_size
                blocks = [model.features(self._inputs(np.arange(a, min(a + bs, n), dtype=np.int64), split))
                          for a in range(0, n, bs)]
                self._frozen[split] = torch.cat(blocks)
            return self._frozen[split][torch.from_numpy(positions).to(self.device)]

    # ------------------------------------------------------------------------------------------ protocol
    def pool_ids(self) -> Sequence[ItemId]:
        return list(self.pool.ids)

    @property
    def predict_batch_size(self) -> int:
        """The items of each chunk predict yields (hook): several processes split a query along them."""
        return self.cfg.eval_batch_size

    def _labelled(self, labels: Mapping[ItemId, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Pool positions and class indices of the labelled items, in sorted order of item id."""
        ids = sorted(labels)
        index = self.items.positions(ids)
        y = np.asarray([self.check_label(i, labels[i]) for i in ids], dtype=np.int64)
        return index, y

    def pseudo_labels(self, labels: Mapping[ItemId, Any], round: int) -> tuple[np.ndarray, np.ndarray, float | None]:
        """CEAL's high-confidence samples for this round: (pool positions, pseudo-labels, delta_t).

        Uses the current model, i.e. the one that scored this round's query; none before the first fit.
        """
        cfg = self.cfg.pseudo_label
        empty = np.zeros(0, dtype=np.int64)
        if not cfg.enabled:
            return empty, empty, None
        delta = ceal_delta(cfg.delta0, cfg.dr, round)
        if not self.fitted or delta <= 0:
            return empty, empty, delta
        unlabelled = np.asarray([i for i, item in enumerate(self.pool.ids) if item not in labels], dtype=np.int64)
        if unlabelled.size == 0:
            return empty, empty, delta
        probs = self._pool_probs(unlabelled)
        chosen = high_confidence(entropy(probs), delta, cfg.max_fraction)
        return unlabelled[chosen], probs[chosen].argmax(axis=1).astype(np.int64), delta

    def _pool_probs(self, positions: np.ndarray) -> np.ndarray:
        chunks = [out[PROBS] for out in self._predict_positions(positions, {PROBS}, None)]
        return np.concatenate(chunks) if chunks else np.zeros((0, len(self.classes)), np.float32)

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        if not labels:
            raise ValueError("fit needs at least one label")
        positions, y = self._labelled(labels)
        pseudo_pos, pseudo_y, delta = self.pseudo_labels(labels, ctx.round)
        if not self.fitted or not self.cfg.fine_tune:
            self.model = self._new_model(seed_for(ctx.seed, ctx.round, "vision-init"))
            self.optimizer = self._new_optimizer(self.model)
        train_pos = np.concatenate([positions, pseudo_pos])
        train_y = np.concatenate([y, pseudo_y])
        ranking: dict[str, float] = {}
        loss = self._train(self.model, self.optimizer, train_pos, train_y, self.cfg.epochs,
                           seed_for(ctx.seed, ctx.round, "vision-fit"), desc=f"fit round {ctx.round}",
                           progress=self.env.progress and ctx.progress, stats=ranking)
        self.fitted = True
        stats: dict[str, float] = {"n_train": int(len(train_y)), "n_pseudo": int(len(pseudo_y)), "train_loss": loss,
                                   **ranking}
        if delta is not None:
            stats["delta"] = float(delta)
        if len(pseudo_y):
            stats["pseudo_accuracy"] = float(np.mean(pseudo_y == self.pool.labels[pseudo_pos]))
        return stats

    def _train(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, positions: np.ndarray,
               y: np.ndarray, epochs: int, seed: int, desc: str = "fit", progress: bool = False,
               stats: dict[str, float] | None = None) -> float:
        """Mini-batch training (the probe: full-batch, see :meth:`_train_probe`); returns the mean loss of the last
        epoch. With a loss-prediction module (``loss_prediction``) each step minimises the cross-entropy plus
        ``weight`` times the ranking loss (:meth:`_learning_loss`), the module reading detached stage outputs from
        epoch ``detach_after * epochs`` on; ``stats`` then receives ``train_rank``, the last epoch's mean ranking
        loss (the returned loss stays the cross-entropy)."""
        if self.probe:
            return self._train_probe(model, optimizer, positions, y, seed, desc, progress)
        n = len(y)
        head_only = getattr(model, "frozen_body", False)     # freeze: linear_probe: the head on kept features
        x = self._features(model, positions) if head_only else self._inputs(positions)
        forward = model.classify if head_only else model
        target = torch.from_numpy(y).to(self.device)
        bs = self.cfg.batch_size
        steps = max(1, math.ceil(n / bs))
        epochs = max(epochs, math.ceil(self.cfg.min_steps / steps))
        starts = list(range(0, n, bs))
        if len(starts) > 1 and n - starts[-1] == 1:
            starts.pop()    # no batch of one item (batch norm in resnet18 cannot train on it)
        bounds = list(zip(starts, starts[1:] + [n]))
        shuffle = torch.Generator().manual_seed(seed)
        lp, module = self.cfg.loss_prediction, getattr(model, "loss_module", None)
        detach_from = math.inf if module is None or lp.detach_after is None else lp.detach_after * epochs
        model.train()
        # several workers (fits_distributed): the whole network's steps are shared out by DDP, each worker taking a
        # part of every minibatch (torchkit.ddp); the head-only and learning-loss paths run whole on every worker
        net = ddp.wrap(model) if module is None and not head_only else None
        last = float("nan")
        with seeded(seed, self.device):      # dropout masks
            for epoch in tqdm(range(epochs), desc=desc, unit="epoch", disable=not progress, leave=False):
                order = torch.randperm(n, generator=shuffle).to(self.device)
                total = ranked = 0.0
                for a, b in bounds:
                    batch = order[a:b]
                    mine, factor = ddp.share(batch) if net is not None else (batch, 0.0)
                    if len(mine) < len(batch):      # a worker's part: its summed loss times world / size
                        objective = F.cross_entropy(net(x[mine]), target[mine], reduction="sum") * factor
                        loss = objective.detach() / (factor * len(mine)) if len(mine) else objective.detach()
                    elif module is None:
                        loss = objective = F.cross_entropy((forward if net is None else net)(x[batch]), target[batch])
                    else:
                        loss, rank = self._learning_loss(model, x[batch], target[batch], epoch >= detach_from)
                        objective = loss + lp.weight * rank
                        ranked += float(rank.detach()) * (b - a)
                    optimizer.zero_grad(set_to_none=True)
                    objective.backward()
                    optimizer.step()
                    total += float(loss.detach()) * (b - a)
                last = total / n
        model.eval()
        if module is not None and stats is not None:
            stats["train_rank"] = ranked / n
        return last

    def _learning_loss(self, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                       detach: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """(mean cross-entropy, ranking loss) of one batch: the loss-prediction module reads the stages' outputs
        (detached with ``detach``: its gradient then stops at the network) and ranks the items' cross-entropies,
        pairing the batch's first half with its reversed second half (Yoo & Kweon)."""
        with Taps(model, model.loss_taps) as taps:
            logits = model(x)
        losses = F.cross_entropy(logits, y, reduction="none")
        features = [t.detach() for t in taps.outputs] if detach else taps.outputs
        predicted = model.loss_module(features)[:, 0]
        return losses.mean(), ranking_loss(predicted, losses, self.cfg.loss_prediction.margin)

    def _train_probe(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, positions: np.ndarray,
                     y: np.ndarray, seed: int, desc: str = "fit", progress: bool = False) -> float:
        """The linear probe's head: ``probe.steps`` full-batch Adam steps on the frozen features (the map that
        computed them is not touched: no gradient reaches it); returns the last step's loss."""
        x = self._inputs(positions)
        target = torch.from_numpy(y).to(self.device)
        model.train()
        loss = torch.tensor(float("nan"))
        with seeded(seed, self.device):      # dropout masks
            for _ in tqdm(range(self.cfg.probe.steps), desc=desc, unit="step", disable=not progress, leave=False):
                loss = F.cross_entropy(model(x), target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
        model.eval()
        return float(loss.detach())

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], n: int, seed: int) -> None:
        """Train ``n`` members from scratch, each on a bootstrap resample (with replacement, as many draws as
        labels) of the labelled set, without pseudo-labels, for ``bootstrap_epochs`` (default: half of
        ``epochs``; ``min_steps`` still applies; the linear probe: ``probe.steps``). They serve
        ``predict(..., mc=MC(mode="bootstrap"))``."""
        if n < 1:
            raise ValueError("fit_bootstrap needs n >= 1")
        positions, y = self._labelled(labels)
        epochs = self.cfg.bootstrap_epochs or max(1, self.cfg.epochs // 2)
        members = []
        for m in range(n):
            draw = rng_for(seed, "vision-bootstrap", m).integers(0, len(y), size=len(y))
            model = self._new_model(seed_for(seed, "vision-bootstrap-init", m))
            self._train(model, self._new_optimizer(model), positions[draw], y[draw], epochs,
                        seed_for(seed, "vision-bootstrap-fit", m))
            members.append(model)
        self.members = members

    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        if mc is not None:     # checked here, not in the generator, so a mistake shows at the call
            if mc.mode not in MC_MODES:
                raise ValueError(f"unknown MC mode {mc.mode!r}; available: {', '.join(MC_MODES)}")
            if mc.samples < 1:
                raise ValueError(f"MC needs samples >= 1, got {mc.samples}")
            if mc.mode == "bootstrap" and mc.samples > len(self.members):
                raise ValueError(f"MC(mode='bootstrap', samples={mc.samples}) needs fit_bootstrap(labels, n >= "
                                 f"{mc.samples}) first; {len(self.members)} members trained")
        if PREDICTED_LOSS in want:
            if getattr(self.model, "loss_module", None) is None:
                raise UserError("the predicted_loss output (the predicted_loss scorer) needs the loss-prediction "
                                "module: add task.params.loss_prediction: {enabled: true}")
            if mc is not None:
                raise ValueError("predicted_loss has no Monte-Carlo form: ask for it with mc=None")
        return self._predict_positions(self.items.positions(ids), set(want), mc)

    def _predict_positions(self, positions: np.ndarray, want: set[str], mc: MC | None,
                           split: str = "pool") -> Iterator[dict[str, np.ndarray]]:
        if FEATURES in want and split != "pool":
            raise ValueError("the features output exists for the pool's items only")
        models = self.members[: mc.samples] if mc is not None and mc.mode == "bootstrap" else [self.model]
        for model in models:
            model.eval()
        bs = self.cfg.eval_batch_size
        for n, start in enumerate(range(0, len(positions), bs)):
            chunk = positions[start:start + bs]
            if not want & {PROBS, EMBEDDINGS, PREDICTED_LOSS}:      # features only: the classifier is not run
                out = {}
            else:
                out = self._model_outputs(split, chunk, n, want, models, mc)
            if FEATURES in want:                    # label-free, the same every round: no sample axis under mc
                out[FEATURES] = self.pool_features.rows(positions[start:start + bs])
            yield out

    def _model_outputs(self, split: str, chunk: np.ndarray, n: int, want: set[str],
                       models: list[torch.nn.Module], mc: MC | None) -> dict[str, np.ndarray]:
        """The classifier's outputs (probs, embeddings) for one chunk of positions of ``split`` (the ``n``-th)."""
        # the probe's features, and a frozen body's, are computed (once) outside inference mode
        frozen = getattr(self.model, "frozen_body", False)
        x = None if frozen else self._inputs(chunk, split)
        with torch.inference_mode():
            if mc is None and PREDICTED_LOSS in want:     # the stages' outputs too, for the loss-prediction module
                with Taps(self.model, self.model.loss_taps) as taps:
                    h = self.model.features(x)
                out = self._outputs(h[None], self.model.classify(h)[None], want, squeeze=True)
                out[PREDICTED_LOSS] = self.model.loss_module(taps.outputs)[:, 0].float().cpu().numpy()
            elif mc is None:
                h = self._features(self.model, chunk, split) if frozen else self.model.features(x)
                out = self._outputs(h[None], self.model.classify(h)[None], want, squeeze=True)
            elif mc.mode == "bootstrap":
                hs = [self._features(m, chunk, split) if frozen else m.features(x) for m in models]
                out = self._outputs(torch.stack(hs), torch.stack([m.classify(h) for m, h in zip(models, hs)]),
                                    want)
            else:
                # dropout sits only in the head: features once, the head T times. The block is closed before
                # the yield, so the model is never left in MC mode while the caller holds this generator.
                h = self._features(self.model, chunk, split) if frozen else self.model.features(x)
                with mc_dropout(self.model, mc.mode, mc.seed, chunk=mc.chunk + n) as drop:
                    logits = torch.stack([self.model.classify(h) for _ in drop.members(mc.samples)])
                out = self._outputs(h.expand(mc.samples, *h.shape), logits, want)
        return out

    @staticmethod
    def _outputs(h: torch.Tensor, logits: torch.Tensor, want: set[str], squeeze: bool = False) -> dict[str, np.ndarray]:
        """(T, B, ...) features and logits -> the wanted numpy arrays (T axis dropped when ``squeeze``)."""
        out: dict[str, np.ndarray] = {}
        if PROBS in want:
            out[PROBS] = torch.softmax(logits.float(), dim=-1).cpu().numpy().astype(np.float32)
        if EMBEDDINGS in want:
            out[EMBEDDINGS] = h.float().contiguous().cpu().numpy()
        if squeeze:
            out = {k: v[0] for k, v in out.items()}
        return out

    def evaluate(self) -> Mapping[str, float]:
        """Accuracy and macro F1 on the test split; with a loss-prediction module also ``loss_spearman``, the rank
        correlation between its predicted loss and the true cross-entropy over the test split (how well it ranks)."""
        positions = np.arange(len(self.test), dtype=np.int64)
        ranks = getattr(self.model, "loss_module", None) is not None
        outs = list(self._predict_positions(positions, {PROBS, PREDICTED_LOSS} if ranks else {PROBS}, None, "test"))
        probs = np.concatenate([out[PROBS] for out in outs])
        predicted = probs.argmax(axis=1)
        truth = self.test.labels
        metrics = {"accuracy": float(accuracy_score(truth, predicted)),
                   "macro_f1": float(f1_score(truth, predicted, average="macro", labels=list(range(len(self.classes))),
                                              zero_division=0))}
        if ranks and len(truth) > 2:
            true_loss = -np.log(np.maximum(probs[np.arange(len(truth)), truth].astype(np.float64), 1e-12))
            rho = float(spearmanr(np.concatenate([out[PREDICTED_LOSS] for out in outs]), true_loss).statistic)
            if np.isfinite(rho):                     # undefined when either side is constant
                metrics["loss_spearman"] = rho
        return metrics

    def data_fingerprint(self) -> str:
        """sha256 (hex) of the data as loaded: the classes and, for the pool and the test set, the item ids, the
        labels and the bytes of the decoded images (after resizing and sub-sampling). The same recipe on the same
        files gives the same fingerprint; the core refuses to resume a run whose data changed. MNIST's 70,000
        images hash in well under a second. Lazy images (``data.lazy``) are pinned by their stored bytes instead
        (:meth:`.datasets.LazyImages.update_digest`: the Arrow files, the image files), computed once per task."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"classes": self.classes}).encode())
        for name, part in (("pool", self.pool), ("test", self.test)):
            if is_lazy(part.images):
                digest.update(json.dumps({"split": name, "ids": list(part.ids), "shape": list(part.images.shape),
                                          "lazy": True}).encode())
                digest.update(np.ascontiguousarray(part.labels, dtype="<i8").data)
                part.images.update_digest(digest)
                continue
            images = np.ascontiguousarray(part.images.numpy(), dtype="<f4")
            digest.update(json.dumps({"split": name, "ids": list(part.ids), "shape": list(images.shape)}).encode())
            digest.update(np.ascontiguousarray(part.labels, dtype="<i8").data)
            digest.update(images.data)
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> int:
        return int(self.pool.labels[self.items.position(item_id)])

    def _canonical(self, value: Any) -> int:
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
            if 0 <= int(value) < len(self.classes):
                return int(value)
        elif isinstance(value, str) and value.strip() in self._class_index:
            return self._class_index[value.strip()]
        raise ValueError(f"invalid label {value!r}: give a class index 0..{len(self.classes) - 1} or a class name "
                         f"({', '.join(self.classes)})")

    def check_label(self, item_id: ItemId, value: Any) -> int:
        self.items.check(item_id)
        return self._canonical(value)

    def label_schema(self) -> dict[str, Any]:
        return {"type": "choices", "choices": list(self.classes)}

    def suggest(self, ids: Sequence[ItemId]) -> list[int]:
        """The model's most probable class (index) per item: the suggestion people accept or correct."""
        return [int(c) for out in self.predict(ids, {PROBS}) for c in out[PROBS].argmax(axis=1)]

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> int:
        """A uniformly random class other than ``value``."""
        true = self._canonical(value)
        other = int(rng.integers(len(self.classes) - 1))
        return other + (other >= true)

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        position = self.items.position(item_id)
        if self.pool.paths is not None:
            return {"image": self.pool.paths[position], "classes": list(self.classes)}
        return {"image": str(self._preview(item_id, position)), "classes": list(self.classes)}

    def _preview(self, item_id: ItemId, position: int) -> Path:
        """A PNG of an in-memory image, upscaled for a person to see, written on first request."""
        if self._preview_dir is None:
            base = (Path(self.env.run_dir) if self.env.run_dir is not None
                    else Path(tempfile.mkdtemp(prefix="activelab-")))
            self._preview_dir = base / "previews"
        path = self._preview_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", item_id) + ".png")
        return write_preview(self.pool.images[position].numpy(), path)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _matches(self) -> dict[str, Any]:
        matches: dict[str, Any] = {"classes": list(self.classes), "pool_size": len(self.pool)}
        if self.probe:      # the head reads the cached representation: pin it (it is not in the checkpoint)
            matches["representation"] = f"{self.cfg.features.kind}-{self.pool_features.key}"
        if self.backbone is not None:      # the architecture and the user's weights (a run resumes on the same)
            matches.update(self.backbone.matches())
        return matches

    def state_dict(self) -> dict[str, Any]:
        if self.backbone is None or not self.backbone.frozen_keys:
            return checkpoint(matches=self._matches(), model=self.model, optimizer=self.optimizer,
                              members=self.members, fitted=self.fitted)
        # a frozen pretrained network: its frozen tensors are the user's file's (pinned by matches), not stored
        frozen = self.backbone.frozen_keys

        def trainable(model: torch.nn.Module) -> dict[str, torch.Tensor]:
            return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items() if k not in frozen}

        return {**checkpoint(matches=self._matches(), optimizer=self.optimizer, fitted=self.fitted),
                "model": trainable(self.model), "members": [trainable(m) for m in self.members]}

    def _restore(self, saved: Mapping[str, Any] | None, what: str = "") -> torch.nn.Module:
        """A new model with the checkpoint's weights (a pretrained network's frozen tensors from its file)."""
        model = self._new_model(0)
        if self.backbone is not None and saved is not None:
            saved = {**model.state_dict(), **saved}
        return restore(model, saved, what).eval()

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, self._matches())
        self.model = self._restore(state["model"])
        self.optimizer = restore(self._new_optimizer(self.model), state["optimizer"])
        self.fitted = bool(state["fitted"])
        self.members = [self._restore(weights, f"bootstrap member {m}") for m, weights in enumerate(state["members"])]
