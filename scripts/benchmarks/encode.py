"""encode: views/s of `build_index` (fp32, bf16) against "what a researcher writes today" (open_clip's full RN101
image tower, fp32, one image per call, a forward hook on layer3); the forward pass alone; a compute ceiling from a
measured matmul; bf16-vs-fp32 feature error and ranking agreement."""
from __future__ import annotations

import gc
import shutil
import time

import numpy as np

from bench_lib import best_of, contended, format_table, valid

from .context import WEIGHTS_ID, WEIGHTS_NOTE, ensure_data, get_encoder, ranking_agreement, subset_dataset


def measure(ctx) -> dict:
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
    # baseline images: sorted so that sketches, npr and rgb are all represented
    base_paths = [v.path for v in sorted(sub.views, key=lambda v: (v.shape, v.viewpoint, v.domain))][:n_base]
    res: dict = {"views": n_views, "shapes": n_shapes, "baseline_images": n_base,
                 "torch_threads": torch.get_num_threads()}

    # ---- baseline: open_clip full image tower, fp32, one image per call, hook on layer3
    ctx.log(f"encode: baseline (open_clip RN101 .visual, fp32, batch 1, hook on layer3) on {n_base} images")
    import open_clip
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
    base_feats = np.concatenate([baseline_one(p) for p in base_paths])
    base_s = time.perf_counter() - t
    base_vps = n_base / base_s
    # the forward pass alone, same tower, batch 1; a batch of 16 real images (repeated when fewer) for cvret
    arrs = np.stack([preprocess_array(load_image(p), 224) for p in base_paths[:16]])
    batch = np.resize(arrs, (16,) + arrs.shape[1:])
    with torch.no_grad():
        t_fwd1 = best_of(lambda: visual(torch.from_numpy(arrs[:1])), repeat=3 if q else 5, warmup=1)
    hook.remove()
    del visual
    gc.collect()
    ctx.log(f"encode: baseline {base_vps:.2f} views/s (model load {res['baseline_model_load_s']:.1f} s)")
    res["baseline"] = {"views_per_s": base_vps, "seconds": base_s, "forward_only_batch1_s": t_fwd1,
                       "forward_only_views_per_s": 1 / t_fwd1}

    # ---- compute ceiling: measured matmul throughput over the FLOPs of one view, counted on cvret's trunk
    from .forward import count_trunk

    gflop_view = count_trunk(get_encoder(ctx, "bf16"), arrs[0])["flops"] / 1e9
    res["GFLOP_per_view"] = gflop_view
    n_mm = 2048 if q else 4096
    ceil = {}
    for name, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        a = torch.randn(n_mm, n_mm).to(dt)
        b = torch.randn(n_mm, n_mm).to(dt)
        t_mm = best_of(lambda: torch.mm(a, b), repeat=3, warmup=1)
        gflops = 2 * n_mm ** 3 / t_mm / 1e9
        ceil[name] = {"matmul_n": n_mm, "matmul_s": t_mm, "GFLOP_per_s": gflops,
                      "ceiling_views_per_s": gflops / gflop_view}
        del a, b
    res["ceiling"] = ceil
    ctx.log("encode: matmul GFLOP/s fp32 %.0f, bf16 %.0f" % (ceil["fp32"]["GFLOP_per_s"], ceil["bf16"]["GFLOP_per_s"]))

    # ---- cvret: forward alone (batch 16) and end-to-end build_index, per precision
    res["cvret"] = {}
    fwd_feats = {}
    for prec in ("fp32", "bf16"):
        enc = get_encoder(ctx, prec)
        t_fwd = best_of(lambda: enc.encode_arrays(batch), repeat=2 if q else 3, warmup=1)
        t_fwd_b1 = best_of(lambda: enc.encode_arrays(batch[:1]), repeat=3 if q else 5, warmup=1)
        fwd_feats[prec] = enc.encode_arrays(arrs)
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
            "forward_GFLOP_per_s": 16 / t_fwd * gflop_view,
            "fraction_of_ceiling": (16 / t_fwd) / ceil[prec]["ceiling_views_per_s"],
            "ratio_vs_baseline": vps_e2e / base_vps,
        }
        ctx.indexes[prec] = out  # reused by the search, compressed and forward sections

    # ---- sanity: the baseline's hooked layer3 equals cvret's fp32 feature (same seed, same preprocessing)
    bf = base_feats[: len(arrs)]
    res["baseline_vs_cvret_fp32_rel_err_max"] = float(
        (np.linalg.norm(fwd_feats["fp32"] - bf, axis=1) / np.linalg.norm(bf, axis=1)).max())

    # ---- accuracy of bf16 vs fp32
    acc = {}
    f32, b16 = fwd_feats["fp32"], fwd_feats["bf16"]
    rel = np.linalg.norm(b16 - f32, axis=1) / np.linalg.norm(f32, axis=1)
    acc["batch_rel_err_mean"], acc["batch_rel_err_max"] = float(rel.mean()), float(rel.max())
    rel16 = np.linalg.norm(f32.astype(np.float16).astype(np.float32) - f32, axis=1) / np.linalg.norm(f32, axis=1)
    acc["float16_storage_rel_err_max"] = float(rel16.max())
    acc.update(ranking_agreement(ctx.indexes["fp32"], ctx.indexes["bf16"]))
    res["bf16_accuracy"] = acc
    return res


def render(res: dict) -> list[str]:
    c_ = contended(res)
    ceil, b, acc = res["ceiling"], res["baseline"], res["bf16_accuracy"]
    n_mm = ceil["fp32"]["matmul_n"]
    rows = [["baseline: open_clip .visual fp32, 1 image/call, hook", b["views_per_s"], 1.0,
             b["forward_only_views_per_s"], "-", "-", "-"]]
    for prec in ("fp32", "bf16"):
        c = res["cvret"][prec]
        rows.append([f"cvret build_index {prec} (end to end)", c["end_to_end_views_per_s"],
                     valid(c["ratio_vs_baseline"], c_), c["forward_only_batch1_views_per_s"],
                     c["forward_only_views_per_s"], ceil[prec]["ceiling_views_per_s"],
                     valid(c["fraction_of_ceiling"], c_)])
    speed = format_table(
        f"encode: views/s on {res['views']} demo views (baseline on {res['baseline_images']}), "
        f"torch threads {res['torch_threads']}",
        ["path", "views/s", "x baseline", "fwd batch 1", "fwd batch 16", "ceiling views/s", "fwd/ceiling"], rows,
        [f"ceiling = matmul {n_mm}^3 GFLOP/s / {res['GFLOP_per_view']:.2f} GFLOP per view (counted): fp32 "
         f"{ceil['fp32']['GFLOP_per_s']:.0f} GFLOP/s, bf16 {ceil['bf16']['GFLOP_per_s']:.0f} GFLOP/s "
         "(the forward section counts the FLOPs and measures the conv-shaped bound)",
         "fwd = forward pass alone in views/s; baseline: full tower (layer4 + attention pool included), "
         "cvret: fused trunk up to layer3; fwd/ceiling uses batch 16",
         f"baseline layer3 vs cvret fp32 features: max relative difference "
         f"{res['baseline_vs_cvret_fp32_rel_err_max']:.1e} (same weights, same preprocessing)"]
        + ([f"contended ({res.get('contended_because')}): ratios not valid"] if c_ else []))
    accuracy = format_table(
        "encode: bf16 vs fp32 accuracy (" + WEIGHTS_ID + ")", ["measure", "value", "target"],
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
    return [speed, accuracy]


def headline(res: dict) -> list[list]:
    """Summary rows: [measure, value, target, met (True/False/None), timed (invalid under load)]."""
    rows = []
    for prec in ("bf16", "fp32"):
        rows.append([f"encode {prec}: build_index views/s x baseline", res["cvret"][prec]["ratio_vs_baseline"], "-",
                     None, True])
    rows.append(["encode bf16: forward / compute ceiling", res["cvret"]["bf16"]["fraction_of_ceiling"], "-", None,
                 True])
    v = res["bf16_accuracy"]["top1_agreement"]
    if v is not None:
        rows.append(["encode bf16 vs fp32: top-1 agreement", v, ">= 0.99", v >= 0.99, False])
    return rows
