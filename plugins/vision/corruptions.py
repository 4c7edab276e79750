"""The corruption generators of on-demand learning (Gao & Grauman, ICCV 2017): four restoration tasks, five
difficulty levels each. Pure functions of a clean batch and a numpy generator, so a corrupted sample is fully
determined by the seed it was drawn with.

Each sample draws its own parameter inside its level's range (``level`` is 1..5, easy to hard). On the card's
64x64 crops:

============  ==========================================================  =================================
task          per-sample parameter                                         level l
============  ==========================================================  =================================
denoise       Gaussian noise sigma ~ U[s - 20, s] on the 0..255 scale      s = 20 l   (20, 40, ..., 100)
inpaint       square hole, side ~ U{s - 5, ..., s} px, mean-colour fill    s = 6 l    (6, 12, ..., 30)
deblur        Gaussian blur, sigma_x, sigma_y ~ U(s - 0.5, s + 0.5) px     s = l - 0.5 (0.5, 1.5, ..., 4.5)
interpolate   a fraction ~ U[p - 15, p] % of the pixels removed, filled    p = 15 l   (15, 30, ..., 75)
              with the mean colour
============  ==========================================================  =================================

Sizes in pixels (the inpainting hole, the blur sigmas) are given for 64x64 crops; with ``scale_sizes`` (the
default) they are scaled by ``crop / 64`` so a level covers the same fraction of a smaller crop (on 32x32 crops
the hole of level 5 is 13..15 px and its blur sigmas 2..2.5 px). Noise levels and removed fractions do not
depend on the crop size. Noise is drawn per channel; holes and removed pixels are the same in every channel;
values are clipped to [0, 1] after adding noise (as the paper clamps to 0..255).
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("denoise", "inpaint", "deblur", "interpolate")
LEVELS = 5
CARD_CROP = 64          # the crop size the card's pixel sizes refer to


def _check(task: str, level: int) -> None:
    if task not in TASKS:
        raise ValueError(f"unknown restoration task {task!r}; available: {', '.join(TASKS)}")
    if not 1 <= int(level) <= LEVELS:
        raise ValueError(f"level must be 1..{LEVELS}, got {level}")


def size_factor(crop: int, scale_sizes: bool = True) -> float:
    """How the card's pixel sizes are scaled for a crop of ``crop`` pixels."""
    return crop / CARD_CROP if scale_sizes else 1.0


def level_range(task: str, level: int, crop: int = CARD_CROP, scale_sizes: bool = True) -> tuple[float, float]:
    """The closed range a level's per-sample parameter is drawn from: noise sigma (0..255 scale), hole side
    (integer pixels), blur sigma (pixels, for each axis) or removed fraction (0..1)."""
    _check(task, level)
    f = size_factor(crop, scale_sizes)
    if task == "denoise":
        return 20.0 * level - 20.0, 20.0 * level
    if task == "inpaint":
        s = 6 * level
        low = max(1, math.ceil((s - 5) * f - 1e-9))
        high = max(low, min(crop, math.floor(s * f + 1e-9)))
        return float(low), float(high)
    if task == "deblur":
        s = level - 0.5
        return max(0.0, (s - 0.5) * f), (s + 0.5) * f
    p = 15.0 * level
    return (p - 15.0) / 100.0, p / 100.0


def sample_params(task: str, level: int, n: int, rng: np.random.Generator, crop: int = CARD_CROP,
                  scale_sizes: bool = True) -> np.ndarray:
    """``n`` per-sample parameters of a level: shape (n,), or (n, 2) for deblur (sigma_x, sigma_y)."""
    low, high = level_range(task, level, crop, scale_sizes)
    if task == "inpaint":
        return rng.integers(int(low), int(high) + 1, size=n).astype(np.float64)
    if task == "deblur":
        return rng.uniform(low, high, size=(n, 2))
    return rng.uniform(low, high, size=n)


def gaussian_kernels(sigmas: np.ndarray) -> torch.Tensor:
    """1-d Gaussian kernels (rows sum to 1), one per sigma, truncated at 3 sigma and zero-padded to one
    common odd length; a sigma below 0.05 px gives the identity."""
    sigmas = np.asarray(sigmas, dtype=np.float64)
    radius = max(1, int(math.ceil(3.0 * float(sigmas.max(initial=0.0)))))
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    out = np.zeros((len(sigmas), len(x)))
    for i, s in enumerate(sigmas):
        if s < 0.05:
            out[i, radius] = 1.0
            continue
        r = int(math.ceil(3.0 * s))
        k = np.exp(-0.5 * (x / s) ** 2) * (np.abs(x) <= r)
        out[i] = k / k.sum()
    return torch.from_numpy(out.astype(np.float32))


def blur(images: torch.Tensor, sigma_xy: np.ndarray) -> torch.Tensor:
    """Separable Gaussian blur of each image with its own (sigma_x, sigma_y), reflect padding."""
    n, c, h, w = images.shape
    kx = gaussian_kernels(sigma_xy[:, 0])
    ky = gaussian_kernels(sigma_xy[:, 1])
    x = images.reshape(1, n * c, h, w)
    rx, ry = kx.shape[1] // 2, ky.shape[1] // 2
    if rx >= w or ry >= h:
        raise ValueError(f"blur kernel radius {max(rx, ry)} too large for {h}x{w} crops")
    x = F.conv2d(F.pad(x, (rx, rx, 0, 0), mode="reflect"), kx.repeat_interleave(c, 0)[:, None, None, :], groups=n * c)
    x = F.conv2d(F.pad(x, (0, 0, ry, ry), mode="reflect"), ky.repeat_interleave(c, 0)[:, None, :, None], groups=n * c)
    return x.reshape(n, c, h, w)


def corrupt(task: str, clean: torch.Tensor, levels: Sequence[int] | int, rng: np.random.Generator,
            fill: Sequence[float] | torch.Tensor | None = None, scale_sizes: bool = True
            ) -> tuple[torch.Tensor, list[np.ndarray]]:
    """Corrupt a batch of clean crops (float N x C x H x W in [0, 1]); sample i at ``levels[i]`` (or one level for
    all). ``fill`` is the per-channel mean colour for holes and removed pixels (default 0.5 grey).

    Returns the corrupted batch and the per-sample parameters (see :func:`sample_params`), in batch order.
    Every random number comes from ``rng``, drawn level by level in a fixed order, so the same generator state
    gives the same batch.
    """
    n, c, h, w = clean.shape
    if h != w:
        raise ValueError(f"crops must be square, got {h}x{w}")
    levels = np.full(n, int(levels)) if np.isscalar(levels) else np.asarray(levels, dtype=np.int64)
    if len(levels) != n:
        raise ValueError(f"{len(levels)} levels for {n} crops")
    colour = torch.full((c,), 0.5) if fill is None else torch.as_tensor(fill, dtype=torch.float32).reshape(-1)
    if len(colour) != c:
        raise ValueError(f"fill has {len(colour)} channels, the crops {c}")
    out = clean.clone()
    params: list[np.ndarray] = [np.zeros(0)] * n
    for level in sorted(set(levels.tolist())):
        idx = np.flatnonzero(levels == level)
        p = sample_params(task, level, len(idx), rng, h, scale_sizes)
        for j, i in enumerate(idx):
            params[i] = np.atleast_1d(p[j])
        sel = torch.from_numpy(idx)
        batch = out[sel]
        if task == "denoise":
            noise = rng.standard_normal(size=batch.shape).astype(np.float32)
            sigma = torch.from_numpy((p / 255.0).astype(np.float32)).reshape(-1, 1, 1, 1)
            batch = (batch + sigma * torch.from_numpy(noise)).clamp(0.0, 1.0)
        elif task == "inpaint":
            sizes = p.astype(np.int64)
            top = rng.integers(0, h - sizes + 1)
            left = rng.integers(0, w - sizes + 1)
            for j, (s, t, lft) in enumerate(zip(sizes, top, left)):
                batch[j, :, t:t + s, lft:lft + s] = colour.reshape(c, 1, 1)
        elif task == "deblur":
            batch = blur(batch, p)
        else:
            # exactly round(p * H * W) pixels per image: the ones with the smallest of H * W uniform draws
            u = rng.random(size=(len(idx), h * w))
            ranks = u.argsort(axis=1).argsort(axis=1)
            mask = torch.from_numpy((ranks < np.round(p * h * w).reshape(-1, 1)).reshape(-1, 1, h, w))
            batch = torch.where(mask, colour.reshape(1, c, 1, 1), batch)
        out[sel] = batch
    return out, params
