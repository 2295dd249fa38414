"""The embedded demo-data generator: procedural shapes, synthetic sketches, the demo dataset."""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pytest
from PIL import Image, ImageDraw
from scipy.ndimage import gaussian_filter

from retrieval.synth import (CATEGORIES, DEMO_SMALL_COUNTS, STYLES, generate_shape, generate_shape_spec,
                             generate_shapes, make_demo_dataset, parse_shape_id, resolve_style, shape_id,
                             simplify_polyline, sketch_polylines, sketch_seed, sketchify)
from retrieval.viewpoints import DEFAULT_VIEWPOINTS


def _render_api():
    import retrieval.render as render

    return render


@dataclass
class _Stroke:  # same fields as retrieval.render.Stroke
    points: np.ndarray
    kind: str


def _chair_like_strokes():
    """A hand-made line drawing of a chair-ish object at 224 px."""
    def poly(pts, kind="silhouette"):
        return _Stroke(np.asarray(pts, float), kind)
    return [
        poly([[70, 30], [150, 30], [150, 120], [70, 120], [70, 30]]),                     # back
        poly([[55, 120], [170, 120], [170, 136], [55, 136], [55, 120]]),                  # seat
        poly([[60, 136], [60, 205]]), poly([[165, 136], [165, 205]]),                     # legs
        poly([[80, 136], [80, 190]]), poly([[145, 136], [145, 190]]),
        poly([[70, 60], [150, 60]], "crease"), poly([[70, 90], [150, 90]], "crease"),     # slats
        poly([[60, 170], [165, 170]], "border"),
        poly(np.c_[110 + 20 * np.cos(np.linspace(0, 2 * np.pi, 60)), 75 + 8 * np.sin(np.linspace(0, 2 * np.pi, 60))],
             "crease"),
    ]


def _draw_clean(strokes, size=224, width=1.35, ss=4):
    img = Image.new("L", (size * ss, size * ss), 255)
    d = ImageDraw.Draw(img)
    for s in strokes:
        d.line([tuple(p) for p in (s.points * ss).tolist()], fill=0, width=int(round(width * ss)))
    return img.resize((size, size), Image.BOX)


def _ink(img) -> np.ndarray:
    return 1.0 - np.asarray(img.convert("L"), np.float64) / 255.0


def _blur_corr(a, b, sigma=4.0) -> float:
    x, y = gaussian_filter(_ink(a), sigma).ravel(), gaussian_filter(_ink(b), sigma).ravel()
    return float(np.corrcoef(x, y)[0, 1])


def _blur_iou(a, b, sigma=4.0) -> float:
    x, y = gaussian_filter(_ink(a), sigma), gaussian_filter(_ink(b), sigma)
    mx, my = x > 0.25 * x.max(), y > 0.25 * y.max()
    return float((mx & my).sum() / max(1, (mx | my).sum()))


# --------------------------------------------------------------------------- shapes

def test_generate_shape_is_deterministic():
    for cat in CATEGORIES:
        a, b = generate_shape(cat, 3, seed=11), generate_shape(cat, 3, seed=11)
        assert np.array_equal(a.vertices, b.vertices) and np.array_equal(a.faces, b.faces)
        c = generate_shape(cat, 4, seed=11)
        d = generate_shape(cat, 3, seed=12)
        for other in (c, d):
            assert other.vertices.shape != a.vertices.shape or not np.allclose(other.vertices, a.vertices)


@pytest.mark.parametrize("category", CATEGORIES)
def test_every_category_yields_valid_meshes(category):
    shapes = generate_shapes(category, 6, seed=0)
    assert list(shapes) == [shape_id(category, i) for i in range(6)]
    for sid, m in shapes.items():
        assert len(m.faces) > 20 and len(m.vertices) > 20
        assert np.isfinite(m.vertices).all()
        lo, hi = m.bounds
        assert (hi - lo).min() > 1e-3, sid
        assert lo[1] > -0.05, f"{sid} should stand on the floor (y = 0)"
        assert m.metadata["shape_id"] == sid and m.metadata["category"] == category
        assert parse_shape_id(sid) == (category, int(sid.rsplit("_", 1)[1]))


def test_chairs_face_minus_z_and_vary_in_parts():
    specs = [generate_shape_spec("chair", i, seed=0) for i in range(40)]
    for s in specs:
        v = s.mesh.vertices
        top = v[v[:, 1] > v[:, 1].max() - 0.05]
        assert top[:, 2].mean() > 0.0, f"{s.shape_id}: the back should be at +Z (front faces -Z, ShapeNet v2)"
    legs = {s.params["legs"] for s in specs}
    backs = {s.params["back"] for s in specs}
    assert legs == {"straight", "tapered", "splayed", "pedestal", "sled"}
    assert len(backs) >= 4
    assert {True, False} <= {s.params["arms"] for s in specs}
    heights = [s.params["seat_height"] for s in specs]
    assert max(heights) - min(heights) > 0.06
    for cat, key in (("table", "base"), ("lamp", "stem"), ("airplane", "engines")):
        assert len({generate_shape_spec(cat, i, 0).params[key] for i in range(20)}) >= 3, cat


def test_unknown_category_is_rejected():
    with pytest.raises(ValueError, match="unknown shape category"):
        generate_shape("sofa_bed", 0)
    with pytest.raises(ValueError):
        parse_shape_id("foo")


def test_every_category_renders():
    render = _render_api()
    settings = render.RenderSettings(size=96)
    vp = DEFAULT_VIEWPOINTS[1]
    for cat in CATEGORIES:
        for i in range(2):
            views = render.render_views(generate_shape(cat, i, 0), [vp], settings, domains=("npr", "rgb"))
            for dom in ("npr", "rgb"):
                a = np.asarray(views[(dom, vp.name)].convert("L"))
                assert a.shape == (96, 96)
                assert (a < 200).mean() > 0.005, f"{cat} {i} {dom}: nearly white"


# --------------------------------------------------------------------------- sketches

def test_style_names_and_levels():
    assert resolve_style("clean") == 0.15 and resolve_style("medium") == 0.5 and resolve_style("abstract") == 0.9
    assert resolve_style(0.3) == 0.3 and resolve_style("0.7") == 0.7
    for bad in ("scribbly", 1.5, -0.1, None):
        with pytest.raises(ValueError):
            resolve_style(bad)


def test_douglas_peucker():
    t = np.linspace(0, 1, 200)
    line = np.c_[t * 100, np.sin(t * 3) * 0.01]
    assert len(simplify_polyline(line, 0.5)) == 2
    wave = np.c_[t * 100, np.sin(t * 12) * 10]
    assert 2 < len(simplify_polyline(wave, 3.0)) < len(simplify_polyline(wave, 0.3)) < 200


def test_sketch_is_deterministic_and_seed_dependent():
    strokes = _chair_like_strokes()
    a = np.asarray(sketchify(strokes, 224, "medium", seed=5))
    b = np.asarray(sketchify(strokes, 224, "medium", seed=5))
    c = np.asarray(sketchify(strokes, 224, "medium", seed=6))
    assert a.shape == (224, 224) and np.array_equal(a, b) and not np.array_equal(a, c)
    assert sketch_seed(0, "chair_0001", "az000") == sketch_seed(0, "chair_0001", "az000")
    assert len({sketch_seed(0, "chair_0001", "az000"), sketch_seed(0, "chair_0001", "az030"),
                sketch_seed(1, "chair_0001", "az000"), sketch_seed(0, "chair_0002", "az000")}) == 4


def test_sketch_image_properties():
    img = sketchify(_chair_like_strokes(), 224, "clean", seed=0)
    a = np.asarray(img)
    assert img.mode == "L" and img.size == (224, 224)
    assert a.min() < 80 and np.median(a) == 255          # dark lines on white
    assert ((a > 20) & (a < 235)).sum() > 200            # anti-aliased edges
    assert sketchify(_chair_like_strokes(), 128, "clean", seed=0, mode="RGB").size == (128, 128)
    assert np.asarray(sketchify([], 64, "medium", 0)).min() == 255  # nothing to draw: a blank page


def test_sketch_keeps_layout_but_differs_and_abstract_drifts_further():
    strokes = _chair_like_strokes()
    ref = _draw_clean(strokes)
    corr = {}
    for style in ("clean", "medium", "abstract"):
        cs = []
        for seed in range(6):
            sk = sketchify(strokes, 224, style, seed)
            diff = np.abs(_ink(sk) - _ink(ref))
            assert (diff > 0.3).mean() > 0.01, "a sketch should not be the clean drawing"
            cs.append(_blur_corr(sk, ref))
        corr[style] = float(np.mean(cs))
        assert min(cs) > 0.35, (style, cs)
    assert corr["clean"] > corr["medium"] > corr["abstract"], corr


def test_abstract_drops_more_lines_and_simplifies_more():
    strokes = _chair_like_strokes()

    def stats(style):
        n_lines, ink = [], []
        for seed in range(8):
            lines = sketch_polylines(strokes, 224, style, seed)
            assert all(np.isfinite(p).all() and len(p) == len(w) and 0 <= g <= 255 for p, w, g in lines)
            n_lines.append(len(lines))
            ink.append(_ink(sketchify(strokes, 224, style, seed)).sum())
        return np.mean(n_lines), np.mean(ink)
    lines_clean, ink_clean = stats(0.0)
    lines_abstract, ink_abstract = stats(1.0)
    assert lines_clean >= len(strokes) * 0.8  # clean keeps (nearly) every line
    assert ink_abstract < ink_clean           # abstract drops lines: less ink overall


def test_sketch_of_rendered_strokes_keeps_the_npr_layout():
    render = _render_api()
    settings = render.RenderSettings()
    overlap = {s: [] for s in STYLES}
    for cat, i in (("chair", 0), ("chair", 1), ("table", 0), ("lamp", 0)):
        mesh = generate_shape(cat, i, 0)
        for vp in DEFAULT_VIEWPOINTS[:2]:
            strokes = render.visible_strokes(mesh, vp, settings)
            assert strokes and {s.kind for s in strokes} <= {"silhouette", "border", "crease"}
            npr = render.draw_strokes(strokes, settings)
            for style in STYLES:
                sk = sketchify(strokes, settings.size, style, sketch_seed(0, shape_id(cat, i), vp.name))
                assert sk.size == npr.size
                assert (np.abs(_ink(sk) - _ink(npr)) > 0.3).mean() > 0.005
                c, iou = _blur_corr(sk, npr), _blur_iou(sk, npr)
                assert c > 0.2 and iou > 0.1, (cat, i, vp.name, style, c, iou)
                overlap[style].append((c, iou))
    means = {s: np.mean(v, axis=0) for s, v in overlap.items()}
    assert means["clean"][0] > 0.8 and means["clean"][1] > 0.55, means
    assert means["abstract"][0] > 0.45 and means["abstract"][1] > 0.25, means
    for metric in (0, 1):  # correlation and IoU both fall as the style gets more abstract
        assert means["clean"][metric] > means["medium"][metric] > means["abstract"][metric], means


# --------------------------------------------------------------------------- demo dataset

def test_make_demo_dataset_writes_layout_and_resumes(tmp_path):
    _render_api()
    counts = {"chair": 2, "table": 1, "lamp": 1, "airplane": 1}
    out = tmp_path / "demo"
    s1 = make_demo_dataset(out, counts=counts, seed=3, size=96, workers=1, progress=False)
    ids = [shape_id(c, i) for c, n in counts.items() for i in range(n)]
    assert s1["shapes"] == 5 and s1["generated"] == 5 and s1["skipped"] == 0
    assert s1["files_written"] == 5 * 3 * 3
    for dom in ("sketch", "npr", "rgb"):
        for sid in ids:
            for vp in DEFAULT_VIEWPOINTS:
                p = out / dom / sid / f"{vp.name}.png"
                assert p.is_file(), p
                with Image.open(p) as im:
                    assert im.size == (96, 96)
    meta = json.loads((out / "dataset.json").read_text())
    assert meta["categories"] == {sid: sid.rsplit("_", 1)[0] for sid in ids}
    assert [v["name"] for v in meta["viewpoints"]] == ["az000", "az030", "az075"]
    assert "seed=3" in meta["source"] and "chair=2" in meta["source"]
    assert not list(out.rglob("*.tmp"))

    p = out / "sketch" / "chair_0000" / "az030.png"
    mtime, data = p.stat().st_mtime_ns, p.read_bytes()
    s2 = make_demo_dataset(out, counts=counts, seed=3, size=96, workers=1, progress=False)
    assert s2["generated"] == 0 and s2["skipped"] == 5 and s2["files_written"] == 0
    assert p.stat().st_mtime_ns == mtime

    # a missing file is regenerated, identically; other settings regenerate everything
    p.unlink()
    s3 = make_demo_dataset(out, counts=counts, seed=3, size=96, workers=1, progress=False)
    assert s3["generated"] == 1 and p.read_bytes() == data
    s4 = make_demo_dataset(out, counts=counts, seed=3, size=96, style="abstract", workers=1, progress=False)
    assert s4["generated"] == 5 and p.read_bytes() != data


def test_make_demo_dataset_pool_matches_inline(tmp_path):
    _render_api()
    counts = {"chair": 2, "lamp": 1}
    a = make_demo_dataset(tmp_path / "a", counts=counts, seed=1, size=64, workers=1, progress=False)
    b = make_demo_dataset(tmp_path / "b", counts=counts, seed=1, size=64, workers=2, progress=False)
    assert a["generated"] == b["generated"] == 3
    for f in sorted((tmp_path / "a").rglob("*.png")):
        assert f.read_bytes() == (tmp_path / "b" / f.relative_to(tmp_path / "a")).read_bytes(), f


def test_demo_small_counts_cover_every_category():
    assert set(DEMO_SMALL_COUNTS) == set(CATEGORIES)
    assert DEMO_SMALL_COUNTS["chair"] >= 4 and all(n >= 2 for n in DEMO_SMALL_COUNTS.values())
