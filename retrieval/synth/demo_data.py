"""The embedded demo dataset: procedural shapes rendered in three domains, ready for `cvret index`.

`make_demo_dataset(out)` writes the cvret layout::

    <out>/dataset.json                         viewpoints, categories (shape id -> category), source
    <out>/{sketch,npr,rgb}/<shape_id>/<viewpoint>.png
    <out>/.synth/<shape_id>.json               per-shape completion stamp (settings fingerprint)

For every shape and viewpoint the renderer's visible NPR strokes are computed once and used
twice: drawn cleanly (the `npr` domain) and stylised into a freehand-like sketch (the `sketch`
domain, :func:`retrieval.synth.sketch.sketchify`). The `rgb` domain is the renderer's shaded view.

The run is deterministic (shape from (seed, category, index), sketch from (seed, shape id,
viewpoint), independent of worker order), parallel over shapes with a process pool, atomic (each
image is written to a temporary file and renamed) and resumable: a shape whose stamp records the
same fingerprint (generator and stylizer versions, seed, style, render settings, viewpoints) and
whose files all exist is skipped.
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import replace
from pathlib import Path

from ..dataset import write_dataset_json
from ..errors import ConfigError
from ..fsio import atomic_write_text
from ..pool import available_cores, run_jobs
from ..viewpoints import DEFAULT_VIEWPOINTS, Viewpoint
from .shapes import CATEGORIES, GENERATOR_VERSION, generate_shape_spec, shape_id
from .sketch import SKETCH_VERSION, STYLES, resolve_style, sketch_seed, sketchify

__all__ = ["DEFAULT_COUNTS", "DEMO_SMALL_COUNTS", "DOMAINS", "STAMP_DIR", "make_demo_dataset",
           "demo_fingerprint", "render_demo_shape"]

DEFAULT_COUNTS = {"chair": 100, "table": 20, "lamp": 20, "airplane": 20}
DEMO_SMALL_COUNTS = {"chair": 4, "table": 2, "lamp": 2, "airplane": 2}
DOMAINS = ("sketch", "npr", "rgb")
STAMP_DIR = ".synth"


def _style_label(style) -> str:
    level = resolve_style(style)
    names = [n for n, v in STYLES.items() if v == level]
    return f"{names[0]} ({level:g})" if names else f"{level:g}"


def _settings(settings, size: int):
    from ..render import RenderSettings

    if settings is None:
        return RenderSettings(size=int(size))
    return settings if settings.size == int(size) else replace(settings, size=int(size))


def demo_fingerprint(seed: int, style, settings, viewpoints) -> str:
    """Hash of everything that determines the pixels of a shape's views."""
    payload = {
        "generator": GENERATOR_VERSION, "sketch": SKETCH_VERSION, "seed": int(seed),
        "style": resolve_style(style), "render": settings.fingerprint(),
        "viewpoints": [vp.to_dict() for vp in viewpoints], "domains": list(DOMAINS),
    }
    text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha1(text.encode()).hexdigest()[:16]


def _view_paths(out: Path, sid: str, viewpoints) -> list[Path]:
    return [out / d / sid / f"{vp.name}.png" for d in DOMAINS for vp in viewpoints]


def _stamp_path(out: Path, sid: str) -> Path:
    return out / STAMP_DIR / f"{sid}.json"


def _is_done(out: Path, sid: str, viewpoints, fingerprint: str) -> bool:
    try:
        stamp = json.loads(_stamp_path(out, sid).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if not isinstance(stamp, dict) or stamp.get("fingerprint") != fingerprint:
        return False
    return all(p.is_file() for p in _view_paths(out, sid, viewpoints))


def _atomic_save(img, path: Path) -> None:
    # A hidden temporary name, not fsio's visible sibling: a crash's leftover must not look like a view.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format="PNG", optimize=False)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _atomic_write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text, fsync=False)


def render_demo_shape(category: str, index: int, seed: int, style, settings, viewpoints) -> dict:
    """All views of one synthetic shape in memory: {(domain, viewpoint name): PIL image}."""
    from .. import render

    spec = generate_shape_spec(category, index, seed)
    mesh = render.prepare(spec.mesh, settings)  # one BVH and edge table for every view and domain
    views = {}
    for vp in viewpoints:
        strokes = render.visible_strokes(mesh, vp, settings)
        npr = render.draw_strokes(strokes, settings)
        views[("npr", vp.name)] = npr
        views[("sketch", vp.name)] = sketchify(strokes, settings.size, style, sketch_seed(seed, spec.shape_id, vp.name),
                                               line_width=settings.line_width, mode=npr.mode)
    views.update(render.render_views(mesh, viewpoints, settings, domains=("rgb",)))
    return views


def _make_one(job) -> tuple[str, str, int]:
    """Worker: render and write one shape, then its stamp. Returns (shape id, category, files)."""
    out, category, index, seed, style, settings, vps, fingerprint = job
    out = Path(out)
    viewpoints = [Viewpoint.from_dict(v) for v in vps]
    sid = shape_id(category, index)
    views = render_demo_shape(category, index, seed, style, settings, viewpoints)
    n = 0
    for domain in DOMAINS:
        for vp in viewpoints:
            _atomic_save(views[(domain, vp.name)], out / domain / sid / f"{vp.name}.png")
            n += 1
    stamp = {"shape_id": sid, "category": category, "index": index, "fingerprint": fingerprint,
             "seed": seed, "style": resolve_style(style), "render": settings.fingerprint()}
    _atomic_write_text(_stamp_path(out, sid), json.dumps(stamp, indent=1) + "\n")
    return sid, category, n


def _worker_init() -> None:
    # one process per core: keep numeric libraries from oversubscribing the machine
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")


def make_demo_dataset(out_dir, counts: dict | None = None, seed: int = 0, style="medium", size: int = 224,
                      viewpoints=DEFAULT_VIEWPOINTS, workers: int | None = None, progress: bool = True,
                      settings=None, force: bool = False) -> dict:
    """Generate (or complete) the synthetic demo dataset in `out_dir`; returns a summary dict.

    counts: {category: number of shapes}, default DEFAULT_COUNTS (chair 100, table/lamp/airplane 20);
      DEMO_SMALL_COUNTS makes a 10-shape set in seconds.
    seed: dataset seed (shapes and sketches derive from it). style: sketch style name or level.
    size: image size in pixels (overrides settings.size). viewpoints: list of Viewpoint.
    workers: processes (default: one per available core; 1 = inline, no pool).
    settings: a retrieval.render.RenderSettings (default RenderSettings(size=size)).
    force: regenerate every shape even when its stamp says it is complete.
    """
    t0 = time.perf_counter()
    out = Path(out_dir)
    counts = dict(DEFAULT_COUNTS if counts is None else counts)
    for cat, n in counts.items():
        if cat not in CATEGORIES:
            raise ConfigError(f"unknown shape category {cat!r}; choose from {', '.join(CATEGORIES)}")
        if int(n) < 0:
            raise ConfigError(f"count for {cat!r} must be >= 0, got {n}")
    level = resolve_style(style)
    viewpoints = list(viewpoints)
    if not viewpoints:
        raise ConfigError("no viewpoints given")
    names = [vp.name for vp in viewpoints]
    if len(set(names)) != len(names):
        raise ConfigError(f"duplicate viewpoint names: {names}")
    settings = _settings(settings, size)
    fingerprint = demo_fingerprint(seed, level, settings, viewpoints)
    out.mkdir(parents=True, exist_ok=True)

    shapes = [(cat, i) for cat, n in counts.items() for i in range(int(n))]
    categories = {shape_id(cat, i): cat for cat, i in shapes}
    todo = [(c, i) for c, i in shapes if force or not _is_done(out, shape_id(c, i), viewpoints, fingerprint)]
    vps = [vp.to_dict() for vp in viewpoints]
    jobs = [(str(out), c, i, int(seed), level, settings, vps, fingerprint) for c, i in todo]
    if workers is None:
        workers = available_cores()
    workers = max(1, min(int(workers), len(jobs) or 1))

    bar = None
    if progress and jobs:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(jobs), desc="demo shapes", unit="shape")
    written = 0

    def done(job, result):
        nonlocal written
        written += result[2]
        if bar is not None:
            bar.update(1)

    def failed(job, e):
        if workers == 1:
            raise e
        raise RuntimeError(f"demo shape {shape_id(job[1], job[2])} failed: {e}") from e

    try:
        run_jobs(_make_one, jobs, workers, done, on_fail=failed, initializer=_worker_init, start_method="spawn")
    finally:
        if bar is not None:
            bar.close()

    count_text = ", ".join(f"{c}={int(n)}" for c, n in counts.items())
    source = (f"cvret synthetic demo data (retrieval.synth: {GENERATOR_VERSION}, {SKETCH_VERSION}); "
              f"seed={int(seed)}, sketch style={_style_label(level)}, counts: {count_text}")
    extra = {"synth": {"generator": GENERATOR_VERSION, "sketch": SKETCH_VERSION, "seed": int(seed),
                       "style": level, "counts": {c: int(n) for c, n in counts.items()},
                       "domains": list(DOMAINS), "render_settings": settings.to_dict(),
                       "fingerprint": fingerprint}}
    json_path = write_dataset_json(out, viewpoints, categories=categories, source=source, extra=extra)
    return {
        "root": str(out), "dataset_json": str(json_path), "shapes": len(shapes), "generated": len(todo),
        "skipped": len(shapes) - len(todo), "files_written": written, "domains": list(DOMAINS),
        "viewpoints": names, "counts": {c: int(n) for c, n in counts.items()}, "seed": int(seed),
        "style": level, "fingerprint": fingerprint, "workers": workers,
        "seconds": round(time.perf_counter() - t0, 2),
    }
