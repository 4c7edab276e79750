"""Image regression: how far is this digit rotated? The vision plugin's ``rotation`` task.

The task makes its own targets from the images of any classification source (``task.params.data``, the same
loaders as the ``classification`` task: digits by default, MNIST, Fashion-MNIST, an image folder, ...): every pool
and test image is padded by ``pad`` pixels of background (0) and rotated counter-clockwise about its centre by an
angle drawn uniformly from ``[-max_angle, max_angle]`` degrees; the label is that angle, in degrees. The angles
are drawn once, from ``rng_for(seed, "vision-rotation", split)``, so the same seed gives the same images and
targets in every process. The classic form of this benchmark is the rotated-MNIST angle regression of
Salakhutdinov & Hinton (2007), also used by deep kernel learning (Wilson et al. 2016), with angles in [-45, 45]
(the default ``max_angle``). Rotation is bilinear (``grid_sample``); the padding keeps the corners of a small image
(digits' 8 x 8 become 12 x 12) inside the frame.

The regressor is the classification task's network (:func:`.models.build_model`: ``small_cnn`` by default, or
``resnet18``) with ONE output: ``f(x) = max_angle * fc(dropout(h(x)))``, trained with the squared error on
``angle / max_angle`` (mini-batch Adam, seeded by (seed, round)). Its last layer is linear in ``h``, the network's
``features`` and the task's ``embeddings``: what the core's ``emcm`` needs for its closed-form gradient.

``predict`` yields:

- ``predictions``: the predicted angles in degrees, ``(B,)``; ``(T, B)`` under ``mc`` (bootstrap members trained by
  :meth:`RotationTask.fit_bootstrap`, or MC-dropout / batchwise passes of the head's dropout);
- ``embeddings``: ``h``, ``(B, H)`` (``(T, B, H)`` under ``mc``);
- ``features``: a label-free representation of the rotated pool images, by default the raw pixels (unnormalised:
  the input space the core's ``gsx`` measures distances in); ``pca`` or ``simclr`` as in the classification task
  (:mod:`.features`; SimCLR's augmentations include small rotations, which makes its features partly blind to the
  target: prefer pixels or pca here). The same every round, without the sample axis under ``mc``.

``evaluate`` reports the test RMSE and MAE in degrees (both lower-is-better). A label is any finite number of
degrees (a numeric string too, as a person types it); its canonical form is a float.
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
from pydantic import BaseModel, ConfigDict, Field

from activelab.protocol import (
    BOOTSTRAP,
    EMBEDDINGS,
    FEATURES,
    MC,
    MC_DROPOUT,
    PREDICTIONS,
    Context,
    Env,
    ItemId,
    rng_for,
    seed_for,
)
from activelab.text import finite_number
from activelab.torchkit import ItemIndex, build_optimizer, check, checkpoint, mc_dropout, restore, seeded

from .datasets import DataConfig, ImageSet, load_data
from .features import FeaturesConfig, PoolFeatures
from .images import write_preview
from .models import build_model

MC_MODES = ("dropout", "batchwise", "bootstrap")
_BLOCK = 4096        # images rotated at a time (bounds the sampling grid's memory)


def rotate(images: torch.Tensor, degrees: np.ndarray, pad: int = 0) -> torch.Tensor:
    """``images`` (N x C x H x W) padded by ``pad`` zero pixels on every side, then each rotated counter-clockwise
    (as displayed, rows top to bottom) about its centre by its angle in ``degrees`` (bilinear, zeros outside)."""
    images = F.pad(images, (pad, pad, pad, pad)) if pad else images
    out = torch.empty_like(images)
    radians = torch.as_tensor(np.asarray(degrees, dtype=np.float64) * (math.pi / 180), dtype=torch.float32)
    for start in range(0, len(images), _BLOCK):
        block = images[start:start + _BLOCK]
        cos, sin = torch.cos(radians[start:start + _BLOCK]), torch.sin(radians[start:start + _BLOCK])
        zero = torch.zeros_like(cos)
        # affine_grid maps each output pixel to where it samples the input: the inverse rotation (y points down)
        theta = torch.stack([torch.stack([cos, -sin, zero], 1), torch.stack([sin, cos, zero], 1)], 1)
        grid = F.affine_grid(theta, list(block.shape), align_corners=False)
        out[start:start + _BLOCK] = F.grid_sample(block, grid, mode="bilinear", padding_mode="zeros",
                                                  align_corners=False)
    return out


class RotationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DataConfig = Field(default_factory=DataConfig, description=(
        "the images (the classification task's sources; their class labels are not used as targets)"))
    max_angle: float = Field(45.0, gt=0, le=180, description=(
        "targets: rotation angles drawn uniformly from [-max_angle, max_angle] degrees"))
    pad: int = Field(2, ge=0, description="background pixels added on every side before rotating")
    model: Literal["small_cnn", "resnet18"] = Field("small_cnn", description="the network (one linear output)")
    epochs: int = Field(30, ge=1, description="passes over the labelled items per fit")
    min_steps: int = Field(100, ge=0, description="at least this many optimiser steps per fit (small label sets)")
    batch_size: int = Field(32, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(0.0, ge=0)
    optimizer: Literal["adam", "sgd"] = "adam"
    momentum: float = Field(0.9, ge=0, lt=1, description="sgd only")
    dropout: float = Field(0.25, ge=0, lt=1, description="dropout before the linear output (MC dropout uses it)")
    fine_tune: bool = Field(False, description="continue from the previous round's weights and optimiser; false: "
                                               "a fresh network each round (its model depends on its labels only)")
    bootstrap_epochs: int | None = Field(None, ge=1, description="epochs of each fit_bootstrap member; default: "
                                                                 "half of epochs (min_steps still applies)")
    eval_batch_size: int = Field(512, ge=1)
    features: FeaturesConfig = Field(
        default_factory=lambda: FeaturesConfig(kind="pixels", normalize=False), description=(
            "the label-free representation behind the 'features' output (gsx's input space): the raw pixels of "
            "the rotated images by default"))


def _check_mc(mc: MC | None, n_members: int) -> None:
    """A ``ValueError`` for an MC request this task cannot serve (raised at the call, not inside the generator)."""
    if mc is None:
        return
    problem = (f"unknown MC mode {mc.mode!r}; available: {', '.join(MC_MODES)}" if mc.mode not in MC_MODES
               else f"MC needs samples >= 1, got {mc.samples}" if mc.samples < 1
               else f"MC(mode='bootstrap', samples={mc.samples}) needs fit_bootstrap(labels, n >= {mc.samples}) "
                    f"first; {n_members} members trained" if mc.mode == "bootstrap" and mc.samples > n_members
               else None)
    if problem:
        raise ValueError(problem)


class RotationTask:
    """Regress the rotation angle of digit (or any) images with a small CNN: the vision plugin's regression task."""

    Config = RotationConfig
    outputs = frozenset({PREDICTIONS, EMBEDDINGS, FEATURES, MC_DROPOUT, BOOTSTRAP})
    primary_metric = "rmse"
    metrics = ("rmse", "mae", "n_train", "train_rmse")
    lower_is_better = frozenset({"rmse", "mae", "train_rmse"})
    query_type = "pool"

    def __init__(self, config: RotationConfig, env: Env):
        self.cfg = config
        self.env = env
        self.device = torch.device(env.device)
        data = load_data(config.data, env.seed)
        self.classes = data.classes
        self.pool, self.pool_angles = self._rotated(data.pool, "pool")
        self.test, self.test_angles = self._rotated(data.test, "test")
        self.items = ItemIndex(self.pool.ids)
        images = self.pool.images
        self._mean = images.mean(dim=(0, 2, 3), keepdim=True)
        self._std = images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
        self._preview_dir: Path | None = None
        cache = Path(env.run_dir) / "features" if env.run_dir is not None else None
        self.pool_features = PoolFeatures(config.features, images, self._mean, self._std, env.seed, self.device,
                                          cache, self.data_fingerprint, progress=env.progress,
                                          batch_size=config.eval_batch_size)
        self.model = self._new_model(seed_for(env.seed, "rotation-init"))
        self.optimizer = self._new_optimizer(self.model)
        self.fitted = False
        self.members: list[torch.nn.Module] = []

    def _rotated(self, images: ImageSet, split: str) -> tuple[ImageSet, np.ndarray]:
        """The split's images rotated by their angles (drawn from the run seed), and the angles (float64)."""
        angles = rng_for(self.env.seed, "vision-rotation", split).uniform(-self.cfg.max_angle, self.cfg.max_angle,
                                                                         len(images))
        rotated = ImageSet(rotate(images.images, angles, self.cfg.pad), images.labels, images.ids)
        return rotated, angles

    # ------------------------------------------------------------------------------------------ building
    def _new_model(self, seed: int) -> torch.nn.Module:
        channels, size = self.pool.images.shape[1], self.pool.images.shape[-1]
        with seeded(seed):
            model = build_model(self.cfg.model, channels, 1, size, self.cfg.dropout)
        return model.to(self.device).eval()

    def _new_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model.parameters(), self.cfg.optimizer, lr=self.cfg.lr,
                               weight_decay=self.cfg.weight_decay, momentum=self.cfg.momentum)

    def _inputs(self, positions: np.ndarray, split: str = "pool") -> torch.Tensor:
        images = (self.pool if split == "pool" else self.test).images[torch.from_numpy(positions)]
        return ((images - self._mean) / self._std).to(self.device)

    def _labelled(self, labels: Mapping[ItemId, Any]) -> tuple[np.ndarray, np.ndarray]:
        """Positions and angles of the labelled items, in sorted id order (arrival order cannot change a fit)."""
        ids = sorted(labels)
        positions = np.asarray([self.items.position(i) for i in ids], dtype=np.int64)
        return positions, np.asarray([self.check_label(i, labels[i]) for i in ids], dtype=np.float64)

    # ------------------------------------------------------------------------------------------ training
    def pool_ids(self) -> Sequence[ItemId]:
        return list(self.pool.ids)

    @property
    def predict_batch_size(self) -> int:
        """The items of each chunk predict yields (hook): several processes split a query along them."""
        return self.cfg.eval_batch_size

    def _train(self, model: torch.nn.Module, optimizer: torch.optim.Optimizer, positions: np.ndarray,
               angles: np.ndarray, epochs: int, seed: int) -> float:
        """Mini-batch training on the squared error of ``angle / max_angle``; returns the last epoch's RMSE in
        degrees. A batch of one item is skipped when there are others (resnet18's batch norm cannot train on it)."""
        x = self._inputs(positions)
        target = torch.as_tensor(angles / self.cfg.max_angle, dtype=torch.float32, device=self.device)
        n, bs = len(target), self.cfg.batch_size
        epochs = max(epochs, math.ceil(self.cfg.min_steps / max(1, math.ceil(n / bs))))
        shuffle = torch.Generator().manual_seed(seed)
        model.train()
        mse = float("nan")
        with seeded(seed, self.device):      # dropout masks
            for _ in range(epochs):
                total, seen = 0.0, 0
                for batch in torch.randperm(n, generator=shuffle).split(bs):
                    if len(batch) == 1 and n > 1:
                        continue
                    batch = batch.to(self.device)
                    loss = F.mse_loss(model(x[batch])[:, 0], target[batch])
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    total, seen = total + float(loss.detach()) * len(batch), seen + len(batch)
                mse = total / seen
        model.eval()
        return math.sqrt(mse) * self.cfg.max_angle

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        """A fresh network seeded by (seed, round) (or, with ``fine_tune``, the previous round's), trained on every
        label so far. Drops the bootstrap members of the previous round (they would be stale)."""
        if not labels:
            raise ValueError("fit needs at least one label")
        positions, angles = self._labelled(labels)
        if not self.fitted or not self.cfg.fine_tune:
            self.model = self._new_model(seed_for(ctx.seed, ctx.round, "rotation-init"))
            self.optimizer = self._new_optimizer(self.model)
        rmse = self._train(self.model, self.optimizer, positions, angles, self.cfg.epochs,
                           seed_for(ctx.seed, ctx.round, "rotation-fit"))
        self.fitted = True
        self.members = []
        return {"n_train": len(angles), "train_rmse": rmse}

    def fit_bootstrap(self, labels: Mapping[ItemId, Any], size: int, seed: int) -> None:
        """Train ``size`` members from scratch, member m on a bootstrap resample of the labels (as many draws, with
        replacement, as labels) from ``rng_for(seed, "rotation-bootstrap", m)``, for ``bootstrap_epochs``. They
        serve ``predict(..., mc=MC(mode="bootstrap"))``; the task's own model is left alone."""
        if size < 1:
            raise ValueError("fit_bootstrap needs size >= 1")
        positions, angles = self._labelled(labels)
        epochs = self.cfg.bootstrap_epochs or max(1, self.cfg.epochs // 2)
        members = []
        for m in range(size):
            draw = rng_for(seed, "rotation-bootstrap", m).integers(0, len(angles), size=len(angles))
            model = self._new_model(seed_for(seed, "rotation-bootstrap-init", m))
            self._train(model, self._new_optimizer(model), positions[draw], angles[draw], epochs,
                        seed_for(seed, "rotation-bootstrap-fit", m))
            members.append(model)
        self.members = members

    # ------------------------------------------------------------------------------------------ inference
    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        _check_mc(mc, len(self.members))
        return self._predict(self.items.positions(ids), set(want), mc)

    def _predict(self, positions: np.ndarray, want: set[str], mc: MC | None,
                 split: str = "pool") -> Iterator[dict[str, np.ndarray]]:
        bs = self.cfg.eval_batch_size
        for n, start in enumerate(range(0, len(positions), bs)):
            chunk = positions[start:start + bs]
            out: dict[str, np.ndarray] = {}
            if want & {PREDICTIONS, EMBEDDINGS}:
                h, values = self._forward(self._inputs(chunk, split), n, mc)
                if PREDICTIONS in want:
                    out[PREDICTIONS] = values.numpy()
                if EMBEDDINGS in want:
                    out[EMBEDDINGS] = h.numpy()
            if FEATURES in want:                   # label-free, the same every round: no sample axis under mc
                out[FEATURES] = self.pool_features.rows(chunk)
            yield out

    def _forward(self, x: torch.Tensor, n: int, mc: MC | None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(h, angles)`` on the CPU for the inputs ``x`` of the call's chunk ``n`` (numbered from ``mc.chunk`` for
        the dropout masks): ``(B, H)`` and ``(B,)``, or with a leading member axis under ``mc``. Dropout sits only
        before the output layer: MC passes share ``h``."""
        scale = self.cfg.max_angle
        with torch.inference_mode():
            if mc is not None and mc.mode == "bootstrap":
                hs = [m.features(x) for m in self.members[:mc.samples]]
                values = torch.stack([m.classify(h)[:, 0] for m, h in zip(self.members, hs)])
                h = torch.stack(hs)
            elif mc is not None:
                h = self.model.features(x)
                with mc_dropout(self.model, mc.mode, mc.seed, chunk=mc.chunk + n) as drop:
                    values = torch.stack([self.model.classify(h)[:, 0] for _ in drop.members(mc.samples)])
                h = h.expand(mc.samples, *h.shape)
            else:
                h = self.model.features(x)
                values = self.model.classify(h)[:, 0]
        return h.float().contiguous().cpu(), (values.float() * scale).cpu()

    def evaluate(self) -> Mapping[str, float]:
        """RMSE and MAE of the predicted angles on the test split, in degrees."""
        positions = np.arange(len(self.test), dtype=np.int64)
        predicted = np.concatenate([out[PREDICTIONS] for out in self._predict(positions, {PREDICTIONS}, None,
                                                                             "test")])
        error = predicted.astype(np.float64) - self.test_angles
        return {"rmse": float(np.sqrt(np.mean(error ** 2))), "mae": float(np.mean(np.abs(error)))}

    def data_fingerprint(self) -> str:
        """sha256 (hex) of the rotated images, their ids and angles, for the pool and the test split: the same
        recipe and seed on the same files give the same fingerprint; ``resume`` refuses data that differ."""
        digest = hashlib.sha256()
        for name, part, angles in (("pool", self.pool, self.pool_angles), ("test", self.test, self.test_angles)):
            images = np.ascontiguousarray(part.images.numpy(), dtype="<f4")
            digest.update(json.dumps({"split": name, "ids": list(part.ids), "shape": list(images.shape)}).encode())
            digest.update(np.ascontiguousarray(angles, dtype="<f8").data)
            digest.update(images.data)
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> float:
        """The angle the task rotated the image by (degrees, counter-clockwise)."""
        return float(self.pool_angles[self.items.position(item_id)])

    def check_label(self, item_id: ItemId, value: Any) -> float:
        """Any finite number of degrees (a numeric string too) -> float; anything else is a ``ValueError``."""
        self.items.check(item_id)
        number = finite_number(value)
        if number is None:
            raise ValueError(f"invalid label {value!r}: give the rotation angle in degrees, a finite number "
                             f"(counter-clockwise positive, within [-{self.cfg.max_angle:g}, "
                             f"{self.cfg.max_angle:g}] here)")
        return number

    def suggest(self, ids: Sequence[ItemId]) -> list[float]:
        """The model's predicted angle per item (one decimal), offered to a person as the default answer."""
        return [round(float(v), 1) for out in self.predict(ids, {PREDICTIONS}) for v in out[PREDICTIONS]]

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> float:
        """A wrong answer for the simulated oracle's ``noise``: an angle drawn uniformly from the task's range."""
        return float(rng.uniform(-self.cfg.max_angle, self.cfg.max_angle))

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        position = self.items.position(item_id)
        if self._preview_dir is None:
            base = (Path(self.env.run_dir) if self.env.run_dir is not None
                    else Path(tempfile.mkdtemp(prefix="activelab-")))
            self._preview_dir = base / "previews"
        path = self._preview_dir / (re.sub(r"[^A-Za-z0-9_.-]", "_", item_id) + ".png")
        write_preview(self.pool.images[position].numpy(), path)
        return {"image": str(path), "text": f"By how many degrees is this image rotated (counter-clockwise positive, "
                                            f"-{self.cfg.max_angle:g} to {self.cfg.max_angle:g})?"}

    # ------------------------------------------------------------------------------------------ checkpoints
    def _matches(self) -> dict[str, Any]:
        return {"pool_size": len(self.pool), "model": self.cfg.model, "max_angle": self.cfg.max_angle,
                "image_shape": list(self.pool.images.shape[1:])}

    def state_dict(self) -> dict[str, Any]:
        return checkpoint(matches=self._matches(), model=self.model, optimizer=self.optimizer, members=self.members,
                          fitted=self.fitted)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, self._matches())
        self.model = restore(self._new_model(0), state["model"]).eval()
        self.optimizer = restore(self._new_optimizer(self.model), state["optimizer"])
        self.fitted = bool(state["fitted"])
        self.members = [restore(self._new_model(0), w, f"bootstrap member {m}").eval()
                        for m, w in enumerate(state["members"])]
