"""scale: single-query latency and memory at 1k/10k/100k views (exact: what fits in memory is measured, the rest
extrapolated linearly), against compressed candidate search (PCA codes + exact re-rank); writes the scaling figure."""
from __future__ import annotations

import gc
import os
import time
from pathlib import Path

import numpy as np

import bench_lib as bl
from bench_lib import D_LAYER3, best_of, contended, format_table, ratio, stream_seconds, valid

RANK, CANDIDATES = 128, 100  # pca:128 and cvret's default number of candidates


def measure(ctx) -> dict:
    import faiss
    import retrieval.compress as comp
    from retrieval.distance import exact_knn, exact_mean_sq
    from retrieval.store import FeatureStore
    from retrieval.viewpoints import DEFAULT_VIEWPOINTS

    sizes = ctx.args.scale_sizes or ([1000, 4000] if ctx.quick else [1000, 10000, 100000])
    rep = 3
    budget = ctx.args.scale_mem_gb * 2**30 if ctx.args.scale_mem_gb else 0.45 * bl.mem_available()
    rng = np.random.default_rng(3)
    q = np.maximum(rng.standard_normal(D_LAYER3, dtype=np.float32), 0)
    res: dict = {"sizes": sizes, "memory_budget_gb": budget / 2**30, "rank": RANK, "candidates": CANDIDATES,
                 "exact": {}, "compressed": {}}
    # candidates are re-ranked from a real float16 feature store, as ShapeIndex.search(mode='compressed') does
    sfolder = ctx.tmp / "scale_store"
    bl.make_synthetic_index(sfolder, 160 if ctx.quick else 512, list(DEFAULT_VIEWPOINTS)[:1], seed=11)
    with FeatureStore(sfolder) as store:
        t = time.perf_counter()
        pca = comp.PCACompressor.fit(store.read_features(np.arange(min(256, store.n_views))), RANK)
        res["compressed_fit_s"] = time.perf_counter() - t
        last = None
        for n in sizes:
            need = n * D_LAYER3 * 4
            if need <= budget:
                ctx.log(f"scale: exact N={n} ({need / 2**30:.1f} GiB)")
                X = np.empty((n, D_LAYER3), dtype=np.float32)
                bl.fill_random(X, seed=n)
                norms = np.einsum("ij,ij->i", X, X)  # computed once when an index is loaded
                t = best_of(lambda: exact_knn(X, norms, q, 10), rep)
                st = stream_seconds(X, repeat=rep)["stream_s"]
                res["exact"][n] = {"latency_s": t, "stream_s": st, "memory_bytes": need, "measured": True}
                last = (n, t, st)
                del X
                gc.collect()
            else:
                if last is None:
                    raise RuntimeError("no size fits the memory budget")
                n0, t0, s0 = last
                res["exact"][n] = {"latency_s": t0 * n / n0, "stream_s": s0 * n / n0, "memory_bytes": need,
                                   "measured": False, "extrapolated_from": n0}
            codes = np.ascontiguousarray(rng.standard_normal((n, RANK), dtype=np.float32))
            cidx = faiss.IndexFlatL2(RANK)
            cidx.add(codes)

            def compressed_query():
                _, ids = cidx.search(pca.transform(q[None, :]), CANDIDATES)
                cand = ids[0]
                d = exact_mean_sq(q, store.read_features(cand % store.n_views))
                return cand[np.lexsort((cand, d))[:10]]

            t = best_of(compressed_query, rep)
            cq = pca.transform(q[None, :])
            cand = cidx.search(cq, CANDIDATES)[1][0]
            feats = store.read_features(cand % store.n_views)
            parts = {"project_query_s": best_of(lambda: pca.transform(q[None, :]), rep),
                     "code_search_s": best_of(lambda: cidx.search(cq, CANDIDATES), rep),
                     "read_candidates_s": best_of(lambda: store.read_features(cand % store.n_views), rep),
                     "exact_rerank_s": best_of(lambda: exact_mean_sq(q, feats), rep)}
            mem = n * RANK * 4 + pca.basis.nbytes + pca.mean.nbytes
            res["compressed"][n] = {"latency_s": t, "memory_bytes": mem, "rank": RANK, "candidates": CANDIDATES,
                                    "measured": True, "parts": parts}
            del cidx, codes
            gc.collect()
    try:
        res["figure"] = plot_scaling(res, sizes, Path(ctx.args.figure))
    except Exception as e:  # a figure is a by-product: its failure must not lose the measurements
        res["figure_error"] = f"{type(e).__name__}: {e}"
    res["exact"] = {str(k): v for k, v in res["exact"].items()}
    res["compressed"] = {str(k): v for k, v in res["compressed"].items()}
    return res


def render(res: dict) -> list[str]:
    c_ = contended(res)
    sizes = res["sizes"]
    rows = []
    for n in sizes:
        e = res["exact"][str(n)]
        c = res["compressed"][str(n)]
        rows.append([f"{n:,}", e["latency_s"] * 1e3, "measured" if e["measured"] else "extrapolated",
                     e["stream_s"] * 1e3, valid(e["latency_s"] / e["stream_s"], c_), e["memory_bytes"] / 2**30,
                     c["latency_s"] * 1e3, valid(ratio(e["latency_s"], c["latency_s"]), c_),
                     c["memory_bytes"] / 2**30, ratio(e["memory_bytes"], c["memory_bytes"])])
    last = res["compressed"][str(sizes[-1])]["parts"]
    notes = ["exact: cvret's single-query path (retrieval.distance.exact_knn) on a preallocated float32 array; "
             f"extrapolated rows are linear in N from the largest size that fits {res['memory_budget_gb']:.1f} GiB",
             f"compressed: PCA codes R={res['rank']} (retrieval.compress.PCACompressor), FAISS flat over the N codes, "
             f"{res['candidates']} candidates read from a float16 store and re-ranked exactly; memory = codes + "
             "basis (the store stays on disk)",
             "compressed time at N=%s: project query %.1f ms, code search %.1f ms, read %d candidates %.1f ms, exact "
             "re-rank %.1f ms" % (f"{sizes[-1]:,}", last["project_query_s"] * 1e3, last["code_search_s"] * 1e3,
                                  res["candidates"], last["read_candidates_s"] * 1e3, last["exact_rerank_s"] * 1e3),
             f"figure: {res['figure']}" if "figure" in res else f"figure failed: {res.get('figure_error')}"]
    return [format_table("scale: single-query latency and index memory",
                         ["views", "exact ms", "", "stream ms", "x stream", "exact GiB", "compr. ms", "exact/compr.",
                          "compr. GiB", "mem exact/compr."], rows, notes)]


def headline(res: dict) -> list[list]:
    ex, co = res["exact"], res["compressed"]
    n = max(ex, key=int)
    tag = "" if ex[n]["measured"] else " (exact extrapolated)"
    return [[f"scale N={int(n):,}: exact / compressed latency{tag}", ex[n]["latency_s"] / co[n]["latency_s"], "-", None,
             True],
            [f"scale N={int(n):,}: exact / compressed memory", ex[n]["memory_bytes"] / co[n]["memory_bytes"], "-", None,
             False]]


def plot_scaling(res: dict, sizes: list[int], path: Path) -> str:
    """Latency and memory against gallery size, measured and extrapolated (matplotlib Figure: no pyplot state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8, 3.2), dpi=80)
    axes = fig.subplots(1, 2)
    for ax, key, scale, ylabel in ((axes[0], "latency_s", 1e3, "query latency (ms)"),
                                   (axes[1], "memory_bytes", 1 / 2**30, "index memory (GiB)")):
        for name, style, data in (("exact", "C0", res["exact"]), ("compressed", "C1", res["compressed"])):
            pts = [(n, data[n][key] * scale, data[n]["measured"]) for n in sizes if n in data]
            meas = [(n, y) for n, y, m in pts if m]
            if meas:
                ax.plot(*zip(*meas), "-o", color=style, label=f"{name} (measured)", ms=4)
            ext = [(n, y) for n, y, m in pts if not m]
            if ext:
                ax.plot(*zip(*([meas[-1]] + ext if meas else ext)), "--o", color=style, mfc="none", ms=4,
                        label=f"{name} (extrapolated)")
        if key == "memory_bytes" and bl.mem_total():
            ax.axhline(bl.mem_total() / 2**30, color="grey", lw=0.8, ls=":")
            ax.text(sizes[0], bl.mem_total() / 2**30 * 1.1, "RAM of this machine", fontsize=7, color="grey")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("gallery views")
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.suptitle(f"cvret exact vs compressed search, D={D_LAYER3:,} ({bl.cpu_model()}, "
                 f"{os.cpu_count()} cores)", fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    return str(path)
