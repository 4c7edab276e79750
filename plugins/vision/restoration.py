"""Image restoration with on-demand learning (Gao & Grauman, ICCV 2017): the vision plugin's ``restoration``
task, a query-synthesis task.

The clean images are free; what the learner chooses is how many training samples to synthesise at each
difficulty level. So the task's "pool" is the five corruption generators ``level1`` .. ``level5``
(``query_type = "synthesis"``): each round the selector shares ``loop.batch`` samples among them (the
``proportional`` selector with the ``inverse_psnr`` scorer is on-demand learning; the ``schedule`` selector gives
the card's baselines), and the ``corruptor`` oracle answers each generator with one new item
``"level<i>@<round>"`` whose label ``{"level": i, "count": n, "seed": s}`` says how to regenerate its ``n``
corrupted crops. Nothing big is stored: :meth:`RestorationTask.fit` regenerates the crops from the seeds.

One round = one epoch of the paper: :meth:`fit` trains ONE pass over this round's samples (labels of earlier
rounds were trained on in their own round), continuing from the previous round's network and Adam state.
:meth:`predict` reports the PSNR of each level on the validation split (``level_psnr``, what the on-demand rule
needs); :meth:`evaluate` reports PSNR and SSIM (scikit-image) per level on the test split, their averages and
the corrupted inputs' PSNR, and saves ``examples/round_<r>.png`` (corrupted / restored / clean per level) in the
run folder.

Data (``task.params.data``): the photographs scikit-image ships (``kind: skimage``, offline) or any folder of
images (``kind: folder``, searched recursively), resized by ``scale`` and cut into square crops. The split is by
source image (``split_seed``, independent of the run seed, so every seed of a comparison is tested on the same
crops): validation and test crops and their corruptions are fixed once; training crops are drawn afresh for
every sample from the training images.

Differences from the paper, for a CPU budget of minutes: 32x32 crops by default (the card's 64 is
``crop_size: 64``; pixel sizes of the levels scale with the crop, see :mod:`.corruptions`); a light encoder-decoder
with additive skip connections and a residual output that starts as the identity, no batch normalisation (the
paper's context-encoder-style network has a 4x4 bottleneck and no skips: ``skips: false, residual: false`` comes
closer); holes and removed pixels are filled with the training images' mean colour; the recipes use Adam at
1e-3 (the paper: 2e-4; both with beta1 0.5) for 30 epochs of 1,000 samples, and evaluate an exponential moving
average of the weights (``ema``), which makes the per-level PSNR steady from one epoch to the next.

All randomness is derived from seeds (the network's initialisation from the run seed, each sample from its
label's seed, the order of a round's samples from (seed, round)) and the checkpoint holds the network, the Adam
state and the weight average, so a run resumed after ``kill -9`` is bit-identical to an uninterrupted one on the
CPU (tested).
"""
from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import MC, TORCH_SEED_BOUND, Context, Env, ItemId, rng_for, seed_for
from activelab.recipe import DataPath
from activelab.torchkit import build_optimizer, check, checkpoint, restore, seeded, snapshot

from .corruptions import LEVELS, corrupt
from .images import read_image, to_array

FIELD = "task.params.data"
LEVEL_PSNR = "level_psnr"       # predict(): PSNR of each level (generator) on the validation split
LEVEL_SSIM = "level_ssim"       # predict(): SSIM of each level on the validation split
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}

#: scikit-image's bundled photographs that load offline (others it would download). The synthetic ones
#: (checkerboard, logo, colorwheel, binary_blobs, horse, phantom) and near-black astronomy/retina are left out.
SKIMAGE_PHOTOS = ("astronaut", "brick", "camera", "cell", "chelsea", "clock", "coffee", "coins", "grass", "gravel",
                  "immunohistochemistry", "moon", "page", "rocket", "text")
_ID = re.compile(r"^level([1-9][0-9]*)(?:@(0|[1-9][0-9]*))?$")
MAX_PSNR = 100.0                # a perfect restoration (MSE 0) counts as 100 dB instead of infinity


def generator_id(level: int) -> str:
    return f"level{level}"


def parse_item(item_id: str) -> tuple[int, int | None]:
    """``"level3"`` -> (3, None); ``"level3@7"`` -> (3, 7). ``ValueError`` for anything else."""
    m = _ID.match(str(item_id))
    if not m or not 1 <= int(m.group(1)) <= LEVELS:
        raise ValueError(f"not a restoration item: {item_id!r} (expected level1..level{LEVELS}, optionally @<round>)")
    return int(m.group(1)), None if m.group(2) is None else int(m.group(2))


# ------------------------------------------------------------------------------------------------- data
class RestorationData(BaseModel):
    """Where the clean images come from and how they are split."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["skimage", "folder"] = "skimage"
    path: DataPath | None = None        # folder: searched recursively for image files
    names: list[str] | None = None      # skimage: which images (default: the bundled photographs)
    channels: Literal[1, 3] = 3         # 1 = grayscale (the paper's denoising), 3 = RGB
    scale: float = Field(0.5, gt=0, le=4)   # every image is resized by this factor before cropping
    val_fraction: float = Field(0.15, gt=0, lt=1)   # of the source images
    test_fraction: float = Field(0.2, gt=0, lt=1)   # of the source images
    split_seed: int = 0                 # which images go to which split, and the fixed val/test crops


@dataclass
class Images:
    """Source images (float32 C x H x W in [0, 1]) with their names."""

    arrays: list[np.ndarray]
    names: list[str]


def _to_array(img, channels: int, scale: float):
    """A PIL image as float32 C x H x W in [0, 1], resized by ``scale`` (16-bit and float images scaled, see
    :mod:`.images`)."""
    return to_array(img, channels, scale=scale)


def load_skimage(cfg: RestorationData) -> Images:
    try:
        from skimage import data as skdata
    except ImportError:
        raise UserError(f"{FIELD}.kind: skimage needs scikit-image: pip install 'activelab[vision]'") from None
    from PIL import Image
    names = list(cfg.names) if cfg.names is not None else list(SKIMAGE_PHOTOS)
    arrays = []
    for name in names:
        loader = getattr(skdata, name, None)
        if not callable(loader) or name.startswith("_"):
            raise UserError(f"{FIELD}.names: scikit-image has no image '{name}'; offline photographs: "
                            f"{', '.join(SKIMAGE_PHOTOS)}")
        try:
            raw = np.asarray(loader())
        except Exception as exc:  # images scikit-image would fetch from the network fail here
            raise UserError(f"{FIELD}.names: cannot load scikit-image's '{name}' ({type(exc).__name__}: {exc}); "
                            f"offline photographs: {', '.join(SKIMAGE_PHOTOS)}".splitlines()[0]) from None
        if raw.dtype == bool:
            raw = raw.astype(np.uint8) * 255
        elif raw.dtype != np.uint8:
            raw = np.clip(raw.astype(np.float64) * (255.0 if raw.max() <= 1.0 else 1.0), 0, 255).astype(np.uint8)
        if raw.ndim != 2 and not (raw.ndim == 3 and raw.shape[-1] in (3, 4)):
            raise UserError(f"{FIELD}.names: scikit-image's '{name}' is not a 2-d image (shape {raw.shape})")
        arrays.append(_to_array(Image.fromarray(raw), cfg.channels, cfg.scale))
    return Images(arrays, names)


def load_folder(cfg: RestorationData) -> Images:
    if cfg.path is None:
        raise UserError(f"{FIELD}.path: kind folder needs the folder of images")
    root = Path(cfg.path).expanduser()
    if not root.is_dir():
        raise UserError(f"{FIELD}.path: folder {root} does not exist")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                   and not any(part.startswith(".") for part in p.relative_to(root).parts))
    if not files:
        raise UserError(f"{FIELD}.path: no images in {root} (looked for {', '.join(sorted(IMAGE_SUFFIXES))}, "
                        f"recursively)")
    arrays = [read_image(file, cfg.channels, f"{FIELD}.path", scale=cfg.scale) for file in files]
    return Images(arrays, [p.relative_to(root).as_posix() for p in files])


def split_images(n: int, cfg: RestorationData) -> dict[str, np.ndarray]:
    """Source-image indices of the train / val / test splits (at least one image each)."""
    if n < 3:
        raise UserError(f"{FIELD}: {n} image(s) found; the split by source image needs at least 3 (train, val, test)")
    n_test = max(1, int(round(cfg.test_fraction * n)))
    n_val = max(1, int(round(cfg.val_fraction * n)))
    if n_test + n_val > n - 1:
        raise UserError(f"{FIELD}.val_fraction, test_fraction: {cfg.val_fraction} and {cfg.test_fraction} of {n} "
                        f"images leave no training image")
    order = rng_for(cfg.split_seed, "restoration-split").permutation(n)
    return {"test": np.sort(order[:n_test]), "val": np.sort(order[n_test:n_test + n_val]),
            "train": np.sort(order[n_test + n_val:])}


def random_crops(images: list[np.ndarray], n: int, size: int, rng: np.random.Generator) -> torch.Tensor:
    """``n`` crops: an image uniformly at random, then a position uniformly inside it; random horizontal flip."""
    out = np.empty((n, images[0].shape[0], size, size), dtype=np.float32)
    which = rng.integers(0, len(images), size=n)
    for j, i in enumerate(which):
        img = images[i]
        top = int(rng.integers(0, img.shape[1] - size + 1))
        left = int(rng.integers(0, img.shape[2] - size + 1))
        out[j] = img[:, top:top + size, left:left + size]
    flip = rng.random(n) < 0.5
    out[flip] = out[flip][..., ::-1]
    return torch.from_numpy(out)


# ------------------------------------------------------------------------------------------------- model
class EncoderDecoder(nn.Module):
    """A light convolutional encoder-decoder for restoration.

    Encoder: a 3x3 convolution, then ``depth`` stride-2 4x4 convolutions doubling the width (32 -> 16 -> 8 for a
    32-pixel crop and depth 2); a 3x3 convolution at the bottleneck; decoder: ``depth`` stride-2 4x4 transposed
    convolutions halving the width back, and a 3x3 convolution to the image channels. With ``skips`` each decoder
    level adds the encoder features of the same resolution (U-Net style, additive); with ``residual`` the network
    predicts a correction added to its input, and its last layer starts at zero (the untrained network is the
    identity). No batch normalisation (train and eval behave the same).
    """

    def __init__(self, channels: int, width: int = 32, depth: int = 2, skips: bool = True, residual: bool = True):
        super().__init__()
        self.skips, self.residual = skips, residual
        act = lambda: nn.LeakyReLU(0.2)  # noqa: E731
        self.head = nn.Sequential(nn.Conv2d(channels, width, 3, padding=1), act())
        self.down = nn.ModuleList(nn.Sequential(nn.Conv2d(width * 2 ** i, width * 2 ** (i + 1), 4, 2, 1), act())
                                  for i in range(depth))
        inner = width * 2 ** depth
        self.middle = nn.Sequential(nn.Conv2d(inner, inner, 3, padding=1), nn.ReLU())
        self.up = nn.ModuleList(nn.Sequential(nn.ConvTranspose2d(width * 2 ** (i + 1), width * 2 ** i, 4, 2, 1),
                                              nn.ReLU())
                                for i in reversed(range(depth)))
        self.tail = nn.Conv2d(width, channels, 3, padding=1)
        if residual:      # start as the identity: an untrained network returns its input, never worse than it
            nn.init.zeros_(self.tail.weight)
            nn.init.zeros_(self.tail.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.head(x - 0.5)
        kept = [h]
        for layer in self.down:
            h = layer(h)
            kept.append(h)
        h = self.middle(h)
        for layer, skip in zip(self.up, reversed(kept[:-1])):
            h = layer(h)
            if self.skips:
                h = h + skip
        out = self.tail(h)
        return x + out if self.residual else out + 0.5


# ------------------------------------------------------------------------------------------------- metrics
def psnr_ssim(restored: np.ndarray, clean: np.ndarray, ssim: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """Per-image PSNR (dB) and SSIM by scikit-image, images N x C x H x W in [0, 1] (data range 1)."""
    from skimage.metrics import peak_signal_noise_ratio, structural_similarity
    psnrs, ssims = [], []
    for r, c in zip(restored.astype(np.float64), clean.astype(np.float64)):
        mse = float(np.mean((r - c) ** 2))
        psnrs.append(MAX_PSNR if mse == 0 else min(MAX_PSNR, float(peak_signal_noise_ratio(c, r, data_range=1.0))))
        if ssim:
            ssims.append(float(structural_similarity(c, r, data_range=1.0, channel_axis=0)))
    return np.asarray(psnrs), (np.asarray(ssims) if ssim else None)


@dataclass
class Split:
    clean: torch.Tensor          # N x C x S x S
    corrupted: torch.Tensor
    levels: np.ndarray           # N, 1..5


# ------------------------------------------------------------------------------------------------- task
class RestorationConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: Literal["denoise", "inpaint", "deblur", "interpolate"] = "denoise"
    data: RestorationData = Field(default_factory=RestorationData)
    crop_size: int = Field(32, ge=8, le=512)      # the card uses 64; 32 keeps a CPU run to minutes
    scale_sizes: bool = True                      # scale the card's pixel sizes (holes, blur) by crop_size / 64
    width: int = Field(32, ge=4)                  # channels of the first layer
    depth: int = Field(2, ge=1, le=5)             # stride-2 stages (crop_size must be divisible by 2**depth)
    skips: bool = True                            # U-Net style additive skip connections
    residual: bool = True                         # predict a correction to the corrupted input
    lr: float = Field(2e-4, gt=0)                 # Adam, as in the paper
    beta1: float = Field(0.5, ge=0, lt=1)         # the paper's (DCGAN's) Adam beta1
    batch_size: int = Field(50, ge=1)
    ema: float = Field(0.0, ge=0, lt=1)           # > 0: evaluate an exponential moving average of the weights
    n_val: int = Field(32, ge=1)                  # validation crops per level (the on-demand feedback)
    n_test: int = Field(64, ge=1)                 # test crops per level
    examples: int = Field(3, ge=0)                # test crops per level in examples/round_<r>.png (0 = none)
    eval_batch_size: int = Field(256, ge=1)


class RestorationTask:
    """One encoder-decoder network for all five levels of one restoration task (see the module docstring)."""

    Config = RestorationConfig
    outputs = frozenset({LEVEL_PSNR, LEVEL_SSIM})
    primary_metric = "psnr_mean"
    metrics = ("psnr_mean", "ssim_mean", "n_train", "train_loss",
               *(f"{name}_level{level}" for name in ("psnr", "ssim", "psnr_input", "n")
                 for level in range(1, LEVELS + 1)))
    query_type = "synthesis"

    def __init__(self, config: RestorationConfig, env: Env):
        self.cfg = cfg = config
        self.env = env
        self.device = torch.device(env.device)
        if cfg.crop_size % (2 ** cfg.depth):
            raise UserError(f"task.params.crop_size: {cfg.crop_size} is not divisible by 2**depth = {2 ** cfg.depth}")
        images = load_skimage(cfg.data) if cfg.data.kind == "skimage" else load_folder(cfg.data)
        small = [n for n, a in zip(images.names, images.arrays) if min(a.shape[1:]) < cfg.crop_size]
        if small:
            raise UserError(f"{FIELD}.scale: after scaling by {cfg.data.scale}, image(s) {', '.join(small[:5])} are "
                            f"smaller than crop_size {cfg.crop_size}")
        self.image_names = images.names
        self._sources = images.arrays
        self.splits = split_images(len(images.arrays), cfg.data)
        self.train_images = [images.arrays[i] for i in self.splits["train"]]
        # the mean colour of the training images fills holes and removed pixels (the paper's fixed ImageNet mean)
        pixels = sum(a.shape[1] * a.shape[2] for a in self.train_images)
        self.fill = torch.from_numpy((sum(a.sum(axis=(1, 2)) for a in self.train_images) / pixels).astype(np.float32))
        self.val = self._fixed_split([images.arrays[i] for i in self.splits["val"]], cfg.n_val, "val")
        self.test = self._fixed_split([images.arrays[i] for i in self.splits["test"]], cfg.n_test, "test")
        self._input_psnr = psnr_ssim(self.test.corrupted.numpy(), self.test.clean.numpy(), ssim=False)[0]
        self.model = self._new_model()
        self.optimizer = self._new_optimizer(self.model)
        self.average = self._new_model() if cfg.ema > 0 else None   # the EMA of the weights, when enabled
        self.steps = 0                # optimiser steps so far
        self.last_round = -1          # the round whose fit made the current model (-1 = untrained)
        self.n_seen = 0               # samples trained on so far
        self._val_cache: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------------------------------ building
    def _fixed_split(self, images: list[np.ndarray], per_level: int, name: str) -> Split:
        cs, xs, ls = [], [], []
        for level in range(1, LEVELS + 1):
            rng = rng_for(self.cfg.data.split_seed, f"restoration-{name}", level)
            clean = random_crops(images, per_level, self.cfg.crop_size, rng)
            corrupted, _ = corrupt(self.cfg.task, clean, level, rng, self.fill, self.cfg.scale_sizes)
            cs.append(clean)
            xs.append(corrupted)
            ls.append(np.full(per_level, level))
        return Split(torch.cat(cs), torch.cat(xs), np.concatenate(ls))

    def _new_model(self) -> nn.Module:
        cfg = self.cfg
        with seeded(seed_for(self.env.seed, "restoration-init", below=TORCH_SEED_BOUND)):
            model = EncoderDecoder(cfg.data.channels, cfg.width, cfg.depth, cfg.skips, cfg.residual)
        return model.to(self.device).eval()

    def _new_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model.parameters(), "adam", lr=self.cfg.lr, betas=(self.cfg.beta1, 0.999))

    # ------------------------------------------------------------------------------------------ samples
    def samples(self, label: Mapping[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """The (corrupted, clean) crops a label stands for, regenerated from its seed."""
        rng = np.random.default_rng(int(label["seed"]))
        clean = random_crops(self.train_images, int(label["count"]), self.cfg.crop_size, rng)
        corrupted, _ = corrupt(self.cfg.task, clean, int(label["level"]), rng, self.fill, self.cfg.scale_sizes)
        return corrupted, clean

    # ------------------------------------------------------------------------------------------ protocol
    def pool_ids(self) -> Sequence[ItemId]:
        return [generator_id(level) for level in range(1, LEVELS + 1)]

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        """One epoch over the samples synthesised in THIS round (items ``level<i>@<ctx.round>``), continuing from
        the current network and optimiser."""
        suffix = f"@{ctx.round}"
        mine = sorted((item, self.check_label(item, value)) for item, value in labels.items() if item.endswith(suffix))
        counts = {level: 0 for level in range(1, LEVELS + 1)}
        xs, ys = [], []
        for _, value in mine:
            if value["count"] == 0:
                continue
            x, y = self.samples(value)
            xs.append(x)
            ys.append(y)
            counts[value["level"]] += value["count"]
        stats: dict[str, float] = {f"n_level{level}": counts[level] for level in counts}
        n = sum(counts.values())
        stats["n_train"] = n
        if n == 0:
            return stats
        x, y = torch.cat(xs).to(self.device), torch.cat(ys).to(self.device)
        order = torch.from_numpy(rng_for(ctx.seed, ctx.round, "restoration-order").permutation(n))
        bs = self.cfg.batch_size
        total = 0.0
        self.model.train()
        with seeded(seed_for(ctx.seed, ctx.round, "restoration-fit", below=TORCH_SEED_BOUND), self.device):
            for start in tqdm(range(0, n, bs), desc=f"fit round {ctx.round}", unit="batch", leave=False,
                              disable=not (self.env.progress and ctx.progress)):
                batch = order[start:start + bs]
                loss = F.mse_loss(self.model(x[batch]), y[batch])     # L2 loss
                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self.optimizer.step()
                self.steps += 1
                self._update_average()
                total += float(loss.detach()) * len(batch)
        self.model.eval()
        self.last_round = ctx.round
        self.n_seen += n
        self._val_cache = None
        stats["train_loss"] = total / n
        return stats

    @torch.no_grad()
    def _update_average(self) -> None:
        """EMA of the weights; the decay warms up as min(ema, (1 + t) / (10 + t)) so early models are not
        dominated by the random initialisation."""
        if self.average is None:
            return
        decay = min(self.cfg.ema, (1 + self.steps) / (10 + self.steps))
        for avg, new in zip(self.average.parameters(), self.model.parameters()):
            avg.mul_(decay).add_(new.detach(), alpha=1.0 - decay)

    def restore(self, corrupted: torch.Tensor) -> torch.Tensor:
        """The restoration of a batch by the network (or its weight average, with ``ema``), clipped to [0, 1],
        on the CPU."""
        model = self.average if self.average is not None else self.model
        model.eval()
        out = []
        bs = self.cfg.eval_batch_size
        with torch.inference_mode():
            for start in range(0, len(corrupted), bs):
                out.append(model(corrupted[start:start + bs].to(self.device)).clamp(0.0, 1.0).float().cpu())
        return torch.cat(out) if out else corrupted.clone()

    def _per_level(self, split: Split, ssim: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
        restored = self.restore(split.corrupted)
        psnr, ssim_values = psnr_ssim(restored.numpy(), split.clean.numpy(), ssim=ssim)
        return restored.numpy(), psnr, ssim_values

    def validation(self) -> dict[str, np.ndarray]:
        """Mean PSNR and SSIM of each level on the validation split, by the current model (cached until the model
        changes)."""
        if self._val_cache is None:
            _, psnr, ssim = self._per_level(self.val, ssim=True)
            levels = self.val.levels
            self._val_cache = {
                LEVEL_PSNR: np.asarray([psnr[levels == lv].mean() for lv in range(1, LEVELS + 1)]),
                LEVEL_SSIM: np.asarray([ssim[levels == lv].mean() for lv in range(1, LEVELS + 1)]),
            }
        return self._val_cache

    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        """One chunk: for each generator id, its level's validation PSNR (``level_psnr``) and SSIM (``level_ssim``)."""
        if mc is not None:
            raise ValueError("the restoration task has no stochastic predictions (MC)")
        unknown = set(want) - set(self.outputs)
        if unknown:
            raise ValueError(f"the restoration task cannot predict {', '.join(sorted(unknown))}; it offers "
                             f"{', '.join(sorted(self.outputs))}")
        levels = []
        for item in ids:
            level, rnd = parse_item(item)
            if rnd is not None:
                raise ValueError(f"predict takes generator ids (level1..level{LEVELS}), got {item!r}")
            levels.append(level - 1)
        return self._predict(np.asarray(levels, dtype=np.int64), set(want))

    def _predict(self, index: np.ndarray, want: set[str]) -> Iterator[dict[str, np.ndarray]]:
        if len(index) == 0:
            yield {name: np.zeros(0) for name in want}
            return
        values = self.validation()
        yield {name: values[name][index].astype(np.float64) for name in want}

    def evaluate(self) -> Mapping[str, float]:
        restored, psnr, ssim = self._per_level(self.test, ssim=True)
        levels = self.test.levels
        metrics: dict[str, float] = {}
        for lv in range(1, LEVELS + 1):
            metrics[f"psnr_level{lv}"] = float(psnr[levels == lv].mean())
            metrics[f"ssim_level{lv}"] = float(ssim[levels == lv].mean())
        metrics["psnr_mean"] = float(np.mean([metrics[f"psnr_level{lv}"] for lv in range(1, LEVELS + 1)]))
        metrics["ssim_mean"] = float(np.mean([metrics[f"ssim_level{lv}"] for lv in range(1, LEVELS + 1)]))
        for lv in range(1, LEVELS + 1):
            metrics[f"psnr_input_level{lv}"] = float(self._input_psnr[levels == lv].mean())
        if self.env.run_dir is not None and self.cfg.examples > 0:
            self.save_examples(restored, psnr, Path(self.env.run_dir) / "examples" / f"round_{self.last_round}.png")
        return metrics

    def save_examples(self, restored: np.ndarray, psnr: np.ndarray, path: Path) -> Path:
        """A grid: one row per level, for each of ``examples`` test crops corrupted | restored | clean."""
        from activelab.report import _pyplot
        k, s, gap = self.cfg.examples, self.cfg.crop_size, 2
        c = self.test.clean.shape[1]
        levels = self.test.levels
        tile = s + gap
        grid = np.ones((LEVELS * tile - gap, 3 * k * tile + (k - 1) * gap - gap, 3), dtype=np.float32)
        labels = []
        for row, lv in enumerate(range(1, LEVELS + 1)):
            idx = np.flatnonzero(levels == lv)[:k]
            labels.append(f"level {lv}\n{psnr[levels == lv].mean():.1f} dB")
            for j, i in enumerate(idx):
                for col, img in enumerate((self.test.corrupted[i].numpy(), restored[i], self.test.clean[i].numpy())):
                    x0 = (3 * j + col) * tile + j * gap
                    y0 = row * tile
                    grid[y0:y0 + s, x0:x0 + s] = (np.repeat(img, 3, 0).transpose(1, 2, 0) if c == 1
                                                  else img.transpose(1, 2, 0))
        plt = _pyplot()
        scale = max(1.0, 96.0 / s)
        fig, ax = plt.subplots(figsize=(grid.shape[1] * scale / 80 + 1.2, grid.shape[0] * scale / 80 + 0.8))
        ax.imshow(np.clip(grid, 0, 1), interpolation="nearest")
        ax.set_yticks([row * tile + s / 2 for row in range(LEVELS)], labels, fontsize=8)
        ax.set_xticks([(3 * j + col) * tile + j * gap + s / 2 for j in range(k) for col in range(3)],
                      ["corrupted", "restored", "clean"] * k, fontsize=7, rotation=30)
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
        ax.set_title(f"{self.cfg.task}, after round {self.last_round} ({self.n_seen} samples); "
                     f"mean test PSNR per level", fontsize=8)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.stem + ".tmp.png")
        fig.savefig(tmp, dpi=80)
        plt.close(fig)
        os.replace(tmp, path)
        return path

    def data_fingerprint(self) -> str:
        """sha256 (hex) of the source images as loaded (names, then the decoded, scaled pixels of each, in order):
        the crops of every split and every sample are drawn from them. The core refuses to resume a run whose
        data changed."""
        digest = hashlib.sha256()
        digest.update(json.dumps({"names": list(self.image_names)}).encode())
        for array in self._sources:
            array = np.ascontiguousarray(array, dtype="<f4")
            digest.update(json.dumps(list(array.shape)).encode())
            digest.update(array.data)
        return digest.hexdigest()

    # ------------------------------------------------------------------------------------------ labels
    def true_label(self, item_id: ItemId) -> Any:
        raise KeyError(f"{item_id!r}: a restoration task has no ground-truth labels; its samples are synthesised "
                       f"by the corruptor oracle")

    def check_label(self, item_id: ItemId, value: Any) -> dict[str, int]:
        """A synthesised item ``level<i>@<r>``'s label: ``{"level": i, "count": n >= 0, "seed": int}``."""
        try:
            level, _ = parse_item(item_id)
        except ValueError as exc:
            raise ValueError(str(exc)) from None
        if not isinstance(value, Mapping) or not {"level", "count", "seed"} <= set(value):
            raise ValueError(f"a restoration label is a mapping with level, count and seed; got {value!r}")
        out = {}
        for key in ("level", "count", "seed"):
            v = value[key]
            if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, np.integer)):
                raise ValueError(f"label {key} must be an integer, got {v!r}")
            out[key] = int(v)
        if out["level"] != level:
            raise ValueError(f"label level {out['level']} does not match item {item_id!r}")
        if out["count"] < 0 or out["seed"] < 0:
            raise ValueError(f"label count and seed must be >= 0, got {value!r}")
        return out

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        level, rnd = parse_item(item_id)
        from .corruptions import level_range
        low, high = level_range(self.cfg.task, level, self.cfg.crop_size, self.cfg.scale_sizes)
        return {"text": f"{self.cfg.task} level {level}: parameter drawn from [{low:g}, {high:g}]", "level": level,
                "round": rnd}

    # ------------------------------------------------------------------------------------------ checkpoints
    def _matches(self) -> dict[str, Any]:
        return {"task": self.cfg.task, "images": list(self.image_names)}

    def state_dict(self) -> dict[str, Any]:
        return checkpoint(matches=self._matches(), model=self.model, optimizer=self.optimizer,
                          average=snapshot(self.average), steps=self.steps, last_round=self.last_round,
                          n_seen=self.n_seen)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, self._matches(), "the task")
        self.model = restore(self._new_model(), state["model"]).eval()
        self.optimizer = restore(self._new_optimizer(self.model), state["optimizer"])
        if self.average is not None:
            if state["average"] is None:
                raise UserError("checkpoint has no weight average but task.params.ema is set")
            self.average = restore(self._new_model(), state["average"], "the weight average")
        self.steps = int(state["steps"])
        self.last_round = int(state["last_round"])
        self.n_seen = int(state["n_seen"])
        self._val_cache = None
