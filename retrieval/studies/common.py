"""What every part of the studies shares: default pairs, the policies each report states, the source protocol.

A `FeatureSource` (an opened `ShapeIndex`, or an in-memory stand-in in the tests) gives
features per domain in blocks of shapes; the checks here name the source in every error.
"""
from __future__ import annotations

import sys
from typing import Protocol, runtime_checkable

import numpy as np

from ..errors import StudyError

DEFAULT_PAIRS = (("sketch", "npr"), ("sketch", "rgb"), ("npr", "rgb"))
DEFAULT_MEMORY_MB = 2048
CI_LEVEL = 0.95
CI_KIND = ("two-sided 95% Student t-interval over objects: mean +/- t_{0.975, n-1} * s / sqrt(n), "
           "s = sample standard deviation (ddof=1); undefined (null) for n < 2")
MISSING_VIEW_POLICY = (
    "A shape takes part in a domain pair when it has at least one view in both domains. "
    "Study 1: two shapes are compared on the viewpoints they share (view k of a in domain i and view k of b "
    "in domain j both present); a pair sharing no viewpoint gets distance +inf (null in JSON). "
    "Study 2: an object lacking view k in domain i or view h in domain j is left out of cell (k, h). "
    "Joint retrieval: missing views are neither queries nor gallery items."
)
TIE_RULE = ("ties are counted pessimistically: the rank of the true item is the number of gallery items at a "
            "distance <= its own (itself included); a viewpoint is 'correct' only if it is strictly closer than "
            "every other viewpoint of the same shape")
KS = (1, 5, 10)


@runtime_checkable
class FeatureSource(Protocol):
    name: str
    fingerprint: dict
    shapes: list
    categories: dict
    viewpoints: list
    domains: list

    def features(self, domain: str, shape_idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(len(shape_idx), V, D) float32 features (zeros where missing), (len(shape_idx), V) bool mask."""
        ...


def _log(progress: bool, msg: str) -> None:
    if progress:
        print(f"[cvret eval] {msg}", file=sys.stderr, flush=True)


def _src_label(src) -> str:
    return str(getattr(src, "name", "?"))


def _check_domain(src, domain: str) -> None:
    doms = list(getattr(src, "domains", []))
    if domain not in doms:
        raise StudyError(f"index '{_src_label(src)}' has no '{domain}' domain (it has: {', '.join(doms) or 'none'})")


def _check_viewpoints(src) -> int:
    V = len(getattr(src, "viewpoints", []) or [])
    if V < 1:
        raise StudyError(f"index '{_src_label(src)}' has no viewpoints (V = {V}); the studies need V >= 1")
    return V
