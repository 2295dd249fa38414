"""The core engine through the real CLI: index, query, info; exactness against brute-force numpy."""
from __future__ import annotations

import json

import numpy as np
import pytest

from retrieval.errors import CvretError, EncoderError
from retrieval.index import ShapeIndex
from retrieval.search import QueryEngine
from retrieval.store import FeatureStore

from .conftest import UNTRAINED, VIEWPOINTS, make_dataset, run_cli
from .knn_check import check_knn_with_ties


def brute_force(store: FeatureStore, query: np.ndarray, rows) -> np.ndarray:
    feats = store.read_features(rows).astype(np.float32)
    return ((feats - query[None, :].astype(np.float32)) ** 2).mean(axis=1)


def test_self_query_rank1_distance0(dataset, index32):
    img = dataset / "npr" / "shape03" / "az030.png"
    res = run_cli(["query", img, "--index", index32, "--domain", "npr", "-k", "3", "--precision", "fp32", "--json",
                   "--no-normalize"])  # the image as stored: framing could move a view outside the gallery's spread
    out = json.loads(res.stdout)
    top = out["hits"][0]
    assert (top["shape"], top["viewpoint"], top["rank"]) == ("shape03", "az030", 1)
    assert top["distance"] <= 1e-12
    assert out["hits"][1]["distance"] > 0
    assert out["weights"] == "untrained:seed=0"
    assert top["path"].endswith("az030.png") and top["category"] == "odd"


def test_table_output_and_pairs(dataset, index32):
    img = dataset / "sketch" / "shape01" / "az000.png"
    shapes = run_cli(["query", img, "--index", index32, "-k", "4", "--precision", "fp32"]).output
    assert shapes.splitlines()[0].split()[:6] == ["rank", "shape", "category", "viewpoint", "domain", "distance"]
    assert len(shapes.strip().splitlines()) == 6 and shapes.strip().splitlines()[-1].startswith("weights: ")
    listed = [ln.split()[1] for ln in shapes.strip().splitlines()[1:-1]]
    assert len(set(listed)) == 4  # one row per shape
    pairs = json.loads(run_cli(["query", img, "--index", index32, "-k", "8", "--pairs", "--json",
                                "--precision", "fp32"]).stdout)["hits"]
    assert len(pairs) == 8 and len({h["shape"] for h in pairs}) <= 6  # 8 pairs over 6 shapes repeat a shape
    assert [h["distance"] for h in pairs] == sorted(h["distance"] for h in pairs)


@pytest.mark.parametrize("domain", ["npr", "rgb"])
def test_per_view_ranking_equals_numpy(dataset, index32, encoder32, domain):
    with ShapeIndex(index32, gpu="never") as si:
        eng = QueryEngine(si, encoder=encoder32)
        q = eng.embed([dataset / "sketch" / "shape02" / "az075.png"])[0]
        hits = eng.query_features(q, domain=domain, k=100, per_shape=False)
        rows = np.concatenate([si.rows(domain, vp) for vp in VIEWPOINTS])
        ref = brute_force(si.store, q, rows)
        order = np.argsort(ref, kind="stable")
        assert len(hits) == len(rows)
        got = [(h.shape, h.viewpoint) for h in hits]
        want = [(si.record(rows[j]).shape, si.record(rows[j]).viewpoint) for j in order]
        # the same labels position by position, except inside groups of equal distance
        check_knn_with_ties(ref[order], want, [h.distance for h in hits], got, where=domain)
        # one viewpoint only
        only = eng.query_features(q, domain=domain, viewpoint="az030", k=100)
        assert {h.viewpoint for h in only} == {"az030"} and len(only) == 6


def test_view_aggregated_equals_eq1(dataset, index32, encoder32):
    views = {vp: dataset / "sketch" / "shape04" / f"{vp}.png" for vp in ("az000", "az075")}
    args = ["query", "--index", index32, "--json", "-k", "6", "--precision", "fp32"]
    for vp, p in views.items():
        args += ["--view", f"{vp}={p}"]
    hits = json.loads(run_cli(args).stdout)["hits"]
    with ShapeIndex(index32, gpu="never") as si:
        eng = QueryEngine(si, encoder=encoder32)
        q = eng.embed([eng.prepare(p, "npr", vp) for vp, p in views.items()])  # framed as the CLI frames them
        ref = {}
        for s in si.shapes:
            ds = [brute_force(si.store, q[i], [si.row_of("npr", s, vp)])[0] for i, vp in enumerate(views)]
            ref[s] = float(np.mean(ds))
    assert [h["shape"] for h in hits] == sorted(ref, key=ref.get)
    for h in hits:
        assert h["distance"] == pytest.approx(ref[h["shape"]], rel=1e-5)
        assert set(h["per_view"]) == set(views)


def test_bad_domain_or_viewpoint_stops_before_embedding(index32, dataset):
    img = dataset / "sketch" / "shape00" / "az000.png"
    with ShapeIndex(index32, gpu="never") as si:
        eng = QueryEngine(si, weights=str(dataset / "no-such-weights.pt"))  # building its encoder would fail
        with pytest.raises(CvretError, match="no 'nope' views"):
            eng.query(img, domain="nope")
        with pytest.raises(CvretError, match="no viewpoint 'az999' in domain npr"):
            eng.query(img, domain="npr", viewpoint="az999")
        with pytest.raises(EncoderError, match="no-such-weights.pt: weights file not found"):
            eng.query(img, domain="npr")  # a good query does go on to the encoder


def test_info(index32):
    out = run_cli(["info", index32]).output
    assert "shapes:      6" in out and "untrained" in out and "kB per view" in out
    js = json.loads(run_cli(["info", index32, "--json"]).stdout)
    assert js["views"] == 6 * 3 * 3 and set(js["domains"]) == {"sketch", "npr", "rgb"}
    assert js["fingerprint"]["layer"] == "layer3" and js["feature_dim"] == 1024 * 14 * 14


@pytest.mark.slow
def test_float16_store_and_resume_without_reembedding(dataset, tmp_path, monkeypatch):
    from retrieval import encoder as encmod

    out = tmp_path / "idx16"
    calls = {"n": 0}
    real = encmod.LayerEncoder.encode_arrays

    def failing(self, batch):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(self, batch)

    monkeypatch.setattr(encmod.LayerEncoder, "encode_arrays", failing)
    res = run_cli(["index", dataset, "--out", out, *UNTRAINED, "--batch-size", "8", "--quiet"], ok=False)
    assert res.exit_code == 130 and "resume" in res.output
    with FeatureStore(out) as st:
        assert st.n_views == 16  # two committed batches of 8
        assert st.feature_dtype == "float16"
    seen = {"n": 0}

    def counting(self, batch):
        seen["n"] += len(batch)
        return real(self, batch)

    monkeypatch.setattr(encmod.LayerEncoder, "encode_arrays", counting)
    rep = json.loads(run_cli(["index", dataset, "--out", out, *UNTRAINED, "--batch-size", "8", "--quiet",
                              "--json"]).stdout)
    assert rep["embedded"] == 54 - 16 and rep["unchanged"] == 16 and seen["n"] == 54 - 16
    # a third run embeds nothing
    seen["n"] = 0
    rep = json.loads(run_cli(["index", dataset, "--out", out, *UNTRAINED, "--quiet", "--json"]).stdout)
    assert rep["embedded"] == 0 and rep["unchanged"] == 54 and seen["n"] == 0
    with ShapeIndex(out, gpu="never") as si:
        assert len(si.shapes) == 6 and sum(len(si.rows(d, vp)) for d in si.domains for vp in VIEWPOINTS) == 54


@pytest.mark.slow
def test_changed_and_copied_images(tmp_path):
    data = make_dataset(tmp_path / "d", n_shapes=3, domains=("npr",))
    out = tmp_path / "idx"
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet"])
    # a new shape whose images are byte-identical to shape00: copied, not embedded
    import shutil
    shutil.copytree(data / "npr" / "shape00", data / "npr" / "shape09")
    # a changed image: re-embedded, the old row superseded
    from PIL import Image
    Image.new("RGB", (224, 224), "white").save(data / "npr" / "shape01" / "az000.png")
    rep = json.loads(run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--json"]).stdout)
    assert rep["copied"] == 3 and rep["embedded"] == 1 and rep["unchanged"] == 8
    with ShapeIndex(out, gpu="never") as si:
        assert len(si.rows("npr", "az000")) == 4
        a, b = si.features("npr", [si.shapes.index("shape00"), si.shapes.index("shape09")])[0]
        assert np.array_equal(a, b)


def test_encoder_fingerprint_enforced(dataset, index32, tmp_path):
    # indexing into an index built with other weights
    res = run_cli(["index", dataset, "--out", index32, "--weights", "untrained", "--seed", "1", "--quiet"], ok=False)
    assert res.exit_code == 1 and "another encoder" in res.output and "seed=1" in res.output
    # a query engine with another encoder
    from retrieval.encoder import EncoderSpec, LayerEncoder
    from retrieval.errors import EncoderError
    other = LayerEncoder(EncoderSpec("untrained", layer="layer2"), precision="fp32")
    with ShapeIndex(index32, gpu="never") as si:
        with pytest.raises(EncoderError, match="another encoder.*layer"):
            QueryEngine(si, encoder=other)


@pytest.mark.slow
def test_local_weights_file(dataset, tmp_path):
    import torch
    from retrieval.encoder import EncoderSpec, build_visual

    visual = build_visual(EncoderSpec("untrained", layer="layer4", seed=5))
    ckpt = tmp_path / "rn101_visual.pt"
    torch.save({"state_dict": {f"visual.{k}": v for k, v in visual.state_dict().items()}}, ckpt)
    out = tmp_path / "idxw"
    data = make_dataset(tmp_path / "d", n_shapes=2, domains=("npr",))
    run_cli(["index", data, "--out", out, "--weights", ckpt, "--quiet", "--precision", "fp32"])
    with ShapeIndex(out, gpu="never") as si:
        assert si.fingerprint["weights"].startswith("sha256:")
    img = data / "npr" / "shape01" / "az000.png"
    # the index remembers the file (path and hash): no --weights needed while it stays put
    hits = json.loads(run_cli(["query", img, "--index", out, "--json", "--precision", "fp32"]).stdout)["hits"]
    assert hits[0]["shape"] == "shape01" and hits[0]["distance"] < 1e-6
    moved = tmp_path / "moved.pt"
    ckpt.rename(moved)
    res = run_cli(["query", img, "--index", out], ok=False)
    assert res.exit_code == 1 and "no longer there" in res.output and "--weights PATH" in res.output
    ckpt.write_bytes(b"something else")
    res = run_cli(["query", img, "--index", out], ok=False)
    assert res.exit_code == 1 and "changed" in res.output and "--weights PATH" in res.output
    ckpt.unlink()
    moved.rename(ckpt)
    hits = json.loads(run_cli(["query", img, "--index", out, "--weights", ckpt, "--json",
                               "--precision", "fp32"]).stdout)["hits"]
    assert hits[0]["shape"] == "shape01" and hits[0]["distance"] < 1e-6
    # the same weights loaded as a seed-5 untrained model give the same features
    from retrieval.encoder import LayerEncoder
    a = LayerEncoder(EncoderSpec(str(ckpt)), precision="fp32").encode_images([img])
    b = LayerEncoder(EncoderSpec("untrained", seed=5), precision="fp32").encode_images([img])
    np.testing.assert_array_equal(a, b)
    bad = tmp_path / "bad.pt"
    torch.save({"foo": torch.zeros(3)}, bad)
    res = run_cli(["index", data, "--out", tmp_path / "x", "--weights", bad, "--quiet"], ok=False)
    assert res.exit_code == 1 and "bad.pt" in res.output and "not an RN101" in res.output
    assert not (tmp_path / "x").exists()  # a failed first build leaves no empty index folder


def test_openai_offline_names_alternatives(dataset, tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))  # no cached checkpoint
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    res = run_cli(["index", dataset, "--out", tmp_path / "o", "--quiet"], ok=False)
    assert res.exit_code == 1
    assert "--weights PATH" in res.output and "untrained" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_layer_option_shapes(tmp_path):
    from retrieval.encoder import EncoderSpec, LayerEncoder
    enc = LayerEncoder(EncoderSpec("untrained", layer="layer2"), precision="fp32")
    assert enc.feature_shape == (512, 28, 28)


@pytest.mark.slow
def test_crash_leftovers_are_collected(dataset, tmp_path):
    """A killed writer leaves a temporary segment and a renamed but uncommitted one: readers ignore both,
    and the next writer removes them without re-embedding anything."""
    out = tmp_path / "rec"
    data = make_dataset(tmp_path / "d", n_shapes=2, domains=("npr",))
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet"])
    segs = out / "segments"
    committed = sorted(p.name for p in segs.iterdir())
    (segs / "seg-000009-deadbeef.seg").write_bytes(b"\0" * 1000)          # renamed, never committed
    (segs / "seg-000010-cafe.tmp-123-abcd.seg").write_bytes(b"\0" * 10)   # still under its temporary name
    with ShapeIndex(out, gpu="never") as si:
        assert len(si.shapes) == 2
    rep = json.loads(run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--json"]).stdout)
    assert rep["embedded"] == 0 and rep["unchanged"] == 6
    assert sorted(p.name for p in segs.iterdir()) == committed


@pytest.mark.slow
def test_prune_drops_views_gone_from_disk(tmp_path):
    import shutil
    data = make_dataset(tmp_path / "d", n_shapes=3, domains=("npr",))
    out = tmp_path / "idx"
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet"])
    shutil.rmtree(data / "npr" / "shape02")
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet"])
    with ShapeIndex(out, gpu="never") as si:
        assert "shape02" in si.shapes  # additive by default: nothing stored is lost
    run_cli(["index", data, "--out", out, *UNTRAINED, "--quiet", "--prune"])
    with ShapeIndex(out, gpu="never") as si:
        assert si.shapes == ["shape00", "shape01"] and len(si.rows("npr", "az000")) == 2


def test_batched_and_single_query_paths_agree(index32):
    """One query streams through BLAS, several go through FAISS; both end in the same exact ranking."""
    with ShapeIndex(index32, gpu="never") as si:
        q = si.store.read_features([si.row_of("sketch", "shape01", "az030"), si.row_of("rgb", "shape04", "az000")])
        d2, r2 = si.search("npr", "az030", q, 4)
        for i in range(2):
            d1, r1 = si.search("npr", "az030", q[i:i + 1], 4)
            assert np.array_equal(r1[0], r2[i])
            np.testing.assert_allclose(d1[0], d2[i], rtol=1e-6)
            ref = brute_force(si.store, q[i], si.rows("npr", "az030"))
            np.testing.assert_allclose(d1[0], np.sort(ref)[:4], rtol=1e-5)
