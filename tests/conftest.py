"""Shared fixtures: a small dataset drawn with PIL, and indexes built through the real CLI."""
from __future__ import annotations

import json
import math
import os
import tempfile
import zlib
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image, ImageDraw

from retrieval.cli import main
from retrieval.encoder import EncoderSpec, LayerEncoder

# The folded-trunk disk cache of this test run: fresh, so a stale user cache cannot hide a bug, and set in
# the environment so that the CLI processes the tests start share it.
os.environ["CVRET_CACHE_DIR"] = tempfile.mkdtemp(prefix="cvret-test-cache-")
# The ONNX query encoder is off for the suite (queries on torch, as the Python API's default, and no 7 s export
# per weights in every test that indexes): tests/test_portable.py and the start-up bench's test turn it on.
os.environ["CVRET_ONNX"] = "0"

VIEWPOINTS = ("az000", "az030", "az075")
AZIMUTHS = {"az000": 0.0, "az030": 30.0, "az075": 75.0}
UNTRAINED = ["--weights", "untrained", "--seed", "0"]


def shape_polygons(shape_idx: int, azimuth: float) -> list[list[tuple[float, float]]]:
    """A few random 'parts' per shape, squashed horizontally as the azimuth turns (a crude projection)."""
    rng = np.random.default_rng(1000 + shape_idx)
    parts = []
    for _ in range(3 + shape_idx % 3):
        cx, cy = rng.uniform(50, 174, 2)
        w, h = rng.uniform(15, 60, 2)
        parts.append((cx, cy, w, h, rng.uniform(0, math.pi)))
    squash = math.cos(math.radians(azimuth)) * 0.6 + 0.4
    polys = []
    for cx, cy, w, h, rot in parts:
        pts = []
        for a in np.linspace(0, 2 * math.pi, 5)[:-1] + rot:
            x = 112 + (cx - 112 + w * math.cos(a)) * squash
            y = cy + h * math.sin(a)
            pts.append((float(x), float(y)))
        polys.append(pts)
    return polys


def draw_view(shape_idx: int, viewpoint: str, domain: str) -> Image.Image:
    im = Image.new("RGB", (224, 224), "white")
    d = ImageDraw.Draw(im)
    # a stable seed: Python's hash() of a str changes per process (PYTHONHASHSEED), and so did the test data
    rng = np.random.default_rng([shape_idx, zlib.crc32(viewpoint.encode())])
    for poly in shape_polygons(shape_idx, AZIMUTHS[viewpoint]):
        if domain == "rgb":
            d.polygon(poly, fill=(120, 120, 140), outline=(60, 60, 60))
        elif domain == "npr":
            d.line(poly + [poly[0]], fill="black", width=2)
        else:  # sketch: jittered lines
            jit = [(x + rng.normal(0, 2), y + rng.normal(0, 2)) for x, y in poly]
            d.line(jit + [jit[0]], fill=(30, 30, 30), width=2)
    return im


def make_dataset(root: Path, n_shapes: int = 6, domains=("sketch", "npr", "rgb")) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    cats = {}
    for i in range(n_shapes):
        sid = f"shape{i:02d}"
        cats[sid] = "even" if i % 2 == 0 else "odd"
        for dom in domains:
            for vp in VIEWPOINTS:
                p = root / dom / sid / f"{vp}.png"
                p.parent.mkdir(parents=True, exist_ok=True)
                draw_view(i, vp, dom).save(p)
    (root / "dataset.json").write_text(json.dumps({
        "viewpoints": [{"name": n, "azimuth": a, "elevation": 10.0} for n, a in AZIMUTHS.items()],
        "categories": cats}))
    return root


def run_cli(args, ok=True, **kw):
    res = CliRunner().invoke(main, [str(a) for a in args], catch_exceptions=False, **kw)
    if ok and res.exit_code != 0:
        raise AssertionError(f"cvret {' '.join(map(str, args))} failed ({res.exit_code}):\n{res.output}")
    return res


@pytest.fixture(scope="session")
def dataset(tmp_path_factory) -> Path:
    return make_dataset(tmp_path_factory.mktemp("data") / "tiny")


@pytest.fixture(scope="session")
def index32(dataset, tmp_path_factory) -> Path:
    """fp32 compute, float32 store: exact self-retrieval is possible."""
    out = tmp_path_factory.mktemp("idx") / "tiny32"
    run_cli(["index", dataset, "--out", out, *UNTRAINED, "--precision", "fp32", "--feature-dtype", "float32",
             "--quiet"])
    return out


@pytest.fixture(scope="session")
def encoder32() -> LayerEncoder:
    """The fp32 encoder the test indexes are built with (untrained, seed 0), built once for the whole session."""
    return LayerEncoder(EncoderSpec("untrained", seed=0), device="cpu", precision="fp32")
