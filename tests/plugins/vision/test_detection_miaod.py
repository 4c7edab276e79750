"""MI-AOD: the torchvision adapter, the head, the three stages' losses and frozen parameters, the image scores."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torchvision.ops import box_iou

from activelab.plugins.vision.detection import miaod as M
from activelab.plugins.vision.detection.adapter import DetectorAdapter, TorchvisionAdapter
from activelab.plugins.vision.detection.miaod import HeadOutputs, MIAODDetector

torch.set_num_threads(1)

C = 4
N64 = (16 * 16 + 8 * 8 + 4 * 4) * 9


def tiny(seed: int = 0, num_classes: int = C) -> MIAODDetector:
    torch.manual_seed(seed)
    return MIAODDetector(TorchvisionAdapter(num_classes), convs=2, width=32)


def hand(cls1, cls2, mil=None, level_sizes=None) -> HeadOutputs:
    """HeadOutputs from (B, N, C) logits; reg zeros, dummy anchors."""
    cls1, cls2 = torch.as_tensor(cls1, dtype=torch.float32), torch.as_tensor(cls2, dtype=torch.float32)
    b, n, _ = cls1.shape
    mil = torch.zeros_like(cls1) if mil is None else torch.as_tensor(mil, dtype=torch.float32)
    anchors = torch.tensor([[0.0, 0.0, 10.0, 10.0]]).repeat(n, 1)
    return HeadOutputs(cls1, cls2, torch.zeros(b, n, 4), mil, anchors, level_sizes or [n])


def squares(n: int, seed: int, size: int = 64):
    """Noise images with 1-2 bright squares (12-30 px); class 0 white, class 1 red."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randn(n, 3, size, size, generator=g) * 0.2
    targets = []
    for i in range(n):
        boxes, labels = [], []
        for _ in range(int(torch.randint(1, 3, (1,), generator=g))):
            s = int(torch.randint(12, 31, (1,), generator=g))
            x0, y0 = (int(v) for v in torch.randint(0, size - s + 1, (2,), generator=g))
            label = int(torch.randint(0, 2, (1,), generator=g))
            if label == 0:
                images[i, :, y0:y0 + s, x0:x0 + s] += 2.0
            else:
                images[i, 0, y0:y0 + s, x0:x0 + s] += 2.0
            boxes.append([x0, y0, x0 + s, y0 + s])
            labels.append(label)
        targets.append({"boxes": torch.tensor(boxes, dtype=torch.float32), "labels": torch.tensor(labels)})
    return images, targets


# -- adapter ---------------------------------------------------------------------------------------------------------
def test_tiny_adapter_shapes_and_anchor_count():
    adapter = TorchvisionAdapter(C)
    assert isinstance(adapter, DetectorAdapter)
    assert adapter.num_anchors == 9 and adapter.channels == 64 and "backbone" in adapter.modules()
    x = torch.randn(2, 3, 64, 64)
    feats = adapter.features(x)
    assert [tuple(f.shape) for f in feats] == [(2, 64, 16, 16), (2, 64, 8, 8), (2, 64, 4, 4)]
    anchors = adapter.anchors(x, feats)
    assert anchors.shape == (N64, 4)
    # level-major, then (y, x, a): the first 9 anchors share a centre, the 10th is one stride (4 px) to the right
    centres = (anchors[:, :2] + anchors[:, 2:]) / 2
    assert torch.allclose(centres[:9], centres[:1].expand(9, 2))
    assert torch.allclose(centres[9] - centres[0], torch.tensor([4.0, 0.0]))
    out = MIAODDetector(adapter, convs=1, width=16)(x)
    assert out.cls1.shape == (2, N64, C) and out.reg.shape == (2, N64, 4) and sum(out.level_sizes) == N64


def test_assign_encode_decode_round_trip():
    adapter = TorchvisionAdapter(C)
    x = torch.zeros(1, 3, 64, 64)
    anchors = adapter.anchors(x, adapter.features(x))
    gt = torch.tensor([[5.0, 6.0, 25.0, 30.0], [30.0, 28.0, 60.0, 50.0]])
    matched = adapter.assign(anchors, gt)
    assert matched.shape == (N64,) and matched.dtype == torch.long
    assert set(matched.unique().tolist()) <= {-2, -1, 0, 1} and {0, 1, -1} <= set(matched.unique().tolist())
    idx = matched.clamp(min=0)
    deltas = adapter.encode(gt[idx], anchors)
    assert torch.allclose(adapter.decode(deltas, anchors), gt[idx], atol=1e-3)
    assert (adapter.assign(anchors, torch.zeros(0, 4)) == -1).all()
    keep = adapter.nms(gt, torch.tensor([0.9, 0.8]), torch.tensor([0, 0]), 0.5)
    assert keep.tolist() == [0, 1]


# -- head --------------------------------------------------------------------------------------------------------------
def test_head_init_prior_bias_and_different_classifiers_and_determinism():
    m1, m2 = tiny(3), tiny(3)
    bias = -np.log(0.99 / 0.01)
    for name in ("f1", "f2", "f_mil"):
        assert torch.allclose(getattr(m1.head, name).out.bias, torch.full_like(m1.head.f1.out.bias, bias))
    assert not torch.equal(m1.head.f1.out.weight, m1.head.f2.out.weight)
    x = torch.randn(2, 3, 64, 64)
    o1, o2 = m1(x), m2(x)
    assert torch.equal(o1.cls1, o2.cls1) and torch.equal(o1.mil, o2.mil) and not torch.equal(o1.cls1, o1.cls2)
    groups = m1.parameter_groups()
    assert set(groups) == {"backbone", "f1", "f2", "f_r", "f_mil"}
    assert sum(p.numel() for g in groups.values() for p in g) == sum(p.numel() for p in m1.parameters())


# -- discrepancy losses ---------------------------------------------------------------------------------------------
def test_discrepancy_losses_signs_and_values():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 12, 3, generator=g)
    same = hand(logits, logits.clone(), torch.randn(2, 12, 3, generator=g), [8, 4])
    assert M.discrepancy_min_loss(same).item() == 0.0
    w = M.mil_weights(same)
    # identical classifiers: the max loss is its largest possible value, lam * sum_a mean_c w (per image mean)
    top = 0.5 * w.mean(dim=2).sum(dim=1).mean()
    assert torch.allclose(M.discrepancy_max_loss(same), top)
    planted = logits.clone()
    planted[:, :5, 0] += 4.0
    diff = hand(logits, planted, same.mil, [8, 4])
    assert M.discrepancy_min_loss(diff) > 0 and M.discrepancy_min_loss(diff) > M.discrepancy_min_loss(same)
    assert 0 <= M.discrepancy_max_loss(diff) < M.discrepancy_max_loss(same)
    assert torch.allclose(M.discrepancy_min_loss(diff, lam=1.0) + M.discrepancy_max_loss(diff, lam=1.0), top * 2)


def _weighted_discrepancy(model, images) -> float:
    with torch.no_grad():
        return float(M.discrepancy_min_loss(model(images), lam=1.0))


@pytest.mark.parametrize("stage", ["max", "min"])
def test_stage_step_moves_the_discrepancy(stage):
    model = tiny(1)
    with torch.no_grad():  # start from clearly different classifiers
        model.head.f2.out.weight.add_(torch.randn_like(model.head.f2.out.weight) * 0.2)
    model.train()
    unlabelled, _ = squares(8, seed=5)
    before = _weighted_discrepancy(model, unlabelled)
    model.set_stage(stage)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.05)
    loss_fn = M.discrepancy_max_loss if stage == "max" else M.discrepancy_min_loss
    for _ in range(3):
        opt.zero_grad(set_to_none=True)
        loss_fn(model(unlabelled)).backward()
        opt.step()
    after = _weighted_discrepancy(model, unlabelled)
    assert (after > before) if stage == "max" else (after < before), (before, after)


# -- stages and frozen parameters -----------------------------------------------------------------------------------
def _snapshot(model):
    return {name: [p.detach().clone() for p in ps] for name, ps in model.parameter_groups().items()}


def _buffers(model):
    return [b.clone() for _, b in model.adapter.backbone.named_buffers()]


def test_train_stage_updates_only_the_stage_parameters():
    model = tiny(2)
    labelled = squares(4, seed=1)
    unlabelled, _ = squares(4, seed=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    trained = {"label": set(M.GROUPS), "min": {"backbone", "f_r", "f_mil"}, "max": {"f1", "f2"}}
    # "label" first so every parameter has a momentum buffer and a gradient a naive step would reuse
    for stage in ("label", "min", "max", "label"):
        before, buffers = _snapshot(model), _buffers(model)
        parts = M.train_stage(model, stage, opt, [(labelled, unlabelled)])
        assert np.isfinite(parts["loss"]) and "det" in parts
        after = _snapshot(model)
        for group in M.GROUPS:
            same = [torch.equal(a, b) for a, b in zip(before[group], after[group])]
            if group in trained[stage]:
                assert not all(same), f"{stage}: nothing in {group} moved"
            else:
                assert all(same), f"{stage}: frozen {group} moved"
        if stage == "max":  # frozen backbone: batch-norm statistics frozen too
            assert all(torch.equal(a, b) for a, b in zip(buffers, _buffers(model)))
        assert all(p.grad is None for p in model.parameters())
    assert set(parts) >= {"det", "mil", "loss"}


def test_stage_loss_parts():
    model = tiny(0)
    labelled = squares(2, seed=1)
    unlabelled, _ = squares(2, seed=2)
    _, parts = M.stage_loss(model, "min", labelled, unlabelled)
    assert {"det", "mil", "dis", "mil_unlabelled", "loss"} <= set(parts)
    _, parts = M.stage_loss(model, "max", labelled, unlabelled)
    assert {"det", "dis", "loss"} <= set(parts) and "mil" not in parts
    with pytest.raises(ValueError, match="available: label, min, max"):
        M.stage_loss(model, "mx", labelled, unlabelled)


# -- MIL --------------------------------------------------------------------------------------------------------------
def test_mil_image_score_on_a_planted_example():
    n, c = 10, 6
    cls = torch.full((1, n, c), -5.0)
    cls[0, 2, 3] = 5.0  # one anchor confidently class 3 for both classifiers
    mil = torch.zeros(1, n, c)
    mil[0, 2, 3] = 4.0  # the MIL branch favours class 3 at that anchor
    mil[0, :, 5] += 0.5  # and mildly class 5 everywhere
    out = hand(cls, cls.clone(), mil)
    w = M.mil_weights(out)
    assert torch.allclose(w.sum(dim=(1, 2)), torch.ones(1))  # one level: weights sum to 1
    scores = M.image_class_scores(out)
    assert scores.shape == (1, c) and (scores >= 0).all() and (scores <= 1).all()
    assert int(scores.argmax()) == 3
    y3, y5 = torch.zeros(1, c), torch.zeros(1, c)
    y3[0, 3], y5[0, 5] = 1.0, 1.0
    assert M.mil_loss(out, y3) < M.mil_loss(out, y5)
    assert M.pseudo_image_labels(out).tolist() == [[0, 0, 0, 1, 0, 0]]


def test_mil_weights_softmax_per_level_and_classifier_detached():
    g = torch.Generator().manual_seed(0)
    cls1 = torch.randn(2, 7, 3, generator=g).requires_grad_()
    mil = torch.randn(2, 7, 3, generator=g).requires_grad_()
    out = HeadOutputs(cls1, cls1.detach() * 0.5, torch.zeros(2, 7, 4), mil, torch.zeros(7, 4), [4, 3])
    w = M.mil_weights(out)
    for level in (w[:, :4], w[:, 4:]):
        assert torch.allclose(level.sum(dim=(1, 2)), torch.ones(2))
    M.image_class_scores(out).sum().backward()
    assert cls1.grad is None and mil.grad is not None


# -- scores ---------------------------------------------------------------------------------------------------------
def test_image_uncertainty_ranking_topk_and_mil():
    n, c = 10, 2
    consistent = torch.full((1, n, c), -3.0)
    disagree1, disagree2 = consistent.clone(), consistent.clone()
    disagree1[0, :5, 0], disagree2[0, :5, 0] = 3.0, -3.0
    out = hand(torch.cat([consistent, disagree1]), torch.cat([consistent, disagree2]))
    u = M.image_uncertainty(out, top_k=5)
    assert u[1] > u[0]
    # top-k mean == the mean of the k largest anchor discrepancies; k clipped to N
    g = torch.Generator().manual_seed(1)
    rnd = hand(torch.randn(3, 50, 4, generator=g), torch.randn(3, 50, 4, generator=g), level_sizes=[30, 20])
    d = M.anchor_discrepancy(rnd)
    for k in (1, 7, 50, 10_000):
        kk = min(k, 50)
        expected = torch.sort(d, dim=1, descending=True).values[:, :kk].mean(dim=1)
        assert torch.allclose(M.image_uncertainty(rnd, top_k=k), expected)
    # mil=True: image A disagrees strongly on class 0 of anchor 0, but its MIL weight sits on class 1 there and
    # its other anchors score higher; image B disagrees less, on a salient anchor/class -> ranking flips
    a1, a2 = torch.full((1, n, c), 3.0), torch.full((1, n, c), 3.0)
    a1[0, 0], a2[0, 0] = torch.tensor([2.0, -4.0]), torch.tensor([-2.0, -4.0])
    b1, b2 = torch.full((1, n, c), -4.0), torch.full((1, n, c), -4.0)
    b1[0, 0, 0], b2[0, 0, 0] = 1.0, -1.0
    mil = torch.zeros(2, n, c)
    mil[0, 0] = torch.tensor([-4.0, 4.0])
    mil[1, 0] = torch.tensor([4.0, -4.0])
    out = hand(torch.cat([a1, b1]), torch.cat([a2, b2]), mil)
    plain, weighted = M.image_uncertainty(out, top_k=1), M.image_uncertainty(out, top_k=1, mil=True)
    assert plain[0] > plain[1] and weighted[1] > weighted[0]
    # uniform MIL weights change nothing
    flat = hand(torch.zeros(1, n, c), torch.ones(1, n, c))
    assert torch.allclose(M.image_uncertainty(flat, 3, mil=True), M.image_uncertainty(flat, 3))


def test_anchor_entropy():
    certain = torch.full((1, 6, 3), -8.0)
    unsure = torch.zeros(1, 6, 3)
    out = hand(torch.cat([certain, unsure]), torch.cat([certain, unsure]))
    for reduce in ("mean", "max"):
        h = M.anchor_entropy(out, reduce)
        assert h.shape == (2,) and h[1] > h[0] and torch.isclose(h[1], torch.tensor(np.log(2.0), dtype=h.dtype))
    with pytest.raises(ValueError):
        M.anchor_entropy(out, "median")


def test_detect_boxes_inside_threshold_and_nms():
    adapter = TorchvisionAdapter(C)
    x = torch.zeros(1, 3, 64, 64)
    anchors = adapter.anchors(x, adapter.features(x))
    n = anchors.shape[0]
    cls = torch.full((1, n, C), -10.0)
    centre = ((anchors[:, :2] + anchors[:, 2:]) / 2)
    a = int(torch.nonzero((centre[:, 0] == 32) & (centre[:, 1] == 32))[4])  # a central anchor
    overlap = torch.nonzero(box_iou(anchors[a:a + 1], anchors)[0] > 0.55).squeeze(1)
    b = int(overlap[overlap != a][0])
    cls[0, a, 1], cls[0, b, 1] = 3.0, 2.0  # two overlapping same-class boxes: NMS keeps one
    cls[0, b, 2] = 2.0  # the same box, another class: kept
    cls[0, 0, 0] = 1.0  # the corner anchor (partly outside): clipped
    cls[0, 5, 3] = -3.2  # sigmoid ~0.04: under the threshold
    out = HeadOutputs(cls, cls.clone(), torch.zeros(1, n, 4), torch.zeros(1, n, C), anchors, [2304, 576, 144])
    (det,) = M.detect(out, adapter, (64, 64), score_threshold=0.05, nms_iou=0.5)
    assert det["boxes"].dtype == np.float32 and det["labels"].dtype == np.int64
    assert (det["boxes"] >= 0).all() and (det["boxes"][:, [0, 2]] <= 64).all() and (det["boxes"][:, [1, 3]] <= 64).all()
    assert (det["scores"] > 0.05).all() and np.all(np.diff(det["scores"]) <= 0)
    assert sorted(det["labels"].tolist()) == [0, 1, 2]
    assert np.allclose(det["boxes"][det["labels"] == 1][0], anchors[a].numpy())
    capped = M.detect(out, adapter, (64, 64), max_detections=2)[0]
    assert len(capped["scores"]) == 2


# -- smoke training ------------------------------------------------------------------------------------------------
def test_label_stage_training_reduces_detection_loss():
    torch.manual_seed(0)
    model = MIAODDetector(TorchvisionAdapter(2), convs=2, width=32)
    images, targets = squares(32, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=1e-4)
    batches = [((images[i:i + 8], targets[i:i + 8]), None) for i in range(0, 32, 8)]
    first = M.train_stage(model, "label", opt, batches * 3)["det"]
    for _ in range(6):
        M.train_stage(model, "label", opt, batches * 3)
    last = M.train_stage(model, "label", opt, batches * 4)["det"]  # 3 + 18 + 4 = 100 steps in all, ~25 epochs
    assert last < 0.6 * first, (first, last)
    model.eval()
    with torch.no_grad():
        out = model(images[:8])
    dets = M.detect(out, model.adapter, (64, 64))
    assert len(dets) == 8 and all((d["boxes"] <= 64).all() for d in dets)


def test_resnet18_adapter_with_local_weights_keeps_fixed_layers_fixed(tmp_path):
    import torchvision

    torch.manual_seed(0)
    path = tmp_path / "r18.pt"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), path)
    adapter = TorchvisionAdapter(3, backbone="resnet18", weights_path=str(path))
    assert adapter.channels == 256 and adapter.num_anchors == 9
    model = MIAODDetector(adapter, convs=1, width=32)
    x = torch.randn(2, 3, 128, 128)
    out = model(x)
    assert out.cls1.shape[1] == sum((128 // s) ** 2 * 9 for s in (8, 16, 32, 64)) + 9  # P7: 1x1
    assert len(out.level_sizes) == 5
    model.set_stage("label")
    conv1 = adapter.backbone.body.conv1.weight
    assert not conv1.requires_grad and all(p is not conv1 for p in model.parameter_groups()["backbone"])
    loss, parts = M.stage_loss(model, "label", (x, [{"boxes": torch.tensor([[10.0, 10, 70, 90]]),
                                                     "labels": torch.tensor([2])}] * 2), None)
    loss.backward()
    assert conv1.grad is None and adapter.backbone.body.layer4[0].conv1.weight.grad is not None
    with pytest.raises(ValueError, match="available: tiny, resnet18, resnet50"):
        TorchvisionAdapter(3, backbone="resnet19")
