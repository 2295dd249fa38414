"""Metrics as pure functions of arrays: ranks, acc@k, MRR, t-intervals, view retrieval, joint retrieval."""
from __future__ import annotations

from typing import Sequence

import numpy as np

from .common import CI_LEVEL, KS
from .passes import PairPass

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


def true_ranks(S: np.ndarray) -> np.ndarray:
    """1-based rank of the diagonal (true) shape in each row, ties pessimistic (count of values <= true).

    S may be N x M with M >= N (a gallery larger than the query set): row a's true shape is column a."""
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


def category_metrics(S: np.ndarray, cats: Sequence[str], ks: Sequence[int] = KS,
                     gallery_cats: Sequence[str] | None = None) -> dict:
    """Per query category: the metrics of :func:`retrieval_metrics` (whole gallery), plus category acc@1
    (every gallery shape at the row minimum has the query's category — pessimistic on ties).
    `gallery_cats`: the categories of S's columns when the gallery is larger than the queries (default `cats`).
    Returns {'overall_category_acc@1': float, 'per_category': {cat: {...}}}."""
    S = np.asarray(S, dtype=np.float64)
    cats = np.asarray([str(c) for c in cats])
    gcats = cats if gallery_cats is None else np.asarray([str(c) for c in gallery_cats])
    at_min = S <= S.min(axis=1, keepdims=True)
    wrong_cat_at_min = (at_min & (gcats[None, :] != cats[:, None])).any(axis=1)
    cat_hit = ~wrong_cat_at_min
    per = {}
    for c in sorted(set(cats.tolist())):
        rows = np.flatnonzero(cats == c)
        m = retrieval_metrics(S, ks, rows=rows)
        m["category_acc@1"] = float(cat_hit[rows].mean())
        per[c] = m
    return {"category_acc@1": float(cat_hit.mean()) if len(cats) else None, "per_category": per}


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
