"""Line tone: the default Freestyle tone is lighter (closer to Blender's PNGs) and draws the
same lines as the flat tone."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from retrieval.errors import ConfigError
from retrieval.render import RenderSettings, render_views
from retrieval.render.npr import coverage_to_grey, mean_ink_grey
from retrieval.synth import generate_shape
from retrieval.viewpoints import DEFAULT_VIEWPOINTS

from .conftest import run_cli

FREESTYLE_MEAN_INK = 141.0  # mean ink grey of Blender 3.4.1 Freestyle PNGs (issue 16's measurement)


def test_coverage_to_grey_by_hand():
    cov = np.array([0.0, 0.5, 1.0, 0.25])
    assert coverage_to_grey(cov, "flat").tolist() == [255, 128, 0, 191]
    # sRGB of linear 0.5 is 0.7354 -> 188; of 0.75 is 0.8808 -> 225
    assert coverage_to_grey(cov, "freestyle").tolist() == [255, 188, 0, 225]


def chamfer(a: np.ndarray, b: np.ndarray) -> float:
    """Symmetric mean distance (px) from each ink pixel of one mask to the nearest of the other."""
    da, db = ndimage.distance_transform_edt(~a), ndimage.distance_transform_edt(~b)
    return float((db[a].mean() + da[b].mean()) / 2)


def test_freestyle_tone_is_lighter_and_keeps_the_geometry():
    mesh = generate_shape("chair", 3, seed=0)
    flat = render_views(mesh, DEFAULT_VIEWPOINTS, RenderSettings(line_tone="flat"), domains="npr")
    free = render_views(mesh, DEFAULT_VIEWPOINTS, RenderSettings(), domains="npr")
    for key in flat:
        f, g = np.asarray(flat[key]), np.asarray(free[key])
        a, b = f < 255, g < 255
        assert a.sum() > 500 and chamfer(a, b) < 0.05, key  # same lines
        assert (g >= f).all(), key                         # never darker anywhere
        mf, mg = mean_ink_grey(f), mean_ink_grey(g)
        assert mg > mf + 20, (key, mf, mg)
        assert abs(mg - FREESTYLE_MEAN_INK) < abs(mf - FREESTYLE_MEAN_INK), (key, mf, mg)


def test_line_tone_option(tmp_path):
    with pytest.raises(ConfigError, match="line-tone"):
        RenderSettings(line_tone="pencil")
    assert RenderSettings().line_tone == "freestyle"
    assert RenderSettings(line_tone="flat").fingerprint() != RenderSettings().fingerprint()
    meshes = tmp_path / "m"
    meshes.mkdir()
    generate_shape("chair", 1, seed=0).export(meshes / "chair.obj")
    greys = {}
    for tone in ("flat", "freestyle"):
        out = tmp_path / tone
        run_cli(["render", meshes, "--out", out, "--viewpoints", "0", "--size", "96", "--domains", "npr",
                 "--line-tone", tone, "--workers", "1", "--quiet"])
        from PIL import Image
        greys[tone] = mean_ink_grey(Image.open(out / "npr" / "chair" / "az000.png"))
    assert greys["freestyle"] > greys["flat"] + 20
