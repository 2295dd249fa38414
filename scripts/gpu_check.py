"""One prepared run of cvret's GPU path: CUDA encoding (fp16/bf16/fp32), the real `cvret index` on CUDA,
query latency, and the studies' matrix products on CUDA, each checked against the CPU path.

    python scripts/gpu_check.py --data demo_out/data --out OUT_DIR [--device cuda] [--quick]

Prints a table and writes gpu_check.json. On a machine without CUDA, `--device cpu --quick`
runs the same code as a smoke test (the ratios are then meaningless).
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def sync(device):
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def forward_rate(enc, batch, reps=5):
    enc.encode_arrays(batch)
    sync(enc.device.type)
    t = time.perf_counter()
    for _ in range(reps):
        enc.encode_arrays(batch)
    sync(enc.device.type)
    return reps * len(batch) / (time.perf_counter() - t)


def ranking_agreement(q_a, g_a, q_b, g_b):
    """Top-1 agreement and top-10 overlap of exact per-view rankings from two feature sets."""
    def ranks(q, g):
        d = (q.astype(np.float64) ** 2).sum(1)[:, None] + (g.astype(np.float64) ** 2).sum(1)[None] \
            - 2 * q.astype(np.float64) @ g.astype(np.float64).T
        return np.argsort(d, axis=1)[:, :10]
    ra, rb = ranks(q_a, g_a), ranks(q_b, g_b)
    return float(np.mean(ra[:, 0] == rb[:, 0])), float(np.mean([len(set(x) & set(y)) / 10 for x, y in zip(ra, rb)]))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="demo_out/data")
    ap.add_argument("--out", default=os.environ.get("OUT", "gpu_check_out"))
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    import torch

    from retrieval import gemm
    from retrieval.dataset import discover
    from retrieval.encoder import EncoderSpec, LayerEncoder
    from retrieval.images import load_image, preprocess_array
    from retrieval.candidates import faiss_gpu_count
    from retrieval.index import ShapeIndex
    from retrieval.indexer import build_index
    from retrieval.search import QueryEngine
    from retrieval.studies import evaluate, headline_rows

    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dev = args.device
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "python": platform.python_version(), "torch": torch.__version__,
           "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
           "cpu_threads": torch.get_num_threads(), "faiss_gpu": faiss_gpu_count() > 0, "weights": "untrained:seed=0"}
    try:
        import faiss
        res["faiss"] = faiss.__version__
    except ImportError:
        res["faiss"] = None
    ds = discover(args.data)
    keep = set(ds.shapes[:12]) if args.quick else set(ds.shapes)
    views = [v for v in ds.views if v.shape in keep]
    paths = [v.path for v in views]
    spec = EncoderSpec("untrained", seed=0)
    n_sub = 24 if args.quick else 96
    batch = np.stack([preprocess_array(load_image(p)) for p in paths[:n_sub]])

    # 1. encoding: forward throughput per precision, and accuracy against CPU fp32
    t = time.perf_counter()
    cpu32 = LayerEncoder(spec, device="cpu", precision="fp32")
    ref_cpu = np.concatenate([cpu32.encode_arrays(batch[i:i + 16]) for i in range(0, n_sub, 16)])
    res["cpu_fp32_views_per_s"] = n_sub / (time.perf_counter() - t)
    enc = {}
    for prec in ("fp32", "bf16", "fp16"):
        e = LayerEncoder(spec, device=dev, precision=prec)
        enc[prec] = e
        big = np.concatenate([batch] * (1 if args.quick else 2))
        res[f"{dev}_{prec}_forward_views_per_s"] = forward_rate(e, big, reps=2 if args.quick else 5)
        f = np.concatenate([e.encode_arrays(batch[i:i + 32]) for i in range(0, n_sub, 32)])
        res[f"{dev}_{prec}_rel_err_vs_cpu_fp32"] = float(np.linalg.norm(f - ref_cpu) / np.linalg.norm(ref_cpu))
        print(f"{dev} {prec}: forward {res[f'{dev}_{prec}_forward_views_per_s']:.0f} views/s, "
              f"relative error vs CPU fp32 {res[f'{dev}_{prec}_rel_err_vs_cpu_fp32']:.2e}", flush=True)

    # ranking agreement of fp16 / bf16 with fp32 on the same device: every sketch view vs every npr view
    def feats(e, kind):
        ps = [v.path for v in views if v.domain == kind]
        out_f = np.zeros((len(ps), e.feature_dim), dtype=np.float32)
        for pos, f in e.encode_paths(ps, batch_size=64, workers=8):
            out_f[pos] = f
        return out_f
    q32, g32 = feats(enc["fp32"], "sketch"), feats(enc["fp32"], "npr")
    for prec in ("fp16", "bf16"):
        q, g = feats(enc[prec], "sketch"), feats(enc[prec], "npr")
        top1, top10 = ranking_agreement(q32, g32, q, g)
        res[f"{dev}_{prec}_top1_agreement"], res[f"{dev}_{prec}_top10_overlap"] = top1, top10
        print(f"{prec} vs fp32 rankings ({len(q)} sketch queries x {len(g)} npr views): "
              f"top-1 agreement {top1:.4f}, top-10 overlap {top10:.4f}", flush=True)

    # 2. the real indexer on the device (decode + preprocess + forward + float16 store + FAISS)
    sub = ds
    if args.quick:
        from dataclasses import replace
        sub = replace(ds, views=views)
    with tempfile.TemporaryDirectory() as tmp:
        rep = build_index(sub, Path(tmp) / "idx", spec, device=dev, precision="auto", batch_size=64, progress=False)
        res[f"{dev}_index_end_to_end_views_per_s"] = rep.views_per_second
        res["index_views"] = rep.embedded
        print(f"cvret index on {dev} (auto precision): {rep.embedded} views at {rep.views_per_second:.0f} views/s "
              f"end to end", flush=True)
        with ShapeIndex(Path(tmp) / "idx", gpu="never") as cpu_si, ShapeIndex(Path(tmp) / "idx") as si:
            eng = QueryEngine(si, device=dev)
            cpu_eng = QueryEngine(cpu_si, encoder=eng.encoder)
            res["search_gpu_backend"] = si.gpu_backend()
            q = eng.embed([paths[0]])[0]
            for name, e in (("gpu", eng), ("cpu", cpu_eng)):
                e.query_features(q, k=10)
                t = time.perf_counter()
                for _ in range(10):
                    e.query_features(q, k=10)
                res[f"query_ms_{name}"] = (time.perf_counter() - t) / 10 * 1e3
            # every sketch view as a query: the GPU candidates + exact re-rank must give the CPU's exact top 10
            sk = [si.row_of("sketch", s, vp) for s in si.shapes for vp in si.viewpoint_names("sketch")]
            qs = si.store.read_features([r for r in sk if r is not None])
            same = [[(h.shape, h.viewpoint) for h in eng.query_features(x, k=10, per_shape=False)] ==
                    [(h.shape, h.viewpoint) for h in cpu_eng.query_features(x, k=10, per_shape=False)] for x in qs]
            res["gpu_search_top10_identical_to_cpu"] = float(np.mean(same))
            res["gallery_views"] = int(sum(len(si.rows("npr", vp)) for vp in si.viewpoint_names("npr")))
            print(f"query against {res['gallery_views']} npr views: {si.gpu_backend()} GPU backend "
                  f"{res['query_ms_gpu']:.1f} ms, CPU {res['query_ms_cpu']:.1f} ms; top-10 identical to the CPU's "
                  f"for {res['gpu_search_top10_identical_to_cpu']:.4f} of {len(qs)} sketch queries", flush=True)
            # 3. the studies' matrix products on the device vs the CPU, same numbers
            times = {}
            reports = {}
            for d in ("cpu", dev):
                with gemm.on(d):
                    t = time.perf_counter()
                    reports[d] = evaluate([si], Path(tmp) / f"rep_{d}", progress=False,
                                          objects=min(10, len(si.shapes)), study2_objects=min(100, len(si.shapes)))
                    times[d] = time.perf_counter() - t
            res["eval_seconds_cpu"], res[f"eval_seconds_{dev}"] = times["cpu"], times[dev]

            def headline(r):
                return [(row.get("pair"), row.get("acc@1"), row.get("mrr")) for row in headline_rows(r)]
            a, b = headline(reports["cpu"]), headline(reports[dev])
            res["eval_same_metrics"] = all(x[0] == y[0] and abs((x[1] or 0) - (y[1] or 0)) < 1e-9 and
                                           abs((x[2] or 0) - (y[2] or 0)) < 1e-6 for x, y in zip(a, b))
            print(f"eval: cpu {times['cpu']:.1f} s, {dev} {times[dev]:.1f} s, same metrics: {res['eval_same_metrics']}",
                  flush=True)
    (out / "gpu_check.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))


if __name__ == "__main__":
    main()
