"""The optional mmdet adapter: the contract, anchors / assignment / box coding / NMS against the torchvision
adapter, and the same selection logic on both. Skipped where mmdet 3.x and mmcv 2.1 (with its ops) are not
installed, as in CI; see the README for the install recipe."""
from __future__ import annotations

import pytest

pytest.importorskip("mmdet")
pytest.importorskip("mmcv.ops")

import torch  # noqa: E402
from torchvision.ops import box_iou  # noqa: E402

from activelab.errors import UserError  # noqa: E402
from activelab.plugins.vision.detection import miaod as M  # noqa: E402
from activelab.plugins.vision.detection.adapter import DetectorAdapter, TorchvisionAdapter  # noqa: E402
from activelab.plugins.vision.detection.miaod import HeadOutputs, MIAODDetector  # noqa: E402
from activelab.plugins.vision.detection.mmdet_adapter import MMDetAdapter  # noqa: E402

torch.set_num_threads(1)

C = 3


def n_anchors(side: int) -> int:
    return sum(((side + s - 1) // s) ** 2 for s in (8, 16, 32, 64, 128)) * 9


def pair(side: int = 128, round_anchors: bool = True, anchor_sizes=None, seed: int = 0):
    """(mmdet adapter, torchvision adapter, their anchors for a side x side image), both ResNet-18 + FPN, 64 ch."""
    torch.manual_seed(seed)
    mm = MMDetAdapter(C, backbone="resnet18", channels=64, anchor_sizes=anchor_sizes, round_anchors=round_anchors)
    tv = TorchvisionAdapter(C, backbone="resnet18", channels=64, anchor_sizes=anchor_sizes)
    x = torch.zeros(1, 3, side, side)
    with torch.no_grad():
        return mm, tv, mm.anchors(x, mm.features(x)), tv.anchors(x, tv.features(x))


def random_boxes(n: int, side: float, g: torch.Generator, min_size: float = 8.0) -> torch.Tensor:
    wh = min_size + torch.rand(n, 2, generator=g) * (side / 2 - min_size)
    xy = torch.rand(n, 2, generator=g) * (side - wh)
    return torch.cat([xy, xy + wh], dim=1)


# -- the contract ----------------------------------------------------------------------------------------------------
def test_adapter_satisfies_the_protocol_and_shapes_are_consistent():
    torch.manual_seed(0)
    adapter = MMDetAdapter(C, backbone="resnet18")
    assert isinstance(adapter, DetectorAdapter)
    assert adapter.num_classes == C and adapter.num_anchors == 9 and adapter.channels == 256
    assert set(adapter.modules()) == {"backbone"}
    x = torch.randn(2, 3, 128, 96)
    feats = adapter.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 256, 128 // s, (96 + s - 1) // s) for s in (8, 16, 32, 64, 128)]
    anchors = adapter.anchors(x, feats)
    assert anchors.shape == (sum(f.shape[-2] * f.shape[-1] for f in feats) * 9, 4)
    # level-major, then (y, x, a): 9 anchors per centre, the next centre one stride (8 px) to the right, and the
    # first anchor of the second row one stride down
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.allclose(centres[:9], centres[:1].expand(9, 2))
    assert torch.allclose(centres[9] - centres[0], torch.tensor([8.0, 0.0]))
    w = feats[0].shape[-1]
    assert torch.allclose(centres[w * 9] - centres[0], torch.tensor([0.0, 8.0]))
    model = MIAODDetector(adapter, convs=1, width=16)
    out = model(x)
    assert out.cls1.shape == (2, anchors.shape[0], C) and out.level_sizes == [f.shape[-2] * f.shape[-1] * 9
                                                                               for f in feats]
    # every backbone and neck parameter is in the "backbone" group
    assert len(model.parameter_groups()["backbone"]) == len(list(adapter.backbone.parameters()))


def test_resnet50_default_is_retinanet():
    adapter = MMDetAdapter(2)
    cfg = adapter.configs
    assert cfg["backbone"]["depth"] == 50 and cfg["neck"]["in_channels"] == [256, 512, 1024, 2048]
    assert cfg["neck"]["start_level"] == 1 and cfg["neck"]["add_extra_convs"] == "on_input"
    assert cfg["anchors"]["octave_base_scale"] == 4 and cfg["anchors"]["strides"] == [8, 16, 32, 64, 128]
    assert adapter.channels == 256 and adapter.num_anchors == 9


def test_bad_settings_and_missing_mmdet(monkeypatch):
    with pytest.raises(ValueError, match="available: resnet18, resnet50"):
        MMDetAdapter(C, backbone="tiny")
    with pytest.raises(ValueError, match="anchor_sizes"):
        MMDetAdapter(C, backbone="resnet18", anchor_sizes=[32, 64, 128])
    monkeypatch.setitem(__import__("sys").modules, "mmdet", None)  # as if not installed
    with pytest.raises(UserError, match="needs mmdet 3.x and mmcv 2.1: see README"):
        MMDetAdapter(C, backbone="resnet18")


def test_assign_encode_decode_round_trip():
    mm, _, anchors, _ = pair(128)
    gt = torch.tensor([[5.0, 6.0, 45.0, 50.0], [60.0, 58.0, 120.0, 110.0]])
    matched = mm.assign(anchors, gt)
    assert matched.shape == (n_anchors(128),) and matched.dtype == torch.long
    assert set(matched.unique().tolist()) == {-2, -1, 0, 1}
    pos = matched >= 0
    assert (box_iou(gt, anchors).amax(0)[matched == -1] < 0.4).all()
    assert (box_iou(gt, anchors).amax(0)[matched == -2] >= 0.4).all()
    idx = matched.clamp(min=0)
    deltas = mm.encode(gt[idx], anchors)
    assert deltas.shape == anchors.shape
    assert torch.allclose(mm.decode(deltas, anchors)[pos], gt[idx][pos], atol=1e-3)
    assert (mm.assign(anchors, torch.zeros(0, 4)) == -1).all()
    assert mm.decode(torch.zeros(0, 4), anchors[:0]).shape == (0, 4)
    keep = mm.nms(gt, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5)
    assert keep.tolist() == [0, 1]
    assert mm.nms(torch.zeros(0, 4), torch.zeros(0), torch.zeros(0, dtype=torch.long), 0.5).numel() == 0


# -- the same as the torchvision adapter -------------------------------------------------------------------------------
@pytest.mark.parametrize("side,anchor_sizes", [(128, None), (256, None), (128, [16, 32, 64, 128, 256])])
def test_anchor_sets_coincide(side, anchor_sizes):
    _, _, mm, tv = pair(side, round_anchors=True, anchor_sizes=anchor_sizes)
    assert mm.shape == tv.shape == (n_anchors(side), 4)
    assert torch.allclose(mm, tv, atol=1e-4)  # same boxes in the same order
    _, _, exact, _ = pair(side, round_anchors=False, anchor_sizes=anchor_sizes)
    # mmdet keeps sub-pixel base anchors; torchvision rounds them: at most half a pixel apart, equal once rounded
    assert (exact - tv).abs().max() <= 0.5 + 1e-4 and (exact - tv).abs().max() > 0
    assert torch.allclose(exact.round(), tv, atol=1e-4)


def test_assign_agrees_with_torchvision_up_to_low_quality_tie_breaking():
    mm, tv, anchors, tv_anchors = pair(128)
    assert torch.allclose(anchors, tv_anchors)
    g = torch.Generator().manual_seed(0)
    differing = 0
    for trial in range(60):
        gt = random_boxes(1 + trial % 6, 128, g)
        a, b = mm.assign(anchors, gt), tv.assign(anchors, gt)
        # background, ignored and positive anchors are the same sets
        assert torch.equal(a == -1, b == -1) and torch.equal(a == -2, b == -2)
        diff = (a != b).nonzero().squeeze(1)
        if diff.numel():
            differing += diff.numel()
            iou = box_iou(gt, anchors)
            for k in diff.tolist():
                # mmdet: the anchor is a best anchor of its box (low-quality match; a later box wins a tie);
                # torchvision: it goes to the box it overlaps most
                assert a[k] >= 0 and b[k] >= 0
                assert torch.isclose(iou[a[k], k], iou[a[k]].max())
                assert iou[b[k], k] == iou[:, k].max()
        if gt.shape[0] == 1:
            assert torch.equal(a, b)
    assert differing < 0.01 * 60 * anchors.shape[0]


def test_encode_decode_and_nms_agree_with_torchvision():
    mm, tv, anchors, _ = pair(128)
    g = torch.Generator().manual_seed(1)
    gt = random_boxes(anchors.shape[0], 128, g)
    assert torch.allclose(mm.encode(gt, anchors), tv.encode(gt, anchors), atol=1e-5)
    deltas = torch.randn(anchors.shape[0], 4, generator=g)
    assert torch.allclose(mm.decode(deltas, anchors), tv.decode(deltas, anchors), rtol=1e-5, atol=1e-3)
    boxes = random_boxes(300, 128, g)
    scores = torch.rand(300, generator=g)
    labels = torch.randint(0, C, (300,), generator=g)
    for iou in (0.3, 0.5, 0.7):
        assert mm.nms(boxes, scores, labels, iou).tolist() == tv.nms(boxes, scores, labels, iou).tolist()


def shared_outputs(side: int = 128, b: int = 3):
    """One head's outputs on fake features, paired with each adapter's anchors (the same head weights)."""
    mm, tv, mm_anchors, tv_anchors = pair(side)
    torch.manual_seed(5)
    model_mm = MIAODDetector(mm, convs=1, width=32)
    model_tv = MIAODDetector(tv, convs=1, width=32)
    model_tv.head.load_state_dict(model_mm.head.state_dict())
    g = torch.Generator().manual_seed(2)
    feats = [torch.randn(b, 64, -(-side // s), -(-side // s), generator=g) for s in (8, 16, 32, 64, 128)]
    with torch.no_grad():
        # larger logits than the prior bias gives, so that scores spread and detections exist
        for m in (model_mm, model_tv):
            for name in ("f1", "f2", "f_mil"):
                getattr(m.head, name).out.bias.fill_(-1.0)
        heads = [m.head(feats) for m in (model_mm, model_tv)]
    outs = [HeadOutputs(*h[:4], anchors, h[4]) for h, anchors in zip(heads, (mm_anchors, tv_anchors))]
    return mm, tv, outs


def test_same_selection_logic_on_both_adapters():
    mm, tv, (out_mm, out_tv) = shared_outputs()
    assert torch.equal(out_mm.cls1, out_tv.cls1) and out_mm.level_sizes == out_tv.level_sizes
    # the image scores are functions of the head outputs alone: the adapter never enters them
    for mil in (False, True):
        for k in (1, 10, 10 ** 6):
            assert torch.equal(M.image_uncertainty(out_mm, k, mil=mil), M.image_uncertainty(out_tv, k, mil=mil))
    for reduce in ("mean", "max"):
        assert torch.equal(M.anchor_entropy(out_mm, reduce), M.anchor_entropy(out_tv, reduce))
    assert torch.equal(M.image_class_scores(out_mm), M.image_class_scores(out_tv))
    # so the selection (top images by score) is the same
    u = M.image_uncertainty(out_mm, 10)
    assert torch.equal(u.argsort(descending=True), M.image_uncertainty(out_tv, 10).argsort(descending=True))
    # detection (decode + NMS through each adapter) gives the same boxes
    d_mm = M.detect(out_mm, mm, (128, 128), score_threshold=0.2)
    d_tv = M.detect(out_tv, tv, (128, 128), score_threshold=0.2)
    assert sum(len(d["scores"]) for d in d_mm) > 0
    for a, b in zip(d_mm, d_tv):
        assert (a["labels"] == b["labels"]).all() and (abs(a["scores"] - b["scores"]) < 1e-6).all()
        assert abs(a["boxes"] - b["boxes"]).max(initial=0.0) < 1e-3


def test_same_detection_loss_with_one_box_per_image():
    mm, tv, (out_mm, out_tv) = shared_outputs(b=2)
    targets = [{"boxes": torch.tensor([[10.0, 12.0, 70.0, 90.0]]), "labels": torch.tensor([2])},
               {"boxes": torch.tensor([[40.0, 30.0, 100.0, 64.0]]), "labels": torch.tensor([0])}]
    t_mm, t_tv = M.detection_terms(out_mm, targets, mm), M.detection_terms(out_tv, targets, tv)
    for k in ("cls1", "cls2", "box"):
        assert torch.isclose(t_mm[k], t_tv[k], rtol=1e-5), k


def test_training_step_and_pretrained_backbone(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    adapter = MMDetAdapter(C, backbone="resnet18", channels=64, weights_path=str(path))
    model = MIAODDetector(adapter, convs=1, width=32)
    conv1 = adapter.backbone.backbone.conv1.weight
    assert torch.equal(conv1, torch.load(path, weights_only=True)["conv1.weight"])
    assert not conv1.requires_grad and all(p is not conv1 for p in model.parameter_groups()["backbone"])
    x = torch.randn(2, 3, 128, 128)
    targets = [{"boxes": torch.tensor([[10.0, 10, 70, 90]]), "labels": torch.tensor([2])}] * 2
    model.set_stage("label")
    model.train()
    assert not adapter.backbone.backbone.bn1.training  # norm_eval, as mmdet's RetinaNet
    loss, parts = M.stage_loss(model, "label", (x, targets), None)
    loss.backward()
    assert torch.isfinite(loss) and parts["det"] > 0
    assert conv1.grad is None and adapter.backbone.backbone.layer4[0].conv1.weight.grad is not None
    assert adapter.backbone.neck.fpn_convs[0].conv.weight.grad is not None
    with pytest.raises(ValueError, match="not a ResNet state dict"):
        torch.save({"x": torch.zeros(1)}, tmp_path / "bad.pt")
        MMDetAdapter(C, backbone="resnet18", weights_path=str(tmp_path / "bad.pt"))


def test_the_detection_task_trains_selects_and_evaluates_on_the_mmdet_adapter(tmp_path):
    """`adapter: mmdet` end to end through the task: a full MI-AOD fit (all three stages), the four outputs per
    image and COCO mAP, on small generated canvases."""
    import numpy as np

    from activelab.plugins.vision.detection.synth import make_digit_canvases
    from activelab.plugins.vision.detection.task import DetectionTask
    from activelab.protocol import Env
    from activelab.testing import make_context, true_labels

    folder = make_digit_canvases(tmp_path / "canvases", images=24, size=32, seed=0)
    config = DetectionTask.Config(
        data={"annotations": str(folder / "train.json"), "test_annotations": str(folder / "test.json")},
        adapter="mmdet", backbone="resnet18", channels=32, head_convs=1, head_width=16, optimizer="adam",
        schedule={"label_epochs": 1, "cycles": 1, "min_epochs": 1, "max_epochs": 1, "min_steps": 2},
        batch_size=4, unlabelled_batch_size=4, top_k=50)
    task = DetectionTask(config, Env(seed=0, progress=False))
    ids = list(task.pool_ids())
    stats = task.fit(true_labels(task, ids[:8]), make_context(round=0))
    assert {"label_loss", "min_dis", "max_dis"} <= set(stats)
    chunks = list(task.predict(ids[8:], task.outputs))
    for name in task.outputs:
        values = np.concatenate([c[name] for c in chunks])
        assert values.shape == (len(ids) - 8,) and np.all(np.isfinite(values))
    assert 0.0 <= task.evaluate()["mAP50"] <= 1.0
