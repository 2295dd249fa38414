"""Renderer options real meshes need (issue 12, section 3): OFF colours, --rgb-colors, one look per dataset,
--line-width 0 refused, the default number of workers."""
from __future__ import annotations

import numpy as np
import pytest
import trimesh

from retrieval.errors import ConfigError
from retrieval.render import RenderSettings, load_mesh, render_dataset, render_rgb
from retrieval.render.batch import default_workers
from retrieval.render.mesh import mesh_colors
from retrieval.viewpoints import DEFAULT_VIEWPOINTS

from .conftest import run_cli

VP = DEFAULT_VIEWPOINTS[1]
SMALL = RenderSettings(size=48, supersample=1)

RED_BLUE_OFF = """OFF
# two triangles, one red, one blue (face colours after the indices)
4 2 0
0 0 0
1 0 0
1 1 0
0 1 0
3 0 1 2 255 0 0
3 0 2 3 0 0 255
"""

COFF = """COFF
4 1 0
0 0 0 1.0 0.0 0.0 1.0
1 0 0 0.0 1.0 0.0 1.0
1 1 0 0.0 0.0 1.0 1.0
0 1 0 1.0 1.0 0.0 1.0
4 0 1 2 3
"""


def red_cube_off(path):
    """A cube whose every face is red, written as OFF with face colours (trimesh's OFF export drops them)."""
    box = trimesh.creation.box()
    lines = ["OFF", f"{len(box.vertices)} {len(box.faces)} 0"]
    lines += [" ".join(f"{x:.6f}" for x in v) for v in box.vertices]
    lines += [f"3 {a} {b} {c} 220 20 20" for a, b, c in box.faces]
    path.write_text("\n".join(lines) + "\n")
    return path


def test_off_face_and_vertex_colours_are_kept(tmp_path):
    (tmp_path / "rb.off").write_text(RED_BLUE_OFF)
    kind, values = mesh_colors(load_mesh(tmp_path / "rb.off"))
    assert kind == "face"
    np.testing.assert_allclose(values, [[1, 0, 0], [0, 0, 1]])
    (tmp_path / "v.off").write_text(COFF)
    m = load_mesh(tmp_path / "v.off")
    kind, values = mesh_colors(m)
    assert kind == "vertex" and len(m.faces) == 2  # the quad is split into two triangles
    np.testing.assert_allclose(values, [[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 0]])
    # an OFF without colours is read as before (trimesh), uncoloured
    trimesh.creation.box().export(tmp_path / "plain.off")
    assert mesh_colors(load_mesh(tmp_path / "plain.off")) is None


def test_rgb_colors_mesh_keeps_colours_uniform_gives_one_light_material(tmp_path):
    cube = load_mesh(red_cube_off(tmp_path / "red.off"))
    grey = trimesh.creation.box()
    px_mesh = np.asarray(render_rgb(cube, VP, SMALL)).astype(int)[24, 24]
    assert px_mesh[0] > 2 * px_mesh[1] and px_mesh[0] > 2 * px_mesh[2]
    uniform = RenderSettings(size=48, supersample=1, rgb_colors="uniform")
    a = np.asarray(render_rgb(cube, VP, uniform)).astype(int)
    b = np.asarray(render_rgb(grey, VP, SMALL)).astype(int)  # an uncoloured mesh: the light grey
    np.testing.assert_array_equal(a, b)
    assert RenderSettings(rgb_colors="uniform").fingerprint() != RenderSettings().fingerprint()
    with pytest.raises(ConfigError, match="rgb-colors"):
        RenderSettings(rgb_colors="bright")


def test_cli_rgb_colors_option(tmp_path):
    (tmp_path / "m").mkdir()
    red_cube_off(tmp_path / "m" / "cube.off")
    run_cli(["render", tmp_path / "m", "--out", tmp_path / "o", "--size", "32", "--supersample", "1",
             "--domains", "rgb", "--viewpoints", "30", "--rgb-colors", "uniform", "--quiet"])
    from PIL import Image
    px = np.asarray(Image.open(tmp_path / "o" / "rgb" / "cube" / "az030.png")).astype(int)
    fg = (px != 255).any(axis=2)
    assert fg.any() and (np.abs(px[fg, 0] - px[fg, 1]) <= 2).all()  # grey, not red


def test_rendering_into_a_dataset_made_with_other_settings_stops(tmp_path):
    src = red_cube_off(tmp_path / "cube.off")
    out = tmp_path / "ds"
    render_dataset(src, out, viewpoints=[VP], settings=RenderSettings(size=32, supersample=1), progress=False)
    with pytest.raises(ConfigError, match=r"size 32 -> 40"):
        render_dataset(src, out, viewpoints=[VP], settings=RenderSettings(size=40, supersample=1), progress=False)
    res = run_cli(["render", src, "--out", out, "--size", "40", "--supersample", "1", "--viewpoints", "30"], ok=False)
    assert res.exit_code == 1 and len(res.output.strip().splitlines()) == 1
    assert "dataset.json" in res.output and "size 32 -> 40" in res.output and "--out" in res.output
    # the same settings resume as before
    rep = render_dataset(src, out, viewpoints=[VP], settings=RenderSettings(size=32, supersample=1), progress=False)
    assert rep.skipped == ["cube"]


def test_line_width_zero_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="line-width"):
        RenderSettings(line_width=0)
    res = run_cli(["render", tmp_path, "--out", tmp_path / "o", "--line-width", "0"], ok=False)
    assert res.exit_code == 2 and res.output.startswith("error: ") and "--line-width" in res.output
    assert len(res.output.strip().splitlines()) == 1


@pytest.mark.parametrize("cores,want", [(1, 1), (2, 1), (4, 1), (8, 2), (16, 4), (64, 4)])
def test_default_workers(monkeypatch, cores, want):
    monkeypatch.setattr("retrieval.render.batch.available_cores", lambda: cores)
    assert default_workers() == want


def test_missing_mtl_renders_the_light_grey_of_an_uncoloured_mesh(tmp_path):
    """UVs with no .mtl beside them must not come out darker than a mesh without any colour."""
    box = trimesh.creation.box()
    lines = ["mtllib gone.mtl", "usemtl wood"]
    lines += [f"v {x:.6f} {y:.6f} {z:.6f}" for x, y, z in box.vertices]
    lines += [f"vt {u:.3f} {v:.3f}" for u, v in np.random.default_rng(0).random((len(box.vertices), 2))]
    lines += [f"f {a + 1}/{a + 1} {b + 1}/{b + 1} {c + 1}/{c + 1}" for a, b, c in box.faces]
    (tmp_path / "uv.obj").write_text("\n".join(lines) + "\n")
    uv = np.asarray(render_rgb(load_mesh(tmp_path / "uv.obj"), VP, SMALL)).astype(int)
    plain = np.asarray(render_rgb(box, VP, SMALL)).astype(int)
    assert np.abs(uv - plain).max() <= 1


def test_up_z_alone_means_a_z_up_file(tmp_path):
    import json

    from retrieval.render.orientation import resolve

    assert resolve(None, None, "z") == ("-y", "+z") == resolve("z-up")
    assert resolve(None, None, "-z") == ("+y", "-z")
    assert resolve(None, None, "+x") == ("-z", "+x")
    with pytest.raises(ConfigError, match="same axis"):
        resolve(None, "-z", "+z")  # an explicit front is never changed
    src = red_cube_off(tmp_path / "cube.off")
    run_cli(["render", src, "--out", tmp_path / "o", "--up", "z", "--size", "32", "--supersample", "1",
             "--viewpoints", "0", "--quiet"])
    orient = json.loads((tmp_path / "o" / "dataset.json").read_text())["render"]["orientation"]
    assert (orient["convention"], orient["front"], orient["up"]) == ("z-up", "-y", "+z")
