"""Tie-aware comparison of two k-nearest-neighbour results (after faiss `contrib/evaluation.py`).

Two correct searches may order neighbours at exactly equal distance differently, and the last
group of ties may be cut at k in different places. Everywhere else the labels must be the same,
position by position: a check that accepts "distances are sorted" instead would pass a search
that gives every hit its neighbour's label.
"""
from __future__ import annotations

import numpy as np


def tie_groups(d: np.ndarray, rtol: float, atol: float) -> list[slice]:
    """Runs of consecutive (sorted) distances that are equal within rtol/atol."""
    groups, start = [], 0
    for i in range(1, len(d) + 1):
        if i == len(d) or abs(d[i] - d[i - 1]) > atol + rtol * abs(d[i - 1]):
            groups.append(slice(start, i))
            start = i
    return groups


def check_knn_with_ties(d_ref, i_ref, d_new, i_new, rtol: float = 1e-5, atol: float = 1e-12, where: str = ""):
    """Assert that (d_new, i_new) is the same k-NN result as (d_ref, i_ref), up to the order inside ties.

    Accepts one query (1-D arrays) or several (2-D, one row per query). Labels may be any
    hashable values (rows, ids, (shape, viewpoint) tuples). Raises AssertionError naming the
    query and the first position that differs.
    """
    d_ref, d_new = np.atleast_2d(np.asarray(d_ref, dtype=np.float64)), np.atleast_2d(np.asarray(d_new, np.float64))
    i_ref, i_new = _labels_2d(i_ref), _labels_2d(i_new)
    assert d_ref.shape == d_new.shape, f"{where}: result shapes differ: {d_ref.shape} vs {d_new.shape}"
    assert len(i_ref) == len(d_ref) and all(len(a) == d_ref.shape[1] for a in i_ref + i_new), \
        f"{where}: labels and distances have different lengths"
    np.testing.assert_allclose(d_new, d_ref, rtol=rtol, atol=atol, err_msg=f"{where}: distances differ")
    for q, (dr, lr, ln) in enumerate(zip(d_ref, i_ref, i_new)):
        groups = tie_groups(dr, rtol, atol)
        for g in groups:
            if g.stop - g.start == 1:
                assert lr[g.start] == ln[g.start], \
                    f"{where}: query {q}, position {g.start}: label {ln[g.start]!r}, expected {lr[g.start]!r}"
            elif g is not groups[-1]:  # a tie inside the list: same members, any order
                assert sorted(map(repr, lr[g])) == sorted(map(repr, ln[g])), \
                    f"{where}: query {q}, tied positions {g.start}..{g.stop - 1}: {ln[g]!r}, expected {lr[g]!r}"
            # a tie that reaches k may be cut anywhere: its distances were checked above


def _labels_2d(labels) -> list[list]:
    arr = labels if isinstance(labels, np.ndarray) else None
    if arr is not None and arr.ndim == 1 and arr.dtype != object:
        return [list(arr)]
    if arr is not None and arr.ndim == 2:
        return [list(row) for row in arr]
    labels = list(labels)
    if labels and isinstance(labels[0], (list, np.ndarray)):
        return [list(row) for row in labels]
    return [labels]


def recall_at_k(i_ref, i_new) -> float:
    """Fraction of the reference neighbours found, over all queries (1-D or 2-D inputs)."""
    ref, new = _labels_2d(i_ref), _labels_2d(i_new)
    found = sum(len(set(map(repr, a)) & set(map(repr, b))) for a, b in zip(ref, new))
    return found / max(1, sum(len(a) for a in ref))
