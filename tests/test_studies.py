"""Study 1 / Study 2 / joint retrieval on hand-built feature sets whose answers are known."""
from __future__ import annotations

import csv
import json
import os
import re

import numpy as np
import pytest
from scipy import stats

from retrieval import studies
from retrieval.errors import StudyError
from retrieval.studies import (evaluate, headline_table, joint_metrics, pair_pass, retrieval_metrics,
                               shape_distance_matrix, true_ranks, view_distance_matrix, view_distance_stats,
                               view_retrieval)
from retrieval.viewpoints import make_viewpoints


class FakeSource:
    """In-memory FeatureSource: feats[domain] is (N, V, D); masks[domain] is (N, V) bool."""

    def __init__(self, feats, masks=None, name="fake", fingerprint=None, categories=None, shapes=None,
                 viewpoints=None):
        self.feats = {d: np.asarray(f, dtype=np.float32) for d, f in feats.items()}
        N, V, _ = next(iter(self.feats.values())).shape
        self.masks = {d: (np.ones((N, V), bool) if masks is None or d not in masks else np.asarray(masks[d], bool))
                      for d in self.feats}
        self.name = name
        self.fingerprint = fingerprint if fingerprint is not None else {"model": "RN101", "layer": 3, "weights": "openai"}
        self.shapes = shapes if shapes is not None else [f"shape{i:03d}" for i in range(N)]
        self.categories = categories or {}
        self.viewpoints = viewpoints if viewpoints is not None else make_viewpoints([0, 30, 75, 120][:V])
        self.domains = list(self.feats)
        self.calls = 0

    def features(self, domain, shape_idx):
        self.calls += 1
        idx = np.asarray(shape_idx)
        f = self.feats[domain][idx].copy()
        m = self.masks[domain][idx].copy()
        f[~m] = 0.0
        return f, m


def _rand(N=12, V=3, D=40, seed=0, offset=5.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((N, V, D)) + offset).astype(np.float32)


def direct_eq1(A, Am, B, Bm):
    """Seed eq. 1, literally: loops over shape pairs, float64."""
    N = A.shape[0]
    S = np.full((N, N), np.inf)
    for a in range(N):
        for b in range(N):
            ks = [k for k in range(A.shape[1]) if Am[a, k] and Bm[b, k]]
            if ks:
                S[a, b] = np.mean([np.mean((A[a, k].astype(float) - B[b, k].astype(float)) ** 2) for k in ks])
    return S


def direct_eq2_per_object(A, Am, B, Bm):
    N, V, _ = A.shape
    P = np.full((N, V, V), np.nan)
    for n in range(N):
        for k in range(V):
            for h in range(V):
                if Am[n, k] and Bm[n, h]:
                    P[n, k, h] = np.mean((A[n, k].astype(float) - B[n, h].astype(float)) ** 2)
    return P


# ------------------------------------------------------------------ identical / permuted


def test_identical_features_perfect_retrieval():
    A = _rand()
    src = FakeSource({"sketch": A, "npr": A.copy()})
    S = shape_distance_matrix(src, "sketch", "npr")
    assert S.shape == (12, 12)
    assert np.allclose(np.diag(S), 0.0, atol=1e-5 * np.median(S))
    m = retrieval_metrics(S)
    assert m["acc@1"] == 1.0 and m["acc@5"] == 1.0 and m["mrr"] == 1.0
    assert m["diag_min_frac"] == 1.0 and m["mean_rank"] == 1.0 and m["median_rank"] == 1.0


def test_permuted_gallery_gives_permutation():
    A = _rand(N=10)
    perm = np.random.default_rng(3).permutation(10)
    # gallery shape b carries query shape perm[b]'s features -> row a's nearest column is inv[a]
    src = FakeSource({"sketch": A, "npr": A[perm]})
    S = shape_distance_matrix(src, "sketch", "npr")
    inv = np.argsort(perm)
    assert np.array_equal(S.argmin(axis=1), inv)
    ranks = true_ranks(S)
    fixed = perm == np.arange(10)
    assert np.all(ranks[fixed] == 1) and np.all(ranks[~fixed] > 1)
    expected_rank = (S <= np.diag(S)[:, None]).sum(axis=1)
    assert np.array_equal(ranks, expected_rank)
    assert retrieval_metrics(S)["acc@1"] == pytest.approx(fixed.mean())


def test_ranks_known_matrix_and_ties():
    S = np.array([[0.0, 1.0, 2.0],
                  [0.5, 1.0, 0.7],    # true at rank 3
                  [1.0, 1.0, 1.0]])   # all tied -> pessimistic rank 3, but diag-min true
    assert true_ranks(S).tolist() == [1, 3, 3]
    m = retrieval_metrics(S, ks=(1, 2))
    assert m["acc@1"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx((1 + 1 / 3 + 1 / 3) / 3)
    assert m["diag_min_frac"] == pytest.approx(2 / 3)
    assert m["median_rank"] == 3.0


# ------------------------------------------------------------------ equality with direct evaluation


def _missing_masks(N, V, seed):
    rng = np.random.default_rng(seed)
    m = rng.random((N, V)) > 0.3
    m[0] = [True, False, False]
    return m


def test_eq1_matches_direct_with_missing_views_and_blocks():
    N, V = 11, 3
    A, B = _rand(N, V, 33, 1), _rand(N, V, 33, 2)
    Am, Bm = _missing_masks(N, V, 4), _missing_masks(N, V, 5)
    Bm[1] = [False, True, True]  # shares nothing with shape 0 of A -> inf
    src = FakeSource({"sketch": A, "rgb": B}, masks={"sketch": Am, "rgb": Bm})
    ref = direct_eq1(A, Am, B, Bm)
    # tiny memory budget forces several row and column blocks
    S, cnt = shape_distance_matrix(src, "sketch", "rgb", memory_mb=0.002, return_counts=True)
    assert src.calls > 4
    assert np.array_equal(np.isinf(S), np.isinf(ref)) and np.isinf(S[0, 1])
    fin = np.isfinite(ref)
    np.testing.assert_allclose(S[fin], ref[fin], rtol=1e-5)
    assert np.array_equal(cnt, (Am[:, None, :] & Bm[None, :, :]).sum(-1))
    # the one-pass computation gives the same matrix
    pp = pair_pass(src, "sketch", "rgb", memory_mb=0.002)
    np.testing.assert_allclose(pp.S[fin], ref[fin], rtol=1e-5)
    assert np.array_equal(np.isinf(pp.S), np.isinf(ref))


def test_eq1_subset_and_large_offset_precision():
    # ReLU-like features with a large common offset: centring keeps float32 accurate
    A, B = _rand(8, 3, 500, 6, offset=50.0), _rand(8, 3, 500, 7, offset=50.0)
    src = FakeSource({"npr": A, "rgb": B})
    idx = np.array([6, 1, 3])
    S = shape_distance_matrix(src, "npr", "rgb", shape_idx=idx)
    ref = direct_eq1(A[idx], np.ones((3, 3), bool), B[idx], np.ones((3, 3), bool))
    np.testing.assert_allclose(S, ref, rtol=1e-5)


def test_eq2_matches_direct_with_missing_views():
    N, V = 9, 3
    A, B = _rand(N, V, 21, 8), _rand(N, V, 21, 9)
    Am, Bm = _missing_masks(N, V, 10), _missing_masks(N, V, 11)
    src = FakeSource({"sketch": A, "npr": B}, masks={"sketch": Am, "npr": Bm})
    ref = direct_eq2_per_object(A, Am, B, Bm)
    P = view_distance_matrix(src, "sketch", "npr", np.arange(N), memory_mb=0.001)
    assert np.array_equal(np.isnan(P), np.isnan(ref))
    np.testing.assert_allclose(P[~np.isnan(P)], ref[~np.isnan(ref)], rtol=1e-5)
    pp = pair_pass(src, "sketch", "npr", memory_mb=0.002)
    np.testing.assert_allclose(pp.per_object[~np.isnan(P)], ref[~np.isnan(ref)], rtol=1e-5)
    st = view_distance_stats(P)
    with np.errstate(invalid="ignore"):
        np.testing.assert_allclose(st["mean"], np.nanmean(ref, axis=0), rtol=1e-5)
    assert np.array_equal(st["n"], (~np.isnan(ref)).sum(axis=0))


def test_ci_is_student_t_interval():
    rng = np.random.default_rng(12)
    P = rng.random((15, 2, 2))
    P[3, 0, 1] = np.nan                           # one object left out of one cell
    st = view_distance_stats(P)
    for k in range(2):
        for h in range(2):
            x = P[:, k, h][~np.isnan(P[:, k, h])]
            lo, hi = stats.t.interval(0.95, len(x) - 1, loc=x.mean(), scale=stats.sem(x))
            assert st["ci_low"][k, h] == pytest.approx(lo, rel=1e-10)
            assert st["ci_high"][k, h] == pytest.approx(hi, rel=1e-10)
            assert st["std"][k, h] == pytest.approx(x.std(ddof=1))
            assert st["n"][k, h] == len(x)
    one = view_distance_stats(P[:1])
    assert np.all(np.isnan(one["ci_low"]))       # n = 1: undefined


# ------------------------------------------------------------------ view retrieval / joint


def test_view_retrieval_constructed_case():
    N, V, D = 6, 3, 16
    rng = np.random.default_rng(13)
    A = rng.standard_normal((N, V, D)).astype(np.float32) * 3
    B = A.copy()
    # for objects 0..2: view 1 of domain j is a copy of view 0 of domain i (so query view 0 -> nearest is 1)
    B[:3, 1] = A[:3, 0]
    B[:3, 0] = A[:3, 0] + 5.0
    src = FakeSource({"sketch": A, "npr": B})
    P = view_distance_matrix(src, "sketch", "npr", np.arange(N))
    vr = view_retrieval(P)
    # view 0 queries of objects 0..2 fail; their view 1 queries: B[:,1] = A[:,0] is not A[:,1] -> nearest?
    ref = np.zeros((N, V), bool)
    for n in range(N):
        for k in range(V):
            ref[n, k] = all(P[n, k, k] < P[n, k, h] for h in range(V) if h != k)
    assert not ref[:3, 0].any() and ref[3:].all()
    np.testing.assert_array_equal(vr["correct"] == 1.0, ref)
    assert vr["overall"] == pytest.approx(ref.mean())
    np.testing.assert_allclose(vr["per_viewpoint"], ref.mean(axis=0))
    assert vr["per_viewpoint"][0] == pytest.approx(0.5)


def test_joint_retrieval_constructed_case():
    # 4 shapes x 2 viewpoints, features chosen so every answer is known
    V, D = 2, 8
    e = np.eye(D, dtype=np.float32) * 10
    A = np.stack([np.stack([e[2 * s], e[2 * s + 1]]) for s in range(4)])  # (4, 2, D) all orthogonal
    B = A.copy()
    # shape 1 in domain j: its two views swapped -> shape found, viewpoint wrong
    B[1] = A[1][::-1]
    # shape 2 in domain j: view 0 far away, view 1 = 0.8 x (view 0 in i); shape 3 view 1 in j is an exact copy of
    # shape 2 view 0 in i -> query (2, v0) ranks shape 3 first, then its own view v1 (wrong viewpoint)
    B[2, 0] = -A[2, 0]
    B[2, 1] = 0.8 * A[2, 0]
    B[3, 1] = A[2, 0]
    src = FakeSource({"sketch": A, "npr": B})
    pp = pair_pass(src, "sketch", "npr", memory_mb=0.0005)
    jm = joint_metrics(pp, ks=(1, 2), viewpoint_names=["v0", "v1"])
    assert jm["n_queries"] == 8
    # query (2, v0) finds shape 3 first (exact copy), then the true shape
    assert pp.joint_rank_view[2, 0] == 2 and pp.joint_rank_shape[2, 0] == 2
    assert pp.joint_rank_view[0].tolist() == [1, 1] and pp.joint_rank_view[1].tolist() == [1, 1]
    assert pp.joint_vp_ok[0].all() and not pp.joint_vp_ok[1].any()
    assert not pp.joint_vp_ok[2, 0] and not pp.joint_exact[2, 0]
    # query (2, v1): own v1 in j at (64 + 100) / 8 beats every orthogonal view (200 / 8) -> rank 1, right viewpoint
    assert pp.joint_rank_view[2, 1] == 1 and pp.joint_vp_ok[2, 1] and pp.joint_exact[2, 1]
    # query (3, v1): both true views in j at 200/8 (tie -> viewpoint wrong), B[2, 1] is closer (164/8);
    # pessimistic ties: the 6 views of other shapes at <= 200/8 all count -> rank 7
    assert not pp.joint_vp_ok[3, 1] and pp.joint_rank_view[3, 1] == 7 and pp.joint_rank_shape[3, 1] == 4
    ranks = pp.joint_rank_view
    assert jm["acc@1"] == pytest.approx(np.mean(ranks <= 1))
    assert jm["viewpoint_acc"] == pytest.approx(pp.joint_vp_ok.mean())
    assert jm["exact_view_acc@1"] == pytest.approx((pp.joint_vp_ok & (ranks == 1)).mean())
    # brute force over all views
    Af, Bf = A.reshape(8, D).astype(float), B.reshape(8, D).astype(float)
    Dm = ((Af[:, None] - Bf[None]) ** 2).mean(-1)
    owner = np.repeat(np.arange(4), 2)
    for q in range(8):
        a = owner[q]
        t = Dm[q, owner == a].min()
        assert ranks[a, q % 2] == 1 + np.sum(Dm[q, owner != a] <= t)


def test_category_metrics():
    S = np.array([[0.0, 0.1, 0.9, 0.9],
                  [0.1, 0.0, 0.9, 0.9],
                  [0.9, 0.1, 0.5, 0.9],   # true rank 2, top-1 has another category
                  [0.9, 0.9, 0.1, 0.0]])
    cm = studies.category_metrics(S, ["chair", "chair", "table", "table"])
    assert cm["per_category"]["chair"]["acc@1"] == 1.0
    assert cm["per_category"]["table"]["acc@1"] == 0.5
    assert cm["per_category"]["table"]["category_acc@1"] == 0.5
    assert cm["category_acc@1"] == 0.75


# ------------------------------------------------------------------ evaluate / report


def _eval_source(name="layer3", weights="openai", N=14, seed=20):
    rng = np.random.default_rng(seed)
    base = rng.standard_normal((N, 3, 24)).astype(np.float32)
    feats = {d: base + 0.3 * rng.standard_normal(base.shape).astype(np.float32) for d in ("npr", "rgb", "sketch")}
    masks = {d: np.ones((N, 3), bool) for d in feats}
    masks["sketch"][2, 1] = False
    masks["rgb"][5] = False                     # shape 5 has no rgb views -> excluded from pairs with rgb
    cats = {f"shape{i:03d}": ("chair" if i % 2 else "table") for i in range(N)}
    return FakeSource(feats, masks=masks, name=name, categories=cats,
                      fingerprint={"model": "RN101", "layer": 3, "weights": weights})


def test_evaluate_writes_everything(tmp_path):
    s1 = _eval_source("layer3", "untrained(seed=0)")
    s2 = _eval_source("layer2", "openai", seed=21)
    out = tmp_path / "rep"
    rep = evaluate([s1, s2], out, objects=5, seed=1, study2_objects=8, progress=False, weights_note="test run")
    files = set(os.listdir(out))
    assert {"report.json", "report.md", "fig1_study1_layer3.png", "fig2_study2_layer3.png",
            "fig1_study1_layer2.png", "cmc_layer2.png"} <= files
    for key in ("sketch-npr", "sketch-rgb", "npr-rgb"):
        assert f"study1_layer3_{key}.csv" in files
        for part in ("mean", "ci_low", "ci_high"):
            assert f"study2_layer3_{key}_{part}.csv" in files
    js = json.loads((out / "report.json").read_text())
    assert js["cvret_version"] == "0.1.0" and js["seed"] == 1
    assert "Student t" in js["ci"]["kind"]
    src0 = js["sources"][0]
    assert src0["fingerprint"]["weights"].startswith("untrained") and src0["untrained"]
    pairs = {p["key"]: p for p in src0["pairs"]}
    assert pairs["sketch-npr"]["N"] == 14 and pairs["sketch-rgb"]["N"] == 13
    assert pairs["sketch-rgb"]["missing_views"]["shapes_excluded"] == 1
    assert pairs["sketch-npr"]["missing_views"]["true_pairs_on_fewer_than_V_viewpoints"] == 1
    p = pairs["sketch-npr"]
    for k in ("acc@1", "acc@5", "acc@10", "mean_rank", "median_rank", "mrr", "diag_min_frac", "per_category",
              "category_acc@1"):
        assert k in p["study1"]
    assert p["study1"]["acc@1"] > 0.5           # small noise: mostly correct
    assert len(p["study1"]["figure_shapes"]) == 5
    assert p["study2"]["n_objects"] == 8 and len(p["study2"]["mean"]) == 3
    # shape002 lacks its sketch at the second viewpoint: it counts in every cell but those of row 1
    n_expected = 8 - ("shape002" in p["study2"]["objects"])
    assert p["study2"]["n"][1][1] == n_expected and p["study2"]["n"][1][0] == n_expected
    assert p["study2"]["n"][0][0] == 8 and p["study2"]["n"][2][1] == 8
    assert "viewpoint_acc" in p["joint"] and "acc@1" in p["joint"]
    assert rep["headline"] == js["headline"] and len(js["headline"]) == 6
    # the CSV has shape ids as header and index, numbers equal to the report's
    with open(out / "study1_layer3_sketch-npr.csv") as fh:
        rows = list(csv.reader(fh))
    assert rows[0][1:] == s1.shapes and [r[0] for r in rows[1:]] == s1.shapes
    md = (out / "report.md").read_text()
    assert "UNTRAINED" in md and "not the paper" in md.lower()
    assert "](fig1_study1_layer3.png)" in md and "](fig2_study2_layer3.png)" in md
    assert "Side by side" in md
    txt = headline_table(rep)
    lines = txt.splitlines()
    assert lines[0].split()[:3] == ["source", "pair", "N"] and "view-acc" in lines[0]
    # aligned: text columns start, numeric columns end, where the header's dashes do
    spans = [m.span() for m in re.finditer(r"-+", lines[1])]
    for line in [lines[0]] + lines[2:8]:
        assert len(line) == len(lines[1])
        for c, (a, b) in enumerate(spans):
            cell = line[a:b]
            assert cell.strip() and (cell[0] != " " if c < 2 else cell[-1] != " "), (line, c)
            assert b == len(line) or line[b] == " "
    assert "untrained" in txt.lower()


def test_evaluate_trained_has_no_warning(tmp_path):
    rep = evaluate([_eval_source()], tmp_path, pairs=[("sketch", "npr")], objects=3, progress=False)
    md = (tmp_path / "report.md").read_text()
    assert "UNTRAINED" not in md and not rep["untrained"]


def test_result_sheet(tmp_path):
    from retrieval import plots

    img = tmp_path / "q.png"
    import matplotlib.pyplot as plt
    plt.imsave(img, np.random.default_rng(0).random((20, 20)), cmap="gray")
    out = plots.result_sheet(str(img), [(str(img), "shape A / az000"), (str(tmp_path / "nope.png"), "B")],
                             str(tmp_path / "sheet.png"))
    assert os.path.getsize(out) > 1000


# ------------------------------------------------------------------ bad input


def test_bad_inputs(tmp_path):
    A = _rand(N=4)
    src = FakeSource({"sketch": A, "npr": A}, name="idxA")
    with pytest.raises(StudyError, match=r"no domain pair.*idxA.*'rgb'"):
        evaluate([src], tmp_path, pairs=[("sketch", "rgb")], progress=False)
    lonely = FakeSource({"sketch": A, "npr": A}, masks={"npr": np.array([[1, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])})
    with pytest.raises(StudyError, match="at least 2"):
        evaluate([lonely], tmp_path, pairs=[("sketch", "npr")], objects=1, progress=False)
    novp = FakeSource({"sketch": A, "npr": A})
    novp.viewpoints = []
    with pytest.raises(StudyError, match="V = 0"):
        evaluate([novp], tmp_path, pairs=[("sketch", "npr")], objects=1, progress=False)
    with pytest.raises(StudyError, match="'rgb'"):
        shape_distance_matrix(src, "sketch", "rgb")
    with pytest.raises(StudyError):
        evaluate([], tmp_path, progress=False)


def test_present_fast_path_is_used():
    from retrieval.studies import present_masks

    A = _rand(N=5)
    m = np.ones((5, 3), bool)
    m[1, 2] = False

    class WithPresent(FakeSource):
        def present(self, domain):
            return self.masks[domain]

    src = WithPresent({"sketch": A, "npr": A}, masks={"npr": m})
    got = present_masks(src, "npr")
    assert np.array_equal(got, m) and src.calls == 0
    plain = FakeSource({"sketch": A, "npr": A}, masks={"npr": m})
    assert np.array_equal(present_masks(plain, "npr"), m) and plain.calls > 0


# ------------------------------------------------------------------ partial data


def test_partial_queries_are_ranked_against_the_full_gallery(tmp_path):
    """3 sketched shapes of 11: the gallery keeps all 11 (N=3 queries, M=11), so distractors count."""
    A = _rand(N=11)
    sk = A.copy()
    for a in range(3):  # each sketch lies nearer to an unsketched shape (a + 8) than to its own
        sk[a] = A[a] + 0.6 * (A[a + 8] - A[a])
    mask = np.zeros((11, 3), bool)
    mask[:3] = True
    src = FakeSource({"sketch": sk, "npr": A}, masks={"sketch": mask})
    rep = evaluate([src], tmp_path, pairs=[("sketch", "npr")], objects=3, progress=False)
    p = rep["sources"][0]["pairs"][0]
    assert (p["N"], p["M"]) == (3, 11)
    assert p["study1"]["acc@1"] == 0.0 and p["study1"]["acc@5"] == 1.0  # the distractor comes first
    assert p["missing_views"]["gallery_shapes_without_query"] == 8
    rows = list(csv.reader(open(tmp_path / "study1_fake_sketch-npr.csv")))
    assert len(rows) == 1 + 3 and len(rows[0]) == 1 + 11
    S = np.array([[float(x) for x in r[1:]] for r in rows[1:]])
    ref = direct_eq1(sk, mask, A, np.ones((11, 3), bool))[:3]
    np.testing.assert_allclose(S, ref, rtol=1e-4)
    ranks = {r[0]: (int(r[2]), r[3]) for r in csv.reader(open(tmp_path / "study1_fake_sketch-npr_ranks.csv"))
             if r[0] != "shape"}
    assert ranks["shape000"] == (2, "shape008")
    assert rep["headline"][0]["M"] == 11 and "| M |" in (tmp_path / "report.md").read_text()


def test_missing_domain_pairs_are_skipped_and_objects_clamped(tmp_path):
    A = _rand(N=4)
    src = FakeSource({"npr": A, "rgb": A + 0.1}, name="nosketch")
    rep = evaluate([src], tmp_path, objects=50, progress=False)
    assert rep["pairs"] == [["npr", "rgb"]]
    assert [s["pair"] for s in rep["skipped_pairs"]] == ["sketch-npr", "sketch-rgb"]
    assert "no 'sketch' views" in rep["skipped_pairs"][0]["reason"]
    assert rep["objects"] == 4 and any("--objects 50" in n for n in rep["notes"])
    md = (tmp_path / "report.md").read_text()
    assert "skipped sketch-npr" in md


def test_study2_cells_show_tiny_distances(tmp_path):
    """Untrained weights give distances around 1e-6: the report must not print them as 0.0000."""
    A = _rand(N=5, offset=0.0) * 1e-3
    src = FakeSource({"sketch": A, "npr": A * 1.5})
    rep = evaluate([src], tmp_path, pairs=[("sketch", "npr")], objects=3, progress=False)
    m = rep["sources"][0]["pairs"][0]["study2"]["mean"][0][0]
    assert 1e-7 < m < 1e-5
    md = (tmp_path / "report.md").read_text()
    assert f"{m:.4g}" in md and "0.0000 ± 0.0000" not in md


def test_shrec_metrics_next_to_acc_at_k_by_hand(tmp_path):
    """Shapes on a line at 0, 1, 10, 11 with categories a, b, a, b: every ranking is known (worked out below)."""
    pos = np.array([0.0, 1.0, 10.0, 11.0])
    A = np.repeat(pos[:, None, None], 3, axis=1).repeat(4, axis=2)      # (4, V=3, D=4): distance = (pos diff)^2
    cats = {"shape000": "a", "shape001": "b", "shape002": "a", "shape003": "b"}
    rep = evaluate([FakeSource({"sketch": A, "npr": A}, categories=cats)], tmp_path, pairs=[("sketch", "npr")],
                   objects=2, progress=False)
    m = rep["sources"][0]["pairs"][0]["study1"]["shrec"]
    # rankings: q0 a,b,a,b  q1 b,a,a,b  q2 a,b,b,a  q3 b,a,b,a (R = 2 each, top 32 = all 4)
    dcg13, dcg24 = (1 + 1 / np.log2(3)) / 2, (1 + 1 / np.log2(4)) / 2
    want = {"nn": 1.0, "first_tier": 0.5, "second_tier": 1.0, "e_measure": 2 / 3,
            "dcg": (2 * dcg13 + 2 * dcg24) / 4, "map": (2 * (1 + 2 / 3) / 2 + 2 * (1 + 2 / 4) / 2) / 4}
    assert set(m["micro"]) == set(want)
    for k, v in want.items():
        assert m["micro"][k] == pytest.approx(v), k
    assert m["n_queries"] == 4 and m["n_classes"] == 2
    assert "SHREC metrics of Study 1" in (tmp_path / "report.md").read_text()
