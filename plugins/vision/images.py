"""Image decoding shared by the vision tasks (classification, restoration, detection): one place that turns a PIL
image of any mode into float32 pixels in [0, 1], without clipping high-bit-depth data to 8 bits.

How each PIL mode is read:

- 8-bit modes (``1``, ``L``, ``P``, ``LA``, ``PA``, ``RGB``, ``RGBA``, ``CMYK``, ``YCbCr``, ...): converted by PIL to
  ``L`` (one channel) or ``RGB`` (three), resized in that mode, divided by 255: what the tasks always did (a palette
  image is looked up, alpha is dropped, CMYK is converted to RGB). 16-bit-per-channel RGB(A) PNGs arrive here too:
  PIL opens them as 8-bit RGB(A) by keeping the high byte of each value, which is a scaling, not a clip.
- 16-bit unsigned greyscale (``I;16``, ``I;16L``, ``I;16B``, ``I;16N``: 16-bit PNG, TIFF and PGM files): value / 65535.
- 32-bit signed integers (``I``, and any other ``I;...`` mode): PIL's mode for 16-bit data from some writers (a PGM
  with maxval above 255 arrives as ``I``, scaled to 0..65535). Read as 16-bit, value / 65535, when every value lies
  in 0..65535; refused otherwise (the range found is in the message): there is no scale to guess.
- 32-bit float (``F``, e.g. a float TIFF): used as is when every value lies in [0, 1]; refused otherwise, with the
  range found (a float image in [0, 255] or in physical units has no unambiguous scale, so it is never clipped
  or guessed; save it as 8 or 16 bits, or scale it to [0, 1]). NaN or infinite values are refused too.

High-depth greyscale images are resized in floating point (PIL mode ``F``) and, for three channels, repeated into
R, G and B as PIL's ``L`` to ``RGB`` conversion does. A 16-bit image equal to an 8-bit one times 257 therefore reads
as the 8-bit image, up to the 8-bit rounding of the 8-bit image's resize.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from activelab.errors import UserError

UINT16_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N"})
UINT16_MAX = 65535.0


class ImageDepthError(ValueError):
    """An image whose pixel values have no unambiguous scale to [0, 1] (the message gives the mode and range)."""


def is_high_depth(mode: str) -> bool:
    """True for the modes that must not go through PIL's 8-bit ``L`` / ``RGB`` conversion."""
    return mode == "F" or mode == "I" or mode.startswith("I;")


def _unit_grey(img) -> np.ndarray:
    """A high-depth greyscale image as float32 H x W in [0, 1] (see the module docstring), or ImageDepthError."""
    mode = img.mode
    # 16-bit modes arrive as (big- or little-endian) uint16, F as float32; PIL converts the other I modes to F
    values = np.asarray(img if mode == "F" or mode in UINT16_MODES else img.convert("F")).astype(np.float32)
    if mode in UINT16_MODES:
        return values / np.float32(UINT16_MAX)
    finite = np.isfinite(values)
    if not finite.all():
        raise ImageDepthError(f"{_describe(mode)} has {int((~finite).sum())} NaN or infinite value(s)")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if mode == "F":
        if low < 0.0 or high > 1.0:
            raise ImageDepthError(f"{_describe(mode)} with values in [{low:g}, {high:g}]; only float images in [0, 1] "
                                  f"are read (scale it to [0, 1], or save it as 8 or 16 bits)")
        return values
    if low < 0.0 or high > UINT16_MAX:
        raise ImageDepthError(f"{_describe(mode)} with values in [{low:g}, {high:g}]; "
                              f"integer images are read as 16-bit "
                              f"(0..65535) and these values do not fit (save it as 8 or 16 bits)")
    return values / np.float32(UINT16_MAX)


def _describe(mode: str) -> str:
    return "32-bit float image" if mode == "F" else f"integer image (PIL mode {mode})"


def _resize_float(grey: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    from PIL import Image
    if (grey.shape[1], grey.shape[0]) == tuple(size):
        return grey
    return np.asarray(Image.fromarray(np.ascontiguousarray(grey, dtype=np.float32))
                      .resize(size, Image.BILINEAR), dtype=np.float32)


def scaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """The (width, height) of an image resized by ``scale`` (at least one pixel each)."""
    return max(1, round(width * scale)), max(1, round(height * scale))


def to_array(img, channels: int, size: tuple[int, int] | None = None, scale: float | None = None) -> np.ndarray:
    """``img`` (a PIL image of any mode) as float32 C x H x W in [0, 1], C = ``channels`` (1 or 3).

    ``size`` (width, height) resizes to that size, ``scale`` by that factor (1.0: not at all); bilinear either way.
    Raises :class:`ImageDepthError` for values with no scale to [0, 1] (see the module docstring).
    """
    from PIL import Image
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if size is not None and scale is not None:
        raise ValueError("give size or scale, not both")
    if scale is not None and scale != 1.0:
        size = scaled_size(img.width, img.height, scale)
    if is_high_depth(img.mode):
        grey = _unit_grey(img)
        if size is not None:
            grey = _resize_float(grey, size)
        return grey[None] if channels == 1 else np.repeat(grey[None], 3, axis=0)
    img = img.convert("L" if channels == 1 else "RGB")
    if size is not None:
        img = img.resize(size, Image.BILINEAR)
    array = np.asarray(img, dtype=np.float32) / 255.0
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def array_image(array: Any):
    """A numpy image (H x W, H x W x C or C x H x W, C in 1, 3, 4) as a PIL image that :func:`to_array` reads with
    the right scale: uint8 as it is; uint16 greyscale as 16-bit and uint16 colour scaled by 1/257 (as PIL reads a
    16-bit RGB PNG); float greyscale in [0, 1] as float. Other integer and float arrays are read as before, on the
    0..255 scale (values all in 0..1 count as 0..1, times 255), and must lie in 0..255, else
    :class:`ImageDepthError` with the range found (they used to be clipped)."""
    from PIL import Image
    array = np.asarray(array)
    if array.ndim == 3 and array.shape[0] in (1, 3) and array.shape[-1] not in (1, 3):
        array = array.transpose(1, 2, 0)          # C x H x W -> H x W x C
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if array.dtype == np.uint8:
        return Image.fromarray(array)
    if array.dtype == np.uint16:
        if array.ndim == 2:
            return Image.fromarray(np.ascontiguousarray(array))               # mode I;16
        return Image.fromarray(np.round(array / 257.0).astype(np.uint8))
    if array.dtype.kind not in "buif":
        raise ImageDepthError(f"an array of {array.dtype} is not an image")
    values = array.astype(np.float64)
    if array.size and not np.isfinite(values).all():
        raise ImageDepthError("array image has NaN or infinite values")
    low, high = (float(values.min()), float(values.max())) if array.size else (0.0, 0.0)
    if array.ndim == 2 and array.dtype.kind == "f" and low >= 0.0 and high <= 1.0:
        return Image.fromarray(np.ascontiguousarray(array, dtype=np.float32))
    if low < 0.0 or high > 255.0:
        raise ImageDepthError(f"{array.dtype} array image with values in [{low:g}, {high:g}]; expected 0..255 "
                              f"(or 0..1, or a uint16 image)")
    scale = 255.0 if high <= 1.0 else 1.0
    return Image.fromarray((array.astype(np.float32) * scale).astype(np.uint8))


def read_image(path: str | Path, channels: int, where: str, *, size: tuple[int, int] | None = None,
               scale: float | None = None, name: str | None = None) -> np.ndarray:
    """One image file as float32 C x H x W in [0, 1] (:func:`to_array`). A file PIL cannot read, or one whose values
    have no scale, is a one-line :class:`UserError` starting with ``where`` and naming the file (``name``, default
    its path)."""
    from PIL import Image
    shown = name if name is not None else str(path)
    shown = shown if shown.isprintable() else repr(shown)       # a line break in a name would cut the message
    try:
        with Image.open(path) as img:
            img.load()
            return to_array(img, channels, size=size, scale=scale)
    except ImageDepthError as exc:
        raise UserError(f"{where}: image {shown}: {exc}".splitlines()[0]) from None
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ValueError ...
        raise UserError(f"{where}: cannot read image {shown}: {type(exc).__name__}: {exc}".splitlines()[0]) from None


def check_image_file(path: str | Path) -> tuple[int, int]:
    """Open and decode an image cheaply; returns its (width, height) from the header.

    Every byte of the file is decoded (a truncated or corrupt file fails), but JPEGs at 1/8 scale (their decoder's
    draft mode still reads all the data; it skips most of the inverse DCT), and high-depth values are checked as
    :func:`to_array` would (:class:`ImageDepthError`). Other failures are PIL's exceptions.
    """
    from PIL import Image
    with Image.open(path) as img:
        width, height = img.size
        if img.format == "JPEG":
            img.draft(img.mode, (max(1, width // 8), max(1, height // 8)))
        img.load()
        if is_high_depth(img.mode):
            _unit_grey(img)
    return width, height


def write_preview(pixels: np.ndarray, path: Path, min_size: int = 128) -> Path:
    """Write float pixels in [0, 1] (C x H x W, C = 1 or 3) as a PNG at ``path`` (folders made as needed), upscaled
    by a whole factor (nearest neighbour) to about ``min_size`` pixels, for a person to see; returns ``path``. Left
    as it is when the file exists (the tasks' previews of in-memory images are written on first request)."""
    if path.exists():
        return path
    from PIL import Image
    path.parent.mkdir(parents=True, exist_ok=True)
    array = (np.clip(pixels, 0.0, 1.0) * 255).round().astype(np.uint8)
    img = Image.fromarray(array[0] if array.shape[0] == 1 else array.transpose(1, 2, 0))
    scale = max(1, min_size // max(img.size))
    img.resize((img.width * scale, img.height * scale), Image.NEAREST).save(path)
    return path
