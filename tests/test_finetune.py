"""`cvret finetune`: the distance, the losses, the split, frozen stages, the checkpoint, and resume after kill -9.

Everything runs on a tiny procedural dataset (6 shapes, 2 viewpoints, 64 px) with untrained
seed-0 weights, training `layer2` at 64 px so that a step costs well under a second on CPU.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from retrieval.dataset import discover
from retrieval.distance import exact_mean_sq
from retrieval.encoder import EncoderSpec, build_visual
from retrieval.finetune import (FinetuneOptions, Item, PairData, assert_no_leak, build_trainable, finetune, infonce,
                                make_split, pairwise_mean_sq, train_step, triplet)

from .conftest import run_cli

SMALL = FinetuneOptions(base="untrained", weights_seed=0, seed=0, layer="layer2", image_size=64,
                        train_categories=("chair",), val_fraction=0.25, epochs=1, batch_size=3, lr=1e-4,
                        train_stages=("layer2",), device="cpu")
SMALL_CLI = ["--from", "untrained", "--train-categories", "chair", "--val-fraction", "0.25", "--layer", "layer2",
             "--train-stages", "layer2", "--image-size", "64", "--batch-size", "3", "--lr", "1e-4", "--device", "cpu",
             "--quiet"]


@pytest.fixture(scope="module")
def demo_ds(tmp_path_factory) -> Path:
    from retrieval.synth import make_demo_dataset
    from retrieval.viewpoints import DEFAULT_VIEWPOINTS

    root = tmp_path_factory.mktemp("ft") / "demo"
    make_demo_dataset(root, counts={"chair": 4, "table": 2}, size=64, viewpoints=DEFAULT_VIEWPOINTS[:2], workers=1,
                      progress=False)
    return root


@pytest.fixture(scope="module")
def trained(demo_ds, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ftw") / "ft.pt"
    finetune(discover(demo_ds), out, SMALL, progress=False, log=lambda m: None)
    return out


def test_pairwise_mean_sq_is_the_view_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(3, 5000)).astype(np.float32)
    b = (a[[1, 2, 0]] + 0.3 * rng.normal(size=(3, 5000))).astype(np.float32)
    got = pairwise_mean_sq(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    want = np.stack([exact_mean_sq(a[i], b) for i in range(3)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_losses_reward_the_positive_on_the_diagonal():
    good = torch.tensor([[0.1, 1.0, 1.0], [1.0, 0.1, 1.0], [1.0, 1.0, 0.1]])
    bad = good[[1, 2, 0]]  # each anchor nearest to another shape's view
    assert infonce(good, 0.1) < infonce(bad, 0.1)
    assert triplet(good, 0.2) == 0.0 < triplet(bad, 0.2)


def test_split_holds_out_categories_and_never_reads_evaluation_sketches(demo_ds):
    ds = discover(demo_ds)
    opts = replace(SMALL, real_sketches=True)
    split = make_split(ds, opts)
    assert not set(split.train) & set(split.val) and not set(split.train) & set(split.held_out)
    assert {ds.categories[s] for s in split.train} == {"chair"}
    assert split.held_out == ["table_0000", "table_0001"] and split.held_out_categories == ["table"]
    assert split.val and set(split.train) | set(split.val) == {s for s in ds.shapes if s.startswith("chair")}
    data = PairData(ds, split, opts)
    eval_sketches = {v.path for v in ds.views if v.domain == "sketch" and v.shape not in split.train}
    used = data.anchor_paths()
    assert used and not used & eval_sketches  # real sketches of training shapes only
    assert make_split(ds, opts) == split  # seeded
    # the guard itself fires when an evaluation sketch sneaks in
    data.items.append(Item(split.val[0], ds.viewpoints[0].name, "real"))
    with pytest.raises(AssertionError, match="evaluation sketches"):
        assert_no_leak(data, ds, split)
    with pytest.raises(AssertionError):
        data.anchor_image(data.items[-1], 1)
    data.items[-1] = Item(split.held_out[0], ds.viewpoints[0].name, "synth")
    with pytest.raises(AssertionError, match="not a training shape"):
        assert_no_leak(data, ds, split)


def test_loss_goes_down_on_a_fixed_batch(demo_ds):
    ds = discover(demo_ds)
    data = PairData(ds, make_split(ds, SMALL), SMALL)
    x = data.tensors(data.batches(1)[0], 1)
    n = len(data.batches(1)[0])
    _, trunk, params = build_trainable(SMALL)
    opt = torch.optim.AdamW(params, lr=1e-4)
    losses = [train_step(trunk, opt, x, n, SMALL) for _ in range(4)]
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses


def test_frozen_stages_and_batch_norms_bit_identical(trained):
    base = build_visual(EncoderSpec("untrained", "layer2", 0, 64), full=True).state_dict()
    ft = torch.load(trained, weights_only=True)
    assert set(ft) == set(base)  # a complete visual state dict
    changed = [k for k in base if not torch.equal(base[k], ft[k])]
    assert changed and all(k.startswith("layer2.") for k in changed)
    assert not [k for k in changed if ".bn" in k or "downsample.1" in k]  # batch norms: buffers and affine


def test_checkpoint_loads_in_cvret_index_and_changes_the_fingerprint(trained, demo_ds, tmp_path):
    report = json.loads(Path(str(trained) + ".json").read_text())
    assert report["base"]["identity"] == "untrained:seed=0" and report["trained_categories"] == ["chair"]
    assert len(report["epochs"]) == 2 and report["epochs"][1]["loss"] > 0
    fps = {}
    for name, weights in (("base", ["--weights", "untrained", "--seed", "0"]), ("ft", ["--weights", trained])):
        out = tmp_path / name
        run_cli(["index", demo_ds, "--out", out, *weights, "--domains", "npr", "--precision", "fp32", "--quiet"])
        fps[name] = json.loads(run_cli(["info", out, "--json"]).output)["fingerprint"]["weights"]
    assert fps["base"] == "untrained:seed=0"
    assert fps["ft"] == report["weights_identity"]
    # the encoder loads the trained weights, not a copy of the base
    from retrieval.encoder import LayerEncoder

    img = next(v.path for v in discover(demo_ds).views if v.domain == "npr")
    feats = [LayerEncoder(EncoderSpec(w, "layer3", 0, 64), "cpu", "fp32").encode_images([img])
             for w in ("untrained", str(trained))]
    assert feats[0].shape == feats[1].shape and not np.allclose(feats[0], feats[1], rtol=1e-3)
    # an index built with the base weights refuses the fine-tuned encoder
    res = run_cli(["index", demo_ds, "--out", tmp_path / "base", "--weights", trained, "--domains", "npr",
                   "--quiet"], ok=False)
    assert res.exit_code == 1 and "weights" in res.output


def _cvret(*args) -> list[str]:
    return [sys.executable, "-c", "from retrieval.cli import main; main()", *map(str, args)]


@pytest.mark.slow
def test_resume_after_kill_gives_the_same_weights(demo_ds, tmp_path):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = ["finetune", demo_ds, *SMALL_CLI, "--epochs", "3"]
    subprocess.run(_cvret(*args, "--out", tmp_path / "full.pt"), check=True, env=env, capture_output=True)

    out = tmp_path / "cut.pt"
    proc = subprocess.Popen(_cvret(*args, "--out", out), env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    state = Path(str(out) + ".resume.pt")
    deadline = time.monotonic() + 300
    while not state.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not out.exists()  # killed before the end: only the epoch checkpoint is there
    assert torch.load(state, weights_only=True)["epoch"] < 3

    res = subprocess.run(_cvret(*args, "--out", out, "--resume"), env=env, capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert "resuming after epoch" in res.stdout
    a, b = torch.load(tmp_path / "full.pt", weights_only=True), torch.load(out, weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ha = json.loads(Path(str(tmp_path / "full.pt") + ".json").read_text())["epochs"]
    hb = json.loads(Path(str(out) + ".json").read_text())["epochs"]
    assert [h["loss"] for h in ha] == [h["loss"] for h in hb]


@pytest.mark.parametrize("extra, needle", [
    ([], "--train-categories"),
    (["--train-categories", "sofa"], "no shape of category 'sofa'"),
    (["--train-categories", "chair", "--batch-size", "1"], "--batch-size"),
    (["--train-categories", "chair", "--styles", "0.9:0.1"], "style range"),
    (["--train-categories", "chair", "--train-stages", "layer4"], "after the feature layer"),
])
def test_bad_options_are_one_line_errors(demo_ds, tmp_path, extra, needle):
    res = run_cli(["finetune", demo_ds, "--out", tmp_path / "w.pt", "--from", "untrained", *extra], ok=False)
    assert res.exit_code == 1
    lines = [ln for ln in res.output.splitlines() if ln.startswith("error:")]
    assert len(lines) == 1 and needle in lines[0], res.output


def test_dataset_without_meshes_names_the_shape(dataset, tmp_path):
    res = run_cli(["finetune", dataset, "--out", tmp_path / "w.pt", "--from", "untrained", "--train-categories", "even",
                   "--image-size", "64"], ok=False)
    assert res.exit_code == 1 and "no mesh to draw synthetic sketches of shape 'shape00'" in res.output


def test_eval_table_per_category_base_vs_finetuned(index32, tmp_path):
    import shutil

    other = tmp_path / "ft_copy"
    shutil.copytree(index32, other)
    out = tmp_path / "rep"
    run_cli(["eval", "--index", index32, "--index", other, "--out", out, "--objects", "3", "--study2-objects", "3",
             "--trained-on", "even", "--quiet"])
    rep = json.loads((out / "report.json").read_text())
    rows = rep["per_category_comparison"]
    assert {(r["pair"], r["category"], r["trained"]) for r in rows} == {
        (p, c, c == "even") for p in ("sketch-npr", "sketch-rgb") for c in ("even", "odd")}
    src = rep["sources"][0]["pairs"][0]["study1"]["per_category"]
    r = next(r for r in rows if r["pair"] == "sketch-npr" and r["category"] == "odd")
    assert r["n"] == 3 and r["tiny32"]["acc@1"] == src["odd"]["acc@1"] and r["tiny32"]["acc@5"] == src["odd"]["acc@5"]
    md = (out / "report.md").read_text()
    assert "### Per category: tiny32 vs ft_copy" in md and "| even * | sketch-npr | 3 |" in md


def test_train_shapes_file_chooses_the_pool(demo_ds, tmp_path):
    ds = discover(demo_ds)
    split = make_split(ds, replace(SMALL, train_categories=(), train_shapes=("chair_0000", "chair_0001", "table_0000"),
                                   val_fraction=0.0))
    assert split.train == ["chair_0000", "chair_0001", "table_0000"] and split.val == []
    assert split.held_out == ["chair_0002", "chair_0003", "table_0001"] and split.held_out_categories == []
    (tmp_path / "list.txt").write_text("chair_0000\nnot_a_shape\n")
    res = run_cli(["finetune", demo_ds, "--out", tmp_path / "w.pt", "--train-shapes", tmp_path / "list.txt"], ok=False)
    assert res.exit_code == 1 and "not_a_shape" in res.output
