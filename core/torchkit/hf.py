"""Hugging Face datasets written by ``save_to_disk``: opened in one place, with one rule for the splits.

Every plugin's ``kind: hf_disk`` reader calls :func:`load_from_disk` and so follows the same rule:

- A folder holding one ``Dataset`` (no splits) is the pool, and there is no test split; naming ``split`` or
  ``test_split`` for it is an error.
- A ``DatasetDict``: the pool is ``split`` when given, else the split named ``train``, else the one split not
  named ``test`` (a dict of a single split: that split). With several candidates and none named ``train``,
  ``split`` must be given.
- The test set is ``test_split`` when given, else the split named ``test`` when there is one and it is not the
  pool; else there is none, and the reader holds out a fraction of the pool as it does for other sources. A test
  split that is the pool split is refused (the evaluation would score training data).

Every problem is a one-line :class:`~activelab.errors.UserError` that starts with the recipe field to change
(``task.params.data.split: 'dev' not found in /data/ds; available splits: train, test``): the datasets package
missing, a missing folder, a folder that is not a saved dataset, an unknown split, a missing column
(:func:`require_columns`, listing the available ones).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from activelab.errors import UserError

INSTALL = "pip install 'activelab[hf]'"


@dataclass
class Splits:
    """What :func:`load_from_disk` found: the pool and test datasets (``datasets.Dataset``), the names of their
    splits (None for a dataset without splits, and for no test set) and where each came from, for messages."""

    path: Path
    pool: Any
    test: Any | None
    pool_split: str | None
    test_split: str | None

    @property
    def pool_where(self) -> str:
        return str(self.path) if self.pool_split is None else f"{self.path} (split '{self.pool_split}')"

    @property
    def test_where(self) -> str | None:
        return None if self.test_split is None else f"{self.path} (test split '{self.test_split}')"


def _available(splits: list[str]) -> str:
    return f"available splits: {', '.join(splits)}"


def _pool_split(splits: list[str], split: str | None, path: Path, field: str) -> str:
    if split is not None:
        if split not in splits:
            raise UserError(f"{field}.split: '{split}' not found in {path}; {_available(splits)}")
        return split
    if "train" in splits:
        return "train"
    candidates = [s for s in splits if s != "test"] or splits
    if len(candidates) == 1:
        return candidates[0]
    raise UserError(f"{field}.split: {path} has several splits and none named 'train': name the pool split; "
                    f"{_available(splits)}")


def load_from_disk(path: str | Path | None, split: str | None = None, test_split: str | None = None, *,
                   field: str, path_field: str = "path") -> Splits:
    """Open the dataset ``save_to_disk`` wrote at ``path`` and pick its pool and test splits by the module's rule.

    ``field`` is the recipe section the settings come from (``"task.params.data"``) and ``path_field`` the name
    of the path setting in it; both start every error message."""
    if path is None or str(path) == "":
        raise UserError(f"{field}.{path_field}: required for kind hf_disk (a folder written by save_to_disk)")
    try:
        import datasets
    except ImportError:
        raise UserError(f"{field}.kind: hf_disk needs the datasets package: {INSTALL}") from None
    path = Path(path).expanduser()
    if not path.is_dir():
        raise UserError(f"{field}.{path_field}: folder {path} does not exist")
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as exc:  # the package raises FileNotFoundError, ValueError, OSError, JSON errors, ...
        raise UserError(f"{field}.{path_field}: {path} is not a dataset saved with save_to_disk "
                        f"({type(exc).__name__}: {exc})".splitlines()[0]) from None
    if not isinstance(loaded, datasets.DatasetDict):
        for name, value in (("split", split), ("test_split", test_split)):
            if value is not None:
                raise UserError(f"{field}.{name}: {path} is a single dataset without splits")
        return Splits(path, loaded, None, None, None)
    splits = list(loaded)
    pool = _pool_split(splits, split, path, field)
    test = test_split if test_split is not None else ("test" if "test" in splits and pool != "test" else None)
    if test is not None:
        if test not in splits:
            raise UserError(f"{field}.test_split: '{test}' not found in {path}; {_available(splits)}")
        if test == pool:
            raise UserError(f"{field}.test_split: '{test}' is also the pool split; evaluating on the pool would "
                            f"score the training data")
    return Splits(path, loaded[pool], None if test is None else loaded[test], pool, test)


def require_columns(ds: Any, columns: Mapping[str, str], field: str, where: str) -> None:
    """Refuse ``ds`` unless it has every column named in ``columns`` (setting name -> column name)."""
    have = list(ds.column_names)
    for name, column in columns.items():
        if column not in have:
            raise UserError(f"{field}.{name}: column '{column}' not in {where}; available columns: {', '.join(have)}")
