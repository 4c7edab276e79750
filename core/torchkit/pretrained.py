"""Local Hugging Face checkpoints (``from_pretrained`` of a folder, never a download): what the plugins that load
them share -- the transformers import with a one-line error naming the extra, loading without transformers' bars
and warnings, the weight files a checkpoint folder must hold, and the one-line text of a loading error."""
from __future__ import annotations

import contextlib
from pathlib import Path
from typing import Any, Iterator

from activelab.errors import UserError

#: A checkpoint folder holds one of these (a single file or a sharded index).
WEIGHTS = ("model.safetensors", "model.safetensors.index.json", "pytorch_model.bin", "pytorch_model.bin.index.json")


def require_transformers(field: str, install: str) -> Any:
    """The ``transformers`` module, or a one-line :class:`UserError` naming the recipe field and the install."""
    try:
        import transformers
    except ImportError:
        raise UserError(f"{field}.kind: huggingface needs the transformers package: {install}") from None
    return transformers


def first_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of a loading error, for a one-line user error."""
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def has_weights(folder: Path) -> bool:
    return any((Path(folder) / name).is_file() for name in WEIGHTS)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """transformers' loading bars and warnings off while loading (the run's own output stays one line per event);
    the caller's settings are restored after."""
    from transformers.utils import logging

    verbosity, bars = logging.get_verbosity(), logging.is_progress_bar_enabled()
    logging.set_verbosity_error()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        logging.set_verbosity(verbosity)
        if bars:
            logging.enable_progress_bar()


#: The files of a checkpoint folder that :func:`fingerprint` reads (configs, weights, tokenizer models, vocabularies).
FINGERPRINTED = (".json", ".safetensors", ".bin", ".model", ".spm", ".txt")


def fingerprint(path: Path) -> str:
    """SHA-256 (hex) of a weights file, or over the names and contents of a checkpoint folder's
    :data:`FINGERPRINTED` files (top level, sorted by name): a run records it and refuses to resume on other
    weights."""
    import hashlib

    path = Path(path)
    digest = hashlib.sha256()
    files = [path] if path.is_file() else sorted(
        p for p in path.iterdir() if p.is_file() and p.suffix in FINGERPRINTED and not p.name.startswith("."))
    for file in files:
        digest.update(file.name.encode() + b"\0")
        with file.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()
