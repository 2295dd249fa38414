"""compressed: memory per view and recall@10 of compressed candidate search against exact search, on the demo data."""
from __future__ import annotations

import shutil

import numpy as np

from bench_lib import D_LAYER3, best_of, contended, format_table

from .context import WEIGHTS_NOTE, demo_index


def measure(ctx) -> dict:
    import retrieval.compress as comp
    from retrieval.index import ShapeIndex
    from retrieval.search import QueryEngine

    folder = demo_index(ctx, "bf16")
    settings = [(8, 10), (32, 10), (128, 10)] if not ctx.args.compressed_settings else [
        tuple(int(x) for x in s.split(":")) for s in ctx.args.compressed_settings.split(",")]
    res: dict = {"available": True, "api": "QueryEngine(mode='compressed') -> ShapeIndex.search(mode='compressed')",
                 "settings": []}
    k = 10

    def hits_key(hits):
        return [(h.shape, h.viewpoint) for h in hits]

    with ShapeIndex(folder, gpu="never") as si:
        eng = QueryEngine(si)
        vps = si.viewpoint_names("npr")
        sk = [r for r in si.store.records() if r.domain == "sketch"]
        Q = si.store.read_features([r.row for r in sk])
        gallery = sum(len(si.rows("npr", vp)) for vp in vps)
        # view-aggregated queries: all sketch views of one shape
        by_shape: dict[str, dict[str, int]] = {}
        for j, r in enumerate(sk):
            by_shape.setdefault(r.shape, {})[r.viewpoint] = j
        multi = [{vp: Q[j] for vp, j in d.items()} for d in by_shape.values() if len(d) == len(vps)]
        exact = [hits_key(eng.query_features(q, domain="npr", k=k, per_shape=False)) for q in Q]
        exact_agg = [[h.shape for h in eng.query_views(v, domain="npr", k=k)[0]] for v in multi]
        t_exact = best_of(lambda: eng.query_features(Q[0], domain="npr", k=k, per_shape=False), 5)
    for rank, n_cand in settings:
        ctx.log(f"compressed: pca:{rank}, {n_cand} candidates per viewpoint")
        with ShapeIndex(folder, gpu="never") as si:
            comp.build_compressed(si, f"pca:{rank}", sample=2048, seed=0)
        # a fresh index: the exact FAISS indexes are never loaded, candidates are re-ranked from the store
        with ShapeIndex(folder, gpu="never") as si:
            eng = QueryEngine(si, mode="compressed", candidates=n_cand)
            got = [hits_key(eng.query_features(q, domain="npr", k=k, per_shape=False)) for q in Q]
            rec = [len(set(a) & set(b)) / len(a) for a, b in zip(exact, got)]
            got_agg = [[h.shape for h in eng.query_views(v, domain="npr", k=k)[0]] for v in multi]
            rec_agg = [len(set(a) & set(b)) / len(a) for a, b in zip(exact_agg, got_agg)]
            t_c = best_of(lambda: eng.query_features(Q[0], domain="npr", k=k, per_shape=False), 5)
            mpv = si.compressed().memory_per_view()
            res["settings"].append({
                "rank": si.compressed().compressor.rank, "candidates_per_viewpoint": n_cand,
                "memory_per_view_bytes": mpv, "exact_memory_per_view_bytes": D_LAYER3 * 4,
                "memory_ratio": D_LAYER3 * 4 / mpv, "basis_bytes": int(si.compressed().compressor.basis.nbytes),
                "recall_at_10_mean": float(np.mean(rec)), "recall_at_10_min": float(np.min(rec)),
                "aggregated_recall_at_10_mean": float(np.mean(rec_agg)) if rec_agg else None,
                "latency_s": t_c, "exact_latency_s": t_exact})
    shutil.rmtree(folder / comp.COMPRESSED_DIR, ignore_errors=True)
    res["queries"], res["gallery"], res["aggregated_queries"] = len(Q), gallery, len(multi)
    res["views_per_viewpoint"] = gallery // max(1, len(vps))
    return res


def render(res: dict) -> list[str]:
    rows = [[f"pca:{r['rank']}, {r['candidates_per_viewpoint']} cand./viewpoint", r["memory_per_view_bytes"],
             r["memory_ratio"], r["recall_at_10_mean"], r["recall_at_10_min"], r["aggregated_recall_at_10_mean"],
             r["latency_s"] * 1e3, r["exact_latency_s"] * 1e3] for r in res["settings"]]
    return [format_table(
        f"compressed: {res['queries']} sketch queries vs {res['gallery']} npr views, per-view pairs (demo data)",
        ["setting", "bytes/view", "x less memory", "recall@10 mean", "recall@10 min",
         f"aggr. recall@10 ({res['aggregated_queries']} q.)", "ms", "exact ms"], rows,
        [f"exact = {D_LAYER3 * 4:,} bytes/view (float32 in FAISS); codes exclude the shared basis "
         f"({D_LAYER3:,} x R float32); compressed re-ranks candidates from the float16 store", WEIGHTS_NOTE,
         f"tiny gallery ({res['views_per_viewpoint']} views per viewpoint; cvret's default of 100 candidates would "
         "cover all of it): recall here is a smoke test, not a large-gallery figure"]
        + (["contended: latencies measured under load"] if contended(res) else []))]


def headline(res: dict) -> list[list]:
    return [[f"compressed pca:{r['rank']} ({r['candidates_per_viewpoint']} cand.): recall@10", r["recall_at_10_mean"],
             "-", None, False] for r in res["settings"]]
