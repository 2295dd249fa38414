"""The studies' matrix products: the torch branch equals numpy, and the device is an argument, not state."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import gemm
from retrieval.errors import ConfigError


def test_torch_branch_matches_numpy_and_restores_tf32():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 5, 7)).astype(np.float32), rng.normal(size=(2, 7, 3)).astype(np.float32)
    before = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = True  # a caller that wants TF32 elsewhere keeps it
    try:
        got = gemm.torch_matmul(a, b, "cpu")  # the CPU stands in for CUDA: same code, another device
        assert torch.backends.cuda.matmul.allow_tf32 is True
    finally:
        torch.backends.cuda.matmul.allow_tf32 = before
    np.testing.assert_allclose(got, a @ b, rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(gemm.matmul(a, b, "cpu"), np.matmul(a, b))


def test_device_resolution():
    assert gemm.resolve("auto") == ("cuda" if torch.cuda.is_available() else "cpu")
    assert gemm.resolve("cpu") == "cpu"
    with pytest.raises(ConfigError, match="unknown matmul device 'tpu'"):
        gemm.resolve("tpu")
