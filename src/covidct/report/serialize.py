"""Conversion of the report dict to plain JSON values."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

import numpy as np

__all__ = ["report_json", "to_jsonable"]


def to_jsonable(value: Any, where: str = "report") -> Any:
    """Convert a value to plain JSON types, recursively.

    numpy scalars and arrays become Python numbers and lists, tuples become
    lists, paths become strings, mapping keys become strings, and NaN and
    infinite floats become None (JSON null).

    Args:
        value: The value to convert.
        where: Location of ``value`` in the report, used in error messages.

    Returns:
        A value made only of dict, list, str, int, float, bool and None.

    Raises:
        TypeError: If a value has a type that JSON cannot represent; the
            message names its location, such as ``report["stage"]["x"]``.
    """
    if isinstance(value, np.ndarray):
        return to_jsonable(value.tolist(), where)
    if isinstance(value, np.generic):
        return to_jsonable(value.item(), where)
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, Mapping):
        return {
            str(key): to_jsonable(item, f"{where}[{key!r}]")
            for key, item in value.items()
        }
    if isinstance(value, (list, tuple)):
        return [to_jsonable(item, f"{where}[{i}]") for i, item in enumerate(value)]
    raise TypeError(
        f"{where} has type {type(value).__name__}, which JSON cannot represent"
    )


def report_json(report: Mapping[str, Any]) -> str:
    """Serialise the report as indented JSON text ending with a newline."""
    text = json.dumps(
        to_jsonable(report), indent=2, ensure_ascii=False, allow_nan=False
    )
    return text + "\n"
