"""The opened index folder: its tables (shapes, domains, viewpoints, rows), features, and exact search.

Search is `candidates + exact re-rank`, in one place (`ShapeIndex.search`): a candidate source
(`candidates.py`: resident CPU scan, torch or faiss GPU, compressed codes) proposes rows, and
their distances are computed exactly from the stored features, so the ranking equals the
exhaustive float32 one. Distances leave this module as the map defines them: the mean over the
feature's elements of the squared difference.
"""
from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from .candidates import FaissGpuScan, ResidentScan, TorchGpuScan, choose_gpu_backend
from .compress import COMPRESSED_DIR
from .distance import candidate_count, exact_mean_sq
from .errors import StoreError
from .store import ViewRecord, open_store
from .viewpoints import Viewpoint


class ShapeIndex:
    """An index folder opened for querying and evaluation (read-only: a snapshot of one generation).

    `gpu`: 'auto' (a GPU candidate source when faiss or torch sees one), 'never' or 'always';
    `torch_device`: where the torch GPU source puts the vectors.
    """

    def __new__(cls, folder: Path | str, *args, **kwargs):
        """A sharded folder (shards.json) opens as a `shards.ShardedIndex`, which has this interface."""
        from .shards import ShardedIndex, is_sharded

        if cls is ShapeIndex and is_sharded(folder):
            return ShardedIndex(folder, *args, **kwargs)
        return super().__new__(cls)

    def __init__(self, folder: Path | str, gpu: str = "auto", gpu_float16: bool = True, torch_device: str = "cuda"):
        self.folder = Path(folder)
        self._torch_device = torch_device
        if not self.folder.is_dir():
            raise StoreError(f"{self.folder}: index folder does not exist")
        self.store = open_store(self.folder)
        self.name = self.folder.name
        self._gpu = gpu
        self._gpu_float16 = gpu_float16
        self._sources: dict[str, object] = {}
        try:
            self._build_tables()
        except BaseException:
            self.store.close()
            raise

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
        self.calibration = self.store.calibration  # gallery extents and distance scale (calibration.py)
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
        size = self.store.size_bytes() + sum(p.stat().st_size for p in (self.folder / COMPRESSED_DIR).glob("*")
                                             if p.is_file())
        return {
            "index": str(self.folder),
            "shapes": len(self.shapes),
            "views": len(self._records),
            "domains": {d: sum(1 for r in self._records.values() if r.domain == d) for d in self.domains},
            "viewpoints": [vp.to_dict() for vp in self.viewpoints],
            "categories": dict(sorted(Counter(self.categories.values()).items())),
            "fingerprint": self.fingerprint,
            "feature_dtype": self.store.feature_dtype,
            "feature_dim": self.feature_dim,
            "layout": self.store.layout,
            "generation": self.store.generation,
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

    # ------------------------------------------------------------ search
    def gpu_backend(self) -> str | None:
        """'faiss', 'torch' or None: which GPU candidate source exact search uses."""
        return choose_gpu_backend(self._gpu)

    def source(self, mode: str = "exact"):
        """The candidate source of a search mode (created once)."""
        if mode not in ("exact", "compressed"):
            raise StoreError(f"unknown search mode {mode!r}; use exact or compressed")
        if mode not in self._sources:
            if mode == "compressed":
                from .compress import CompressedCandidates

                self._sources[mode] = CompressedCandidates(self)
            else:
                backend = self.gpu_backend()
                if backend == "faiss":
                    self._sources[mode] = FaissGpuScan(self, float16=self._gpu_float16)
                elif backend == "torch":
                    self._sources[mode] = TorchGpuScan(self, self._torch_device, float16=self._gpu_float16)
                else:
                    self._sources[mode] = ResidentScan(self)
        return self._sources[mode]

    def compressed(self):
        """The PCA candidate source of this folder (see compress.py), loaded once."""
        return self.source("compressed")

    def search(self, domain: str, viewpoint: str, queries: np.ndarray, k: int,
               mode: str = "exact", candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """k nearest views of (domain, viewpoint): (nq, k) mean-squared distances and store rows, best first.

        The source proposes max(2k, k+32) candidates (compressed: `candidates`, default max(100, 10k)),
        which are re-ranked exactly; ties are broken by store row.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.feature_dim)
        rows = self.rows(domain, viewpoint)
        if len(rows) == 0:
            raise StoreError(f"{self.folder}: no {domain} views at viewpoint {viewpoint}")
        k = min(k, len(rows))
        n = max(k, candidates or max(100, 10 * k)) if mode == "compressed" else candidate_count(k, len(rows))
        cand = self.source(mode).candidates(domain, viewpoint, q, n)
        return self.rerank(domain, viewpoint, q, cand, k)

    def rerank(self, domain: str, viewpoint: str, q: np.ndarray, cand_rows: np.ndarray,
               k: int) -> tuple[np.ndarray, np.ndarray]:
        """Exact mean-squared distances of candidate rows, best k first (ties by row).

        Candidate features come from the resident rows when the CPU scan holds them, else from the store.
        """
        d_out = np.empty((len(q), k), dtype=np.float32)
        r_out = np.empty((len(q), k), dtype=np.int64)
        for i in range(len(q)):
            cand = np.unique(cand_rows[i])
            d = self.exact_distances(domain, viewpoint, q[i], cand)
            order = np.lexsort((cand, d))[:k]
            d_out[i], r_out[i] = d[order], cand[order]
        return d_out, r_out

    def exact_distances(self, domain: str, viewpoint: str, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        """The view distance (distance.exact_mean_sq) from one query to the given rows of (domain, viewpoint)."""
        resident = self._resident(domain, viewpoint)
        if resident is not None:
            return exact_mean_sq(q, resident, self._positions(domain, viewpoint, rows))
        return exact_mean_sq(q, self.store.read_raw(rows))

    def _resident(self, domain: str, viewpoint: str):
        src = self._sources.get("exact")
        if isinstance(src, ResidentScan):
            return src.matrix(domain, viewpoint)
        return None

    def _positions(self, domain: str, viewpoint: str, rows: np.ndarray) -> np.ndarray:
        all_rows = self.rows(domain, viewpoint)
        order = np.argsort(all_rows)
        return order[np.searchsorted(all_rows, rows, sorter=order)]

    def vectors(self, domain: str, viewpoint: str):
        """The resident rows of (domain, viewpoint) in `rows()` order, in the stored dtype (CPU source)."""
        src = self.source("exact")
        if not isinstance(src, ResidentScan):
            src = self._sources.setdefault("resident", ResidentScan(self))
        return src.matrix(domain, viewpoint)

    def distances_to_all(self, domain: str, viewpoint: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Distances from each query to every view of (domain, viewpoint), in `rows()` order.

        Direct float32 sums of squared differences; they may differ from `exact_distances` in the last
        bits (summation order), so rankings built on them re-rank their best candidates exactly.
        """
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.feature_dim)
        src = self.source("exact")
        if isinstance(src, ResidentScan):
            sums = src.sums_to_all(domain, viewpoint, q)
            if sums is not None:
                return sums / np.float32(self.feature_dim), self.rows(domain, viewpoint)
            X = src.matrix(domain, viewpoint)
            return np.stack([exact_mean_sq(qi, X) for qi in q]), self.rows(domain, viewpoint)
        rows = self.rows(domain, viewpoint)
        out = np.empty((len(q), len(rows)), dtype=np.float32)
        for s in range(0, len(rows), 64):
            X = self.store.read_raw(rows[s:s + 64])
            for i, qi in enumerate(q):
                out[i, s:s + 64] = exact_mean_sq(qi, X)
        return out, rows
