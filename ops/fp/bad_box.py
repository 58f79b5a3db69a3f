"""DP-GEN's `fp_skip_bad_box`: skip degenerate cells before labeling, e.g. "length_ratio:5;height_ratio:5".

length_ratio: longest / shortest cell vector; height_ratio: longest cell vector / smallest distance
between opposite faces. A frame whose ratio exceeds the limit is not labeled (and recorded).
"""

from __future__ import annotations

import math

import numpy as np

CRITERIA = ("length_ratio", "height_ratio")


def parse_criteria(text: str) -> dict[str, float]:
    """'length_ratio:5;height_ratio:5' -> {'length_ratio': 5.0, 'height_ratio': 5.0}; ValueError if malformed."""
    out = {}
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, value = part.partition(":")
        if not sep or name.strip() not in CRITERIA:
            raise ValueError(f"fp_skip_bad_box: {part!r} is not 'name:value' with name in {list(CRITERIA)}")
        try:
            limit = float(value)
        except ValueError:
            raise ValueError(f"fp_skip_bad_box: {part!r}: the value is not a number") from None
        if not (math.isfinite(limit) and limit > 1):  # NaN compares false: it would skip nothing, silently
            raise ValueError(f"fp_skip_bad_box: {part!r}: expected a finite ratio > 1 (a cell's {name.strip()} is 1 "
                             "at best, so a limit <= 1 would skip nearly every frame)")
        out[name.strip()] = limit
    return out


def bad_box_reason(cell: np.ndarray, criteria: dict[str, float]) -> str | None:
    """Why the cell is bad, or None when it passes every criterion."""
    cell = np.asarray(cell, dtype=float)
    lengths = np.linalg.norm(cell, axis=1)
    volume = abs(np.linalg.det(cell))
    heights = [volume / np.linalg.norm(np.cross(cell[(i + 1) % 3], cell[(i + 2) % 3])) for i in range(3)]
    ratios = {"length_ratio": lengths.max() / lengths.min(), "height_ratio": lengths.max() / min(heights)}
    for name, limit in criteria.items():
        if ratios[name] > limit:
            return f"bad box: {name} {ratios[name]:.3g} > {limit:g}"
    return None
