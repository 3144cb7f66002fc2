# Copyright 2025 The DiffCLIP for Transformers authors. Licensed under the Apache License, Version 2.0.
"""Markdown tables, the form every script prints its results in, the names of the models in them, and English."""

import math
from collections.abc import Callable, Sequence
from pathlib import Path


# The paper's names of the variants (`DiffCLIPConfig.variant`)
PAPER_NAMES = {"clip": "CLIP", "diffclip": "DiffCLIP", "diffclip-vision": "DiffCLIP†", "diffclip-dynamic": "DiffCLIP*"}


def format_number(value, spread=None, decimals: int = 4, scale: float = 1.0) -> str:
    """A float times `scale` with `decimals` decimals, "± spread" after it where a spread (a standard deviation, an
    interval) is given; NaN and None as an empty cell; anything else as is. The one number format of the tables:
    `format_number(0.5, 0.01)` is "0.5000 ± 0.0100", `format_number(0.5, decimals=1, scale=100)` "50.0"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if not isinstance(value, float):
        return str(value)
    return f"{scale * value:.{decimals}f}" + ("" if spread is None else f" ± {scale * spread:.{decimals}f}")


def format_difference(value: float, decimals: int = 4, scale: float = 1.0) -> str:
    """A signed difference, "+0.0123"; one that rounds to zero is "+0.0000", never "-0.0000"."""
    return f"{round(scale * value, decimals) + 0.0:+.{decimals}f}"


def format_measurement(value) -> str:
    """A measurement's cell: 3 significant digits, whole numbers from 100 on, NaN and None (not measured) as a dash,
    booleans as yes or no; anything else as is."""
    if value is None:
        return "–"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.3g}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def markdown_table(headers: Sequence[str], rows: Sequence[Sequence], cell: Callable = format_number) -> str:
    """A Markdown table with one row per entry of `rows`, each value written by `cell`."""
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(cell(value) for value in row) + " |" for row in rows]
    return "\n".join(lines)


def distinct_names(names: list[str]) -> dict[str, str]:
    """The shortest trailing path parts that tell the names apart ("runs/clip/model" -> "clip/model")."""
    parts = {name: Path(name).parts or (name,) for name in names}
    for depth in range(1, max(len(p) for p in parts.values()) + 1):
        short = {name: "/".join(p[-depth:]) for name, p in parts.items()}
        if len(set(short.values())) == len(set(names)):
            return short
    return {name: name for name in names}


def article(name: str) -> str:
    """'a red circle', 'an orange star'."""
    return f"{'an' if name[0] in 'aeiou' else 'a'} {name}"
