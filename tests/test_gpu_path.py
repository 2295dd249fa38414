"""The GPU path up to the device boundary: what runs on CUDA is chosen and wired correctly (CPU stands in)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import index as index_mod
from retrieval.encoder import resolve_precision
from retrieval.index import ShapeIndex
from retrieval.search import QueryEngine


def test_precision_policy():
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_index_moves_to_gpu_and_stays_exact(index32, dataset, monkeypatch):
    """With a GPU present, each index is cloned to it (fp16) and results are re-ranked exactly."""
    moved = []

    def fake_to_gpu(self, idx):
        moved.append(idx.ntotal)
        return idx  # stands in for faiss.index_cpu_to_gpu(res, 0, idx, co with useFloat16)

    monkeypatch.setattr(index_mod, "gpu_available", lambda: True)
    monkeypatch.setattr(ShapeIndex, "_to_gpu", fake_to_gpu)
    with ShapeIndex(index32, gpu="auto") as si:
        eng = QueryEngine(si, precision="fp32")
        hits = eng.query(dataset / "npr" / "shape02" / "az075.png", k=3)
    assert moved == [6, 6, 6]
    assert hits[0].shape == "shape02" and hits[0].distance <= 1e-12
    with ShapeIndex(index32, gpu="never") as si:
        si.faiss_index("npr", "az000")
        assert moved == [6, 6, 6]


def test_gpu_always_without_gpu_is_a_clear_error(index32, monkeypatch):
    from retrieval.errors import StoreError

    monkeypatch.setattr(index_mod, "gpu_available", lambda: False)
    with ShapeIndex(index32, gpu="always") as si:
        with pytest.raises(StoreError, match="GPU search asked for"):
            si.faiss_index("npr", "az000")


def test_torch_gpu_backend_when_faiss_has_no_gpu(index32, dataset, monkeypatch):
    """faiss-cpu on a CUDA machine: vectors go to the GPU through torch (fp16), candidates come from a
    GPU matrix product, and the exact CPU re-rank keeps the ranking exact. The CPU stands in for CUDA."""
    monkeypatch.setattr(index_mod, "gpu_available", lambda: False)
    monkeypatch.setattr(index_mod, "torch_cuda_available", lambda: True)
    monkeypatch.setattr(index_mod, "TORCH_GPU_DEVICE", "cpu")
    calls = []
    real = ShapeIndex._torch_candidates

    def spy(self, key, q, kk):
        calls.append((key, len(q), kk))
        return real(self, key, q, kk)

    monkeypatch.setattr(ShapeIndex, "_torch_candidates", spy)
    with ShapeIndex(index32, gpu="auto") as si:
        assert si.gpu_backend() == "torch"
        q = si.store.read_features([si.row_of("sketch", "shape03", "az030")])
        d, r = si.search("npr", "az030", q, 3)
        Xg, norms = si._torch_gpu[("npr", "az030")]
        assert Xg.dtype == torch.float16 and tuple(Xg.shape) == (6, 200704)
    assert calls == [(("npr", "az030"), 1, 6)]
    with ShapeIndex(index32, gpu="never") as si:
        d_cpu, r_cpu = si.search("npr", "az030", q, 3)
    assert np.array_equal(r, r_cpu)
    np.testing.assert_allclose(d, d_cpu, rtol=1e-6)
