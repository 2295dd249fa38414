"""Where search candidates come from: interchangeable sources feeding one exact re-rank.

A source proposes, for every query, the store rows of the `n` views it believes nearest within
one (domain, viewpoint); `index.ShapeIndex.search` then computes their exact distances from the
stored features, so every source returns the same ranking as an exhaustive float32 computation
(the compressed one up to its recall). Sources:

- `ResidentScan` (CPU, the default): the features held in memory once, in their stored dtype,
  by a FAISS scalar-quantizer index of type fp16 (float16 rows kept as they are, decoded by
  FAISS's SIMD kernels) or an `IndexFlatL2` for float32 stores; split into one shard per thread
  so that a single query uses every core. Its distances are direct sums of squared differences.
- `TorchGpuScan`: the rows on a CUDA device as fp16 through torch; candidates by a matrix product.
- `FaissGpuScan`: faiss-gpu's flat index with fp16 storage, where faiss is built with GPU support.
- `compress.CompressedCandidates`: PCA codes, far smaller than the features.
"""
from __future__ import annotations

import os
import sys

import numpy as np

from .errors import StoreError

LOAD_BLOCK = 64  # views read from the store and added at a time (bounded temporary memory)


def _faiss():
    import faiss  # imported lazily: `cvret info` and the studies do not need it

    return faiss


def faiss_gpu_count() -> int:
    try:
        return int(_faiss().get_num_gpus())
    except Exception:  # faiss without GPU support, or a driver problem
        return 0


def gpu_driver_present() -> bool:
    """Whether a GPU driver is loaded at all: on Linux, CUDA (and ROCm) need their device nodes.

    Checked before importing torch, so that a CPU-only machine does not pay torch's import
    (about 1.5 s) to learn that torch sees no GPU; elsewhere torch is asked.
    """
    if not sys.platform.startswith("linux"):
        return True
    return any(os.path.exists(p) for p in ("/dev/nvidiactl", "/dev/nvidia0", "/dev/kfd", "/dev/dxg"))


def torch_cuda_available() -> bool:
    if "torch" not in sys.modules and not gpu_driver_present():
        return False
    try:
        import torch

        return bool(torch.cuda.is_available())
    except ImportError:
        return False


class ResidentRows:
    """The rows of one (domain, viewpoint) held by FAISS shards, viewed as numpy arrays without a copy."""

    def __init__(self, parts: list[np.ndarray]):
        self.parts = parts
        self.starts = np.cumsum([0] + [len(p) for p in parts])
        self.dtype = parts[0].dtype if parts else np.dtype(np.float32)

    def __len__(self) -> int:
        return int(self.starts[-1])

    def __getitem__(self, j) -> np.ndarray:
        s = int(np.searchsorted(self.starts, int(j), side="right")) - 1
        return self.parts[s][int(j) - int(self.starts[s])]


class ResidentScan:
    """Exhaustive CPU scan over the features held in memory, in their stored dtype (float16 stays float16)."""

    name = "cpu"

    def __init__(self, index, threads: int | None = None):
        self.index = index
        self.threads = threads
        self._loaded: dict[tuple[str, str], tuple[object, list, ResidentRows]] = {}

    def _load(self, domain: str, viewpoint: str):
        key = (domain, viewpoint)
        if key not in self._loaded:
            faiss = _faiss()
            rows = self.index.rows(domain, viewpoint)
            if len(rows) == 0:
                raise StoreError(f"{self.index.folder}: no {domain} views at viewpoint {viewpoint}")
            store = self.index.store
            d = store.feature_dim
            threads = self.threads or faiss.omp_get_max_threads()
            n_shards = max(1, min(threads, len(rows) // 32))
            bounds = [int(x) for x in np.linspace(0, len(rows), n_shards + 1)]
            subs, parts = [], []
            for a, b in zip(bounds[:-1], bounds[1:]):
                if store.feature_dtype == "float16":
                    sub = faiss.IndexScalarQuantizer(d, faiss.ScalarQuantizer.QT_fp16, faiss.METRIC_L2)
                else:
                    sub = faiss.IndexFlatL2(d)
                # the stored bytes are the index's codes: read them straight into FAISS's memory (checked)
                sub.codes.resize((b - a) * sub.code_size)
                codes = np.frombuffer(faiss.rev_swig_ptr(sub.codes.data(), (b - a) * sub.code_size),
                                      dtype=np.uint8).reshape(b - a, sub.code_size)
                for s in range(a, b, LOAD_BLOCK):
                    store.read_raw_into(rows[s:min(b, s + LOAD_BLOCK)], codes[s - a:min(b, s + LOAD_BLOCK) - a])
                sub.ntotal = b - a
                subs.append(sub)
                parts.append(codes.view(np.float16 if store.feature_dtype == "float16" else np.float32))
            if len(subs) == 1:
                scan = subs[0]
            else:
                scan = faiss.IndexShards(d, True, True)  # threaded, successive ids: positions in rows()
                for sub in subs:
                    scan.add_shard(sub)
            self._loaded[key] = (scan, subs, ResidentRows(parts))
        return self._loaded[key]

    def matrix(self, domain: str, viewpoint: str) -> ResidentRows:
        """The resident rows of (domain, viewpoint) in `index.rows()` order, stored dtype."""
        return self._load(domain, viewpoint)[2]

    def candidates(self, domain: str, viewpoint: str, queries: np.ndarray, n: int) -> np.ndarray:
        scan = self._load(domain, viewpoint)[0]
        rows = self.index.rows(domain, viewpoint)
        _, pos = scan.search(np.ascontiguousarray(queries, dtype=np.float32), min(n, len(rows)))
        return rows[np.clip(pos, 0, None)]

    def sums_to_all(self, domain: str, viewpoint: str, queries: np.ndarray) -> np.ndarray | None:
        """Sums of squared differences to every view (direct, not ||x||²+||q||²−2x·q), or None for float32
        stores, whose FAISS index uses that rounding formula."""
        if self.index.store.feature_dtype != "float16":
            return None
        scan = self._load(domain, viewpoint)[0]
        n = len(self.index.rows(domain, viewpoint))
        dist, pos = scan.search(np.ascontiguousarray(queries, dtype=np.float32), n)
        out = np.empty_like(dist)
        np.put_along_axis(out, pos, dist, axis=1)
        return out


class TorchGpuScan:
    """Rows on a CUDA device as fp16 (or fp32) through torch: a GPU matrix product proposes candidates."""

    name = "torch-gpu"

    def __init__(self, index, device: str = "cuda", float16: bool = True):
        self.index = index
        self.device = device
        self.float16 = float16
        self._loaded: dict = {}

    def _load(self, domain: str, viewpoint: str):
        import torch

        key = (domain, viewpoint)
        if key not in self._loaded:
            rows = self.index.rows(domain, viewpoint)
            dtype = torch.float16 if self.float16 else torch.float32
            X = torch.empty((len(rows), self.index.feature_dim), dtype=dtype, device=self.device)
            for s in range(0, len(rows), LOAD_BLOCK):
                X[s:s + LOAD_BLOCK] = torch.from_numpy(self.index.store.read_raw(rows[s:s + LOAD_BLOCK])).to(
                    self.device, dtype)
            norms = torch.cat([(X[s:s + 256].float() ** 2).sum(1) for s in range(0, len(rows), 256)])
            self._loaded[key] = (X, norms)
        return self._loaded[key]

    def candidates(self, domain: str, viewpoint: str, queries: np.ndarray, n: int) -> np.ndarray:
        import torch

        X, norms = self._load(domain, viewpoint)
        rows = self.index.rows(domain, viewpoint)
        Q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32)).to(self.device, X.dtype)
        scores = norms[None, :] - 2.0 * (Q @ X.T).float()
        return rows[torch.topk(scores, min(n, len(rows)), dim=1, largest=False).indices.cpu().numpy()]


class FaissGpuScan:
    """faiss-gpu's exhaustive index with fp16 storage (faiss built with GPU support)."""

    name = "faiss-gpu"

    def __init__(self, index, float16: bool = True):
        self.index = index
        self.float16 = float16
        self._res = None
        self._loaded: dict = {}

    def _gpu_index(self, d: int):
        faiss = _faiss()
        if self._res is None:
            self._res = faiss.StandardGpuResources()
        cfg = faiss.GpuIndexFlatConfig()
        cfg.useFloat16 = self.float16
        return faiss.GpuIndexFlatL2(self._res, d, cfg)

    def candidates(self, domain: str, viewpoint: str, queries: np.ndarray, n: int) -> np.ndarray:
        key = (domain, viewpoint)
        rows = self.index.rows(domain, viewpoint)
        if key not in self._loaded:
            idx = self._gpu_index(self.index.feature_dim)
            for s in range(0, len(rows), LOAD_BLOCK):
                idx.add(self.index.store.read_raw(rows[s:s + LOAD_BLOCK]).astype(np.float32))
            self._loaded[key] = idx
        _, pos = self._loaded[key].search(np.ascontiguousarray(queries, dtype=np.float32), min(n, len(rows)))
        return rows[np.clip(pos, 0, None)]


def choose_gpu_backend(gpu: str) -> str | None:
    """'faiss' (faiss built with GPU support), 'torch' (faiss-cpu, but torch sees CUDA), or None."""
    if gpu not in ("auto", "never", "always"):
        raise StoreError(f"unknown GPU setting {gpu!r}; use auto, never or always")
    if gpu == "never":
        return None
    if faiss_gpu_count() > 0:
        return "faiss"
    if torch_cuda_available():
        return "torch"
    if gpu == "always":
        raise StoreError("GPU search asked for, but neither faiss nor torch sees a GPU")
    return None
