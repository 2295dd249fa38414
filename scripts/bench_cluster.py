"""Sharding and Ray measured against one index / one process, in the same run.

    python scripts/bench_cluster.py [--quick] [--views 2000] [--json out.json]

- shards: per-view exact and compressed queries on the same gallery held as 1 shard and as 4 shards
  (in one process): the overhead of searching shards and merging their top-k lists.
- fan-out: the same 4-shard gallery searched in-process vs by Ray shard actors on a local cluster.
- embedding: `cvret index --shards 2` in one process vs on the local Ray cluster (2 workers), the real
  encoder with untrained weights on a small dataset: Ray's overhead (no speed-up is possible on a
  machine whose cores one process already uses).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "scripts")]

import bench_lib as bl  # noqa: E402

D = 200704


def load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def make_galleries(tmp: Path, n: int) -> tuple[Path, Path]:
    """The same n views (one domain, one viewpoint) as one index and as a 4-shard index."""
    from retrieval.shards import declare_shards, shard_folder, shard_of
    from retrieval.store import IndexWriter

    one, four = tmp / "one", tmp / "four"
    declare_shards(four, 4)
    base = np.random.default_rng(1).standard_normal(D).astype(np.float16)
    w1 = IndexWriter(one, fingerprint={"model": "bench"}, feature_dim=D)
    w4 = [IndexWriter(shard_folder(four, k), fingerprint={"model": "bench"}, feature_dim=D) for k in range(4)]
    for i in range(n):
        rec = ("npr", f"s{i:06d}", "az000", f"p{i}", f"h{i}")
        f = np.roll(base, 7919 * i + (i * i) % 1013)[None]
        w1.add([rec], f)
        w4[shard_of(rec[1], 4)].add([rec], f)
    for w in [w1, *w4]:
        w.close()
    from retrieval.compress import build_compressed
    from retrieval.index import ShapeIndex

    for folder in [one] + [shard_folder(four, k) for k in range(4)]:
        with ShapeIndex(folder, gpu="never") as si:
            build_compressed(si, "pca:32")
    return one, four


def query_time(index, q, mode, rep):
    from retrieval.search import QueryEngine

    eng = QueryEngine(index, encoder=_NoEncoder(index), mode=mode, candidates=100)
    hits = eng.query_features(q, domain="npr", k=10)
    return bl.best_of(lambda: eng.query_features(q, domain="npr", k=10), rep), [(h.shape, h.distance) for h in hits]


class _NoEncoder:
    """Queries here are feature vectors; the engine only needs a matching fingerprint."""

    def __init__(self, index):
        self.fingerprint = index.fingerprint


def section_shards(tmp: Path, n: int, rep: int, ray_too: bool) -> dict:
    from retrieval.index import ShapeIndex
    from retrieval.shards import ShardedIndex

    one, four = make_galleries(tmp, n)
    q = np.random.default_rng(5).standard_normal(D).astype(np.float32)
    res = {"views": n}
    print(f"\nshards: one query (k=10) against {n} views, 1 shard vs 4 shards in one process")
    with ShapeIndex(one, gpu="never") as a, ShapeIndex(four, gpu="never") as b:
        exact = query_time(a, q, "exact", 1)[1]
        for mode in ("exact", "compressed"):
            t1, h1 = query_time(a, q, mode, rep)
            t4, h4 = query_time(b, q, mode, rep)
            res[mode] = {"one_shard_s": t1, "four_shards_s": t4, "ratio": t4 / t1,
                         "one_shard_equals_exact": h1 == exact, "four_shards_equal_exact": h4 == exact}
            print(f"  {mode:10s}: 1 shard {t1 * 1e3:.1f} ms, 4 shards {t4 * 1e3:.1f} ms -> {t4 / t1:.2f}x "
                  f"(top-10 equals exact: {h1 == exact} / {h4 == exact})")
        if ray_too:
            from retrieval.cluster import connect

            connect("local")
            with ShardedIndex(four, ray="auto") as r:
                for mode in ("exact", "compressed"):
                    tr, hr = query_time(r, q, mode, rep)
                    t4 = res[mode]["four_shards_s"]
                    res[mode].update(ray_s=tr, ray_ratio=tr / t4, ray_same_hits=hr == query_time(b, q, mode, 1)[1])
                    print(f"  {mode:10s}: Ray shard actors {tr * 1e3:.1f} ms vs in-process {t4 * 1e3:.1f} ms -> "
                          f"{tr / t4:.2f}x (same hits: {res[mode]['ray_same_hits']})")
    return res


def section_embedding(tmp: Path, quick: bool) -> dict:
    from retrieval.cluster import build_on_ray, connect
    from retrieval.dataset import discover
    from retrieval.encoder import EncoderSpec
    from retrieval.shards import build_sharded
    from tests.conftest import make_dataset

    data = make_dataset(tmp / "data", n_shapes=4 if quick else 8, domains=("npr",))
    spec = EncoderSpec(weights="untrained", seed=0)
    ds = discover(data)
    t = time.perf_counter()
    build_sharded(ds, tmp / "emb_local", spec, 2, progress=False)
    local = time.perf_counter() - t
    connect("local")
    t = time.perf_counter()
    build_on_ray(ds, tmp / "emb_ray", spec, 2, "auto", workers=2, progress=False)
    on_ray = time.perf_counter() - t
    n = len(ds.views)
    print(f"\nembedding: {n} views in 2 shards, untrained RN101 (model built once per process / per actor)")
    print(f"  one process {local:.1f} s, Ray local cluster with 2 actors {on_ray:.1f} s -> {on_ray / local:.2f}x")
    return {"views": n, "one_process_s": local, "ray_s": on_ray, "ratio": on_ray / local}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--views", type=int, default=None)
    ap.add_argument("--sections", default="shards,embedding")
    ap.add_argument("--no-ray", action="store_true")
    ap.add_argument("--json", default=None)
    a = ap.parse_args()
    n = a.views or (200 if a.quick else 2000)
    res = {"load_before": load(), "cpus": os.cpu_count()}
    print(f"load before: {res['load_before']:.2f} on {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory(prefix="cvret_bench_cluster_") as tmp:
        tmp = Path(tmp)
        if "shards" in a.sections:
            res["shards"] = section_shards(tmp, n, 3 if a.quick else 5, not a.no_ray)
        if "embedding" in a.sections and not a.no_ray:
            res["embedding"] = section_embedding(tmp, a.quick)
    res["load_after"] = load()
    print(f"load after: {res['load_after']:.2f}" + ("  (the machine was busy: ratios are unreliable)"
                                                     if max(res["load_before"], res["load_after"]) > 1.0 else ""))
    try:
        import ray

        ray.shutdown()
    except ImportError:
        pass
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
