"""A narrow detector adapter: the few things MI-AOD needs from a one-stage detector, and a torchvision version.

MI-AOD's losses and scores (`miaod.py`) only need FPN features, one anchor set, anchor-to-box assignment, box
encoding and class-wise NMS. `DetectorAdapter` is that contract, so another backend (mmdet, say) can be plugged
in without touching the selection logic. `TorchvisionAdapter` implements it from torchvision parts, with the
choices of torchvision's RetinaNet: IoU matcher 0.5 / 0.4 keeping low-quality matches, unit box-coder weights.

Backbones:
- ``"tiny"``: a small conv net (4 stages of conv-BN-ReLU x 2, the first of each with stride 2; 16/32/64/96
  channels) with an FPN over the last three stages: levels at strides 4, 8, 16 (16x16, 8x8, 4x4 for 64 px
  images), anchors (12, 24, 48) x 3 scales x 3 ratios. The CPU demo for ~64 px images with 12-30 px objects.
- ``"resnet18"``, ``"resnet50"``: torchvision ResNet + FPN P3-P7 (P6/P7 from P5, as torchvision's
  ``retinanet_resnet50_fpn``) with RetinaNet's anchors (32..512, 3 scales, 3 ratios). No weights are ever
  downloaded: ``weights_path`` names a local ResNet state dict (then, as torchvision does for pretrained
  backbones, batch norm is frozen and ``conv1``/``layer1`` are not trained).

Note: the contract's ``modules()`` returns a dict and so shadows ``nn.Module.modules()`` on the adapter itself;
code that walks the adapter's submodules must use ``named_modules()`` / ``children()`` instead (torch itself
only uses those internally; walking a *parent* module, e.g. the detector, is unaffected).
"""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
import torchvision
from torch import Tensor, nn
from torchvision.models.detection._utils import BoxCoder, Matcher
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.models.detection.image_list import ImageList
from torchvision.ops import FeaturePyramidNetwork, batched_nms, box_iou
from torchvision.ops.feature_pyramid_network import LastLevelP6P7
from torchvision.ops.misc import FrozenBatchNorm2d

from ..backbones import load_checked, read_state_dict

BACKBONES = ("tiny", "resnet18", "resnet50")
WEIGHTS_FIELD = "task.params.weights_path"
RATIOS = (0.5, 1.0, 2.0)


@runtime_checkable
class DetectorAdapter(Protocol):
    """What MI-AOD needs from a one-stage (anchor-based, FPN) detector.

    Attributes: ``num_classes`` (C, foreground classes, no background), ``num_anchors`` (A, anchors per feature
    map location, equal on every level), ``channels`` (channels of every FPN level).

    - ``modules()``: named trainable parts, at least ``"backbone"`` (backbone including neck / FPN). The MI-AOD
      head is not part of the adapter.
    - ``features(images)``: images (B, 3, H, W), already normalised -> list of FPN levels (B, channels, H_l, W_l),
      finest first.
    - ``anchors(images, features)``: (N, 4) boxes x0 y0 x1 y1 in pixels, shared by every image of the batch (all
      images of a batch have one size); N = sum_l H_l * W_l * A, ordered level-major, then (y, x, a). Head outputs
      must use the same order.
    - ``assign(anchors, gt_boxes)``: (N,) long: index of the matched ground-truth box, -1 background, -2 ignored
      (between the thresholds). With no boxes every anchor is background.
    - ``encode(gt_boxes, anchors)``: regression targets (N, 4) of the boxes (one per anchor) w.r.t. the anchors.
    - ``decode(deltas, anchors)``: the inverse, boxes (N, 4).
    - ``nms(boxes, scores, labels, iou)``: indices kept by class-wise NMS, by decreasing score.
    """

    num_classes: int
    num_anchors: int
    channels: int

    def modules(self) -> dict[str, nn.Module]: ...

    def features(self, images: Tensor) -> list[Tensor]: ...

    def anchors(self, images: Tensor, features: list[Tensor]) -> Tensor: ...

    def assign(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor: ...

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor: ...

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor: ...

    def nms(self, boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor: ...


def _conv_bn_relu(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class TinyBackbone(nn.Module):
    """4 stages of 2 x conv-BN-ReLU (stride 2 first), then an FPN over stages 2-4 (strides 4, 8, 16)."""

    def __init__(self, channels: int = 64, widths: tuple[int, ...] = (16, 32, 64, 96)):
        super().__init__()
        stages, cin = [], 3
        for w in widths:
            stages.append(nn.Sequential(_conv_bn_relu(cin, w, 2), _conv_bn_relu(w, w)))
            cin = w
        self.stages = nn.ModuleList(stages)
        self.fpn = FeaturePyramidNetwork(list(widths[1:]), channels)

    def forward(self, x: Tensor) -> OrderedDict[str, Tensor]:
        outs = OrderedDict()
        for i, stage in enumerate(self.stages):
            x = stage(x)
            if i >= 1:
                outs[str(i - 1)] = x
        return self.fpn(outs)


def _resnet_fpn(name: str, channels: int, weights_path: str | Path | None) -> BackboneWithFPN:
    pretrained = weights_path is not None
    norm = FrozenBatchNorm2d if pretrained else nn.BatchNorm2d
    resnet = getattr(torchvision.models, name)(weights=None, norm_layer=norm)
    if pretrained:      # the classification task's checks: one-line errors naming task.params.weights_path
        what = f"torchvision {name}"
        state = read_state_dict(weights_path, WEIGHTS_FIELD, what)
        load_checked(resnet, state, WEIGHTS_FIELD, weights_path, what, ignore=("fc.",))
        # as torchvision for pretrained backbones: train layer2..layer4 only
        for pname, p in resnet.named_parameters():
            if not pname.startswith(("layer2", "layer3", "layer4")):
                p.requires_grad_(False)
    c5 = resnet.fc.in_features
    in_channels = [c5 // 4, c5 // 2, c5]
    return BackboneWithFPN(
        resnet, {"layer2": "0", "layer3": "1", "layer4": "2"}, in_channels, channels,
        extra_blocks=LastLevelP6P7(channels, channels),
    )


def _scales(size: float) -> tuple[float, ...]:
    return tuple(size * 2 ** (k / 3) for k in range(3))


class TorchvisionAdapter(nn.Module):
    """`DetectorAdapter` from torchvision parts (see the module docstring for the backbones).

    ``anchor_sizes``: per level, a tuple of anchor sizes (or one base size per level, expanded to 3 octave
    scales 2^0, 2^(1/3), 2^(2/3)); ratios are always (0.5, 1, 2). ``channels`` defaults to 64 for ``"tiny"`` and
    256 (RetinaNet's) for the ResNets.
    """

    def __init__(
        self,
        num_classes: int,
        backbone: str = "tiny",
        channels: int | None = None,
        anchor_sizes=None,
        weights_path: str | Path | None = None,
    ):
        super().__init__()
        if backbone not in BACKBONES:
            raise ValueError(f"backbone {backbone!r} not known; available: {', '.join(BACKBONES)}")
        if num_classes < 1:
            raise ValueError("num_classes must be >= 1")
        self.num_classes = int(num_classes)
        self.backbone_name = backbone
        if backbone == "tiny":
            if weights_path is not None:
                raise ValueError("weights_path is for the resnet backbones only")
            self.channels = int(channels or 64)
            self.backbone = TinyBackbone(self.channels)
            default_sizes, levels = (12, 24, 48), 3
        else:
            self.channels = int(channels or 256)
            self.backbone = _resnet_fpn(backbone, self.channels, weights_path)
            default_sizes, levels = (32, 64, 128, 256, 512), 5
        sizes = anchor_sizes if anchor_sizes is not None else default_sizes
        sizes = tuple(tuple(float(v) for v in s) if isinstance(s, (tuple, list)) else _scales(float(s)) for s in sizes)
        if len(sizes) != levels or len({len(s) for s in sizes}) != 1:
            raise ValueError(f"anchor_sizes: need {levels} levels with the same number of sizes each, got {sizes}")
        self.anchor_sizes = sizes
        self.anchor_generator = AnchorGenerator(sizes, (RATIOS,) * levels)
        self.num_anchors = self.anchor_generator.num_anchors_per_location()[0]
        self.matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
        self.box_coder = BoxCoder(weights=(1.0, 1.0, 1.0, 1.0))
        self._anchor_cache: dict[tuple, Tensor] = {}

    # -- the contract -------------------------------------------------------------------------------------------
    def modules(self) -> dict[str, nn.Module]:  # type: ignore[override]  (the adapter contract; see module doc)
        return {"backbone": self.backbone}

    def features(self, images: Tensor) -> list[Tensor]:
        return list(self.backbone(images).values())

    def anchors(self, images: Tensor, features: list[Tensor]) -> Tensor:
        key = (tuple(images.shape[-2:]), tuple(tuple(f.shape[-2:]) for f in features), images.device, features[0].dtype)
        cached = self._anchor_cache.get(key)
        if cached is None:
            image_list = ImageList(images[:1], [tuple(images.shape[-2:])])
            cached = self.anchor_generator(image_list, [f[:1] for f in features])[0]
            self._anchor_cache = {key: cached}  # one size at a time is the common case
        return cached

    def assign(self, anchors: Tensor, gt_boxes: Tensor) -> Tensor:
        if gt_boxes.numel() == 0:
            return torch.full((anchors.shape[0],), -1, dtype=torch.long, device=anchors.device)
        return self.matcher(box_iou(gt_boxes.to(anchors), anchors))

    def encode(self, gt_boxes: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.encode_single(gt_boxes.to(anchors), anchors)

    def decode(self, deltas: Tensor, anchors: Tensor) -> Tensor:
        return self.box_coder.decode_single(deltas, anchors)

    def nms(self, boxes: Tensor, scores: Tensor, labels: Tensor, iou: float) -> Tensor:
        return batched_nms(boxes, scores, labels, iou)

    def forward(self, images: Tensor) -> list[Tensor]:
        return self.features(images)
