"""Orientation conventions: az000 looks at the object's front whatever the file's convention,
the azimuth sign turns the other way, and one dataset never mixes conventions."""
from __future__ import annotations

import json

import numpy as np
import pytest
import trimesh

from retrieval.errors import ConfigError
from retrieval.render import RenderSettings, render_dataset, render_rgb
from retrieval.render.orientation import resolve
from retrieval.synth import generate_shape
from retrieval.viewpoints import Viewpoint

from .conftest import run_cli

SMALL = dict(size=64, supersample=2)
RED, GREEN, BLUE, GREY = (230, 20, 20), (20, 200, 20), (20, 20, 230), (128, 128, 128)


def coloured_cube() -> trimesh.Trimesh:
    """A cube whose -Z face is red, +X face green, -X face blue, the others grey."""
    cube = trimesh.creation.box(extents=(1.0, 1.0, 1.0))
    colours = np.tile(np.array([*GREY, 255], dtype=np.uint8), (len(cube.faces), 1))
    n = cube.face_normals
    for axis, sign, c in ((2, -1, RED), (0, 1, GREEN), (0, -1, BLUE)):
        colours[n[:, axis] * sign > 0.9, :3] = c
    cube.visual.face_colors = colours
    return cube


def dominant(img) -> str:
    """Which of red/green/blue covers most of the image's coloured pixels."""
    a = np.asarray(img).astype(int)
    counts = {"red": ((a[..., 0] > 100) & (a[..., 1] < 60) & (a[..., 2] < 60)).sum(),
              "green": ((a[..., 1] > 90) & (a[..., 0] < 60) & (a[..., 2] < 60)).sum(),
              "blue": ((a[..., 2] > 100) & (a[..., 0] < 60) & (a[..., 1] < 60)).sum()}
    return max(counts, key=counts.get) if max(counts.values()) > 50 else "none"


@pytest.mark.parametrize("convention,want", [("shapenet-v2", "red"), ("shapenet-v1", "green")])
def test_az000_shows_the_front_face(convention, want):
    front, up = resolve(convention)
    img = render_rgb(coloured_cube(), Viewpoint("az000", 0.0, 10.0), RenderSettings(front=front, up=up, **SMALL))
    assert dominant(img) == want


def test_azimuth_sign_turns_towards_the_left_or_right():
    # shapenet-v2: front -Z, up +Y, so the object's right is +X (green) and its left -X (blue)
    side = Viewpoint("az075", 75.0, 10.0)
    left = render_rgb(coloured_cube(), side, RenderSettings(**SMALL))
    right = render_rgb(coloured_cube(), side, RenderSettings(azimuth_sign=-1, **SMALL))
    assert dominant(left) == "blue" and dominant(right) == "green"


def two_part_chair() -> trimesh.Trimesh:
    """A seat with a red top and a tall blue backrest at +Z: a ShapeNet v2 chair (its front is -Z)."""
    seat = trimesh.creation.box(extents=(1.0, 0.1, 1.0))
    seat.apply_translation((0, 0.5, 0))
    back = trimesh.creation.box(extents=(1.04, 1.2, 0.1))
    back.apply_translation((0, 1.15, 0.47))
    colours = np.tile(np.array([*GREY, 255], dtype=np.uint8), (len(seat.faces), 1))
    colours[seat.face_normals[:, 1] > 0.9, :3] = RED
    seat.visual.face_colors = colours
    back.visual.face_colors = [*BLUE, 255]
    return trimesh.util.concatenate([seat, back])


def test_chair_seat_in_front_of_backrest_at_az000():
    s = RenderSettings(**SMALL)
    front = render_rgb(two_part_chair(), Viewpoint("az000", 0.0, 10.0), s)
    behind = render_rgb(two_part_chair(), Viewpoint("az180", 180.0, 10.0), s)
    a, b = np.asarray(front).astype(int), np.asarray(behind).astype(int)
    red = lambda x: ((x[..., 0] > 100) & (x[..., 1] < 60) & (x[..., 2] < 60)).sum()  # noqa: E731
    assert red(a) > 100, "the seat's top should be seen in front of the backrest"
    assert red(b) < 10, "from behind, the backrest hides the seat"


def test_z_up_convention():
    """The same chair exported Z-up (front -Y, as Blender's front view): seat seen at az000, upright."""
    to_z_up = np.eye(4)
    to_z_up[:3, :3] = [[-1, 0, 0], [0, 0, 1], [0, 1, 0]]  # v2 -> z-up: -Z -> -Y, +Y -> +Z (a rotation)
    chair = two_part_chair()
    chair.apply_transform(to_z_up)
    s = RenderSettings(front="-y", up="+z", **SMALL)
    a = np.asarray(render_rgb(chair, Viewpoint("az000", 0.0, 10.0), s)).astype(int)
    b = np.asarray(render_rgb(chair, Viewpoint("az180", 180.0, 10.0), s)).astype(int)
    red = lambda x: ((x[..., 0] > 100) & (x[..., 1] < 60) & (x[..., 2] < 60))  # noqa: E731
    assert red(a).sum() > 100 and red(b).sum() < 10
    rows = np.nonzero(red(a).any(axis=1))[0]
    blue_rows = np.nonzero(((a[..., 2] > 100) & (a[..., 0] < 60)).any(axis=1))[0]
    assert blue_rows.min() < rows.min(), "upright: the backrest rises above the seat"


def test_demo_chairs_face_minus_z_like_shapenet_v2():
    """The demo generator's chairs render with the seat towards the az000 camera under the default."""
    mesh = generate_shape("chair", 3, seed=0)
    top = mesh.vertices[mesh.vertices[:, 1] > mesh.vertices[:, 1].max() - 0.05]
    assert top[:, 2].mean() > 0  # backrest at +Z, so the front is -Z


def test_bad_axes_and_mixing_conventions(tmp_path):
    with pytest.raises(ConfigError, match="same axis"):
        RenderSettings(front="+y", up="-y")
    with pytest.raises(ConfigError, match="not an axis"):
        RenderSettings(front="+w")
    meshes = tmp_path / "m"
    meshes.mkdir()
    coloured_cube().export(meshes / "cube.ply")
    out = tmp_path / "data"
    render_dataset(meshes, out, [Viewpoint("az000", 0.0)], RenderSettings(**SMALL), workers=1, progress=False)
    meta = json.loads((out / "dataset.json").read_text())
    orient = meta["render"]["orientation"]
    assert (orient["convention"], orient["front"], orient["up"], orient["azimuth_sign"]) == ("shapenet-v2", "-z",
                                                                                          "+y", 1)
    assert "left" in meta["axis_convention"]
    with pytest.raises(ConfigError, match="cannot mix conventions"):
        render_dataset(meshes, out, [Viewpoint("az000", 0.0)], RenderSettings(front="+x", **SMALL), workers=1,
                       progress=False)
    res = run_cli(["render", meshes, "--out", out, "--convention", "shapenet-v1", "--viewpoints", "0",
                   "--size", "64", "--workers", "1", "--quiet"], ok=False)
    assert res.exit_code == 1 and "dataset.json" in res.output and "cannot mix" in res.output
    res = run_cli(["render", meshes, "--out", tmp_path / "o2", "--front", "+q", "--quiet"], ok=False)
    assert res.exit_code == 1 and "'+q'" in res.output and "not an axis" in res.output
