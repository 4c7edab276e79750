"""The type of the vision recipes' filesystem-path fields.

A :data:`DataPath` is a :class:`pathlib.Path` (pydantic turns the recipe's string into one) with ``~`` expanded at
validation, so that the core can pin every ``Path`` field of a recipe to an absolute path when a run is created
(``Path("~/x").absolute()`` would be ``<cwd>/~/x``) and a resume from another folder reads the same files. An empty
string is refused (``Path("")`` would silently mean the current folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, BeforeValidator
from pydantic_core import PydanticCustomError


def _not_empty(value: Any) -> Any:
    if isinstance(value, str) and not value.strip():
        raise PydanticCustomError("empty_path", "must be a path, not an empty string")
    return value


def _expanded(path: Path) -> Path:
    try:
        return path.expanduser()
    except RuntimeError:            # "~name/..." of an unknown user: Path.expanduser raises
        raise PydanticCustomError("home_folder", "cannot expand ~ in {path}: no such user or no home folder",
                                  {"path": str(path)}) from None


DataPath = Annotated[Path, BeforeValidator(_not_empty), AfterValidator(_expanded)]
