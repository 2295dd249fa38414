"""The README's "run the seed on real data" recipe, end to end on fixture trees with the real
naming (ShapeNetCore v2 chairs, AmateurSketch sketches), through the real CLI, untrained weights."""
from __future__ import annotations

import json

import numpy as np
from PIL import Image

from retrieval.synth import generate_shape

from .conftest import UNTRAINED, run_cli

IDS = ["1a6f615e8b1b5ae4dbbc9440457e303e", "1a74a83fa6d24b3cacd67ce2c72c02e", "2025aa3a71f3c468d16ba2cb1292d98a"]


def test_recipe_shapenet_v2_and_amateursketch(tmp_path):
    shapenet = tmp_path / "ShapeNetCore.v2"
    for i, sid in enumerate(IDS):
        path = shapenet / "03001627" / sid / "models" / "model_normalized.obj"
        path.parent.mkdir(parents=True)
        generate_shape("chair", i, seed=0).export(path)   # demo chairs face -Z like ShapeNet v2
    (shapenet / "taxonomy.json").write_text(json.dumps([{"synsetId": "03001627", "name": "chair", "children": []}]))

    extra = shapenet / "03001627" / "ffffffffffffffffffffffffffffffff" / "models" / "model_normalized.obj"
    extra.parent.mkdir(parents=True)
    generate_shape("chair", 9, seed=0).export(extra)     # a chair nobody sketched: left out by --only
    ids = tmp_path / "sketched_ids.txt"
    ids.write_text("\n".join(IDS) + "\n")
    renders = tmp_path / "renders"
    res = run_cli(["render", shapenet / "03001627", "--preset", "shapenet-v2", "--only", ids, "--out", renders,
                   "--size", "96", "--supersample", "2", "--workers", "1", "--quiet"])
    assert "rendered 3," in res.output and not (renders / "npr" / extra.parent.parent.name).exists()
    meta = json.loads((renders / "dataset.json").read_text())
    assert meta["render"]["orientation"]["convention"] == "shapenet-v2" and meta["categories"][IDS[0]] == "chair"

    # AmateurSketch-like sketches: <shapenet_id>/<view>.png, views 0/1/2 = 0/30/75 degrees
    sketches = tmp_path / "AmateurSketch" / "chair"
    for sid in IDS:
        for v, vp in enumerate(("az000", "az030", "az075")):
            img = Image.open(renders / "npr" / sid / f"{vp}.png").convert("L")
            shifted = np.full((96, 96), 255, dtype=np.uint8)
            shifted[2:, 1:] = np.asarray(img)[:-2, :-1]             # a "hand-drawn" copy, slightly off
            (sketches / sid).mkdir(parents=True, exist_ok=True)
            Image.fromarray(shifted).save(sketches / sid / f"{v}.png")

    idx = tmp_path / "indexes" / "chairs"
    run_cli(["index", renders, "--out", idx, *UNTRAINED, "--quiet"])
    rep = json.loads(run_cli(["index", sketches.parent, "--preset", "amateursketch", "--out", idx, *UNTRAINED,
                              "--quiet", "--json"]).stdout)
    assert rep["embedded"] == 9 and not rep["failed"]
    info = json.loads(run_cli(["info", idx, "--json"]).stdout)
    assert info["shapes"] == 3 and set(info["domains"]) == {"sketch", "npr", "rgb"}
    assert info["categories"] == {"chair": 3}

    out = tmp_path / "reports" / "chairs"
    run_cli(["eval", "--index", idx, "--out", out, "--objects", "3", "--study2-objects", "3", "--quiet"])
    report = json.loads((out / "report.json").read_text())
    pairs = {p["key"]: p for p in report["sources"][0]["pairs"]}
    assert set(pairs) == {"sketch-npr", "sketch-rgb", "npr-rgb"}
    assert all(p["N"] == 3 and p["V"] == 3 for p in pairs.values())
    cat = tmp_path / "reports" / "chairs_category"
    run_cli(["eval", "--index", idx, "--out", cat, "--relevance", "category", "--pairs", "sketch-npr", "--quiet"])
    r = json.loads((cat / "report.json").read_text())["indexes"]["chairs"]["pairs"]["sketch-npr"]
    assert r["n_queries"] == 9 and r["micro"]["first_tier"] == 1.0   # one category: every shape is relevant
