"""What the benchmark sections share: options, the demo data, encoders and indexes built once per run."""
from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path

import numpy as np

import bench_lib as bl

REPO = Path(__file__).resolve().parents[2]
DEMO_COUNTS = {"chair": 12, "table": 4, "lamp": 4, "airplane": 4}
WEIGHTS_ID = "untrained:seed=0"
WEIGHTS_NOTE = ("random weights (untrained:seed=0; real weights cannot be downloaded here): speed figures do not "
                "depend on the weights, accuracy-agreement figures (bf16 rankings, compressed recall) do")


class Ctx:
    """Options, the demo data, and the encoders and indexes that earlier sections built (reused by later ones)."""

    def __init__(self, args, start_load: float | None = None):
        self.args = args
        self.quick = args.quick
        self.start_load = start_load
        self.tmp = Path(tempfile.mkdtemp(prefix="cvret_bench_"))
        self.data: Path | None = None
        self.indexes: dict[str, Path] = {}   # precision -> demo index folder
        self.encoders: dict = {}

    def log(self, msg: str):
        print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)

    def watch(self) -> bl.Watch:
        """Start recording the load around one measurement (see bench_lib.Watch)."""
        return bl.Watch(self.start_load)

    def close(self):
        self.encoders.clear()
        shutil.rmtree(self.tmp, ignore_errors=True)


def ensure_data(ctx: Ctx) -> Path:
    """--data, or the benchmark's demo data (generated once into --cache)."""
    if ctx.data is not None:
        return ctx.data
    if ctx.args.data:
        ctx.data = Path(ctx.args.data)
    else:
        ctx.data = generated_demo_data(ctx, "cvret_bench_data", DEMO_COUNTS)
    return ctx.data


def generated_demo_data(ctx: Ctx, name: str, counts: dict | None) -> Path:
    """Demo data under --cache/name (`counts=None`: the full demo's 160 shapes); complete shapes are kept."""
    from retrieval.synth import make_demo_dataset

    out = Path(ctx.args.cache) / name
    t = time.perf_counter()
    summ = make_demo_dataset(out, counts=counts, workers=2, progress=False)
    ctx.log(f"demo data in {out}: {summ['shapes']} shapes, {summ['generated']} generated "
            f"({time.perf_counter() - t:.1f} s)")
    return out


def subset_dataset(ds, n_shapes: int):
    """The views of `n_shapes` shapes spread over the categories (all domains and viewpoints)."""
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


def link_subset(src: Path, dst: Path, shapes: list[str], domains: list[str] | None = None):
    """A dataset folder holding only `shapes` (and `domains`), as hard links (copies across file systems)."""
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    if (src / "dataset.json").exists():
        shutil.copy2(src / "dataset.json", dst / "dataset.json")
    for dom in sorted(p for p in src.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if domains is not None and dom.name not in domains:
            continue
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


def get_encoder(ctx: Ctx, precision: str):
    """One LayerEncoder per precision for the whole run (untrained seed-0 weights, CPU)."""
    from retrieval.encoder import EncoderSpec, LayerEncoder

    if precision not in ctx.encoders:
        t = time.perf_counter()
        ctx.encoders[precision] = LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision=precision)
        ctx.encoders[precision]._load_s = time.perf_counter() - t
    return ctx.encoders[precision]


def demo_index(ctx: Ctx, precision: str = "bf16") -> Path:
    """An index of the demo data at `precision` (built by the encode section, or here)."""
    if precision in ctx.indexes:
        return ctx.indexes[precision]
    from retrieval.dataset import discover
    from retrieval.encoder import EncoderSpec
    from retrieval.indexer import build_index

    out = ctx.tmp / f"demo_index_{precision}"
    ctx.log(f"building the demo index at {precision}")
    build_index(discover(ensure_data(ctx)), out, EncoderSpec("untrained", seed=0), device="cpu",
                precision=precision, progress=False, encoder=get_encoder(ctx, precision))
    ctx.indexes[precision] = out
    return out


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


def cvret_command() -> list[str]:
    """The `cvret` console script of this Python environment (the code importable here), as an argv prefix."""
    import sys

    exe = Path(sys.executable).parent / "cvret"
    if exe.is_file():
        return [str(exe)]
    return [sys.executable, "-c", "import sys; from retrieval.cli import main; sys.argv[0] = 'cvret'; main()"]
