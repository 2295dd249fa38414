"""FAISS indexes over the stored features, one per (domain, viewpoint), and the opened index folder.

Layout: `<folder>/meta.h5` (the feature store) plus `<domain>.<viewpoint>.faiss` exhaustive L2
indexes with `<domain>.<viewpoint>.rows.npy` mapping FAISS ids back to store rows. One index
per (domain, viewpoint) serves both query kinds directly: a per-view query searches the V
indexes of a domain and merges; a view-aggregated query reads one full distance column per
viewpoint. Distances leave this module as the map defines them: squared L2 / feature length.
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np

from .distance import candidate_count, exact_knn, exact_mean_sq  # noqa: F401 (re-exported)
from .errors import StoreError
from .store import STORE_FILE, FeatureStore, ViewRecord
from .viewpoints import Viewpoint

MANIFEST = "indexes.json"
TORCH_GPU_DEVICE = "cuda"  # where the torch GPU backend puts vectors (tests point it at the CPU)
LAYOUT = "exhaustive-l2/per-domain-viewpoint/v1"


def _faiss():
    import faiss  # imported lazily: `cvret info` and the studies do not need it

    return faiss


def safe_name(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", text)


def index_file_stem(domain: str, viewpoint: str) -> str:
    return f"{safe_name(domain)}.{safe_name(viewpoint)}"


def torch_cuda_available() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False


def gpu_available() -> bool:
    try:
        return _faiss().get_num_gpus() > 0
    except Exception:
        return False


class ShapeIndex:
    """An index folder opened for querying and evaluation (read-only)."""

    def __init__(self, folder: Path | str, gpu: str = "auto", gpu_float16: bool = True):
        self.folder = Path(folder)
        if not self.folder.is_dir():
            raise StoreError(f"{self.folder}: index folder does not exist")
        self.store = FeatureStore(self.folder / STORE_FILE, "r")
        self.name = self.folder.name
        self._gpu = gpu
        self._gpu_float16 = gpu_float16
        self._faiss: dict[tuple[str, str], object] = {}
        self._cpu: dict[tuple[str, str], object] = {}  # the CPU flat index, kept for exact re-ranking
        self._on_gpu: set[tuple[str, str]] = set()
        self._torch_gpu: dict[tuple[str, str], tuple] = {}
        self._norm_cache: dict[tuple[str, str], np.ndarray] = {}
        self._gpu_res = None
        self._compressed = None
        self._build_tables()

    def close(self):
        self.store.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ tables
    def _build_tables(self):
        recs = self.store.records()
        self._records = {r.row: r for r in recs}
        self._key_to_row = {(r.domain, r.shape, r.viewpoint): r.row for r in recs}
        self.shapes = sorted({r.shape for r in recs})
        self._shape_pos = {s: i for i, s in enumerate(self.shapes)}
        self.domains = sorted({r.domain for r in recs})
        declared = self.store.viewpoints
        present = {r.viewpoint for r in recs}
        self.viewpoints: list[Viewpoint] = [vp for vp in declared if vp.name in present] + [
            Viewpoint(n, float("nan"), float("nan")) for n in sorted(present - {vp.name for vp in declared})]
        self.categories = {s: c for s, c in self.store.categories.items() if s in self._shape_pos}
        self.fingerprint = self.store.fingerprint
        self.feature_dim = self.store.feature_dim
        self._rows: dict[tuple[str, str], np.ndarray] = {}
        for d in self.domains:
            for vp in self.viewpoints:
                rows = [self._key_to_row[(d, s, vp.name)] for s in self.shapes if (d, s, vp.name) in self._key_to_row]
                if rows:
                    self._rows[(d, vp.name)] = np.asarray(rows, dtype=np.int64)

    def record(self, row: int) -> ViewRecord:
        return self._records[int(row)]

    def row_of(self, domain: str, shape: str, viewpoint: str) -> int | None:
        return self._key_to_row.get((domain, shape, viewpoint))

    def rows(self, domain: str, viewpoint: str) -> np.ndarray:
        return self._rows.get((domain, viewpoint), np.zeros(0, dtype=np.int64))

    def viewpoint_names(self, domain: str | None = None) -> list[str]:
        return [vp.name for vp in self.viewpoints if domain is None or (domain, vp.name) in self._rows]

    def summary(self) -> dict:
        size = sum(p.stat().st_size for p in self.folder.iterdir() if p.is_file())
        return {
            "index": str(self.folder),
            "shapes": len(self.shapes),
            "views": len(self._records),
            "domains": {d: sum(1 for r in self._records.values() if r.domain == d) for d in self.domains},
            "viewpoints": [vp.to_dict() for vp in self.viewpoints],
            "categories": dict(sorted(_count(self.categories.values()).items())),
            "fingerprint": self.fingerprint,
            "feature_dtype": self.store.feature_dtype,
            "feature_dim": self.feature_dim,
            "layout": LAYOUT,
            "size_bytes": size,
            "bytes_per_view": size / max(1, len(self._records)),
            "problems": self.store.problems,
        }

    # ------------------------------------------------------------ FeatureSource (studies)
    def present(self, domain: str) -> np.ndarray:
        """(shapes, V) bool: which views exist, without reading any feature."""
        return np.array([[(domain, s, vp.name) in self._key_to_row for vp in self.viewpoints] for s in self.shapes],
                        dtype=bool).reshape(len(self.shapes), len(self.viewpoints))

    def features(self, domain: str, shape_idx) -> tuple[np.ndarray, np.ndarray]:
        """(n, V, D) float32 features of the given shapes (zeros where missing) and the present mask."""
        shape_idx = np.asarray(shape_idx, dtype=np.int64)
        V = len(self.viewpoints)
        present = np.zeros((len(shape_idx), V), dtype=bool)
        rows, where = [], []
        for a, si in enumerate(shape_idx):
            s = self.shapes[si]
            for k, vp in enumerate(self.viewpoints):
                row = self._key_to_row.get((domain, s, vp.name))
                if row is not None:
                    present[a, k] = True
                    rows.append(row)
                    where.append(a * V + k)
        out = np.zeros((len(shape_idx) * V, self.feature_dim), dtype=np.float32)
        if rows:
            out[np.asarray(where)] = self.store.read_features(rows)
        return out.reshape(len(shape_idx), V, self.feature_dim), present

    # ------------------------------------------------------------ FAISS
    def faiss_index(self, domain: str, viewpoint: str):
        key = (domain, viewpoint)
        if key not in self._faiss:
            rows = self.rows(domain, viewpoint)
            if len(rows) == 0:
                raise StoreError(f"{self.folder}: no {domain} views at viewpoint {viewpoint}")
            idx = self._load_or_build(domain, viewpoint, rows)
            self._cpu[key] = idx
            backend = self.gpu_backend()
            if backend == "faiss":
                idx = self._to_gpu(idx)
                self._on_gpu.add(key)
            elif backend == "torch":
                self._torch_gpu[key] = self._to_torch_gpu(key)
                self._on_gpu.add(key)
            self._faiss[key] = idx
        return self._faiss[key]

    def _load_or_build(self, domain: str, viewpoint: str, rows: np.ndarray):
        faiss = _faiss()
        stem = index_file_stem(domain, viewpoint)
        fpath, rpath = self.folder / f"{stem}.faiss", self.folder / f"{stem}.rows.npy"
        if fpath.exists() and rpath.exists():
            try:
                saved_rows = np.load(rpath)
                if np.array_equal(saved_rows, rows):
                    idx = faiss.read_index(str(fpath))
                    if idx.ntotal == len(rows) and idx.d == self.feature_dim:
                        return idx
            except Exception:  # a damaged index file is rebuilt from the store, which is the truth
                pass
        return build_flat(self.store, rows)

    def gpu_backend(self) -> str | None:
        """'faiss' (faiss built with GPU support), 'torch' (faiss-cpu, but torch sees CUDA), or None."""
        if self._gpu == "never":
            return None
        if gpu_available():
            return "faiss"
        if torch_cuda_available():
            return "torch"
        if self._gpu == "always":
            raise StoreError("GPU search asked for, but neither faiss nor torch sees a GPU")
        return None

    def _to_torch_gpu(self, key):
        """The vectors on the GPU (fp16 like faiss's useFloat16, else fp32) and their squared norms."""
        import torch

        X = flat_vectors(self._cpu[key])
        dtype = torch.float16 if self._gpu_float16 else torch.float32
        Xg = torch.empty((len(X), X.shape[1]), dtype=dtype, device=TORCH_GPU_DEVICE)
        for s in range(0, len(X), 256):
            Xg[s:s + 256] = torch.from_numpy(X[s:s + 256]).to(TORCH_GPU_DEVICE, dtype)
        norms = torch.cat([(Xg[s:s + 256].float() ** 2).sum(1) for s in range(0, len(X), 256)])
        return Xg, norms

    def _torch_candidates(self, key, q: np.ndarray, kk: int) -> np.ndarray:
        import torch

        Xg, norms = self._torch_gpu[key]
        Qg = torch.from_numpy(q).to(TORCH_GPU_DEVICE, Xg.dtype)
        scores = norms[None, :] - 2.0 * (Qg @ Xg.T).float()
        return torch.topk(scores, kk, dim=1, largest=False).indices.cpu().numpy()

    def _to_gpu(self, idx):
        faiss = _faiss()
        if self._gpu_res is None:
            self._gpu_res = faiss.StandardGpuResources()
        co = faiss.GpuClonerOptions()
        co.useFloat16 = self._gpu_float16
        return faiss.index_cpu_to_gpu(self._gpu_res, 0, idx, co)

    def compressed(self):
        """The PCA candidate index of this folder (see compress.py), loaded once."""
        if self._compressed is None:
            from .compress import CompressedSearch

            self._compressed = CompressedSearch(self)
        return self._compressed

    def search(self, domain: str, viewpoint: str, queries: np.ndarray, k: int,
               mode: str = "exact", candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest views of (domain, viewpoint): (nq,k) mean-squared distances and store rows.

        FAISS computes ||x||² + ||y||² − 2x·y, which rounds (a view's distance to itself comes
        out near 1e-10, not 0) and, on the GPU, may hold fp16 vectors; so it only proposes
        candidates, and the best ones are re-ranked from the stored features in float32. The
        ranking then equals the exhaustive float32 one. A single query on the CPU takes its
        candidates from a BLAS pass instead (`exact_knn`: FAISS scans one query on one thread).
        `mode='compressed'` takes `candidates` (default max(100, 10k)) from the PCA index.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.feature_dim)
        rows = self.rows(domain, viewpoint)
        k = min(k, len(rows))
        if mode == "compressed":
            cand = self.compressed().candidates(domain, viewpoint, q, max(k, candidates or max(100, 10 * k)))
            return self.rerank(domain, viewpoint, q, cand, k)
        if mode != "exact":
            raise StoreError(f"unknown search mode {mode!r}; use exact or compressed")
        idx = self.faiss_index(domain, viewpoint)
        if len(q) == 1 and (domain, viewpoint) not in self._on_gpu:
            d, pos = exact_knn(self.vectors(domain, viewpoint), self._norms(domain, viewpoint), q[0], k, rows)
            return d[None, :], rows[pos][None, :]
        kk = candidate_count(k, len(rows))
        if (domain, viewpoint) in self._torch_gpu:
            ids = self._torch_candidates((domain, viewpoint), q, kk)
        else:
            _, ids = idx.search(q, kk)
        return self.rerank(domain, viewpoint, q, rows[np.clip(ids, 0, None)], k)

    def vectors(self, domain: str, viewpoint: str) -> np.ndarray:
        """The float32 vectors of a (domain, viewpoint) index, in `rows()` order, without a copy."""
        self.faiss_index(domain, viewpoint)
        return flat_vectors(self._cpu[(domain, viewpoint)])

    def _norms(self, domain: str, viewpoint: str) -> np.ndarray:
        key = (domain, viewpoint)
        if key not in self._norm_cache:
            X = self.vectors(domain, viewpoint)
            self._norm_cache[key] = np.array([x @ x for x in X], dtype=np.float32)
        return self._norm_cache[key]

    def rerank(self, domain: str, viewpoint: str, q: np.ndarray, cand_rows: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact float32 mean-squared distances of candidate rows, best k first (ties by row).

        Candidate features come from the in-memory exact index when it is loaded, else from the store.
        """
        d_out = np.empty((len(q), k), dtype=np.float32)
        r_out = np.empty((len(q), k), dtype=np.int64)
        X = self.vectors(domain, viewpoint) if (domain, viewpoint) in self._cpu else None
        for i in range(len(q)):
            if X is not None:
                d = exact_mean_sq(q[i], X, self._positions(domain, viewpoint, cand_rows[i]))
            else:
                d = exact_mean_sq(q[i], self.store.read_features(cand_rows[i]))
            order = np.lexsort((cand_rows[i], d))[:k]
            d_out[i], r_out[i] = d[order], cand_rows[i][order]
        return d_out, r_out

    def _positions(self, domain: str, viewpoint: str, rows: np.ndarray) -> np.ndarray:
        all_rows = self.rows(domain, viewpoint)
        order = np.argsort(all_rows)
        return order[np.searchsorted(all_rows, rows, sorter=order)]

    def distances_to_all(self, domain: str, viewpoint: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact distances from each query to every view of (domain, viewpoint), in `rows()` order."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.feature_dim)
        X = self.vectors(domain, viewpoint)
        out = np.empty((len(q), len(X)), dtype=np.float32)
        for i in range(len(q)):
            out[i] = exact_mean_sq(q[i], X)
        return out, self.rows(domain, viewpoint)


def flat_vectors(idx) -> np.ndarray:
    """The (ntotal, d) float32 vectors of a FAISS IndexFlat, as a numpy view without a copy."""
    return _faiss().rev_swig_ptr(idx.get_xb(), idx.ntotal * idx.d).reshape(idx.ntotal, idx.d)


def build_flat(store: FeatureStore, rows: np.ndarray, batch: int = 256):
    """Exhaustive L2 index over the given store rows (fp16 features upcast to float32)."""
    faiss = _faiss()
    idx = faiss.IndexFlatL2(store.feature_dim)
    for start in range(0, len(rows), batch):
        idx.add(store.read_features(rows[start:start + batch]))
    return idx


def write_indexes(folder: Path | str, progress: bool = False) -> dict:
    """(Re)build every (domain, viewpoint) index of a folder from its store and save them."""
    faiss = _faiss()
    folder = Path(folder)
    with ShapeIndex(folder, gpu="never") as si:
        keys = sorted(si._rows)
        manifest = {"layout": LAYOUT, "metric": "squared L2 / feature length", "store_n_views": si.store.n_views,
                    "indexes": {}}
        it = keys
        if progress:
            from tqdm import tqdm
            it = tqdm(keys, desc="faiss", unit="index", leave=False)
        for d, vp in it:
            rows = si.rows(d, vp)
            idx = build_flat(si.store, rows)
            stem = index_file_stem(d, vp)
            tmp = folder / f"{stem}.faiss.tmp"
            faiss.write_index(idx, str(tmp))
            os.replace(tmp, folder / f"{stem}.faiss")
            np.save(folder / f"{stem}.rows.tmp.npy", rows)
            os.replace(folder / f"{stem}.rows.tmp.npy", folder / f"{stem}.rows.npy")
            manifest["indexes"][f"{d}/{vp}"] = {"file": f"{stem}.faiss", "views": int(len(rows))}
        # remove indexes of (domain, viewpoint) pairs that no longer exist
        wanted = {f"{index_file_stem(d, vp)}.faiss" for d, vp in keys}
        for p in folder.glob("*.faiss"):
            if p.name not in wanted:
                p.unlink()
                rp = p.with_name(p.name[: -len(".faiss")] + ".rows.npy")
                if rp.exists():
                    rp.unlink()
    tmp = folder / (MANIFEST + ".tmp")
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, folder / MANIFEST)
    return manifest


def _count(values) -> dict:
    out: dict = {}
    for v in values:
        out[v] = out.get(v, 0) + 1
    return out
