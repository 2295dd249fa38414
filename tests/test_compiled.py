"""The AOTInductor-compiled trunk: the same features as the eager one, compiled once, cached, never fatal."""
from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

from retrieval import compiled
from retrieval.encoder import EncoderSpec, LayerEncoder

pytestmark = pytest.mark.slow  # compiling takes a C++ compiler and tens of seconds

SPEC = EncoderSpec("untrained", layer="layer1", seed=0, image_size=64)


def test_compiled_trunk_equals_eager_and_is_cached(tmp_path, monkeypatch, caplog):
    if not compiled.compiler_available():
        pytest.skip("no C++ compiler")
    monkeypatch.setenv("CVRET_CACHE_DIR", str(tmp_path))
    x = np.random.default_rng(0).normal(size=(5, 3, 64, 64)).astype(np.float32)  # not the example batch size
    eager = LayerEncoder(SPEC, device="cpu", precision="fp32")
    want = eager.encode_arrays(x)
    enc = LayerEncoder(SPEC, device="cpu", precision="fp32")
    assert not enc.compile_for(100, "auto")  # a small job does not pay for compiling
    assert enc.compile_for(100, "always") and enc.compiled is not None
    got = enc.encode_arrays(x)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))
    packages = list((tmp_path / "compiled").glob("*.pt2"))
    assert len(packages) == 1 and not list((tmp_path / "compiled").glob("*building*"))
    # another process: `auto` uses the cached package whatever the job's size, without compiling again
    caplog.set_level(logging.INFO, logger="retrieval.compiled")
    again = LayerEncoder(SPEC, device="cpu", precision="fp32")
    assert again.compile_for(1, "auto") and "compiling" not in caplog.text
    np.testing.assert_array_equal(again.encode_arrays(x), got)
    # a damaged package is compiled again, with a warning, and still gives the same features
    packages[0].write_bytes(b"not a package")
    third = LayerEncoder(SPEC, device="cpu", precision="fp32")
    assert third.compile_for(1, "auto")
    assert "cannot load the compiled trunk" in caplog.text
    np.testing.assert_allclose(third.encode_arrays(x), want, rtol=1e-4, atol=1e-5 * float(np.abs(want).max()))


def test_never_and_failures_keep_the_eager_trunk(tmp_path, monkeypatch, caplog):
    monkeypatch.setenv("CVRET_CACHE_DIR", str(tmp_path))
    enc = LayerEncoder(SPEC, device="cpu", precision="fp32")
    assert not enc.compile_for(10 ** 6, "never") and enc.compiled is None
    monkeypatch.setattr(compiled, "compiler_available", lambda: False)
    assert not enc.compile_for(10 ** 6, "auto")  # auto: no compiler, no attempt
    caplog.set_level(logging.WARNING)
    assert not enc.compile_for(10 ** 6, "always") and "no C++ compiler" in caplog.text
    monkeypatch.setenv("CVRET_CACHE_DIR", "")
    assert not enc.compile_for(10 ** 6, "always")  # no cache folder: nowhere to keep a package
    with pytest.raises(ValueError, match="compile mode"):
        enc.compile_for(1, "sometimes")
    x = np.zeros((1, 3, 64, 64), np.float32)
    assert enc.encode_arrays(x).shape == (1, int(np.prod(enc.feature_shape)))
