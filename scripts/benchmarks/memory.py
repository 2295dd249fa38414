"""memory: peak RSS of `cvret index` (a subprocess) at two dataset sizes; flat memory means a ratio near 1."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

from bench_lib import D_LAYER3, format_table, ratio

from .context import REPO, ensure_data, link_subset

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

ENCODER_ONLY = PEAK_RSS + r"""
from retrieval.encoder import EncoderSpec, LayerEncoder
LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision="auto")
print("MAXRSS_KB", _peak_kb(), file=sys.stderr, flush=True)
"""


def _peak_mb(stderr: str) -> float | None:
    kb = [int(line.split()[1]) for line in stderr.splitlines() if line.startswith("MAXRSS_KB")]
    return kb[-1] / 1024 if kb else None


def run_encoder_only_rss() -> float | None:
    p = subprocess.run([sys.executable, "-c", ENCODER_ONLY], capture_output=True, text=True, cwd=str(REPO))
    return _peak_mb(p.stderr)


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
    rep = json.loads(p.stdout[p.stdout.index("{"):])
    return {"peak_rss_mb": _peak_mb(p.stderr), "wall_s": wall, "views": rep["embedded"],
            "views_per_s": rep["views_per_second"]}


def measure(ctx) -> dict:
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
    return res


def render(res: dict) -> list[str]:
    rows = [[f"{lab}: {res[lab]['shapes']} shapes", res[lab]["views"], res[lab]["peak_rss_mb"],
             ratio(res[lab]["peak_rss_mb"], res["small"]["peak_rss_mb"]), res[lab]["feature_bytes_mb_if_held"],
             res[lab]["views_per_s"]] for lab in ("small", "large")]
    rows.append(["encoder alone (no data)", "-", res["encoder_only_peak_rss_mb"],
                 ratio(res["encoder_only_peak_rss_mb"], res["small"]["peak_rss_mb"]), "-", "-"])
    return [format_table(
        "memory: peak RSS of `cvret index` (subprocess, precision auto)",
        ["dataset", "views", "peak RSS MB", "x small", "float32 features MB", "views/s"], rows,
        [f"views x{res['views_ratio_large_vs_small']:.1f}, peak RSS x{res['peak_ratio_large_vs_small']:.2f} "
         "(flat: ~1); 'float32 features MB' = what holding every feature in RAM would add",
         "peak RSS = VmHWM of the subprocess at exit (/proc/self/status); memory does not depend on the load"])]


def headline(res: dict) -> list[list]:
    v = res["peak_ratio_large_vs_small"]
    if v is None:
        return []
    return [[f"memory: peak RSS ratio at x{res['views_ratio_large_vs_small']:.0f} views", v, "~1 (<= 1.1)", v <= 1.1,
             False]]
