"""Category-level retrieval as the SHREC sketch tracks measure it (relevant = same category).

The metric functions are pure (arrays in, arrays out) so they can be checked by hand; the
blocked feature pass and the report writer sit below them. Definitions (SHREC'13/'14 sketch
tracks, after the Princeton Shape Benchmark), for one query whose category has R shapes in
the gallery, on the gallery ranked by distance (ties by gallery order):
* NN: 1 if the first result is relevant;
* first tier (FT): relevant shapes in the top R, divided by R; second tier (ST): in the top 2R;
  (PSB's "C−1" is R when the query is itself in the gallery; SHREC's sketches are not);
* E-measure: 2PR/(P+R) of precision P and recall R over the first 32 results;
* DCG: sum of rel_i / log2(i) (rel_1 undivided), divided by the ideal DCG of R relevant results first;
* AP: the mean over the R relevant shapes of the precision at each one's rank (mAP over queries);
* precision-recall: interpolated precision (the best precision at any recall >= r) at r = 0.05 ... 1.
Each is averaged over queries (micro) and over classes (macro: per class, then the mean of classes).
"""
from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import numpy as np

from . import gemm
from .errors import StudyError
from .fsio import atomic_path, atomic_write_text

METRICS = ("nn", "first_tier", "second_tier", "e_measure", "dcg", "map")
E_TOP = 32
RECALL_LEVELS = np.round(np.arange(1, 21) * 0.05, 2)


# ------------------------------------------------------------------------------ pure functions

def ranked_relevance(dist: np.ndarray, query_labels, gallery_labels) -> tuple[np.ndarray, np.ndarray]:
    """(nq, ng) bool: whether the gallery item at each rank shares the query's label; and R per query.

    `dist` is (nq, ng); ranking is ascending distance, ties broken by gallery order (stable)."""
    dist = np.asarray(dist, dtype=np.float64)
    q = np.asarray(query_labels, dtype=object)
    g = np.asarray(gallery_labels, dtype=object)
    if dist.shape != (len(q), len(g)):
        raise ValueError(f"distances {dist.shape} do not match {len(q)} queries x {len(g)} gallery items")
    order = np.argsort(dist, axis=1, kind="stable")
    rel = g[order] == q[:, None]
    n_rel = (g[None, :] == q[:, None]).sum(axis=1)
    return rel.astype(bool), n_rel.astype(np.int64)


def query_metrics(rel: np.ndarray, n_rel: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query NN, FT, ST, E-measure, DCG and AP from ranked relevance (queries with R = 0 give NaN)."""
    rel = np.asarray(rel, dtype=bool)
    R = np.asarray(n_rel, dtype=np.int64)
    nq, ng = rel.shape
    hits = np.cumsum(rel, axis=1)                                    # relevant within the top i+1
    ranks = np.arange(1, ng + 1)
    Rs = np.maximum(R, 1)
    at = lambda k: hits[np.arange(nq), np.clip(k, 1, ng) - 1]        # noqa: E731  hits in the top k
    out = {
        "nn": rel[:, 0].astype(np.float64) if ng else np.zeros(nq),
        "first_tier": at(R) / Rs,
        "second_tier": at(2 * R) / Rs,
    }
    top = min(E_TOP, ng)
    p32 = hits[:, top - 1] / top
    r32 = hits[:, top - 1] / Rs
    with np.errstate(invalid="ignore", divide="ignore"):
        out["e_measure"] = np.where(p32 + r32 > 0, 2 * p32 * r32 / (p32 + r32), 0.0)
    disc = np.ones(ng)
    disc[1:] = 1.0 / np.log2(ranks[1:])
    dcg = (rel * disc).sum(axis=1)
    ideal = np.cumsum(disc)[np.clip(R, 1, ng) - 1]
    out["dcg"] = dcg / ideal
    out["map"] = (rel * hits / ranks).sum(axis=1) / Rs
    none = R == 0
    for k in out:
        out[k] = np.where(none, np.nan, out[k].astype(np.float64))
    return out


def pr_curve(rel: np.ndarray, n_rel: np.ndarray, levels=RECALL_LEVELS) -> np.ndarray:
    """(nq, len(levels)) interpolated precision: the best precision at any rank with recall >= level."""
    rel = np.asarray(rel, dtype=bool)
    R = np.maximum(np.asarray(n_rel, dtype=np.int64), 1)
    hits = np.cumsum(rel, axis=1)
    prec = hits / np.arange(1, rel.shape[1] + 1)
    recall = hits / R[:, None]
    # best precision from each rank onwards (recall only grows with rank)
    best_after = np.maximum.accumulate(prec[:, ::-1], axis=1)[:, ::-1]
    out = np.zeros((rel.shape[0], len(levels)))
    for j, lv in enumerate(levels):
        reach = recall >= lv - 1e-12
        first = np.where(reach.any(axis=1), reach.argmax(axis=1), -1)
        out[:, j] = np.where(first >= 0, best_after[np.arange(len(R)), np.maximum(first, 0)], 0.0)
    return out


def summarize(per_query: dict[str, np.ndarray], labels, pr: np.ndarray | None = None) -> dict:
    """Micro (over queries), macro (over classes) and per-class means of per-query metrics."""
    labels = np.asarray(labels, dtype=object)
    valid = ~np.isnan(per_query[METRICS[0]])
    classes = sorted(set(labels[valid].tolist()))
    per_class = {}
    for c in classes:
        m = valid & (labels == c)
        per_class[c] = {"n_queries": int(m.sum()), **{k: float(per_query[k][m].mean()) for k in METRICS}}
        if pr is not None:
            per_class[c]["pr"] = pr[m].mean(axis=0).tolist()
    out = {"n_queries": int(valid.sum()), "n_classes": len(classes),
           "micro": {k: float(per_query[k][valid].mean()) if valid.any() else float("nan") for k in METRICS},
           "macro": {k: float(np.mean([per_class[c][k] for c in classes])) if classes else float("nan")
                     for k in METRICS},
           "per_class": per_class}
    if pr is not None:
        out["pr_curve"] = {"recall": RECALL_LEVELS.tolist(),
                           "precision_micro": pr[valid].mean(axis=0).tolist() if valid.any() else [],
                           "precision_macro": (np.mean([per_class[c]["pr"] for c in classes], axis=0).tolist()
                                               if classes else [])}
    return out


# ------------------------------------------------------------------------------ the feature pass

def query_gallery_distances(src, dom_q: str, dom_g: str, *, memory_mb: float = 2048.0):
    """Every present view of `dom_q` against every shape of `dom_g` at the shape's best view.

    Returns (queries, gallery, D): queries as (shape index, viewpoint index) pairs, gallery as
    shape indices, D (nq, ng) the smallest view distance d(x, y) = mean((x - y)^2) between the
    query view and any present view of the gallery shape. A sketch's viewpoint need not exist
    in the gallery (SHREC sketches have none), so the best view stands in for it."""
    pres_q, pres_g = src.present(dom_q), src.present(dom_g)
    q_shapes = np.nonzero(pres_q.any(axis=1))[0]
    g_shapes = np.nonzero(pres_g.any(axis=1))[0]
    if not len(q_shapes) or not len(g_shapes):
        raise StudyError(f"{_label(src)}: no {dom_q if not len(q_shapes) else dom_g} views")
    V = pres_q.shape[1]
    dim = int(src.features(dom_q, q_shapes[:1])[0].shape[-1])  # public API only (storage may change)
    per_shape = max(1, V) * dim * 4 * 2
    block = max(1, int(memory_mb * 2 ** 20 / 4 / per_shape))
    queries = [(int(s), int(k)) for s in q_shapes for k in np.nonzero(pres_q[s])[0]]
    D = np.full((len(queries), len(g_shapes)), np.inf)
    qpos = 0
    for q0 in range(0, len(q_shapes), block):
        qa = q_shapes[q0:q0 + block]
        A, Am = src.features(dom_q, qa)
        Af = A[Am]                                                    # present query views, in `queries` order
        An = (Af.astype(np.float64) ** 2).sum(axis=1)
        for g0 in range(0, len(g_shapes), block):
            gb = g_shapes[g0:g0 + block]
            B, Bm = src.features(dom_g, gb)
            nb = len(gb)
            Bf = B.reshape(nb * V, -1)
            Bn = (Bf.astype(np.float64) ** 2).sum(axis=1)
            G = gemm.matmul(Af, Bf.T).astype(np.float64)
            d = np.maximum(An[:, None] + Bn[None, :] - 2.0 * G, 0.0) / Af.shape[1]
            d = np.where(Bm.reshape(1, -1), d, np.inf).reshape(len(Af), nb, V).min(axis=2)
            D[qpos:qpos + len(Af), g0:g0 + nb] = d
        qpos += len(Af)
    return queries, g_shapes, D


def _label(src) -> str:
    """The index folder (ShapeIndex.summary()['index']), for messages and report keys."""
    return str(src.summary().get("index", src))


def category_pass(src, dom_q: str, dom_g: str, *, memory_mb: float = 2048.0) -> dict:
    """SHREC metrics of one index and domain pair, with category relevance."""
    cats = src.categories
    queries, gallery, D = query_gallery_distances(src, dom_q, dom_g, memory_mb=memory_mb)
    g_labels = [cats.get(src.shapes[g]) for g in gallery]
    q_labels = [cats.get(src.shapes[s]) for s, _ in queries]
    keep = np.array([c is not None for c in q_labels], dtype=bool)
    if not keep.any():
        raise StudyError(f"{_label(src)}: no {dom_q} query has a category; --relevance category "
                         "needs categories (dataset.json, a preset's taxonomy or .cla files)")
    g_lab = np.array([c if c is not None else object() for c in g_labels], dtype=object)  # never relevant
    q_lab = [c for c, k in zip(q_labels, keep) if k]
    rel, n_rel = ranked_relevance(D[keep], q_lab, g_lab)
    per_q = query_metrics(rel, n_rel)
    pr = pr_curve(rel, n_rel)
    out = summarize(per_q, q_lab, pr)
    out["queries_without_category"] = int((~keep).sum())
    out["queries_without_relevant_shape"] = int((n_rel == 0).sum())
    out["gallery_shapes"] = int(len(gallery))
    out["gallery_without_category"] = int(sum(c is None for c in g_labels))
    return out


# ------------------------------------------------------------------------------------ the report

def evaluate_category(sources, out_dir, pairs=(("sketch", "npr"), ("sketch", "rgb")), *, memory_mb: float = 2048.0,
                      cvret_version: str = "", progress: bool = False) -> dict:
    """`cvret eval --relevance category`: report.json, report.md, per-class CSV and the PR figure."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    report = {"relevance": "category", "protocol": "SHREC (see retrieval/shrec.py)", "version": cvret_version,
              "metrics": list(METRICS), "indexes": {}}
    for src in sources:
        name = Path(_label(src)).name
        entry = {"fingerprint": dict(src.fingerprint), "pairs": {}}
        for dq, dg in pairs:
            if dq not in src.domains or dg not in src.domains:
                entry["pairs"][f"{dq}-{dg}"] = {"skipped": f"domain {dq if dq not in src.domains else dg} not in index"}
                continue
            if progress:
                print(f"{name} {dq}->{dg}: category retrieval", flush=True)
            entry["pairs"][f"{dq}-{dg}"] = category_pass(src, dq, dg, memory_mb=memory_mb)
        report["indexes"][name] = entry
    report["seconds"] = round(time.perf_counter() - t0, 2)
    atomic_write_text(out_dir / "report.json", json.dumps(report, indent=1, default=str) + "\n")
    atomic_write_text(out_dir / "report.md", report_markdown(report))
    atomic_write_text(out_dir / "category_per_class.csv", per_class_csv(report))
    _pr_figure(report, out_dir / "fig_pr_curve.png")
    return report


def headline_rows(report: dict) -> list[list[str]]:
    rows = []
    for name, entry in report["indexes"].items():
        for pair, r in entry["pairs"].items():
            if "micro" not in r:
                continue
            for avg in ("micro", "macro"):
                rows.append([name, pair, avg, str(r["n_queries"]), str(r["n_classes"]),
                             *[f"{r[avg][k]:.3f}" for k in METRICS]])
    return rows


def headline_table(report: dict) -> str:
    header = ["index", "pair", "average", "queries", "classes", "NN", "FT", "ST", "E", "DCG", "mAP"]
    rows = [header] + headline_rows(report)
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    text = "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)
    untrained = [n for n, e in report["indexes"].items()
                 if str(e["fingerprint"].get("weights", "")).startswith("untrained")]
    if untrained:
        text += f"\nnote: untrained weights in {', '.join(untrained)}: not CLIP, not a published figure"
    return text


def report_markdown(report: dict) -> str:
    lines = ["# Category-level retrieval (SHREC protocol)", "",
             "A retrieved shape is relevant when it is in the query's category. Each present view of the query "
             "domain is one query; gallery shapes are ranked by their best view. Micro = mean over queries, "
             "macro = mean over classes.", "", "```", headline_table(report), "```", ""]
    for name, entry in report["indexes"].items():
        weights = entry["fingerprint"].get("weights", "")
        if str(weights).startswith("untrained"):
            lines += [f"**{name}: untrained weights ({weights}) — not CLIP, not a published figure.**", ""]
        for pair, r in entry["pairs"].items():
            if "micro" not in r:
                lines += [f"- {name} {pair}: {r.get('skipped', '')}"]
                continue
            lines += [f"## {name}: {pair}", "",
                      f"{r['n_queries']} queries, {r['n_classes']} classes, {r['gallery_shapes']} gallery shapes "
                      f"({r['gallery_without_category']} without a category); "
                      f"{r['queries_without_category']} queries without a category left out.", "",
                      "| class | queries | " + " | ".join(METRICS) + " |",
                      "| --- | --- | " + " | ".join("---" for _ in METRICS) + " |"]
            for c, m in r["per_class"].items():
                lines.append(f"| {c} | {m['n_queries']} | " + " | ".join(f"{m[k]:.3f}" for k in METRICS) + " |")
            lines.append("")
    return "\n".join(lines) + "\n"


def per_class_csv(report: dict) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["index", "pair", "class", "n_queries", *METRICS])
    for name, entry in report["indexes"].items():
        for pair, r in entry["pairs"].items():
            for c, m in r.get("per_class", {}).items():
                w.writerow([name, pair, c, m["n_queries"], *[f"{m[k]:.6f}" for k in METRICS]])
            if "micro" in r:
                for avg in ("micro", "macro"):
                    w.writerow([name, pair, f"({avg})", r["n_queries"], *[f"{r[avg][k]:.6f}" for k in METRICS]])
    return buf.getvalue()


def _pr_figure(report: dict, path: Path) -> None:
    from matplotlib.figure import Figure  # no pyplot: no global backend or figure state

    fig = Figure(figsize=(5, 4), dpi=120)
    ax = fig.add_subplot()
    for name, entry in report["indexes"].items():
        for pair, r in entry["pairs"].items():
            pr = r.get("pr_curve")
            if pr and pr["precision_micro"]:
                ax.plot(pr["recall"], pr["precision_micro"], marker=".", label=f"{name} {pair}")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision (interpolated, mean over queries)")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Precision-recall, category relevance")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png")
