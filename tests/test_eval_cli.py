"""`cvret eval` through the real CLI: files written, several indexes side by side, bad input as one line."""
from __future__ import annotations

import json

import numpy as np
import pytest

from .conftest import UNTRAINED, make_dataset, run_cli


@pytest.mark.slow
def test_eval_cli_two_indexes(dataset, index32, tmp_path):
    layer2 = tmp_path / "tiny_layer2"
    run_cli(["index", dataset, "--out", layer2, *UNTRAINED, "--layer", "layer2", "--quiet"])
    out = tmp_path / "rep"
    res = run_cli(["eval", "--index", index32, "--index", layer2, "--out", out, "--objects", "4",
                   "--study2-objects", "5", "--quiet"])
    assert "sketch-npr" in res.output and "untrained" in res.output.lower()
    rep = json.loads((out / "report.json").read_text())
    assert [s["name"] for s in rep["sources"]] == ["tiny32", "tiny_layer2"]
    assert {s["fingerprint"]["layer"] for s in rep["sources"]} == {"layer3", "layer2"}
    for s in rep["sources"]:
        for p in s["pairs"]:
            m = p["study1"]
            assert 0.0 <= m["acc@1"] <= m["acc@5"] <= m["acc@10"] <= 1.0 and p["N"] == 6 and p["V"] == 3
            assert p["study2"]["n_objects"] == 5
    assert (out / "report.md").exists() and list(out.glob("fig1_study1_*.png")) and list(out.glob("*.csv"))
    # the CSV of Study 1 holds the N×N matrix with shape ids
    csv = sorted(out.glob("study1_tiny32_sketch-npr.csv"))[0].read_text().splitlines()
    assert len(csv) == 7 and "shape00" in csv[0]
    js = json.loads(run_cli(["eval", "--index", index32, "--out", tmp_path / "rep2", "--json", "--objects", "3"]).stdout)
    assert js["sources"][0]["name"] == "tiny32"


def test_eval_study1_matches_direct_eq1(index32, tmp_path):
    """The report's N×N matrix equals eq. 1 evaluated directly on the stored features."""
    from retrieval.index import ShapeIndex

    out = tmp_path / "rep"
    run_cli(["eval", "--index", index32, "--out", out, "--pairs", "sketch-npr", "--objects", "3", "--quiet"])
    rows = [ln.split(",") for ln in (out / "study1_tiny32_sketch-npr.csv").read_text().splitlines()]
    S = np.array([[float(x) for x in r[1:]] for r in rows[1:]])
    with ShapeIndex(index32, gpu="never") as si:
        A, _ = si.features("sketch", np.arange(6))
        B, _ = si.features("npr", np.arange(6))
    ref = ((A[:, None] - B[None]) ** 2).mean(axis=-1).mean(axis=-1)
    np.testing.assert_allclose(S, ref, rtol=1e-4)


def one_line(res, *needles):
    assert res.exit_code == 1, res.output
    err = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(err) == 1, res.output
    for n in needles:
        assert n in err[0], err[0]


@pytest.mark.slow
def test_eval_bad_input(index32, tmp_path):
    only_npr = tmp_path / "only_npr"
    data = make_dataset(tmp_path / "d", n_shapes=3, domains=("npr",))
    run_cli(["index", data, "--out", only_npr, *UNTRAINED, "--quiet"])
    one_line(run_cli(["eval", "--index", only_npr, "--out", tmp_path / "r1"], ok=False), "only_npr", "sketch")
    res = run_cli(["eval", "--index", index32, "--out", tmp_path / "r2", "--objects", "50", "--quiet"])
    assert "note: --objects 50 is more than the 6 shapes" in res.output  # lowered, not refused
    # no sketches yet: the pair that is possible (npr-rgb) runs, the skipped ones are named
    no_sketch = tmp_path / "no_sketch"
    run_cli(["index", make_dataset(tmp_path / "d2", n_shapes=3, domains=("npr", "rgb")), "--out", no_sketch,
             *UNTRAINED, "--quiet"])
    res = run_cli(["eval", "--index", no_sketch, "--out", tmp_path / "r6", "--objects", "2", "--quiet"])
    assert "note: skipped sketch-npr: index 'no_sketch' has no 'sketch' views" in res.output
    assert [ln.split()[1] for ln in res.output.splitlines() if ln.startswith("no_sketch ")] == ["npr-rgb"]
    one_line(run_cli(["eval", "--index", tmp_path / "nothing", "--out", tmp_path / "r3"], ok=False), "nothing")
    single = tmp_path / "single"
    run_cli(["index", make_dataset(tmp_path / "d1", n_shapes=1), "--out", single, *UNTRAINED, "--quiet"])
    one_line(run_cli(["eval", "--index", single, "--out", tmp_path / "r4", "--objects", "1"], ok=False))
    res = run_cli(["eval", "--index", index32, "--out", tmp_path / "r5", "--pairs", "sketch"], ok=False)
    assert res.exit_code == 2 and "DOMAIN-DOMAIN" in res.output
