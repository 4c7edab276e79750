"""ASAL: Adversarial Sampling for Active Learning (Mayer & Timofte, WACV 2020; arXiv:1808.06671), the vision
plugin's ``asal`` scorer.

Query synthesis without labelling synthetic images: a generative model of the pool proposes images the current
classifier is unsure about, and the oracle labels their nearest REAL pool items. Each scoring round:

1. **Generator.** A small DCGAN (:class:`DCGAN`, Radford et al. 2016) is trained on the pool's images (never the
   labels) once per run and reused every round; ``retrain_every: r`` trains a fresh one (a new seed stream) every r
   rounds instead. Its weights are cached like the task's features (see :mod:`.features`): in
   ``<run_dir>/asal/generator-<key>.npy`` with a ``.json`` beside it (key, shape, checksum), written atomically and
   keyed by the pool's pixels, the GAN settings, the seed and the generator's number, so a resumed run reads the
   generator instead of training it again (``gan.cache_dir`` moves the cache, e.g. to share it between runs).
2. **Uncertain samples.** ``n_samples`` latent codes z ~ N(0, I) (drawn from ``ctx.rng("asal")``) are decoded and
   classified by the current model; the ``k = ctx.budget`` of highest predictive entropy are kept
   (``generation: sample``). ``generation: optimise`` then moves those k codes by ``optimise_steps`` Adam steps up
   the entropy's gradient (through the generator and the classifier; the task's ``image_logits``).
3. **Matching.** The kept images and the pool are put into one feature space (``space``: the task's label-free
   ``features``, SimCLR / PCA / pixels, by default; or the classifier's ``embeddings``) and each kept image, in
   order of decreasing entropy, takes its nearest candidate that no earlier image took (labelled items never
   qualify; where the nearest is taken, the next nearest). The search is faiss's: an exact ``IndexFlatL2``, or
   above ``ivf_above`` indexed items an inverted-file index (``IndexIVFFlat``, ``nlist`` lists, ``nprobe`` of them
   searched; approximate). With ``space: features`` the pool's index is built once and reused every round.
4. **Scores.** As the batch-aware core scorers (BADGE) do, the scores' top-k (ties to the lower position, as
   ``topk`` breaks them) is exactly the matched batch in pick order: pick j of k scores ``k - j``, every other
   candidate 0. So pair ASAL with the ``topk`` selector.

Each round also writes ``<run_dir>/asal/round_<r>.png`` (``plot``): the kept generated images above the real items
they matched, with their entropy and feature distance; and appends a line to ``<run_dir>/asal/cost.jsonl`` with
the round's cost in seconds (GAN training, sampling, latent optimisation, embedding, index build, search), which
``benchmarks/asal.sh`` tabulates.

What the paper does and where this differs. The paper was read for understanding through its abstract and
summaries (its full text could not be retrieved here); points marked UNVERIFIED are recalled, not checked.

- GANs: the paper uses a DCGAN and a WGAN-GP (on MNIST the WGAN-GP's samples matched items of the right class more
  often) and, for CIFAR-10, a residual GAN (UNVERIFIED). Here: a DCGAN only (two transposed-conv blocks, batch
  norm, non-saturating loss, Adam 2e-4, beta1 0.5), small enough to train on a CPU in minutes. Images larger than
  ``gan.max_side`` pixels a side are modelled at a reduced size and resized back; sides are resized up to a multiple
  of 4. A DCGAN of this size models digits and Fashion-MNIST well enough to match on; natural images need a larger
  generator than this one.
- Sample generation: high-entropy samples come from the generator; ``generation: sample`` (the default: many
  draws, keep the most uncertain; gradient-free, so it works with every classifier, the linear probe included) and
  ``generation: optimise`` (gradient ascent on the kept codes; no prior penalty on z, a few small steps) are the
  two readings of the method card; which one the paper's experiments used is UNVERIFIED here.
- Feature space: the paper matches in pixel space and in learnt feature spaces (an auto-encoder's, the GAN
  discriminator's; UNVERIFIED in detail). We match in the task's own label-free ``features`` (PCA or SimCLR;
  ``features: {kind: pixels}`` gives pixel space) or in the classifier's current ``embeddings`` (recomputed each
  round for every candidate, so the sub-linear selection cost is lost).
- Nearest neighbours: the paper's point is a selection cost sub-linear in the pool. Here faiss, exact below
  ``ivf_above`` items (exact search of a batch is seconds even at 10^6 items, ``benchmarks/results/asal_nn.md``),
  an IVF index above; with ``space: features`` the index is built once per run, so a round costs the sampling
  (O(n_samples)) plus the search. Matches are unique (one real item per generated sample, the next nearest where
  the nearest is taken or labelled).
- One generator for the whole run by default, trained in the first round ASAL scores; ``retrain_every`` is an
  extension, and a retrained generator sees the same pool (the labels never reach it) with a new seed.
"""
from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path
from typing import Any, Collection, Literal, Sequence

import faiss
import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import EMBEDDINGS, FEATURES, PROBS, Candidates, Context, Env, ItemId, Task, seed_for
from activelab.recipe import DataPath
from activelab.strategies.uncertainty import entropy
from activelab.torchkit import ItemIndex, build_optimizer, seeded

from .classification import IMAGES
from .features import load_cache, save_cache

CACHE_VERSION = 1        # bump when the GAN's training changes, so old generators are not read as new ones
_BLOCK = 1024            # images decoded / classified per block


# ------------------------------------------------------------------------------------------ configuration
class GANConfig(BaseModel):
    """ASAL's generator: a DCGAN trained on the pool's images (no labels)."""

    model_config = ConfigDict(extra="forbid")

    latent_dim: int = Field(64, ge=1, description="length of the latent code z ~ N(0, I) (DCGAN's paper: 100)")
    width: int = Field(32, ge=1, description="channels of the generator's last hidden block (the first has twice "
                                             "as many); the discriminator mirrors it")
    steps: int = Field(2000, ge=1, description="optimiser steps (one discriminator and one generator update each)")
    batch_size: int = Field(64, ge=2, description="real images per step (and as many generated)")
    lr: float = Field(2e-4, gt=0, description="Adam's learning rate, both networks (DCGAN's 2e-4)")
    beta1: float = Field(0.5, ge=0, lt=1, description="Adam's beta1, both networks (DCGAN's 0.5)")
    max_side: int = Field(64, ge=4, description="images larger than this many pixels a side are modelled at a "
                                                "reduced size and resized back to the pool's size")
    seed: int | None = Field(None, description="seed of the GAN (initialisation, batches, latents); default: the "
                                               "run's seed")
    cache_dir: DataPath | None = Field(None, description="folder of the cached generators; default: "
                                                         "<run folder>/asal")


class ASALConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    gan: GANConfig = Field(default_factory=GANConfig, description="the generative model of the pool")
    retrain_every: int | None = Field(None, ge=1, description="train a fresh generator every this many rounds "
                                                              "(null: one generator for the whole run, reused)")
    n_samples: int = Field(10000, ge=1, description="latent codes drawn per round; the batch-size most uncertain "
                                                   "are kept (at least the batch size are drawn)")
    generation: Literal["sample", "optimise"] = Field(
        "sample", description="sample: keep the most uncertain of n_samples draws; optimise: then move their codes "
                              "up the entropy's gradient (needs a classifier on pixels, not linear_probe)")
    optimise_steps: int = Field(10, ge=1, description="generation: optimise: Adam steps on the kept codes")
    optimise_lr: float = Field(0.05, gt=0, description="generation: optimise: Adam's learning rate on z")
    space: Literal["features", "embeddings"] = Field(
        "features", description="where generated and real images are matched: the task's label-free features "
                                "(fixed: the pool's index is built once) or the classifier's embeddings (per round)")
    index: Literal["auto", "exact", "ivf"] = Field(
        "auto", description="faiss index: exact (IndexFlatL2), ivf (IndexIVFFlat, approximate) or auto: ivf from "
                            "ivf_above indexed items")
    ivf_above: int = Field(1_000_000, ge=1, description="index: auto: use the approximate index from this many "
                                                       "indexed items")
    nlist: int | None = Field(None, ge=1, description="ivf: inverted lists (default: 4 sqrt(N), at most N / 39)")
    nprobe: int = Field(32, ge=1, description="ivf: lists searched per query (more: slower, nearer the exact)")
    plot: bool = Field(True, description="write <run folder>/asal/round_<r>.png: generated samples above the real "
                                         "items they matched")
    plot_max: int = Field(32, ge=1, description="at most this many pairs in a round's picture")


# ------------------------------------------------------------------------------------------ the GAN
def canvas(height: int, width: int, max_side: int) -> tuple[int, int]:
    """The size the GAN works at: the image's, scaled down to fit ``max_side``, each side rounded up to a multiple
    of 4 (the generator doubles its resolution twice)."""
    scale = min(1.0, max_side / max(height, width))
    return (4 * max(1, math.ceil(height * scale / 4)), 4 * max(1, math.ceil(width * scale / 4)))


class Generator(nn.Module):
    """DCGAN's generator, small: z -> (2w, H/4, W/4) -> (w, H/2, W/2) -> (C, H, W), batch norm and ReLU between,
    a sigmoid at the end (images in [0, 1])."""

    def __init__(self, latent_dim: int, channels: int, size: tuple[int, int], width: int):
        super().__init__()
        self.latent_dim, self.h0, self.w0, self.width = latent_dim, size[0] // 4, size[1] // 4, width
        self.project = nn.Sequential(nn.Linear(latent_dim, 2 * width * self.h0 * self.w0, bias=False),
                                     nn.BatchNorm1d(2 * width * self.h0 * self.w0), nn.ReLU())
        self.deconv = nn.Sequential(
            nn.ConvTranspose2d(2 * width, width, 4, 2, 1, bias=False), nn.BatchNorm2d(width), nn.ReLU(),
            nn.ConvTranspose2d(width, channels, 4, 2, 1), nn.Sigmoid())

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return self.deconv(self.project(z).view(len(z), 2 * self.width, self.h0, self.w0))


class Discriminator(nn.Module):
    """DCGAN's discriminator, mirroring the generator: two strided convolutions (LeakyReLU 0.2, batch norm on the
    second), then one logit."""

    def __init__(self, channels: int, size: tuple[int, int], width: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(channels, width, 4, 2, 1), nn.LeakyReLU(0.2),
            nn.Conv2d(width, 2 * width, 4, 2, 1, bias=False), nn.BatchNorm2d(2 * width), nn.LeakyReLU(0.2),
            nn.Flatten(), nn.Linear(2 * width * (size[0] // 4) * (size[1] // 4), 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[:, 0]


class DCGAN:
    """A trained generator and what it needs to make pool-shaped images: ``sample(z)`` -> N x C x H x W in [0, 1]."""

    def __init__(self, generator: Generator, image_size: tuple[int, int], device: torch.device):
        self.generator = generator.to(device).eval()
        for p in self.generator.parameters():
            p.requires_grad_(False)
        self.image_size, self.device = image_size, device

    @property
    def latent_dim(self) -> int:
        return self.generator.latent_dim

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Images of the codes ``z`` at the pool's size (differentiable in ``z``)."""
        x = self.generator(z.to(self.device))
        if tuple(x.shape[-2:]) != tuple(self.image_size):
            x = F.interpolate(x, size=self.image_size, mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > self.image_size[-1]).clamp(0.0, 1.0)
        return x

    def sample(self, z: torch.Tensor) -> torch.Tensor:
        """:meth:`decode` in blocks, under inference mode, on the CPU."""
        with torch.inference_mode():
            return torch.cat([self.decode(z[a:a + _BLOCK]).cpu() for a in range(0, len(z), _BLOCK)])


def train_dcgan(images: torch.Tensor, cfg: GANConfig, seed: int, device: torch.device,
                progress: bool = False) -> Generator:
    """Train a DCGAN on ``images`` (N x C x H x W in [0, 1]) for ``cfg.steps`` steps and return its generator.

    Each step: a batch of real images (an epoch-wise permutation) and as many generated; the discriminator takes one
    Adam step on the binary cross-entropy of real (1) against generated (0), then the generator one step on the
    non-saturating loss (generated labelled 1). Everything random comes from generators seeded by ``seed``, so the
    same images and settings give the same generator, bit for bit, on the CPU."""
    n, channels = len(images), images.shape[1]
    size = canvas(images.shape[-2], images.shape[-1], cfg.max_side)
    if tuple(images.shape[-2:]) != size:
        images = torch.cat([F.interpolate(images[a:a + _BLOCK], size=size, mode="bilinear", align_corners=False,
                                          antialias=images.shape[-1] > size[1]).clamp(0.0, 1.0)
                            for a in range(0, n, _BLOCK)])
    with seeded(seed_for(seed, "asal-gan-init")):
        gen, disc = Generator(cfg.latent_dim, channels, size, cfg.width), Discriminator(channels, size, cfg.width)
    gen, disc = gen.to(device), disc.to(device)
    betas = (cfg.beta1, 0.999)
    opt_g = build_optimizer(gen.parameters(), "adam", lr=cfg.lr, betas=betas)
    opt_d = build_optimizer(disc.parameters(), "adam", lr=cfg.lr, betas=betas)
    draws = torch.Generator().manual_seed(seed_for(seed, "asal-gan-batches"))
    bs = min(cfg.batch_size, n)
    ones, zeros = torch.ones(bs, device=device), torch.zeros(bs, device=device)
    gen.train()
    disc.train()
    order, cursor = torch.randperm(n, generator=draws), 0
    with torch.inference_mode(False), torch.enable_grad(), seeded(seed_for(seed, "asal-gan-fit"), device), \
            tqdm(total=cfg.steps, desc="asal gan", unit="step", disable=not progress, leave=False) as bar:
        for _ in range(cfg.steps):
            if cursor + bs > n:
                order, cursor = torch.randperm(n, generator=draws), 0
            real = images[order[cursor:cursor + bs]].to(device)
            cursor += bs
            z = torch.randn(bs, cfg.latent_dim, generator=draws).to(device)
            fake = gen(z)
            loss_d = F.binary_cross_entropy_with_logits(disc(real), ones) + \
                F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros)
            opt_d.zero_grad(set_to_none=True)
            loss_d.backward()
            opt_d.step()
            loss_g = F.binary_cross_entropy_with_logits(disc(fake), ones)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            bar.update(1)
    return gen.eval()


def flat_state(module: nn.Module) -> np.ndarray:
    """The module's float32 tensors (parameters and batch-norm statistics, in ``state_dict`` order) as one vector;
    integer counters (``num_batches_tracked``) are left out."""
    parts = [v.detach().cpu().reshape(-1) for v in module.state_dict().values() if v.dtype == torch.float32]
    return torch.cat(parts).numpy() if parts else np.zeros(0, np.float32)


def load_flat_state(module: nn.Module, flat: np.ndarray) -> nn.Module:
    """The inverse of :func:`flat_state` (counters keep their values)."""
    state, start = module.state_dict(), 0
    for name, value in state.items():
        if value.dtype == torch.float32:
            state[name] = torch.from_numpy(np.array(flat[start:start + value.numel()])).reshape(value.shape)
            start += value.numel()
    if start != len(flat):
        raise ValueError(f"{len(flat)} numbers for a generator of {start}")
    module.load_state_dict(state)
    return module


# ------------------------------------------------------------------------------------------ nearest neighbours
def default_nlist(n: int) -> int:
    """4 sqrt(n) inverted lists, at most n / 39 (faiss wants 39 training points per list), at least 1."""
    return max(1, min(int(4 * math.sqrt(n)), n // 39))


def build_index(points: np.ndarray, kind: str = "exact", nlist: int | None = None, nprobe: int = 32,
                seed: int = 0) -> Any:
    """A faiss index over ``points`` (float32 rows; row i is id i): ``exact`` = ``IndexFlatL2``; ``ivf`` =
    ``IndexIVFFlat`` with ``nlist`` lists (default :func:`default_nlist`), its k-means trained on at most
    ``40 * nlist`` rows drawn with ``seed`` (and faiss's own clustering seeded by it), searching ``nprobe`` lists."""
    points = np.ascontiguousarray(points, dtype=np.float32)
    n, d = points.shape
    if kind == "exact" or n < 39:
        index = faiss.IndexFlatL2(d)
        index.add(points)
        return index
    if kind != "ivf":
        raise ValueError(f"unknown index kind {kind!r}; available: exact, ivf")
    nlist = min(nlist or default_nlist(n), n)
    quantizer = faiss.IndexFlatL2(d)
    index = faiss.IndexIVFFlat(quantizer, d, nlist, faiss.METRIC_L2)
    index.cp.seed = int(seed % 2**31)
    rng = np.random.default_rng(seed)
    train = points if n <= 40 * nlist else points[np.sort(rng.choice(n, size=40 * nlist, replace=False))]
    index.train(train)
    index.add(points)
    index.nprobe = min(nprobe, nlist)
    return index


def match_nearest(index: Any, queries: np.ndarray, allowed: np.ndarray, start: int = 32) -> np.ndarray:
    """For each query, in order, the nearest indexed row (by ``index.search``) that is ``allowed`` and that no
    earlier query took: int64 row per query, -1 once nothing allowed is left.

    The queries are searched together for ``start`` neighbours each; a query whose hits are all taken or not allowed
    is searched again alone for twice as many, and so on until the index is exhausted. With an exact index the
    result is the greedy unique nearest-neighbour assignment (a query's match is its true nearest allowed neighbour
    among the rows the earlier queries left); with an approximate one, the nearest its search finds."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    n = index.ntotal
    free = np.asarray(allowed, dtype=bool).copy()
    if len(free) != n:
        raise ValueError(f"allowed has {len(free)} entries for an index of {n} rows")
    out = np.full(len(queries), -1, dtype=np.int64)
    if not len(queries) or n == 0:
        return out
    k = min(n, max(1, start))
    _, hits = index.search(queries, k)
    left = int(free.sum())
    for q in range(len(queries)):
        if left == 0:
            break
        row, kk, found = hits[q], k, -1
        while True:
            valid = row[row >= 0]
            ok = valid[free[valid]]
            if len(ok):
                found = int(ok[0])
                break
            if kk >= n:
                break
            kk = min(n, 2 * kk)
            row = index.search(queries[q:q + 1], kk)[1][0]
        if found >= 0:
            out[q] = found
            free[found] = False
            left -= 1
    return out


# ------------------------------------------------------------------------------------------ the scorer
def _images_digest(images: torch.Tensor) -> str:
    array = np.ascontiguousarray(images.numpy(), dtype="<f4")
    digest = hashlib.sha256(json.dumps(list(array.shape)).encode())
    digest.update(array.data)
    return digest.hexdigest()


class ASAL:
    """ASAL (Mayer & Timofte, WACV 2020): label the real pool items nearest to generated high-entropy images.

    Needs a task that classifies images outside its pool (the capability ``images``: ``pool_images``,
    ``predict_images`` and, for ``generation: optimise``, ``image_logits``; the vision ``classification`` task has
    them) and the output of the matching ``space``. See the module for the method, the files it writes, and its
    deviations from the paper. Defaults: one DCGAN per run (2,000 steps), 10,000 draws per round, filtering,
    matching in the task's features, exact faiss search below 10^6 items.
    """

    Config = ASALConfig

    def __init__(self, config: ASALConfig | None = None, env: Env | None = None):
        self.config = config or ASALConfig()
        self.env = env or Env()
        self.space = FEATURES if self.config.space == "features" else EMBEDDINGS
        self.needs: Collection[str] = frozenset({PROBS, IMAGES, self.space})
        self._gan: tuple[str, DCGAN] | None = None       # (cache key, generator) of the current generation
        self._pool_index: tuple[Any, Any] | None = None  # (task, faiss index over every pool item's features)
        self._items: tuple[Any, ItemIndex] | None = None
        self._digest: tuple[Any, str] | None = None
        self.last: dict[str, Any] = {}                   # the last call's batch, costs and pairs (tests, plots)

    # ---------------------------------------------------------------------------- generator
    def _check_task(self, task: Task) -> None:
        missing = [name for name in ("pool_images", "predict_images") if not callable(getattr(task, name, None))]
        if missing:
            raise UserError(f"scorer asal needs a task that classifies generated images (the vision classification "
                            f"task): {type(task).__name__} has no {' or '.join(missing)}")

    def generation(self, round: int) -> int:
        """The generator used in ``round``: 0 for the whole run, or a new one every ``retrain_every`` rounds."""
        every = self.config.retrain_every
        return 0 if every is None else max(0, round - 1) // every

    def cache_key(self, task: Task, generation: int) -> str:
        """sha256 (hex) of what a generator depends on: the pool's pixels, the GAN settings, the seed and its
        number."""
        if self._digest is None or self._digest[0] is not task:
            self._digest = (task, _images_digest(task.pool_images()))
        cfg = self.config.gan
        blob = json.dumps({"version": CACHE_VERSION, "pixels": self._digest[1], "generation": generation,
                           "gan": cfg.model_dump(mode="json", exclude={"cache_dir", "seed"}),
                           "seed": self._gan_seed()}, sort_keys=True)
        return hashlib.sha256(blob.encode()).hexdigest()

    def _gan_seed(self) -> int:
        return self.config.gan.seed if self.config.gan.seed is not None else self.env.seed

    def _cache_dir(self, ctx: Context) -> Path | None:
        if self.config.gan.cache_dir is not None:
            return Path(self.config.gan.cache_dir)
        run_dir = self.env.run_dir if self.env.run_dir is not None else ctx.run_dir
        return Path(run_dir) / "asal" if run_dir is not None else None

    def generator(self, task: Task, ctx: Context) -> tuple[DCGAN, float]:
        """This round's generator: kept in memory, else read from the cache, else trained (and cached); with the
        seconds spent training it (0 when reused)."""
        g = self.generation(ctx.round)
        key = self.cache_key(task, g)
        if self._gan is not None and self._gan[0] == key:
            return self._gan[1], 0.0
        images = task.pool_images()
        cfg = self.config.gan
        channels, size = images.shape[1], canvas(images.shape[-2], images.shape[-1], cfg.max_side)
        device = torch.device(self.env.device)
        with seeded(0):
            shell = Generator(cfg.latent_dim, channels, size, cfg.width)
        name, folder = f"generator-{key[:24]}", self._cache_dir(ctx)
        began, seconds = time.perf_counter(), 0.0
        cached = None if folder is None else load_cache(folder, name, key, (len(flat_state(shell)),))
        if cached is not None:
            generator = load_flat_state(shell, cached)
        else:
            generator = train_dcgan(images, cfg, seed_for(self._gan_seed(), "asal", g), device,
                                    progress=self.env.progress and ctx.progress)
            seconds = time.perf_counter() - began
            if folder is not None:
                meta = {"part": "asal generator", "generation": g, "seed": self._gan_seed(),
                        "seconds": round(seconds, 3), "settings": cfg.model_dump(mode="json", exclude={"cache_dir"}),
                        "canvas": list(size)}
                try:
                    save_cache(folder, name, key, flat_state(generator.cpu()), meta)
                except OSError as exc:      # the generator is right, only not kept
                    raise UserError(f"gan.cache_dir: cannot write the ASAL generator to {folder} "
                                    f"({exc.strerror or exc})") from None
        gan = DCGAN(generator, tuple(images.shape[-2:]), device)
        self._gan = (key, gan)
        return gan, seconds

    # ---------------------------------------------------------------------------- scoring
    def _rows(self, task: Task, candidates: Sequence[ItemId]) -> np.ndarray:
        """The candidates' positions in ``task.pool_ids()``."""
        if self._items is None or self._items[0] is not task:
            self._items = (task, ItemIndex(task.pool_ids()))
        return self._items[1].positions(candidates)

    def _index_kind(self, n: int) -> str:
        if self.config.index != "auto":
            return self.config.index
        return "ivf" if n >= self.config.ivf_above else "exact"

    def _index(self, points: np.ndarray, seed: int) -> Any:
        cfg = self.config
        return build_index(points, self._index_kind(len(points)), cfg.nlist, cfg.nprobe, seed)

    def _uncertain(self, task: Task, gan: DCGAN, k: int, ctx: Context, cost: dict[str, float]
                   ) -> tuple[torch.Tensor, np.ndarray]:
        """The k generated images of highest entropy (in that order) and their entropies."""
        cfg = self.config
        began = time.perf_counter()
        n = max(cfg.n_samples, k)
        z = torch.from_numpy(ctx.rng("asal").standard_normal((n, gan.latent_dim)).astype(np.float32))
        images = gan.sample(z)
        ent = entropy(task.predict_images(images, {PROBS})[PROBS])
        keep = np.argsort(-ent, kind="stable")[:k]
        cost["sample_seconds"] = time.perf_counter() - began
        if cfg.generation == "optimise":
            began = time.perf_counter()
            codes = self._optimise(task, gan, z[torch.from_numpy(keep)], ctx)
            images = gan.sample(codes)
            ent = entropy(task.predict_images(images, {PROBS})[PROBS])
            order = np.argsort(-ent, kind="stable")
            cost["optimise_seconds"] = time.perf_counter() - began
            return images[torch.from_numpy(order)], ent[order]
        return images[torch.from_numpy(keep)], ent[keep]

    def _optimise(self, task: Task, gan: DCGAN, z: torch.Tensor, ctx: Context) -> torch.Tensor:
        """``optimise_steps`` Adam steps on the codes ``z`` up the sum of their images' entropies (each code's
        gradient is its own: the generator and the classifier run in eval mode)."""
        logits_of = getattr(task, "image_logits", None)
        if not callable(logits_of):
            raise UserError(f"scorer asal: generation: optimise needs the task's image_logits; "
                            f"{type(task).__name__} has none (use generation: sample)")
        with torch.inference_mode(False), torch.enable_grad():
            codes = z.clone().to(gan.device).requires_grad_(True)
            opt = torch.optim.Adam([codes], lr=self.config.optimise_lr)
            for _ in range(self.config.optimise_steps):
                grads = []
                for a in range(0, len(codes), _BLOCK):
                    part = codes[a:a + _BLOCK]
                    logp = torch.log_softmax(logits_of(gan.decode(part)).float(), dim=-1)
                    ent = -(logp.exp() * logp).sum()
                    grads.append(torch.autograd.grad(-ent, part)[0])     # ascent: minimise -H
                codes.grad = torch.cat(grads)
                opt.step()
        return codes.detach().cpu()

    def _embed(self, task: Task, rows: np.ndarray, cost: dict[str, float]) -> tuple[Any, np.ndarray]:
        """(index, the pool row of each indexed row) for matching among the candidates at pool ``rows``: the pool's
        features index (built once, reused every round) when the candidates are at least half the pool, else an
        index of the candidates alone (a subsampled pool, or ``space: embeddings``, which change every round)."""
        from activelab.strategies.batch import gather

        began = time.perf_counter()
        pool_ids = task.pool_ids()
        seed = seed_for(self.env.seed, "asal-index")
        if self.space == FEATURES and 2 * len(rows) >= len(pool_ids):
            if self._pool_index is None or self._pool_index[0] is not task:
                points = gather(task, Candidates(pool_ids), (FEATURES,))[FEATURES]
                self._pool_index = (task, self._index(points, seed))
                cost["index_seconds"] = time.perf_counter() - began
            return self._pool_index[1], np.arange(len(pool_ids), dtype=np.int64)
        points = gather(task, Candidates(pool_ids, rows), (self.space,))[self.space]
        index = self._index(points, seed)
        cost["index_seconds"] = time.perf_counter() - began
        return index, rows

    def score(self, task: Task, candidates: Sequence[ItemId], ctx: Context) -> np.ndarray:
        n = len(candidates)
        if n == 0:
            return np.zeros(0)
        k = min(max(ctx.budget, 0), n)
        if k == 0:
            return np.zeros(n)
        self._check_task(task)
        cost: dict[str, float] = {"gan_seconds": 0.0, "sample_seconds": 0.0, "optimise_seconds": 0.0,
                                  "embed_seconds": 0.0, "index_seconds": 0.0, "search_seconds": 0.0}
        gan, cost["gan_seconds"] = self.generator(task, ctx)
        images, ent = self._uncertain(task, gan, k, ctx, cost)
        rows = self._rows(task, candidates)
        items = self._items[1]
        position = np.full(len(items), -1, dtype=np.int64)      # pool row -> candidate position
        position[rows] = np.arange(n)
        labelled = np.fromiter((items.position(i) for i in ctx.labels if i in items), dtype=np.int64)
        position[labelled] = -1                                 # never a labelled item, whatever the candidates say
        index, index_rows = self._embed(task, rows, cost)
        began = time.perf_counter()
        queries = task.predict_images(images, {self.space})[self.space]
        cost["embed_seconds"] = time.perf_counter() - began
        began = time.perf_counter()
        matched = match_nearest(index, queries, position[index_rows] >= 0)
        cost["search_seconds"] = time.perf_counter() - began
        hit = matched >= 0
        picks = position[index_rows[matched[hit]]]
        scores = np.zeros(n)
        scores[picks] = len(picks) - np.arange(len(picks), dtype=np.float64)
        self.last = {"picks": picks, "matched": index_rows[matched[hit]], "queries": queries, "entropy": ent,
                     "images": images, "cost": cost, "generation": self.generation(ctx.round)}
        self._record(task, ctx, candidates, images[torch.from_numpy(np.flatnonzero(hit))], ent[hit], picks,
                     queries[hit], index, cost)
        return scores

    # ---------------------------------------------------------------------------- records
    def _record(self, task: Task, ctx: Context, candidates: Sequence[ItemId], images: torch.Tensor,
                ent: np.ndarray, picks: np.ndarray, queries: np.ndarray, index: Any, cost: dict[str, float]) -> None:
        """Append the round's costs to ``<run_dir>/asal/cost.jsonl`` and draw its pairs (with a run folder)."""
        run_dir = ctx.run_dir if ctx.run_dir is not None else self.env.run_dir
        if run_dir is None:
            return
        folder = Path(run_dir) / "asal"
        folder.mkdir(parents=True, exist_ok=True)
        row = {"round": ctx.round, "generation": self.generation(ctx.round), "n_samples": max(self.config.n_samples,
               len(picks)), "k": int(len(picks)), "index": type(index).__name__,
               "generation_mode": self.config.generation, **{k: round(v, 4) for k, v in cost.items()}}
        with open(folder / "cost.jsonl", "a") as fh:
            fh.write(json.dumps(row) + "\n")
        if self.config.plot and len(picks):
            from activelab.strategies.batch import gather

            chosen = [candidates[int(i)] for i in picks]
            real = task.pool_images()[torch.from_numpy(self._rows(task, chosen))]
            distance = np.linalg.norm(queries - gather(task, chosen, (self.space,))[self.space], axis=1)
            plot_pairs(images, real, ent, distance, folder / f"round_{ctx.round}.png",
                       f"ASAL round {ctx.round}: generated (top, entropy) and the real item matched (below, distance)",
                       self.config.plot_max)


def plot_pairs(generated: torch.Tensor, real: torch.Tensor, ent: np.ndarray, distance: np.ndarray | None,
               path: Path, title: str, at_most: int = 32) -> Path:
    """A PNG of up to ``at_most`` pairs, 16 per row: each generated image above its matched real image (grey or
    RGB, in [0, 1]), written atomically (matplotlib's Agg canvas; pyplot's state is not touched)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    m = min(len(generated), at_most)
    cols = min(m, 16)
    bands = max(1, math.ceil(m / 16))
    fig = Figure(figsize=(0.9 * cols + 0.4, 2.0 * bands + 0.6))
    FigureCanvasAgg(fig)
    axes = fig.subplots(2 * bands, cols, squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for j in range(m):
        band, col = divmod(j, 16)
        for r, (image, note) in enumerate(((generated[j], f"{ent[j]:.2f}"),
                                           (real[j], "" if distance is None else f"{distance[j]:.2f}"))):
            ax = axes[2 * band + r, col]
            pixels = image.numpy()
            if pixels.shape[0] == 1:
                ax.imshow(pixels[0], cmap="gray", vmin=0.0, vmax=1.0)
            else:
                ax.imshow(np.clip(pixels.transpose(1, 2, 0), 0.0, 1.0))
            ax.set_title(note, fontsize=6, pad=1)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    tmp.replace(path)
    return path
