"""An optional `DetectorAdapter` built from mmdet 3.x / mmcv 2.1 parts, for teams on OpenMMLab.

MI-AOD's losses and scores (`miaod.py`) only see the adapter contract (`adapter.py`), so this adapter plugs in
beside `TorchvisionAdapter` without touching the selection logic. Every part is built from a config dict
through mmdet's registries, as an mmdet config would build it; the defaults are those of mmdet's
``retinanet_r50_fpn``:

- backbone ``dict(type='ResNet', depth=18 | 50, num_stages=4, out_indices=(0, 1, 2, 3), style='pytorch')`` and
  neck ``dict(type='FPN', in_channels=[C2, C3, C4, C5], out_channels=channels, start_level=1,
  add_extra_convs='on_input', num_outs=5)``: levels P3-P7 at strides 8-128 (P6 from C5, as mmdet; torchvision's
  RetinaNet takes P6 from P5 when the FPN keeps C5's width).
- anchors ``AnchorGenerator(octave_base_scale=4, scales_per_octave=3, ratios=[0.5, 1, 2],
  strides=[8, 16, 32, 64, 128])``: sizes 32..512 x (2^0, 2^(1/3), 2^(2/3)), 9 per location.
- assignment ``MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0)``; box coding
  ``DeltaXYWHBBoxCoder`` with target means 0 and stds 1; NMS ``mmcv.ops.batched_nms`` (class-wise, IoU > iou
  suppresses, as torchvision).

Anchor order. The contract wants level-major, then (y, x, a). mmdet's ``AnchorGenerator.grid_priors`` already
gives that: per level it adds the A base anchors to the shifts of a row-major grid (x fastest, then y), so row
``(y * W + x) * A + a``; its base anchors are ratio-major, scale-minor (``scale_major=True``), the same order as
torchvision's ``AnchorGenerator``. So no permutation is needed; the tests check that the two adapters' anchors
coincide element for element.

Differences from `TorchvisionAdapter`, all documented choices of the two libraries:

- Anchors: torchvision rounds its base anchors to whole pixels, mmdet keeps them exact (e.g. the 0.5-ratio
  anchor of size 32 is 45.25 px wide in mmdet, 46 in torchvision). ``round_anchors=True`` rounds them as
  torchvision does: then both adapters give the same anchors (the coarsest stride must divide the image sides,
  which `task.py` ensures: torchvision derives strides from the image size, mmdet's are fixed).
- Low-quality matches: both make a ground-truth box's best anchors (all anchors tying at its highest IoU)
  positive. torchvision gives such an anchor the box it overlaps most (its own arg-max), mmdet the box it is a
  best anchor *for* (the last such box when several are). They differ only when an anchor is the best one for a
  box while overlapping another box more: never with one box per image, rarely with overlapping boxes.
  Positive, background and ignored anchors are the same sets in both.
- Pretrained backbones (``weights_path``: a torchvision ResNet state dict; mmdet's ResNet uses the same key
  names): as mmdet's RetinaNet config, the stem and ``layer1`` are frozen (``frozen_stages=1``) and batch norm
  keeps its statistics (``norm_eval=True``) but its affine parameters are trained; torchvision's adapter
  freezes them too (``FrozenBatchNorm2d``). Without weights, everything trains and the parts are initialised by
  mmdet's ``init_weights`` (Kaiming for the ResNet, Xavier for the FPN). The weights are read with
  ``torch.load(weights_only=True)`` here, not by mmengine's checkpoint loader (which fails on torch's
  ``weights_only`` default), so no ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD`` is needed.

mmdet is imported only when the adapter is constructed; without it (or with an mmcv mmdet rejects) the
construction raises `UserError`. Like `TorchvisionAdapter`, the contract's ``modules()`` shadows
``nn.Module.modules()`` on the adapter itself (see `adapter.py`).
"""
from __future__ import annotations

import contextlib
import copy
import logging
import math
from pathlib import Path

import torch
from torch import Tensor, nn

from activelab.errors import UserError

BACKBONES = ("resnet18", "resnet50")
DEPTHS = {"resnet18": 18, "resnet50": 50}
C5_CHANNELS = {18: 512, 34: 512, 50: 2048, 101: 2048, 152: 2048}
STRIDES = (8, 16, 32, 64, 128)
RATIOS = (0.5, 1.0, 2.0)
MISSING = "the mmdet adapter needs mmdet 3.x and mmcv 2.1: see README"


def _import_mmdet():
    """(MODELS, TASK_UTILS, InstanceData, batched_nms), or UserError when mmdet / mmcv are missing or unusable."""
    try:
        import mmdet  # noqa: F401  (asserts a compatible mmcv)
        import mmdet.models  # noqa: F401  (registers backbones, necks, anchor generators, assigners, coders)
        from mmcv.ops import batched_nms
        from mmdet.registry import MODELS, TASK_UTILS
        from mmengine.structures import InstanceData
    except (ImportError, AssertionError, OSError) as exc:  # mmdet asserts its mmcv version range on import
        detail = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise UserError(f"{MISSING} ({detail})") from exc
    if not mmdet.__version__.startswith("3."):
        raise UserError(f"{MISSING} (found mmdet {mmdet.__version__})")
    return MODELS, TASK_UTILS, InstanceData, batched_nms


@contextlib.contextmanager
def _quiet_mmengine():
    """mmengine's current logger at WARNING for the duration (restored after)."""
    from mmengine.logging import MMLogger

    logger = MMLogger.get_current_instance()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


class _BackboneNeck(nn.Module):
    """mmdet backbone + neck as one module: images -> list of FPN levels, finest first."""

    def __init__(self, backbone: nn.Module, neck: nn.Module):
        super().__init__()
        self.backbone = backbone
        self.neck = neck

    def forward(self, images: Tensor) -> list[Tensor]:
        return list(self.neck(self.backbone(images)))


def _anchor_cfg(anchor_sizes) -> dict:
    """mmdet AnchorGenerator config: RetinaNet's, or from per-level sizes as `TorchvisionAdapter` takes them."""
    if anchor_sizes is None:
        return dict(type="AnchorGenerator", octave_base_scale=4, scales_per_octave=3, ratios=list(RATIOS),
                    strides=list(STRIDES))
    sizes = [tuple(float(v) for v in s) if isinstance(s, (tuple, list)) else (float(s),) for s in anchor_sizes]
    if len(sizes) != len(STRIDES):
        raise ValueError(f"anchor_sizes: need {len(STRIDES)} levels, got {len(sizes)}")
    if all(len(s) == 1 for s in sizes):  # one base size per level -> 3 octave scales, as TorchvisionAdapter
        return dict(type="AnchorGenerator", base_sizes=[s[0] for s in sizes], octave_base_scale=1,
                    scales_per_octave=3, ratios=list(RATIOS), strides=list(STRIDES))
    # explicit sizes per level: mmdet shares the scales over levels, so the sizes must be base_l x common scales
    rel = [tuple(v / s[0] for v in s) for s in sizes]
    if len({len(s) for s in sizes}) != 1 or any(not all(math.isclose(a, b, rel_tol=1e-6) for a, b in zip(r, rel[0]))
                                                for r in rel):
        raise ValueError(f"anchor_sizes: the mmdet adapter needs the same relative scales on every level, got {sizes}")
    return dict(type="AnchorGenerator", base_sizes=[s[0] for s in sizes], scales=list(rel[0]), ratios=list(RATIOS),
                strides=list(STRIDES))


class MMDetAdapter(nn.Module):
    """`DetectorAdapter` from mmdet 3.x parts (see the module docstring).

    ``backbone``: ``"resnet18"`` or ``"resnet50"`` (mmdet ResNet + FPN P3-P7, RetinaNet's anchors), or any mmdet
    backbone given as ``backbone_cfg`` with its neck as ``neck_cfg`` (then ``channels`` is the neck's
    ``out_channels`` and the neck must give one level per anchor stride). ``channels`` defaults to 256.
    ``anchor_sizes`` as for `TorchvisionAdapter` (one base size per level, or a tuple of sizes per level);
    ``anchor_cfg``, ``assigner_cfg`` and ``coder_cfg`` replace RetinaNet's mmdet configs whole.
    ``round_anchors``: round the anchors to whole pixels as torchvision does.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "resnet50",
        channels: int | None = None,
        anchor_sizes=None,
        weights_path: str | Path | None = None,
        *,
        round_anchors: bool = False,
        backbone_cfg: dict | None = None,
        neck_cfg: dict | None = None,
        anchor_cfg: dict | None = None,
        assigner_cfg: dict | None = None,
        coder_cfg: dict | None = None,
    ):
        super().__init__()
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        if backbone_cfg is None and backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} not known to the mmdet adapter; available: "
                             f"{', '.join(BACKBONES)} (or an mmdet backbone_cfg + neck_cfg)")
        if (backbone_cfg is None) != (neck_cfg is None):
            raise ValueError("backbone_cfg and neck_cfg go together")
        if anchor_sizes is not None and anchor_cfg is not None:
            raise ValueError("give anchor_sizes or anchor_cfg, not both")
        MODELS, TASK_UTILS, InstanceData, batched_nms = _import_mmdet()
        self._InstanceData, self._batched_nms = InstanceData, batched_nms
        self.num_classes = int(num_classes)
        self.round_anchors = bool(round_anchors)
        pretrained = weights_path is not None

        if backbone_cfg is None:
            depth = DEPTHS[backbone]
            c5 = C5_CHANNELS[depth]
            self.channels = int(channels or 256)
            backbone_cfg = dict(type="ResNet", depth=depth, num_stages=4, out_indices=(0, 1, 2, 3),
                                frozen_stages=1 if pretrained else -1, norm_cfg=dict(type="BN", requires_grad=True),
                                norm_eval=pretrained, style="pytorch")
            neck_cfg = dict(type="FPN", in_channels=[c5 // 8, c5 // 4, c5 // 2, c5], out_channels=self.channels,
                            start_level=1, add_extra_convs="on_input", num_outs=len(STRIDES))
        else:
            if channels is not None and int(channels) != int(neck_cfg.get("out_channels", channels)):
                raise ValueError(f"channels {channels} != neck_cfg out_channels {neck_cfg.get('out_channels')}")
            self.channels = int(neck_cfg["out_channels"])
        self.backbone_name = backbone if backbone_cfg is None else str(backbone_cfg.get("type"))
        self.configs = {"backbone": copy.deepcopy(backbone_cfg), "neck": copy.deepcopy(neck_cfg)}
        body = _BackboneNeck(MODELS.build(copy.deepcopy(backbone_cfg)), MODELS.build(copy.deepcopy(neck_cfg)))
        with _quiet_mmengine():  # init_weights logs every parameter's initialisation at INFO
            if pretrained:
                body.neck.init_weights()
                self._load_resnet(body.backbone, weights_path)
            else:
                body.backbone.init_weights()
                body.neck.init_weights()
        self.backbone = body

        self.configs["anchors"] = copy.deepcopy(anchor_cfg) if anchor_cfg is not None else _anchor_cfg(anchor_sizes)
        self.configs["assigner"] = copy.deepcopy(assigner_cfg) if assigner_cfg is not None else dict(
            type="MaxIoUAssigner", pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0, ignore_iof_thr=-1)
        self.configs["coder"] = copy.deepcopy(coder_cfg) if coder_cfg is not None else dict(
            type="DeltaXYWHBBoxCoder", target_means=[0.0, 0.0, 0.0, 0.0], target_stds=[1.0, 1.0, 1.0, 1.0])
        self.anchor_generator = TASK_UTILS.build(copy.deepcopy(self.configs["anchors"]))
        self.assigner = TASK_UTILS.build(copy.deepcopy(self.configs["assigner"]))
        self.box_coder = TASK_UTILS.build(copy.deepcopy(self.configs["coder"]))
        per_level = list(self.anchor_generator.num_base_priors)
        if len(set(per_level)) != 1:
            raise ValueError(f"anchors: the same number of anchors on every level is needed, got {per_level}")
        self.num_anchors = per_level[0]
        self._anchor_cache: dict[tuple, Tensor] = {}

    @staticmethod
    def _load_resnet(resnet: nn.Module, weights_path: str | Path) -> None:
        """The classification task's checks (one-line errors naming task.params.weights_path); mmdet's ResNet has
        torchvision's key names, without ``fc``."""
        from ..backbones import load_checked, read_state_dict
        from .adapter import WEIGHTS_FIELD

        state = read_state_dict(weights_path, WEIGHTS_FIELD, "ResNet")
        load_checked(resnet, state, WEIGHTS_FIELD, weights_path, "ResNet", ignore=("fc.",))

    # -- the contract -------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:  # type: ignore[override]  (the adapter contract; see adapter.py)
        return {"backbone": self.backbone}

    def features(self, images: Tensor) -> list[Tensor]:
        feats = self.backbone(images)
        if len(feats) != self.anchor_generator.num_levels:
            raise RuntimeError(f"the neck gives {len(feats)} levels, the anchors have "
                               f"{self.anchor_generator.num_levels}")
        return feats

    def anchors(self, images: Tensor, features: list[Tensor]) -> Tensor:
        sizes = [tuple(f.shape[-2:]) for f in features]
        key = (tuple(images.shape[-2:]), tuple(sizes), images.device, features[0].dtype)
        cached = self._anchor_cache.get(key)
        if cached is None:
            levels = self.anchor_generator.grid_priors(sizes, dtype=features[0].dtype, device=features[0].device)
            cached = torch.cat(levels, dim=0)  # level-major; within a level row (y * W + x) * A + a already
            if self.round_anchors:
                cached = cached.round()
            self._anchor_cache = {key: cached}
        return cached

    def assign(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        gt = gt_boxes.to(anchors).reshape(-1, 4)
        pred = self._InstanceData(priors=anchors)
        truth = self._InstanceData(bboxes=gt, labels=torch.zeros(gt.shape[0], dtype=torch.long, device=gt.device))
        gt_inds = self.assigner.assign(pred, truth).gt_inds  # mmdet: 0 background, -1 ignored, k > 0 box k - 1
        out = gt_inds - 1
        out[gt_inds == 0] = -1
        out[gt_inds == -1] = -2
        return out.long()

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.encode(anchors, gt_boxes.to(anchors)).to(anchors.dtype)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        if deltas.shape[0] == 0:
            return deltas.new_zeros((0, 4))
        return self.box_coder.decode(anchors, deltas)

    def nms(self, boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
        if boxes.shape[0] == 0:
            return torch.zeros(0, dtype=torch.long, device=boxes.device)
        _, keep = self._batched_nms(boxes.float(), scores.float(), labels,
                                    dict(type="nms", iou_threshold=float(iou)))
        return keep.long()

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.features(images)
