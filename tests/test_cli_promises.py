"""The CLI keeps its promises (issue 12, section 5): one-line failures, refused no-op options, honest output."""
from __future__ import annotations

import json
import os

import pytest
from PIL import Image, ImageDraw

from .conftest import run_cli


def one_line(res, code, *needles):
    assert res.exit_code == code, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), res.output
    for n in needles:
        assert n in lines[0], lines[0]


def test_usage_errors_are_one_line_with_exit_code_2(tmp_path):
    one_line(run_cli(["query", "--index", tmp_path], ok=False), 2, "cvret query:", "--view", "--help")
    one_line(run_cli(["query", "a.png", "--index", tmp_path, "--bogus"], ok=False), 2, "--bogus")
    one_line(run_cli(["render", "--out", tmp_path / "r"], ok=False), 2, "SOURCES")
    one_line(run_cli(["nope"], ok=False), 2, "nope")


def test_expected_failures_are_one_line_with_exit_code_1(tmp_path, dataset, monkeypatch):
    one_line(run_cli(["render", dataset / "x.obj", "--out", tmp_path / "r", "--domains", "sketch"], ok=False), 1,
             "sketch")
    # offline without cached weights, the demo would print its untrained-weights banner first
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    one_line(run_cli(["demo", "--style", "scribbly", "--out", tmp_path / "d"], ok=False), 1, "scribbly")
    assert not (tmp_path / "d").exists()


def test_eval_unknown_device_is_one_line(index32, tmp_path):
    one_line(run_cli(["eval", "--index", index32, "--out", tmp_path / "e", "--device", "tpu"], ok=False), 1, "tpu")


def test_view_refuses_options_that_do_nothing(index32, dataset):
    img = dataset / "sketch" / "shape00" / "az000.png"
    one_line(run_cli(["query", "--view", f"az000={img}", "--index", index32, "--pairs"], ok=False), 2, "--pairs")
    one_line(run_cli(["query", "--view", f"az000={img}", "--index", index32, "--viewpoint", "az000"], ok=False), 2,
             "--viewpoint")


def test_query_weights_must_match_the_index(index32, dataset):
    img = dataset / "sketch" / "shape00" / "az000.png"
    one_line(run_cli(["query", img, "--index", index32, "--weights", "openai"], ok=False), 1,
             "--weights openai", "untrained:seed=0")
    # the index's own kind of weights is accepted, and the text output names them as the JSON does
    out = run_cli(["query", img, "--index", index32, "--weights", "untrained", "-k", "2", "--precision", "fp32"]).output
    assert out.strip().splitlines()[-1] == "weights: untrained:seed=0 (untrained: not the paper's numbers)"


def test_folder_and_too_large_sketch_messages(index32, dataset, tmp_path):
    one_line(run_cli(["query", "--view", f"az000={dataset / 'sketch'}", "--index", index32], ok=False), 1,
             "is a folder")
    big = tmp_path / "big.png"
    im = Image.new("RGB", (300, 300), "white")
    ImageDraw.Draw(im).rectangle((60, 60, 240, 240), outline="black", width=3)  # ink: a blank sketch is refused
    im.save(big)
    res = run_cli(["query", big, "--index", index32, "--max-pixels", "1000"], ok=False)
    one_line(res, 1, "big.png", "--max-pixels")
    assert run_cli(["query", big, "--index", index32, "--max-pixels", "100000", "-k", "1"]).exit_code == 0


def test_result_paths_work_from_any_working_directory(tmp_path, monkeypatch):
    from .conftest import UNTRAINED, make_dataset

    make_dataset(tmp_path / "d", n_shapes=2, domains=("npr",))
    monkeypatch.chdir(tmp_path)
    run_cli(["index", "d", "--out", "idx", *UNTRAINED, "--quiet"])
    monkeypatch.chdir(tmp_path / "d")  # elsewhere
    hits = json.loads(run_cli(["query", "npr/shape01/az000.png", "--index", "../idx", "--json", "-k", "2"]).stdout)
    for h in hits["hits"]:
        assert os.path.isabs(h["path"]) and os.path.isfile(h["path"]), h["path"]


def test_failed_first_index_leaves_no_folder(tmp_path):
    """Unloadable weights fail before the folder exists; a failure after the writer made it removes it again."""
    from .conftest import UNTRAINED, make_dataset

    data = make_dataset(tmp_path / "d", n_shapes=2, domains=("npr",))
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    res = run_cli(["index", data, "--out", tmp_path / "w", "--weights", bad, "--quiet"], ok=False)
    assert res.exit_code == 1 and not (tmp_path / "w").exists()
    (data / "npr" / "shape01" / "az075.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    res = run_cli(["index", data, "--out", tmp_path / "s", *UNTRAINED, "--strict", "--quiet"], ok=False)
    assert res.exit_code == 1 and "az075.png" in res.output
    assert not (tmp_path / "s").exists()
