"""Query normalisation (issue 12 §1) and queries that cannot be answered (§2).

Framing and calibration are tested on drawn images (no model); the query path through the real
CLI on the tiny test index (untrained weights, fp32).
"""
from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageOps

from retrieval.calibration import DEFAULT_EXTENT, WARN_FACTOR, Calibration, measure_extents, merge
from retrieval.errors import BlankSketch
from retrieval.framing import Target, frame, ink_box, normalize_sketch, on_paper, placement
from retrieval.store import FeatureStore, ViewRecord

from .conftest import run_cli


def drawing(size=(224, 224), box=(80, 60, 140, 120), width=3, bg="white", ink="black") -> Image.Image:
    """A rectangle and a diagonal: an object whose ink box is `box`."""
    im = Image.new("RGB", size, bg)
    d = ImageDraw.Draw(im)
    d.rectangle(box, outline=ink, width=width)
    d.line([box[:2], box[2:]], fill=ink, width=width)
    return im


# ------------------------------------------------------------------ framing (no model)
def test_frame_sets_extent_and_centre_whatever_the_canvas():
    for size, box in [((224, 224), (10, 10, 60, 50)), ((448, 224), (300, 20, 420, 200)), ((100, 300), (5, 5, 95, 60))]:
        out = frame(drawing(size, box), Target(0.7, (0.05, -0.03)), "s.png")
        assert out.width == out.height
        extent, (cx, cy) = placement(out)
        assert extent == pytest.approx(0.7, abs=0.01)
        assert (cx, cy) == pytest.approx((0.05, -0.03), abs=0.01)


def test_sketch_within_the_gallery_spread_is_left_as_drawn():
    target = Target(0.7, (0.0, 0.0), (0.5, 0.8), 0.05)
    inside = drawing(box=(40, 40, 180, 180))                  # extent 0.63, centred
    assert np.array_equal(np.asarray(frame(inside, target, "s.png")), np.asarray(inside))
    for outside in (drawing(box=(90, 90, 134, 134)),          # too small
                    drawing(box=(10, 10, 150, 150)),          # right size, off-centre
                    drawing((448, 224), (150, 40, 290, 180))):  # right size on a 2:1 canvas: small once square
        extent, centre = placement(frame(outside, target, "s.png"))
        assert extent == pytest.approx(0.7, abs=0.01) and centre == pytest.approx((0, 0), abs=0.01)


def test_ink_box_ignores_specks_and_paper_texture():
    rng = np.random.default_rng(0)
    im = drawing(box=(80, 60, 140, 120))
    a = np.asarray(im).copy()
    a[5, 5] = a[200, 210] = a[220, 3] = 0            # specks far from the drawing
    paper = rng.integers(215, 256, a.shape[:2])      # textured paper, some of it below PAPER_LEVEL (230)
    a = np.where(a < 128, a, paper[..., None]).astype(np.uint8)
    box = ink_box(Image.fromarray(a))
    assert box is not None and abs(box[0] - 80) <= 2 and abs(box[1] - 60) <= 2 and abs(box[2] - 141) <= 2


def test_grey_paper_keeps_its_ink():
    im = drawing(bg=(190, 190, 190), ink=(40, 40, 40))
    assert ink_box(im) == pytest.approx((79, 59, 142, 122), abs=2)


def test_light_on_dark_is_inverted():
    dark = ImageOps.invert(drawing())
    flat, inverted = on_paper(dark)
    assert inverted and np.array_equal(np.asarray(flat), np.asarray(drawing()))
    assert on_paper(drawing())[1] is False


def test_white_ink_on_transparent_is_found():
    im = Image.new("RGBA", (224, 224), (0, 0, 0, 0))
    ImageDraw.Draw(im).rectangle((80, 60, 140, 120), outline=(255, 255, 255, 255), width=3)
    flat, inverted = on_paper(im)
    assert inverted and ink_box(flat) == pytest.approx((80, 60, 141, 121), abs=1)
    # dark ink on transparent stays as it is
    im2 = Image.new("RGBA", (224, 224), (0, 0, 0, 0))
    ImageDraw.Draw(im2).rectangle((80, 60, 140, 120), outline=(0, 0, 0, 255), width=3)
    assert on_paper(im2)[1] is False and ink_box(on_paper(im2)[0]) is not None


def test_blank_is_an_error_naming_the_file():
    for im in (Image.new("RGB", (300, 200), "white"), Image.new("RGBA", (64, 64), (0, 0, 0, 0)),
               Image.new("RGB", (64, 64), "black")):
        with pytest.raises(BlankSketch, match=r"^my/sketch\.png: blank sketch"):
            normalize_sketch(im, Target(0.7), "my/sketch.png")


# ------------------------------------------------------------------ calibration (no model)
def test_measure_extents_per_domain_and_viewpoint(tmp_path):
    views = []
    for i in range(5):
        for vp, half in (("az000", 40), ("az075", 70)):
            p = tmp_path / f"{vp}_{i}.png"
            drawing(box=(112 - half, 112 - half, 112 + half, 112 + half + i)).save(p)
            views.append(("npr", f"s{i}", vp, str(p)))
    for i in range(5, 11):  # more ordinary views, and one outlier the spread leaves out
        half, dx = (100, 10) if i == 10 else (40, 0)
        p = tmp_path / f"az000_{i}.png"
        drawing(box=(112 - half + dx, 112 - half, 112 + half + dx, 112 + half + i % 5)).save(p)
        views.append(("npr", f"s{i}", "az000", str(p)))
    views.append(("npr", "gone", "az000", str(tmp_path / "missing.png")))  # unreadable: left out
    ext = measure_extents(views)
    assert ext["npr"]["az000"]["views"] == 11
    assert ext["npr"]["az000"]["extent"] == pytest.approx(83 / 224, abs=0.01)
    assert ext["npr"]["az075"]["extent"] == pytest.approx(143 / 224, abs=0.01)
    lo, hi = ext["npr"]["az000"]["extent_range"]
    assert 81 / 224 <= lo < hi <= 88 / 224 and ext["npr"]["az000"]["centre_radius"] < 0.02


def test_merge_weights_shards_by_views():
    a = {"extents": {"npr": {"az000": {"extent": 0.6, "centre": [0.0, 0.1], "views": 1}}},
         "distances": {"pairs": 2, "between": "x", "median": 1.0, "p95": 2.0, "max": 3.0}, "gallery_normalized": False}
    b = {"extents": {"npr": {"az000": {"extent": 0.9, "centre": [0.3, 0.1], "views": 2}}},
         "distances": {"pairs": 2, "between": "x", "median": 2.0, "p95": 4.0, "max": 5.0}, "gallery_normalized": False}
    m = merge([a, b])
    assert m["extents"]["npr"]["az000"] == {"extent": 0.8, "centre": [0.2, 0.1], "views": 3}  # no spread: none
    a["extents"]["npr"]["az000"].update(extent_range=[0.5, 0.7], centre_radius=0.1)
    b["extents"]["npr"]["az000"].update(extent_range=[0.6, 0.95], centre_radius=0.05)
    assert merge([a, b])["extents"]["npr"]["az000"] == {"extent": 0.8, "centre": [0.2, 0.1], "views": 3,
                                                        "extent_range": [0.5, 0.95], "centre_radius": 0.1}
    assert m["distances"]["max"] == 5.0 and m["distances"]["median"] == 1.5 and m["gallery_normalized"] is False


def test_old_index_fallbacks(index32, tmp_path):
    """No stored calibration: extents measured from the image files when they exist, else the default with a note."""
    with FeatureStore(index32) as store:
        stored = store.calibration
        recs = store.records()
        old = SimpleNamespace(calibration={}, store=store, folder=index32)
        cal = Calibration(old)
        assert cal.target("npr", "az000").extent == pytest.approx(stored["extents"]["npr"]["az000"]["extent"])
        assert "measured from its image files" in cal.notes[0]
        assert cal.reference()["max"] == pytest.approx(stored["distances"]["max"])  # from the stored features
    gone = [ViewRecord(r.row, r.domain, r.shape, r.viewpoint, str(tmp_path / "gone.png"), r.sha256, r.segment,
                       r.position, r.checksum) for r in recs]
    cal = Calibration(SimpleNamespace(calibration={}, store=SimpleNamespace(records=lambda: gone), folder=index32))
    assert cal.target("npr") == Target(DEFAULT_EXTENT)
    assert f"default {DEFAULT_EXTENT}" in cal.notes[0]


def test_warning_threshold():
    cal = Calibration(SimpleNamespace(calibration={"distances": {"pairs": 3, "between": "x", "median": 1.0,
                                                                  "p95": 1.5, "max": 2.0}}))
    assert cal.warning(2.0 * WARN_FACTOR) is None
    assert "unlike the gallery" in cal.warning(2.0 * WARN_FACTOR * 1.01)
    assert cal.warning(None) is None


# ------------------------------------------------------------------ through the index and the CLI
def test_index_stores_calibration(index32, dataset):
    with FeatureStore(index32) as store:
        cal = store.calibration
    assert set(cal["extents"]) == {"sketch", "npr", "rgb"}
    assert set(cal["extents"]["npr"]) == {"az000", "az030", "az075"}
    for e in cal["extents"]["npr"].values():
        assert 0.2 < e["extent_range"][0] <= e["extent"] <= e["extent_range"][1] < 1.0
        assert e["views"] == 6 and len(e["centre"]) == 2 and e["centre_radius"] >= 0
    assert cal["distances"]["pairs"] > 0 and 0 < cal["distances"]["median"] <= cal["distances"]["max"]
    assert cal["gallery_normalized"] is False


def query_json(index, *args):
    return json.loads(run_cli(["query", *args, "--index", index, "-k", "3", "--precision", "fp32", "--json"]).stdout)


def top(res):
    return [(h["shape"], h["viewpoint"]) for h in res["hits"]]


def test_query_frames_sketches_at_any_scale(dataset, index32, tmp_path):
    src = Image.open(dataset / "sketch" / "shape03" / "az000.png").convert("RGB")
    small = Image.new("RGB", (224, 224), "white")
    small.paste(src.resize((112, 112), Image.LANCZOS), (10, 100))           # half size, off-centre
    wide = Image.new("RGB", (448, 224), "white")
    wide.paste(src, (224, 0))                                                # 2:1 canvas
    ref = query_json(index32, dataset / "sketch" / "shape03" / "az000.png")
    assert ref["normalized"] is True and ref["warning"] is None and ref["hits"][0]["shape"] == "shape03"
    for name, im in (("small.png", small), ("wide.png", wide)):
        im.save(tmp_path / name)
        got = query_json(index32, tmp_path / name)
        assert got["hits"][0]["shape"] == "shape03", (name, top(got))
        assert got["warning"] is None


def test_no_normalize_keeps_the_raw_path(dataset, index32, encoder32):
    from retrieval.images import load_image
    from retrieval.index import ShapeIndex
    from retrieval.search import QueryEngine

    path = dataset / "sketch" / "shape02" / "az030.png"
    got = query_json(index32, path, "--no-normalize")
    assert got["normalized"] is False
    with ShapeIndex(index32, gpu="never") as si:
        hits = QueryEngine(si, encoder32).query_features(encoder32.encode_images([load_image(path)])[0], k=3)
    assert [(h.shape, h.viewpoint) for h in hits] == top(got)
    np.testing.assert_allclose([h.distance for h in hits], [h["distance"] for h in got["hits"]], rtol=1e-5)


def test_inverted_and_transparent_sketches_are_read_as_drawn(dataset, index32, tmp_path):
    path = dataset / "sketch" / "shape04" / "az075.png"
    ref = query_json(index32, path)
    src = Image.open(path).convert("L")
    ImageOps.invert(src).save(tmp_path / "dark.png")
    rgba = Image.new("RGBA", src.size, (255, 255, 255, 0))
    rgba.putalpha(ImageOps.invert(src))  # white strokes, transparent paper
    rgba.save(tmp_path / "clear.png")
    for name in ("dark.png", "clear.png"):
        got = query_json(index32, tmp_path / name)
        assert top(got) == top(ref), name
        assert got["warning"] is None


def test_far_distance_warns_in_json_and_text(dataset, tmp_path):
    """On a sketch + npr index (its reference: sketch↔npr distances; the test index's filled rgb polygons are
    so unlike line drawings that they would stretch it), raw white-on-black and noise warn, a sketch does not."""
    index = tmp_path / "sketch-npr"
    run_cli(["index", dataset, "--out", index, "--domains", "sketch,npr", "--weights", "untrained", "--seed", "0",
             "--precision", "fp32", "--feature-dtype", "float32", "--quiet"])
    src = Image.open(dataset / "sketch" / "shape04" / "az075.png").convert("L")
    ImageOps.invert(src).save(tmp_path / "dark.png")
    sketch = dataset / "sketch" / "shape04" / "az075.png"
    assert query_json(index, sketch, "--no-normalize")["warning"] is None  # a gallery sketch as drawn
    # inverted back, the dark image is the sketch again: the same best distance as the sketch itself
    framed, dark = query_json(index, sketch), query_json(index, tmp_path / "dark.png")
    assert dark["hits"][0]["distance"] == pytest.approx(framed["hits"][0]["distance"], rel=1e-5)
    got = query_json(index, tmp_path / "dark.png", "--no-normalize")  # white lines on black, taken as they are
    assert got["warning"] and "unlike the gallery" in got["warning"]
    assert got["hits"][0]["distance"] > 10 * dark["hits"][0]["distance"]
    text = run_cli(["query", tmp_path / "dark.png", "--no-normalize", "--index", index, "-k", "3",
                    "--precision", "fp32"]).stdout
    assert "\nwarning: best distance" in text
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (224, 224, 3), dtype=np.uint8)).save(tmp_path / "noise.png")
    assert query_json(index, tmp_path / "noise.png")["warning"]


def test_blank_query_is_an_error(index32, tmp_path):
    Image.new("RGB", (300, 200), "white").save(tmp_path / "blank.png")
    res = run_cli(["query", tmp_path / "blank.png", "--index", index32], ok=False)
    assert res.exit_code == 1
    assert res.stderr.strip() == f"error: {tmp_path / 'blank.png'}: blank sketch (no ink found: every pixel is " \
                                 "within 25 grey levels of the paper or in a speck)"


def test_view_queries_are_framed_per_viewpoint(dataset, index32, encoder32, tmp_path):
    """--view az075=q.png is framed to npr az075's extent (not the domain's median): its per-view distances
    are those of that framed image."""
    from retrieval.index import ShapeIndex
    from retrieval.search import QueryEngine

    src = Image.open(dataset / "sketch" / "shape01" / "az075.png").convert("RGB")
    small = Image.new("RGB", (300, 224), "white")
    small.paste(src.resize((100, 100)), (0, 0))
    small.save(tmp_path / "q.png")
    got = query_json(index32, "--view", f"az075={tmp_path / 'q.png'}",
                     "--view", f"az000={dataset / 'sketch' / 'shape01' / 'az000.png'}")
    assert got["hits"][0]["shape"] == "shape01" and got["warning"] is None
    with ShapeIndex(index32, gpu="never") as si:
        eng = QueryEngine(si, encoder32)
        assert eng.calibration.target("npr", "az075") != eng.calibration.target("npr")
        framed, median = encoder32.encode_images([eng.prepare(tmp_path / "q.png", "npr", vp) for vp in ("az075", None)])
        rows = [si.row_of("npr", h["shape"], "az075") for h in got["hits"]]
        want = si.exact_distances("npr", "az075", framed, np.asarray(rows))
        other = si.exact_distances("npr", "az075", median, np.asarray(rows))
    np.testing.assert_allclose([h["per_view"]["az075"] for h in got["hits"]], want, rtol=1e-5)
    assert not np.allclose(want, other, rtol=1e-3)


def test_gallery_normalize_option(dataset, tmp_path):
    out = tmp_path / "framed"
    run_cli(["index", dataset, "--out", out, "--domains", "npr", "--weights", "untrained", "--seed", "0",
             "--precision", "fp32", "--normalize", "--quiet"])
    with FeatureStore(out) as store:
        assert store.calibration["gallery_normalized"] is True
        e = store.calibration["extents"]["npr"]["az000"]
        assert e["extent_range"] == [e["extent"]] * 2 and e["centre_radius"] == 0  # framed: every sketch framed
    res = run_cli(["index", dataset, "--out", out, "--domains", "npr", "--weights", "untrained", "--seed", "0",
                   "--precision", "fp32", "--quiet"], ok=False)
    assert res.exit_code == 1 and "embedded with --normalize" in res.stderr
    got = query_json(out, dataset / "sketch" / "shape05" / "az000.png")
    assert got["hits"][0]["shape"] == "shape05"


def test_sharded_index_exposes_calibration(dataset, index32, tmp_path):
    """Every shard measures the whole dataset: a sharded index frames queries as the single index does."""
    from retrieval.index import ShapeIndex

    out = tmp_path / "sharded"
    run_cli(["index", dataset, "--out", out, "--domains", "npr,sketch", "--shards", "2", "--weights", "untrained",
             "--seed", "0", "--precision", "fp32", "--quiet"])
    with ShapeIndex(out, gpu="never") as si:
        cal = si.calibration
    assert set(cal["extents"]) == {"npr", "sketch"}
    assert cal["distances"]["pairs"] > 0
    with FeatureStore(index32) as store:
        single = store.calibration["extents"]
    for d in ("npr", "sketch"):
        for vp, e in single[d].items():
            assert {k: v for k, v in cal["extents"][d][vp].items() if k != "views"} == \
                {k: v for k, v in e.items() if k != "views"}


def test_remote_shard_table_carries_calibration(index32):
    """A Ray shard actor's table hands the calibration to the caller's `_RemoteStore` (no Ray needed here)."""
    from retrieval.cluster import _RemoteStore, _ShardActor

    actor = _ShardActor(str(index32))
    try:
        store = _RemoteStore(None, actor.table())
    finally:
        actor.index.close()
    with FeatureStore(index32) as local:
        assert store.calibration == local.calibration and store.calibration["extents"]
