"""How much the NPR line tone changes Study 1 and joint retrieval on demo data: the same demo
shapes and sketches rendered with --line-tone flat and freestyle, indexed and evaluated alike.

    python scripts/tone_study.py --out /tmp/tone --per-category 10 --weights untrained --seed 0
(sketch and rgb views do not depend on the tone; only the npr domain changes.)
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from retrieval.dataset import discover
from retrieval.encoder import EncoderSpec
from retrieval.index import ShapeIndex
from retrieval.indexer import build_index
from retrieval.render import RenderSettings
from retrieval.studies import evaluate, headline_table
from retrieval.synth import CATEGORIES, make_demo_dataset


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--per-category", type=int, default=10)
    ap.add_argument("--weights", default="untrained")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    counts = {c: args.per_category for c in CATEGORIES}
    out = {}
    for tone in ("flat", "freestyle"):
        root = args.out / tone
        make_demo_dataset(root / "data", counts=counts, seed=args.seed, settings=RenderSettings(line_tone=tone),
                          workers=1, progress=False)
        build_index(discover(root / "data"), root / "index", EncoderSpec(weights=args.weights, seed=args.seed),
                    progress=False)
        with ShapeIndex(root / "index", gpu="never") as si:
            n = len(si.shapes)
            rep = evaluate([si], root / "report", objects=min(10, n), study2_objects=min(100, n), seed=args.seed,
                           progress=False)
        print(f"== {tone}\n{headline_table(rep)}")
        out[tone] = [{"pair": p["key"], **{k: p["study1"][k] for k in ("acc@1", "acc@5", "mrr")},
                      "joint_shape_acc@1": p["joint"].get("shape_acc@1"),
                      "joint_viewpoint_acc": p["joint"].get("viewpoint_acc"),
                      "view_acc": p["study2"]["view_acc"]["overall"]}
                     for p in rep["sources"][0]["pairs"]]
    print(json.dumps(out, indent=1, default=str))


if __name__ == "__main__":
    main()
