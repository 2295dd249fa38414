"""Every bad input of issue 2 gets a clear one-line message naming the file; nothing stored is lost."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
from PIL import Image

from retrieval.dataset import discover
from retrieval.errors import DatasetError, ImageError
from retrieval.images import load_image, preprocess_array
from retrieval.index import ShapeIndex

from .conftest import UNTRAINED, draw_view, make_dataset, run_cli


def one_line_error(res, *needles):
    assert res.exit_code == 1, res.output
    lines = [ln for ln in res.output.strip().splitlines() if ln.startswith("error:")]
    assert len(lines) == 1, res.output
    for n in needles:
        assert n in lines[0], lines[0]
    return lines[0]


@pytest.fixture()
def small(tmp_path):
    return make_dataset(tmp_path / "d", n_shapes=3, domains=("npr",))


def corrupt(path, kind):
    if kind == "not_image":
        path.write_text("this is not a PNG\n")
    elif kind == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif kind == "empty":
        path.write_bytes(b"")


@pytest.mark.parametrize("kind,needle", [("not_image", "not an image"), ("truncated", "truncated"),
                                         ("empty", "empty file (0 bytes)")])
def test_unreadable_view_is_skipped_then_strict_stops(small, tmp_path, kind, needle):
    out = tmp_path / "idx"
    run_cli(["index", small, "--out", out, *UNTRAINED, "--quiet"])  # 9 good views stored
    bad = small / "npr" / "shape01" / "az030.png"
    corrupt(bad, kind)
    # a new good shape plus the now-bad view: the good one is added, the bad one reported, old rows kept
    shutil.copytree(small / "npr" / "shape02", small / "npr" / "shape07")
    draw_view(7, "az000", "npr").save(small / "npr" / "shape07" / "az000.png")
    res = run_cli(["index", small, "--out", out, *UNTRAINED, "--quiet", "--json"])
    rep = json.loads(res.stdout)
    assert len(rep["failed"]) == 1 and str(bad) in rep["failed"][0]["error"] and needle in rep["failed"][0]["error"]
    assert f"skipped: {bad}" in res.output
    with ShapeIndex(out, gpu="never") as si:
        assert si.row_of("npr", "shape01", "az030") is not None  # the old feature of that view is not lost
        assert si.row_of("npr", "shape07", "az000") is not None
    res = run_cli(["index", small, "--out", tmp_path / "strict", *UNTRAINED, "--quiet", "--strict"], ok=False)
    one_line_error(res, str(bad), needle, "--strict")


def test_unreadable_view_on_first_build(small, tmp_path):
    bad = small / "npr" / "shape00" / "az000.png"
    corrupt(bad, "truncated")
    rep = json.loads(run_cli(["index", small, "--out", tmp_path / "i", *UNTRAINED, "--quiet", "--json"]).stdout)
    assert rep["embedded"] == 8 and len(rep["failed"]) == 1


def test_odd_pixel_formats_are_normalised(tmp_path):
    base = draw_view(1, "az000", "npr").convert("L")
    ref = preprocess_array(base.convert("RGB"))
    # 16-bit grayscale
    a16 = (np.asarray(base, dtype=np.uint16) * 257)
    p16 = tmp_path / "g16.png"
    Image.fromarray(a16).save(p16)
    assert Image.open(p16).mode.startswith("I")
    np.testing.assert_allclose(preprocess_array(load_image(p16)), ref, atol=1e-5)
    # palette
    pp = tmp_path / "pal.png"
    base.convert("RGB").convert("P", palette=Image.ADAPTIVE, colors=16).save(pp)
    assert Image.open(pp).mode == "P"
    np.testing.assert_allclose(preprocess_array(load_image(pp)), ref, atol=0.2)
    # RGBA: black lines on a transparent background == black lines on white
    rgba = Image.new("RGBA", base.size, (0, 0, 0, 0))
    rgba.putalpha(Image.eval(base, lambda v: 255 - v))
    pa = tmp_path / "rgba.png"
    rgba.save(pa)
    np.testing.assert_allclose(preprocess_array(load_image(pa)), ref, atol=0.05)
    # non-square images are padded with white, not stretched
    wide = Image.new("RGB", (448, 224), "white")
    wide.paste(base.convert("RGB"), (112, 0))
    pw = tmp_path / "wide.png"
    wide.save(pw)
    arr = preprocess_array(load_image(pw))
    assert arr.shape == (3, 224, 224)
    white = preprocess_array(Image.new("RGB", (224, 224), "white"))
    np.testing.assert_allclose(arr[:, :50], white[:, :50], atol=1e-6)  # top band is padding


def test_huge_image_rejected_before_decoding(tmp_path):
    p = tmp_path / "huge.png"
    Image.new("1", (20000, 20000), 1).save(p)
    with pytest.raises(ImageError, match=r"huge\.png: image is 20000×20000 pixels, over the limit"):
        load_image(p)
    assert load_image(p, max_pixels=20000 * 20000 + 1).size == (20000, 20000)


def test_huge_image_in_index_is_skipped(small, tmp_path):
    p = small / "npr" / "shape02" / "az075.png"
    Image.new("1", (20000, 20000), 1).save(p)
    res = run_cli(["index", small, "--out", tmp_path / "i", *UNTRAINED, "--quiet"])
    assert "skipped:" in res.output and "20000×20000" in res.output and "--max-pixels" in res.output


def test_missing_view_and_empty_shape_folder_reported(small, tmp_path):
    (small / "npr" / "shape01" / "az075.png").unlink()
    (small / "npr" / "shape05").mkdir()
    ds = discover(small)
    assert any("missing view: npr/shape01/az075" in p for p in ds.problems)
    assert any("shape05: shape folder has no views" in p for p in ds.problems)
    res = run_cli(["index", small, "--out", tmp_path / "i", *UNTRAINED, "--quiet"])
    assert "warning: missing view: npr/shape01/az075" in res.output
    with ShapeIndex(tmp_path / "i", gpu="never") as si:
        assert si.row_of("npr", "shape01", "az075") is None and si.row_of("npr", "shape01", "az000") is not None
        assert si.present("npr").sum() == 8


def test_duplicate_shape_ids_from_two_patterns(tmp_path):
    root = tmp_path / "amateur"
    (root / "a").mkdir(parents=True)
    (root / "b").mkdir(parents=True)
    draw_view(0, "az000", "sketch").save(root / "a" / "chair1_az000.png")
    draw_view(0, "az000", "sketch").save(root / "b" / "chair1_az000.png")
    with pytest.raises(DatasetError, match=r"chair1_az000\.png: duplicate view sketch/chair1/az000"):
        discover(root, patterns=["a/{shape}_{viewpoint}.png", "b/{shape}_{viewpoint}.png"])
    res = run_cli(["index", root, "--out", tmp_path / "i", "--pattern", "a/{shape}_{viewpoint}.png",
                   "--pattern", "b/{shape}_{viewpoint}.png", *UNTRAINED], ok=False)
    one_line_error(res, "duplicate view", "chair1_az000.png")


def test_pattern_layout_read_in_place(tmp_path):
    root = tmp_path / "amateur"
    for i in range(2):
        for vp in ("az000", "az030"):
            p = root / "sketch" / f"model_{i}_{vp}.png"
            p.parent.mkdir(parents=True, exist_ok=True)
            draw_view(i, vp, "sketch").save(p)
    ds = discover(root, patterns=["{domain}/{shape}_{viewpoint}.png"])
    assert ds.shapes == ["model_0", "model_1"] and [vp.name for vp in ds.viewpoints] == ["az000", "az030"]
    assert ds.views[0].path == str(root / "sketch" / "model_0_az000.png")


def test_non_ascii_file_names(tmp_path):
    root = make_dataset(tmp_path / "d", n_shapes=2, domains=("npr",))
    (root / "npr" / "shape01").rename(root / "npr" / "стул_椅子")
    out = tmp_path / "idx_é"
    run_cli(["index", root, "--out", out, *UNTRAINED, "--quiet"])
    img = root / "npr" / "стул_椅子" / "az030.png"
    hits = json.loads(run_cli(["query", img, "--index", out, "--json"]).stdout)["hits"]
    assert hits[0]["shape"] == "стул_椅子" and hits[0]["path"] == str(img)
    assert "стул_椅子" in run_cli(["query", img, "--index", out]).output


def test_missing_dataset_folder(tmp_path):
    res = run_cli(["index", tmp_path / "nope", "--out", tmp_path / "i", *UNTRAINED], ok=False)
    one_line_error(res, "nope", "does not exist")


def test_query_image_errors(index32, tmp_path):
    bad = tmp_path / "q.png"
    bad.write_bytes(b"")
    one_line_error(run_cli(["query", bad, "--index", index32], ok=False), "q.png", "empty file")
    one_line_error(run_cli(["query", tmp_path / "absent.png", "--index", index32], ok=False), "absent.png",
                   "not found")
    one_line_error(run_cli(["query", bad, "--index", tmp_path / "noindex"], ok=False), "noindex", "does not exist")


def test_damaged_manifest(dataset, index32, tmp_path):
    broken = tmp_path / "broken"
    shutil.copytree(index32, broken)
    (broken / "manifest.prev.json").unlink(missing_ok=True)
    data = (broken / "manifest.json").read_bytes()
    (broken / "manifest.json").write_bytes(data[:4096])  # truncated
    one_line_error(run_cli(["info", broken], ok=False), "manifest.json", "damaged manifest")
    one_line_error(run_cli(["query", dataset / "npr" / "shape00" / "az000.png", "--index", broken], ok=False),
                   "manifest.json")
    # a one-generation index has no previous manifest to restore: updating it refuses rather than replacing it
    res = run_cli(["index", dataset, "--out", broken, *UNTRAINED, "--quiet"], ok=False)
    one_line_error(res, "manifest.json", "--overwrite")
    assert (broken / "manifest.json").stat().st_size == 4096
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "manifest.json").write_bytes(b"{}")
    one_line_error(run_cli(["info", garbage], ok=False), "manifest.json")
    # --overwrite starts again
    run_cli(["index", dataset, "--out", broken, *UNTRAINED, "--quiet", "--overwrite", "--domains", "npr"])
    with ShapeIndex(broken, gpu="never") as si:
        assert si.domains == ["npr"]
    # with a previous generation beside it, `cvret index` restores it and carries on
    repair = tmp_path / "repair"
    shutil.copytree(index32, repair)
    shutil.copy(repair / "manifest.json", repair / "manifest.prev.json")
    (repair / "manifest.json").write_bytes(data[:4096])
    res = run_cli(["index", dataset, "--out", repair, *UNTRAINED, "--quiet", "--precision", "fp32",
                   "--feature-dtype", "float32"])
    assert "restored generation" in res.output and "0 embedded" in res.output
    assert run_cli(["verify", repair, "--quiet"]).exit_code == 0


def test_bad_query_options(index32, dataset):
    img = dataset / "npr" / "shape00" / "az000.png"
    one_line_error(run_cli(["query", img, "--index", index32, "--domain", "depth"], ok=False), "depth")
    one_line_error(run_cli(["query", img, "--index", index32, "--viewpoint", "az090"], ok=False), "az090")
    one_line_error(run_cli(["query", "--view", f"az090={img}", "--index", index32], ok=False), "az090")
    res = run_cli(["query", img, "--view", f"az000={img}", "--index", index32], ok=False)
    assert res.exit_code == 2
