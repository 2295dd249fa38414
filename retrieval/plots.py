"""Figures of the studies and result sheets, through matplotlib's object-oriented `Figure` API.

`Figure` objects need no pyplot state and no backend choice, so importing this module leaves
the process's matplotlib (backend, open figures) as it was; files are written atomically.

Colour convention of the distance heatmaps: 'viridis' with low values dark, so *darker = closer*
(as in the seed's figures). Cells that are undefined (+inf: no shared viewpoint; NaN: no object) are
drawn light grey. Every panel has its own colour bar and its own scale (one scale within a panel).
"""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

from .fsio import atomic_path

DISTANCE_CMAP = "viridis"   # low distance = dark purple: darker = closer
MAX_LABEL = 11


def _short(label: str, n: int = MAX_LABEL) -> str:
    """Truncate in the middle ('1a2b…0003'), so ids sharing a long prefix or suffix stay distinguishable."""
    label = str(label)
    if len(label) <= n:
        return label
    head = (n - 1) // 2
    return label[:head] + "…" + label[-(n - 1 - head):]


def _cmap():
    return matplotlib.colormaps[DISTANCE_CMAP].with_extremes(bad="#d9d9d9")


def _masked(M) -> np.ma.MaskedArray:
    return np.ma.masked_invalid(np.asarray(M, dtype=np.float64))


def _save(fig: Figure, out_path: str) -> str:
    d = os.path.dirname(os.path.abspath(out_path))
    os.makedirs(d, exist_ok=True)
    with atomic_path(out_path, fsync=False) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png")
    return out_path


def study1_figure(panels: Sequence[tuple], out_path: str, suptitle: str | None = None) -> str:
    """Seed Fig. 1: one N x N heatmap per domain pair, side by side.

    panels: (title, matrix (n, n), row_labels, col_labels) each; rows are shapes in the first domain,
    columns shapes in the second. Darker = closer.
    """
    n = len(panels)
    size = max(len(p[2]) for p in panels) if panels else 1
    cell = 0.42 if size <= 20 else max(0.08, 8.0 / size)
    w = max(4.0, size * cell + 1.8)
    fig = Figure(figsize=(w * max(n, 1), w * 0.92 + 0.6), layout="constrained")
    axes = fig.subplots(1, max(n, 1), squeeze=False)
    for ax, (title, M, rl, cl) in zip(axes[0], panels):
        Mm = _masked(M)
        im = ax.imshow(Mm, cmap=_cmap(), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_ylabel("query shape", fontsize=8)
        ax.set_xlabel("gallery shape", fontsize=8)
        if len(rl) <= 40:
            ax.set_yticks(range(len(rl)), [_short(s) for s in rl], fontsize=7)
            ax.set_xticks(range(len(cl)), [_short(s) for s in cl], fontsize=7, rotation=90)
        else:
            ax.set_xticks([])
            ax.set_yticks([])
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="distance (darker = closer)")
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, out_path)


def study2_figure(panels: Sequence[tuple], out_path: str, suptitle: str | None = None) -> str:
    """Seed Fig. 2: one V x V heatmap per domain pair with "mean ± half-CI" written in each cell.

    panels: (title, mean (V, V), half_ci (V, V), row_labels, col_labels) each. Darker = closer.
    """
    n = len(panels)
    V = max(np.asarray(p[1]).shape[0] for p in panels) if panels else 1
    side = max(3.6, 1.25 * V + 1.6)
    fig = Figure(figsize=(side * max(n, 1), side * 0.9 + 0.5), layout="constrained")
    axes = fig.subplots(1, max(n, 1), squeeze=False)
    for ax, (title, M, H, rl, cl) in zip(axes[0], panels):
        M = np.asarray(M, dtype=np.float64)
        H = np.asarray(H, dtype=np.float64)
        Mm = _masked(M)
        im = ax.imshow(Mm, cmap=_cmap(), interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.set_yticks(range(len(rl)), [str(s) for s in rl], fontsize=8)
        ax.set_xticks(range(len(cl)), [str(s) for s in cl], fontsize=8)
        finite = M[np.isfinite(M)]
        mid = (finite.min() + finite.max()) / 2.0 if finite.size else 0.0
        fs = 8 if V <= 4 else max(4, 8 - (V - 4))
        for k in range(M.shape[0]):
            for h in range(M.shape[1]):
                m = M[k, h]
                if not np.isfinite(m):
                    txt, colour = "n/a", "black"
                else:
                    hc = H[k, h]
                    txt = f"{m:.3g}\n± {hc:.2g}" if np.isfinite(hc) else f"{m:.3g}\n± n/a"
                    colour = "white" if m < mid else "black"
                ax.text(h, k, txt, ha="center", va="center", fontsize=fs, color=colour,
                        fontweight="bold" if h == k else "normal")
        fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="mean distance (darker = closer)")
    if suptitle:
        fig.suptitle(suptitle)
    return _save(fig, out_path)


def cmc_figure(curves: Sequence[tuple], out_path: str, title: str | None = None, max_k: int = 50) -> str:
    """Cumulative match curves: curves are (label, ranks (1-based array), M gallery shapes); acc@k for
    k = 1..min(M, max_k), with the chance line k / M."""
    fig = Figure(figsize=(5.5, 4))
    ax = fig.subplots()
    for label, ranks, N in curves:
        ranks = np.asarray(ranks)
        K = int(min(N, max_k))
        ks = np.arange(1, K + 1)
        acc = [(ranks <= k).mean() for k in ks]
        ax.plot(ks, acc, marker="." if K <= 20 else None, label=f"{label} ({len(ranks)} queries, gallery {N})")
        if K <= N and N > 0:
            ax.plot(ks, ks / N, ls=":", lw=0.8, color="grey")
    ax.set_xlabel("k")
    ax.set_ylabel("acc@k (true shape in top k)")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, out_path)


def _read_image(path):
    if path is None or not os.path.exists(str(path)):
        return None
    try:
        from PIL import Image

        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:  # pragma: no cover - PIL missing or unreadable image
        try:
            from matplotlib.image import imread

            return imread(path)
        except Exception:
            return None


def result_sheet(query_image_path, hits: Sequence[tuple], out_path: str, title: str | None = None) -> str:
    """Draw the query sketch beside its top matches.

    hits: (image_path, label) per match, best first; an unreadable / missing image is drawn as a grey box
    with its label. Returns `out_path`.
    """
    n = len(hits) + 1
    fig = Figure(figsize=(2.3 * n, 2.8))
    axes = fig.subplots(1, n, squeeze=False)
    items = [(query_image_path, "query")] + [(p, lab) for p, lab in hits]
    for r, (ax, (path, label)) in enumerate(zip(axes[0], items)):
        img = _read_image(path)
        if img is None:
            ax.add_patch(Rectangle((0, 0), 1, 1, color="#dddddd"))
            ax.text(0.5, 0.5, "missing", ha="center", va="center", fontsize=8)
            ax.set_xlim(0, 1)
            ax.set_ylim(0, 1)
        else:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None)
        ax.set_xticks([])
        ax.set_yticks([])
        for sp in ax.spines.values():
            sp.set_edgecolor("tab:blue" if r == 0 else "#888888")
            sp.set_linewidth(2.5 if r == 0 else 0.8)
        ax.set_title(str(label) if r == 0 else f"#{r} {label}", fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_path)
