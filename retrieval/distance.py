"""The seed's view distance, in one place: d(x, y) = mean over the feature's elements of (x − y)².

Search (exact re-ranking) and the studies (blocked pairwise matrices) both take their distances
from here, so a ranking and a study figure can never disagree about what "distance" means.
"""
from __future__ import annotations

import numpy as np


def candidate_count(k: int, n: int) -> int:
    """How many approximate neighbours are re-ranked exactly to return k: a margin for rounding."""
    return min(n, max(2 * k, k + 32))


def exact_knn(X: np.ndarray, norms: np.ndarray, q: np.ndarray, k: int,
              tiebreak: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest rows of X to one query: exact mean-squared distances and positions, best first.

    One query on the CPU: FAISS scans on one thread, while BLAS's matrix-vector product streams
    the same vectors at memory speed; ||x||² − 2x·q ranks like ||x − q||², and the best
    max(2k, k+32) candidates are then re-ranked exactly (ties by `tiebreak`, default position).
    """
    n = len(X)
    k = min(k, n)
    kk = candidate_count(k, n)
    score = norms - 2.0 * (X @ q)
    cand = np.argpartition(score, kk - 1)[:kk] if kk < n else np.arange(n)
    d = exact_mean_sq(q, X, cand)
    key = cand if tiebreak is None else tiebreak[cand]
    order = np.lexsort((key, d))[:k]
    return d[order], cand[order]


def exact_mean_sq(q: np.ndarray, feats: np.ndarray, select: np.ndarray | None = None) -> np.ndarray:
    """mean((x − q)²) per row, in float32, one row at a time through a reused buffer.

    Row by row keeps the working set in cache and allocates nothing per call; a whole-matrix
    `feats − q` would allocate (and page-fault) a temporary as large as `feats`. `feats` may be
    any row-indexable of float16 or float32 rows (an array, or the resident rows of a scan).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    which = range(len(feats)) if select is None else select
    out = np.empty(len(which), dtype=np.float32)
    diff = np.empty_like(q)
    for i, j in enumerate(which):
        np.subtract(feats[j], q, out=diff, dtype=np.float32)  # float16 rows are widened exactly on the fly
        out[i] = diff @ diff
    return out / np.float32(q.shape[0])
