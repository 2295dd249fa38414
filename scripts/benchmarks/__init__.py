"""The sections of scripts/bench.py, one module each.

Every section module has `measure(ctx) -> dict` (runs the measurements, returns JSON-able numbers),
`render(result) -> list[str]` (the tables, from the numbers alone) and `headline(result) -> list of
[measure, value, target, met, timed]` rows for the summary (`timed`: a timing ratio, not valid under load).
"""
from __future__ import annotations

import importlib

SECTIONS = ("encode", "memory", "search", "scale", "compressed", "forward", "startup")


def section(name: str):
    """The module of one section (imported on demand: each section imports only what it measures)."""
    if name not in SECTIONS:
        raise KeyError(name)
    return importlib.import_module(f"{__name__}.{name}")
