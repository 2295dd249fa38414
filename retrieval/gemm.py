"""Float32 matrix products for full distance matrices, on the CPU (numpy's BLAS) or a CUDA GPU (torch).

The studies spend nearly all their time in A @ B.T over feature blocks; on a GPU these run
as cuBLAS products (TF32 off for these products only, so results match the CPU's float32 to
rounding). The device is an argument of every call: there is no module state to set or leak.
"""
from __future__ import annotations

import numpy as np

from .errors import ConfigError

DEVICES = ("auto", "cpu", "cuda")


def resolve(device: str) -> str:
    """'auto' → 'cuda' when torch sees a GPU, else 'cpu'; anything but auto/cpu/cuda is a ConfigError."""
    if device == "auto":
        try:
            import torch

            return "cuda" if torch.cuda.is_available() else "cpu"
        except ImportError:
            return "cpu"
    if device not in DEVICES:
        raise ConfigError(f"unknown matmul device {device!r}; use {', '.join(DEVICES)}")
    return device


def matmul(a: np.ndarray, b: np.ndarray, device: str = "cpu") -> np.ndarray:
    """a @ b in float32 (batched like np.matmul) on `device` ('cpu' or 'cuda', resolved); returns numpy."""
    if device == "cpu":
        return np.matmul(a, b)
    return torch_matmul(a, b, device)


def torch_matmul(a: np.ndarray, b: np.ndarray, device: str) -> np.ndarray:
    """a @ b through torch on `device`, without TF32 (the caller's TF32 setting is restored afterwards)."""
    import torch

    old = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    try:
        ta = torch.from_numpy(np.ascontiguousarray(a)).to(device, non_blocking=True)
        tb = torch.from_numpy(np.ascontiguousarray(b)).to(device, non_blocking=True)
        return torch.matmul(ta, tb).cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = old
