"""The GPU path up to the device boundary: what runs on CUDA is chosen and wired correctly (CPU stands in)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from retrieval import candidates as cand_mod
from retrieval.encoder import resolve_precision
from retrieval.index import ShapeIndex
from retrieval.search import QueryEngine


def test_precision_policy():
    assert resolve_precision("auto", torch.device("cuda")) == "fp16"
    assert resolve_precision("auto", torch.device("cpu")) in ("bf16", "fp32")
    assert resolve_precision("fp32", torch.device("cuda")) == "fp32"


def test_faiss_gpu_source_is_chosen_and_stays_exact(index32, dataset, monkeypatch):
    """With faiss seeing a GPU, exact search takes candidates from faiss-gpu's fp16 flat index and re-ranks
    them exactly from the store. A CPU IndexFlatL2 stands in for faiss.GpuIndexFlatL2."""
    import faiss

    built = []

    def fake_gpu_index(self, d):
        built.append(d)
        return faiss.IndexFlatL2(d)

    monkeypatch.setattr(cand_mod, "faiss_gpu_count", lambda: 1)
    monkeypatch.setattr(cand_mod.FaissGpuScan, "_gpu_index", fake_gpu_index)
    with ShapeIndex(index32, gpu="auto") as si:
        assert si.gpu_backend() == "faiss"
        eng = QueryEngine(si, precision="fp32", normalize=False)  # the stored image as it is: distance 0
        hits = eng.query(dataset / "npr" / "shape02" / "az075.png", k=3)
        assert isinstance(si.source(), cand_mod.FaissGpuScan)
    assert built == [200704, 200704, 200704]  # one GPU index per npr viewpoint
    assert hits[0].shape == "shape02" and hits[0].distance <= 1e-12
    with ShapeIndex(index32, gpu="never") as si:
        assert isinstance(si.source(), cand_mod.ResidentScan)


def test_gpu_always_without_gpu_is_a_clear_error(index32, monkeypatch):
    from retrieval.errors import StoreError

    monkeypatch.setattr(cand_mod, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(cand_mod, "torch_cuda_available", lambda: False)
    with ShapeIndex(index32, gpu="always") as si:
        with pytest.raises(StoreError, match="GPU search asked for"):
            si.search("npr", "az000", np.zeros((1, 200704), np.float32), 1)


def test_torch_gpu_backend_when_faiss_has_no_gpu(index32, dataset, monkeypatch):
    """faiss-cpu on a CUDA machine: vectors go to the GPU through torch (fp16), candidates come from a
    GPU matrix product, and the exact re-rank keeps the ranking exact. The CPU stands in for CUDA."""
    monkeypatch.setattr(cand_mod, "faiss_gpu_count", lambda: 0)
    monkeypatch.setattr(cand_mod, "torch_cuda_available", lambda: True)
    calls = []
    real = cand_mod.TorchGpuScan.candidates

    def spy(self, domain, viewpoint, q, n):
        calls.append((domain, viewpoint, len(q), n))
        return real(self, domain, viewpoint, q, n)

    monkeypatch.setattr(cand_mod.TorchGpuScan, "candidates", spy)
    with ShapeIndex(index32, gpu="auto", torch_device="cpu") as si:
        assert si.gpu_backend() == "torch"
        q = si.store.read_features([si.row_of("sketch", "shape03", "az030")])
        d, r = si.search("npr", "az030", q, 3)
        X, norms = si.source()._loaded[("npr", "az030")]
        assert X.dtype == torch.float16 and tuple(X.shape) == (6, 200704)
    assert calls == [("npr", "az030", 1, 6)]
    with ShapeIndex(index32, gpu="never") as si:
        d_cpu, r_cpu = si.search("npr", "az030", q, 3)
    assert np.array_equal(r, r_cpu)
    np.testing.assert_allclose(d, d_cpu, rtol=1e-6)
