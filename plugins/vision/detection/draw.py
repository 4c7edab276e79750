"""What the model asked about: a grid of the selected images with its predicted boxes and the true ones."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Sequence

import numpy as np

from .data import DetectionImage, load_image

PREDICTED = "#ff3b30"     # predicted boxes: thick, labelled "class score"
TRUE = "#30d158"          # true boxes: thin, dashed


def _short(text: str, width: int = 28) -> str:
    return text if len(text) <= width else "..." + text[-(width - 3):]


def draw_selection(images: Sequence[DetectionImage], predictions: Sequence[dict] | None, classes: Sequence[str],
                   path: Path, title: str = "", score_threshold: float = 0.3, max_images: int = 24,
                   scores: Sequence[float] | None = None) -> Path:
    """Write a PNG grid of (at most ``max_images`` of) ``images``; returns ``path``.

    Predicted boxes (``predictions[i]`` for ``images[i]``: ``boxes`` x0, y0, x1, y1, ``scores``, ``labels``) with a
    score >= ``score_threshold`` are drawn with their class name and score; true boxes thin in another colour.
    Each tile is titled with the item id and, when ``scores`` is given, its acquisition score; the tiles are then
    ordered by that score, highest first (so the images kept by ``max_images`` are the ones the model most wanted
    labelled). The file is written
    to a temporary name first and moved into place, so a reader never sees half a PNG.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    path = Path(path)
    if predictions is not None and len(predictions) != len(images):
        raise ValueError(f"{len(predictions)} predictions for {len(images)} images")
    if scores is not None and len(scores) != len(images):
        raise ValueError(f"{len(scores)} scores for {len(images)} images")
    if scores is not None:
        order = np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable")
        images = [images[i] for i in order]
        scores = [scores[i] for i in order]
        predictions = None if predictions is None else [predictions[i] for i in order]
    n = min(len(images), max_images)
    cols = max(1, min(6, n))
    rows = max(1, math.ceil(n / cols))
    fig = Figure(figsize=(2.2 * cols, 2.4 * rows + (0.4 if title else 0.0)), dpi=100)
    FigureCanvasAgg(fig)
    if title:
        fig.suptitle(title, fontsize=10)
    if n == 0:
        fig.text(0.5, 0.5, "no images", ha="center", va="center")
    for i in range(n):
        image = images[i]
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(load_image(image).permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        scale = max(image.width, image.height) / 64.0        # line widths and fonts in tile units
        for x0, y0, x1, y1 in np.asarray(image.boxes, dtype=float).reshape(-1, 4):
            ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=TRUE,
                                   linewidth=0.8, linestyle="--"))
        if predictions is not None:
            pred = predictions[i]
            boxes = np.asarray(pred["boxes"], dtype=float).reshape(-1, 4)
            confidences = np.asarray(pred["scores"], dtype=float).reshape(-1)
            labels = np.asarray(pred["labels"]).reshape(-1)
            for (x0, y0, x1, y1), confidence, label in zip(boxes, confidences, labels):
                if confidence < score_threshold:
                    continue
                ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, edgecolor=PREDICTED,
                                       linewidth=1.4))
                name = classes[int(label)] if 0 <= int(label) < len(classes) else str(int(label))
                ax.text(x0 - 0.5, y0 - 0.5 - scale, f"{name} {confidence:.2f}", color="white", fontsize=6,
                        va="bottom", ha="left", clip_on=True,
                        bbox={"facecolor": PREDICTED, "edgecolor": "none", "pad": 0.8, "alpha": 0.8})
        caption = _short(image.id)
        if scores is not None:
            caption += f"\nscore {float(scores[i]):.4g}"
        ax.set_title(caption, fontsize=7)
        ax.set_xlim(-0.5, image.width - 0.5)
        ax.set_ylim(image.height - 0.5, -0.5)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp.png")
    try:
        fig.savefig(tmp, format="png")
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path
