"""Measure the NPR line tone on demo shapes: mean ink grey of `flat` vs `freestyle`, and that both
tones draw the same lines (chamfer and precision/recall of the ink pixels).

    python scripts/line_tone.py --per-category 5          # 20 shapes x 3 viewpoints
"""
from __future__ import annotations

import argparse
import json

import numpy as np
from scipy import ndimage

from retrieval.render import RenderSettings, render_views
from retrieval.render.npr import mean_ink_grey
from retrieval.synth import CATEGORIES, generate_shape
from retrieval.viewpoints import DEFAULT_VIEWPOINTS


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-category", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    greys = {"flat": [], "freestyle": []}
    chamfers, prec, rec = [], [], []
    for cat in CATEGORIES:
        for i in range(args.per_category):
            mesh = generate_shape(cat, i, args.seed)
            imgs = {t: render_views(mesh, DEFAULT_VIEWPOINTS, RenderSettings(line_tone=t), domains="npr")
                    for t in greys}
            for key in imgs["flat"]:
                a = {t: np.asarray(imgs[t][key]) for t in greys}
                for t in greys:
                    greys[t].append(a[t][a[t] < 255])
                ma, mb = a["flat"] < 255, a["freestyle"] < 255
                da, db = ndimage.distance_transform_edt(~ma), ndimage.distance_transform_edt(~mb)
                chamfers.append((db[ma].mean() + da[mb].mean()) / 2)
                prec.append(float((da[mb] <= 1.5).mean()))
                rec.append(float((db[ma] <= 1.5).mean()))
    out = {"views": len(chamfers),
           "mean_ink_grey": {t: round(float(np.concatenate(v).mean()), 1) for t, v in greys.items()},
           "ink_pixels_below_128": {t: round(float((np.concatenate(v) < 128).mean()), 3) for t, v in greys.items()},
           "darkness_ratio_flat_over_freestyle": round(float(
               (255 - np.concatenate(greys["flat"])).sum() / (255 - np.concatenate(greys["freestyle"])).sum()), 2),
           "chamfer_px": round(float(np.mean(chamfers)), 3),
           "precision_1.5px": round(float(np.mean(prec)), 3), "recall_1.5px": round(float(np.mean(rec)), 3)}
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
