#!/usr/bin/env python
"""cvret benchmark (GitHub issue 6): every figure next to a baseline measured in the same run on the same data.

    python scripts/bench.py [--quick] [--out docs/bench] [--data DIR] [--sections encode,memory,search,scale,compressed]

Sections
  encode      views/s of `build_index` (fp32, bf16) vs "what a researcher writes today" (open_clip's full
              RN101 image tower, fp32, one image per call, forward hook on layer3); forward pass alone;
              compute ceiling from a measured matmul; bf16-vs-fp32 feature error and ranking agreement.
  memory      peak RSS of `cvret index` at two dataset sizes (flat = ratio ~1).
  search      single-query latency (FAISS, cvret's exact path, the real ShapeIndex/QueryEngine) vs the time to
              stream the same bytes; batched queries vs a plain sgemm; view-aggregated ranking.
  scale       latency and memory at 1k/10k/100k views (exact: what fits is measured, the rest extrapolated),
              compressed candidate search when retrieval.compress is there; writes docs/scaling.png.
  compressed  memory per view and recall@10 against exact search on the demo data (needs retrieval.compress).

Weights are random ('untrained:seed=0', real weights cannot be downloaded here): speed figures do not depend
on the weights, the accuracy-agreement figures (bf16 vs fp32 rankings, compressed recall) do.
Results: a table per section on stdout and `bench.json` in --out.
"""
from __future__ import annotations

import argparse
import gc
import inspect
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

import bench_lib as bl  # noqa: E402
from bench_lib import D_LAYER3, GFLOP_PER_VIEW, best_of, ratio, stream_seconds, table  # noqa: E402

SECTIONS = ("encode", "memory", "search", "scale", "compressed")
DEMO_COUNTS = {"chair": 12, "table": 4, "lamp": 4, "airplane": 4}
WEIGHTS_ID = "untrained:seed=0"
BUSY_CORES = 0.25  # other processes' average CPU use above which a section is flagged as contended
WEIGHTS_NOTE = ("random weights (untrained:seed=0; real weights cannot be downloaded here): speed figures do not "
                "depend on the weights, accuracy-agreement figures (bf16 rankings, compressed recall) do")


class Ctx:
    """What the sections share: options, the demo data, indexes built by earlier sections."""

    def __init__(self, args):
        self.args = args
        self.quick = args.quick
        self.tmp = Path(tempfile.mkdtemp(prefix="cvret_bench_"))
        self.data: Path | None = None
        self.indexes: dict[str, Path] = {}   # precision -> demo index folder
        self.encoders: dict = {}
        self.texts: list[str] = []

    def log(self, msg: str):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def show(self, *a, **kw):
        self.texts.append(table(*a, **kw))


# ====================================================================== data

def ensure_data(ctx: Ctx) -> Path:
    if ctx.data is not None:
        return ctx.data
    from retrieval.synth import make_demo_dataset

    if ctx.args.data:
        ctx.data = Path(ctx.args.data)
    else:
        ctx.data = Path(ctx.args.cache) / "cvret_bench_data"
        t = time.perf_counter()
        summ = make_demo_dataset(ctx.data, counts=DEMO_COUNTS, workers=2, progress=False)
        ctx.log(f"demo data in {ctx.data}: {summ['shapes']} shapes, {summ['generated']} generated "
                f"({time.perf_counter() - t:.1f} s)")
    return ctx.data


def subset_dataset(ds, n_shapes: int):
    """The first views of `n_shapes` shapes spread over the categories (all domains and viewpoints)."""
    from retrieval.dataset import Dataset

    shapes = ds.shapes
    if n_shapes < len(shapes):
        by_cat: dict[str, list[str]] = {}
        for s in shapes:
            by_cat.setdefault(ds.categories.get(s, s.rsplit("_", 1)[0]), []).append(s)
        pick, i = [], 0
        while len(pick) < n_shapes:
            for cat in sorted(by_cat):
                if i < len(by_cat[cat]) and len(pick) < n_shapes:
                    pick.append(by_cat[cat][i])
            i += 1
        keep = set(pick)
    else:
        keep = set(shapes)
    views = [v for v in ds.views if v.shape in keep]
    return Dataset(root=ds.root, viewpoints=ds.viewpoints, views=views, categories=ds.categories,
                   problems=[], source=ds.source)


def get_encoder(ctx: Ctx, precision: str):
    from retrieval.encoder import EncoderSpec, LayerEncoder

    if precision not in ctx.encoders:
        t = time.perf_counter()
        ctx.encoders[precision] = LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision=precision)
        ctx.encoders[precision]._load_s = time.perf_counter() - t
    return ctx.encoders[precision]


def demo_index(ctx: Ctx, precision: str = "bf16") -> Path:
    """An index of the whole demo data at `precision` (built by the encode section, or here)."""
    if precision in ctx.indexes:
        return ctx.indexes[precision]
    from retrieval.dataset import discover
    from retrieval.encoder import EncoderSpec
    from retrieval.indexer import build_index

    out = ctx.tmp / f"demo_index_{precision}"
    ds = discover(ensure_data(ctx))
    build_index(ds, out, EncoderSpec("untrained", seed=0), device="cpu", precision=precision, progress=False,
                encoder=get_encoder(ctx, precision))
    ctx.indexes[precision] = out
    return out


# ====================================================================== 1. encode

def section_encode(ctx: Ctx) -> dict:
    import torch
    from retrieval.dataset import discover
    from retrieval.encoder import EncoderSpec
    from retrieval.images import load_image, preprocess_array
    from retrieval.indexer import build_index

    q = ctx.quick
    ds = discover(ensure_data(ctx))
    n_shapes = ctx.args.encode_shapes or (4 if q else len(ds.shapes))
    sub = subset_dataset(ds, n_shapes)
    n_views = len(sub.views)
    n_base = min(ctx.args.baseline_images or (12 if q else 48), n_views)
    # baseline images: alternate domains so that sketches, npr and rgb are all represented
    base_paths = [v.path for v in sorted(sub.views, key=lambda v: (v.shape, v.viewpoint, v.domain))][:n_base]
    res: dict = {"views": n_views, "shapes": n_shapes, "baseline_images": n_base, "torch_threads":
                 torch.get_num_threads()}

    # ---- baseline: open_clip full image tower, fp32, one image per call, hook on layer3
    ctx.log(f"encode: baseline (open_clip RN101 .visual, fp32, batch 1, hook on layer3) on {n_base} images")
    import open_clip
    logging.getLogger().setLevel(logging.ERROR)
    torch.manual_seed(0)
    t = time.perf_counter()
    visual = open_clip.create_model("RN101", pretrained=None).visual.eval()
    res["baseline_model_load_s"] = time.perf_counter() - t
    captured = {}
    hook = visual.layer3.register_forward_hook(lambda m, i, o: captured.__setitem__("f", o))

    def baseline_one(path):
        x = torch.from_numpy(preprocess_array(load_image(path), 224))[None]
        with torch.no_grad():
            visual(x)
        return captured["f"].flatten(1).numpy().copy()

    baseline_one(base_paths[0])  # warm-up (allocator, oneDNN primitives)
    t = time.perf_counter()
    base_feats = [baseline_one(p) for p in base_paths]
    base_s = time.perf_counter() - t
    base_vps = n_base / base_s
    # the forward pass alone, same tower, batch 1
    arrs = np.stack([preprocess_array(load_image(p), 224) for p in base_paths[:16]])
    with torch.no_grad():
        t_fwd1 = best_of(lambda: visual(torch.from_numpy(arrs[:1])), repeat=3 if q else 5, warmup=1)
    hook.remove()
    del visual
    gc.collect()
    ctx.log(f"encode: baseline {base_vps:.2f} views/s (model load {res['baseline_model_load_s']:.1f} s)")
    res["baseline"] = {"views_per_s": base_vps, "seconds": base_s, "forward_only_batch1_s": t_fwd1,
                       "forward_only_views_per_s": 1 / t_fwd1}

    # ---- compute ceiling: measured matmul throughput
    n_mm = 2048 if q else 4096
    ceil = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n_mm, n_mm).to(dt)
        b = torch.randn(n_mm, n_mm).to(dt)
        t_mm = best_of(lambda: torch.mm(a, b), repeat=3, warmup=1)
        gflops = 2 * n_mm ** 3 / t_mm / 1e9
        ceil[name] = {"matmul_n": n_mm, "matmul_s": t_mm, "GFLOP_per_s": gflops,
                      "ceiling_views_per_s": gflops / GFLOP_PER_VIEW}
        del a, b
    res["ceiling"] = ceil
    ctx.log("encode: matmul GFLOP/s fp32 %.0f, bf16 %.0f" % (ceil["fp32"]["GFLOP_per_s"], ceil["bf16"]["GFLOP_per_s"]))

    # ---- cvret: forward alone (batch 16) and end-to-end build_index, per precision
    res["cvret"] = {}
    batch = arrs if len(arrs) == 16 else np.concatenate([arrs] * (16 // len(arrs) + 1))[:16]
    fwd_feats = {}
    for prec in ("fp32", "bf16"):
        enc = get_encoder(ctx, prec)
        t_fwd = best_of(lambda: enc.encode_arrays(batch), repeat=2 if q else 3, warmup=1)
        t_fwd_b1 = best_of(lambda: enc.encode_arrays(batch[:1]), repeat=3 if q else 5, warmup=1)
        fwd_feats[prec] = enc.encode_arrays(batch[: len(base_feats[:16])])
        out = ctx.tmp / f"demo_index_{prec}"
        if out.exists():
            shutil.rmtree(out)
        ctx.log(f"encode: cvret build_index {prec} on {n_views} views")
        rep = build_index(sub, out, EncoderSpec("untrained", seed=0), device="cpu", precision=prec,
                          progress=False, encoder=enc)
        if rep.failed:
            raise RuntimeError(f"build_index failed on {len(rep.failed)} views: {rep.failed[0]}")
        vps_e2e = rep.embedded / rep.seconds
        res["cvret"][prec] = {
            "model_load_s": getattr(enc, "_load_s", None),
            "end_to_end_s": rep.seconds, "end_to_end_views_per_s": vps_e2e,
            "embed_views_per_s": rep.views_per_second,
            "forward_only_batch16_s": t_fwd, "forward_only_views_per_s": 16 / t_fwd,
            "forward_only_batch1_views_per_s": 1 / t_fwd_b1,
            "forward_GFLOP_per_s": 16 / t_fwd * GFLOP_PER_VIEW,
            "fraction_of_ceiling": (16 / t_fwd) / ceil[prec]["ceiling_views_per_s"],
            "ratio_vs_baseline": vps_e2e / base_vps,
        }
        ctx.indexes[prec] = out  # reused by the search and compressed sections
        res["cvret"][prec]["_index"] = str(out)

    # ---- sanity: the baseline's hooked layer3 equals cvret's fp32 feature (same seed, same preprocessing)
    bf = np.concatenate(base_feats[:16])
    res["baseline_vs_cvret_fp32_rel_err_max"] = float(
        (np.linalg.norm(fwd_feats["fp32"] - bf, axis=1) / np.linalg.norm(bf, axis=1)).max())

    # ---- accuracy of bf16 vs fp32
    acc = {}
    f32, b16 = fwd_feats["fp32"], fwd_feats["bf16"]
    rel = np.linalg.norm(b16 - f32, axis=1) / np.linalg.norm(f32, axis=1)
    acc["batch_rel_err_mean"], acc["batch_rel_err_max"] = float(rel.mean()), float(rel.max())
    rel16 = np.linalg.norm(f32.astype(np.float16).astype(np.float32) - f32, axis=1) / np.linalg.norm(f32, axis=1)
    acc["float16_storage_rel_err_max"] = float(rel16.max())
    acc.update(ranking_agreement(Path(res["cvret"]["fp32"]["_index"]), Path(res["cvret"]["bf16"]["_index"])))
    res["bf16_accuracy"] = acc

    b = res["baseline"]
    rows = [["baseline: open_clip .visual fp32, 1 image/call, hook", b["views_per_s"], 1.0,
             b["forward_only_views_per_s"], "-", "-", "-"]]
    for prec in ("fp32", "bf16"):
        c = res["cvret"][prec]
        rows.append([f"cvret build_index {prec} (end to end)", c["end_to_end_views_per_s"], c["ratio_vs_baseline"],
                     c["forward_only_batch1_views_per_s"], c["forward_only_views_per_s"],
                     ceil[prec]["ceiling_views_per_s"], c["fraction_of_ceiling"]])
    ctx.show(f"encode: views/s on {n_views} demo views (baseline on {n_base}), torch threads {res['torch_threads']}",
             ["path", "views/s", "x baseline", "fwd batch 1", "fwd batch 16", "ceiling views/s", "fwd/ceiling"],
             rows,
             [f"ceiling = matmul {n_mm}^3 GFLOP/s / {GFLOP_PER_VIEW} GFLOP per view: fp32 "
              f"{ceil['fp32']['GFLOP_per_s']:.0f} GFLOP/s, bf16 {ceil['bf16']['GFLOP_per_s']:.0f} GFLOP/s",
              "fwd = forward pass alone in views/s; baseline: full tower (layer4 + attention pool included), "
              "cvret: fused trunk up to layer3; fwd/ceiling uses batch 16",
              f"baseline layer3 vs cvret fp32 features: max relative difference "
              f"{res['baseline_vs_cvret_fp32_rel_err_max']:.1e} (same weights, same preprocessing)"])
    ctx.show("encode: bf16 vs fp32 accuracy (" + WEIGHTS_ID + ")",
             ["measure", "value", "target"],
             [["feature rel. error, batch of 16, mean", acc["batch_rel_err_mean"], "-"],
              ["feature rel. error, batch of 16, max", acc["batch_rel_err_max"], "-"],
              ["feature rel. error, all stored views, mean", acc["stored_rel_err_mean"], "-"],
              ["feature rel. error, all stored views, max", acc["stored_rel_err_max"], "-"],
              ["float16 storage rel. error (fp32 batch), max", acc["float16_storage_rel_err_max"], "-"],
              [f"top-1 agreement, {acc['queries']} sketch queries vs {acc['gallery']} npr views",
               acc["top1_agreement"], ">= 0.99"],
              ["top-10 overlap, mean", acc["top10_overlap_mean"], "-"],
              ["top-10 overlap, min", acc["top10_overlap_min"], "-"]],
             ["stored views: features as each index stores them (float16); rankings by exact float32 mean "
              "squared distance", WEIGHTS_NOTE])
    for prec in res["cvret"]:
        res["cvret"][prec].pop("_index", None)
    return res


def ranking_agreement(idx_a: Path, idx_b: Path, qdom: str = "sketch", gdom: str = "npr", k: int = 10) -> dict:
    """Top-1 agreement / top-k overlap of exact rankings from two indexes of the same views (a = reference)."""
    from retrieval.distance import exact_mean_sq
    from retrieval.store import FeatureStore

    def load(folder):
        with FeatureStore(folder) as st:
            lk = st.lookup()
            keys = sorted(lk)
            feats = st.read_features([lk[key].row for key in keys])
        return keys, feats

    ka, fa = load(idx_a)
    kb, fb = load(idx_b)
    if ka != kb:
        common = sorted(set(ka) & set(kb))
        ia, ib = {x: i for i, x in enumerate(ka)}, {x: i for i, x in enumerate(kb)}
        fa, fb = fa[[ia[x] for x in common]], fb[[ib[x] for x in common]]
        ka = common
    rel = np.linalg.norm(fb - fa, axis=1) / np.maximum(np.linalg.norm(fa, axis=1), 1e-30)
    out = {"stored_rel_err_mean": float(rel.mean()), "stored_rel_err_max": float(rel.max()), "views": len(ka)}
    qi = [i for i, x in enumerate(ka) if x[0] == qdom]
    gi = np.array([i for i, x in enumerate(ka) if x[0] == gdom])
    if not qi or len(gi) == 0:
        out.update(queries=0, gallery=int(len(gi)), top1_agreement=None, top10_overlap_mean=None,
                   top10_overlap_min=None)
        return out
    ga, gb = fa[gi], fb[gi]
    top1, overlap = [], []
    kk = min(k, len(gi))
    for i in qi:
        da = exact_mean_sq(fa[i], ga)
        db = exact_mean_sq(fb[i], gb)
        ra = np.lexsort((np.arange(len(da)), da))[:kk]
        rb = np.lexsort((np.arange(len(db)), db))[:kk]
        top1.append(ra[0] == rb[0])
        overlap.append(len(set(ra) & set(rb)) / kk)
    out.update(queries=len(qi), gallery=int(len(gi)), top1_agreement=float(np.mean(top1)),
               top10_overlap_mean=float(np.mean(overlap)), top10_overlap_min=float(np.min(overlap)))
    return out


# ====================================================================== 2. memory

# Peak RSS of the child itself: VmHWM of /proc/self/status (reset by exec). ru_maxrss is not used on Linux
# because exec keeps the high-water mark of the forked parent (this benchmark process, which holds models).
PEAK_RSS = r"""
import os, resource, sys
def _peak_kb():
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
"""

RSS_WRAPPER = PEAK_RSS + r"""
import atexit
atexit.register(lambda: print("MAXRSS_KB", _peak_kb(), file=sys.stderr, flush=True))
from retrieval.cli import main
sys.argv = ["cvret"] + sys.argv[1:]
main()
"""


def link_subset(src: Path, dst: Path, shapes: list[str]):
    """A dataset folder holding only `shapes` (hard links, or copies across file systems)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if (src / "dataset.json").exists():
        shutil.copy2(src / "dataset.json", dst / "dataset.json")
    for dom in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for shape in shapes:
            s = dom / shape
            if not s.is_dir():
                continue
            (dst / dom.name / shape).mkdir(parents=True)
            for f in s.iterdir():
                try:
                    os.link(f, dst / dom.name / shape / f.name)
                except OSError:
                    shutil.copy2(f, dst / dom.name / shape / f.name)


ENCODER_ONLY = PEAK_RSS + r"""
from retrieval.encoder import EncoderSpec, LayerEncoder
LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision="auto")
print("MAXRSS_KB", _peak_kb(), file=sys.stderr, flush=True)
"""


def run_encoder_only_rss() -> float | None:
    p = subprocess.run([sys.executable, "-c", ENCODER_ONLY], capture_output=True, text=True, cwd=str(REPO))
    kb = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    return kb[-1] / 1024 if kb else None


def run_index_rss(data: Path, out: Path) -> dict:
    if out.exists():
        shutil.rmtree(out)
    cmd = [sys.executable, "-c", RSS_WRAPPER, "index", str(data), "--out", str(out), "--weights", "untrained",
           "--quiet", "--json"]
    t = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True, cwd=str(REPO))
    wall = time.perf_counter() - t
    if p.returncode != 0:
        raise RuntimeError(f"cvret index failed ({p.returncode}): {p.stderr.strip()[-400:]}")
    kb = [int(line.split()[1]) for line in p.stderr.splitlines() if line.startswith("MAXRSS_KB")]
    rep = json.loads(p.stdout[p.stdout.index("{"):])
    return {"peak_rss_mb": kb[-1] / 1024 if kb else None, "wall_s": wall, "views": rep["embedded"],
            "views_per_s": rep["views_per_second"]}


def section_memory(ctx: Ctx) -> dict:
    from retrieval.dataset import discover

    data = ensure_data(ctx)
    shapes = discover(data).shapes
    small_n, large_n = (2, 6) if ctx.quick else (max(1, len(shapes) // 3), len(shapes))
    res = {}
    for label, n in (("small", small_n), ("large", large_n)):
        sub = ctx.tmp / f"mem_data_{label}"
        link_subset(data, sub, shapes[:n])
        ctx.log(f"memory: cvret index on {n} shapes (subprocess)")
        r = run_index_rss(sub, ctx.tmp / f"mem_index_{label}")
        r["shapes"] = n
        r["feature_bytes_mb_if_held"] = r["views"] * D_LAYER3 * 4 / 2**20
        res[label] = r
        shutil.rmtree(ctx.tmp / f"mem_index_{label}", ignore_errors=True)
    ctx.log("memory: encoder alone (subprocess)")
    res["encoder_only_peak_rss_mb"] = run_encoder_only_rss()
    res["peak_ratio_large_vs_small"] = ratio(res["large"]["peak_rss_mb"], res["small"]["peak_rss_mb"])
    res["views_ratio_large_vs_small"] = ratio(res["large"]["views"], res["small"]["views"])
    rows = [[f"{lab}: {res[lab]['shapes']} shapes", res[lab]["views"], res[lab]["peak_rss_mb"],
             ratio(res[lab]["peak_rss_mb"], res["small"]["peak_rss_mb"]), res[lab]["feature_bytes_mb_if_held"],
             res[lab]["views_per_s"]] for lab in ("small", "large")]
    rows.append(["encoder alone (no data)", "-", res["encoder_only_peak_rss_mb"],
                 ratio(res["encoder_only_peak_rss_mb"], res["small"]["peak_rss_mb"]), "-", "-"])
    ctx.show("memory: peak RSS of `cvret index` (subprocess, precision auto)",
             ["dataset", "views", "peak RSS MB", "x small", "float32 features MB", "views/s"], rows,
             [f"views x{res['views_ratio_large_vs_small']:.1f}, peak RSS x{res['peak_ratio_large_vs_small']:.2f} "
              "(flat: ~1); 'float32 features MB' = what holding every feature in RAM would add",
              "peak RSS = VmHWM of the subprocess at exit (/proc/self/status)"])
    return res


# ====================================================================== 3. search

def cvret_exact_path(X: np.ndarray, norms: np.ndarray, q: np.ndarray, k: int = 10):
    """ShapeIndex.search's single-query exact path itself (retrieval.index.exact_knn) on an in-memory array."""
    from retrieval.distance import exact_knn

    return exact_knn(X, norms, q, k)


def section_search(ctx: Ctx) -> dict:
    import faiss
    from retrieval.index import ShapeIndex
    from retrieval.search import QueryEngine
    from retrieval.viewpoints import DEFAULT_VIEWPOINTS

    q_ = ctx.quick
    sizes = ctx.args.search_sizes or ([100, 300] if q_ else [300, 2000])
    rep = 3 if q_ else 5
    res: dict = {"single": {}, "batched": {}}
    rows, brows = [], []
    rng = np.random.default_rng(1)
    for n in sizes:
        ctx.log(f"search: synthetic N={n} x D={D_LAYER3}")
        X = bl.random_features(n, seed=n)
        q = np.maximum(rng.standard_normal(D_LAYER3, dtype=np.float32), 0)
        st = stream_seconds(X, repeat=rep)
        idx = faiss.IndexFlatL2(D_LAYER3)
        idx.add(X)
        t_faiss = best_of(lambda: idx.search(q[None, :], 10), rep)
        t_knn = best_of(lambda: faiss.knn(q[None, :], X, 10), rep)
        norms = np.einsum("ij,ij->i", X, X)
        t_cvret = best_of(lambda: cvret_exact_path(X, norms, q, 10), rep)
        r = {"stream": st, "faiss_indexflat_s": t_faiss, "faiss_knn_s": t_knn, "cvret_exact_path_s": t_cvret}
        res["single"][n] = r
        for name, t in (("faiss IndexFlatL2.search k=10", t_faiss), ("faiss.knn k=10", t_knn),
                        ("cvret exact path (sgemv + 42 cand. re-ranked)", t_cvret)):
            rows.append([f"N={n}: {name}", t * 1e3, st["stream_s"] * 1e3, t / st["stream_s"], st["GB_per_s"]])
        # batched queries
        nq = 64
        Q = np.maximum(rng.standard_normal((nq, D_LAYER3), dtype=np.float32), 0)
        t_fb = best_of(lambda: idx.search(Q, 10), 2 if q_ else 3)
        t_mm = best_of(lambda: Q @ X.T, 2 if q_ else 3)
        res["batched"][n] = {"nq": nq, "faiss_s": t_fb, "sgemm_s": t_mm, "ratio": t_fb / t_mm,
                             "sgemm_GFLOP_per_s": 2 * nq * n * D_LAYER3 / t_mm / 1e9}
        brows.append([f"N={n}, nq={nq}", t_fb * 1e3, t_mm * 1e3, t_fb / t_mm,
                      res["batched"][n]["sgemm_GFLOP_per_s"]])
        del idx, X, Q
        gc.collect()
    ctx.show("search: single query, exact, vs streaming the same bytes once (best of %d)" % rep,
             ["path", "ms", "stream ms", "x stream", "stream GB/s"], rows,
             ["stream = fastest of numpy sgemv X@q and np.add.reduce(X) over the same float32 array; target <= 1.5x"])
    ctx.show("search: batched queries vs a plain sgemm of the same shape",
             ["case", "faiss ms", "Q@X.T ms", "x sgemm", "sgemm GFLOP/s"], brows)

    # ---- the real ShapeIndex / QueryEngine on a synthetic index folder (3 viewpoints)
    S = ctx.args.agg_shapes or (50 if q_ else 100)
    vps = list(DEFAULT_VIEWPOINTS)[:3]
    folder = ctx.tmp / "synth_index"
    ctx.log(f"search: building a synthetic index folder ({S} shapes x {len(vps)} viewpoints)")
    t = time.perf_counter()
    bl.make_synthetic_index(folder, S, vps, seed=7)
    res["synthetic_index_build_s"] = time.perf_counter() - t
    real_rows = []
    with ShapeIndex(folder, gpu="never") as si:
        eng = QueryEngine(si)
        q = np.maximum(rng.standard_normal(D_LAYER3, dtype=np.float32), 0)
        for vp in vps:
            si.vectors("npr", vp.name)  # load outside the timings
        X0 = si.vectors("npr", vps[0].name)
        st1 = bl.stream_bytes_seconds(X0, repeat=rep)
        st_all = sum(bl.stream_bytes_seconds(si.vectors("npr", vp.name), repeat=rep)["stream_s"] for vp in vps)
        t_one = best_of(lambda: si.search("npr", vps[0].name, q[None, :], 10), rep)
        t_pv = best_of(lambda: eng.query_features(q, domain="npr", k=10), rep)
        t_agg = best_of(lambda: eng.query_views({vp.name: q for vp in vps}, domain="npr", k=10), rep)
        nv = S * len(vps)
        res["real_index"] = {
            "shapes": S, "viewpoints": len(vps), "views": nv,
            "shapeindex_search_one_vp_s": t_one, "stream_one_vp_s": st1["stream_s"],
            "query_features_all_vps_s": t_pv, "query_views_3vp_s": t_agg, "stream_all_vps_s": st_all}
        real_rows += [
            [f"ShapeIndex.search, 1 viewpoint ({S} views)", t_one * 1e3, st1["stream_s"] * 1e3,
             t_one / st1["stream_s"], t_one / S * 1e6],
            [f"QueryEngine.query_features, per-view ({nv} views)", t_pv * 1e3, st_all * 1e3, t_pv / st_all,
             t_pv / nv * 1e6],
            [f"QueryEngine.query_views, 3 viewpoints x {S} shapes", t_agg * 1e3, st_all * 1e3, t_agg / st_all,
             t_agg / nv * 1e6]]
    shutil.rmtree(folder, ignore_errors=True)

    # ---- one sketch against the demo index (real features), including embedding the sketch
    try:
        from retrieval.images import load_image
        dfolder = demo_index(ctx, "bf16")
        with ShapeIndex(dfolder, gpu="never") as si:
            enc = get_encoder(ctx, "bf16")
            eng = QueryEngine(si, encoder=enc)
            sk = [r for r in si.store.records() if r.domain == "sketch"][0]
            feat = si.store.read_features([sk.row])[0]
            nv = sum(len(si.rows("npr", vp)) for vp in si.viewpoint_names("npr"))
            st_all = sum(bl.stream_bytes_seconds(si.vectors("npr", vp), repeat=rep)["stream_s"]
                         for vp in si.viewpoint_names("npr"))
            t_pv = best_of(lambda: eng.query_features(feat, domain="npr", k=10), rep)
            img = load_image(sk.path)
            t_e2e = best_of(lambda: eng.query(img, domain="npr", k=10), 3, warmup=1)
            res["demo_index"] = {"gallery_views": nv, "query_features_s": t_pv, "stream_s": st_all,
                                 "query_with_embedding_s": t_e2e}
            real_rows += [[f"demo index: query_features, sketch vs {nv} npr views", t_pv * 1e3, st_all * 1e3,
                           t_pv / st_all, t_pv / nv * 1e6],
                          ["demo index: query incl. embedding the sketch (bf16)", t_e2e * 1e3, "-", "-",
                           "-"]]
    except Exception as e:  # the demo index is optional here
        res["demo_index"] = {"error": f"{type(e).__name__}: {e}"}
        print(f"   (demo index query skipped: {e})")
    ctx.show("search: the real ShapeIndex / QueryEngine path (exact, k=10, best of %d)" % rep,
             ["path", "ms", "stream ms", "x stream", "us per view"], real_rows,
             ["synthetic random features in a real index folder (float16 segments, held once in memory); "
              "stream = the same float16 bytes read once"])
    return res


# ====================================================================== 4. scale

def compress_api():
    """(module, ShapeIndex.search supports mode=) or (None, False)."""
    try:
        import retrieval.compress as comp
    except Exception:
        return None, False
    from retrieval.index import ShapeIndex

    return comp, "mode" in inspect.signature(ShapeIndex.search).parameters


def section_scale(ctx: Ctx) -> dict:
    import faiss
    from retrieval.distance import exact_mean_sq

    sizes = ctx.args.scale_sizes or ([1000, 4000] if ctx.quick else [1000, 10000, 100000])
    rep = 3
    budget = ctx.args.scale_mem_gb * 2**30 if ctx.args.scale_mem_gb else 0.45 * bl.mem_available()
    comp, _ = compress_api()
    rank, n_cand = 128, 100  # pca:128 and cvret's default candidates max(100, 10k)
    rng = np.random.default_rng(3)
    q = np.maximum(rng.standard_normal(D_LAYER3, dtype=np.float32), 0)
    res: dict = {"memory_budget_gb": budget / 2**30, "exact": {}, "compressed": {}}
    store = None
    if comp is not None:
        from retrieval.store import FeatureStore
        from retrieval.viewpoints import DEFAULT_VIEWPOINTS

        # candidates are re-ranked from a real float16 feature store, as ShapeIndex.search(mode='compressed') does
        sfolder = ctx.tmp / "scale_store"
        bl.make_synthetic_index(sfolder, 160 if ctx.quick else 512, list(DEFAULT_VIEWPOINTS)[:1], seed=11)
        store = FeatureStore(sfolder)
        t = time.perf_counter()
        pca = comp.PCACompressor.fit(store.read_features(np.arange(min(256, store.n_views))), rank)
        res["compressed_fit_s"] = time.perf_counter() - t
    last = None
    for n in sizes:
        need = n * D_LAYER3 * 4
        if need <= budget:
            ctx.log(f"scale: exact N={n} ({need / 2**30:.1f} GiB)")
            X = np.empty((n, D_LAYER3), dtype=np.float32)
            bl.fill_random(X, seed=n)
            norms = np.einsum("ij,ij->i", X, X)  # computed once when an index is loaded
            t = best_of(lambda: cvret_exact_path(X, norms, q, 10), rep)
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
        if comp is not None:
            codes = np.ascontiguousarray(rng.standard_normal((n, rank), dtype=np.float32))
            cidx = faiss.IndexFlatL2(rank)
            cidx.add(codes)

            def compressed_query():
                c = pca.transform(q[None, :])
                _, ids = cidx.search(c, n_cand)
                cand = ids[0]
                rows = cand % store.n_views
                d = exact_mean_sq(q, store.read_features(rows))
                return cand[np.lexsort((cand, d))[:10]]

            t = best_of(compressed_query, rep)
            cq = pca.transform(q[None, :])
            cand = cidx.search(cq, n_cand)[1][0]
            feats = store.read_features(cand % store.n_views)
            parts = {"project_query_s": best_of(lambda: pca.transform(q[None, :]), rep),
                     "code_search_s": best_of(lambda: cidx.search(cq, n_cand), rep),
                     "read_candidates_s": best_of(lambda: store.read_features(cand % store.n_views), rep),
                     "exact_rerank_s": best_of(lambda: exact_mean_sq(q, feats), rep)}
            mem = n * rank * 4 + pca.basis.nbytes + pca.mean.nbytes
            res["compressed"][n] = {"latency_s": t, "memory_bytes": mem, "rank": rank, "candidates": n_cand,
                                    "measured": True, "parts": parts}
            del cidx, codes
            gc.collect()
    if store is not None:
        store.close()
    rows = []
    for n in sizes:
        e = res["exact"][n]
        c = res["compressed"].get(n)
        rows.append([f"{n:,}", e["latency_s"] * 1e3, "measured" if e["measured"] else "extrapolated",
                     e["stream_s"] * 1e3, e["latency_s"] / e["stream_s"], e["memory_bytes"] / 2**30,
                     c["latency_s"] * 1e3 if c else "-", ratio(e["latency_s"], c["latency_s"]) if c else "-",
                     c["memory_bytes"] / 2**30 if c else "-", ratio(e["memory_bytes"], c["memory_bytes"]) if c else "-"])
    notes = ["exact: cvret's single-query path (retrieval.index.exact_knn) on a preallocated float32 array; extrapolated rows are linear in N from the "
             f"largest size that fits {budget / 2**30:.1f} GiB"]
    if comp is not None:
        notes.append(f"compressed: PCA codes R={rank} (retrieval.compress.PCACompressor), FAISS flat over the N codes, "
                     f"{n_cand} candidates read from a float16 store (h5) and re-ranked exactly; memory = codes + "
                     "basis (the store stays on disk)")
    else:
        notes.append("compressed: not available (retrieval.compress missing)")
    if res["compressed"]:
        last_c = res["compressed"][sizes[-1]]["parts"]
        notes.append("compressed time at N=%s: project query %.1f ms, code search %.1f ms, read %d candidates "
                     "%.1f ms, exact re-rank %.1f ms" % (f"{sizes[-1]:,}", last_c["project_query_s"] * 1e3,
                                                        last_c["code_search_s"] * 1e3, n_cand,
                                                        last_c["read_candidates_s"] * 1e3,
                                                        last_c["exact_rerank_s"] * 1e3))
    ctx.show("scale: single-query latency and index memory", ["views", "exact ms", "", "stream ms", "x stream",
             "exact GiB", "compr. ms", "exact/compr.", "compr. GiB", "mem exact/compr."], rows, notes)
    try:
        res["figure"] = plot_scaling(res, sizes, Path(ctx.args.figure))
        print(f"   figure: {res['figure']}")
    except Exception as e:
        res["figure_error"] = f"{type(e).__name__}: {e}"
        print(f"   figure failed: {e}")
    res["exact"] = {str(k): v for k, v in res["exact"].items()}
    res["compressed"] = {str(k): v for k, v in res["compressed"].items()}
    return res


def plot_scaling(res: dict, sizes: list[int], path: Path) -> str:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(8, 3.2), dpi=80)
    for ax, key, scale, ylabel in ((axes[0], "latency_s", 1e3, "query latency (ms)"),
                                   (axes[1], "memory_bytes", 1 / 2**30, "index memory (GiB)")):
        for name, style, data in (("exact", "C0", res["exact"]), ("compressed", "C1", res["compressed"])):
            pts = [(n, data[n][key] * scale, data[n]["measured"]) for n in sizes if n in data]
            if not pts:
                continue
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
    plt.close(fig)
    return str(path)


# ====================================================================== 5. compressed

def section_compressed(ctx: Ctx) -> dict:
    comp, has_mode = compress_api()
    if comp is None or not has_mode:
        print("\ncompressed: not available (retrieval.compress / ShapeIndex.search(mode='compressed') missing)")
        return {"available": False}
    from retrieval.index import ShapeIndex
    from retrieval.search import QueryEngine

    folder = demo_index(ctx, "bf16")
    settings = [(8, 10), (32, 10), (128, 10)] if not ctx.args.compressed_settings else [
        tuple(int(x) for x in s.split(":")) for s in ctx.args.compressed_settings.split(",")]
    res: dict = {"available": True, "api": "QueryEngine(mode='compressed') -> ShapeIndex.search(mode='compressed')",
                 "settings": []}
    rows = []
    k = 10
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

        def hits_key(hits):
            return [(h.shape, h.viewpoint) for h in hits]

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
            r = {"rank": si.compressed().compressor.rank, "candidates_per_viewpoint": n_cand,
                 "memory_per_view_bytes": mpv, "exact_memory_per_view_bytes": D_LAYER3 * 4,
                 "memory_ratio": D_LAYER3 * 4 / mpv, "basis_bytes": int(si.compressed().compressor.basis.nbytes),
                 "recall_at_10_mean": float(np.mean(rec)), "recall_at_10_min": float(np.min(rec)),
                 "aggregated_recall_at_10_mean": float(np.mean(rec_agg)) if rec_agg else None,
                 "latency_s": t_c, "exact_latency_s": t_exact}
        res["settings"].append(r)
        rows.append([f"pca:{r['rank']}, {n_cand} cand./viewpoint", mpv, r["memory_ratio"],
                     r["recall_at_10_mean"], r["recall_at_10_min"], r["aggregated_recall_at_10_mean"],
                     t_c * 1e3, t_exact * 1e3])
    shutil.rmtree(folder / comp.COMPRESSED_DIR, ignore_errors=True)
    res["queries"], res["gallery"], res["aggregated_queries"] = len(Q), gallery, len(multi)
    ctx.show(f"compressed: {len(Q)} sketch queries vs {gallery} npr views, per-view pairs (demo data)",
             ["setting", "bytes/view", "x less memory", "recall@10 mean", "recall@10 min",
              f"aggr. recall@10 ({len(multi)} q.)", "ms", "exact ms"],
             rows, [f"exact = {D_LAYER3 * 4:,} bytes/view (float32 in FAISS); codes exclude the shared basis "
                    f"({D_LAYER3:,} x R float32); compressed re-ranks candidates from the float16 store",
                    WEIGHTS_NOTE,
                    f"tiny gallery ({gallery // max(1, len(vps))} views per viewpoint; cvret's default of 100 "
                    "candidates would cover all of it): recall here is a smoke test, not a large-gallery figure"])
    return res


# ====================================================================== summary

def summary(report: dict) -> list[list]:
    """Headline ratios of issue 6, each with its target where the issue sets one."""
    S = report["sections"]
    rows = []

    def add(name, value, target, ok):
        rows.append([name, value, target, "-" if ok is None else ("met" if ok else "NOT met")])

    def get(d, *keys):
        for k in keys:
            if not isinstance(d, dict) or k not in d:
                return None
            d = d[k]
        return d

    for prec in ("bf16", "fp32"):
        v = get(S, "encode", "cvret", prec, "ratio_vs_baseline")
        if v is not None:
            add(f"encode {prec}: build_index views/s x baseline", v, "-", None)
    v = get(S, "encode", "cvret", "bf16", "fraction_of_ceiling")
    if v is not None:
        add("encode bf16: forward / compute ceiling", v, "-", None)
    v = get(S, "encode", "bf16_accuracy", "top1_agreement")
    if v is not None:
        add("encode bf16 vs fp32: top-1 agreement", v, ">= 0.99", v >= 0.99)
    v = get(S, "memory", "peak_ratio_large_vs_small")
    if v is not None:
        add(f"memory: peak RSS ratio at x{get(S, 'memory', 'views_ratio_large_vs_small'):.0f} views", v,
            "~1 (<= 1.1)", v <= 1.1)
    single = get(S, "search", "single") or {}
    if single:
        n = max(single, key=int)
        r = single[n]
        add(f"search N={n}: cvret exact path x stream", r["cvret_exact_path_s"] / r["stream"]["stream_s"], "<= 1.5",
            r["cvret_exact_path_s"] / r["stream"]["stream_s"] <= 1.5)
        add(f"search N={n}: plain faiss IndexFlatL2 x stream (for reference)",
            r["faiss_indexflat_s"] / r["stream"]["stream_s"], "-", None)
    batched = get(S, "search", "batched") or {}
    if batched:
        n = max(batched, key=int)
        add(f"search N={n}, nq=64: faiss x sgemm", batched[n]["ratio"], "-", None)
    ri = get(S, "search", "real_index")
    if ri:
        add(f"search: QueryEngine.query_views ({ri['views']} views) x stream",
            ri["query_views_3vp_s"] / ri["stream_all_vps_s"], "-", None)
    ex, co = get(S, "scale", "exact") or {}, get(S, "scale", "compressed") or {}
    if ex:
        n = max(ex, key=int)
        tag = "" if ex[n]["measured"] else " (exact extrapolated)"
        if n in co:
            add(f"scale N={int(n):,}: exact / compressed latency{tag}", ex[n]["latency_s"] / co[n]["latency_s"], "-",
                None)
            add(f"scale N={int(n):,}: exact / compressed memory", ex[n]["memory_bytes"] / co[n]["memory_bytes"], "-",
                None)
    sets = get(S, "compressed", "settings") or []
    for r in sets:
        add(f"compressed pca:{r['rank']} ({r['candidates_per_viewpoint']} cand.): recall@10", r["recall_at_10_mean"],
            "-", None)
    return rows


# ====================================================================== main

def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, about a minute")
    ap.add_argument("--out", default=str(REPO / "docs" / "bench"), help="folder for bench.json")
    ap.add_argument("--data", default=None, help="dataset folder (default: generated demo data, cached)")
    ap.add_argument("--cache", default=tempfile.gettempdir(), help="where the generated demo data is cached")
    ap.add_argument("--sections", default=",".join(SECTIONS), help="comma-separated: " + ",".join(SECTIONS))
    ap.add_argument("--figure", default=str(REPO / "docs" / "scaling.png"), help="scaling figure path")
    g = ap.add_argument_group("sizes (override the full/--quick defaults)")
    g.add_argument("--encode-shapes", type=int, default=None, help="shapes indexed in the encode section")
    g.add_argument("--baseline-images", type=int, default=None)
    g.add_argument("--search-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    g.add_argument("--agg-shapes", type=int, default=None, help="shapes per viewpoint of the synthetic index")
    g.add_argument("--scale-sizes", type=lambda s: [int(x) for x in s.split(",")], default=None)
    g.add_argument("--scale-mem-gb", type=float, default=None, help="largest exact array (default 45%% of free RAM)")
    g.add_argument("--compressed-settings", default=None, help="RANK:CANDIDATES,... (default 8:10,32:10,128:10)")
    args = ap.parse_args(argv)
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in sections if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")

    ctx = Ctx(args)
    t_all = time.perf_counter()
    report = {"issue": 6, "quick": args.quick, "weights": WEIGHTS_ID, "weights_note": WEIGHTS_NOTE,
              "machine": bl.machine_info(), "sections": {}}
    m = report["machine"]
    print(f"cvret bench{' --quick' if args.quick else ''}: {m['cpu_model']}, {m['cores']} cores, "
          f"torch {m['torch']} ({m['torch_threads']} threads), faiss {m['faiss']}, "
          f"load {m['loadavg_at_start'][0]:.2f}, {m['memory_available_gb_at_start']} GiB free")
    print(f"weights: {WEIGHTS_NOTE}")
    busy: list[str] = []
    fns = {"encode": section_encode, "memory": section_memory, "search": section_search, "scale": section_scale,
           "compressed": section_compressed}
    try:
        for name in sections:
            mon = bl.CpuMonitor()
            try:
                report["sections"][name] = fns[name](ctx)
            except Exception as e:
                traceback.print_exc()
                print(f"\n{name}: FAILED ({type(e).__name__}: {e}); continuing", flush=True)
                report["sections"][name] = {"error": f"{type(e).__name__}: {e}"}
            cpu = mon.stop()
            sec = report["sections"][name]
            sec["seconds"], sec["other_processes_cores"] = cpu["wall_s"], cpu["other_cores"]
            if cpu["other_cores"] is not None and cpu["other_cores"] > BUSY_CORES:
                sec["contended"] = True
                busy.append(name)
                print(f"   WARNING: other processes kept {cpu['other_cores']:.2f} of {os.cpu_count()} cores busy "
                      f"during '{name}': its timings are unreliable; rerun on an idle machine", flush=True)
            gc.collect()
    finally:
        for enc in list(ctx.encoders):
            ctx.encoders.pop(enc)
        shutil.rmtree(ctx.tmp, ignore_errors=True)
    try:
        rows = summary(report)
        report["summary"] = [dict(zip(("measure", "value", "target", "status"), r)) for r in rows]
        table("summary (ratios against baselines measured in this run)", ["measure", "value", "target", "status"],
              rows, [WEIGHTS_NOTE])
    except Exception as e:
        print(f"summary failed: {type(e).__name__}: {e}")
    report["contended_sections"] = busy
    if busy:
        print(f"\nWARNING: sections {', '.join(busy)} ran while other processes used the CPU; their ratios "
              "are not trustworthy")
    report["machine"]["loadavg_at_end"] = list(os.getloadavg())
    report["seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(f"\nbench.json: {out / 'bench.json'} ({report['seconds']:.0f} s; load at end "
          f"{report['machine']['loadavg_at_end'][0]:.2f})")
    return 0


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
