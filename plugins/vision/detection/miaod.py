"""MI-AOD (Yuan et al., CVPR 2021): the head, the losses of its three training stages, and its image scores.

A RetinaNet-style head shared across FPN levels with four branches: two adversarial classifiers f1, f2 (sigmoid,
A*C outputs), a box regressor f_r (A*4) and a multiple-instance branch f_mil (A*C), each a tower of ``convs`` x
(3x3 conv ``width`` + ReLU) and a 3x3 output conv (as RetinaNet and the official head). The card's head is
4 x 256; that is the default here, and the CPU demo uses ``convs=2, width=64``.

Everything works on flattened anchors: tensors (B, N, .) with N anchors ordered level-major, then (y, x, a),
the adapter's anchor order (`adapter.py`). ``s1 = sigmoid(f1)``, ``s2 = sigmoid(f2)``.

Choices where the card is silent, taken from the official code (yuantn/MI-AOD) unless said otherwise:
- MIL weight ``w = softmax_c(f_mil) * softmax_anchors(max_c sigmoid((f1 + f2) / 2))``: the softmax over anchors
  runs **per image and per FPN level** (as the official head does, level by level); the classifier part is
  detached. So each level's weights sum to 1 over (anchors, classes), and the image class score
  ``max_l sum_{a in l} w[a, c]`` already lies in [0, 1] (a convex combination of class probabilities); it is
  clamped to [1e-5, 1 - 1e-5] only inside the BCE, as the official code does.
- Discrepancy losses use ``w`` fully detached (the official code detaches the whole weight there).
  Normalisation: ``lam * sum over all anchors of all levels of mean_c(...)``, then the **mean over images**
  (the official code sums over the images of the batch too; the mean keeps lambda independent of batch size).
- Detection loss: focal loss (alpha 0.25, gamma 2) summed over non-ignored anchors and L1 box loss summed over
  positives, both divided by max(1, positives of the whole batch) (mmdet's avg_factor; torchvision's RetinaNet
  normalises per image). The classification term is the mean of the terms through f1 and through f2; the box
  term is shared. L1 as the card says (the official config uses smooth L1 with beta 1/9).
- Pseudo image labels on unlabelled images: ``max_anchors (s1 + s2) / 2 > 0.5``. The official code zeroes the
  whole batch's MIL loss when any image has no pseudo label; here only those images are left out of the mean.
- In the "min" and "max" stages a labelled batch and an unlabelled batch are summed into one step (the official
  code alternates them as separate iterations).
- Frozen batch norm: in a stage where all parameters of a batch-norm layer are frozen (the backbone in "max"),
  `train_stage` puts that layer in eval mode, so the frozen backbone is frozen in its statistics too.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchvision.ops import clip_boxes_to_image, sigmoid_focal_loss

from .adapter import DetectorAdapter

STAGES = ("label", "min", "max")
GROUPS = ("backbone", "f1", "f2", "f_r", "f_mil")
_EPS = 1e-5


@dataclass
class HeadOutputs:
    """Raw head outputs for a batch, anchors flattened (level-major, then y, x, a)."""

    cls1: Tensor  # (B, N, C) logits of classifier f1
    cls2: Tensor  # (B, N, C) logits of classifier f2
    reg: Tensor  # (B, N, 4) box deltas
    mil: Tensor  # (B, N, C) logits of the MIL branch f_mil
    anchors: Tensor  # (N, 4)
    level_sizes: list[int]  # anchors per level (sum = N)


class _Branch(nn.Module):
    def __init__(self, channels: int, out: int, convs: int, width: int, bias: float):
        super().__init__()
        layers, cin = [], channels
        for _ in range(convs):
            layers += [nn.Conv2d(cin, width, 3, padding=1), nn.ReLU(inplace=True)]
            cin = width
        self.tower = nn.Sequential(*layers)
        self.out = nn.Conv2d(cin, out, 3, padding=1)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.normal_(m.weight, std=0.01)
                nn.init.constant_(m.bias, 0.0)
        nn.init.constant_(self.out.bias, bias)

    def forward(self, x: Tensor) -> Tensor:
        return self.out(self.tower(x))


class MIAODHead(nn.Module):
    """f1, f2, f_r, f_mil, each ``convs`` x (3x3 conv ``width`` + ReLU) + a 3x3 output conv, shared over levels.

    Weights N(0, 0.01); classifier biases (f1, f2, f_mil) -log((1 - prior) / prior), regressor bias 0. The four
    branches draw their weights one after the other from the RNG, so f1 and f2 start different.
    """

    def __init__(self, channels: int, num_anchors: int, num_classes: int, convs: int = 4, width: int = 256,
                 prior: float = 0.01):
        super().__init__()
        self.num_anchors, self.num_classes = num_anchors, num_classes
        bias = -math.log((1 - prior) / prior)
        self.f1 = _Branch(channels, num_anchors * num_classes, convs, width, bias)
        self.f2 = _Branch(channels, num_anchors * num_classes, convs, width, bias)
        self.f_r = _Branch(channels, num_anchors * 4, convs, width, 0.0)
        self.f_mil = _Branch(channels, num_anchors * num_classes, convs, width, bias)

    @staticmethod
    def _flat(y: Tensor, k: int) -> Tensor:
        b, _, h, w = y.shape  # (B, A*k, H, W) -> (B, H*W*A, k), channel index a*k + j
        return y.reshape(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)

    def forward(self, features: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor, list[int]]:
        c = self.num_classes
        outs = {name: [] for name in ("f1", "f2", "f_r", "f_mil")}
        for x in features:
            outs["f1"].append(self._flat(self.f1(x), c))
            outs["f2"].append(self._flat(self.f2(x), c))
            outs["f_r"].append(self._flat(self.f_r(x), 4))
            outs["f_mil"].append(self._flat(self.f_mil(x), c))
        sizes = [t.shape[1] for t in outs["f1"]]
        cat = {k: torch.cat(v, dim=1) for k, v in outs.items()}
        return cat["f1"], cat["f2"], cat["f_r"], cat["f_mil"], sizes


class MIAODDetector(nn.Module):
    """Adapter (backbone + FPN, anchors, matching, box coding) + `MIAODHead`."""

    def __init__(self, adapter: DetectorAdapter, convs: int = 4, width: int = 256):
        super().__init__()
        if isinstance(adapter, nn.Module):
            self.adapter = adapter
        else:  # a plain-object adapter: register its parts so they move / save with the detector
            object.__setattr__(self, "adapter", adapter)
            self.adapter_parts = nn.ModuleDict(adapter.modules())
        self.head = MIAODHead(adapter.channels, adapter.num_anchors, adapter.num_classes, convs, width)
        # parameters the adapter keeps fixed (e.g. conv1/layer1 of a pretrained ResNet) are in no group
        self._fixed = {id(p) for m in adapter.modules().values() for p in m.parameters() if not p.requires_grad}

    def forward(self, images: Tensor) -> HeadOutputs:
        feats = self.adapter.features(images)
        cls1, cls2, reg, mil, sizes = self.head(feats)
        anchors = self.adapter.anchors(images, feats)
        if anchors.shape[0] != cls1.shape[1]:
            raise RuntimeError(f"adapter gives {anchors.shape[0]} anchors, the head {cls1.shape[1]} outputs")
        return HeadOutputs(cls1, cls2, reg, mil, anchors, sizes)

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        seen: set[int] = set()
        backbone = []
        for m in self.adapter.modules().values():
            for p in m.parameters():
                if id(p) not in seen and id(p) not in self._fixed:
                    seen.add(id(p))
                    backbone.append(p)
        groups = {"backbone": backbone}
        for name in ("f1", "f2", "f_r", "f_mil"):
            groups[name] = list(getattr(self.head, name).parameters())
        return groups

    def stage_parameters(self, stage: str) -> list[nn.Parameter]:
        groups = self.parameter_groups()
        names = {"label": GROUPS, "min": ("backbone", "f_r", "f_mil"), "max": ("f1", "f2")}.get(stage)
        if names is None:
            raise ValueError(f"stage {stage!r} not known; available: {', '.join(STAGES)}")
        return [p for n in names for p in groups[n]]

    def set_stage(self, stage: str) -> None:
        train = {id(p) for p in self.stage_parameters(stage)}
        for p in self.parameters():
            p.requires_grad_(id(p) in train)

    def freeze_frozen_norms(self) -> None:
        """Eval mode for every batch-norm layer whose parameters are all frozen (call after ``train()``)."""
        for _, m in self.named_modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                params = list(m.parameters(recurse=False))
                if params and not any(p.requires_grad for p in params):
                    m.eval()


# -- losses --------------------------------------------------------------------------------------------------------
def _targets(out: HeadOutputs, targets: list[dict], adapter: DetectorAdapter):
    """Per anchor: class one-hot (B, N, C), valid (not ignored) (B, N), positive (B, N), box targets (B, N, 4)."""
    b, n, c = out.cls1.shape
    dev = out.cls1.device
    cls_t = torch.zeros(b, n, c, device=dev)
    valid = torch.ones(b, n, dtype=torch.bool, device=dev)
    pos = torch.zeros(b, n, dtype=torch.bool, device=dev)
    box_t = torch.zeros(b, n, 4, device=dev)
    for i, t in enumerate(targets):
        boxes = torch.as_tensor(t["boxes"], dtype=torch.float32, device=dev).reshape(-1, 4)
        labels = torch.as_tensor(t["labels"], dtype=torch.long, device=dev).reshape(-1)
        matched = adapter.assign(out.anchors, boxes)
        valid[i] = matched != -2
        pos[i] = matched >= 0
        if boxes.shape[0]:
            idx = matched.clamp(min=0)
            p = pos[i]
            cls_t[i, p, labels[idx[p]]] = 1.0
            box_t[i] = adapter.encode(boxes[idx], out.anchors)
    return cls_t, valid, pos, box_t


def detection_terms(out: HeadOutputs, targets: list[dict], adapter: DetectorAdapter, alpha: float = 0.25,
                    gamma: float = 2.0) -> dict[str, Tensor]:
    """The detection loss's parts: ``cls1``, ``cls2`` (focal, per classifier), ``box`` (L1)."""
    if len(targets) != out.cls1.shape[0]:
        raise ValueError(f"{len(targets)} targets for a batch of {out.cls1.shape[0]} images")
    cls_t, valid, pos, box_t = _targets(out, targets, adapter)
    norm = pos.sum().clamp(min=1).float()
    terms = {}
    for name, logits in (("cls1", out.cls1), ("cls2", out.cls2)):
        fl = sigmoid_focal_loss(logits, cls_t, alpha=alpha, gamma=gamma, reduction="none")
        terms[name] = (fl * valid.unsqueeze(-1)).sum() / norm
    terms["box"] = F.l1_loss(out.reg[pos], box_t[pos], reduction="sum") / norm
    return terms


def detection_loss(out: HeadOutputs, targets: list[dict], adapter: DetectorAdapter, alpha: float = 0.25,
                   gamma: float = 2.0) -> Tensor:
    """Mean over f1 and f2 of the focal loss, plus the L1 box loss (see the module docstring for normalisation).

    ``targets[i] = {"boxes": (M, 4) x0y0x1y1 pixels, "labels": (M,) long in [0, C)}``; M = 0: all background.
    """
    t = detection_terms(out, targets, adapter, alpha, gamma)
    return (t["cls1"] + t["cls2"]) / 2 + t["box"]


def _per_level(x: Tensor, sizes: list[int]) -> list[Tensor]:
    return list(torch.split(x, sizes, dim=1))


def mil_weights(out: HeadOutputs) -> Tensor:
    """(B, N, C) MIL instance weights: softmax_c(f_mil) * softmax over the level's anchors of max_c s((f1+f2)/2).

    The classifier part is detached (gradient reaches f_mil only).
    """
    cls_prob = out.mil.softmax(dim=2)
    score = torch.sigmoid((out.cls1.detach() + out.cls2.detach()) / 2).amax(dim=2)  # (B, N)
    anchor_w = torch.cat([s.softmax(dim=1) for s in _per_level(score, out.level_sizes)], dim=1)
    return cls_prob * anchor_w.unsqueeze(-1)


def image_class_scores(out: HeadOutputs) -> Tensor:
    """(B, C) in [0, 1]: max over levels of the sum over the level's anchors of the MIL weights."""
    w = mil_weights(out)
    per_level = torch.stack([lv.sum(dim=1) for lv in _per_level(w, out.level_sizes)], dim=0)  # (L, B, C)
    return per_level.amax(dim=0).clamp(0.0, 1.0)


def image_labels_from_targets(targets: list[dict], num_classes: int, device=None) -> Tensor:
    """(B, C) multi-hot image labels from box labels."""
    y = torch.zeros(len(targets), num_classes, device=device)
    for i, t in enumerate(targets):
        labels = torch.as_tensor(t["labels"], dtype=torch.long, device=device).reshape(-1)
        y[i, labels] = 1.0
    return y


def mil_loss(out: HeadOutputs, image_labels: Tensor, image_mask: Tensor | None = None) -> Tensor:
    """BCE between `image_class_scores` (clamped to [1e-5, 1 - 1e-5]) and multi-hot labels, mean over entries.

    ``image_mask`` (B,) bool: images to use (default all); no image -> 0 (keeps the graph).
    """
    scores = image_class_scores(out).clamp(_EPS, 1 - _EPS)
    bce = F.binary_cross_entropy(scores, image_labels.to(scores), reduction="none")
    if image_mask is None:
        return bce.mean()
    m = image_mask.to(bce.device, torch.bool)
    if not m.any():
        return bce.sum() * 0.0
    return bce[m].mean()


def pseudo_image_labels(out: HeadOutputs) -> Tensor:
    """(B, C) multi-hot, detached: max over anchors of (s1 + s2) / 2 > 0.5."""
    with torch.no_grad():
        p = (torch.sigmoid(out.cls1) + torch.sigmoid(out.cls2)) / 2
        return (p.amax(dim=1) > 0.5).float()


def _weighted_discrepancy(out: HeadOutputs, maximise: bool) -> Tensor:
    d = (torch.sigmoid(out.cls1) - torch.sigmoid(out.cls2)).abs()
    if maximise:
        d = 1 - d
    w = mil_weights(out).detach()
    return (d * w).mean(dim=2).sum(dim=1).mean()


def discrepancy_min_loss(out: HeadOutputs, lam: float = 0.5) -> Tensor:
    """lam * sum over anchors of mean_c(|s1 - s2| * w), mean over images (w detached). >= 0; 0 iff s1 == s2."""
    return lam * _weighted_discrepancy(out, maximise=False)


def discrepancy_max_loss(out: HeadOutputs, lam: float = 0.5) -> Tensor:
    """lam * sum over anchors of mean_c((1 - |s1 - s2|) * w), mean over images: largest when s1 == s2."""
    return lam * _weighted_discrepancy(out, maximise=True)


# -- stages --------------------------------------------------------------------------------------------------------
def stage_loss(model: MIAODDetector, stage: str, labelled: tuple[Tensor, list[dict]], unlabelled: Tensor | None,
               lam: float = 0.5) -> tuple[Tensor, dict[str, float]]:
    """One step's loss of a stage; returns (loss, parts for logging).

    - "label": labelled detection + MIL BCE (image labels from its boxes); ``unlabelled`` is ignored.
    - "min": labelled detection + MIL; unlabelled ``discrepancy_min_loss`` + MIL BCE on pseudo image labels
      (images without any pseudo label are left out).
    - "max": labelled detection; unlabelled ``discrepancy_max_loss``.
    """
    if stage not in STAGES:
        raise ValueError(f"stage {stage!r} not known; available: {', '.join(STAGES)}")
    images, targets = labelled
    adapter = model.adapter
    out = model(images)
    terms = detection_terms(out, targets, adapter)
    det = (terms["cls1"] + terms["cls2"]) / 2 + terms["box"]
    loss = det
    parts = {"det": float(det.detach()), "det_cls": float((terms["cls1"] + terms["cls2"]).detach() / 2),
             "det_box": float(terms["box"].detach())}
    if stage in ("label", "min"):
        y = image_labels_from_targets(targets, adapter.num_classes, images.device)
        mil = mil_loss(out, y)
        loss = loss + mil
        parts["mil"] = float(mil.detach())
    if stage in ("min", "max") and unlabelled is not None and len(unlabelled):
        u = model(unlabelled)
        if stage == "min":
            dis = discrepancy_min_loss(u, lam)
            pseudo = pseudo_image_labels(u)
            mil_u = mil_loss(u, pseudo, pseudo.sum(dim=1) > 0)
            loss = loss + dis + mil_u
            parts["mil_unlabelled"] = float(mil_u.detach())
        else:
            dis = discrepancy_max_loss(u, lam)
            loss = loss + dis
        parts["dis"] = float(dis.detach())
    parts["loss"] = float(loss.detach())
    return loss, parts


def train_stage(model: MIAODDetector, stage: str, optimizer: torch.optim.Optimizer,
                batches: Iterable[tuple[tuple[Tensor, list[dict]], Tensor | None]], lam: float = 0.5
                ) -> dict[str, float]:
    """Run one stage over ``batches`` of (labelled, unlabelled); returns the mean of each logged part.

    Sets the stage (requires_grad only on its parameters), puts fully frozen batch-norm layers in eval mode, and
    clears gradients with ``set_to_none=True`` before every step and at the end, so an optimiser holding all
    parameters (SGD with momentum and weight decay included) never moves a frozen one: torch optimisers skip
    parameters whose ``grad`` is None. Frozen parameters are bit-identical afterwards.
    """
    model.set_stage(stage)
    model.train()
    model.freeze_frozen_norms()
    sums: dict[str, float] = {}
    steps = 0
    try:
        for labelled, unlabelled in batches:
            optimizer.zero_grad(set_to_none=True)
            loss, parts = stage_loss(model, stage, labelled, unlabelled, lam)
            loss.backward()
            optimizer.step()
            for k, v in parts.items():
                sums[k] = sums.get(k, 0.0) + v
            steps += 1
    finally:
        optimizer.zero_grad(set_to_none=True)
    return {k: v / max(1, steps) for k, v in sums.items()}


# -- scores --------------------------------------------------------------------------------------------------------
def anchor_discrepancy(out: HeadOutputs) -> Tensor:
    """(B, N): mean over classes of (s1 - s2)^2."""
    return ((torch.sigmoid(out.cls1) - torch.sigmoid(out.cls2)) ** 2).mean(dim=2)


def image_uncertainty(out: HeadOutputs, top_k: int, mil: bool = False) -> Tensor:
    """(B,): mean of the ``top_k`` largest anchor discrepancies of each image (k clipped to [1, N]).

    ``mil=False`` (the official code): anchor discrepancy = mean_c (s1 - s2)^2.
    ``mil=True`` (the paper's text): anchor discrepancy = mean_c (s1 - s2)^2 * (C * N_l * w[a, c]), with w the
    MIL weights and N_l the number of anchors of the anchor's level. The factor C * N_l makes uniform weights
    neutral (then it equals the plain score), so the weighting only moves anchors relative to each other: an
    anchor the MIL branch deems unimportant for an image (low w) counts less, a salient one more.
    """
    d = (torch.sigmoid(out.cls1) - torch.sigmoid(out.cls2)) ** 2
    if mil:
        n_l = torch.cat([torch.full((s,), float(s), device=d.device) for s in out.level_sizes])
        d = d * (mil_weights(out) * d.shape[2] * n_l.view(1, -1, 1))
    u = d.mean(dim=2)
    k = max(1, min(int(top_k), u.shape[1]))
    return u.topk(k, dim=1).values.mean(dim=1)


def anchor_entropy(out: HeadOutputs, reduce: str = "mean") -> Tensor:
    """(B,): per anchor, mean over classes of the binary entropy (nats) of (s1 + s2) / 2; then mean or max."""
    p = ((torch.sigmoid(out.cls1) + torch.sigmoid(out.cls2)) / 2).clamp(1e-7, 1 - 1e-7)
    h = -(p * p.log() + (1 - p) * (1 - p).log()).mean(dim=2)
    if reduce == "mean":
        return h.mean(dim=1)
    if reduce == "max":
        return h.amax(dim=1)
    raise ValueError(f"reduce {reduce!r} not known; available: mean, max")


@torch.no_grad()
def detect(out: HeadOutputs, adapter: DetectorAdapter, image_size: tuple[int, int], score_threshold: float = 0.05,
           nms_iou: float = 0.5, max_detections: int = 100, candidates: int = 1000) -> list[dict]:
    """RetinaNet post-processing with score = (s1 + s2) / 2.

    Per level: drop (anchor, class) pairs scoring <= ``score_threshold``, keep the ``candidates`` best, decode;
    then class-wise NMS over all levels, keep ``max_detections``. ``image_size`` = (H, W); boxes are clipped to it.
    Per image: {"boxes": (K, 4) float32, "scores": (K,) float32, "labels": (K,) int64} numpy arrays, by score.
    """
    scores_all = (torch.sigmoid(out.cls1) + torch.sigmoid(out.cls2)) / 2
    c = scores_all.shape[2]
    results = []
    for i in range(scores_all.shape[0]):
        boxes_l, scores_l, labels_l = [], [], []
        start = 0
        for size in out.level_sizes:
            sc = scores_all[i, start:start + size].flatten()
            keep = torch.nonzero(sc > score_threshold).squeeze(1)
            sc = sc[keep]
            if sc.numel() > candidates:
                sc, order = sc.topk(candidates)
                keep = keep[order]
            anchor_idx = keep // c + start
            boxes = adapter.decode(out.reg[i, anchor_idx], out.anchors[anchor_idx])
            boxes_l.append(clip_boxes_to_image(boxes, tuple(image_size)))
            scores_l.append(sc)
            labels_l.append(keep % c)
            start += size
        boxes, scores, labels = torch.cat(boxes_l), torch.cat(scores_l), torch.cat(labels_l)
        kept = adapter.nms(boxes, scores, labels, nms_iou)[:max_detections]
        results.append({
            "boxes": boxes[kept].cpu().numpy().astype(np.float32).reshape(-1, 4),
            "scores": scores[kept].cpu().numpy().astype(np.float32),
            "labels": labels[kept].cpu().numpy().astype(np.int64),
        })
    return results
