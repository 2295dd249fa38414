"""Float32 matrix products for full distance matrices, on the CPU (numpy's BLAS) or a CUDA GPU (torch).

The studies spend nearly all their time in A @ B.T over feature blocks; on a GPU these run
as cuBLAS products (TF32 disabled, so results match the CPU's float32 to rounding).
"""
from __future__ import annotations

import contextlib

import numpy as np

_device = "cpu"


def resolve(device: str) -> str:
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    if device not in ("cpu", "cuda"):
        raise ValueError(f"unknown matmul device {device!r}; use auto, cpu or cuda")
    return device


@contextlib.contextmanager
def on(device: str):
    """Run the enclosed products on `device` ('cpu', 'cuda' or 'auto')."""
    global _device
    old, _device = _device, resolve(device)
    try:
        yield _device
    finally:
        _device = old


def matmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b in float32 (batched like np.matmul), on the current device; returns numpy."""
    if _device == "cpu":
        return np.matmul(a, b)
    import torch

    torch.backends.cuda.matmul.allow_tf32 = False
    ta = torch.from_numpy(np.ascontiguousarray(a)).to("cuda", non_blocking=True)
    tb = torch.from_numpy(np.ascontiguousarray(b)).to("cuda", non_blocking=True)
    return torch.matmul(ta, tb).cpu().numpy()
