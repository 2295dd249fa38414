"""Renderer checks on meshes built in the test: geometry of the lines, hidden-line removal,
crease detection, determinism, and the batch renderer's failure handling and resuming."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import trimesh
from scipy import ndimage

from retrieval.errors import ConfigError, MeshError
from retrieval.render import (Camera, PreparedMesh, RenderSettings, draw_strokes, find_mesh_files, load_mesh,
                              normalize_mesh, render_dataset, render_mesh_to_dataset, render_npr, render_rgb,
                              render_views, visible_strokes)
from retrieval.viewpoints import DEFAULT_VIEWPOINTS, Viewpoint

# The meshes below are built in the cameras' own frame (front +Z, up +Y), so these geometric
# checks read them that way; the file conventions are tested in test_orientation.py. Their grey
# thresholds are for the flat tone (both tones ink the same pixels: test_line_tone.py).
S = RenderSettings(front="+z", up="+y", line_tone="flat")
VP30 = DEFAULT_VIEWPOINTS[1]


def chair() -> trimesh.Trimesh:
    """Seat, back and four cylindrical legs: separate primitives, like many CAD models."""
    def box(ext, c):
        b = trimesh.creation.box(extents=ext)
        b.apply_translation(c)
        return b
    parts = [box([1.0, 0.1, 1.0], [0, 0.5, 0]), box([1.0, 1.0, 0.1], [0, 1.05, -0.45])]
    for x in (-0.42, 0.42):
        for z in (-0.42, 0.42):
            leg = trimesh.creation.cylinder(radius=0.05, height=0.5, sections=16)
            leg.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2, [1, 0, 0]))
            leg.apply_translation([x, 0.225, z])
            parts.append(leg)
    return trimesh.util.concatenate(parts)


def samples(strokes, step=0.25):
    """Points every `step` px along the strokes."""
    out = []
    for st in strokes:
        for a, b in zip(st.points[:-1], st.points[1:]):
            n = max(1, int(np.ceil(np.linalg.norm(b - a) / step)))
            out.append(a + (b - a) * (np.arange(n + 1)[:, None] / n))
    return np.concatenate(out) if out else np.zeros((0, 2))


def test_camera_axis_convention():
    cam0 = Camera.from_viewpoint(Viewpoint("a", 0, 0), S)
    cam90 = Camera.from_viewpoint(Viewpoint("b", 90, 0), S)
    assert np.allclose(cam0.position, [0, 0, 1.5]) and np.allclose(cam90.position, [1.5, 0, 0], atol=1e-12)
    (xy,), _ = cam0.project(np.array([[0.3, 0.2, 0.0]]))
    assert xy[0] > 112 and xy[1] < 112  # +X right, +Y up (image y grows down)
    assert abs(S.fov_deg - np.degrees(2 * np.arctan(16 / 35))) < 1e-9


def test_outer_silhouette_on_rgb_mask_boundary():
    mesh = chair()
    pm = PreparedMesh(mesh, S)
    strokes = visible_strokes(pm, VP30, S)
    outer = [st for st in strokes if st.external]
    assert outer and all(st.kind in ("silhouette", "border") for st in outer)
    fg = np.asarray(render_rgb(pm, VP30, S)).min(axis=2) < 250
    boundary = fg & ~ndimage.binary_erosion(fg, border_value=0)
    # every outer-line point lies on the mask boundary (within 1.5 px at 224 px)
    pts = samples(outer)
    ix = np.clip(pts.astype(int), 0, S.size - 1)
    dist_to_boundary = ndimage.distance_transform_edt(~boundary)
    assert np.percentile(dist_to_boundary[ix[:, 1], ix[:, 0]], 99) <= 1.5
    assert dist_to_boundary[ix[:, 1], ix[:, 0]].max() <= 2.0
    # ... and the outer lines cover nearly all of the boundary
    hit = np.zeros_like(fg)
    hit[ix[:, 1], ix[:, 0]] = True
    covered = ndimage.distance_transform_edt(~hit)[boundary] <= 1.5
    assert covered.mean() > 0.97, covered.mean()
    # the drawn image agrees: dark pixels next to nearly every boundary pixel
    dark = np.asarray(draw_strokes(strokes, S)) < 160
    assert ndimage.binary_dilation(dark, iterations=1)[boundary].mean() > 0.97


def test_hidden_box_changes_nothing():
    outer = trimesh.creation.box(extents=[1.0, 0.8, 0.6])
    inner = trimesh.creation.box(extents=[0.5, 0.4, 0.3])
    inner.apply_translation([0.1, -0.05, 0.05])
    both = trimesh.util.concatenate([outer, inner])
    for vp in DEFAULT_VIEWPOINTS:
        a, b = np.asarray(render_npr(outer, vp, S)), np.asarray(render_npr(both, vp, S))
        assert np.array_equal(a, b), vp.name
    # the inner box alone does draw lines (so the test above is not vacuous)
    assert np.asarray(render_npr(inner, VP30, S)).min() < 64


def test_hidden_lines_removed_per_segment():
    """An occluder in front of the middle of a long edge cuts it into two visible pieces."""
    back = trimesh.creation.box(extents=[1.0, 0.3, 0.3])
    pole = trimesh.creation.box(extents=[0.1, 1.0, 0.1])
    pole.apply_translation([0.0, 0.0, 0.5])
    raw = trimesh.util.concatenate([back, pole])
    lo, hi = raw.bounds
    k = 2 * 0.56 / np.linalg.norm(hi - lo)
    mesh = normalize_mesh(raw)
    vp = Viewpoint("front", 0.0, 10.0)
    cam = Camera.from_viewpoint(vp, S)
    img = np.asarray(render_npr(mesh, vp, S))
    for x, want_dark in ((-0.35, True), (0.35, True), (-0.2, True), (0.0, False)):
        p = (np.array([x, 0.15, 0.15]) - (lo + hi) / 2) * k  # on the long box's top front edge
        (px,), _ = cam.project(p[None])
        c, r = int(px[0]), int(px[1])
        patch = img[r - 1:r + 2, c - 1:c + 2]
        assert (patch.min() < 128) == want_dark, (x, patch)


def test_crease_lines_on_cube_not_on_sphere():
    cube = trimesh.creation.box()
    strokes = visible_strokes(cube, VP30, S)
    creases = [st for st in strokes if st.kind == "crease"]
    # three inner edges visible (top-front, top-right, front vertical), each tens of pixels long
    assert sum(st.length for st in creases) > 100
    pm = PreparedMesh(cube, S)
    cam = Camera.from_viewpoint(VP30, S)
    corners = pm.mesh.vertices
    es = pm.edges
    seg = [cam.project(corners[[a, b]])[0] for a, b in np.asarray(cube.edges_unique)]
    for p in samples(creases, step=2.0):  # every crease point lies on a projected cube edge
        d = min(_point_segment_distance(p, a, b) for a, b in seg)
        assert d < 0.5
    assert len(es.edges) == 18  # 12 cube edges + 6 face diagonals, merged vertices

    sphere = trimesh.creation.icosphere(subdivisions=3)
    sph = visible_strokes(sphere, VP30, S)
    assert sph and all(st.kind == "silhouette" for st in sph)
    mask = np.asarray(render_rgb(sphere, VP30, S)).min(axis=2) < 250
    dark = np.asarray(render_npr(sphere, VP30, S)) < 200
    interior = ndimage.binary_erosion(mask, iterations=3)
    assert not (dark & interior).any()


def _point_segment_distance(p, a, b):
    ab = b - a
    t = np.clip(np.dot(p - a, ab) / max(np.dot(ab, ab), 1e-12), 0, 1)
    return float(np.linalg.norm(p - (a + t * ab)))


def test_chaining_closed_outline_and_robust_topology():
    sphere = trimesh.creation.icosphere(subdivisions=3)
    strokes = visible_strokes(sphere, VP30, S)
    assert len(strokes) == 1 and strokes[0].closed  # the whole contour is one closed polyline
    # inconsistent winding (half the faces flipped) and double-sided duplicates draw the same lines
    faces = sphere.faces.copy()
    faces[::2] = faces[::2, ::-1]
    flipped = trimesh.Trimesh(sphere.vertices, faces, process=False)
    doubled = trimesh.Trimesh(sphere.vertices, np.vstack([sphere.faces, sphere.faces[:, ::-1]]),
                              process=False)
    ref = np.asarray(render_npr(sphere, VP30, S))
    for m in (flipped, doubled):
        assert np.abs(np.asarray(render_npr(m, VP30, S)).astype(int) - ref).max() <= 8


def test_deterministic_and_shapes_of_outputs():
    mesh = chair()
    small = RenderSettings(size=96)
    a = render_views(mesh, DEFAULT_VIEWPOINTS, small)
    b = render_views(mesh, DEFAULT_VIEWPOINTS, small)
    assert set(a) == {(d, vp.name) for d in ("npr", "rgb") for vp in DEFAULT_VIEWPOINTS}
    for k in a:
        assert a[k].size == (96, 96)
        assert a[k].tobytes() == b[k].tobytes(), k
    assert a[("rgb", "az000")].mode == "RGB" and a[("npr", "az000")].mode == "L"
    sa = visible_strokes(mesh, VP30, S)
    sb = visible_strokes(mesh, VP30, S)
    assert [s.kind for s in sa] == [s.kind for s in sb]
    assert all(np.array_equal(x.points, y.points) for x, y in zip(sa, sb))
    assert RenderSettings(size=224).fingerprint() == RenderSettings().fingerprint() != small.fingerprint()
    assert S.fingerprint() != RenderSettings().fingerprint()  # the orientation is part of the fingerprint
    # render functions normalise: scale and position of the input do not matter
    moved = mesh.copy()
    moved.apply_scale(7.0)
    moved.apply_translation([3, -2, 5])
    assert np.abs(np.asarray(render_npr(moved, VP30, small)).astype(int)
                  - np.asarray(a[("npr", VP30.name)]).astype(int)).max() <= 32


def test_vertex_colours_used_in_rgb():
    box = trimesh.creation.box()
    box.visual.face_colors = np.tile([200, 30, 30, 255], (len(box.faces), 1))
    px = np.asarray(render_rgb(box, VP30, RenderSettings(size=64)))[32, 32]
    assert px[0] > 2 * px[1] and px[0] > 2 * px[2]


def test_load_mesh_errors(tmp_path):
    (tmp_path / "bad.obj").write_text("this is not a mesh\n")
    (tmp_path / "empty.off").write_bytes(b"")
    (tmp_path / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    for name, words in (("bad.obj", "no triangles"), ("empty.off", "empty"), ("nan.obj", "not finite"),
                        ("missing.stl", "does not exist")):
        with pytest.raises(MeshError) as e:
            load_mesh(tmp_path / name)
        msg = str(e.value)
        assert name in msg and words in msg and "\n" not in msg
    flat = trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]], process=False)
    with pytest.raises(MeshError, match="zero extent"):
        normalize_mesh(flat)


@pytest.mark.slow
def test_render_dataset_failures_resume_and_layout(tmp_path):
    src = tmp_path / "meshes"
    (src / "sub").mkdir(parents=True)
    trimesh.creation.box().export(src / "box.obj")
    trimesh.creation.icosphere(subdivisions=2).export(src / "ball.ply")
    trimesh.Scene([chair()]).export(src / "sub" / "chair.glb")
    (src / "bad.obj").write_text("this is not a mesh\n")
    (src / "empty.off").write_bytes(b"")
    (src / "nan.obj").write_text("v 0 0 0\nv 1 0 0\nv nan 1 0\nf 1 2 3\n")
    (src / "notes.txt").write_text("ignored: not a mesh extension")
    ids = dict((p.name, sid) for p, sid in find_mesh_files(src))
    assert ids["chair.glb"] == "sub__chair" and ids["box.obj"] == "box"

    out = tmp_path / "out"
    small = RenderSettings(size=64)
    rep = render_dataset(src, out, settings=small, workers=2, progress=False,
                         categories={"sub__chair": "chair"})
    assert sorted(rep.rendered) == ["ball", "box", "sub__chair"]
    assert sorted(os.path.basename(p) for p, _ in rep.failed) == ["bad.obj", "empty.off", "nan.obj"]
    assert all(os.path.basename(p) in msg for p, msg in rep.failed)
    assert "failed 3" in rep.summary()
    for d in ("npr", "rgb"):
        for sid in rep.rendered:
            for vp in DEFAULT_VIEWPOINTS:
                assert (out / d / sid / f"{vp.name}.png").is_file()
    assert not list(out.rglob("*.tmp"))
    meta = json.loads((out / "dataset.json").read_text())
    assert [v["name"] for v in meta["viewpoints"]] == ["az000", "az030", "az075"]
    assert meta["categories"] == {"sub__chair": "chair"} and "axis_convention" in meta
    assert meta["render"]["settings"]["size"] == 64

    from retrieval.dataset import discover
    ds = discover(out)
    assert len(ds.views) == 3 * 2 * 3 and ds.shapes == ["ball", "box", "sub__chair"]

    # resume: nothing to do; a deleted view or a touched source re-renders only that shape
    png = out / "rgb" / "box" / "az030.png"
    before = png.read_bytes()
    rep2 = render_dataset(src, out, settings=small, workers=1, progress=False)
    assert rep2.rendered == [] and sorted(rep2.skipped) == ["ball", "box", "sub__chair"]
    assert len(rep2.failed) == 3
    png.unlink()
    st = (src / "ball.ply").stat()
    os.utime(src / "ball.ply", ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    rep3 = render_dataset(src, out, settings=small, workers=1, progress=False)
    assert sorted(rep3.rendered) == ["ball", "box"] and rep3.skipped == ["sub__chair"]
    assert png.read_bytes() == before  # deterministic
    # other settings: refused (one dataset, one look), nothing rendered over the 64 px views
    with pytest.raises(ConfigError, match="size 64 -> 48"):
        render_dataset([src / "box.obj"], out, settings=RenderSettings(size=48), workers=1, progress=False,
                       domains=("npr",))
    assert png.read_bytes() == before


def test_render_mesh_to_dataset_resumes(tmp_path):
    small = RenderSettings(size=48)
    box = trimesh.creation.box()
    assert render_mesh_to_dataset(box, "demo box", tmp_path, settings=small) == "rendered"
    assert (tmp_path / "npr" / "demo_box" / "az075.png").is_file()
    assert render_mesh_to_dataset(box, "demo box", tmp_path, settings=small) == "skipped"
    box2 = box.copy()
    box2.apply_scale([1, 2, 1])
    assert render_mesh_to_dataset(box2, "demo box", tmp_path, settings=small) == "rendered"
    with pytest.raises(MeshError):
        flat = trimesh.Trimesh(np.zeros((3, 3)), [[0, 1, 2]], process=False)
        render_mesh_to_dataset(flat, "flat", tmp_path, settings=small)
