"""A label-free representation of the image pool: the classification task's ``FEATURES`` output.

Low-budget strategies (TypiClust, ProbCover) select on a representation of the pool that needs no labels, and a
cold start picks round 0 before any classifier exists. :class:`PoolFeatures` computes one per run, once, from the
pool images alone (never the labels, never the classifier), and keeps it in the run folder. Three kinds
(``task.params.features.kind``):

- ``simclr`` (default): a small CNN trained on every pool image by contrastive learning (SimCLR, Chen et al.,
  "A Simple Framework for Contrastive Learning of Visual Representations", ICML 2020). Each image of a batch of N
  is augmented twice; an encoder ``f`` (the plugin's :class:`~.models.SmallCNN` body: two conv blocks, adaptive
  pooling, a ``dim``-wide hidden layer; ``width`` 16 where the classifier has 32) and a projection head ``g`` (an
  MLP, ``dim -> dim -> projection_dim``) map the 2N views to ``z``, and the NT-Xent loss (:func:`nt_xent`,
  temperature ``temperature``) pulls the two views of an image together against the other 2N - 2. The features
  are ``f``'s output, before the head (the paper's Section 4.2: the layer before the projection head is the
  better representation), L2-normalised by default. Adam instead of the paper's LARS (which serves its batches of
  thousands), ``temperature`` 0.5 (the value the paper found best on CIFAR-10, its Appendix B.9), batch 256,
  ``epochs`` 60 but at most ``max_steps`` 1,000 optimiser steps.
- ``pca``: the pool's pixels projected on their first ``dim`` principal components (scikit-learn's ``PCA``, solver
  ``auto``: exact, by the covariance's eigendecomposition, for images of under 1,000 pixels such as MNIST's;
  randomized and seeded for larger ones), L2-normalised by default. Seconds for MNIST: the cheap fallback.
- ``pixels``: the flattened pixels (in [0, 1]), L2-normalised by default: a baseline; ``dim`` is ignored.

The augmentations (:class:`AugmentConfig`) suit small greyscale images such as digits: a random resized crop
(area 50-100%, aspect 3/4-4/3) with a rotation of up to 15 degrees, a random brightness and contrast change and
Gaussian noise. No horizontal flip (a flipped digit is another symbol; switch ``hflip`` on for natural images)
and no colour jitter beyond brightness and contrast (the images are mostly grey). The crop and the rotation are
one affine warp (``grid_sample``, bilinear, zeros outside the image: the background of digits).

**Determinism and caching.** Everything random (the encoder's initialisation, the shuffling, the augmentations)
is drawn from generators seeded by the run seed (or ``features.seed``), so the same pool and settings give the
same features, bit for bit on the CPU. The features are computed on first request and kept in memory; with a run
folder they are also written to ``<run_dir>/features/<kind>-<key>.npy`` (with a ``.json`` beside it that records
the key, the shape and a checksum), where ``key`` hashes the data fingerprint, the features settings and the seed.
Beside them, under the same key, goes what maps an image to its features (:class:`FeatureMap`): the trained SimCLR
encoder's weights (``simclr-<key>-encoder.npy``, one flat float32 vector) or PCA's mean and components
(``pca-<key>-projection.npy``, the mean in row 0); ``pixels`` needs neither. With the map, images outside the pool
(the held-out test split, for the classifier ``model: linear_probe``) get features from the same frozen encoder or
projection, and the pool's own features are that map applied to the pool. Every file is written to a temporary
name, flushed to disk and renamed into place, so a crash never leaves half a file under the final name. A later
task instance (a resumed run) reads them back instead of training again; a file whose key, shape or checksum does
not match is ignored and rebuilt, never used (damaged features are recomputed from an intact map without training;
a damaged map means training again, which gives the same map). ``cache_dir`` puts the cache elsewhere, e.g. in a
folder shared by runs that differ only in their seed (with ``features.seed`` fixed), so a SimCLR encoder is
trained once per data set instead of once per run.

Memory: the features are float32 N x ``dim`` (60,000 MNIST images at 128 dims: 31 MB); training holds one batch
of augmented views at a time; the encoder at the default settings has about 24,000 weights (100 kB).

**Lazy pools** (:class:`~.datasets.LazyImages`, the classification task's ``data.lazy``): the images are decoded as
they are needed and never held whole. SimCLR decodes each batch it trains on; the map is applied to the pool (and
the test split) ``batch_size`` images at a time; PCA is fitted on :func:`~.datasets.sample_images`'s seeded sample
(at most 10,000 images and 256 MB of pixels; the whole pool, hence the in-memory projection, when it is no larger)
and applied chunk by chunk; ``pixels`` are read per chunk of rows, and the whole pool's pixel array (``array()``) is
refused above :data:`PIXELS_MAX_BYTES` (1 GiB) with a one-line error.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import tempfile
import time
import warnings
from pathlib import Path
from typing import Callable, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import seed_for
from activelab.recipe import DataPath
from activelab.torchkit import build_optimizer, seeded

from .datasets import LazyImages, is_lazy, sample_images
from .models import SmallCNN

PIXELS_MAX_BYTES = 2**30  # pixels features of a whole lazy pool: refused above this size
CACHE_VERSION = 2        # bump when the computation changes, so old caches are not read as new ones
                         # (2: the pool's features are the cached map applied to the pool)


class AugmentConfig(BaseModel):
    """SimCLR's views of an image. The defaults suit small greyscale images (digits, MNIST, Fashion-MNIST)."""

    model_config = ConfigDict(extra="forbid")

    crop_scale: float = Field(0.5, gt=0, le=1, description="random resized crop: the crop covers a random fraction "
                                                          "of the image's area between this and 1 (1: no crop)")
    crop_ratio: float = Field(4 / 3, ge=1, description="random resized crop: its aspect ratio (width / height) is "
                                                       "drawn between 1 / crop_ratio and crop_ratio (log-uniform)")
    rotation: float = Field(15.0, ge=0, le=180, description="rotation by up to this many degrees either way")
    brightness: float = Field(0.3, ge=0, lt=1, description="pixels times a factor in [1 - b, 1 + b]")
    contrast: float = Field(0.3, ge=0, lt=1, description="distance from the image's mean times a factor in "
                                                          "[1 - c, 1 + c]")
    noise: float = Field(0.05, ge=0, description="standard deviation of added Gaussian noise (pixels in [0, 1])")
    hflip: bool = Field(False, description="flip half the views left-right (off: a flipped digit is another "
                                           "symbol; on for natural images)")


class FeaturesConfig(BaseModel):
    """The task's label-free representation of the pool (its ``features`` output); see
    :mod:`activelab.plugins.vision.features`."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["simclr", "pca", "pixels"] = Field(
        "simclr", description="simclr: a small CNN trained contrastively on the pool (Chen et al. 2020); pca: "
                              "the pixels' first principal components (cheap); pixels: the flattened pixels")
    dim: int = Field(128, ge=1, description="feature width: simclr's encoder output, pca's components (at most "
                                            "the number of pixels and of pool items); ignored by pixels")
    normalize: bool = Field(True, description="L2-normalise each item's features (as TypiClust's and "
                                              "ProbCover's code do), so distances are cosine distances")
    seed: int | None = Field(None, description="seed of the encoder (initialisation, shuffling, augmentations, "
                                               "pca's randomized solver); default: the run's seed")
    cache_dir: DataPath | None = Field(None, description="folder of the cached features; default: "
                                                         "<run folder>/features")
    epochs: int = Field(60, ge=1, description="simclr: passes over the pool")
    max_steps: int | None = Field(1000, ge=1, description="simclr: at most this many optimiser steps in all "
                                                          "(bounds the cost on large pools); null: no bound")
    batch_size: int = Field(256, ge=2, description="simclr: images per batch (2 views each)")
    temperature: float = Field(0.5, gt=0, description="simclr: NT-Xent temperature (the paper's best for small "
                                                      "batches on CIFAR-10)")
    lr: float = Field(1e-3, gt=0, description="simclr: Adam's learning rate")
    weight_decay: float = Field(1e-6, ge=0, description="simclr: weight decay (the paper's 1e-6)")
    projection_dim: int = Field(64, ge=1, description="simclr: output width of the projection head")
    width: int = Field(16, ge=1, description="simclr: channels of the encoder's first conv block (the classifier's "
                                             "small_cnn has 32; 16 costs about a third and learnt as well on digits)")
    augment: AugmentConfig = Field(default_factory=AugmentConfig, description="simclr: the augmentations")


# ------------------------------------------------------------------------------------------ SimCLR
def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> torch.Tensor:
    """SimCLR's NT-Xent loss of a batch: ``z1[i]`` and ``z2[i]`` are the projections of two views of image i.

    With the 2N projections L2-normalised, ``s(a, b)`` their dot product, the loss of anchor a with positive p is
    ``-log(exp(s(a, p) / t) / sum_{b != a} exp(s(a, b) / t))``; the result is its mean over all 2N anchors.
    """
    n = len(z1)
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    sim = (z @ z.T) / temperature
    sim = sim.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    target = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(sim, target)


class SimCLRNet(nn.Module):
    """The encoder ``f`` (a :class:`~.models.SmallCNN` body, ``dim`` wide) and the projection head ``g``."""

    def __init__(self, in_channels: int, dim: int, projection_dim: int, width: int):
        super().__init__()
        self.encoder = SmallCNN(in_channels, 1, 0.0, width=width, hidden=dim).body
        self.head = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Linear(dim, projection_dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x))


def augment(images: torch.Tensor, cfg: AugmentConfig, generator: torch.Generator) -> torch.Tensor:
    """A random view of each image (B x C x H x W in [0, 1], on the CPU), drawn from ``generator``."""
    b = len(images)

    def uniform(low: float, high: float) -> torch.Tensor:
        return low + (high - low) * torch.rand(b, generator=generator)

    # random resized crop + rotation as one affine map from output to input coordinates (both in [-1, 1])
    area = uniform(cfg.crop_scale, 1.0)
    ratio = torch.exp(uniform(-math.log(cfg.crop_ratio), math.log(cfg.crop_ratio)))
    w = torch.sqrt(area * ratio).clamp(max=1.0)
    h = torch.sqrt(area / ratio).clamp(max=1.0)
    cx = (1 - w) * uniform(-1.0, 1.0)
    cy = (1 - h) * uniform(-1.0, 1.0)
    angle = uniform(-cfg.rotation, cfg.rotation) * (math.pi / 180)
    cos, sin = torch.cos(angle), torch.sin(angle)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0) if cfg.hflip else torch.ones(b)
    theta = torch.stack([torch.stack([w * cos * flip, -h * sin, cx], 1),
                         torch.stack([w * sin * flip, h * cos, cy], 1)], 1)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    views = F.grid_sample(images, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    # brightness, contrast, noise
    views = views * uniform(1 - cfg.brightness, 1 + cfg.brightness)[:, None, None, None]
    mean = views.mean(dim=(1, 2, 3), keepdim=True)
    views = (views - mean) * uniform(1 - cfg.contrast, 1 + cfg.contrast)[:, None, None, None] + mean
    if cfg.noise > 0:
        views = views + cfg.noise * torch.randn(views.shape, generator=generator)
    return views.clamp(0.0, 1.0)


def train_simclr(images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, cfg: FeaturesConfig, seed: int,
                 device: torch.device, progress: bool = False) -> nn.Module:
    """Train the SimCLR network on ``images`` (N x C x H x W in [0, 1]; normalised by ``mean`` and ``std`` after
    augmentation) and return its encoder ``f`` (on ``device``, in eval mode, its weights frozen: no gradients)."""
    n, channels = len(images), images.shape[1]
    with seeded(seed_for(seed, "vision-features-init")):
        net = SimCLRNet(channels, cfg.dim, cfg.projection_dim, cfg.width)
    net = net.to(device)
    optimizer = build_optimizer(net.parameters(), "adam", lr=cfg.lr, weight_decay=cfg.weight_decay)
    generator = torch.Generator().manual_seed(seed_for(seed, "vision-features-augment"))
    mean, std = mean.to(device), std.to(device)
    bs = min(cfg.batch_size, n)
    per_epoch = n // bs                         # the last, incomplete batch is dropped (a new one each epoch)
    steps = cfg.epochs * per_epoch if cfg.max_steps is None else min(cfg.epochs * per_epoch, cfg.max_steps)
    net.train()
    done = 0
    # gradients on even when a caller asks for the features inside no_grad / inference_mode
    with torch.inference_mode(False), torch.enable_grad(), seeded(seed_for(seed, "vision-features-fit"), device), \
            tqdm(total=steps, desc="simclr features", unit="step", disable=not progress, leave=False) as bar:
        while done < steps:
            order = torch.randperm(n, generator=generator)
            for start in range(0, per_epoch * bs, bs):
                if done >= steps:
                    break
                batch = images[order[start:start + bs]]
                v1, v2 = augment(batch, cfg.augment, generator), augment(batch, cfg.augment, generator)
                z1 = net((v1.to(device) - mean) / std)
                z2 = net((v2.to(device) - mean) / std)
                loss = nt_xent(z1, z2, cfg.temperature)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done += 1
                bar.update(1)
                bar.set_postfix(loss=f"{float(loss.detach()):.3f}", refresh=False)
    return freeze(net.encoder)


def freeze(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with ``requires_grad`` off for every parameter."""
    for p in module.parameters():
        p.requires_grad_(False)
    return module.eval()


def simclr_encoder(in_channels: int, cfg: FeaturesConfig) -> nn.Module:
    """An untrained encoder of the shape :func:`train_simclr` trains (its weights are to be loaded); the global torch
    generator is left as it was."""
    with seeded(0):
        return SimCLRNet(in_channels, cfg.dim, cfg.projection_dim, cfg.width).encoder


def flat_weights(module: nn.Module) -> np.ndarray:
    """Every tensor of ``module.state_dict()`` (in its order) flattened into one float32 vector."""
    parts = []
    for name, value in module.state_dict().items():
        if value.dtype != torch.float32:
            raise TypeError(f"cannot flatten {name} of dtype {value.dtype}: only float32 weights are cached")
        parts.append(value.detach().cpu().reshape(-1))
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)


def load_flat_weights(module: nn.Module, flat: np.ndarray) -> nn.Module:
    """The inverse of :func:`flat_weights`: ``module`` with its state dict read from ``flat``."""
    state, start = {}, 0
    for name, value in module.state_dict().items():
        state[name] = torch.from_numpy(np.array(flat[start:start + value.numel()])).reshape(value.shape)
        start += value.numel()
    if start != len(flat):
        raise ValueError(f"{len(flat)} weights for a module of {start}")
    module.load_state_dict(state)
    return module


def n_weights(module: nn.Module) -> int:
    return sum(v.numel() for v in module.state_dict().values())


def fit_pca(images: torch.Tensor | LazyImages, dim: int, seed: int) -> np.ndarray:
    """PCA of the pixels of ``images``: float32 (k + 1) x pixels, the mean in row 0 and the first k = min(dim, N,
    pixels) principal components below it (scikit-learn's ``PCA``, ``auto`` solver, seeded). Lazy images: fitted on
    :func:`~.datasets.sample_images`'s seeded sample (the whole set when it is small enough: the same projection)."""
    from sklearn.decomposition import PCA
    images = sample_images(images, "pca")
    x = images.reshape(len(images), -1).numpy()
    k = min(dim, x.shape[0], x.shape[1])
    pca = PCA(n_components=k, random_state=seed % 2**32).fit(x)
    return np.concatenate([pca.mean_[None], pca.components_]).astype(np.float32)


def l2_normalize(x: np.ndarray) -> np.ndarray:
    """Rows of ``x`` divided by their Euclidean norm (rows of zeros stay zeros)."""
    norm = np.linalg.norm(x, axis=1, keepdims=True)
    return (x / np.maximum(norm, 1e-12)).astype(np.float32)


# ------------------------------------------------------------------------------------------ cache
def cache_key(cfg: FeaturesConfig, seed: int, fingerprint: str) -> str:
    """sha256 (hex) of what the features depend on: the data, the settings (but not where they are kept) and the
    seed."""
    settings = cfg.model_dump(mode="json", exclude={"cache_dir", "seed"})
    blob = json.dumps({"version": CACHE_VERSION, "data": fingerprint, "features": settings, "seed": seed},
                      sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def _digest(array: np.ndarray) -> str:
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").data).hexdigest()


def _write_atomically(path: Path, write: Callable[[object], None]) -> None:
    """``write(file)`` into a temporary file beside ``path``, flushed to disk, then renamed to ``path``."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def save_cache(folder: Path, name: str, key: str, array: np.ndarray, meta: dict) -> Path:
    """Write ``<folder>/<name>.npy`` and its ``.json`` (key, shape, checksum, ``meta``), each atomically."""
    folder.mkdir(parents=True, exist_ok=True)
    array = np.ascontiguousarray(array, dtype="<f4")
    npy, info = folder / f"{name}.npy", folder / f"{name}.json"
    _write_atomically(npy, lambda fh: np.save(fh, array, allow_pickle=False))
    record = {"key": key, "shape": list(array.shape), "dtype": "float32", "sha256": _digest(array), **meta}
    _write_atomically(info, lambda fh: fh.write(json.dumps(record, indent=1, sort_keys=True).encode()))
    _fsync_dir(folder)
    return npy


def load_cache(folder: Path, name: str, key: str, shape: tuple[int, int]) -> np.ndarray | None:
    """The cached array when ``<folder>/<name>.npy`` and its ``.json`` exist and agree with ``key``, ``shape`` and
    the recorded checksum; None otherwise (missing, unreadable, truncated or stale: the caller rebuilds it)."""
    npy, info = folder / f"{name}.npy", folder / f"{name}.json"
    if not npy.exists() and not info.exists():
        return None                 # never computed
    try:
        record = json.loads(info.read_text())
        array = np.load(npy, allow_pickle=False)
    except (OSError, ValueError, EOFError) as exc:
        warnings.warn(f"ignoring the unreadable features cache {npy} ({exc}); rebuilding it", stacklevel=2)
        return None
    if not isinstance(record, dict) or record.get("key") != key or array.dtype != np.float32 \
            or tuple(array.shape) != tuple(shape) or list(record.get("shape", ())) != list(shape) \
            or record.get("sha256") != _digest(array):
        warnings.warn(f"ignoring the features cache {npy}: it does not match the data, the settings or its "
                      f"checksum; rebuilding it", stacklevel=2)
        return None
    return array


# ------------------------------------------------------------------------------------------ the map
class FeatureMap:
    """What maps images to their features, frozen: the SimCLR encoder, the PCA projection or nothing (pixels).

    Call it on any images (N x C x H x W in [0, 1], the pool's or others): float32 N x ``dim`` (the pixels' count
    for pixels), L2-normalised when configured. ``encoder``: simclr's trained encoder, applied to
    ``(images - mean) / std`` in batches of ``batch_size`` on ``device``; ``projection``: pca's (k + 1) x pixels
    array (see :func:`fit_pca`), applied as ``(x - mean) @ components.T`` in float64.
    """

    def __init__(self, kind: str, normalize: bool, dim: int, *, encoder: nn.Module | None = None,
                 projection: np.ndarray | None = None, mean: torch.Tensor | None = None,
                 std: torch.Tensor | None = None, device: torch.device | str = "cpu", batch_size: int = 512):
        self.kind, self.normalize, self.dim = kind, normalize, dim
        self.encoder = encoder
        self.projection = projection
        self.device = torch.device(device)
        self.mean = None if mean is None else mean.to(self.device)
        self.std = None if std is None else std.to(self.device)
        self.batch_size = batch_size

    def __call__(self, images: torch.Tensor | LazyImages) -> np.ndarray:
        if is_lazy(images):       # decoded and mapped batch_size images at a time (simclr: the same batches)
            blocks = [self(images.read(np.arange(a, min(a + self.batch_size, len(images)), dtype=np.int64)))
                      for a in range(0, len(images), self.batch_size)]
            return np.concatenate(blocks) if blocks else np.zeros((0, self.dim), np.float32)
        if self.kind == "simclr":
            chunks = [np.zeros((0, self.dim), np.float32)]
            with torch.inference_mode():
                for start in range(0, len(images), self.batch_size):
                    x = (images[start:start + self.batch_size].to(self.device) - self.mean) / self.std
                    chunks.append(self.encoder(x).float().cpu().numpy())
            out = np.concatenate(chunks)
        elif self.kind == "pca":
            x = images.reshape(len(images), -1).numpy().astype(np.float64)
            mean, components = self.projection[0].astype(np.float64), self.projection[1:].astype(np.float64)
            out = ((x - mean) @ components.T).astype(np.float32)
        else:
            out = images.reshape(len(images), -1).numpy().astype(np.float32)
        return l2_normalize(out) if self.normalize else np.ascontiguousarray(out, dtype=np.float32)


# ------------------------------------------------------------------------------------------ the pool's features
MAP_NAMES = {"simclr": "encoder", "pca": "projection"}


class PoolFeatures:
    """The features of a pool of images, computed on first request (:meth:`array`), cached (see the module doc),
    and the frozen map behind them (:meth:`feature_map`), which gives the features of other images too
    (:meth:`embed`).

    ``images``: N x C x H x W in [0, 1]; ``mean`` and ``std``: the per-channel statistics the encoder's inputs are
    normalised with (the task's); ``fingerprint``: called (once, when a cache folder is used) for the data's hash;
    ``cache_dir``: where the cache lives, None for memory only.
    """

    def __init__(self, cfg: FeaturesConfig, images: torch.Tensor, mean: torch.Tensor, std: torch.Tensor,
                 seed: int, device: torch.device, cache_dir: Path | None, fingerprint: Callable[[], str],
                 progress: bool = False, batch_size: int = 512):
        self.cfg = cfg
        self.images, self.mean, self.std = images, mean, std
        self.seed = cfg.seed if cfg.seed is not None else seed
        self.device = device
        self.cache_dir = Path(cfg.cache_dir) if cfg.cache_dir is not None else cache_dir
        self.fingerprint = fingerprint
        self.progress = progress
        self.batch_size = batch_size
        self._array: np.ndarray | None = None
        self._map: FeatureMap | None = None
        self._key: str | None = None
        self.path: Path | None = None       # the features' cache file, once written or read
        self.map_path: Path | None = None   # the map's cache file, once written or read

    @property
    def dim(self) -> int:
        n, pixels = len(self.images), math.prod(self.images.shape[1:])
        if self.cfg.kind == "pixels":
            return pixels
        if self.cfg.kind == "pca":
            return min(self.cfg.dim, n, pixels)
        return self.cfg.dim

    @property
    def key(self) -> str:
        """The cache key (see :func:`cache_key`): what pins the representation (data, settings, seed)."""
        if self._key is None:
            self._key = cache_key(self.cfg, self.seed, self.fingerprint())
        return self._key

    def _name(self, part: str | None = None) -> str:
        name = f"{self.cfg.kind}-{self.key[:24]}"
        return name if part is None else f"{name}-{part}"

    def rows(self, positions: np.ndarray) -> np.ndarray:
        """float32 features of the pool items at ``positions``."""
        if self.cfg.kind == "pixels":       # nothing to learn or keep: read from the images
            return self.feature_map()(self.images[torch.from_numpy(np.asarray(positions, dtype=np.int64))])
        return self.array()[positions]

    def array(self) -> np.ndarray:
        """float32 N x :attr:`dim`, the features of the whole pool in pool order."""
        if self._array is None:
            self._array = self._load_or_compute()
        return self._array

    def embed(self, images: torch.Tensor) -> np.ndarray:
        """float32 features of any ``images`` (N x C x H x W in [0, 1]) by the pool's frozen map."""
        return self.feature_map()(images)

    def feature_map(self) -> FeatureMap:
        """The frozen map from images to features: read from the cache, else fitted on the pool (and cached)."""
        if self._map is None:
            self._map = self._load_or_fit_map()
        return self._map

    def _make_map(self, fitted: nn.Module | np.ndarray | None) -> FeatureMap:
        if self.cfg.kind == "simclr":
            return FeatureMap("simclr", self.cfg.normalize, self.dim, encoder=fitted, mean=self.mean, std=self.std,
                              device=self.device, batch_size=self.batch_size)
        if self.cfg.kind == "pca":
            return FeatureMap("pca", self.cfg.normalize, self.dim, projection=fitted)
        return FeatureMap("pixels", self.cfg.normalize, self.dim)

    def _map_shape(self) -> tuple[int, ...]:
        if self.cfg.kind == "simclr":
            return (n_weights(simclr_encoder(self.images.shape[1], self.cfg)),)
        return (self.dim + 1, math.prod(self.images.shape[1:]))

    def _load_or_fit_map(self) -> FeatureMap:
        if self.cfg.kind == "pixels":
            return self._make_map(None)
        name = self._name(MAP_NAMES[self.cfg.kind])
        if self.cache_dir is not None:
            cached = load_cache(self.cache_dir, name, self.key, self._map_shape())
            if cached is not None:
                self.map_path = self.cache_dir / f"{name}.npy"
                if self.cfg.kind == "pca":
                    return self._make_map(cached)
                encoder = load_flat_weights(simclr_encoder(self.images.shape[1], self.cfg), cached)
                return self._make_map(freeze(encoder.to(self.device)))
        began = time.perf_counter()
        if self.cfg.kind == "simclr":
            encoder = train_simclr(self.images, self.mean, self.std, self.cfg, self.seed, self.device,
                                   self.progress)
            fitted, flat = encoder, flat_weights(encoder)
        else:
            fitted = flat = fit_pca(self.images, self.cfg.dim, self.seed)
        self.map_path = self._save(name, flat, time.perf_counter() - began, MAP_NAMES[self.cfg.kind])
        return self._make_map(fitted)

    def _load_or_compute(self) -> np.ndarray:
        if self.cfg.kind == "pixels":
            size = 4 * len(self.images) * math.prod(self.images.shape[1:])
            if is_lazy(self.images) and size > PIXELS_MAX_BYTES:
                raise UserError(f"task.params.features.kind: pixels of the whole lazy pool would take "
                                f"{size / 2**30:.1f} GiB in memory; use pca or simclr features")
            return self.rows(np.arange(len(self.images)))
        shape = (len(self.images), self.dim)
        if self.cache_dir is not None:
            cached = load_cache(self.cache_dir, self._name(), self.key, shape)
            if cached is not None:
                self.path = self.cache_dir / f"{self._name()}.npy"
                return cached
        began = time.perf_counter()
        array = self.feature_map()(self.images)
        if array.shape != shape:
            raise RuntimeError(f"features of shape {array.shape}, expected {shape}")
        self.path = self._save(self._name(), array, time.perf_counter() - began, "features")
        return array

    def _save(self, name: str, array: np.ndarray, seconds: float, what: str) -> Path | None:
        """Cache ``array`` under ``name`` (when there is a cache folder); its path, or None when not kept."""
        if self.cache_dir is None:
            return None
        meta = {"kind": self.cfg.kind, "part": what, "seed": self.seed, "seconds": round(seconds, 3),
                "settings": self.cfg.model_dump(mode="json", exclude={"cache_dir"})}
        try:
            return save_cache(self.cache_dir, name, self.key, array, meta)
        except OSError as exc:      # the features are right, only not kept: a resumed run computes them again
            warnings.warn(f"cannot cache the {self.cfg.kind} {what} in {self.cache_dir} ({exc.strerror or exc}); "
                          f"a resumed run will compute {'them' if what == 'features' else 'it'} again", stacklevel=3)
            return None
