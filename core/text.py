"""Text rules shared by plugins that cannot import each other (a plugin never imports another plugin)."""
from __future__ import annotations

import math
import unicodedata


def control_character(text: str, allow: str = "") -> str | None:
    """The first control character (Unicode category Cc: U+0000-U+001F, U+007F-U+009F) in ``text`` that is not
    in ``allow``, shown as ``U+001B``; None when there is none. A data reader and the label check of the same
    task call this with the same ``allow``, so text a reader accepts is never refused later as a label."""
    bad = next((c for c in text if c not in allow and unicodedata.category(c) == "Cc"), None)
    return None if bad is None else f"U+{ord(bad):04X}"


def finite_number(value: object) -> float | None:
    """A regression label as a float: an int or float (not a bool) or a numeric string (what a person types, what
    a CSV cell holds); None for anything else, NaN and infinities included."""
    numpy_scalar = hasattr(value, "dtype") and getattr(value, "shape", None) == () and value.dtype.kind in "iuf"
    if isinstance(value, bool) or not (isinstance(value, (int, float, str)) or numpy_scalar):
        return None
    try:
        number = float(value)                   # a string may have spaces around the number
    except ValueError:
        return None
    return number if math.isfinite(number) else None
