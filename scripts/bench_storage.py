"""Storage engine v2 measured against format 1 and against the hardware, in one run.

    python scripts/bench_storage.py [--quick] [--sizes 2000,20000] [--json out.json]

Sections (each prints ratios against a baseline measured in the same run, and the machine's load):
- index: `cvret index` of the same small dataset (untrained weights) by this code and by the last
  format-1 release (a git worktree of FORMAT1_COMMIT): bytes on disk per view and views/s.
- read: the two designs the storage issue allowed (raw segments + xxh3 per view, or HDF5 chunks with
  Fletcher-32), read back view by view and whole.
- commit: the store's write path for 256 views with fsync and with fsync disabled: what crash
  safety costs per view, as a fraction of the time to embed a view.
- search: one exact query against N views of one (domain, viewpoint) held as float16, vs the time to
  stream those float16 bytes once, and (where it fits) vs format 1's float32 path on the same
  features; time to open the index and answer the first query; peak memory of the query process.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import bench_lib as bl  # noqa: E402

FORMAT1_COMMIT = "f8b9eb1"
D = 200704


def load() -> float:
    return float(open("/proc/loadavg").read().split()[0])


def best_of(f, n):
    return bl.best_of(f, n)


# ---------------------------------------------------------------- index: before / after
def section_index(tmp: Path, quick: bool) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.conftest import make_dataset

    data = make_dataset(tmp / "data", n_shapes=4 if quick else 16, domains=("npr", "sketch"))
    old = tmp / "format1_code"
    res: dict = {}
    if subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(old), FORMAT1_COMMIT],
                      capture_output=True).returncode != 0:
        old = None
        res["format1"] = {"error": f"cannot check out {FORMAT1_COMMIT}"}
    runs = [("format2", ROOT)] + ([("format1", old)] if old else [])
    for name, code in runs:
        env = {**os.environ, "PYTHONPATH": str(code)}
        out = tmp / f"idx_{name}"
        t = time.perf_counter()
        p = subprocess.run([sys.executable, "-m", "retrieval.cli", "index", str(data), "--out", str(out),
                            "--weights", "untrained", "--json", "--quiet"], capture_output=True, text=True, env=env,
                           cwd=str(code))
        wall = time.perf_counter() - t
        if p.returncode != 0:
            res[name] = {"error": p.stderr.strip().splitlines()[-1:]}
            continue
        rep = json.loads(p.stdout)
        size = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
        res[name] = {"views": rep["embedded"], "embed_views_per_s": rep["views_per_second"], "wall_s": wall,
                     "bytes": size, "bytes_per_view": size / rep["embedded"]}
    if old:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(old)], capture_output=True)
    print("\nindex: the same dataset by format 2 (this code) and format 1 (%s), untrained weights" % FORMAT1_COMMIT)
    for name in ("format1", "format2"):
        r = res.get(name, {})
        if "bytes_per_view" in r:
            print(f"  {name}: {r['views']} views, {r['bytes_per_view'] / 1e3:8.1f} kB/view on disk, "
                  f"embedding {r['embed_views_per_s']:.1f} views/s, whole command {r['wall_s']:.1f} s")
        else:
            print(f"  {name}: {r}")
    if "bytes_per_view" in res.get("format1", {}) and "bytes_per_view" in res.get("format2", {}):
        res["bytes_ratio"] = res["format2"]["bytes_per_view"] / res["format1"]["bytes_per_view"]
        res["rate_ratio"] = res["format2"]["embed_views_per_s"] / res["format1"]["embed_views_per_s"]
        print(f"  disk per view: {res['bytes_ratio']:.3f}x of format 1; embedding rate {res['rate_ratio']:.3f}x")
    return res


# ---------------------------------------------------------------- commit cost
def section_commit(tmp: Path, quick: bool, embed_views_per_s: float | None) -> dict:
    from retrieval.store import IndexWriter

    n = 64 if quick else 256
    base = np.random.default_rng(0).standard_normal(D).astype(np.float16)
    feats = np.stack([np.roll(base, 997 * i) for i in range(n)])

    def write(folder: Path, fsync: bool):
        real = os.fsync
        if not fsync:
            os.fsync = lambda fd: None
        try:
            t = time.perf_counter()
            with IndexWriter(folder, fingerprint={"model": "bench"}, feature_dim=D, commit_views=64) as w:
                for s in range(0, n, 16):
                    w.add([("npr", f"s{i}", "az000", f"p{i}", f"h{i}") for i in range(s, s + 16)], feats[s:s + 16])
            return time.perf_counter() - t
        finally:
            os.fsync = real
            shutil.rmtree(folder, ignore_errors=True)

    with_fsync = min(write(tmp / f"c{i}", True) for i in range(3))
    without = min(write(tmp / f"n{i}", False) for i in range(3))
    res = {"views": n, "with_fsync_ms_per_view": with_fsync / n * 1e3, "without_fsync_ms_per_view": without / n * 1e3}
    print(f"\ncommit: {n} views of {D} float16 numbers in segments of 64")
    print(f"  with fsync {res['with_fsync_ms_per_view']:.2f} ms/view, fsync disabled "
          f"{res['without_fsync_ms_per_view']:.2f} ms/view")
    if embed_views_per_s:
        embed_ms = 1e3 / embed_views_per_s
        res["fsync_share_of_embedding"] = (with_fsync - without) / n * 1e3 / embed_ms
        res["store_share_of_embedding"] = with_fsync / n * 1e3 / embed_ms
        print(f"  against embedding at {embed_views_per_s:.1f} views/s ({embed_ms:.1f} ms/view): fsync costs "
              f"{100 * res['fsync_share_of_embedding']:.2f} %, the whole store write "
              f"{100 * res['store_share_of_embedding']:.2f} %")
    return res


# ---------------------------------------------------------------- read: raw segments vs HDF5 fletcher32
def section_read(tmp: Path, quick: bool) -> dict:
    """The two designs the storage issue allowed, read back view by view (as re-ranking does) and whole
    (as loading a resident scan does): raw segments + xxh3 per view, or HDF5 chunks with Fletcher-32."""
    import h5py

    from retrieval.store import FeatureStore, IndexWriter

    n = 64 if quick else 256
    base = np.random.default_rng(2).standard_normal(D).astype(np.float16)
    feats = np.stack([np.roll(base, 4099 * i) for i in range(n)])
    folder = tmp / "raw"
    with IndexWriter(folder, fingerprint={"model": "bench"}, feature_dim=D, commit_views=n) as w:
        w.add([("npr", f"s{i}", "az000", f"p{i}", f"h{i}") for i in range(n)], feats)
    h5path = tmp / "f32.h5"
    with h5py.File(h5path, "w") as h5:
        h5.create_dataset("features", data=feats, chunks=(1, D), fletcher32=True)
    rng = np.random.default_rng(0)
    pick = rng.choice(n, size=min(42, n), replace=False)  # a re-rank's worth of candidates
    with FeatureStore(folder) as st, h5py.File(h5path, "r") as h5:
        rows = np.array([r.row for r in st.records()])
        ds = h5["features"]
        out = np.empty((n, D), np.float16)
        r = {"views": n,
             "raw_candidates_s": best_of(lambda: st.read_raw(rows[pick]), 5),
             "hdf5_candidates_s": best_of(lambda: [ds[int(i)] for i in pick], 5),
             "raw_all_s": best_of(lambda: st.read_raw(rows), 3),
             "hdf5_all_s": best_of(lambda: ds.read_direct(out), 3)}
    r["candidates_ratio_hdf5_to_raw"] = r["hdf5_candidates_s"] / r["raw_candidates_s"]
    r["all_ratio_hdf5_to_raw"] = r["hdf5_all_s"] / r["raw_all_s"]
    print(f"\nread: {len(pick)} candidate views / all {n} views, from the page cache, checksums checked")
    print(f"  raw segments + xxh3: {r['raw_candidates_s'] * 1e3:.1f} ms / {r['raw_all_s'] * 1e3:.1f} ms; HDF5 "
          f"Fletcher-32 chunks: {r['hdf5_candidates_s'] * 1e3:.1f} ms / {r['hdf5_all_s'] * 1e3:.1f} ms "
          f"({r['candidates_ratio_hdf5_to_raw']:.2f}x / {r['all_ratio_hdf5_to_raw']:.2f}x)")
    return r


# ---------------------------------------------------------------- search
def make_index(folder: Path, n: int):
    """n float16 views of one (domain, viewpoint): rolled copies of one random vector (cheap, all distinct)."""
    from retrieval.store import IndexWriter

    base = np.random.default_rng(1).standard_normal(D).astype(np.float16)
    with IndexWriter(folder, fingerprint={"model": "bench"}, feature_dim=D, commit_views=256) as w:
        for s in range(0, n, 64):
            m = min(64, n - s)
            w.add([("npr", f"s{i:06d}", "az000", f"p{i}", f"h{i}") for i in range(s, s + m)],
                  np.stack([np.roll(base, 7919 * i + (i * i) % 1013) for i in range(s, s + m)]))


def search_child(folder: str, with_float32: bool) -> dict:
    """Runs in its own process so that its peak memory is its own."""
    from retrieval.distance import exact_knn
    from retrieval.index import ShapeIndex

    rng = np.random.default_rng(5)
    q = rng.standard_normal((1, D)).astype(np.float32)
    t = time.perf_counter()
    si = ShapeIndex(folder, gpu="never")
    t_open = time.perf_counter() - t
    d, r = si.search("npr", "az000", q, 10)
    t_first = time.perf_counter() - t
    t_warm = best_of(lambda: si.search("npr", "az000", q, 10), 5)
    X = si.vectors("npr", "az000")
    st = bl.stream_bytes_seconds(X, repeat=5)
    out = {"views": len(X), "open_s": t_open, "open_and_first_query_s": t_first, "query_s": t_warm,
           "stream_float16_s": st["stream_s"], "ratio_to_stream": t_warm / st["stream_s"],
           "float16_bytes": st["bytes"], "stream_GB_per_s": st["GB_per_s"],
           "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    if with_float32:  # format 1's path: float32 copies, BLAS sgemv candidates, exact re-rank
        X32 = np.concatenate([p.astype(np.float32) for p in X.parts])
        norms = np.einsum("ij,ij->i", X32, X32)
        t32 = best_of(lambda: exact_knn(X32, norms, q[0], 10), 5)
        d32, pos32 = exact_knn(X32, norms, q[0], 10)
        out.update(format1_float32_query_s=t32, format1_ratio_to_stream=t32 / st["stream_s"],
                   same_top10=bool(np.array_equal(si.rows("npr", "az000")[pos32], r[0])))
    si.close()
    return out


def section_search(tmp: Path, sizes: list[int]) -> dict:
    res = {}
    print("\nsearch: one exact query (k=10) against N float16 views of one (domain, viewpoint)")
    for n in sizes:
        need = n * D * 2
        avail = int([ln for ln in open("/proc/meminfo") if ln.startswith("MemAvailable")][0].split()[1]) * 1024
        if need * 1.5 > avail:
            print(f"  N={n}: skipped, needs about {need * 1.5 / 2**30:.1f} GiB free, {avail / 2**30:.1f} available")
            res[n] = {"skipped": "memory"}
            continue
        folder = tmp / f"s{n}"
        t = time.perf_counter()
        make_index(folder, n)
        build = time.perf_counter() - t
        subprocess.run(["sync"])
        code = ("import json,sys; sys.path[:0]=[%r,%r]; import bench_storage as b; "
                "print(json.dumps(b.search_child(%r, %r)))" % (str(ROOT), str(ROOT / "scripts"), str(folder),
                                                               need * 2 * 2.5 < avail))
        p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        shutil.rmtree(folder, ignore_errors=True)
        if p.returncode != 0:
            res[n] = {"error": p.stderr.strip().splitlines()[-3:]}
            print(f"  N={n}: failed {res[n]}")
            continue
        r = json.loads(p.stdout.strip().splitlines()[-1])
        r["build_s"] = build
        res[n] = r
        line = (f"  N={n}: query {r['query_s'] * 1e3:.1f} ms, streaming its {r['float16_bytes'] / 1e9:.2f} GB of "
                f"float16 once {r['stream_float16_s'] * 1e3:.1f} ms -> {r['ratio_to_stream']:.2f}x stream")
        if "format1_float32_query_s" in r:
            line += (f"; format 1 float32 path {r['format1_float32_query_s'] * 1e3:.1f} ms "
                     f"({r['format1_ratio_to_stream']:.2f}x, same top-10: {r['same_top10']})")
        print(line)
        print(f"        open {r['open_s'] * 1e3:.0f} ms, open + first query {r['open_and_first_query_s']:.2f} s, "
              f"peak RSS {r['peak_rss_bytes'] / 2**30:.2f} GiB for {r['float16_bytes'] / 2**30:.2f} GiB of features")
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes (a smoke test)")
    ap.add_argument("--sizes", default=None, help="search gallery sizes, e.g. 2000,20000")
    ap.add_argument("--sections", default="index,commit,read,search")
    ap.add_argument("--json", default=None, help="write the results here")
    a = ap.parse_args()
    sizes = [int(x) for x in a.sizes.split(",")] if a.sizes else ([300] if a.quick else [2000, 20000])
    sections = a.sections.split(",")
    res = {"load_before": load(), "cpus": os.cpu_count()}
    print(f"load before: {res['load_before']:.2f} on {os.cpu_count()} cpus")
    with tempfile.TemporaryDirectory(prefix="cvret_bench_storage_") as tmp:
        tmp = Path(tmp)
        if "index" in sections:
            res["index"] = section_index(tmp, a.quick)
        if "commit" in sections:
            rate = res.get("index", {}).get("format2", {}).get("embed_views_per_s")
            res["commit"] = section_commit(tmp, a.quick, rate)
        if "read" in sections:
            res["read"] = section_read(tmp, a.quick)
        if "search" in sections:
            res["search"] = section_search(tmp, sizes)
    res["load_after"] = load()
    print(f"load after: {res['load_after']:.2f}" + ("  (the machine was busy: ratios are unreliable)"
                                                     if max(res["load_before"], res["load_after"]) > 1.0 else ""))
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
