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
from .knn_check import check_knn_with_ties, recall_at_k


def test_pca_full_rank_preserves_distances():
    rng = np.random.default_rng(0)
    X = rng.normal(size=(30, 500)).astype(np.float32)
    comp = PCACompressor.fit(X, 29)  # n-1 directions span the centred data
    Z = comp.transform(X)
    d_full = ((X[:, None] - X[None]) ** 2).sum(-1)
    d_code = ((Z[:, None] - Z[None]) ** 2).sum(-1)
    np.testing.assert_allclose(d_code, d_full, rtol=1e-3, atol=1e-2)
    np.testing.assert_allclose(comp.basis.T @ comp.basis, np.eye(29), atol=1e-4)
    # a truncated basis keeps the directions of largest variance, largest first
    Xs = X * np.linspace(3, 0.1, 500, dtype=np.float32)
    comp3 = PCACompressor.fit(Xs, 3)
    captured = (comp3.transform(Xs) ** 2).sum(axis=0)               # variance along each kept direction
    top = np.linalg.svd(Xs - Xs.mean(axis=0), compute_uv=False)[:3] ** 2  # the three largest there are
    np.testing.assert_allclose(captured, top, rtol=1e-3)


@pytest.fixture(scope="module")
def cidx(dataset, tmp_path_factory):
    """npr and sketch views with a rank-8 PCA candidate index."""
    out = tmp_path_factory.mktemp("cidx") / "cidx"
    run_cli(["index", dataset, "--out", out, *UNTRAINED, "--quiet", "--compress", "pca:8", "--domains", "npr,sketch"])
    return out


def test_compressed_query_equals_exact(dataset, cidx):
    out = cidx
    manifest = json.loads((out / "compressed" / "manifest.json").read_text())
    assert manifest["rank"] == 8 and sum(e["views"] for e in manifest["indexes"].values()) == 36
    img = dataset / "sketch" / "shape04" / "az000.png"
    exact = json.loads(run_cli(["query", img, "--index", out, "--json", "-k", "5"]).stdout)["hits"]
    comp = json.loads(run_cli(["query", img, "--index", out, "--json", "-k", "5", "--search", "compressed",
                               "--candidates", "6"]).stdout)["hits"]
    check_knn_with_ties([h["distance"] for h in exact], [(h["shape"], h["viewpoint"]) for h in exact],
                        [h["distance"] for h in comp], [(h["shape"], h["viewpoint"]) for h in comp], rtol=1e-6)
    with ShapeIndex(out, gpu="never") as si:
        views = {vp: si.store.read_features([si.row_of("sketch", "shape02", vp)])[0] for vp in ("az000", "az075")}
        a, _ = QueryEngine(si, mode="exact").query_views(views, k=4)
        b, _ = QueryEngine(si, mode="compressed").query_views(views, k=4)
        check_knn_with_ties([h.distance for h in a], [h.shape for h in a],
                            [h.distance for h in b], [h.shape for h in b], rtol=1e-6)


def test_fewer_candidates_than_views_keeps_recall(cidx):
    """With 3 candidates for 6 views per viewpoint, the candidates must be the near ones, not any 3."""
    k, cand = 2, 3
    with ShapeIndex(cidx, gpu="never") as si:
        n_views = len(si.rows("npr", "az000"))
        assert cand < n_views
        ref_rows, new_rows = [], []
        for vp in si.viewpoint_names("npr"):
            q = si.store.read_features(si.rows("sketch", vp))
            d_ex, r_ex = si.search("npr", vp, q, k)
            d_c, r_c = si.search("npr", vp, q, k, mode="compressed", candidates=cand)
            for a in range(len(q)):  # every distance returned is exact; the hits it shares with exact search agree
                same = np.isin(r_c[a], r_ex[a])
                np.testing.assert_allclose(d_c[a][same], d_ex[a][np.isin(r_ex[a], r_c[a])], rtol=1e-6)
            ref_rows += list(r_ex)
            new_rows += list(r_c)
        assert recall_at_k(ref_rows, new_rows) >= 0.9
        # view-aggregated queries: 3 candidate shapes of 6
        views = {vp: si.store.read_features([si.row_of("sketch", "shape02", vp)])[0] for vp in ("az000", "az075")}
        exact, _ = QueryEngine(si, mode="exact").query_views(views, k=k)  # features given: no encoder needed
        comp, _ = QueryEngine(si, mode="compressed", candidates=cand).query_views(views, k=k)
        assert recall_at_k([h.shape for h in exact], [h.shape for h in comp]) == 1.0


@pytest.mark.slow
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
    hits = json.loads(run_cli(["query", img, "--index", out, "--json", "--search", "compressed",
                               "--no-normalize"]).stdout)["hits"]  # a gallery image as drawn: itself first
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
