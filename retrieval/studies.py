"""Study 1 and Study 2 of the seed paper as computations, plus retrieval metrics and the report.

Definitions (the seed's, exactly; see ARCHITECTURE.md):

* view distance ``d(x, y) = mean over the feature's elements of (x - y)**2 = ||x - y||**2 / D``.
* Study 1 (seed eq. 1): for domains i, j the N x N matrix ``S[a, b]`` = mean over the viewpoints k
  that shape a has in domain i *and* shape b has in domain j of ``d(A_k^i, B_k^j)``. A pair that
  shares no viewpoint gets ``+inf``.
* Study 2 (seed eq. 2): the V x V matrix ``M[k, h]`` = mean over objects of ``d(A_k^i, A_h^j)``
  (same object, view k in domain i against view h in domain j). Objects lacking view k in i or
  view h in j are left out of that cell (the cell's ``n`` says how many objects it averages).

Everything is computed with blocked matrix products: ``||a||^2 + ||b||^2 - 2 a.b`` with float32
products and float64 norms / accumulation, clamped at 0. Features are centred on one common vector
(the mean of the first loaded block) before the products; distances do not change under a common
translation, but the float32 cancellation error (large for non-negative ReLU activations) shrinks.

Features are read through the :class:`FeatureSource` protocol in blocks of shapes sized from a
memory budget (``memory_mb``), so thousands of shapes with D = 200,704 stay bounded in memory.

Rank conventions (ties are counted pessimistically everywhere):

* rank of the true shape (1-based) = number of gallery shapes whose distance is ``<=`` the true
  shape's distance (the true shape included). So a tie with a wrong shape costs a rank.
* ``diag_min_frac`` (the seed's statement "the same object has the lowest distance"): fraction of
  rows whose minimum value is attained on the diagonal (ties with the minimum allowed - this is the
  only optimistic number; ``acc@1`` is its pessimistic counterpart).
"""
from __future__ import annotations

import csv
import datetime as _dt
import json
import math
import os
import re
import sys
from dataclasses import dataclass, field
from typing import Protocol, Sequence, runtime_checkable

import numpy as np

from . import gemm
from .errors import StudyError
from .viewpoints import Viewpoint

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


# ----------------------------------------------------------------------------------------------
# reading features in blocks
# ----------------------------------------------------------------------------------------------

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


def _load(src, domain: str, idx: np.ndarray, V: int) -> tuple[np.ndarray, np.ndarray]:
    feats, mask = src.features(domain, np.asarray(idx, dtype=np.int64))
    feats = np.asarray(feats)
    mask = np.asarray(mask, dtype=bool)
    n = len(idx)
    if feats.ndim != 3 or feats.shape[0] != n or feats.shape[1] != V:
        raise StudyError(f"index '{_src_label(src)}' returned features of shape {feats.shape} for {n} shapes "
                         f"in '{domain}'; expected ({n}, {V}, D)")
    if mask.shape != (n, V):
        raise StudyError(f"index '{_src_label(src)}' returned a present mask of shape {mask.shape}; expected ({n}, {V})")
    return feats, mask


def _prepare(feats: np.ndarray, mask: np.ndarray, centre: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """Centre (new float32 array; the source's array is never modified), zero missing views, float64 norms."""
    X = np.asarray(feats, dtype=np.float32)
    X = X - centre if centre is not None else X.copy()
    X[~mask] = 0.0
    n, V, D = X.shape
    norms = np.empty((n, V), dtype=np.float64)
    for s in range(n):  # per shape, so the float64 copy stays small
        x64 = X[s].astype(np.float64)
        norms[s] = np.einsum("vd,vd->v", x64, x64)
    return X, norms


def _centre_of(feats: np.ndarray, mask: np.ndarray) -> np.ndarray:
    if mask.any():
        return feats[mask].astype(np.float64).mean(axis=0).astype(np.float32)
    return np.zeros(feats.shape[-1], dtype=np.float32)


def _block_rows(V: int, D: int, memory_mb: float, extra_per_shape: float = 0.0) -> int:
    """Shapes per block so that ~4 feature blocks (row, column, centred copies) fit the budget."""
    per_shape = 4.0 * V * D * 4 + extra_per_shape
    return int(max(1, min(256, (memory_mb * 2**20) // max(per_shape, 1.0))))


def _feature_dim(src, domain: str, idx: np.ndarray, V: int) -> int:
    f, _ = _load(src, domain, idx[:1], V)
    return int(f.shape[2])


class _Columns:
    """Column (gallery) blocks: cached in memory when they fit the budget, re-read otherwise."""

    def __init__(self, src, domain, idx, V, block, centre, cache: bool):
        self.src, self.domain, self.idx, self.V, self.block, self.centre = src, domain, idx, V, block, centre
        self.cache = [] if cache else None
        self._filled = False

    def __iter__(self):
        if self.cache is not None and self._filled:
            yield from self.cache
            return
        for c0 in range(0, len(self.idx), self.block):
            c1 = min(len(self.idx), c0 + self.block)
            f, m = _load(self.src, self.domain, self.idx[c0:c1], self.V)
            X, nrm = _prepare(f, m, self.centre)
            item = (c0, c1, X, m, nrm)
            if self.cache is not None:
                self.cache.append(item)
            yield item
        if self.cache is not None:
            self._filled = True


def _iter_row_blocks(src, dom_i, dom_j, idx, V, memory_mb, extra_per_shape=0.0):
    """Yield (r0, r1, A, Am, An, columns) with A centred; `columns` iterates the gallery blocks."""
    D = _feature_dim(src, dom_i, idx, V)
    block = _block_rows(V, D, memory_mb, extra_per_shape)
    cache = len(idx) * V * D * 4 * 2 <= memory_mb * 2**20 / 2
    centre = None
    cols = None
    for r0 in range(0, len(idx), block):
        r1 = min(len(idx), r0 + block)
        f, m = _load(src, dom_i, idx[r0:r1], V)
        if f.shape[2] != D:
            raise StudyError(f"index '{_src_label(src)}' returned features of length {f.shape[2]}, expected {D}")
        if centre is None:
            centre = _centre_of(f, m)
            cols = _Columns(src, dom_j, idx, V, block, centre, cache)
        A, An = _prepare(f, m, centre)
        yield r0, r1, A, m, An, cols, D


def _as_index(src, shape_idx) -> np.ndarray:
    if shape_idx is None:
        return np.arange(len(src.shapes), dtype=np.int64)
    return np.asarray(shape_idx, dtype=np.int64).reshape(-1)


# ----------------------------------------------------------------------------------------------
# Study 1: shape distance matrix (seed eq. 1)
# ----------------------------------------------------------------------------------------------

def shape_distance_matrix(src, dom_i: str, dom_j: str, shape_idx=None, *, memory_mb: float = DEFAULT_MEMORY_MB,
                          return_counts: bool = False):
    """Seed eq. 1: (N, N) float64, row = shape in `dom_i`, column = shape in `dom_j`.

    ``S[a, b]`` = mean over the viewpoints both have of ``||A_k - B_k||^2 / D``; ``+inf`` when they share
    none. With ``return_counts`` also returns the (N, N) int number of shared viewpoints.
    """
    V = _check_viewpoints(src)
    _check_domain(src, dom_i)
    _check_domain(src, dom_j)
    idx = _as_index(src, shape_idx)
    N = len(idx)
    num = np.zeros((N, N), dtype=np.float64)
    cnt = np.zeros((N, N), dtype=np.int32)
    for r0, r1, A, Am, An, cols, D in _iter_row_blocks(src, dom_i, dom_j, idx, V, memory_mb):
        for c0, c1, B, Bm, Bn in cols:
            for k in range(V):
                G = gemm.matmul(A[:, k, :], B[:, k, :].T)           # float32 products
                d = An[:, k, None] + Bn[None, :, k] - 2.0 * G.astype(np.float64)
                np.maximum(d, 0.0, out=d)
                valid = Am[:, k, None] & Bm[None, :, k]
                num[r0:r1, c0:c1] += np.where(valid, d / D, 0.0)
                cnt[r0:r1, c0:c1] += valid
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(cnt > 0, num / np.maximum(cnt, 1), np.inf)
    return (S, cnt) if return_counts else S


# ----------------------------------------------------------------------------------------------
# Study 2: per-object view distances (seed eq. 2)
# ----------------------------------------------------------------------------------------------

def view_distance_matrix(src, dom_i: str, dom_j: str, shape_idx=None, *, memory_mb: float = DEFAULT_MEMORY_MB):
    """Per-object view distances (N, V, V) float64: ``P[n, k, h] = d(A_k^i, A_h^j)`` for object n;
    NaN where view k is missing in `dom_i` or view h is missing in `dom_j`. Average with
    :func:`view_distance_stats` to get seed eq. 2 with confidence intervals."""
    V = _check_viewpoints(src)
    _check_domain(src, dom_i)
    _check_domain(src, dom_j)
    idx = _as_index(src, shape_idx)
    N = len(idx)
    out = np.full((N, V, V), np.nan, dtype=np.float64)
    if N == 0:
        return out
    D = _feature_dim(src, dom_i, idx, V)
    block = _block_rows(V, D, memory_mb)
    for r0 in range(0, N, block):
        r1 = min(N, r0 + block)
        fa, ma = _load(src, dom_i, idx[r0:r1], V)
        fb, mb = _load(src, dom_j, idx[r0:r1], V)
        centre = _centre_of(fa, ma)
        A, An = _prepare(fa, ma, centre)
        B, Bn = _prepare(fb, mb, centre)
        G = gemm.matmul(A, B.transpose(0, 2, 1))                    # (n, V, V) float32
        d = An[:, :, None] + Bn[:, None, :] - 2.0 * G.astype(np.float64)
        np.maximum(d, 0.0, out=d)
        d /= D
        valid = ma[:, :, None] & mb[:, None, :]
        out[r0:r1] = np.where(valid, d, np.nan)
    return out


def t_interval(values: np.ndarray, axis: int = 0, level: float = CI_LEVEL):
    """Mean, std (ddof=1), n, CI low, CI high of `values` along `axis`, ignoring NaN (Student t)."""
    from scipy import stats

    values = np.asarray(values, dtype=np.float64)
    n = np.sum(~np.isnan(values), axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(n > 0, np.nansum(values, axis=axis) / np.maximum(n, 1), np.nan)
        dev = np.where(np.isnan(values), 0.0, values - np.expand_dims(mean, axis))
        var = np.where(n > 1, np.sum(dev ** 2, axis=axis) / np.maximum(n - 1, 1), np.nan)
        std = np.sqrt(var)
        tq = np.where(n > 1, stats.t.ppf(0.5 + level / 2.0, np.maximum(n - 1, 1)), np.nan)
        half = tq * std / np.sqrt(np.maximum(n, 1))
    return mean, std, n, mean - half, mean + half


def view_distance_stats(per_object: np.ndarray, level: float = CI_LEVEL) -> dict:
    """Seed eq. 2 from per-object distances (N, V, V): mean, std, n, ci_low, ci_high, half (V x V each)."""
    mean, std, n, lo, hi = t_interval(per_object, axis=0, level=level)
    return {"mean": mean, "std": std, "n": n.astype(np.int64), "ci_low": lo, "ci_high": hi, "half": (hi - lo) / 2.0}


def view_retrieval(per_object: np.ndarray) -> dict:
    """For each object and view k: is view k in domain j strictly the nearest of the object's V views there?

    Queries whose view k is missing in domain i or in domain j are left out (counted in `n_left_out`).
    Returns per-viewpoint accuracy (length V), overall accuracy and counts; `correct` is (N, V) with NaN
    for left-out queries.
    """
    P = np.asarray(per_object, dtype=np.float64)
    N, V, _ = P.shape
    diag = P[:, np.arange(V), np.arange(V)]                       # (N, V)
    valid = ~np.isnan(diag)
    Pi = np.where(np.isnan(P), np.inf, P)
    others = Pi.copy()
    others[:, np.arange(V), np.arange(V)] = np.inf
    correct = valid & (diag < others.min(axis=2))
    corr = np.where(valid, correct.astype(float), np.nan)
    n_k = valid.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        per_vp = np.where(n_k > 0, correct.sum(axis=0) / np.maximum(n_k, 1), np.nan)
    total = int(valid.sum())
    return {
        "per_viewpoint": per_vp,
        "n_per_viewpoint": n_k.astype(np.int64),
        "overall": float(correct.sum() / total) if total else float("nan"),
        "n": total,
        "n_left_out": int(N * V - total),
        "correct": corr,
    }


def ci_overlaps(ci_low: np.ndarray, ci_high: np.ndarray) -> list[dict]:
    """Per row k: does the diagonal cell's CI overlap the CI of any other cell of that row?"""
    V = ci_low.shape[0]
    rows = []
    for k in range(V):
        lo_k, hi_k = ci_low[k, k], ci_high[k, k]
        if not (np.isfinite(lo_k) and np.isfinite(hi_k)):
            rows.append({"row": k, "overlaps": None, "with": [], "undefined": True})
            continue
        hits, undefined = [], False
        for h in range(ci_low.shape[1]):
            if h == k:
                continue
            lo_h, hi_h = ci_low[k, h], ci_high[k, h]
            if not (np.isfinite(lo_h) and np.isfinite(hi_h)):
                undefined = True
                continue
            if lo_k <= hi_h and lo_h <= hi_k:
                hits.append(h)
        rows.append({"row": k, "overlaps": bool(hits), "with": hits, "undefined": undefined})
    return rows


# ----------------------------------------------------------------------------------------------
# retrieval metrics on a shape distance matrix
# ----------------------------------------------------------------------------------------------

def true_ranks(S: np.ndarray) -> np.ndarray:
    """1-based rank of the diagonal (true) shape in each row, ties pessimistic (count of values <= true)."""
    S = np.asarray(S, dtype=np.float64)
    t = np.diag(S)
    return (S <= t[:, None]).sum(axis=1).astype(np.int64)


def retrieval_metrics(S: np.ndarray, ks: Sequence[int] = KS, rows: np.ndarray | None = None) -> dict:
    """acc@k, mean / median rank, MRR and diag-min fraction of the rows `rows` (all by default) of S."""
    S = np.asarray(S, dtype=np.float64)
    ranks = true_ranks(S)
    diag_min = np.diag(S) <= S.min(axis=1)
    if rows is not None:
        ranks, diag_min = ranks[rows], diag_min[rows]
    n = int(len(ranks))
    out = {"n": n}
    if n == 0:
        out.update({f"acc@{k}": None for k in ks})
        out.update({"mean_rank": None, "median_rank": None, "mrr": None, "diag_min_frac": None})
        return out
    for k in ks:
        out[f"acc@{k}"] = float(np.mean(ranks <= k))
    out["mean_rank"] = float(ranks.mean())
    out["median_rank"] = float(np.median(ranks))
    out["mrr"] = float(np.mean(1.0 / ranks))
    out["diag_min_frac"] = float(diag_min.mean())
    return out


def category_metrics(S: np.ndarray, cats: Sequence[str], ks: Sequence[int] = KS) -> dict:
    """Per query category: the metrics of :func:`retrieval_metrics` (whole gallery), plus category acc@1
    (every gallery shape at the row minimum has the query's category — pessimistic on ties).
    Returns {'overall_category_acc@1': float, 'per_category': {cat: {...}}}."""
    S = np.asarray(S, dtype=np.float64)
    cats = np.asarray([str(c) for c in cats])
    at_min = S <= S.min(axis=1, keepdims=True)
    wrong_cat_at_min = (at_min & (cats[None, :] != cats[:, None])).any(axis=1)
    cat_hit = ~wrong_cat_at_min
    per = {}
    for c in sorted(set(cats.tolist())):
        rows = np.flatnonzero(cats == c)
        m = retrieval_metrics(S, ks, rows=rows)
        m["category_acc@1"] = float(cat_hit[rows].mean())
        per[c] = m
    return {"category_acc@1": float(cat_hit.mean()) if len(cats) else None, "per_category": per}


# ----------------------------------------------------------------------------------------------
# one pass per domain pair: Study 1 matrix, per-object view distances, joint shape+viewpoint retrieval
# ----------------------------------------------------------------------------------------------

@dataclass
class PairPass:
    """Everything one blocked pass over a domain pair produces (indices relative to `shape_idx`)."""
    S: np.ndarray                 # (N, N) Study 1
    shared: np.ndarray            # (N, N) number of shared viewpoints
    per_object: np.ndarray        # (N, V, V) view distances of the same object, NaN where missing
    joint_rank_view: np.ndarray   # (N, V) rank of the best view of the true shape among all gallery views
    joint_rank_shape: np.ndarray  # (N, V) rank of the true shape when shapes are ranked by their best view
    joint_vp_ok: np.ndarray       # (N, V) bool: best view of the true shape has the query's viewpoint
    joint_exact: np.ndarray       # (N, V) bool: the overall top-1 gallery view is the query's (shape, viewpoint)
    joint_valid: np.ndarray       # (N, V) bool: view present in domain i (a query)
    mask_i: np.ndarray            # (N, V) present in domain i
    mask_j: np.ndarray            # (N, V) present in domain j
    extra: dict = field(default_factory=dict)


def pair_pass(src, dom_i: str, dom_j: str, shape_idx=None, *, memory_mb: float = DEFAULT_MEMORY_MB,
              progress: bool = False) -> PairPass:
    """One blocked pass computing every single-view distance between the N x V views of `dom_i` and
    the N x V views of `dom_j` (one matmul per block pair), reduced on the fly to: the Study 1 matrix
    (eq. 1), the per-object V x V view distances (eq. 2 before averaging) and the joint shape+viewpoint
    retrieval ranks. Memory: feature blocks plus a (rows x V x N x V) float64 distance buffer."""
    V = _check_viewpoints(src)
    _check_domain(src, dom_i)
    _check_domain(src, dom_j)
    idx = _as_index(src, shape_idx)
    N = len(idx)
    num = np.zeros((N, N), dtype=np.float64)
    cnt = np.zeros((N, N), dtype=np.int32)
    per_obj = np.full((N, V, V), np.nan)
    rank_view = np.zeros((N, V), dtype=np.int64)
    rank_shape = np.zeros((N, V), dtype=np.int64)
    vp_ok = np.zeros((N, V), dtype=bool)
    exact = np.zeros((N, V), dtype=bool)
    mask_i = np.zeros((N, V), dtype=bool)
    mask_j = np.zeros((N, V), dtype=bool)
    ar = np.arange(V)
    extra_per_shape = 4.0 * V * N * V * 8  # distance buffer + temporaries per row shape
    for r0, r1, A, Am, An, cols, D in _iter_row_blocks(src, dom_i, dom_j, idx, V, memory_mb, extra_per_shape):
        na = r1 - r0
        mask_i[r0:r1] = Am
        Dr = np.full((na, V, N, V), np.inf, dtype=np.float64)
        Af = A.reshape(na * V, -1)
        for c0, c1, B, Bm, Bn in cols:
            nb = c1 - c0
            mask_j[c0:c1] = Bm
            G = gemm.matmul(Af, B.reshape(nb * V, -1).T)             # float32 products
            d = An.reshape(-1, 1) + Bn.reshape(1, -1) - 2.0 * G.astype(np.float64)
            np.maximum(d, 0.0, out=d)
            d /= D
            d = d.reshape(na, V, nb, V)
            valid = Am[:, :, None, None] & Bm[None, None, :, :]
            Dr[:, :, c0:c1, :] = np.where(valid, d, np.inf)
        # Study 1 rows: same viewpoint k on both sides
        for k in range(V):
            Dk = Dr[:, k, :, k]
            fin = np.isfinite(Dk)
            num[r0:r1] += np.where(fin, Dk, 0.0)
            cnt[r0:r1] += fin
        # same object, every (k, h)
        rows = np.arange(na)
        own = Dr[rows, :, r0 + rows, :]                              # (na, V, V)
        per_obj[r0:r1] = np.where(np.isfinite(own), own, np.nan)
        # joint retrieval: query (a, k) against all N x V gallery views
        t = own.min(axis=2)                                          # (na, V) best view of the true shape
        le_all = (Dr <= t[:, :, None, None]).sum(axis=(2, 3))
        le_own = (own <= t[:, :, None]).sum(axis=2)
        rank_view[r0:r1] = 1 + le_all - le_own
        best_per_shape = Dr.min(axis=3)                              # (na, V, N)
        rank_shape[r0:r1] = (best_per_shape <= t[:, :, None]).sum(axis=2)
        diag = own[:, ar, ar]                                        # (na, V)
        ok = np.isfinite(diag) & (diag <= t) & (le_own == 1)
        vp_ok[r0:r1] = ok
        exact[r0:r1] = ok & (rank_view[r0:r1] == 1)
        _log(progress, f"{_src_label(src)} {dom_i}->{dom_j}: shapes {r1}/{N}")
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(cnt > 0, num / np.maximum(cnt, 1), np.inf)
    return PairPass(S=S, shared=cnt, per_object=per_obj, joint_rank_view=rank_view, joint_rank_shape=rank_shape,
                    joint_vp_ok=vp_ok, joint_exact=exact, joint_valid=mask_i.copy(), mask_i=mask_i, mask_j=mask_j)


def joint_metrics(pp: PairPass, ks: Sequence[int] = KS, viewpoint_names: Sequence[str] | None = None) -> dict:
    """Joint shape+viewpoint retrieval numbers from a :class:`PairPass`.

    Each present view (shape a, viewpoint k) of domain i is a query against all present N x V views of
    domain j (single-view distances).
    * ``acc@k``: one of the k nearest gallery views belongs to the true shape (rank_view <= k; ties pessimistic).
    * ``shape_acc@k``: the true shape is among the k nearest *distinct* shapes (shapes ranked by their best view).
    * ``viewpoint_acc``: the best-ranked gallery view of the true shape has viewpoint k (strictly closer than the
      true shape's other views), regardless of where the true shape ranks.
    * ``exact_view_acc@1``: the top-1 gallery view overall is (a, k).
    """
    valid = pp.joint_valid
    rv = pp.joint_rank_view[valid]
    rs = pp.joint_rank_shape[valid]
    n = int(valid.sum())
    out: dict = {"n_queries": n}
    if n == 0:
        return out
    for k in ks:
        out[f"acc@{k}"] = float(np.mean(rv <= k))
    for k in ks:
        out[f"shape_acc@{k}"] = float(np.mean(rs <= k))
    out["mrr"] = float(np.mean(1.0 / rv))
    out["mean_rank"] = float(rv.mean())
    out["median_rank"] = float(np.median(rv))
    out["viewpoint_acc"] = float(pp.joint_vp_ok[valid].mean())
    out["exact_view_acc@1"] = float(pp.joint_exact[valid].mean())
    V = valid.shape[1]
    names = list(viewpoint_names) if viewpoint_names is not None else [str(k) for k in range(V)]
    per = {}
    for k in range(V):
        vk = valid[:, k]
        if not vk.any():
            per[names[k]] = {"n_queries": 0}
            continue
        per[names[k]] = {"n_queries": int(vk.sum()),
                         "acc@1": float(np.mean(pp.joint_rank_view[vk, k] <= 1)),
                         "viewpoint_acc": float(pp.joint_vp_ok[vk, k].mean()),
                         "exact_view_acc@1": float(pp.joint_exact[vk, k].mean())}
    out["per_viewpoint"] = per
    return out


# ----------------------------------------------------------------------------------------------
# presence masks
# ----------------------------------------------------------------------------------------------

def present_masks(src, domain: str, *, memory_mb: float = DEFAULT_MEMORY_MB) -> np.ndarray:
    """(len(shapes), V) bool present mask of `domain`. Uses ``src.present(domain)`` when the source has it
    (a cheap metadata read); otherwise reads the features block by block."""
    V = _check_viewpoints(src)
    _check_domain(src, domain)
    n = len(src.shapes)
    fn = getattr(src, "present", None)
    if callable(fn):
        m = np.asarray(fn(domain), dtype=bool)
        if m.shape != (n, V):
            raise StudyError(f"index '{_src_label(src)}' present('{domain}') has shape {m.shape}, expected {(n, V)}")
        return m
    out = np.zeros((n, V), dtype=bool)
    if n == 0:
        return out
    idx = np.arange(n)
    D = _feature_dim(src, domain, idx, V)
    block = _block_rows(V, D, memory_mb)
    for r0 in range(0, n, block):
        _, m = _load(src, domain, idx[r0:r0 + block], V)
        out[r0:r0 + block] = m
    return out


# ----------------------------------------------------------------------------------------------
# evaluate: run everything and write the report
# ----------------------------------------------------------------------------------------------

def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "index"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Viewpoint):
        return x.to_dict()
    return x


def _weights_label(src) -> str:
    fp = getattr(src, "fingerprint", {}) or {}
    w = str(fp.get("weights", "unknown weights"))
    layer = fp.get("layer", "")
    note = "; untrained, not the paper's numbers" if w.startswith("untrained") else ""
    return f"{fp.get('model', 'RN101')} {layer}, weights {w[:19]}{note}"


def _is_untrained(fp) -> bool:
    w = (fp or {}).get("weights") if isinstance(fp, dict) else None
    return isinstance(w, str) and w.strip().lower().startswith("untrained")


def _write_matrix_csv(path: str, M: np.ndarray, row_labels, col_labels, corner: str = "") -> None:
    with open(path, "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow([corner] + [str(c) for c in col_labels])
        for lab, row in zip(row_labels, np.asarray(M)):
            w.writerow([str(lab)] + [_fmt_csv(v) for v in row])


def _fmt_csv(v) -> str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.8g}"


def _vp_names(src) -> list[str]:
    out = []
    for i, vp in enumerate(src.viewpoints):
        out.append(str(getattr(vp, "name", vp)) if vp is not None else f"v{i}")
    return out


def _pair_key(i: str, j: str) -> str:
    return f"{i}-{j}"


def evaluate(sources, out_dir, pairs=DEFAULT_PAIRS, objects: int = 10, seed: int = 0, study2_objects: int = 100,
             progress: bool = True, cvret_version: str = "0.1.0", weights_note: str | None = None,
             *, memory_mb: float = DEFAULT_MEMORY_MB, trained_on: Sequence[str] = ()) -> dict:
    """Run Study 1, Study 2 and joint retrieval for every source and domain pair; write the report.

    Writes ``report.json``, ``report.md``, CSVs of every matrix and PNG figures into `out_dir`
    and returns the report dict (the content of report.json, with +/-inf and NaN as None).
    `trained_on`: categories a fine-tuned encoder was trained on, marked in the per-category comparison.
    """
    from . import plots

    if isinstance(sources, (str, bytes)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        raise StudyError("no index given to evaluate")
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise StudyError("no domain pairs given to evaluate")
    for p in pairs:
        if len(p) != 2:
            raise StudyError(f"a domain pair must have two domains, got {p!r}")
    if int(objects) < 1:
        raise StudyError(f"objects must be at least 1, got {objects}")
    if int(study2_objects) < 1:
        raise StudyError(f"study2_objects must be at least 1, got {study2_objects}")
    objects, study2_objects = int(objects), int(study2_objects)
    for src in sources:
        _check_viewpoints(src)
        for i, j in pairs:
            _check_domain(src, i)
            _check_domain(src, j)

    # presence masks and the shapes of every pair, for every source, before any heavy work
    domains_needed = sorted({d for p in pairs for d in p})
    prepared = []
    for src in sources:
        label = _src_label(src)
        masks = {d: present_masks(src, d, memory_mb=memory_mb) for d in domains_needed}
        pair_sets = {}
        for i, j in pairs:
            sel = np.flatnonzero(masks[i].any(axis=1) & masks[j].any(axis=1))
            if len(sel) < 2:
                raise StudyError(f"index '{label}': only {len(sel)} shape(s) have both '{i}' and '{j}' views; "
                                 f"the studies need at least 2")
            if objects > len(sel):
                raise StudyError(f"index '{label}': objects={objects} is larger than N={len(sel)} "
                                 f"(shapes with both '{i}' and '{j}' views)")
            pair_sets[(i, j)] = sel
        prepared.append((masks, pair_sets))

    os.makedirs(out_dir, exist_ok=True)
    used_slugs: set[str] = set()
    report_sources = []
    figures_md: dict[str, dict] = {}

    for src, (masks, pair_sets) in zip(sources, prepared):
        label = _src_label(src)
        slug = _slug(label)
        base, n_dup = slug, 2
        while slug in used_slugs:
            slug, n_dup = f"{base}_{n_dup}", n_dup + 1
        used_slugs.add(slug)
        V = len(src.viewpoints)
        vnames = _vp_names(src)
        shapes = [str(s) for s in src.shapes]
        cats_map = dict(getattr(src, "categories", {}) or {})
        # the figure's shapes: same shapes in every panel when possible (seeded)
        rng = np.random.default_rng(seed)
        common = pair_sets[pairs[0]]
        for p in pairs[1:]:
            common = np.intersect1d(common, pair_sets[p])
        fig_common = np.sort(rng.choice(common, size=objects, replace=False)) if len(common) >= objects else None

        dataset = {
            "n_shapes": len(shapes),
            "n_viewpoints": V,
            "viewpoints": [vp.to_dict() if hasattr(vp, "to_dict") else str(vp) for vp in src.viewpoints],
            "domains": list(src.domains),
            "views_present": {d: int(m.sum()) for d, m in masks.items()},
            "shapes_complete": {d: int(m.all(axis=1).sum()) for d, m in masks.items()},
            "shapes_missing_some_views": {d: int((m.any(axis=1) & ~m.all(axis=1)).sum()) for d, m in masks.items()},
            "shapes_without_domain": {d: int((~m.any(axis=1)).sum()) for d, m in masks.items()},
            "categories": {},
        }
        if cats_map:
            cc: dict[str, int] = {}
            for s in shapes:
                c = str(cats_map.get(s, "unknown"))
                cc[c] = cc.get(c, 0) + 1
            dataset["categories"] = dict(sorted(cc.items()))

        pair_reports = []
        fig1_panels, fig2_panels, cmc_curves = [], [], []
        for i, j in pairs:
            key = _pair_key(i, j)
            sel = pair_sets[(i, j)]
            N = len(sel)
            ids = [shapes[s] for s in sel]
            _log(progress, f"{label}: {key}, N={N}, V={V}")
            pp = pair_pass(src, i, j, sel, memory_mb=memory_mb, progress=progress)
            S = pp.S

            # ---- Study 1
            s1 = retrieval_metrics(S)
            ranks = true_ranks(S)
            nearest = np.argmin(np.where(np.isnan(S), np.inf, S), axis=1)
            if cats_map:
                cats = [str(cats_map.get(s, "unknown")) for s in ids]
                s1.update(category_metrics(S, cats))
            else:
                cats = None
            if fig_common is not None:
                fsel = np.searchsorted(sel, fig_common)
            else:
                fsel = np.sort(np.random.default_rng(seed).choice(N, size=objects, replace=False))
            Sf = S[np.ix_(fsel, fsel)]
            fig_ids = [ids[s] for s in fsel]
            s1["figure_shapes"] = fig_ids
            s1["figure_matrix"] = Sf
            s1["diag_min_frac_figure"] = float(np.mean(np.diag(Sf) <= Sf.min(axis=1)))
            s1["acc@1_figure"] = float(np.mean(true_ranks(Sf) <= 1))
            csv1 = f"study1_{slug}_{key}.csv"
            _write_matrix_csv(os.path.join(out_dir, csv1), S, ids, ids, corner=f"{i}\\{j}")
            csvr = f"study1_{slug}_{key}_ranks.csv"
            with open(os.path.join(out_dir, csvr), "w", newline="") as fh:
                w = csv.writer(fh)
                w.writerow(["shape", "category", "rank_of_true_shape", "nearest_shape", "distance_to_true",
                            "distance_to_nearest", "shared_viewpoints_with_self"])
                for a in range(N):
                    w.writerow([ids[a], cats[a] if cats else "", int(ranks[a]), ids[int(nearest[a])],
                                _fmt_csv(S[a, a]), _fmt_csv(S[a, nearest[a]]), int(pp.shared[a, a])])
            s1["csv"] = csv1
            s1["ranks_csv"] = csvr
            missing = {
                "shapes_in_pair": N,
                "shapes_excluded": int(len(shapes) - N),
                "shapes_missing_views_in_" + i: int((~pp.mask_i.all(axis=1)).sum()),
                "shapes_missing_views_in_" + j: int((~pp.mask_j.all(axis=1)).sum()),
                "shape_pairs_on_fewer_than_V_viewpoints": int((pp.shared < V).sum()),
                "shape_pairs_without_shared_viewpoint": int((pp.shared == 0).sum()),
                "true_pairs_on_fewer_than_V_viewpoints": int((np.diag(pp.shared) < V).sum()),
            }

            # ---- Study 2 (seeded subset of objects)
            n2 = min(study2_objects, N)
            sub = np.sort(np.random.default_rng(seed).choice(N, size=n2, replace=False))
            st = view_distance_stats(pp.per_object[sub])
            left_out = (n2 - st["n"]).astype(np.int64)
            vr_all = view_retrieval(pp.per_object)
            vr_sub = view_retrieval(pp.per_object[sub])
            overl = ci_overlaps(st["ci_low"], st["ci_high"])
            for o in overl:
                o["viewpoint"] = vnames[o["row"]]
                o["with"] = [vnames[h] for h in o["with"]]
            csv2 = {}
            for name in ("mean", "ci_low", "ci_high", "std", "n"):
                fn = f"study2_{slug}_{key}_{name}.csv"
                _write_matrix_csv(os.path.join(out_dir, fn), st[name], vnames, vnames, corner=f"{i}\\{j}")
                csv2[name] = fn
            s2 = {
                "n_objects": n2,
                "objects": [ids[s] for s in sub],
                "mean": st["mean"], "std": st["std"], "ci_low": st["ci_low"], "ci_high": st["ci_high"],
                "half_ci": st["half"], "n": st["n"], "left_out": left_out,
                "diag_is_row_min": [bool(np.nanargmin(np.where(np.isnan(st["mean"][k]), np.inf, st["mean"][k])) == k)
                                    if np.isfinite(st["mean"][k]).any() else None for k in range(V)],
                "ci_overlap": overl,
                "view_acc": {"over": "all N shapes of the pair", "overall": vr_all["overall"],
                             "per_viewpoint": dict(zip(vnames, vr_all["per_viewpoint"])),
                             "n": vr_all["n"], "n_left_out": vr_all["n_left_out"]},
                "view_acc_study2_objects": {"overall": vr_sub["overall"],
                                            "per_viewpoint": dict(zip(vnames, vr_sub["per_viewpoint"])),
                                            "n": vr_sub["n"]},
                "csv": csv2,
            }

            # ---- joint retrieval
            jm = joint_metrics(pp, viewpoint_names=vnames)

            pair_reports.append({"pair": [i, j], "key": key, "N": N, "V": V, "missing_views": missing,
                                 "study1": s1, "study2": s2, "joint": jm})
            fig1_panels.append((f"{i} (rows) vs {j} (columns)", Sf, fig_ids, fig_ids))
            fig2_panels.append((f"{i} (rows) vs {j} (columns)", st["mean"], st["half"], vnames, vnames))
            cmc_curves.append((key, ranks, N))

        f1 = f"fig1_study1_{slug}.png"
        plots.study1_figure(fig1_panels, os.path.join(out_dir, f1),
                            suptitle=f"Study 1 - {label} ({_weights_label(src)})")
        f2 = f"fig2_study2_{slug}.png"
        plots.study2_figure(fig2_panels, os.path.join(out_dir, f2),
                            suptitle=f"Study 2 - {label} ({_weights_label(src)})")
        f3 = f"cmc_{slug}.png"
        plots.cmc_figure(cmc_curves, os.path.join(out_dir, f3), title=f"Study 1 shape retrieval (CMC) - {label}")
        figs = {"study1": f1, "study2": f2, "cmc": f3}
        figures_md[slug] = figs
        fp = dict(getattr(src, "fingerprint", {}) or {})
        report_sources.append({"name": label, "slug": slug, "fingerprint": fp, "untrained": _is_untrained(fp),
                               "dataset": dataset, "pairs": pair_reports, "figures": figs})

    report = {
        "cvret_version": cvret_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": int(seed),
        "objects": objects,
        "study2_objects": study2_objects,
        "pairs": [list(p) for p in pairs],
        "distance": "d(x, y) = mean over feature elements of (x - y)^2 = ||x - y||^2 / D",
        "ci": {"kind": CI_KIND, "level": CI_LEVEL},
        "missing_view_policy": MISSING_VIEW_POLICY,
        "tie_rule": TIE_RULE,
        "weights_note": weights_note,
        "untrained": any(s["untrained"] for s in report_sources),
        "sources": report_sources,
        "trained_on": sorted(str(c) for c in trained_on),
    }
    report["headline"] = headline_rows(report)
    report["per_category_comparison"] = per_category_comparison(report)
    report = _jsonable(report)
    with open(os.path.join(out_dir, "report.json"), "w") as fh:
        json.dump(report, fh, indent=1, allow_nan=False)
    with open(os.path.join(out_dir, "report.md"), "w") as fh:
        fh.write(report_markdown(report))
    return report


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------

HEADLINE_COLUMNS = ("source", "pair", "N", "acc@1", "acc@5", "acc@10", "MRR", "diag-min", "view-acc")


def headline_rows(report: dict) -> list[dict]:
    rows = []
    for s in report["sources"]:
        for p in s["pairs"]:
            s1, s2 = p["study1"], p["study2"]
            rows.append({"source": s["name"], "pair": p["key"], "N": p["N"],
                         "acc@1": s1.get("acc@1"), "acc@5": s1.get("acc@5"), "acc@10": s1.get("acc@10"),
                         "MRR": s1.get("mrr"), "diag-min": s1.get("diag_min_frac"),
                         "view-acc": s2["view_acc"]["overall"]})
    return rows


def per_category_comparison(report: dict) -> list[dict]:
    """Per category and sketch-query pair, acc@1 / acc@5 of every index: zero-shot transfer in one table.

    Rows for pairs whose query domain is `sketch` (all pairs when none is); `trained` marks the
    categories a fine-tuned encoder saw, so held-out categories read as zero-shot results.
    """
    trained = set(report.get("trained_on") or ())
    keys = [_pair_key(*p) for p in report["pairs"]]
    keys = [k for k, p in zip(keys, report["pairs"]) if p[0] == "sketch"] or keys
    rows = []
    for key in keys:
        per_src = {}
        for s in report["sources"]:
            p = next((p for p in s["pairs"] if p["key"] == key), None)
            per_src[s["name"]] = (p or {}).get("study1", {}).get("per_category") or {}
        cats = sorted({c for per in per_src.values() for c in per})
        for c in cats:
            row = {"category": c, "trained": c in trained, "pair": key,
                   "n": next((per[c]["n"] for per in per_src.values() if c in per), None)}
            for name, per in per_src.items():
                row[name] = {k: per.get(c, {}).get(k) for k in ("acc@1", "acc@5")}
            rows.append(row)
    return rows


def _f(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return "-"
    return f"{v:.{nd}f}"


def headline_table(report: dict) -> str:
    """Plain-text table with aligned columns: source, pair, N, acc@1, acc@5, acc@10, MRR, diag-min, view-acc."""
    rows = report.get("headline") or headline_rows(report)
    cells = [list(HEADLINE_COLUMNS)]
    for r in rows:
        cells.append([str(r["source"]), str(r["pair"])] + [_f(r[c]) for c in HEADLINE_COLUMNS[2:]])
    widths = [max(len(row[c]) for row in cells) for c in range(len(HEADLINE_COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[c].ljust(widths[c]) if c < 2 else row[c].rjust(widths[c]) for c in range(len(row))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if report.get("untrained"):
        lines.append("WARNING: numbers from untrained random weights - not the paper's.")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def _fp_summary(fp: dict) -> str:
    if not fp:
        return "-"
    keys = [k for k in ("model", "layer", "weights", "dtype", "input_size") if k in fp] or list(fp)[:5]
    return ", ".join(f"{k}={fp[k]}" for k in keys)


def report_markdown(report: dict) -> str:
    L: list[str] = ["# cvret evaluation report", ""]
    untrained = [s["name"] for s in report["sources"] if s.get("untrained")]
    if untrained:
        L += [f"> **WARNING: the numbers for {', '.join(untrained)} come from UNTRAINED RANDOM WEIGHTS. "
              "They test the pipeline only and are NOT the paper's results.**", ""]
    if report.get("weights_note"):
        L += [f"> Note on weights: {report['weights_note']}", ""]
    L += [f"cvret {report['cvret_version']}, created {report['created']}, seed {report['seed']}; "
          f"Study 1 figure: {report['objects']} objects; Study 2: up to {report['study2_objects']} objects.", ""]

    L += ["## Indexes", ""]
    rows = []
    for s in report["sources"]:
        d = s["dataset"]
        rows.append([s["name"], _fp_summary(s["fingerprint"]), d["n_shapes"], d["n_viewpoints"],
                     ", ".join(d["domains"]), ", ".join(f"{k}: {v}" for k, v in d["categories"].items()) or "-"])
    L += [_md_table(["index", "encoder", "shapes", "V", "domains", "categories"], rows), ""]

    L += ["## Headline", "", "Study 1 shape retrieval over all N shapes (row = query shape in the first domain, "
          "gallery = all N shapes in the second); view-acc = Study 2 view retrieval over all N shapes.", ""]
    L += [_md_table(list(HEADLINE_COLUMNS),
                    [[r["source"], r["pair"]] + [_f(r[c]) for c in HEADLINE_COLUMNS[2:]] for r in report["headline"]]), ""]
    if len(report["sources"]) > 1:
        L += ["### Side by side", ""]
        names = [s["name"] for s in report["sources"]]
        rows = []
        for pi, (i, j) in enumerate(report["pairs"]):
            for metric, getter in (("acc@1", lambda p: p["study1"].get("acc@1")),
                                   ("acc@10", lambda p: p["study1"].get("acc@10")),
                                   ("MRR", lambda p: p["study1"].get("mrr")),
                                   ("diag-min", lambda p: p["study1"].get("diag_min_frac")),
                                   ("view-acc", lambda p: p["study2"]["view_acc"]["overall"]),
                                   ("joint acc@1", lambda p: p["joint"].get("acc@1")),
                                   ("joint viewpoint-acc", lambda p: p["joint"].get("viewpoint_acc"))):
                rows.append([f"{i}-{j}", metric] + [_f(getter(s["pairs"][pi])) for s in report["sources"]])
        L += [_md_table(["pair", "metric"] + names, rows), ""]

    comparison = report.get("per_category_comparison") or []
    if len(report["sources"]) > 1 and comparison:
        names = [s["name"] for s in report["sources"]]
        L += ["### Per category: " + " vs ".join(names), "",
              "Study 1 acc@1 / acc@5 per query category (gallery: all N shapes). "
              + ("Categories marked * were trained on; the others are zero-shot." if report.get("trained_on")
                 else "No training categories given (`cvret eval --trained-on`)."), ""]
        L += [_md_table(["category", "pair", "n"] + [f"{n} acc@1 / acc@5" for n in names],
                        [[r["category"] + (" *" if r["trained"] else ""), r["pair"], r["n"]]
                         + [f"{_f(r[n]['acc@1'])} / {_f(r[n]['acc@5'])}" for n in names] for r in comparison]), ""]

    for s in report["sources"]:
        L += [f"## {s['name']}", ""]
        if s.get("untrained"):
            L += ["> **Untrained random weights: not the paper's numbers.**", ""]
        L += ["Encoder fingerprint:", "", "```", json.dumps(s["fingerprint"], indent=1, sort_keys=True), "```", ""]
        d = s["dataset"]
        L += [_md_table(["domain", "views present", "complete shapes", "shapes missing some views",
                         "shapes without the domain"],
                        [[k, d["views_present"][k], d["shapes_complete"][k], d["shapes_missing_some_views"][k],
                          d["shapes_without_domain"][k]] for k in d["views_present"]]), ""]
        figs = s["figures"]
        L += ["### Study 1: aggregated feature similarity (seed eq. 1)", "",
              f"![Study 1]({figs['study1']})", "",
              f"Distances between {report['objects']} randomly chosen shapes (seed {report['seed']}); "
              "darker = closer (viridis: low distance dark). Grey cells: no shared viewpoint.", ""]
        rows = []
        for p in s["pairs"]:
            s1 = p["study1"]
            rows.append([p["key"], p["N"], _f(s1.get("acc@1")), _f(s1.get("acc@5")), _f(s1.get("acc@10")),
                         _f(s1.get("mean_rank"), 1), _f(s1.get("median_rank"), 1), _f(s1.get("mrr")),
                         _f(s1.get("diag_min_frac")), _f(s1.get("diag_min_frac_figure")),
                         _f(s1.get("category_acc@1")), f"[csv]({s1['csv']})"])
        L += [_md_table(["pair", "N", "acc@1", "acc@5", "acc@10", "mean rank", "median rank", "MRR", "diag-min",
                         "diag-min (figure)", "category acc@1", "matrix"], rows), ""]
        L += [f"![CMC]({figs['cmc']})", ""]
        for p in s["pairs"]:
            per = p["study1"].get("per_category")
            if per:
                L += [f"Per query category, {p['key']} (gallery: all N shapes):", ""]
                L += [_md_table(["category", "n", "acc@1", "acc@5", "acc@10", "mean rank", "MRR", "category acc@1"],
                                [[c, m["n"], _f(m.get("acc@1")), _f(m.get("acc@5")), _f(m.get("acc@10")),
                                  _f(m.get("mean_rank"), 1), _f(m.get("mrr")), _f(m.get("category_acc@1"))]
                                 for c, m in per.items()]), ""]
        L += ["Missing views (shape pairs are compared on the viewpoints they share):", ""]
        mrows = []
        for p in s["pairs"]:
            mv, (i, j) = p["missing_views"], p["pair"]
            mrows.append([p["key"], mv["shapes_in_pair"], mv["shapes_excluded"], mv["shapes_missing_views_in_" + i],
                          mv["shapes_missing_views_in_" + j], mv["shape_pairs_on_fewer_than_V_viewpoints"],
                          mv["shape_pairs_without_shared_viewpoint"], mv["true_pairs_on_fewer_than_V_viewpoints"]])
        L += [_md_table(["pair", "N", "shapes excluded (a domain missing)", "shapes missing views (first domain)",
                         "shapes missing views (second domain)", "shape pairs on < V viewpoints",
                         "shape pairs with no shared viewpoint", "true pairs on < V viewpoints"], mrows), ""]

        L += ["### Study 2: matching views across domains (seed eq. 2)", "", f"![Study 2]({figs['study2']})", "",
              "Cells: mean ± half-width of the 95% Student t-interval over objects (n per cell in brackets).", ""]
        for p in s["pairs"]:
            s2 = p["study2"]
            vn = list(s2["view_acc"]["per_viewpoint"].keys())
            L += [f"**{p['key']}** ({s2['n_objects']} objects; rows {p['pair'][0]}, columns {p['pair'][1]})", ""]
            rows = []
            for k, name in enumerate(vn):
                row = [name]
                for h in range(len(vn)):
                    m, hc, n = s2["mean"][k][h], s2["half_ci"][k][h], s2["n"][k][h]
                    cell = f"{_f(m, 4)} ± {_f(hc, 4)} ({n})"
                    row.append(f"**{cell}**" if h == k else cell)
                ov = s2["ci_overlap"][k]
                row.append("n/a" if ov["overlaps"] is None else ("yes: " + ", ".join(ov["with"]) if ov["overlaps"] else "no"))
                row.append(_f(s2["view_acc"]["per_viewpoint"][name]))
                rows.append(row)
            L += [_md_table(["view"] + vn + ["diag CI overlaps", "view acc"], rows), ""]
            L += [f"View retrieval accuracy (view k strictly nearest to view k of the same object, over all N shapes): "
                  f"{_f(s2['view_acc']['overall'])} (n = {s2['view_acc']['n']}, left out {s2['view_acc']['n_left_out']}).", ""]

        L += ["### Joint shape + viewpoint retrieval (beyond the seed)", "",
              "Each view of the first domain queried against all N x V views of the second (single-view distances). "
              "acc@k: a view of the true shape among the k nearest views; shape acc@k: true shape among the k nearest "
              "distinct shapes; viewpoint acc: the best-ranked view of the true shape has the query's viewpoint; "
              "exact@1: the top-1 view is the query's shape and viewpoint.", ""]
        rows = []
        for p in s["pairs"]:
            jm = p["joint"]
            rows.append([p["key"], jm.get("n_queries"), _f(jm.get("acc@1")), _f(jm.get("acc@5")), _f(jm.get("acc@10")),
                         _f(jm.get("shape_acc@1")), _f(jm.get("shape_acc@10")), _f(jm.get("mrr")),
                         _f(jm.get("viewpoint_acc")), _f(jm.get("exact_view_acc@1"))])
        L += [_md_table(["pair", "queries", "acc@1", "acc@5", "acc@10", "shape acc@1", "shape acc@10", "MRR",
                         "viewpoint acc", "exact@1"], rows), ""]

    L += ["## Method", "",
          f"- Distance: {report['distance']}.",
          "- Study 1 (eq. 1): mean of the view distances over the viewpoints both shapes have, view k against view k.",
          "- Study 2 (eq. 2): per cell (k, h), mean over objects of d(view k in domain i, view h in domain j) of the same object.",
          f"- Confidence intervals: {report['ci']['kind']}.",
          f"- Missing views: {report['missing_view_policy']}",
          f"- Ties: {report['tie_rule']}. diag-min = fraction of rows whose minimum is on the diagonal (ties allowed).",
          "- All matrices are in the CSV files next to this report; every number is in report.json.", ""]
    return "\n".join(L)
