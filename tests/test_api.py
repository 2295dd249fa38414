"""The package's front door, one version source, and no process-wide side effects on import or use."""
from __future__ import annotations

import importlib.metadata
import subprocess
import sys

import pytest

import retrieval
from retrieval.errors import ConfigError, CvretError


def test_front_door_names_resolve():
    for name in retrieval.__all__:
        assert getattr(retrieval, name) is not None, name
    assert retrieval.QueryEngine.__module__ == "retrieval.search" and issubclass(retrieval.StudyError, CvretError)
    assert importlib.metadata.version("cvret") == retrieval.__version__
    with pytest.raises(AttributeError):
        retrieval.no_such_name  # noqa: B018


CHECK = r"""
import sys, matplotlib
import retrieval
assert "torch" not in sys.modules, "import retrieval loaded torch"
backend = dict.__getitem__(matplotlib.rcParams, "backend")
from retrieval import plots
import numpy as np
plots.cmc_figure([("a-b", np.array([1, 2, 1]), 3)], sys.argv[1])
assert "matplotlib.pyplot" not in sys.modules, "plots used pyplot (global figure state)"
assert dict.__getitem__(matplotlib.rcParams, "backend") is backend, "plots changed the matplotlib backend"
print("clean")
"""


def test_import_and_plotting_leave_the_process_alone(tmp_path):
    out = tmp_path / "cmc.png"
    res = subprocess.run([sys.executable, "-c", CHECK, str(out)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "clean" in res.stdout, res.stderr[-2000:]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_option_values_are_config_errors(tmp_path):
    from retrieval.render import RenderSettings
    from retrieval.synth import make_demo_dataset
    from retrieval.synth.sketch import resolve_style

    with pytest.raises(ConfigError, match="size must be >= 8"):
        RenderSettings(size=4)
    with pytest.raises(ConfigError, match="unknown sketch style 'bogus'"):
        resolve_style("bogus")
    with pytest.raises(ConfigError, match="unknown shape category 'sofa'"):
        make_demo_dataset(tmp_path / "d", counts={"sofa": 1}, progress=False)
    assert not (tmp_path / "d" / "dataset.json").exists()
