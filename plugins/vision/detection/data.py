"""Detection data: COCO-format annotation files read (with pycocotools) into :class:`DetectionImage` lists.

A recipe names the files under ``task.params.data`` (:class:`DetectionDataConfig`): a COCO JSON for the pool,
optionally a held-out COCO JSON for the test set (else a seeded ``test_fraction`` of the pool file), and caps for
CPU-sized runs. Every problem in a file is collected before anything is raised: :class:`CocoError` carries the
whole list in ``problems`` and its one-line message is the first problem (``data/ann.json: annotation 17 (image 3):
box [10, 5, 0, 8] has zero width (and 2 more problems)``).

Every image file is checked at load, not when the task first uses it (possibly after people labelled): it must
decode, its values must have a scale to [0, 1] (16-bit and float images, see :mod:`..images`), and its width and
height must be those of its COCO record; every bad file is reported. Each file is decoded once per load, JPEGs at
1/8 scale by their decoder's draft mode (which still reads every byte), on up to 8 threads: about 3 ms of CPU per
VOC-sized JPEG, so VOC 07+12's 21,500 images cost about a minute of CPU time at each start or resume.

``generate`` (:class:`GenerateConfig`) makes the synthetic demo set (:mod:`.synth`) on first use when the
annotation files are missing, atomically (:func:`ensure_generated`); without it, a missing demo file
(``.../digits_detection/train.json``) names the command that makes it.

Conventions: boxes are ``x0, y0, x1, y1`` float32 pixels (COCO's ``[x, y, w, h]`` converted, clipped to the image
after a 1-pixel tolerance check); labels are contiguous class indices in the order of the category ids; an item's
id is the image's ``file_name`` exactly as the JSON writes it. Images without annotations are kept (no boxes).
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator
from pydantic_core import PydanticCustomError

from activelab.errors import ProblemsError, UserError
from activelab.recipe import DataPath

from ..images import ImageDepthError, check_image_file, read_image
from . import synth

FIELD = "task.params.data"      # where these settings live in a recipe; user errors name it
TOLERANCE = 1.0                 # pixels a box may stick out of its image (rounding in exporters)
REQUIRED = ("images", "annotations", "categories")
CHECK_THREADS = 8               # threads decoding the image files at load


class CocoError(ProblemsError):
    """Every problem found in one COCO file (or pair of files); ``str(err)`` is the first one, on one line."""

    def __init__(self, problems: list[str]):
        super().__init__(problems, empty="invalid COCO data")


@dataclass(frozen=True, eq=False)
class DetectionImage:
    """One image and its true boxes. Compared and hashed by identity (``==`` on its arrays would be ambiguous)."""

    id: str              # item id: the image's file_name as written in the COCO JSON (stable, unique)
    path: Path           # absolute path of the image file
    width: int
    height: int
    boxes: np.ndarray    # (N, 4) float32, x0, y0, x1, y1 in pixels
    labels: np.ndarray   # (N,) int64, class index 0..C-1
    coco_id: int         # the image id in the COCO file


@dataclass
class DetectionData:
    classes: list[str]            # category names, index = class index
    category_ids: list[int]       # COCO category id of each class index
    pool: list[DetectionImage]
    test: list[DetectionImage]


class GenerateConfig(BaseModel):
    """Make the demo data on first use (``task.params.data.generate``): the arguments of
    ``python -m activelab.plugins.vision.detection.synth`` (same names, same defaults, so ``generate: {}`` is the
    documented command)."""

    model_config = ConfigDict(extra="forbid")

    images: int = Field(800, ge=2)                    # canvases in all
    size: int = Field(64, ge=synth.MIN_SIZE)          # canvas side in pixels
    source: Literal["digits", "mnist", "fashion_mnist"] = "digits"
    seed: int = 0
    test_images: int | None = Field(None, ge=1)       # canvases in test.json (default 20%)

    @model_validator(mode="after")
    def _leaves_both_splits(self) -> "GenerateConfig":
        n_test = int(round(0.2 * self.images)) if self.test_images is None else self.test_images
        if not 1 <= n_test <= self.images - 1:
            raise PydanticCustomError("generate_split", "test_images {n_test} of {images} images leaves no test set "
                                      "or no pool", {"n_test": n_test, "images": self.images})
        return self


class DetectionDataConfig(BaseModel):
    """Where the COCO files are and how much of them to use (``task.params.data`` in a recipe).

    With ``generate``, a missing ``annotations`` file is made on first use by the synthetic-data generator
    (:mod:`.synth`), into the annotation file's folder: ``annotations`` must then be ``<folder>/train.json``,
    ``test_annotations`` unset or ``<folder>/test.json``, and the image folders unset. The folder appears all at
    once (written next to it and renamed into place); one that exists but does not hold the set asked for is
    reported, never overwritten.
    """

    model_config = ConfigDict(extra="forbid")

    annotations: DataPath                      # COCO JSON for the pool (relative paths resolve against the CWD)
    images: DataPath | None = None             # image folder; default: the JSON's folder
    test_annotations: DataPath | None = None   # held-out COCO JSON; if None, split the pool file by test_fraction
    test_images: DataPath | None = None        # image folder of the test JSON; default: that JSON's folder
    test_fraction: float = Field(0.2, gt=0, lt=1)
    limit: int | None = Field(None, ge=1)        # use at most this many pool images (seeded random subset)
    test_limit: int | None = Field(None, ge=1)   # use at most this many test images (keeps CPU evaluation short)
    iscrowd: Literal["ignore", "keep"] = "ignore"   # crowd annotations dropped (as COCO training usually does)
    generate: GenerateConfig | None = None     # make the (synthetic demo) data when annotations is missing

    @model_validator(mode="after")
    def _generated_layout(self) -> "DetectionDataConfig":
        if self.generate is None:
            return self
        if self.annotations.name != "train.json":
            raise PydanticCustomError("generate_layout", "generate writes <folder>/train.json and test.json: "
                                      "annotations must name train.json (got {path})", {"path": str(self.annotations)})
        test = self.annotations.with_name("test.json")
        if self.test_annotations is not None and self.test_annotations != test:
            raise PydanticCustomError("generate_layout", "generate writes {test} next to train.json: "
                                      "test_annotations must be that file or unset (got {path})",
                                      {"test": str(test), "path": str(self.test_annotations)})
        if self.images is not None or self.test_images is not None:
            raise PydanticCustomError("generate_layout", "generate writes the images next to train.json: "
                                      "leave images and test_images unset")
        return self


# ------------------------------------------------------------------------------------------ reading
def _fmt(value: Any) -> str:
    """A value as it would appear in a message: numbers without trailing zeros, the rest as JSON."""
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_fmt(v) for v in value) + "]"
    if _is_number(value):
        return str(int(value)) if isinstance(value, float) and value.is_integer() else repr(value)
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _shown(text: str, quote: bool = False) -> str:
    """A name from the data as a message shows it: as it is (in quotes with ``quote``), or as a Python string literal
    with escapes when it holds a line break or another unprintable character (a message is one line)."""
    if not text.isprintable():
        return repr(text)
    return f"'{text}'" if quote else text


def _is_id(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


DEMO_FOLDER = "digits_detection"    # the demo recipes' data folder (data/digits_detection)
SYNTH_COMMAND = "python -m activelab.plugins.vision.detection.synth"


def _demo_hint(path: Path) -> str:
    """For a missing file of the demo data: how to make it."""
    if path.parent.name != DEMO_FOLDER or path.name not in ("train.json", "test.json"):
        return ""
    return (f"; make the demo data with `{SYNTH_COMMAND} {path.parent}`, or add `generate: {{}}` to {FIELD} to "
            f"have it made on first use")


def _read_json(path: Path, where: str) -> dict:
    if not path.is_file():
        raise CocoError([f"{where}: file not found" + ("" if path.is_absolute() else f" ({path.absolute()})")
                         + _demo_hint(path)])
    try:
        with open(path, "rb") as fh:
            data = json.load(fh)
    except json.JSONDecodeError as exc:
        raise CocoError([f"{where}: not JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})"]) from None
    except RecursionError:
        raise CocoError([f"{where}: JSON nested too deeply to read"]) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise CocoError([f"{where}: cannot read: {exc}".splitlines()[0]]) from None
    except ValueError:           # an integer longer than Python converts (sys.get_int_max_str_digits)
        raise CocoError([f"{where}: not JSON (a number with too many digits)"]) from None
    if not isinstance(data, dict):
        raise CocoError([f"{where}: not a COCO annotation file (a JSON {type(data).__name__}, expected an object "
                         f"with 'images', 'annotations' and 'categories')"])
    missing = [key for key in REQUIRED if key not in data]
    if missing:
        raise CocoError([f"{where}: not a COCO annotation file: no " + ", ".join(repr(k) for k in missing)])
    wrong = [key for key in REQUIRED if not isinstance(data[key], list)]
    if wrong:
        raise CocoError([f"{where}: not a COCO annotation file: " + ", ".join(repr(k) for k in wrong)
                         + " must be a list"])
    return data


def _is_file(path: Path) -> bool:
    """``path.is_file()``, but False where the system refuses to look the name up (too long, ...) instead of an
    OSError: a file name in the data that is no file is a problem to report, not a crash."""
    try:
        return path.is_file()
    except OSError:
        return False


def _check_file(iid: int, name: str, path: Path, size: tuple[float, float] | None, where: str) -> str | None:
    """The problem with one image file (unreadable, values without a scale, or not the size of its record)."""
    try:
        width, height = check_image_file(path)
    except ImageDepthError as exc:
        return f"{where}: image {iid}: file {_shown(name)}: {exc}".splitlines()[0]
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
        return (f"{where}: image {iid}: file {_shown(name)} cannot be read ({type(exc).__name__}: {exc})"
                .splitlines()[0])
    if size is not None and (width, height) != (int(round(size[0])), int(round(size[1]))):
        return (f"{where}: image {iid}: file {_shown(name)} is {width}x{height} pixels but the annotation file says "
                f"{_fmt(size[0])}x{_fmt(size[1])}")
    return None


def _check_files(files: list[tuple[int, str, Path]], sizes: dict[int, tuple[float, float]], where: str) -> list[str]:
    """Every image file decoded once (JPEGs at 1/8 scale, see :func:`..images.check_image_file`) and its size
    compared with its record, on a few threads (PIL decodes without the GIL); problems in the order of ``files``."""
    if not files:
        return []
    check = lambda entry: _check_file(*entry, sizes.get(entry[0]), where)  # noqa: E731
    workers = min(CHECK_THREADS, os.cpu_count() or 1, len(files))
    if workers <= 1:
        found = [check(entry) for entry in files]
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            found = list(pool.map(check, files, chunksize=16))
    return [problem for problem in found if problem is not None]


def _check(data: dict, where: str, folder: Path) -> tuple[list[str], dict[int, Path], dict[int, tuple[float, ...]]]:
    """All problems in a parsed COCO dict, the absolute path of each image and each usable box (clipped)."""
    problems: list[str] = []

    # categories
    cat_ids: set[int] = set()
    names: dict[str, int] = {}
    for n, cat in enumerate(data["categories"]):
        if not isinstance(cat, dict) or not _is_id(cat.get("id")):
            problems.append(f"{where}: category #{n}: needs an integer 'id'")
            continue
        cid = cat["id"]
        if not isinstance(cat.get("name"), str) or not cat["name"]:
            problems.append(f"{where}: category {cid}: needs a 'name'")
        elif cat["name"] in names:
            problems.append(f"{where}: category {cid}: name {_shown(cat['name'], quote=True)} is also category "
                            f"{names[cat['name']]}")
        else:
            names[cat["name"]] = cid
        if cid in cat_ids:
            problems.append(f"{where}: category {cid}: duplicate category id")
        cat_ids.add(cid)
    if not data["categories"]:
        problems.append(f"{where}: no categories")

    # images
    sizes: dict[int, tuple[float, float]] = {}
    paths: dict[int, Path] = {}
    file_names: dict[str, int] = {}
    seen: set[int] = set()
    to_open: list[tuple[int, str, Path]] = []
    for n, img in enumerate(data["images"]):
        if not isinstance(img, dict) or not _is_id(img.get("id")):
            problems.append(f"{where}: image #{n}: needs an integer 'id'")
            continue
        iid = img["id"]
        if iid in seen:
            problems.append(f"{where}: image {iid}: duplicate image id")
            continue
        seen.add(iid)
        width, height = img.get("width"), img.get("height")
        bad = [f"{k} {_fmt(v) if v is not None else 'missing'}" for k, v in (("width", width), ("height", height))
               if not _is_number(v) or not math.isfinite(v) or v <= 0]
        if bad:
            problems.append(f"{where}: image {iid}: " + " and ".join(bad) + " (must be a positive number)")
        else:
            sizes[iid] = (float(width), float(height))
        name = img.get("file_name")
        if not isinstance(name, str) or not name:
            problems.append(f"{where}: image {iid}: needs a 'file_name'")
            continue
        if name in file_names:
            problems.append(f"{where}: image {iid}: file name {_shown(name)} is also used by image {file_names[name]}")
            continue
        file_names[name] = iid
        path = Path(os.path.normpath((folder / name).absolute()))
        if not _is_file(path):
            problems.append(f"{where}: image {iid}: file {_shown(name)} not found ({_shown(str(path))})")
        else:
            to_open.append((iid, name, path))
        paths[iid] = path
    problems.extend(_check_files(to_open, sizes, where))

    # annotations
    boxes: dict[int, tuple[float, ...]] = {}
    ann_ids: set[int] = set()
    for n, ann in enumerate(data["annotations"]):
        if not isinstance(ann, dict) or not _is_id(ann.get("id")):
            problems.append(f"{where}: annotation #{n}: needs an integer 'id'")
            continue
        aid = ann["id"]
        iid = ann.get("image_id")
        if not _is_id(iid) or iid not in seen:
            problems.append(f"{where}: annotation {aid}: image id {_fmt(iid)} is not in 'images'")
            continue
        at = f"{where}: annotation {aid} (image {iid})"
        if aid in ann_ids:
            problems.append(f"{at}: duplicate annotation id")
            continue
        ann_ids.add(aid)
        cid = ann.get("category_id")
        if not _is_id(cid) or cid not in cat_ids:
            known = ", ".join(str(c) for c in sorted(cat_ids)[:12]) + (", ..." if len(cat_ids) > 12 else "")
            problems.append(f"{at}: unknown category id {_fmt(cid)} (categories: {known})")
        if "iscrowd" in ann and ann["iscrowd"] not in (0, 1):
            problems.append(f"{at}: iscrowd {_fmt(ann['iscrowd'])} must be 0 or 1")
        bbox = ann.get("bbox")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_is_number(v) for v in bbox):
            problems.append(f"{at}: box {_fmt(bbox) if 'bbox' in ann else 'missing'} is not 4 numbers "
                            f"[x, y, width, height]")
            continue
        if not all(math.isfinite(v) for v in bbox):
            problems.append(f"{at}: box {_fmt(bbox)} has a non-finite value")
            continue
        x, y, w, h = (float(v) for v in bbox)
        if w <= 0 or h <= 0:
            side = "width" if w <= 0 else "height"
            problems.append(f"{at}: box {_fmt(bbox)} has {'zero' if min(w, h) == 0 else 'negative'} {side}")
            continue
        if iid not in sizes:
            continue    # the image's size is already reported
        width, height = (float(round(v)) for v in sizes[iid])    # in whole pixels, as the checked file is
        outside = [text for text, bad in (
            (f"x {_fmt(x)} < 0", x < -TOLERANCE), (f"y {_fmt(y)} < 0", y < -TOLERANCE),
            (f"x + width {_fmt(x + w)} > {_fmt(width)}", x + w > width + TOLERANCE),
            (f"y + height {_fmt(y + h)} > {_fmt(height)}", y + h > height + TOLERANCE)) if bad]
        x0, y0, x1, y1 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
        if outside or x1 <= x0 or y1 <= y0:
            detail = ", ".join(outside) or "nothing left inside"
            problems.append(f"{at}: box {_fmt(bbox)} lies outside the {_fmt(width)}x{_fmt(height)} image ({detail})")
            continue
        boxes[aid] = (x0, y0, x1, y1)
    return problems, paths, boxes


def load_coco(annotations: Path, images: Path | None = None, iscrowd: Literal["ignore", "keep"] = "ignore",
              ) -> tuple[list[str], list[int], list[DetectionImage]]:
    """Read and check one COCO file: ``(class names, COCO category id of each class, images)``.

    Classes are the categories sorted by COCO id; images are sorted by COCO image id. ``images`` is the folder the
    ``file_name`` entries are relative to (default: the JSON's folder). Any problem raises :class:`CocoError`.
    """
    from pycocotools.coco import COCO

    annotations = Path(annotations)
    where = str(annotations)
    data = _read_json(annotations, where)
    folder = Path(images) if images is not None else annotations.parent
    if images is not None and not folder.is_dir():
        raise CocoError([f"{where}: image folder {folder} does not exist"])
    problems, paths, boxes = _check(data, where, folder)
    if problems:
        raise CocoError(problems)

    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    category_ids = sorted(coco.cats)
    classes = [coco.cats[c]["name"] for c in category_ids]
    index = {c: i for i, c in enumerate(category_ids)}

    result = []
    for iid in sorted(coco.imgs):
        img = coco.imgs[iid]
        anns = [a for a in coco.imgToAnns.get(iid, []) if iscrowd == "keep" or not a.get("iscrowd", 0)]
        result.append(DetectionImage(
            id=img["file_name"], path=paths[iid], width=int(round(img["width"])), height=int(round(img["height"])),
            boxes=np.asarray([boxes[a["id"]] for a in anns], dtype=np.float32).reshape(-1, 4),
            labels=np.asarray([index[a["category_id"]] for a in anns], dtype=np.int64),
            coco_id=iid))
    return classes, category_ids, result


def _subset(items: list[DetectionImage], n: int, rng: np.random.Generator) -> list[DetectionImage]:
    if n >= len(items):
        return items
    return [items[i] for i in np.sort(rng.choice(len(items), n, replace=False))]


def ensure_generated(cfg: DetectionDataConfig) -> None:
    """With ``cfg.generate``: make the data when the annotation folder does not hold it yet (see
    :class:`DetectionDataConfig`); a folder that holds something else is a UserError, left as it is."""
    gen = cfg.generate
    if gen is None:
        return
    folder = cfg.annotations.parent
    settings = synth.settings(gen.images, gen.size, gen.source, gen.seed, gen.test_images)
    if synth.is_up_to_date(folder, settings):
        return
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        stored = synth.stored_settings(folder)
        if stored is not None and stored != settings:
            changed = ", ".join(f"{key} {_fmt(stored.get(key))} there, {_fmt(value)} asked"
                                for key, value in settings.items() if stored.get(key) != value)
            raise UserError(f"{FIELD}.generate: {folder} holds data generated with other settings ({changed}); "
                            f"delete the folder to have it made again, or make generate match")
        state = "has no synth.json" if stored is None else "lacks some of its files"
        raise UserError(f"{FIELD}.generate: {folder} exists but is not a complete generated set (it {state}); "
                        f"delete it to have it made again, or remove generate to use its files as they are")
    started = time.perf_counter()
    try:
        synth.make_atomically(folder, gen.images, gen.size, gen.source, gen.seed, gen.test_images)
    except UserError as exc:
        message = str(exc)
        prefix = f"--source {gen.source}: "
        field = "generate.source" if message.startswith(prefix) else "generate"
        raise UserError(f"{FIELD}.{field}: {message.removeprefix(prefix)}") from None
    print(f"{FIELD}.generate: made {folder} ({gen.images} images of {gen.size}x{gen.size} px) in "
          f"{time.perf_counter() - started:.1f} s", file=sys.stderr)


def load_detection_data(cfg: DetectionDataConfig, seed: int) -> DetectionData:
    """The pool and the test set, seeded by ``seed`` (the same seed gives the same split and subsets); with
    ``cfg.generate``, the data is made first if missing (:func:`ensure_generated`)."""
    ensure_generated(cfg)
    rng = np.random.default_rng(seed)
    pool_file = Path(cfg.annotations).expanduser()
    classes, category_ids, pool = load_coco(
        pool_file, Path(cfg.images).expanduser() if cfg.images else None, cfg.iscrowd)
    if cfg.test_annotations is not None:
        test_file = Path(cfg.test_annotations).expanduser()
        if test_file.absolute() == pool_file.absolute():
            raise UserError(f"{FIELD}.test_annotations: {test_file} is also the pool file; evaluating on the pool "
                            f"would measure training data")
        test_classes, test_ids, test = load_coco(
            test_file, Path(cfg.test_images).expanduser() if cfg.test_images else None, cfg.iscrowd)
        if dict(zip(test_ids, test_classes)) != dict(zip(category_ids, classes)):
            only_pool = sorted(set(zip(category_ids, classes)) - set(zip(test_ids, test_classes)))
            only_test = sorted(set(zip(test_ids, test_classes)) - set(zip(category_ids, classes)))
            listed = "; ".join(part for part in (
                "only in the pool: " + ", ".join(f"{c} {n!r}" for c, n in only_pool) if only_pool else "",
                "only in the test file: " + ", ".join(f"{c} {n!r}" for c, n in only_test) if only_test else "")
                if part)
            raise CocoError([f"{test_file}: categories differ from those of {pool_file} ({listed})"])
        shared = sorted({str(i.path) for i in pool} & {str(i.path) for i in test})
        if shared:
            raise CocoError([f"{test_file}: image {_shown(p)} is also in the pool file {pool_file}" for p in shared])
    else:
        if cfg.test_images is not None:
            raise UserError(f"{FIELD}.test_images: only used with test_annotations")
        n_test = int(round(cfg.test_fraction * len(pool)))
        if n_test < 1 or n_test > len(pool) - 1:
            raise UserError(f"{FIELD}.test_fraction: {cfg.test_fraction} of {len(pool)} images in {pool_file} "
                            f"leaves no test set or no pool")
        order = rng.permutation(len(pool))
        test = [pool[i] for i in np.sort(order[:n_test])]
        pool = [pool[i] for i in np.sort(order[n_test:])]
    if not pool or not test:
        raise UserError(f"{FIELD}: too few images ({len(pool)} in the pool, {len(test)} in the test set)")
    if cfg.limit is not None:
        pool = _subset(pool, cfg.limit, rng)
    if cfg.test_limit is not None:
        test = _subset(test, cfg.test_limit, rng)
    return DetectionData(classes=classes, category_ids=category_ids, pool=pool, test=test)


def fingerprint(data: DetectionData) -> str:
    """sha256 (hex) of what the task learns from: the classes, and per pool and test image (in order) its id, COCO
    id, size, boxes, labels and the size in bytes of its file. Paths are left out (the same data moved elsewhere
    keeps its fingerprint); a file missing now is a UserError naming it."""
    digest = hashlib.sha256()
    digest.update(json.dumps({"classes": data.classes, "category_ids": data.category_ids}).encode())
    for split, images in (("pool", data.pool), ("test", data.test)):
        digest.update(json.dumps([split, len(images)]).encode())
        for image in images:
            try:
                nbytes = image.path.stat().st_size
            except OSError as exc:
                raise UserError(f"{image.path}: image {image.id}: cannot read: {exc.strerror}") from None
            digest.update(json.dumps([image.id, image.coco_id, image.width, image.height, nbytes,
                                      len(image.boxes)]).encode())
            digest.update(np.ascontiguousarray(image.boxes, dtype="<f4").tobytes())
            digest.update(np.ascontiguousarray(image.labels, dtype="<i8").tobytes())
    return digest.hexdigest()


def load_image(image: DetectionImage) -> torch.Tensor:
    """The image as float32 (3, H, W) in [0, 1], RGB (grey, palette, 16-bit and float images converted as
    :mod:`..images` says)."""
    array = read_image(image.path, 3, str(image.path), name=image.id)
    if array.shape[1:] != (image.height, image.width):
        raise UserError(f"{image.path}: image {image.id} is {array.shape[2]}x{array.shape[1]} pixels but its "
                        f"annotation file says {image.width}x{image.height}")
    return torch.from_numpy(np.ascontiguousarray(array))
