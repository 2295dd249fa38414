"""The ONNX query encoder (retrieval/portable.py): same features as torch's fp32 trunk, a cache that is never
trusted when damaged, and a `cvret query` that runs without importing torch."""
from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from retrieval import portable
from retrieval.encoder import EncoderSpec, LayerEncoder
from retrieval.errors import EncoderError
from retrieval.search import encoder_for_index, open_engine

from .conftest import run_cli

SMALL = EncoderSpec("untrained", layer="layer2", seed=11, image_size=64)  # quick to export and run


SESSION_CACHE = Path(os.environ["CVRET_CACHE_DIR"])  # conftest's


@pytest.fixture(autouse=True)
def onnx_on(monkeypatch):
    """conftest turns the ONNX encoder off for the rest of the suite; here it is what is tested."""
    monkeypatch.setenv("CVRET_ONNX", "1")


@pytest.fixture(scope="module", autouse=True)
def session_model(encoder32):
    """The ONNX model of the test indexes' weights (untrained, seed 0) in the session cache, exported once."""
    old = os.environ.get("CVRET_ONNX")
    os.environ["CVRET_ONNX"] = "1"
    try:
        portable.ensure_model(encoder32)
    finally:
        os.environ["CVRET_ONNX"] = old
    assert portable.read_model(encoder32.spec) is not None


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    """A cache holding SMALL's folded trunk and ONNX model, exported once for the module."""
    folder = tmp_path_factory.mktemp("small-cache")
    old = os.environ["CVRET_CACHE_DIR"], os.environ.get("CVRET_ONNX")
    os.environ["CVRET_CACHE_DIR"], os.environ["CVRET_ONNX"] = str(folder), "1"
    try:
        path = portable.ensure_model(LayerEncoder(SMALL, device="cpu", precision="fp32"))
    finally:
        os.environ["CVRET_CACHE_DIR"], os.environ["CVRET_ONNX"] = old
    assert path is not None and path.is_file() and path.with_suffix(".json").is_file()
    return folder


@pytest.fixture()
def cache(small_cache, tmp_path, monkeypatch) -> Path:
    """This test's own copy of `small_cache` (damaging it harms no other test)."""
    folder = tmp_path / "cache"
    shutil.copytree(small_cache, folder)
    monkeypatch.setenv("CVRET_CACHE_DIR", str(folder))
    return folder


def small_model(cache) -> tuple[LayerEncoder, Path]:
    paths = portable.model_paths(SMALL)
    assert paths is not None and paths[0].is_file()
    return LayerEncoder(SMALL, device="cpu", precision="fp32"), paths[0]


def test_onnx_features_equal_torch_fp32(cache):
    enc, _ = small_model(cache)
    onnx = portable.open_onnx_encoder(SMALL)
    assert onnx is not None and onnx.feature_shape == enc.feature_shape
    x = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    want, got = enc.encode_arrays(x), onnx.encode_arrays(x)
    assert got.shape == want.shape == (3, enc.feature_dim)
    rel = np.linalg.norm(got - want, axis=1) / np.linalg.norm(want, axis=1)
    assert rel.max() < 1e-5, rel
    # one image alone gives the same features as inside a batch (the batch dimension is dynamic)
    assert np.allclose(onnx.encode_arrays(x[1:2])[0], got[1], rtol=1e-5, atol=1e-7)
    assert onnx.fingerprint.diff(enc.fingerprint) == []


def test_ensure_model_writes_once(cache):
    enc, path = small_model(cache)
    before = path.stat().st_mtime_ns
    assert portable.ensure_model(enc) is None  # already cached: nothing written
    assert path.stat().st_mtime_ns == before


@pytest.mark.parametrize("damage", ["flip", "truncate", "foreign", "no-sidecar"])
def test_damaged_model_is_ignored(cache, damage, caplog):
    _, path = small_model(cache)
    side = path.with_suffix(".json")
    if damage == "flip":
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    elif damage == "truncate":
        path.write_bytes(path.read_bytes()[:-100])
    elif damage == "foreign":
        meta = json.loads(side.read_text())
        meta["key"]["weights"] = "untrained:seed=12"
        side.write_text(json.dumps(meta))
    else:
        side.unlink()
    with caplog.at_level(logging.WARNING, logger="retrieval.portable"):
        assert portable.read_model(SMALL) is None
        assert portable.open_onnx_encoder(SMALL) is None
    if damage != "no-sidecar":  # a model without its sidecar is an interrupted write: silently absent
        assert any("ignoring the cached ONNX model" in r.message for r in caplog.records)


def test_no_cache_means_no_model(monkeypatch):
    monkeypatch.setenv("CVRET_CACHE_DIR", "")
    assert portable.model_paths(SMALL) is None
    assert portable.ensure_model(LayerEncoder(SMALL, device="cpu", precision="fp32")) is None


def test_switched_off(cache, index32, dataset, monkeypatch):
    """CVRET_ONNX=0: the cached model is not used, none is written, and --backend onnx says why it cannot run."""
    monkeypatch.setenv("CVRET_ONNX", "0")
    assert portable.open_onnx_encoder(SMALL) is None
    assert portable.ensure_model(LayerEncoder(SMALL, device="cpu", precision="fp32"), verify=False) is None
    sketch = Path(dataset) / "sketch" / "shape01" / "az000.png"
    res = run_cli(["query", sketch, "--index", index32, "--backend", "onnx"], ok=False)
    assert res.exit_code == 1 and "CVRET_ONNX=0 turns the ONNX encoder off" in res.output


def test_backend_choice(index32, tmp_path, monkeypatch):
    """auto: torch while no model is cached, onnx once it is; torch always torch."""
    monkeypatch.setenv("CVRET_CACHE_DIR", str(tmp_path))
    shutil.copytree(SESSION_CACHE / "trunks", tmp_path / "trunks")  # the folded trunk, but no ONNX model
    assert isinstance(encoder_for_index(open_engine(index32).index, backend="auto"), LayerEncoder)
    shutil.copytree(SESSION_CACHE / "onnx", tmp_path / "onnx")
    assert isinstance(encoder_for_index(open_engine(index32).index, backend="auto"), portable.OnnxEncoder)
    assert isinstance(encoder_for_index(open_engine(index32).index, backend="torch"), LayerEncoder)
    # options the ONNX encoder cannot honour keep auto on torch, and make onnx an error
    assert isinstance(encoder_for_index(open_engine(index32).index, backend="auto", precision="bf16"), LayerEncoder)
    with pytest.raises(EncoderError, match="--precision bf16"):
        encoder_for_index(open_engine(index32).index, backend="onnx", precision="bf16")
    with pytest.raises(EncoderError, match="unknown backend"):
        encoder_for_index(open_engine(index32).index, backend="tensorrt")


def test_onnx_backend_without_cache_is_a_clear_error(dataset, index32, monkeypatch):
    monkeypatch.setenv("CVRET_CACHE_DIR", "")
    sketch = Path(dataset) / "sketch" / "shape01" / "az000.png"
    res = run_cli(["query", sketch, "--index", index32, "--backend", "onnx"], ok=False)
    assert res.exit_code == 1
    assert res.output.strip().splitlines()[-1] == ("error: --backend onnx needs the cvret cache for its model, and "
                                                   "CVRET_CACHE_DIR is empty")
    res = run_cli(["query", sketch, "--index", index32, "--backend", "onnx", "--device", "cuda"], ok=False)
    assert res.exit_code == 1 and "--device cuda" in res.output


def test_onnx_backend_writes_a_missing_model(small_cache, tmp_path, monkeypatch):
    from retrieval.search import _onnx_encoder

    monkeypatch.setenv("CVRET_CACHE_DIR", str(tmp_path))
    shutil.copytree(small_cache / "trunks", tmp_path / "trunks")
    assert portable.read_model(SMALL) is None
    assert _onnx_encoder(SMALL, "auto", "auto", "auto") is None  # auto never exports
    assert isinstance(_onnx_encoder(SMALL, "cpu", "fp32", "onnx"), portable.OnnxEncoder)
    assert portable.read_model(SMALL) is not None


def test_onnx_ranking_equals_torch_fp32(dataset, index32):
    """Every sketch of the test set ranks the gallery the same on both runtimes (distances within fp32 noise,
    so a swap is accepted only between near-tied hits)."""
    torch_engine = open_engine(index32, backend="torch", precision="fp32")
    onnx_engine = open_engine(index32, backend="onnx")
    sketches = sorted((Path(dataset) / "sketch").rglob("*.png"))
    assert len(sketches) == 18
    for path in sketches:
        a = torch_engine.query(path, k=6)
        b = onnx_engine.query(path, k=6)
        da = np.array([h.distance for h in a])
        db = np.array([h.distance for h in b])
        assert np.allclose(da, db, rtol=1e-4), (path, da, db)
        for ha, hb in zip(a, b):
            if ha.shape != hb.shape:  # only a near tie may swap
                near = [h.distance for h in a if h.shape == hb.shape][0]
                assert abs(near - ha.distance) <= 1e-4 * ha.distance, (path, ha, hb)


PROBE = """
import sys
from retrieval.cli import main
sys.argv = ["cvret"] + sys.argv[1:]
try:
    main()
except SystemExit as e:
    code = e.code
print("TORCH-IMPORTED" if "torch" in sys.modules else "TORCH-NOT-IMPORTED", file=sys.stderr)
sys.exit(code)
"""


def cold_query(args, cache) -> subprocess.CompletedProcess:
    env = dict(os.environ, CVRET_CACHE_DIR=str(cache))
    return subprocess.run([sys.executable, "-c", PROBE, "query", *map(str, args)], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cold_query_never_imports_torch_once_the_model_is_cached(dataset, index32, tmp_path):
    """The first query with no ONNX model cached (an index built elsewhere) runs on torch and writes the model; the
    next one never imports torch and ranks the same shapes."""
    out, cache = index32, tmp_path / "cache"
    shutil.copytree(SESSION_CACHE / "trunks", cache / "trunks")  # the folded trunk only (no fold in the test)
    sketch = Path(dataset) / "sketch" / "shape03" / "az030.png"
    first = cold_query([sketch, "--index", out, "--json"], cache)
    assert first.returncode == 0, first.stderr
    assert "TORCH-IMPORTED" in first.stderr and "wrote the ONNX model" in first.stderr
    second = cold_query([sketch, "--index", out, "--json"], cache)
    assert second.returncode == 0, second.stderr
    assert "TORCH-NOT-IMPORTED" in second.stderr and "wrote the ONNX model" not in second.stderr
    h1 = json.loads(first.stdout)["hits"]
    h2 = json.loads(second.stdout)["hits"]
    assert h2[0]["shape"] == h1[0]["shape"] == "shape03"
    # bf16 (torch, the first run) against fp32 (onnx): the same shapes, distances within bf16's noise
    assert [h["shape"] for h in h2] == [h["shape"] for h in h1]
    assert np.allclose([h["distance"] for h in h2], [h["distance"] for h in h1], rtol=0.05)
    # asking for torch keeps torch
    forced = cold_query([sketch, "--index", out, "--backend", "torch"], cache)
    assert forced.returncode == 0 and "TORCH-IMPORTED" in forced.stderr


def test_float16_rows_distance_equals_a_float64_reference():
    """exact_mean_sq widens float16 rows in numpy now (no torch): the value is the float64 sum of the exact float32
    differences, as before."""
    from retrieval.distance import exact_mean_sq

    rng = np.random.default_rng(5)
    rows = rng.standard_normal((7, 5000)).astype(np.float16)
    q = rng.standard_normal(5000).astype(np.float32)
    want = np.array([((r.astype(np.float32) - q).astype(np.float64) ** 2).sum() / 5000 for r in rows],
                    dtype=np.float32)
    got = exact_mean_sq(q, rows)
    assert got.dtype == np.float32 and np.allclose(got, want, rtol=1e-6, atol=0)
    assert np.array_equal(exact_mean_sq(q, rows, np.array([3, 1])), got[[3, 1]])


def test_gpu_probe_does_not_import_torch_without_a_driver():
    from retrieval.candidates import gpu_driver_present

    if gpu_driver_present():
        pytest.skip("a GPU driver is loaded here: torch must be asked")
    code = ("import sys; from retrieval.candidates import choose_gpu_backend; "
            "print(choose_gpu_backend('auto'), 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["None", "False"]


def test_index_check_trusts_the_sidecar_and_a_query_repairs(cache):
    """`cvret index` checks the sidecar only (no 100 MB read per run); a query that finds the model damaged
    (`verify=True`, its fallback path) writes it again."""
    enc, path = small_model(cache)
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # same size: only the checksum can tell
    path.write_bytes(bytes(data))
    assert portable.model_listed(SMALL) and portable.read_model(SMALL) is None
    assert portable.ensure_model(enc, verify=False) is None  # the indexer's check: left as it is
    assert portable.ensure_model(enc) == path  # the query's: rewritten
    assert portable.read_model(SMALL) is not None
    path.write_bytes(path.read_bytes()[:-1])
    assert not portable.model_listed(SMALL)  # a size that differs is seen without reading
