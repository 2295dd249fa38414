"""The whole pipeline on embedded data, offline: generate, render, index, query, evaluate.

Every step is resumable, so a second `cvret demo` only redoes what changed. Weights: the
real openai RN101 when it can be had (cache or network), else untrained seeded weights with
a prominent note, because then every number is a property of random features, not CLIP's.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path

from .errors import EncoderError
from .fsio import atomic_write_text

UNTRAINED_BANNER = (
    "NOTE: the openai RN101 weights are not available here (offline, not cached), so this demo uses\n"
    "      UNTRAINED RN101 weights (seed {seed}). Its features are random projections of the pixels, not\n"
    "      CLIP's; every number below describes those random features and is NOT the seed paper's.\n"
    "      Pass --weights PATH (a local RN101 checkpoint) or run online to use the real model."
)


@dataclass
class DemoResult:
    out: Path
    data: Path
    index: Path
    report: Path
    weights: str
    queries: list = field(default_factory=list)
    seconds: dict = field(default_factory=dict)
    headline: str = ""


def choose_weights(weights: str) -> tuple[str, bool]:
    """`auto` → 'openai' when its checkpoint can be had quickly, else 'untrained'; returns (weights, fell_back)."""
    if weights != "auto":
        return weights, False
    from .weights import openai_checkpoint

    try:
        openai_checkpoint()
        return "openai", False
    except EncoderError:
        return "untrained", True


def run_demo(out: Path | str = "demo_out", small: bool = False, weights: str = "auto", seed: int = 0,
             style: str = "medium", device: str = "auto", precision: str = "auto", workers: int | None = None,
             progress: bool = True, log=print) -> DemoResult:
    from .dataset import discover
    from .encoder import EncoderSpec
    from .index import ShapeIndex
    from .indexer import build_index
    from .plots import result_sheet
    from .search import QueryEngine
    from .studies import evaluate, headline_table
    from .synth import DEMO_SMALL_COUNTS, make_demo_dataset
    from . import __version__

    from .synth.sketch import resolve_style

    resolve_style(style)  # a bad --style stops here, before the weights banner and any work
    out = Path(out)
    data, index_dir, report_dir = out / "data", out / "index", out / "report"
    times = {}
    weights, fell_back = choose_weights(weights)
    if fell_back:
        log(UNTRAINED_BANNER.format(seed=seed))

    t = time.perf_counter()
    counts = DEMO_SMALL_COUNTS if small else None
    summary = make_demo_dataset(data, counts=counts, seed=seed, style=style, workers=workers, progress=progress)
    times["data"] = time.perf_counter() - t
    log(f"[1/4] data: {summary['shapes']} shapes x 3 domains x 3 viewpoints in {data} "
        f"({summary['generated']} generated, {summary['skipped']} up to date, {times['data']:.1f} s)")

    t = time.perf_counter()
    ds = discover(data)
    spec = EncoderSpec(weights=weights, seed=seed)
    rep = build_index(ds, index_dir, spec, device=device, precision=precision, progress=progress)
    times["index"] = time.perf_counter() - t
    log(f"[2/4] index: {index_dir} ({rep.embedded} embedded at {rep.views_per_second:.1f} views/s, "
        f"{rep.unchanged} up to date, {len(rep.failed)} skipped; {times['index']:.1f} s)")

    t = time.perf_counter()
    result = DemoResult(out, data, index_dir, report_dir, weights)
    with ShapeIndex(index_dir) as si:
        engine = QueryEngine(si, device=device, precision=precision)
        sketches = [s for s in si.shapes if s.startswith("chair")][:2] + \
            [s for s in si.shapes if not s.startswith("chair")][:1]
        sheets = out / "queries"
        sheets.mkdir(parents=True, exist_ok=True)
        for shape in sketches:
            row = si.row_of("sketch", shape, "az030")
            if row is None:
                continue
            q = si.record(row).path
            feat = si.store.read_features([row])[0]  # the stored sketch feature: no re-encoding
            hits = engine.query_features(feat, domain="npr", k=5)
            rank = next((h.rank for h in hits if h.shape == shape), None)
            sheet = result_sheet(q, [(h.path, f"{h.shape} {h.viewpoint}\nd={h.distance:.3g}") for h in hits],
                                 str(sheets / f"{shape}_az030.png"),
                                 title=f"sketch of {shape} (az030) -> npr index, weights={weights}")
            result.queries.append({"sketch": q, "true_shape": shape, "rank_of_true_shape_in_top5": rank,
                                   "hits": [h.to_dict() for h in hits], "sheet": sheet})
            log(f"[3/4] query {q} -> " + ", ".join(f"{h.shape}@{h.viewpoint}" for h in hits[:3])
                + (f" (true shape at rank {rank})" if rank else " (true shape not in the top 5)"))
    times["queries"] = time.perf_counter() - t

    t = time.perf_counter()
    with ShapeIndex(index_dir, gpu="never") as si:
        n = len(si.shapes)
        report = evaluate([si], report_dir, objects=min(10, n), study2_objects=min(100, n), seed=seed,
                          progress=False, cvret_version=__version__)
    times["eval"] = time.perf_counter() - t
    result.headline = headline_table(report)
    log(f"[4/4] eval: {report_dir / 'report.md'} ({times['eval']:.1f} s)")
    log(result.headline)
    result.seconds = times
    atomic_write_text(out / "demo.json", json.dumps({"weights": weights, "seconds": times, "queries": result.queries,
                                                    "data": str(data), "index": str(index_dir),
                                                    "report": str(report_dir)}, indent=2, ensure_ascii=False),
                      fsync=False)
    log(f"done in {sum(times.values()):.0f} s: data {data}, index {index_dir}, query sheets {out / 'queries'}, "
        f"report {report_dir / 'report.md'}")
    if fell_back:
        log("(untrained weights: see the note at the top; these numbers are not the paper's)")
    return result
