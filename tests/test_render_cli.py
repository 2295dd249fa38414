"""`cvret render` through the real CLI, and its output read by `cvret index` as it is."""
from __future__ import annotations

import json

import pytest
import trimesh

from .conftest import UNTRAINED, run_cli


@pytest.mark.slow
def test_render_cli_then_index(tmp_path):
    meshes = tmp_path / "meshes"
    meshes.mkdir()
    trimesh.creation.box(extents=(1.0, 0.5, 0.3)).export(meshes / "box.obj")
    trimesh.creation.icosphere(subdivisions=2).export(meshes / "ball.ply")
    (meshes / "broken.obj").write_text("v 0 0 nan\nv 1 0 0\nv 0 1 0\nf 1 2 3\n")
    out = tmp_path / "data"
    res = run_cli(["render", meshes, "--out", out, "--viewpoints", "0,30,75", "--size", "96", "--supersample", "2",
                   "--workers", "1", "--quiet"])
    assert "rendered 2" in res.output and "failed 1" in res.output and "broken.obj" in res.output
    for dom in ("npr", "rgb"):
        for vp in ("az000", "az030", "az075"):
            assert (out / dom / "box" / f"{vp}.png").exists()
    meta = json.loads((out / "dataset.json").read_text())
    assert [v["azimuth"] for v in meta["viewpoints"]] == [0, 30, 75] and "axis_convention" in meta
    again = run_cli(["render", meshes, "--out", out, "--viewpoints", "0,30,75", "--size", "96", "--supersample", "2",
                     "--workers", "1", "--quiet"])
    assert "rendered 0, skipped 2" in again.output
    rep = json.loads(run_cli(["index", out, "--out", tmp_path / "idx", *UNTRAINED, "--quiet", "--json"]).stdout)
    assert rep["embedded"] == 2 * 2 * 3 and not rep["failed"]


def test_render_cli_bad_options(tmp_path):
    res = run_cli(["render", tmp_path, "--out", tmp_path / "o", "--viewpoints", "0,abc"], ok=False)
    assert res.exit_code == 2 and "abc" in res.output
