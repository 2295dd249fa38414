"""The seed paper's scale experiment as a check of query normalisation: acc@1/acc@5 of sketch→npr retrieval
when the sketches are drawn smaller, off-centre or on a wide canvas, with and without normalisation.

    python scripts/scale_study.py                              # /work/main/demo_out, else a small demo in /tmp
    python scripts/scale_study.py --demo demo_out --limit 120  # a subset: every 4th sketch
    python scripts/scale_study.py --data DATA --index IDX      # any dataset with sketch and npr views, and its index

Each sketch view (`DATA/sketch/<shape>/<viewpoint>.png`) is transformed, then queried through the
engine's own preparation (`QueryEngine.prepare`: framing on, or `normalize=False` for today's raw
path) against every npr view of the index at every viewpoint; a query is right at k when its shape
is among the k best shapes (each shape at its best view). Settings: the sketch raw (`--no-normalize`);
framed (the default: left as drawn when its extent and centre are within the gallery's spread, else
framed to the gallery's medians); always framed (the spread ignored); and sketch and gallery framed
(the npr views indexed again with `cvret index --normalize` into a temporary folder, same weights).
Conditions, on the sketch's own canvas:
- original;
- 50 % / 70 %: the drawing shrunk about the canvas centre, on white;
- 70 % off-centre: the 70 % drawing moved a quarter of the side right and down (nothing is cut);
- 2:1 canvas: the drawing centred on a white canvas twice as wide as it is high.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

DEFAULT_DEMO = Path("/work/main/demo_out")
CONDITIONS = ("original", "scale 50%", "scale 70%", "70% off-centre 1/4", "2:1 canvas")


def transform(im: Image.Image, condition: str) -> Image.Image:
    """One sketch (RGB on white) under one condition."""
    im = im.convert("RGB")
    w, h = im.size
    if condition == "original":
        return im
    if condition == "2:1 canvas":
        canvas = Image.new("RGB", (2 * h, h), "white")
        canvas.paste(im, ((2 * h - w) // 2, 0))
        return canvas
    scale = 0.5 if condition == "scale 50%" else 0.7
    small = im.resize((max(1, round(w * scale)), max(1, round(h * scale))), Image.LANCZOS)
    shift = (w // 4, h // 4) if "off-centre" in condition else (0, 0)
    canvas = Image.new("RGB", (w, h), "white")
    canvas.paste(small, ((w - small.width) // 2 + shift[0], (h - small.height) // 2 + shift[1]))
    return canvas


def sketch_queries(data: Path, shapes: set[str], limit: int | None) -> list[tuple[str, str, Path]]:
    """(shape, viewpoint, path) of the dataset's sketch views whose shape the index holds; `limit`: evenly spread."""
    found = sorted((p.parent.name, p.stem, p) for p in (data / "sketch").glob("*/*.png") if p.parent.name in shapes)
    if limit and len(found) > limit:
        found = [found[i] for i in np.linspace(0, len(found) - 1, limit).round().astype(int)]
    return found


def ranks(engine, feats: np.ndarray, domain: str = "npr") -> list[list[str]]:
    """For each query feature, the index's shapes best first (each at its best viewpoint)."""
    index = engine.index
    best: dict[str, np.ndarray] = {}
    for vp in index.viewpoint_names(domain):
        d, rows = index.distances_to_all(domain, vp, feats)
        for j, r in enumerate(rows):
            s = index.record(r).shape
            best[s] = d[:, j] if s not in best else np.minimum(best[s], d[:, j])
    names = sorted(best)
    mat = np.stack([best[s] for s in names], axis=1)
    return [[names[j] for j in np.argsort(row, kind="stable")[:5]] for row in mat]


SETTINGS = {"raw": "sketch raw", "query": "sketch framed", "always": "sketch always framed",
            "both": "sketch and gallery framed"}


def study(data: Path, index_dir: Path, limit: int | None = None, batch: int = 16, log=print,
          work: Path | None = None) -> dict:
    from retrieval.calibration import measure_extents
    from retrieval.dataset import discover
    from retrieval.encoder import EncoderSpec
    from retrieval.indexer import build_index
    from retrieval.search import open_engine

    engines = {"raw": open_engine(index_dir, gpu="never", normalize=False),
               "query": open_engine(index_dir, gpu="never", normalize=True)}
    cal = engines["query"].calibration
    if not cal.doc.get("extents"):  # an index built before calibration: measure the gallery the same way
        views = [("npr", p.parent.name, p.stem, str(p)) for p in (data / "npr").glob("*/*.png")]
        cal.doc["extents"] = measure_extents(views)
        log(f"note: {index_dir} stores no gallery extents; measured from {data / 'npr'}")
    engines["always"] = open_engine(index_dir, gpu="never", normalize=True)
    engines["always"].calibration.doc["extents"] = {
        d: {vp: {k: v for k, v in e.items() if k not in ("extent_range", "centre_radius")} for vp, e in vps.items()}
        for d, vps in cal.doc["extents"].items()}
    encoder = engines["query"].encoder  # one model for every setting
    engines["raw"]._encoder = engines["always"]._encoder = encoder
    tmp = tempfile.TemporaryDirectory(prefix="cvret-framed-", dir=work)
    framed = Path(tmp.name) / "npr-framed"
    fp = engines["query"].index.fingerprint
    build_index(discover(data, domains=["npr"]), framed, EncoderSpec.from_fingerprint(fp), domains=["npr"],
                normalize=True, progress=False, encoder=encoder, feature_dtype=fp.get("feature_dtype", "float16"))
    engines["both"] = open_engine(framed, gpu="never", normalize=True)
    engines["both"]._encoder = encoder
    queries = sketch_queries(data, set(engines["query"].index.shapes), limit)
    if not queries:
        raise SystemExit(f"error: {data / 'sketch'}: no sketch views of the index's shapes")
    rows = []
    for condition in CONDITIONS:
        for setting, eng in engines.items():
            hit1 = hit5 = 0
            for s in range(0, len(queries), batch):
                chunk = queries[s:s + batch]
                ims = [eng.prepare(transform(Image.open(p), condition), "npr", None, name=str(p))
                       for _, _, p in chunk]
                for (shape, _, _), top in zip(chunk, ranks(eng, eng.embed(ims))):
                    hit1 += top[0] == shape
                    hit5 += shape in top
            row = {"condition": condition, "setting": setting, "queries": len(queries),
                   "acc@1": round(hit1 / len(queries), 3), "acc@5": round(hit5 / len(queries), 3)}
            rows.append(row)
            log(f"{condition:20s} {SETTINGS[setting]:26s} acc@1 {row['acc@1']:.3f}  acc@5 {row['acc@5']:.3f}  "
                f"({len(queries)} queries)")
    extents = {vp: e["extent"] for vp, e in cal.doc["extents"].get("npr", {}).items()}
    for eng in engines.values():
        eng.index.close()
    tmp.cleanup()
    return {"data": str(data), "index": str(index_dir), "weights": engines["query"].index.fingerprint.get("weights"),
            "npr_extents": extents, "date": time.strftime("%Y-%m-%d"), "rows": rows}


def markdown(result: dict) -> str:
    by = {(r["condition"], r["setting"]): r for r in result["rows"]}
    head = " | ".join(f"{m} {SETTINGS[s]}" for m in ("acc@1", "acc@5") for s in SETTINGS)
    lines = [f"| sketch | {head} |", "| --- |" + " --- |" * 2 * len(SETTINGS)]
    for c in CONDITIONS:
        cells = [f"{by[c, s][m]:.3f}" for m in ("acc@1", "acc@5") for s in SETTINGS if (c, s) in by]
        if cells:
            lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--demo", type=Path, default=None, help="a `cvret demo` folder (data/ and index/)")
    ap.add_argument("--data", type=Path, default=None, help="dataset folder (instead of --demo)")
    ap.add_argument("--index", type=Path, default=None, help="index folder (instead of --demo)")
    ap.add_argument("--limit", type=int, default=None, help="at most this many sketch queries, evenly spread")
    ap.add_argument("--json", type=Path, default=None, help="also write the result here")
    args = ap.parse_args(argv)
    tmp = None
    if args.data is None or args.index is None:
        demo = args.demo or (DEFAULT_DEMO if (DEFAULT_DEMO / "index").is_dir() else None)
        if demo is None:
            from retrieval.demo import run_demo

            tmp = tempfile.TemporaryDirectory(prefix="cvret-scale-")
            demo = Path(tmp.name) / "demo"
            print(f"no demo given: building a small one in {demo}", file=sys.stderr)
            run_demo(demo, small=True, weights="untrained", progress=False)
        args.data, args.index = demo / "data", demo / "index"
    result = study(args.data, args.index, args.limit)
    print(markdown(result))
    print(f"weights {result['weights']}; gallery npr extents {result['npr_extents']}; {result['date']}")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
