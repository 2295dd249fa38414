"""SHREC category metrics on a case computed by hand, the query-gallery pass against brute force,
and `cvret eval --relevance category` through the real CLI."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.shrec import METRICS, pr_curve, query_gallery_distances, query_metrics, ranked_relevance, summarize

from .conftest import run_cli

GALLERY = ["a", "b", "a", "b", "b", "c"]
DIST = np.array([[0.1, 0.2, 0.3, 0.4, 0.5, 0.6],     # query a: ranked a b a b b c
                 [0.5, 0.4, 0.3, 0.2, 0.1, 0.05],    # query b: ranked c b b a b a
                 [0.2, 0.2, 0.1, 0.3, 0.3, 0.3],     # query a: ranked a a(tie, gallery order) b b b c
                 [0.1, 0.1, 0.1, 0.1, 0.1, 0.1]])    # query d: nothing relevant
QUERIES = ["a", "b", "a", "d"]
L3, L5 = np.log2(3), np.log2(5)
HAND = {  # per query, worked out on paper (see the comments above)
    "nn": [1, 0, 1],
    "first_tier": [1 / 2, 2 / 3, 1],
    "second_tier": [1, 1, 1],
    "e_measure": [0.5, 2 / 3, 0.5],                   # top 32 = all 6: P = hits/6, R = 1
    "dcg": [(1 + 1 / L3) / 2, (1 + 1 / L3 + 1 / L5) / (2 + 1 / L3), 1.0],
    "map": [(1 + 2 / 3) / 2, (1 / 2 + 2 / 3 + 3 / 5) / 3, 1.0],
}


def test_metrics_by_hand():
    rel, n_rel = ranked_relevance(DIST, QUERIES, GALLERY)
    assert n_rel.tolist() == [2, 3, 2, 0]
    assert rel[1].tolist() == [False, True, True, False, True, False]
    assert rel[2].tolist() == [True, True, False, False, False, False]
    m = query_metrics(rel, n_rel)
    for k in METRICS:
        assert np.allclose(m[k][:3], HAND[k]), k
        assert np.isnan(m[k][3]), k
    s = summarize(m, QUERIES, pr_curve(rel, n_rel))
    assert s["n_queries"] == 3 and s["n_classes"] == 2 and set(s["per_class"]) == {"a", "b"}
    for k in METRICS:
        h = HAND[k]
        assert s["micro"][k] == pytest.approx(np.mean(h)), k
        assert s["macro"][k] == pytest.approx(((h[0] + h[2]) / 2 + h[1]) / 2), k
    # query 1: recall 0.5 at rank 1 (precision 1), recall 1 at rank 3 (precision 2/3)
    pr = pr_curve(rel[:1], n_rel[:1])[0]
    assert np.allclose(pr[:10], 1.0) and np.allclose(pr[10:], 2 / 3)


def test_e_measure_looks_at_the_first_32_only():
    rel = np.zeros((1, 40), dtype=bool)
    rel[0, [0, 34]] = True
    m = query_metrics(rel, np.array([2]))
    p, r = 1 / 32, 1 / 2
    assert m["e_measure"][0] == pytest.approx(2 * p * r / (p + r))
    assert m["first_tier"][0] == 0.5 and m["second_tier"][0] == 0.5


def test_query_gallery_distances_match_brute_force(index32):
    from retrieval.index import ShapeIndex

    with ShapeIndex(index32, gpu="never") as idx:
        queries, gallery, D = query_gallery_distances(idx, "sketch", "npr", memory_mb=1)  # tiny blocks
        n = len(idx.shapes)
        A, Am = idx.features("sketch", np.arange(n))
        B, Bm = idx.features("npr", np.arange(n))
    assert len(queries) == int(Am.sum()) and list(gallery) == list(range(n))
    for qi, (s, k) in enumerate(queries):
        for gi, g in enumerate(gallery):
            want = min(float(np.mean((A[s, k].astype(np.float64) - B[g, h]) ** 2)) for h in np.nonzero(Bm[g])[0])
            assert D[qi, gi] == pytest.approx(want, rel=1e-4, abs=1e-9)


def test_eval_relevance_category_cli(index32, tmp_path):
    out = tmp_path / "cat"
    res = run_cli(["eval", "--index", index32, "--out", out, "--relevance", "category", "--pairs", "sketch-npr",
                   "--quiet"])
    assert "NN" in res.output and "untrained" in res.output
    rep = json.loads((out / "report.json").read_text())
    r = rep["indexes"]["tiny32"]["pairs"]["sketch-npr"]
    assert rep["relevance"] == "category" and r["n_queries"] == 18 and r["n_classes"] == 2
    for avg in ("micro", "macro"):
        assert set(r[avg]) == set(METRICS) and all(0.0 <= v <= 1.0 for v in r[avg].values())
    assert set(r["per_class"]) == {"even", "odd"} and len(r["pr_curve"]["recall"]) == 20
    assert (out / "fig_pr_curve.png").stat().st_size > 1000 and (out / "category_per_class.csv").is_file()
    assert "even" in (out / "report.md").read_text()
    # the shrec presets choose category relevance themselves
    js = json.loads(run_cli(["eval", "--index", index32, "--out", tmp_path / "c2", "--preset", "shrec13",
                             "--pairs", "sketch-npr", "--json"]).stdout)
    assert js["relevance"] == "category"


def test_shrec13_end_to_end(tmp_path):
    """SHREC'13 trees with the real naming: models rendered with the preset (.cla categories),
    sketches (no viewpoint) indexed into the same index, evaluated with the shrec13 protocol."""
    import trimesh
    from PIL import Image, ImageDraw

    models = tmp_path / "SHREC13_SBR_TARGET_MODELS" / "models"
    models.mkdir(parents=True)
    for i, mesh in enumerate([trimesh.creation.box(extents=(1, 1, 1)), trimesh.creation.box(extents=(1, 0.4, 0.8)),
                              trimesh.creation.icosphere(subdivisions=2), trimesh.creation.capsule()]):
        mesh.export(models / f"m{i}.off")
    (models.parent / "SHREC13_SBR_Model.cla").write_text("PSB 1\n2 4\n\nbox 0 2\n0\n1\n\nround 0 2\n2\n3\n")
    sketches = tmp_path / "SHREC13_SBR_Sketches" / "SHREC13_SBR_Sketches"
    for cls, draw in (("box", lambda d: d.rectangle([30, 30, 90, 90], outline=0, width=3)),
                      ("round", lambda d: d.ellipse([30, 30, 90, 90], outline=0, width=3))):
        for split, n in (("train", 1), ("test", 2)):
            for k in range(n):
                img = Image.new("L", (120, 120), 255)
                draw(ImageDraw.Draw(img))
                (sketches / cls / split).mkdir(parents=True, exist_ok=True)
                img.save(sketches / cls / split / f"{k + 1}.png")
    renders, idx = tmp_path / "renders", tmp_path / "idx"
    run_cli(["render", models.parent, "--preset", "shrec13", "--out", renders, "--viewpoints", "0,90", "--size", "64",
             "--supersample", "1", "--domains", "npr", "--workers", "1", "--quiet"])
    run_cli(["index", renders, "--out", idx, "--weights", "untrained", "--seed", "0", "--quiet"])
    run_cli(["index", tmp_path / "SHREC13_SBR_Sketches", "--preset", "shrec13", "--split", "test", "--out", idx,
             "--weights", "untrained", "--seed", "0", "--quiet"])
    out = tmp_path / "rep"
    js = json.loads(run_cli(["eval", "--index", idx, "--out", out, "--preset", "shrec13", "--pairs", "sketch-npr",
                             "--json"]).stdout)
    r = js["indexes"]["idx"]["pairs"]["sketch-npr"]
    assert js["relevance"] == "category" and r["n_queries"] == 4 and r["gallery_shapes"] == 4
    assert set(r["per_class"]) == {"box", "round"} and r["gallery_without_category"] == 0
