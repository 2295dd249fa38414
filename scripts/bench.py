#!/usr/bin/env python
"""cvret benchmark (GitHub issues 6 and 14): every figure next to a baseline or bound measured in the same run.

    python scripts/bench.py [--quick] [--out docs/bench] [--data DIR] [--sections encode,memory,...]

Sections (one module each in scripts/benchmarks/)
  encode      views/s of `build_index` (fp32, bf16) vs open_clip's full RN101 tower, fp32, one image per call, a
              hook on layer3; forward pass alone; compute ceiling from a measured matmul; bf16-vs-fp32 agreement.
  memory      peak RSS of `cvret index` at two dataset sizes (flat = ratio ~1).
  search      single-query latency (FAISS, cvret's exact path, the real ShapeIndex/QueryEngine) vs the time to
              stream the same bytes; batched queries vs a plain sgemm; view-aggregated ranking.
  scale       latency and memory at 1k/10k/100k views (exact: what fits is measured, the rest extrapolated),
              compressed candidate search; writes docs/scaling.png.
  compressed  memory per view and recall@10 against exact search on the demo data.
  forward     issue 14: the bf16 forward pass against the bf16 bound measured in the same run (a 2048^2 GEMM and
              GEMMs of the trunk's own im2col shapes; FLOPs per view counted on the encoder), and bf16-vs-fp32
              top-1 agreement / top-10 overlap.
  startup     issue 14: `cvret index` end to end on the NPR domain vs its marginal rate (start-up cost), and
              `cvret query` whole-process time (cold, min and median of 5) with its import-time breakdown.

Every section records /proc/loadavg before and after and the CPU other processes used; ratios measured while
other processes kept the CPU busy (or under a load average above 1 at the start) are marked "contended", not
valid. Weights are random ('untrained:seed=0', real weights cannot be downloaded here): speed does not depend on
the weights, the agreement figures do. Results: tables on stdout and `bench.json` in --out.
"""
from __future__ import annotations

import argparse
import gc
import json
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
from benchmarks import SECTIONS, section  # noqa: E402
from benchmarks.context import WEIGHTS_ID, WEIGHTS_NOTE, Ctx  # noqa: E402


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes, about a minute per section")
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
    g.add_argument("--no-compiled", action="store_true",
                   help="forward: skip the compiled trunk (compiling it the first time takes about a minute)")
    g.add_argument("--forward-batch", type=int, default=None,
                   help="images per forward pass in the forward section (default: build_index's batch size)")
    g.add_argument("--npr-data", default=None,
                   help="dataset whose npr views the startup section indexes (default: the full demo data, "
                        "160 shapes = 480 npr views, generated once into --cache; with --quick: --data or the "
                        "benchmark's demo data)")
    g.add_argument("--startup-views", type=lambda s: [int(x) for x in s.split(",")], default=None,
                   help="SMALL,LARGE npr views indexed by `cvret index` (default 96,480; --quick 6,18)")
    g.add_argument("--query-runs", type=int, default=None, help="cold `cvret query` runs (default 5; --quick 1)")
    args = ap.parse_args(argv)
    sv = args.startup_views
    if sv is not None and (len(sv) != 2 or not 0 < sv[0] < sv[1]):
        ap.error(f"--startup-views takes SMALL,LARGE with 0 < SMALL < LARGE, not {','.join(map(str, sv))}")
    args.section_list = [s.strip() for s in args.sections.split(",") if s.strip()]
    bad = [s for s in args.section_list if s not in SECTIONS]
    if bad:
        ap.error(f"unknown section(s) {bad}; choose from {', '.join(SECTIONS)}")
    return args


def run_section(ctx: Ctx, name: str) -> dict:
    """Measure one section with the load watched around it; a failure is recorded, not raised."""
    watch = ctx.watch()
    try:
        res = section(name).measure(ctx)
    except Exception as e:
        traceback.print_exc()
        print(f"\n{name}: FAILED ({type(e).__name__}: {e}); continuing", flush=True)
        res = {"error": f"{type(e).__name__}: {e}"}
    load = watch.stop()
    res["seconds"] = load.pop("wall_s")
    res.update(load)
    res["ratios_valid"] = not bl.contended(res)  # a part watched on its own may be contended too
    if not res["ratios_valid"]:
        print(f"   WARNING: '{name}' ran under load: its ratios are marked contended, not valid; rerun on an idle "
              "machine", flush=True)
    return res


def summary(report: dict) -> list[list]:
    """Headline rows of every section that ran: measure, value, target, status ('contended' beats met/NOT met)."""
    rows = []
    for name, res in report["sections"].items():
        if "error" in res:
            rows.append([f"{name}: failed", res["error"], "-", "-"])
            continue
        for measure, value, target, met, timed in section(name).headline(res):
            if timed and bl.contended(res):
                status = "contended: not valid"
            else:
                status = "-" if met is None else ("met" if met else "NOT met")
            rows.append([measure, value, target, status])
    return rows


def main(argv=None):
    args = parse_args(argv)
    start_load = bl.loadavg()
    ctx = Ctx(args, start_load=start_load[0] if start_load else None)
    t_all = time.perf_counter()
    report = {"issue": 6, "issues": [6, 14], "quick": args.quick, "weights": WEIGHTS_ID, "weights_note": WEIGHTS_NOTE,
              "machine": bl.machine_info(), "rules": {"busy_cores": bl.BUSY_CORES, "busy_load": bl.BUSY_LOAD},
              "sections": {}}
    m = report["machine"]
    print(f"cvret bench{' --quick' if args.quick else ''}: {m['cpu_model']}, {m['cores']} cores, "
          f"torch {m['torch']} ({m['torch_threads']} threads), faiss {m['faiss']}, "
          f"load {m['loadavg_at_start'][0]:.2f}, {m['memory_available_gb_at_start']} GiB free")
    print(f"weights: {WEIGHTS_NOTE}")
    try:
        for name in args.section_list:
            res = report["sections"][name] = run_section(ctx, name)
            if "error" not in res:
                try:
                    for text in section(name).render(res):
                        print(text, flush=True)
                except Exception as e:
                    traceback.print_exc()
                    res["render_error"] = f"{type(e).__name__}: {e}"
            gc.collect()
    finally:
        ctx.close()
    rows = summary(report)
    report["summary"] = [dict(zip(("measure", "value", "target", "status"), r)) for r in rows]
    print(bl.format_table("summary (ratios against baselines measured in this run)",
                          ["measure", "value", "target", "status"], rows, [WEIGHTS_NOTE]))
    report["contended_sections"] = [n for n, r in report["sections"].items() if bl.contended(r)]
    if report["contended_sections"]:
        print(f"\nWARNING: sections {', '.join(report['contended_sections'])} ran under load; their ratios "
              "are not valid")
    report["machine"]["loadavg_at_end"] = bl.loadavg()
    report["seconds"] = time.perf_counter() - t_all
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "bench.json").write_text(json.dumps(report, indent=2, default=_json_default) + "\n")
    print(f"\nbench.json: {out / 'bench.json'} ({report['seconds']:.0f} s; load at end "
          f"{report['machine']['loadavg_at_end'][0]:.2f})")
    return 0


def _json_default(o):
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, np.floating):
        return float(o)
    if isinstance(o, np.bool_):
        return bool(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


if __name__ == "__main__":
    sys.exit(main())
