"""Rendering many meshes into a cvret dataset folder: parallel, resumable, failure-tolerant.

Layout: `<out>/<domain>/<shape_id>/<viewpoint>.png` plus `dataset.json`, exactly what
`retrieval.dataset.discover` reads. Each shape is one unit of work: loaded, prepared (BVH and
feature edges built once) and rendered for every viewpoint and domain; a bad file becomes a
line in `RenderReport.failed` instead of stopping the run. Every finished shape leaves
`<out>/.render/<shape_id>.json` (settings fingerprint, source signature), so a re-run skips
shapes whose outputs exist with the same settings and source, and an interrupted run resumes.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

import trimesh
from tqdm import tqdm

from ..dataset import DATASET_JSON, write_dataset_json
from ..errors import ConfigError, CvretError
from ..fsio import atomic_write_text
from ..pool import available_cores, run_jobs
from ..viewpoints import DEFAULT_VIEWPOINTS, Viewpoint
from .camera import RENDERER_VERSION, RenderSettings
from .mesh import MESH_EXTENSIONS, PreparedMesh, load_mesh, mesh_signature, prepare
from .npr import draw_strokes, visible_strokes
from .orientation import LEGACY_ORIENTATION
from .rgb import cast_view, shade

DOMAINS = ("npr", "rgb")
RECORD_DIR = ".render"


# ----------------------------------------------------------------------------------------- views

def render_views(mesh, viewpoints=DEFAULT_VIEWPOINTS, settings: RenderSettings = RenderSettings(),
                 domains=DOMAINS) -> dict:
    """{(domain, viewpoint name): image} for every pair; the mesh is normalised and its BVH and
    edges built once, and each viewpoint is ray cast once for all domains."""
    domains = _check_domains(domains)
    pm = prepare(mesh, settings)
    out = {}
    for vp in viewpoints:
        if "npr" in domains:
            out[("npr", vp.name)] = draw_strokes(visible_strokes(pm, vp, settings), settings)
        if "rgb" in domains:
            out[("rgb", vp.name)] = shade(pm, cast_view(pm, vp, settings), settings)
    return out


def _check_domains(domains) -> tuple:
    if isinstance(domains, str):
        domains = (domains,)
    domains = tuple(dict.fromkeys(domains))
    unknown = [d for d in domains if d not in DOMAINS]
    if unknown or not domains:
        raise ConfigError(f"unknown render domain(s) {unknown}; choose from {list(DOMAINS)}")
    return domains


# ---------------------------------------------------------------------------------------- report

@dataclass
class RenderReport:
    out_dir: Path
    rendered: list = field(default_factory=list)   # shape ids rendered in this run
    skipped: list = field(default_factory=list)    # shape ids already up to date
    failed: list = field(default_factory=list)     # (path, one-line message)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.failed

    def summary(self) -> str:
        lines = [f"{self.out_dir}: rendered {len(self.rendered)}, skipped {len(self.skipped)} (up to date), "
                 f"failed {len(self.failed)} in {self.seconds:.1f}s"]
        lines += [f"  failed: {msg}" for _, msg in self.failed]
        return "\n".join(lines)


# ------------------------------------------------------------------------------- shapes and files

def find_mesh_files(sources) -> list[tuple[Path, str]]:
    """(path, shape id) for a mesh file, a folder (searched recursively) or a list of either.

    Shape ids: the file stem for files given directly; for folders the path relative to the
    folder without extension, with trailing parts shared by every file dropped (ShapeNet's
    `<id>/models/model_normalized.obj` gives `<id>`) and '/' written as '__'. Clashing ids get
    the file extension, then a counter, appended.
    """
    if isinstance(sources, (str, os.PathLike)):
        sources = [sources]
    found: list[tuple[Path, list[str]]] = []
    for src in sources:
        src = Path(src)
        if src.is_dir():
            files = sorted(p for p in src.rglob("*")
                           if p.is_file() and p.suffix.lower().lstrip(".") in MESH_EXTENSIONS
                           and not any(part.startswith(".") for part in p.relative_to(src).parts))
            parts = [list(p.relative_to(src).with_suffix("").parts) for p in files]
            tail = _common_tail(parts)
            found += [(p, ps[:len(ps) - tail]) for p, ps in zip(files, parts)]
        else:  # a file, existing or not (a missing one is reported as a failure)
            found.append((src, [src.stem]))
    out, used = [], set()
    for path, parts in found:
        sid = "__".join(_safe(p) for p in parts) or _safe(path.stem)
        if sid in used:
            sid = f"{sid}__{_safe(path.suffix.lstrip('.'))}"
        base, i = sid, 2
        while sid in used:
            sid, i = f"{base}_{i}", i + 1
        used.add(sid)
        out.append((path, sid))
    return out


def _common_tail(parts: list[list[str]]) -> int:
    """Number of trailing path parts identical in every file (never all of a file's parts)."""
    if len(parts) < 2:
        return 0
    k = 0
    while all(len(p) > k + 1 for p in parts) and len({p[-1 - k] for p in parts}) == 1:
        k += 1
    return k


def _safe(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "shape"


def file_signature(path: Path) -> str:
    st = path.stat()
    return f"file:{st.st_size}:{st.st_mtime_ns}"


def views_fingerprint(settings: RenderSettings, viewpoints) -> str:
    """Settings fingerprint combined with the viewpoints (both decide the pixels)."""
    text = settings.fingerprint() + json.dumps([vp.to_dict() for vp in viewpoints], sort_keys=True)
    return hashlib.sha1(text.encode()).hexdigest()[:12]


def _recorded_render(out_dir) -> tuple[Path, dict | None]:
    """dataset.json's path and its `render` record (None when the file or the record is missing or unreadable)."""
    path = Path(out_dir) / DATASET_JSON
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return path, None
    return path, meta.get("render") if isinstance(meta, dict) else None


def check_orientation(out_dir, settings: RenderSettings) -> None:
    """Refuse to render into a dataset whose views were made under another orientation convention.

    Views of one dataset must agree on where az000 is; a folder rendered before conventions were
    recorded counts as front +Z, up +Y (what cvret did then)."""
    path, render = _recorded_render(out_dir)
    if not isinstance(render, dict):
        return
    old = render.get("orientation") or LEGACY_ORIENTATION
    new = settings.orientation()
    keys = ("front", "up", "azimuth_sign")
    if any(old.get(k) != new[k] for k in keys):
        def text(o):
            return f"front {o.get('front')}, up {o.get('up')}, azimuth sign {o.get('azimuth_sign'):+d}"
        raise ConfigError(f"{path}: this dataset was rendered with {text(old)}; this run asks for {text(new)} "
                          "(one dataset cannot mix conventions: render into another --out folder)")


def check_settings(out_dir, settings: RenderSettings) -> None:
    """Refuse to render into a dataset made with other settings (size, line width, colours...).

    Resuming re-renders only the shapes of this run, so a changed setting would leave views of two
    looks (e.g. 256 px beside 224 px) in one dataset. Settings a dataset.json does not record (older
    cvret) count as the defaults of that time; the orientation has its own message (check_orientation)."""
    check_orientation(out_dir, settings)
    path, render = _recorded_render(out_dir)
    old = render.get("settings") if isinstance(render, dict) else None
    if not isinstance(old, dict):
        return
    new = json.loads(json.dumps(settings.to_dict()))
    defaults = json.loads(json.dumps(RenderSettings().to_dict()))
    skip = {"front", "up", "azimuth_sign"}
    changed = [k for k in new if k not in skip and old.get(k, defaults[k]) != new[k]]
    if changed:
        what = ", ".join(f"{k} {old.get(k, defaults[k])!r} -> {new[k]!r}" for k in changed)
        raise ConfigError(f"{path}: this dataset was rendered with other settings ({what}); one dataset cannot mix "
                          "them: render into another --out folder, or give the same options")


def _record_path(out_dir: Path, shape_id: str) -> Path:
    return out_dir / RECORD_DIR / f"{shape_id}.json"


def _view_path(out_dir: Path, domain: str, shape_id: str, vp: Viewpoint) -> Path:
    return out_dir / domain / shape_id / f"{vp.name}.png"


def _todo_domains(out_dir: Path, shape_id: str, viewpoints, domains, fp: str, signature: str | None) -> list:
    """Domains of this shape that must be (re)rendered."""
    rec = {}
    try:
        rec = json.loads(_record_path(out_dir, shape_id).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    same_source = signature is None or rec.get("source_signature") == signature
    done = rec.get("domains", {}) if same_source and isinstance(rec.get("domains"), dict) else {}
    return [d for d in domains
            if done.get(d) != fp
            or not all(_view_path(out_dir, d, shape_id, vp).is_file() for vp in viewpoints)]


def _write_atomic_png(img, path: Path) -> None:
    # A hidden temporary name, not fsio's visible sibling: a crash's leftover must not look like a view.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        img.save(tmp, format="PNG")
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def _write_record(out_dir: Path, shape_id: str, source: str, signature: str, fp: str, domains, viewpoints,
                  settings: RenderSettings) -> None:
    path = _record_path(out_dir, shape_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    rec = {}
    try:
        rec = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    old = rec.get("domains", {}) if rec.get("source_signature") == signature else {}
    rec = {"shape": shape_id, "source": source, "source_signature": signature,
           "settings_fingerprint": settings.fingerprint(), "renderer_version": RENDERER_VERSION,
           "viewpoints": [vp.name for vp in viewpoints],
           "domains": {**{k: v for k, v in old.items() if k not in domains}, **{d: fp for d in domains}}}
    atomic_write_text(path, json.dumps(rec, indent=1, sort_keys=True) + "\n", fsync=False)


def _render_shape(mesh, shape_id: str, out_dir: Path, viewpoints, settings: RenderSettings, domains,
                  source: str, signature: str, fp: str) -> None:
    pm = PreparedMesh(mesh, settings)
    images = render_views(pm, viewpoints, settings, domains)
    for (domain, vp_name), img in images.items():
        _write_atomic_png(img, out_dir / domain / shape_id / f"{vp_name}.png")
    _write_record(out_dir, shape_id, source, signature, fp, domains, viewpoints, settings)


# ------------------------------------------------------------------------------------- one mesh

def render_mesh_to_dataset(mesh: trimesh.Trimesh, shape_id: str, out_dir, viewpoints=DEFAULT_VIEWPOINTS,
                           settings: RenderSettings = RenderSettings(), domains=DOMAINS, categories=None,
                           force: bool = False, write_json: bool = True) -> str:
    """Render an in-memory mesh into the cvret layout; 'rendered' or 'skipped' (up to date).

    Resumable like render_dataset: skipped when a record with the same settings, viewpoints and
    mesh content hash exists and every image is on disk. Raises MeshError for unrenderable meshes.
    """
    out_dir = Path(out_dir)
    domains = _check_domains(domains)
    viewpoints = list(viewpoints)
    check_settings(out_dir, settings)
    sid = _safe(str(shape_id))
    fp = views_fingerprint(settings, viewpoints)
    sig = "mesh:" + mesh_signature(mesh)
    todo = list(domains) if force else _todo_domains(out_dir, sid, viewpoints, domains, fp, sig)
    status = "skipped"
    if todo:
        _render_shape(mesh, sid, out_dir, viewpoints, settings, todo, f"<in-memory mesh {shape_id}>", sig, fp)
        status = "rendered"
    if write_json:
        write_dataset_json(out_dir, viewpoints, categories,
                           source=_source_note(["<in-memory meshes>"], settings),
                           extra=_render_meta(settings, domains, fp),
                           axis_convention=settings.orientation()["description"])
    return status


# --------------------------------------------------------------------------------------- dataset

CORES_PER_WORKER = 4


def default_workers() -> int:
    """Render processes when --workers is not given: one per 4 cores, at least 1, at most 4.

    One process is already multithreaded where rendering spends its time (Embree casts rays on
    every core; numpy's BLAS too), and each extra process pays its own start-up (a fresh
    interpreter importing trimesh and Embree) and competes for the same cores: on 2 cores two
    workers rendered slower than one (issue 12). More processes only help when cores are left
    over, hence one per CORES_PER_WORKER cores."""
    return max(1, min(4, available_cores() // CORES_PER_WORKER))


def _run_job(job: tuple):
    return _job(*job)


def _job(path: str, shape_id: str, out_dir: str, viewpoints, settings, domains, signature: str, fp: str):
    """Worker: one mesh file. Returns (shape_id, path, error message or None, seconds)."""
    t0 = time.perf_counter()
    try:
        mesh = load_mesh(path)
        _render_shape(mesh, shape_id, Path(out_dir), viewpoints, settings, domains, path, signature, fp)
        return shape_id, path, None, time.perf_counter() - t0
    except CvretError as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        return shape_id, path, msg if path in msg else f"{path}: {msg}", time.perf_counter() - t0
    except Exception as e:  # never lose the other shapes to one bad one
        first = (str(e).strip().splitlines() or [""])[0]
        msg = f"{path}: rendering failed ({type(e).__name__}: {first})"
        return shape_id, path, msg, time.perf_counter() - t0


def render_dataset(sources, out_dir, viewpoints=DEFAULT_VIEWPOINTS,
                   settings: RenderSettings = RenderSettings(), domains=DOMAINS, workers: int | None = None,
                   progress: bool = True, categories=None, force: bool = False, shape_files=None,
                   viewpoints_for: dict | None = None) -> RenderReport:
    """Render mesh files (a file, a folder searched recursively, or a list) into a cvret dataset.

    Parallel over meshes (`workers` processes, default `default_workers()`; 1 runs inline), resumable
    (shapes up to date are skipped unless `force`), and a mesh that fails is reported in
    `RenderReport.failed` with its path and reason while the others are rendered. Writes
    dataset.json with the viewpoints, categories, axis convention and render settings.
    `shape_files`: (path, shape id) pairs chosen by a preset instead of scanning `sources`;
    `viewpoints_for`: {shape id: [Viewpoint]} to render some shapes at their own viewpoints
    (a sketch's camera) instead of `viewpoints`.
    """
    t0 = time.perf_counter()
    out_dir = Path(out_dir)
    domains = _check_domains(domains)
    viewpoints = list(viewpoints)
    viewpoints_for = {str(k): list(v) for k, v in (viewpoints_for or {}).items()}
    check_settings(out_dir, settings)
    report = RenderReport(out_dir)
    files = [(Path(p), str(s)) for p, s in shape_files] if shape_files is not None else find_mesh_files(sources)
    all_vps = {}
    jobs = []
    for path, sid in files:
        vps = viewpoints_for.get(sid, viewpoints)
        all_vps.update({vp.name: vp for vp in vps})
        fp = views_fingerprint(settings, vps)
        try:
            sig = file_signature(path)
        except OSError as e:
            why = ("mesh file does not exist" if not path.exists()
                   else f"cannot read mesh file ({e.strerror or e})")
            report.failed.append((str(path), f"{path}: {why}"))
            continue
        todo = list(domains) if force else _todo_domains(out_dir, sid, vps, domains, fp, sig)
        if todo:
            jobs.append((str(path), sid, str(out_dir), vps, settings, tuple(todo), sig, fp))
        else:
            report.skipped.append(sid)
    out_dir.mkdir(parents=True, exist_ok=True)
    if workers is None:
        workers = default_workers()
    workers = max(1, min(int(workers), len(jobs) or 1))
    bar = tqdm(total=len(jobs), desc="render", unit="mesh", disable=not progress or not jobs)

    def collect(result):
        sid, path, err, _ = result
        if err is None:
            report.rendered.append(sid)
        else:
            report.failed.append((path, err))
        bar.update(1)

    def worker_failed(job, e):  # a worker died (e.g. killed for memory): report, keep going
        path, sid = job[0], job[1]
        collect((sid, path, f"{path}: worker process failed ({type(e).__name__}); re-run to retry this mesh", 0.0))

    try:
        run_jobs(_run_job, jobs, workers, lambda job, result: collect(result), on_fail=worker_failed)
    finally:
        bar.close()
    order = {sid: i for i, (_, sid) in enumerate(files)}
    report.rendered.sort(key=order.get)
    report.failed.sort(key=lambda f: f[0])
    srcs = [str(s) for s in ([sources] if isinstance(sources, (str, os.PathLike)) else sources)]
    declared = (list(all_vps.values()) or viewpoints) if viewpoints_for else viewpoints
    write_dataset_json(out_dir, declared, categories, source=_source_note(srcs, settings),
                       extra=_render_meta(settings, domains, views_fingerprint(settings, viewpoints),
                                          failed=report.failed),
                       axis_convention=settings.orientation()["description"])
    report.seconds = time.perf_counter() - t0
    return report


def _source_note(sources: list[str], settings: RenderSettings) -> str:
    src = ", ".join(sources[:3]) + (f" and {len(sources) - 3} more" if len(sources) > 3 else "")
    return (f"rendered by cvret (Embree ray casting; Freestyle-like NPR lines: silhouette, border, crease "
            f"{settings.crease_angle} deg, {settings.line_tone} line tone; Lambert RGB) from {src}; "
            f"{settings.size}px, mesh bbox centred and "
            f"scaled to half-diagonal {settings.half_diagonal}, "
            f"camera at distance {settings.camera_distance}, "
            f"{settings.focal_mm}mm lens on {settings.sensor_mm}mm sensor; "
            f"axis: {settings.orientation()['description']}")


def _render_meta(settings: RenderSettings, domains, fp: str, failed=None) -> dict:
    meta = {"settings": settings.to_dict(), "settings_fingerprint": settings.fingerprint(),
            "views_fingerprint": fp, "renderer_version": RENDERER_VERSION, "domains": list(domains),
            "orientation": settings.orientation()}
    if failed is not None:
        meta["failed"] = [{"path": p, "error": m} for p, m in failed]
    return {"render": meta}
