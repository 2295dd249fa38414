"""Compressed candidate search: PCA through the Gram matrix, exact re-ranking, kept in step with the store."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from retrieval.compress import PCACompressor
from retrieval.errors import StoreError
from retrieval.index import ShapeIndex
from retrieval.search import QueryEngine

from .conftest import UNTRAINED, draw_view, make_dataset, run_cli


def test_pca_full_rank_preserves_distances():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 500)).astype(np.float32)
    comp = PCACompressor.fit(X, 29)  # n-1 directions span the centred data
    Z = comp.transform(X)
    d_full = ((X[:, None] - X[None]) ** 2).sum(-1)
    d_code = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d_code, d_full, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(comp.basis.T @ comp.basis, np.eye(29), atol=1e-4)
    # a truncated basis keeps the directions of largest variance first
    comp3 = PCACompressor.fit(X * np.linspace(3, 0.1, 500, dtype=np.float32), 3)
    assert comp3.rank == 3


def test_compressed_query_equals_exact(dataset, tmp_path):
    out = tmp_path / "cidx"
    run_cli(["index", dataset, "--out", out, *UNTRAINED, "--quiet", "--compress", "pca:8", "--domains", "npr,sketch"])
    manifest = json.loads((out / "compressed" / "manifest.json").read_text())
    assert manifest["rank"] == 8 and sum(e["views"] for e in manifest["indexes"].values()) == 36
    img = dataset / "sketch" / "shape04" / "az000.png"
    exact = json.loads(run_cli(["query", img, "--index", out, "--json", "-k", "5"]).stdout)["hits"]
    comp = json.loads(run_cli(["query", img, "--index", out, "--json", "-k", "5", "--search", "compressed",
                               "--candidates", "6"]).stdout)["hits"]
    assert [(h["shape"], h["viewpoint"]) for h in comp] == [(h["shape"], h["viewpoint"]) for h in exact]
    np.testing.assert_allclose([h["distance"] for h in comp], [h["distance"] for h in exact], rtol=1e-6)
    with ShapeIndex(out, gpu="never") as si:
        views = {vp: si.store.read_features([si.row_of("sketch", "shape02", vp)])[0] for vp in ("az000", "az075")}
        a, _ = QueryEngine(si, mode="exact", precision="fp32").query_views(views, k=4)
        b, _ = QueryEngine(si, mode="compressed", precision="fp32").query_views(views, k=4)
        assert [h.shape for h in a] == [h.shape for h in b]
        np.testing.assert_allclose([h.distance for h in a], [h.distance for h in b], rtol=1e-6)


def test_compressed_index_follows_the_store(tmp_path):
    data = make_dataset(tmp_path / "d", n_shapes=3, domains=("npr",))
    out = tmp_path / "i"
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--compress", "pca:4"])
    shutil.copytree(data / "npr" / "shape00", data / "npr" / "shape05")
    draw_view(5, "az000", "npr").save(data / "npr" / "shape05" / "az000.png")
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet"])  # no --compress: the existing one is refreshed
    manifest = json.loads((out / "compressed" / "manifest.json").read_text())
    assert sum(e["views"] for e in manifest["indexes"].values()) == 12 and manifest["spec"] == "pca:4"
    img = data / "npr" / "shape05" / "az000.png"
    hits = json.loads(run_cli(["query", img, "--index", out, "--json", "--search", "compressed"]).stdout)["hits"]
    assert hits[0]["shape"] == "shape05"


def test_compressed_errors(index32, dataset, tmp_path):
    img_dir = tmp_path
    img = dataset / "npr" / "shape00" / "az000.png"
    res = run_cli(["query", img, "--index", index32, "--search", "compressed"], ok=False)
    assert res.exit_code == 1 and "no compressed index" in res.output and "--compress" in res.output
    with ShapeIndex(index32, gpu="never") as si:
        with pytest.raises(StoreError, match="no compressed index"):
            si.compressed()
    data = make_dataset(img_dir / "d", n_shapes=2, domains=("npr",))
    res = run_cli(["index", data, "--out", tmp_path / "j", *UNTRAINED, "--quiet", "--compress", "zip"], ok=False)
    assert res.exit_code == 1 and "pca:R" in res.output
    assert not (tmp_path / "j").exists()  # refused before any work
