"""COCO box mAP of predictions against :class:`~.data.DetectionImage` ground truth, computed by pycocotools."""
from __future__ import annotations

import contextlib
import io
from typing import Sequence

import numpy as np

from .data import DetectionImage


def _ground_truth(images: Sequence[DetectionImage], classes: Sequence[str]) -> dict:
    """An in-memory COCO dataset: image ids 1..N in the order given, category id = class index + 1."""
    dataset: dict = {"info": {}, "images": [], "annotations": [],
                     "categories": [{"id": c + 1, "name": str(name)} for c, name in enumerate(classes)]}
    for n, image in enumerate(images, start=1):
        dataset["images"].append({"id": n, "width": image.width, "height": image.height, "file_name": image.id})
        for (x0, y0, x1, y1), label in zip(np.asarray(image.boxes, dtype=np.float64).reshape(-1, 4),
                                           np.asarray(image.labels).reshape(-1)):
            w, h = x1 - x0, y1 - y0
            dataset["annotations"].append({
                "id": len(dataset["annotations"]) + 1, "image_id": n, "category_id": int(label) + 1,
                "bbox": [float(x0), float(y0), float(w), float(h)], "area": float(w * h), "iscrowd": 0})
    return dataset


def _results(predictions: Sequence[dict]) -> list[dict]:
    results = []
    for n, pred in enumerate(predictions, start=1):
        boxes = np.asarray(pred["boxes"], dtype=np.float64).reshape(-1, 4)
        scores = np.asarray(pred["scores"], dtype=np.float64).reshape(-1)
        labels = np.asarray(pred["labels"]).reshape(-1)
        if not len(boxes) == len(scores) == len(labels):
            raise ValueError(f"prediction {n - 1}: {len(boxes)} boxes, {len(scores)} scores, {len(labels)} labels")
        for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels):
            results.append({"image_id": n, "category_id": int(label) + 1, "score": float(score),
                            "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)]})
    return results


def coco_map(images: Sequence[DetectionImage], predictions: Sequence[dict], classes: Sequence[str]
             ) -> dict[str, float]:
    """``{"mAP", "mAP50", "mAP75"}``: COCO's AP@[.50:.95], AP@.50 and AP@.75 over all images (100 detections each).

    ``predictions[i]`` belongs to ``images[i]``: ``boxes`` (K, 4) x0, y0, x1, y1 pixels, ``scores`` (K,) and
    ``labels`` (K,) class indices. No predictions at all score 0; so does "no ground truth" (pycocotools' -1).
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    if len(predictions) != len(images):
        raise ValueError(f"{len(predictions)} predictions for {len(images)} images")
    zeros = {"mAP": 0.0, "mAP50": 0.0, "mAP75": 0.0}
    results = _results(predictions)
    if not results or not images:
        return zeros
    with contextlib.redirect_stdout(io.StringIO()):
        truth = COCO()
        truth.dataset = _ground_truth(images, classes)
        truth.createIndex()
        detections = truth.loadRes(results)
        evaluator = COCOeval(truth, detections, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = [float(s) for s in evaluator.stats[:3]]
    return {key: max(value, 0.0) for key, value in zip(("mAP", "mAP50", "mAP75"), stats)}
