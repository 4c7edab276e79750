"""Object detection with MI-AOD (Yuan et al., CVPR 2021): the task the vision plugin offers as ``detection``.

Data are COCO files (:mod:`.data`); the detector is a RetinaNet-style one-stage detector built from a
:class:`~.adapter.TorchvisionAdapter` (backbone + FPN + anchors) and the MI-AOD head (:mod:`.miaod`: two adversarial
classifiers f1, f2, a box regressor and a MIL branch).

Each :meth:`DetectionTask.fit` rebuilds the detector from scratch (as the paper does every cycle), seeded by
(seed, round), and runs the schedule of ``schedule``:

* ``miaod: true`` (the card): ``label_epochs`` of label-set training, then ``cycles`` x [``min_epochs`` of
  re-weighting + minimising the f1/f2 discrepancy on unlabelled images, ``max_epochs`` of maximising it,
  ``label_epochs`` of label-set training];
* ``miaod: false`` ("the same RetinaNet without the MI-AOD stages", the baselines): label-set training only, for as
  many label-set epochs as the MI-AOD schedule has in all (``label_epochs * (1 + cycles)``), so both get the same
  supervised training.

An epoch is one pass over the labelled images in batches of ``batch_size``, but at least ``schedule.min_steps``
optimiser steps (a 30-image labelled set gives 4 batches; three such epochs teach a detector trained from scratch
nothing). The min/max stages pair every labelled batch with an unlabelled batch of ``unlabelled_batch_size``
drawn from a seeded permutation of the unlabelled pool (pool minus labelled), cycling through it. With
``schedule.last_epoch_lr < 1`` the last epoch of every label-set stage runs at that fraction of ``lr`` (the official
config's step down after epoch 2 of 3; the demo uses 0.1).

Before the rebuild, when the run has a folder and a model was fitted before, :meth:`fit` draws the images labelled
since the previous fit (this round's query) with the current model's boxes, the true boxes and the model's MI-AOD
score: ``selections/round_XX.png``.

Image sizes: with ``image_size`` every image is resized so that its longer side is ``image_size`` (boxes scaled
alike) and padded (bottom and right, with the mean colour) to an ``image_size`` x ``image_size`` square, so every
image has the same anchors and a score never depends on which images share its batch. Without it images keep
their size and a batch is padded to its largest image. Sides are rounded up to a multiple of the backbone's
coarsest stride (16 for ``tiny``, 128 for the ResNet FPNs' P7). Predicted boxes are mapped back to the pixels of
the original file, the unit of labels, ``describe`` and the evaluation.

Outputs of :meth:`predict` (per image, for the scorers in :mod:`.scorers`): ``miaod_uncertainty`` (mean of the
``top_k`` largest per-anchor discrepancies ``mean_c (s(f1) - s(f2))^2``, as the official code),
``miaod_uncertainty_mil`` (the same with the MIL instance weights applied, as the paper's text), and
``anchor_entropy_mean`` / ``anchor_entropy_max`` (the binary entropy of the averaged classifiers' scores per anchor,
reduced over anchors: the plain uncertainty baseline).

All randomness of a fit (initialisation, shuffling, flips, unlabelled batches) is drawn from generators seeded by
(seed, round), inside :func:`activelab.torchkit.seeded`, so the same labels give bit-identical weights on the CPU.
"""
from __future__ import annotations

import contextlib
import math
import pickle
import time
from pathlib import Path
from typing import Any, Collection, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from tqdm.auto import tqdm

from activelab.errors import UserError
from activelab.protocol import MC, Context, Env, ItemId, seed_for
from activelab.recipe import DataPath
from activelab.torchkit import ItemIndex, build_optimizer, check, checkpoint, restore, seeded

from ..backbones import require_file
from . import miaod
from .adapter import WEIGHTS_FIELD, TorchvisionAdapter
from .data import DetectionData, DetectionDataConfig, DetectionImage, fingerprint, load_detection_data, load_image

MIAOD_UNCERTAINTY = "miaod_uncertainty"            # (B,) mean of the top-k anchor discrepancies (official code)
MIAOD_UNCERTAINTY_MIL = "miaod_uncertainty_mil"    # (B,) the same, weighted by the MIL instance weights (paper)
ANCHOR_ENTROPY_MEAN = "anchor_entropy_mean"        # (B,) mean over anchors of the per-anchor entropy
ANCHOR_ENTROPY_MAX = "anchor_entropy_max"          # (B,) max over anchors of the per-anchor entropy
OUTPUTS = frozenset({MIAOD_UNCERTAINTY, MIAOD_UNCERTAINTY_MIL, ANCHOR_ENTROPY_MEAN, ANCHOR_ENTROPY_MAX})

MEAN = (0.485, 0.456, 0.406)      # ImageNet statistics: what a ResNet's weights_path expects; harmless otherwise
STD = (0.229, 0.224, 0.225)
STRIDE = {"tiny": 16, "resnet18": 128, "resnet50": 128}   # coarsest feature stride: image sides a multiple of it
BN_STRIDE = {"tiny": 16, "resnet18": 32, "resnet50": 32}   # stride of the coarsest stage with batch norm
CACHE_BYTES = 2 << 30             # keep decoded images in memory when they take less than this
BOX_TOLERANCE = 1.0               # a labelled box may stick out of its image by this many pixels (then clipped)


class ScheduleConfig(BaseModel):
    """Training per fit. Defaults are the card's (3 label-set epochs, then 2 x [min 1, max 1, label-set 3])."""

    model_config = ConfigDict(extra="forbid")

    label_epochs: int = Field(3, ge=1)
    cycles: int = Field(2, ge=0)
    min_epochs: int = Field(1, ge=0)
    max_epochs: int = Field(1, ge=0)
    min_steps: int = Field(0, ge=0)   # an epoch is at least this many optimiser steps (tiny labelled sets)
    # The last epoch of every label-set stage runs at lr x last_epoch_lr (the official config steps the lr down
    # 10x after epoch 2 of 3); 1 = a constant lr.
    last_epoch_lr: float = Field(1.0, gt=0, le=1)


class DetectionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    data: DetectionDataConfig
    backbone: Literal["tiny", "resnet18", "resnet50"] = "tiny"
    # torchvision's RetinaNet pieces (default), or mmdet's (optional extra: mmdet 3.x + mmcv 2.1, see README;
    # resnet18/resnet50 only). The MI-AOD head, losses and scores are the same code either way.
    adapter: Literal["torchvision", "mmdet"] = "torchvision"
    channels: int = Field(64, ge=8)           # FPN channels (RetinaNet: 256)
    anchor_sizes: list[float] | None = None   # one base size per FPN level (default: the adapter's)
    weights_path: DataPath | None = None      # a local torchvision ResNet state dict (nothing is downloaded)
    # The card's head is 4 x (3x3 conv, 256); the CPU demo uses 2 x 64 (the recipes set 4 x 256 for VOC).
    head_convs: int = Field(2, ge=0)
    head_width: int = Field(64, ge=8)
    image_size: int | None = Field(None, ge=16)   # resize: longer side = this, pad to a square (None: as is)
    miaod: bool = True                        # false: label-set training only (the same detector, no MI-AOD stages)
    schedule: ScheduleConfig = Field(default_factory=ScheduleConfig)
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = Field(1e-3, gt=0)             # the card: SGD lr 1e-3, momentum 0.9, weight decay 1e-4
    momentum: float = Field(0.9, ge=0, lt=1)  # sgd only
    weight_decay: float = Field(1e-4, ge=0)
    batch_size: int = Field(8, ge=1)
    unlabelled_batch_size: int = Field(8, ge=1)
    lam: float = Field(0.5, ge=0)             # lambda: weight of the discrepancy losses
    top_k: int = Field(10000, ge=1)           # anchors averaged per image score (clipped to the anchor count)
    score_threshold: float = Field(0.05, ge=0, le=1)   # detections kept for the evaluation
    nms_iou: float = Field(0.5, gt=0, le=1)
    max_detections: int = Field(100, ge=1)
    suggest_threshold: float = Field(0.5, ge=0, le=1)  # detections offered to people as suggested boxes
    eval_batch_size: int = Field(64, ge=1)
    hflip: bool = False                       # random horizontal flips while training
    cache_images: bool | None = None          # keep decoded images in memory (None: when they fit in 2 GiB)



@contextlib.contextmanager
def _scaled_lr(optimizer: torch.optim.Optimizer, factor: float) -> Iterator[None]:
    """The optimiser's learning rates times ``factor`` inside the block."""
    saved = [group["lr"] for group in optimizer.param_groups]
    for group in optimizer.param_groups:
        group["lr"] = group["lr"] * factor
    try:
        yield
    finally:
        for group, lr in zip(optimizer.param_groups, saved):
            group["lr"] = lr


def _round_up(value: int, multiple: int) -> int:
    return int(math.ceil(value / multiple) * multiple)


class DetectionTask:
    """MI-AOD object detection on COCO-format data (a tiny CNN + FPN for the CPU demo, ResNet-FPN at scale)."""

    Config = DetectionConfig
    outputs = OUTPUTS
    primary_metric = "mAP50"
    metrics = ("mAP", "mAP50", "mAP75", "n_train", "n_unlabelled", "train_seconds",
               *(f"{stage}_{part}" for stage in ("label", "min", "max")
                 for part in ("det", "det_cls", "det_box", "mil", "mil_unlabelled", "dis", "loss")))
    query_type = "pool"

    def __init__(self, config: DetectionConfig, env: Env):
        self.cfg = config
        self.env = env
        self.device = torch.device(env.device)
        if config.weights_path is not None:     # before the data loads: the same errors as classification's
            require_file(config.weights_path, WEIGHTS_FIELD, f"torchvision {config.backbone}"
                         if config.backbone.startswith("resnet") else "torchvision ResNet")
        data = load_detection_data(config.data, env.seed)
        self.classes = list(data.classes)
        self.category_ids = list(data.category_ids)
        self.pool, self.test = data.pool, data.test
        self.items = ItemIndex(image.id for image in self.pool)
        self._class_index = {name: i for i, name in enumerate(self.classes)}
        self._stride = STRIDE[config.backbone]
        self._check_sizes()
        self._mean = torch.tensor(MEAN).view(3, 1, 1)
        self._std = torch.tensor(STD).view(3, 1, 1)
        self._cache: dict[tuple[str, int], torch.Tensor] | None = {} if self._should_cache() else None
        self.model = self._new_model(seed_for(env.seed, "detection-init"))
        self.optimizer = self._new_optimizer(self.model)
        self.fitted = False
        self.trained_on: list[ItemId] = []     # the labelled ids of the last fit (for the selection pictures)
        self.mean_boxes = 1.0                  # boxes per labelled image at the last fit (the expected cost)

    # ------------------------------------------------------------------------------------------ building
    def _check_sizes(self) -> None:
        """Batch norm in training needs more than one value per channel: an image whose padded batch makes a
        single cell at the coarsest batch-normalised stage would crash the first fit on a batch of one, after
        people labelled. Refuse it at load, naming the image. (Batches are padded to multiples of the coarsest
        feature stride, or to ``image_size`` squares.)"""
        if self.cfg.weights_path is not None or self.cfg.adapter != "torchvision":
            return  # pretrained backbones use frozen batch norm; mmdet sizes its own inputs
        limit, stride = BN_STRIDE.get(self.cfg.backbone, 0), self._stride
        if not limit:
            return
        for image in (*self.pool, *self.test):
            if self.cfg.image_size is not None:
                w = h = self.cfg.image_size
            else:
                w, h = image.width, image.height
            padded_w, padded_h = math.ceil(w / stride) * stride, math.ceil(h / stride) * stride
            cells = math.ceil(padded_w / limit) * math.ceil(padded_h / limit)
            if cells <= 1:
                raise UserError(f"task.params.data: image {image.path} is {image.width}x{image.height} pixels, too "
                                f"small for backbone '{self.cfg.backbone}' (one side must exceed {limit} px); set "
                                f"task.params.image_size to resize the images")

    def _should_cache(self) -> bool:
        if self.cfg.cache_images is not None:
            return self.cfg.cache_images
        total = 0
        for image in (*self.pool, *self.test):
            w, h = image.width, image.height
            if self.cfg.image_size is not None:
                s = self.cfg.image_size / max(w, h)
                w, h = w * s, h * s
            total += 3 * 4 * w * h
        return total < CACHE_BYTES

    def _new_model(self, seed: int) -> miaod.MIAODDetector:
        cfg = self.cfg
        with seeded(seed):
            try:
                adapter_cls = TorchvisionAdapter
                if cfg.adapter == "mmdet":
                    from .mmdet_adapter import MMDetAdapter as adapter_cls
                adapter = adapter_cls(len(self.classes), backbone=cfg.backbone, channels=cfg.channels,
                                      anchor_sizes=cfg.anchor_sizes, weights_path=cfg.weights_path)
            except UserError:
                raise                    # the weights file's errors name their field already
            except (ValueError, OSError, RuntimeError, pickle.UnpicklingError) as exc:
                field = "anchor_sizes" if "anchor_sizes" in str(exc) else "weights_path" if cfg.weights_path \
                    else "backbone"
                raise UserError(f"task.params.{field}: {exc}".splitlines()[0]) from None
            model = miaod.MIAODDetector(adapter, convs=cfg.head_convs, width=cfg.head_width)
        return model.to(self.device).eval()

    def _new_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        return build_optimizer(model.parameters(), self.cfg.optimizer, lr=self.cfg.lr,
                               weight_decay=self.cfg.weight_decay, momentum=self.cfg.momentum)

    # ------------------------------------------------------------------------------------------ images
    def _scale(self, image: DetectionImage) -> float:
        """Resize factor from the file's pixels to the network's."""
        if self.cfg.image_size is None:
            return 1.0
        return self.cfg.image_size / max(image.width, image.height)

    def _pixels(self, image: DetectionImage, split: int) -> torch.Tensor:
        """The image (3, h, w) in [0, 1], resized; cached when the config allows."""
        key = (image.id, split)
        if self._cache is not None and key in self._cache:
            return self._cache[key]
        x = load_image(image)
        s = self._scale(image)
        if s != 1.0:
            size = (max(1, round(image.height * s)), max(1, round(image.width * s)))
            x = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False, antialias=s < 1)[0]
        if self._cache is not None:
            self._cache[key] = x
        return x

    def _batch(self, images: Sequence[DetectionImage], split: int = 0,
               flips: Sequence[bool] | None = None) -> torch.Tensor:
        """Normalised, padded (B, 3, H, W) on the device (see the module docstring for the sizes)."""
        xs = [self._pixels(image, split) for image in images]
        if flips is not None:
            xs = [x.flip(-1) if f else x for x, f in zip(xs, flips)]
        if self.cfg.image_size is not None:
            height = width = self.cfg.image_size
        else:
            height, width = max(x.shape[1] for x in xs), max(x.shape[2] for x in xs)
        height, width = _round_up(height, self._stride), _round_up(width, self._stride)
        out = torch.zeros(len(xs), 3, height, width)
        for i, x in enumerate(xs):
            out[i, :, : x.shape[1], : x.shape[2]] = (x - self._mean) / self._std
        return out.to(self.device)

    def _targets(self, positions: Sequence[int], values: Sequence[tuple[np.ndarray, np.ndarray]],
                 flips: Sequence[bool] | None = None) -> list[dict[str, torch.Tensor]]:
        """Boxes (in network pixels) and class indices per image, from the labels' canonical values."""
        out = []
        for n, (p, (boxes, labels)) in enumerate(zip(positions, values)):
            image = self.pool[p]
            s = self._scale(image)
            b = torch.from_numpy(boxes * s).float().reshape(-1, 4)
            if flips is not None and flips[n] and len(b):
                w = round(image.width * s) if s != 1.0 else image.width
                b = torch.stack([w - b[:, 2], b[:, 1], w - b[:, 0], b[:, 3]], dim=1)
            out.append({"boxes": b.to(self.device), "labels": torch.from_numpy(labels).long().to(self.device)})
        return out

    # ------------------------------------------------------------------------------------------ protocol
    def pool_ids(self) -> Sequence[ItemId]:
        return [image.id for image in self.pool]

    def _arrays(self, value: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray]:
        boxes = np.asarray([b["box"] for b in value], dtype=np.float32).reshape(-1, 4)
        labels = np.asarray([self._class_index[b["label"]] for b in value], dtype=np.int64)
        return boxes, labels

    def fit(self, labels: Mapping[ItemId, Any], ctx: Context) -> Mapping[str, float]:
        if not labels:
            raise ValueError("fit needs at least one label")
        run_dir = ctx.run_dir if ctx.run_dir is not None else self.env.run_dir
        if self.fitted and run_dir is not None:
            self.draw_selection(sorted(set(labels) - set(self.trained_on), key=self.items.position),
                                Path(run_dir) / "selections" / f"round_{ctx.round:02d}.png",
                                title=f"round {ctx.round}: the selection of the round {ctx.round - 1} model")
        ids = sorted(labels, key=self.items.position)
        positions = [self.items.position(i) for i in ids]
        values = [self._arrays(self.check_label(i, labels[i])) for i in ids]
        taken = set(positions)
        unlabelled = [p for p in range(len(self.pool)) if p not in taken]

        self.model = self._new_model(seed_for(ctx.seed, ctx.round, "detection-init"))
        self.optimizer = self._new_optimizer(self.model)
        seed = seed_for(ctx.seed, ctx.round, "detection-fit")
        started = time.perf_counter()
        stats: dict[str, float] = {"n_train": len(ids), "n_unlabelled": len(unlabelled)}
        with seeded(seed, self.device):
            stats.update(self._train(positions, values, unlabelled, seed,
                                     progress=self.env.progress and ctx.progress, desc=f"fit round {ctx.round}"))
        stats["train_seconds"] = round(time.perf_counter() - started, 3)
        self.model.eval()
        self.fitted = True
        self.trained_on = list(ids)
        self.mean_boxes = float(np.mean(self._costs([labels[i] for i in ids])))
        return stats

    def stages(self) -> list[tuple[str, int]]:
        """The fit's schedule: (stage, epochs) in order."""
        s = self.cfg.schedule
        if not self.cfg.miaod:
            return [("label", s.label_epochs * (1 + s.cycles))]
        plan = [("label", s.label_epochs)]
        for _ in range(s.cycles):
            plan += [("min", s.min_epochs), ("max", s.max_epochs), ("label", s.label_epochs)]
        return [(stage, epochs) for stage, epochs in plan if epochs > 0]

    def _train(self, positions: list[int], values: list, unlabelled: list[int], seed: int,
               progress: bool = False, desc: str = "fit") -> dict[str, float]:
        cfg = self.cfg
        gen = torch.Generator().manual_seed(seed)
        n, bs = len(positions), cfg.batch_size
        steps_per_epoch = max(math.ceil(n / bs), cfg.schedule.min_steps)
        plan = self.stages()
        stats: dict[str, float] = {}
        order: list[int] = []
        u_order: list[int] = []

        def labelled_batch() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
            nonlocal order
            if not order:       # a new pass over the labelled set (its last batch may be smaller)
                order = torch.randperm(n, generator=gen).tolist()
            take, order = order[:bs], order[bs:]
            flips = (torch.rand(len(take), generator=gen) < 0.5).tolist() if cfg.hflip else None
            pos = [positions[t] for t in take]
            images = self._batch([self.pool[p] for p in pos], flips=flips)
            return images, self._targets(pos, [values[t] for t in take], flips)

        def unlabelled_batch() -> torch.Tensor | None:
            nonlocal u_order
            if not unlabelled:
                return None
            if not u_order:
                u_order = [unlabelled[i] for i in torch.randperm(len(unlabelled), generator=gen).tolist()]
            take, u_order = u_order[:cfg.unlabelled_batch_size], u_order[cfg.unlabelled_batch_size:]
            flips = (torch.rand(len(take), generator=gen) < 0.5).tolist() if cfg.hflip else None
            return self._batch([self.pool[p] for p in take], flips=flips)

        total = sum(epochs for _, epochs in plan) * steps_per_epoch
        bar = tqdm(total=total, desc=desc, unit="step", disable=not progress, leave=False)
        for stage, epochs in plan:
            uses_unlabelled = stage in ("min", "max") and bool(unlabelled)

            def batches(count: int = epochs * steps_per_epoch):
                for _ in range(count):
                    labelled = labelled_batch()
                    yield labelled, (unlabelled_batch() if uses_unlabelled else None)
                    bar.update(1)

            drop = cfg.schedule.last_epoch_lr
            if stage == "label" and drop != 1.0 and epochs > 1:
                miaod.train_stage(self.model, stage, self.optimizer, batches((epochs - 1) * steps_per_epoch),
                                  lam=cfg.lam)
                with _scaled_lr(self.optimizer, drop):
                    parts = miaod.train_stage(self.model, stage, self.optimizer, batches(steps_per_epoch), lam=cfg.lam)
            else:
                parts = miaod.train_stage(self.model, stage, self.optimizer, batches(), lam=cfg.lam)
            for key, value in parts.items():
                stats[f"{stage}_{key}"] = float(value)
        bar.close()
        return stats

    # ------------------------------------------------------------------------------------------ inference
    def _forward_chunks(self, images: Sequence[DetectionImage],
                        split: int) -> Iterator[tuple[int, int, Any, torch.Tensor]]:
        self.model.eval()
        bs = self.cfg.eval_batch_size
        for start in range(0, len(images), bs):
            chunk = images[start:start + bs]
            with torch.inference_mode():
                x = self._batch(chunk, split)
                yield start, start + len(chunk), self.model(x), x

    def predict(self, ids: Sequence[ItemId], want: Collection[str],
                mc: MC | None = None) -> Iterator[dict[str, np.ndarray]]:
        if mc is not None:
            raise ValueError("the detection task has no MC predictions (MI-AOD's committee is its two classifiers); "
                             "use the miaod or anchor_entropy scorers")
        want = set(want)
        unknown = want - OUTPUTS
        if unknown:
            raise ValueError(f"unknown outputs {sorted(unknown)}; available: {', '.join(sorted(OUTPUTS))}")
        images = [self.pool[p] for p in self.items.positions(ids).tolist()]   # no lookup for Candidates
        return self._predict(images, want)

    def _predict(self, images: list[DetectionImage], want: set[str]) -> Iterator[dict[str, np.ndarray]]:
        for _, _, out, _ in self._forward_chunks(images, 0):
            with torch.inference_mode():
                result = {}
                if MIAOD_UNCERTAINTY in want:
                    result[MIAOD_UNCERTAINTY] = miaod.image_uncertainty(out, self.cfg.top_k, mil=False)
                if MIAOD_UNCERTAINTY_MIL in want:
                    result[MIAOD_UNCERTAINTY_MIL] = miaod.image_uncertainty(out, self.cfg.top_k, mil=True)
                if ANCHOR_ENTROPY_MEAN in want:
                    result[ANCHOR_ENTROPY_MEAN] = miaod.anchor_entropy(out, reduce="mean")
                if ANCHOR_ENTROPY_MAX in want:
                    result[ANCHOR_ENTROPY_MAX] = miaod.anchor_entropy(out, reduce="max")
            yield {k: v.float().cpu().numpy().astype(np.float64) for k, v in result.items()}

    def detections(self, images: Sequence[DetectionImage], split: int = 0) -> list[dict[str, np.ndarray]]:
        """The detector's boxes per image, in pixels of the original files."""
        cfg = self.cfg
        found: list[dict[str, np.ndarray]] = []
        for _, _, out, x in self._forward_chunks(list(images), split):
            with torch.inference_mode():
                dets = miaod.detect(out, self.model.adapter, tuple(x.shape[-2:]), score_threshold=cfg.score_threshold,
                                    nms_iou=cfg.nms_iou, max_detections=cfg.max_detections)
            for image, det in zip(images[len(found):], dets):
                s = self._scale(image)
                boxes = np.asarray(det["boxes"], dtype=np.float64).reshape(-1, 4) / s
                boxes[:, [0, 2]] = boxes[:, [0, 2]].clip(0, image.width)
                boxes[:, [1, 3]] = boxes[:, [1, 3]].clip(0, image.height)
                found.append({"boxes": boxes, "scores": np.asarray(det["scores"], dtype=np.float64).reshape(-1),
                              "labels": np.asarray(det["labels"], dtype=np.int64).reshape(-1)})
        return found

    def evaluate(self) -> Mapping[str, float]:
        from .evaluate import coco_map

        return dict(coco_map(self.test, self.detections(self.test, split=1), self.classes))

    def draw_selection(self, ids: Sequence[ItemId], path: Path, title: str = "") -> Path:
        """A picture of ``ids`` with the current model's boxes (and the true ones) and its MI-AOD score."""
        from .draw import draw_selection

        images = [self.pool[self.items.position(i)] for i in ids]
        scores = None
        if images:
            scores = [float(v) for chunk in self._predict(images, {MIAOD_UNCERTAINTY})
                      for v in chunk[MIAOD_UNCERTAINTY]]
        path.parent.mkdir(parents=True, exist_ok=True)
        return draw_selection(images, self.detections(images), self.classes, path, title=title, scores=scores)

    def data_fingerprint(self) -> str:
        """sha256 of the pool and test data (ids, annotations, image file sizes; see :func:`.data.fingerprint`):
        the core refuses to resume a run whose data changed."""
        return fingerprint(DetectionData(self.classes, self.category_ids, self.pool, self.test))

    # ------------------------------------------------------------------------------------------ labels
    cost_unit = "boxes"

    def label_cost(self, ids: Sequence[ItemId], labels: Sequence[Any] | None = None) -> np.ndarray:
        """Boxes a person draws per image (an image with none counts 1: it still has to be looked at). Before
        asking the number is unknown: the expected cost is the mean over the images of the last fit (1 before any
        fit), the same for every image, so selecting per unit of cost does not change the ranking here."""
        if labels is None:
            return np.full(len(ids), self.mean_boxes)
        return self._costs(labels)

    @staticmethod
    def _costs(labels: Sequence[Any]) -> np.ndarray:
        return np.array([max(1, len(v)) if isinstance(v, (list, tuple)) else 1 for v in labels], dtype=np.float64)

    def true_label(self, item_id: ItemId) -> list[dict[str, Any]]:
        image = self.pool[self.items.position(item_id)]
        return [{"label": self.classes[int(c)], "box": [round(float(v), 2) for v in box]}
                for box, c in zip(image.boxes, image.labels)]

    def _class_name(self, value: Any, n: int) -> str:
        if isinstance(value, str) and value.strip() in self._class_index:
            return value.strip()
        if isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)) \
                and 0 <= int(value) < len(self.classes):
            return self.classes[int(value)]
        shown = ", ".join(self.classes[:20]) + (", ..." if len(self.classes) > 20 else "")
        raise ValueError(f"box {n}: unknown class {value!r} "
                         f"(classes: {shown}; or a class index 0..{len(self.classes) - 1})")

    def check_label(self, item_id: ItemId, value: Any) -> list[dict[str, Any]]:
        """A list of ``{"label": class, "box": [x0, y0, x1, y1]}`` in pixels of the image file (an empty list: no
        objects). Class names or indices; boxes up to 1 px outside the image are clipped, further out refused."""
        image = self.pool[self.items.check(item_id)]
        if not isinstance(value, (list, tuple)):
            raise ValueError(f'a detection label is a list of boxes [{{"label": "<class>", "box": [x0, y0, x1, y1]}}, '
                             f'...] (an empty list: no objects), got {type(value).__name__}')
        out = []
        for n, item in enumerate(value):
            if (not isinstance(item, Mapping) or set(item) - {"label", "box", "score"}
                    or not {"label", "box"} <= set(item)):
                raise ValueError(f'box {n}: expected {{"label": "<class>", "box": [x0, y0, x1, y1]}}, got {item!r}')
            name = self._class_name(item["label"], n)
            box = item["box"]
            if not isinstance(box, (list, tuple)) or len(box) != 4 or not all(
                    isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))
                    for v in box):
                raise ValueError(f"box {n}: 'box' must be 4 numbers [x0, y0, x1, y1], got {box!r}")
            x0, y0, x1, y1 = (float(v) for v in box)
            if not all(math.isfinite(v) for v in (x0, y0, x1, y1)):
                raise ValueError(f"box {n}: non-finite coordinate in {box!r}")
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {n}: {list(box)} needs x1 > x0 and y1 > y0")
            w, h = image.width, image.height
            t = BOX_TOLERANCE
            if x0 < -t or y0 < -t or x1 > w + t or y1 > h + t:
                raise ValueError(f"box {n}: {list(box)} lies outside the {w}x{h} image")
            x0, y0, x1, y1 = (round(v, 2) for v in (max(x0, 0.0), max(y0, 0.0), min(x1, float(w)), min(y1, float(h))))
            if x1 <= x0 or y1 <= y0:
                raise ValueError(f"box {n}: {list(box)} has nothing inside the {w}x{h} image (at 0.01 px)")
            out.append({"label": name, "box": [x0, y0, x1, y1]})
        return out

    def label_schema(self) -> dict[str, Any]:
        return {"type": "rectangles", "classes": list(self.classes)}

    def describe(self, item_id: ItemId) -> Mapping[str, Any]:
        image = self.pool[self.items.position(item_id)]
        return {"image": str(image.path), "width": image.width, "height": image.height}

    def suggest(self, ids: Sequence[ItemId]) -> list[list[dict[str, Any]] | None]:
        """The current model's detections scoring at least ``suggest_threshold``, canonical; None before a fit."""
        if not self.fitted:
            return [None] * len(ids)
        images = [self.pool[self.items.position(i)] for i in ids]
        out = []
        for item, det in zip(ids, self.detections(images)):
            keep = det["scores"] >= self.cfg.suggest_threshold
            boxes = [{"label": self.classes[int(c)], "box": [float(v) for v in box]}
                     for box, c in zip(det["boxes"][keep], det["labels"][keep])
                     if box[2] - box[0] >= 0.02 and box[3] - box[1] >= 0.02]
            out.append(self.check_label(item, boxes))
        return out

    def corrupt_label(self, value: Any, rng: np.random.Generator) -> list[dict[str, Any]]:
        """A plausible annotator's mistake: drop one box, or give one box another class (a label without boxes
        stays as it is)."""
        boxes = [dict(b, box=list(b["box"])) for b in value]
        if not boxes:
            return boxes
        n = int(rng.integers(len(boxes)))
        if len(self.classes) < 2 or rng.random() < 0.5:
            del boxes[n]
        else:
            current = self._class_index.get(boxes[n]["label"], 0)
            other = int(rng.integers(len(self.classes) - 1))
            boxes[n]["label"] = self.classes[other + (other >= current)]
        return boxes

    # ------------------------------------------------------------------------------------------ checkpoints
    def _matches(self) -> dict[str, Any]:
        return {"classes": list(self.classes), "pool_size": len(self.pool)}

    def state_dict(self) -> dict[str, Any]:
        return checkpoint(matches=self._matches(), model=self.model, optimizer=self.optimizer, fitted=self.fitted,
                          trained_on=list(self.trained_on), mean_boxes=self.mean_boxes)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        check(state, self._matches())
        self.model = restore(self._new_model(0), state["model"]).eval()
        self.optimizer = restore(self._new_optimizer(self.model), state["optimizer"])
        self.fitted = bool(state["fitted"])
        self.trained_on = list(state.get("trained_on", []))
        self.mean_boxes = float(state.get("mean_boxes", 1.0))
