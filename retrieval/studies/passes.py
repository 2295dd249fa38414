"""Blocked passes over the features: Study 1 (eq. 1), per-object view distances (eq. 2), joint retrieval.

Features are read block by block under a memory budget (`memory_mb`) and compared with the
blocked pairwise form of the view distance (`retrieval.distance.pairwise_mean_sq`), whose
matrix products run on `device` ('cpu' or 'cuda'). Every function returns arrays; no files.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ..distance import centred_with_norms, common_centre, pairwise_mean_sq
from ..errors import StudyError
from .common import DEFAULT_MEMORY_MB, _check_domain, _check_viewpoints, _log, _src_label

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
            X, nrm = centred_with_norms(f, m, self.centre)
            item = (c0, c1, X, m, nrm)
            if self.cache is not None:
                self.cache.append(item)
            yield item
        if self.cache is not None:
            self._filled = True


def _iter_row_blocks(src, dom_i, dom_j, idx, V, memory_mb, extra_per_shape=0.0, gallery=None):
    """Yield (r0, r1, A, Am, An, columns) with A centred; `columns` iterates the gallery blocks
    (the shapes `gallery`, default the query shapes `idx`)."""
    gallery = idx if gallery is None else gallery
    D = _feature_dim(src, dom_i, idx, V)
    block = _block_rows(V, D, memory_mb, extra_per_shape)
    cache = len(gallery) * V * D * 4 * 2 <= memory_mb * 2**20 / 2
    centre = None
    cols = None
    for r0 in range(0, len(idx), block):
        r1 = min(len(idx), r0 + block)
        f, m = _load(src, dom_i, idx[r0:r1], V)
        if f.shape[2] != D:
            raise StudyError(f"index '{_src_label(src)}' returned features of length {f.shape[2]}, expected {D}")
        if centre is None:
            centre = common_centre(f, m)
            cols = _Columns(src, dom_j, gallery, V, block, centre, cache)
        A, An = centred_with_norms(f, m, centre)
        yield r0, r1, A, m, An, cols, D


def _pair_args(src, dom_i: str, dom_j: str, shape_idx) -> tuple[int, np.ndarray]:
    """Check a domain pair against a source: the number of viewpoints and the shapes' positions."""
    V = _check_viewpoints(src)
    _check_domain(src, dom_i)
    _check_domain(src, dom_j)
    return V, _as_index(src, shape_idx)


def _as_index(src, shape_idx) -> np.ndarray:
    if shape_idx is None:
        return np.arange(len(src.shapes), dtype=np.int64)
    return np.asarray(shape_idx, dtype=np.int64).reshape(-1)


def shape_distance_matrix(src, dom_i: str, dom_j: str, shape_idx=None, *, memory_mb: float = DEFAULT_MEMORY_MB,
                          return_counts: bool = False, device: str = "cpu"):
    """Seed eq. 1: (N, N) float64, row = shape in `dom_i`, column = shape in `dom_j`.

    ``S[a, b]`` = mean over the viewpoints both have of ``||A_k - B_k||^2 / D``; ``+inf`` when they share
    none. With ``return_counts`` also returns the (N, N) int number of shared viewpoints.
    """
    V, idx = _pair_args(src, dom_i, dom_j, shape_idx)
    N = len(idx)
    num = np.zeros((N, N), dtype=np.float64)
    cnt = np.zeros((N, N), dtype=np.int32)
    for r0, r1, A, Am, An, cols, _ in _iter_row_blocks(src, dom_i, dom_j, idx, V, memory_mb):
        for c0, c1, B, Bm, Bn in cols:
            for k in range(V):
                d = pairwise_mean_sq(A[:, k, :], B[:, k, :], An[:, k], Bn[:, k], device)
                valid = Am[:, k, None] & Bm[None, :, k]
                num[r0:r1, c0:c1] += np.where(valid, d, 0.0)
                cnt[r0:r1, c0:c1] += valid
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(cnt > 0, num / np.maximum(cnt, 1), np.inf)
    return (S, cnt) if return_counts else S


def view_distance_matrix(src, dom_i: str, dom_j: str, shape_idx=None, *, memory_mb: float = DEFAULT_MEMORY_MB,
                         device: str = "cpu"):
    """Per-object view distances (N, V, V) float64: ``P[n, k, h] = d(A_k^i, A_h^j)`` for object n;
    NaN where view k is missing in `dom_i` or view h is missing in `dom_j`. Average with
    :func:`view_distance_stats` to get seed eq. 2 with confidence intervals."""
    V, idx = _pair_args(src, dom_i, dom_j, shape_idx)
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
        centre = common_centre(fa, ma)
        A, An = centred_with_norms(fa, ma, centre)
        B, Bn = centred_with_norms(fb, mb, centre)
        d = pairwise_mean_sq(A, B, An, Bn, device)                  # (n, V, V)
        valid = ma[:, :, None] & mb[:, None, :]
        out[r0:r1] = np.where(valid, d, np.nan)
    return out


@dataclass
class PairPass:
    """Everything one blocked pass over a domain pair produces (indices relative to `shape_idx`)."""
    S: np.ndarray                 # (N, M) Study 1: N query shapes x M gallery shapes
    shared: np.ndarray            # (N, M) number of shared viewpoints
    per_object: np.ndarray        # (N, V, V) view distances of the same object, NaN where missing
    joint_rank_view: np.ndarray   # (N, V) rank of the best view of the true shape among all gallery views
    joint_rank_shape: np.ndarray  # (N, V) rank of the true shape when shapes are ranked by their best view
    joint_vp_ok: np.ndarray       # (N, V) bool: best view of the true shape has the query's viewpoint
    joint_exact: np.ndarray       # (N, V) bool: the overall top-1 gallery view is the query's (shape, viewpoint)
    joint_valid: np.ndarray       # (N, V) bool: view present in domain i (a query)
    mask_i: np.ndarray            # (N, V) present in domain i
    mask_j: np.ndarray            # (M, V) present in domain j (the gallery)
    gallery: np.ndarray | None = None  # (M,) gallery shape positions: the N query shapes first, in their order
    extra: dict = field(default_factory=dict)


def gallery_order(shape_idx: np.ndarray, gallery_idx=None) -> np.ndarray:
    """The gallery with the query shapes first (so query a's true shape is gallery column a)."""
    shape_idx = np.asarray(shape_idx, dtype=np.int64).reshape(-1)
    if gallery_idx is None:
        return shape_idx
    rest = np.setdiff1d(np.asarray(gallery_idx, dtype=np.int64).reshape(-1), shape_idx)
    return np.concatenate([shape_idx, rest])


def pair_pass(src, dom_i: str, dom_j: str, shape_idx=None, *, gallery_idx=None, memory_mb: float = DEFAULT_MEMORY_MB,
              progress: bool = False, device: str = "cpu") -> PairPass:
    """One blocked pass computing every single-view distance between the N x V views of `dom_i` and
    the M x V views of `dom_j` (one matmul per block pair), reduced on the fly to: the Study 1 matrix
    (eq. 1, N x M), the per-object V x V view distances (eq. 2 before averaging) and the joint
    shape+viewpoint retrieval ranks. The gallery is `gallery_idx` (default: the N query shapes) with
    the query shapes first, so that query a's true shape is column a; shapes that have no query
    (e.g. no sketch) stay in the gallery as distractors. Memory: feature blocks plus a
    (rows x V x M x V) float64 distance buffer."""
    V, idx = _pair_args(src, dom_i, dom_j, shape_idx)
    gal = gallery_order(idx, gallery_idx)
    N, M = len(idx), len(gal)
    num = np.zeros((N, M), dtype=np.float64)
    cnt = np.zeros((N, M), dtype=np.int32)
    per_obj = np.full((N, V, V), np.nan)
    rank_view = np.zeros((N, V), dtype=np.int64)
    rank_shape = np.zeros((N, V), dtype=np.int64)
    vp_ok = np.zeros((N, V), dtype=bool)
    exact = np.zeros((N, V), dtype=bool)
    mask_i = np.zeros((N, V), dtype=bool)
    mask_j = np.zeros((M, V), dtype=bool)
    ar = np.arange(V)
    extra_per_shape = 4.0 * V * M * V * 8  # distance buffer + temporaries per row shape
    for r0, r1, A, Am, An, cols, _ in _iter_row_blocks(src, dom_i, dom_j, idx, V, memory_mb, extra_per_shape, gal):
        na = r1 - r0
        mask_i[r0:r1] = Am
        Dr = np.full((na, V, M, V), np.inf, dtype=np.float64)
        Af = A.reshape(na * V, -1)
        for c0, c1, B, Bm, Bn in cols:
            nb = c1 - c0
            mask_j[c0:c1] = Bm
            d = pairwise_mean_sq(Af, B.reshape(nb * V, -1), An.reshape(-1), Bn.reshape(-1), device)
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
        # joint retrieval: query (a, k) against all M x V gallery views
        t = own.min(axis=2)                                          # (na, V) best view of the true shape
        le_all = (Dr <= t[:, :, None, None]).sum(axis=(2, 3))
        le_own = (own <= t[:, :, None]).sum(axis=2)
        rank_view[r0:r1] = 1 + le_all - le_own
        best_per_shape = Dr.min(axis=3)                              # (na, V, M)
        rank_shape[r0:r1] = (best_per_shape <= t[:, :, None]).sum(axis=2)
        diag = own[:, ar, ar]                                        # (na, V)
        ok = np.isfinite(diag) & (diag <= t) & (le_own == 1)
        vp_ok[r0:r1] = ok
        exact[r0:r1] = ok & (rank_view[r0:r1] == 1)
        _log(progress, f"{_src_label(src)} {dom_i}->{dom_j}: shapes {r1}/{N}")
    with np.errstate(invalid="ignore", divide="ignore"):
        S = np.where(cnt > 0, num / np.maximum(cnt, 1), np.inf)
    return PairPass(S=S, shared=cnt, per_object=per_obj, joint_rank_view=rank_view, joint_rank_shape=rank_shape,
                    joint_vp_ok=vp_ok, joint_exact=exact, joint_valid=mask_i.copy(), mask_i=mask_i, mask_j=mask_j,
                    gallery=gal)


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
