"""The paper's zero-shot protocol on the embedded demo data: fine-tune on chairs, evaluate on the rest.

    python scripts/finetune_demo.py --out ft_demo                 # small configuration (minutes on 2 cores)
    python scripts/finetune_demo.py --out ft_demo --chairs 100 --others 20 --epochs 5

1. generates demo shapes (chairs, tables, lamps, airplanes; NPR, RGB and sketch views);
2. `finetune` on chairs only: a seeded part of the chairs trains, the rest (`--val-fraction`) is
   held out with every table, lamp and airplane;
3. indexes the held-out shapes only (held-out chairs + the other categories) with the base
   weights and with the fine-tuned ones, and runs `cvret eval` on both, chairs marked as trained;
4. prints the per-category table (acc@1 / acc@5, sketch→npr and sketch→rgb, before and after)
   and the training time, and writes everything under --out.

The evaluation sketches are the demo's own `sketch` views of held-out shapes; training draws
fresh synthetic sketches of the training chairs only. Without the openai checkpoint in the cache,
the base is untrained RN101 weights (seed 0): the numbers then say whether the training
machinery moves retrieval on this data, not what CLIP or the paper would reach.
"""
from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=Path("ft_demo"))
    ap.add_argument("--chairs", type=int, default=20)
    ap.add_argument("--others", type=int, default=8, help="tables, lamps and airplanes each")
    ap.add_argument("--base", default="untrained", help="openai, untrained (seed --weights-seed) or a path")
    ap.add_argument("--weights-seed", type=int, default=0)
    ap.add_argument("--val-fraction", type=float, default=0.4, help="chairs held out from training")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--batch-size", type=int, default=6)
    ap.add_argument("--lr", type=float, default=1e-4)
    ap.add_argument("--positives", default="npr,rgb")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--image-size", type=int, default=224, help="smaller only for a quick smoke run")
    args = ap.parse_args(argv)

    from retrieval.dataset import Dataset, discover
    from retrieval.encoder import EncoderSpec
    from retrieval.finetune import FinetuneOptions, finetune
    from retrieval.index import ShapeIndex
    from retrieval.indexer import build_index
    from retrieval.studies import evaluate
    from retrieval.synth import make_demo_dataset

    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    t = time.perf_counter()
    counts = {"chair": args.chairs, "table": args.others, "lamp": args.others, "airplane": args.others}
    make_demo_dataset(out / "data", counts=counts, seed=0, progress=False)
    t_data = time.perf_counter() - t
    ds = discover(out / "data")

    opts = FinetuneOptions(base=args.base, weights_seed=args.weights_seed, seed=0, train_categories=("chair",),
                           val_fraction=args.val_fraction, positives=tuple(args.positives.split(",")),
                           epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, device=args.device,
                           image_size=args.image_size)
    weights = out / "ft_chair.pt"
    t = time.perf_counter()
    res = finetune(ds, weights, opts, resume=True, progress=True)
    t_train = time.perf_counter() - t
    ft = json.loads(Path(res.report).read_text())
    held = set(ft["split"]["val"]) | set(ft["split"]["held_out"])
    assert not held & set(ft["split"]["train"])
    eval_ds = Dataset(ds.root, ds.viewpoints, [v for v in ds.views if v.shape in held],
                      {s: c for s, c in ds.categories.items() if s in held}, [], ds.source)

    t = time.perf_counter()
    size = args.image_size
    specs = {"base": EncoderSpec(weights=args.base, seed=args.weights_seed, image_size=size),
             "finetuned": EncoderSpec(weights=str(weights), image_size=size)}
    for name, spec in specs.items():
        build_index(eval_ds, out / "indexes" / name, spec, progress=False)
    t_index = time.perf_counter() - t
    sources = [ShapeIndex(out / "indexes" / n, gpu="never") for n in specs]
    try:
        report = evaluate(sources, out / "report", pairs=[("sketch", "npr"), ("sketch", "rgb")], progress=False,
                          objects=min(10, len(held)), trained_on=["chair"])
    finally:
        for s in sources:
            s.close()

    rows = report["per_category_comparison"]
    lines = [f"{'category':<10} {'pair':<11} {'n':>3}  {'base acc@1/acc@5':>17}  {'fine-tuned acc@1/acc@5':>23}"]
    for r in rows:
        cat = r["category"] + (" *" if r["trained"] else "")
        b, f = r["base"], r["finetuned"]
        lines.append(f"{cat:<10} {r['pair']:<11} {r['n']:>3}  {b['acc@1']:>8.3f} / {b['acc@5']:.3f}  "
                     f"{f['acc@1']:>14.3f} / {f['acc@5']:.3f}")
    summary = {
        "base": ft["base"], "options": ft["options"], "split_sizes": {k: len(v) for k, v in ft["split"].items()
                                                                      if isinstance(v, list)},
        "epochs": ft["epochs"], "seconds": {"data": round(t_data, 1), "train": round(t_train, 1),
                                            "index_both": round(t_index, 1)},
        "loadavg": open("/proc/loadavg").read().split()[:3] if os.path.exists("/proc/loadavg") else None,
        "per_category": rows,
    }
    (out / "finetune_demo.json").write_text(json.dumps(summary, indent=2) + "\n")
    print("\n".join(lines))
    print("* trained category (its rows are held-out chairs); other categories are zero-shot")
    print(f"training {t_train:.0f} s ({len(ft['epochs']) - 1} epochs, {ft['training_items']} items/epoch); "
          f"data {t_data:.0f} s; indexing both {t_index:.0f} s; base weights {ft['base']['identity']}")
    if ft["base"]["identity"].startswith("untrained"):
        print("NOTE: untrained starting weights: these are not CLIP's or the paper's numbers.")


if __name__ == "__main__":
    main()
