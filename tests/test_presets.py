"""Dataset presets on small trees built here with each dataset's real naming: the view table,
categories, orientation, and the files a preset does not expect (listed with the reason)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import trimesh
from PIL import Image, ImageDraw

from retrieval.errors import ConfigError, DatasetError
from retrieval.presets import parse_cla, parse_view_map, read_mesh_preset, read_preset
from retrieval.render import RenderSettings, load_mesh, render_rgb
from retrieval.viewpoints import Viewpoint

from .conftest import run_cli

CHAIRS = ["1a6f615e8b1b5ae4dbbc9440457e303e", "1a74a83fa6d24b3cacd67ce2c72c02e", "2025aa3a71f3c468d16ba2cb1292d98a"]
CLA = """PSB 1
2 3

airplane 0 2
0
3

chair 0 1
7
"""


def sketch(path: Path, k: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new("L", (32, 32), 255)
    ImageDraw.Draw(img).line([(4, 4 + k), (28, 20 - k)], fill=0, width=2)
    img.save(path)
    return path


def shapes_and_views(ds) -> set:
    return {(v.shape, v.viewpoint) for v in ds.views}


def test_amateursketch_both_forms_and_unexpected(tmp_path):
    root = tmp_path / "AmateurSketch"
    for v in range(3):
        sketch(root / "chair" / CHAIRS[0] / f"{v}.png", v)   # per-shape folders
        sketch(root / "flat" / f"{CHAIRS[1]}_{v}.png", v)     # the flat form
    sketch(root / "flat" / f"{CHAIRS[2]}_7.png")
    (root / "notes.txt").write_text("x")
    sketch(root / "cover.png")
    ds = read_preset("amateursketch", root)
    assert {vp.name: vp.azimuth for vp in ds.viewpoints} == {"az000": 0, "az030": 30, "az075": 75}
    assert shapes_and_views(ds) == {(s, vp) for s in CHAIRS[:2] for vp in ("az000", "az030", "az075")}
    assert {v.domain for v in ds.views} == {"sketch"}
    text = "\n".join(ds.problems)
    assert "notes.txt" in text and "not an image" in text
    assert f"{CHAIRS[2]}_7.png" in text and "view '7' is not in the --views mapping" in text
    assert "cover.png" in text and "neither" in text
    # another mapping: names or degrees
    ds2 = read_preset("amateursketch", root, views="0=az000,1=45,2=az090")
    assert {vp.name: vp.azimuth for vp in ds2.viewpoints} == {"az000": 0, "az045": 45, "az090": 90}
    assert (CHAIRS[0], "az045") in shapes_and_views(ds2)


def test_parse_view_map_errors():
    assert parse_view_map(None)["2"] == Viewpoint("az075", 75.0)
    for bad in ("0", "0=", "a=b", ""):
        with pytest.raises(ConfigError, match="--views"):
            parse_view_map(bad)


def test_prosketch_folders_and_suffixes(tmp_path):
    root = tmp_path / "prosketch"
    for s in CHAIRS[:2]:
        for suffix in ("1", "2", "3"):
            sketch(root / "ProSketch-3Dchair" / f"{s}-{suffix}.png")
    sketch(root / "prosketch" / "original" / f"{CHAIRS[2]}-1.png")
    sketch(root / "resized" / f"{CHAIRS[2]}-2.png")
    sketch(root / "ProSketch-3Dchair" / f"{CHAIRS[2]}-9.png")
    ds = read_preset("prosketch", root, views="1=az000,2=az030,3=az075")
    assert shapes_and_views(ds) == ({(s, vp) for s in CHAIRS[:2] for vp in ("az000", "az030", "az075")}
                                    | {(CHAIRS[2], "az000")})
    text = "\n".join(ds.problems)
    assert "resized" in text and "not in a ProSketch folder" in text
    assert "suffix '9'" in text
    assert f"missing view: sketch/{CHAIRS[2]}/az030" in text


def test_sketch2model_nearest_and_own_viewpoints(tmp_path):
    root = tmp_path / "sketch2model"
    for sid, view in ((CHAIRS[0], "28.0 20.0 1.8"), (CHAIRS[1], "70 5 2.0"), (CHAIRS[2], "oops")):
        sketch(root / "03001627" / sid / "sketch.png")
        (root / "03001627" / sid / "view.txt").write_text(view + "\nsecond line ignored\n")
    sketch(root / "03001627" / "stray.png")
    ds = read_preset("sketch2model", root)
    assert shapes_and_views(ds) == {(CHAIRS[0], "az030"), (CHAIRS[1], "az075")}
    assert ds.categories[CHAIRS[0]] == "chair"
    text = "\n".join(ds.problems)
    assert "view.txt" in text and "azimuth elevation distance" in text and "stray.png" in text
    own = read_preset("sketch2model", root, viewpoints="own")
    assert shapes_and_views(own) == {(CHAIRS[0], "az028_el020"), (CHAIRS[1], "az070_el005")}
    assert {(vp.azimuth, vp.elevation) for vp in own.viewpoints} == {(28.0, 20.0), (70.0, 5.0)}


def test_shrec_sketches_doubled_top_folder_and_split(tmp_path):
    root = tmp_path / "SHREC13_SBR_Sketches"
    inner = root / "SHREC13_SBR_Sketches"
    sketch(inner / "airplane" / "train" / "1.png")
    sketch(inner / "airplane" / "test" / "1.png")
    sketch(inner / "chair" / "test" / "5.png")
    sketch(inner / "chair" / "5.png")
    ds = read_preset("shrec13", root)
    assert {v.shape for v in ds.views} == {"airplane_train_1", "airplane_test_1", "chair_test_5"}
    assert ds.categories["chair_test_5"] == "chair" and [vp.name for vp in ds.viewpoints] == ["free"]
    assert any("chair/5.png" in p and "{train,test}" in p for p in ds.problems)
    test_only = read_preset("shrec13", root, split="test")
    assert {v.shape for v in test_only.views} == {"airplane_test_1", "chair_test_5"}


def test_cla_parsing_and_errors(tmp_path):
    good = tmp_path / "SHREC13_SBR_Model.cla"
    good.write_text(CLA)
    assert parse_cla(good) == {"0": "airplane", "3": "airplane", "7": "chair"}
    bad = tmp_path / "bad.cla"
    for text, msg in (("PSB 1\n2 3\nairplane 0 2\n0\n", "ends after"),
                      ("hello\n", "PSB 1"),
                      ("PSB 1\n1 2\nairplane 0 x\n0\n", "line 3"),
                      ("PSB 1\n1 5\nairplane 0 1\n0\n", "header says 5 items")):
        bad.write_text(text)
        with pytest.raises(DatasetError, match=msg) as e:
            parse_cla(bad)
        assert "bad.cla" in str(e.value)


def mesh_file(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    trimesh.creation.box(extents=(1.0, 0.6, 0.4)).export(path)
    return path


def test_shrec_models_with_cla(tmp_path):
    root = tmp_path / "SHREC13_SBR_TARGET_MODELS"
    for i in (0, 3, 7, 9):
        mesh_file(root / "models" / f"m{i}.off")
    mesh_file(root / "models" / "M5.off")
    (root / "SHREC13_SBR_Model.cla").write_text(CLA)
    tree = read_mesh_preset("shrec13", root)
    assert [s for _, s in tree.files] == ["m0", "m3", "m7", "m9"]
    assert tree.categories == {"m0": "airplane", "m3": "airplane", "m7": "chair"}
    text = "\n".join(tree.problems)
    assert "M5.off" in text and "not m<id>.off" in text and "m9.off" in text and "no category" in text


def test_shapenet_trees_render_with_their_convention(tmp_path):
    v2 = tmp_path / "ShapeNetCore.v2"
    for sid in CHAIRS[:2]:
        mesh_file(v2 / "03001627" / sid / "models" / "model_normalized.obj")
    mesh_file(v2 / "04379243" / "t1" / "models" / "model_normalized.obj")
    mesh_file(v2 / "03001627" / CHAIRS[2] / "model.obj")
    (v2 / "taxonomy.json").write_text(json.dumps([{"synsetId": "03001627", "name": "chair", "children": []},
                                                  {"synsetId": "04379243", "name": "table,desk", "children": []}]))
    tree = read_mesh_preset("shapenet-v2", v2)
    assert sorted(s for _, s in tree.files) == sorted([*CHAIRS[:2], "t1"])
    assert tree.categories == {CHAIRS[0]: "chair", CHAIRS[1]: "chair", "t1": "table"}
    assert tree.convention == "shapenet-v2"
    assert any("model.obj" in p and "ShapeNet v1" in p for p in tree.problems)
    out = tmp_path / "renders"
    res = run_cli(["render", v2, "--preset", "shapenet-v2", "--out", out, "--viewpoints", "0", "--size", "48",
                   "--supersample", "1", "--workers", "1", "--quiet"])
    assert "rendered 3" in res.output
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["categories"][CHAIRS[0]] == "chair" and meta["render"]["orientation"]["convention"] == "shapenet-v2"
    assert (out / "npr" / CHAIRS[0] / "az000.png").is_file()

    v1 = tmp_path / "ShapeNetCore.v1"
    mesh_file(v1 / "03001627" / CHAIRS[0] / "model.obj")
    tree1 = read_mesh_preset("shapenet-v1", v1)
    assert tree1.files[0][1] == CHAIRS[0] and tree1.categories[CHAIRS[0]] == "chair"
    out1 = tmp_path / "renders1"
    run_cli(["render", v1, "--preset", "shapenet-v1", "--out", out1, "--viewpoints", "0", "--size", "48",
             "--supersample", "1", "--workers", "1", "--quiet"])
    o = json.loads((out1 / "dataset.json").read_text())["render"]["orientation"]
    assert (o["convention"], o["front"], o["up"]) == ("shapenet-v1", "+x", "+y")


def test_empty_tree_names_what_was_expected(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="no sketches found for preset amateursketch") as e:
        read_preset("amateursketch", tmp_path)
    assert "x.txt: not an image" in str(e.value)
    res = run_cli(["index", tmp_path, "--preset", "prosketch", "--out", tmp_path / "idx", "--weights", "untrained"],
                  ok=False)
    assert res.exit_code == 1 and "no sketches found for preset prosketch" in res.output


OBJ = """mtllib part.mtl
v 0 0 0
v 1 0 0
v 0 1 0
v 1 1 0
v 0 0 1
vt 0 0
vt 1 0
vt 0 1
vt 1 1
usemtl wood
f 1/1 2/2 3/3
f 2/2 4/4 3/3
f 1/1 3/3 5/1
"""


def test_missing_texture_renders_like_an_uncoloured_mesh(tmp_path):
    (tmp_path / "part.obj").write_text(OBJ)
    (tmp_path / "part.mtl").write_text("newmtl wood\nKd 0.9 0.2 0.1\nmap_Kd -s 1 1 1 images/wood.jpg\n")
    plain = tmp_path / "plain.obj"
    plain.write_text(OBJ.replace("mtllib part.mtl\n", "").replace("usemtl wood\n", ""))
    vp, s = Viewpoint("az030", 30.0), RenderSettings(size=48, supersample=1)
    missing = np.asarray(render_rgb(load_mesh(tmp_path / "part.obj"), vp, s))
    grey = np.asarray(render_rgb(load_mesh(plain), vp, s))
    assert (missing != 255).any() and np.array_equal(missing, grey)
    # with the texture file present, its colours are used
    (tmp_path / "part.mtl").write_text("newmtl wood\nKd 0.9 0.2 0.1\nmap_Kd images/wood.jpg\n")
    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4), (20, 40, 220)).save(tmp_path / "images" / "wood.jpg")
    textured = np.asarray(render_rgb(load_mesh(tmp_path / "part.obj"), vp, s)).astype(int)
    fg = (textured != 255).any(axis=2)
    assert (textured[fg, 2] > textured[fg, 0] + 40).mean() > 0.5
    # a material with only a flat colour (no map_Kd) keeps that colour
    (tmp_path / "part.mtl").write_text("newmtl wood\nKd 0.9 0.2 0.1\n")
    flat = np.asarray(render_rgb(load_mesh(tmp_path / "part.obj"), vp, s)).astype(int)
    fg = (flat != 255).any(axis=2)
    assert (flat[fg, 0] > flat[fg, 2] + 40).mean() > 0.5


def test_render_at_each_sketchs_own_viewpoint(tmp_path):
    """sketch2model: `cvret render --viewpoints-from` renders each shape at its sketch's camera, and
    the sketches read with own viewpoints name the same views, so both land in one index."""
    sk = tmp_path / "sketch2model"
    meshes = tmp_path / "meshes"
    for sid, view in ((CHAIRS[0], "28 20 1.8"), (CHAIRS[1], "300.5 5 2.0")):
        sketch(sk / "03001627" / sid / "sketch.png")
        (sk / "03001627" / sid / "view.txt").write_text(view + "\n")
        mesh_file(meshes / f"{sid}.obj")
    out = tmp_path / "renders"
    run_cli(["render", meshes, "--viewpoints-from", sk, "--out", out, "--size", "48", "--supersample", "1",
             "--domains", "npr", "--workers", "1", "--quiet"])
    assert sorted(p.name for p in (out / "npr" / CHAIRS[0]).iterdir()) == ["az028_el020.png"]
    assert sorted(p.name for p in (out / "npr" / CHAIRS[1]).iterdir()) == ["az300.5_el005.png"]
    meta = json.loads((out / "dataset.json").read_text())
    assert {(v["name"], v["azimuth"], v["elevation"]) for v in meta["viewpoints"]} == {
        ("az028_el020", 28.0, 20.0), ("az300.5_el005", 300.5, 5.0)}
    ds = read_preset("sketch2model", sk, viewpoints="own")
    assert {(v.shape, v.viewpoint) for v in ds.views} == {(CHAIRS[0], "az028_el020"), (CHAIRS[1], "az300.5_el005")}
