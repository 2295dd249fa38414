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
    any row-indexable of float16 or float32 rows (an array, or the resident rows of a scan);
    float16 rows are widened exactly inside the subtraction (numpy >= 2 does this with SIMD: faster than the
    torch path this replaced, and a query process need not import torch for it).
    """
    q = np.ascontiguousarray(q, dtype=np.float32)
    which = range(len(feats)) if select is None else select
    out = np.empty(len(which), dtype=np.float32)
    # The squares are summed in float64: a float32 sum's rounding depends on how many threads split it,
    # and the same view must get the same distance in every process (shards, Ray actors, servers).
    diff = np.empty_like(q)
    wide = np.empty(q.shape, dtype=np.float64)
    for i, j in enumerate(which):
        np.subtract(feats[j], q, out=diff, dtype=np.float32)
        wide[:] = diff
        out[i] = wide @ wide
    return out / np.float32(q.shape[0])


# ---------------------------------------------------------------- the blocked pairwise form (the studies)

def common_centre(feats: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The mean of the present views: one vector subtracted from both sides before the products."""
    if mask.any():
        return feats[mask].astype(np.float64).mean(axis=0).astype(np.float32)
    return np.zeros(feats.shape[-1], dtype=np.float32)


def centred_with_norms(feats: np.ndarray, mask: np.ndarray, centre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """(n, V, D) views centred (a new float32 array; the caller's is never modified), missing views zeroed,
    and their float64 squared norms (n, V).

    Distances do not change under a common translation, but the float32 cancellation error of
    ||a||² + ||b||² − 2a·b (large for non-negative ReLU activations) shrinks.
    """
    X = np.asarray(feats, dtype=np.float32)
    X = X - centre if centre is not None else X.copy()
    X[~mask] = 0.0
    n, V, D = X.shape
    norms = np.empty((n, V), dtype=np.float64)
    for s in range(n):  # per shape, so the float64 copy stays small
        x64 = X[s].astype(np.float64)
        norms[s] = np.einsum("vd,vd->v", x64, x64)
    return X, norms


def pairwise_mean_sq(A: np.ndarray, B: np.ndarray, a_norms: np.ndarray, b_norms: np.ndarray,
                     device: str = "cpu") -> np.ndarray:
    """d(a, b) for every pair of rows of A (..., m, D) and B (..., n, D): (..., m, n) float64.

    The blocked form of `exact_mean_sq` for whole matrices: max(0, ||a||² + ||b||² − 2a·b) / D with
    float32 products (on `device`, see `gemm`) and float64 norms (`centred_with_norms`) and sums.
    """
    from . import gemm

    G = gemm.matmul(A, np.swapaxes(B, -1, -2), device)
    d = a_norms[..., :, None] + b_norms[..., None, :] - 2.0 * G.astype(np.float64)
    np.maximum(d, 0.0, out=d)
    d /= A.shape[-1]
    return d
