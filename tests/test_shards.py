"""Sharded indexes: stable assignment, and exactly the rankings, distances and study figures of one index."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from retrieval.index import ShapeIndex
from retrieval.search import QueryEngine
from retrieval.shards import ShardedIndex, build_sharded, merge_shards, shard_folder, shard_of

from .conftest import UNTRAINED, make_dataset, run_cli
from .fake_encoder import SPEC, FakeEncoder, build
from .test_storage import state


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("shards") / "d", n_shapes=9)


@pytest.fixture(scope="module")
def single(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("single") / "idx"
    build(data, out)
    return out


@pytest.fixture(scope="module")
def sharded(data, tmp_path_factory):
    out = tmp_path_factory.mktemp("sharded") / "idx"
    build_sharded(_discover(data), out, SPEC, 3, encoder=FakeEncoder(), commit_views=4, batch_size=2, progress=False)
    return out


def _discover(data):
    from retrieval.dataset import discover

    return discover(data)


def test_assignment_is_stable_and_spread():
    ids = [f"{i:032x}" for i in range(2000)]
    here = [shard_of(s, 8) for s in ids[:50]]
    code = "import sys; sys.path.insert(0, %r); from retrieval.shards import shard_of; " \
           "print([shard_of(%s, 8) for s in %r])" % (os.getcwd(), "s", ids[:50])
    other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env={**os.environ, "PYTHONHASHSEED": "123"}).stdout
    assert json.loads(other) == here  # the same on another process with another hash seed
    counts = np.bincount([shard_of(s, 8) for s in ids], minlength=8)
    assert counts.min() > 180 and counts.max() < 320


def test_every_shape_lands_in_its_shard(sharded):
    with ShapeIndex(sharded, gpu="never") as si:
        assert isinstance(si, ShardedIndex) and si.n_shards == 3
        for k, part in si.parts:
            assert part.shapes and all(shard_of(s, 3) == k for s in part.shapes)


def _per_view(folder, queries, mode="exact", candidates=None):
    with ShapeIndex(folder, gpu="never") as si:
        eng = QueryEngine(si, encoder=FakeEncoder(), mode=mode, candidates=candidates)
        out = []
        for q in queries:
            for pairs in (False, True):
                hits = eng.query_features(q, domain="npr", k=7, per_shape=not pairs)
                out.append([(h.shape, h.viewpoint, h.distance) for h in hits])
            hits, lacking = eng.query_views({"az000": q, "az075": -q}, domain="rgb", k=5)
            out.append([(h.shape, h.distance, tuple(sorted(h.per_view.items()))) for h in hits] + [lacking])
        return out


def test_sharded_search_equals_unsharded(single, sharded):
    qs = list(np.random.default_rng(0).standard_normal((3, 4096)).astype(np.float32))
    with ShapeIndex(single, gpu="never") as si:  # a stored sketch too: its own view is at distance 0
        qs.append(si.store.read_features([si.row_of("npr", "shape04", "az030")])[0])
    assert _per_view(sharded, qs) == _per_view(single, qs)


def test_sharded_compressed_search_equals_unsharded(data, tmp_path):
    """With as many candidates as views, compressed search is exact on both layouts."""
    from retrieval.compress import build_compressed

    a, b = tmp_path / "a", tmp_path / "b"
    build(data, a)
    build_sharded(_discover(data), b, SPEC, 3, encoder=FakeEncoder(), commit_views=4, progress=False)
    with ShapeIndex(a, gpu="never") as si:
        build_compressed(si, "pca:4")
    for k in range(3):
        with ShapeIndex(shard_folder(b, k), gpu="never") as si:
            build_compressed(si, "pca:4")
    qs = list(np.random.default_rng(1).standard_normal((2, 4096)).astype(np.float32))
    assert _per_view(b, qs, "compressed", 100) == _per_view(a, qs, "compressed", 100) == _per_view(a, qs)


def test_sharded_eval_equals_unsharded(single, sharded, tmp_path):
    run_cli(["eval", "--index", single, "--out", tmp_path / "r1", "--quiet", "--pairs", "sketch-npr,npr-rgb", "--objects", "5"])
    run_cli(["eval", "--index", sharded, "--out", tmp_path / "r2", "--quiet", "--pairs", "sketch-npr,npr-rgb", "--objects", "5"])
    r1 = json.loads((tmp_path / "r1" / "report.json").read_text())
    r2 = json.loads((tmp_path / "r2" / "report.json").read_text())
    p1, p2 = r1["sources"][0]["pairs"], r2["sources"][0]["pairs"]
    assert len(p1) == len(p2) == 2
    for a, b in zip(p1, p2):
        for part in ("study1", "study2", "joint"):
            assert a[part] == b[part], part  # the same features in the same order: the same numbers, bitwise


def test_shards_built_apart_then_merged(data, sharded, tmp_path):
    a, b, merged = tmp_path / "a", tmp_path / "b", tmp_path / "m"
    build_sharded(_discover(data), a, SPEC, 3, [0, 2], encoder=FakeEncoder(), commit_views=4, progress=False)
    build_sharded(_discover(data), b, SPEC, 3, [1], encoder=FakeEncoder(), commit_views=4, progress=False)
    assert not shard_folder(a, 1).exists()
    assert sorted(merge_shards([a, b], merged)) == [0, 1, 2]
    for k in range(3):
        assert state(shard_folder(merged, k)) == state(shard_folder(sharded, k))
    qs = list(np.random.default_rng(2).standard_normal((2, 4096)).astype(np.float32))
    assert _per_view(merged, qs) == _per_view(sharded, qs)
    with pytest.raises(Exception, match="already there"):
        merge_shards([b], merged)


@pytest.mark.slow
def test_cli_sharded_index_query_info_verify(tmp_path):
    data = make_dataset(tmp_path / "d", n_shapes=4, domains=("npr", "sketch"))
    out = tmp_path / "s"
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--shards", "2", "--precision", "fp32"])
    info = json.loads(run_cli(["info", out, "--json"]).stdout)
    assert info["shards"]["count"] == 2 and info["views"] == 24 and info["shapes"] == 4
    img = data / "sketch" / "shape02" / "az030.png"
    hits = json.loads(run_cli(["query", img, "--index", out, "--json", "--precision", "fp32"]).stdout)["hits"]
    single = tmp_path / "u"
    run_cli(["index", data, "--out", single, *UNTRAINED, "--quiet", "--precision", "fp32"])
    ref = json.loads(run_cli(["query", img, "--index", single, "--json", "--precision", "fp32"]).stdout)["hits"]
    assert [(h["shape"], h["viewpoint"], h["distance"]) for h in hits] == \
        [(h["shape"], h["viewpoint"], h["distance"]) for h in ref]
    assert run_cli(["verify", out, "--quiet"]).exit_code == 0
    # a rerun finds the shards by itself and embeds nothing
    rep = json.loads(run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--json",
                              "--precision", "fp32"]).stdout)
    assert sum(r["embedded"] for r in rep.values()) == 0 and sum(r["unchanged"] for r in rep.values()) == 24
    res = run_cli(["index", data, "--out", single, *UNTRAINED, "--quiet", "--shards", "2"], ok=False)
    assert res.exit_code == 1 and "unsharded index" in res.output
    res = run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--shards", "3"], ok=False)
    assert res.exit_code == 1 and "has 2 shards" in res.output
    assert run_cli(["index", data, "--out", out, "--shard", "1"], ok=False).exit_code == 2
