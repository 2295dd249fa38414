"""Compressed candidate search for large galleries: PCA codes in FAISS, then exact re-ranking.

Exact search reads 200,704 floats per gallery view. A PCA basis fitted through the Gram
matrix of a sample of stored features (n×n instead of D×D: n ≪ D) maps every view to R
numbers; the FAISS index over those codes proposes candidates, and the candidates are
re-ranked exactly from the stored features, so the reported distances are always exact
and only recall can suffer (the README and `scripts/bench.py` report recall@10 against
exact). Spatial pooling was measured too and needs far more candidates for the same recall.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StoreError

COMPRESSED_DIR = "compressed"


@dataclass
class PCACompressor:
    mean: np.ndarray   # (D,) float32
    basis: np.ndarray  # (D, R) float32, orthonormal columns

    @property
    def rank(self) -> int:
        return int(self.basis.shape[1])

    @classmethod
    def fit(cls, X: np.ndarray, rank: int) -> "PCACompressor":
        """Top-`rank` principal directions of the rows of X through the n×n Gram matrix."""
        X = np.asarray(X, dtype=np.float32)
        mean = X.mean(axis=0)
        Xc = X - mean
        K = (Xc @ Xc.T).astype(np.float64)
        w, U = np.linalg.eigh(K)
        order = np.argsort(w)[::-1]
        keep = [i for i in order[:rank] if w[i] > w[order[0]] * 1e-12]
        if not keep:
            raise StoreError("cannot fit PCA: the sampled features are all identical")
        basis = (Xc.T @ U[:, keep].astype(np.float32)) / np.sqrt(w[keep]).astype(np.float32)
        return cls(mean.astype(np.float32), np.ascontiguousarray(basis, dtype=np.float32))

    def transform(self, X: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray((np.asarray(X, dtype=np.float32) - self.mean) @ self.basis)

    def save(self, path: Path):
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez(tmp, mean=self.mean, basis=self.basis.astype(np.float16))
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: Path) -> "PCACompressor":
        with np.load(path) as z:
            return cls(z["mean"].astype(np.float32), z["basis"].astype(np.float32))


def parse_spec(spec: str) -> int:
    """'pca:128' → 128."""
    m = re.fullmatch(r"pca:(\d+)", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise StoreError(f"unknown compression {spec!r}; use pca:R, e.g. pca:128")
    return int(m.group(1))


def build_compressed(index, spec: str = "pca:128", sample: int = 2048, seed: int = 0, progress: bool = False) -> dict:
    """Fit a PCA on a seeded sample of an index's stored views (all domains) and write one code index per
    (domain, viewpoint) under `<index>/compressed/`."""
    import faiss

    from .index import index_file_stem

    rank = parse_spec(spec)
    folder = Path(index.folder) / COMPRESSED_DIR
    folder.mkdir(exist_ok=True)
    rows = np.array(sorted(r.row for r in index.store.records()), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(sample, len(rows)), replace=False))
    comp = PCACompressor.fit(index.store.read_features(pick), rank)
    comp.save(folder / "pca.npz")
    manifest = {"spec": spec, "rank": comp.rank, "sample": int(len(pick)), "seed": seed,
                "store_n_views": index.store.n_views, "indexes": {}}
    keys = [(d, vp) for d in index.domains for vp in index.viewpoint_names(d)]
    if progress:
        from tqdm import tqdm
        keys = tqdm(keys, desc="compressed", unit="index", leave=False)
    for d, vp in keys:
        r = index.rows(d, vp)
        idx = faiss.IndexFlatL2(comp.rank)
        for s in range(0, len(r), 256):
            idx.add(comp.transform(index.store.read_features(r[s:s + 256])))
        stem = index_file_stem(d, vp)
        faiss.write_index(idx, str(folder / f"{stem}.faiss.tmp"))
        os.replace(folder / f"{stem}.faiss.tmp", folder / f"{stem}.faiss")
        np.save(folder / f"{stem}.rows.npy", r)
        manifest["indexes"][f"{d}/{vp}"] = {"file": f"{stem}.faiss", "views": int(len(r))}
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


class CompressedSearch:
    """Candidate search over PCA codes of one index folder; exact re-ranking is the caller's."""

    def __init__(self, index):
        self.index = index
        self.folder = Path(index.folder) / COMPRESSED_DIR
        mpath = self.folder / "manifest.json"
        if not mpath.exists():
            raise StoreError(f"{index.folder}: no compressed index (build one with `cvret index ... --compress pca:128`)")
        self.manifest = json.loads(mpath.read_text())
        if self.manifest.get("store_n_views") != index.store.n_views:
            raise StoreError(f"{self.folder}: compressed index is older than the store; run `cvret index` again")
        self.compressor = PCACompressor.load(self.folder / "pca.npz")
        self._faiss: dict = {}

    def candidates(self, domain: str, viewpoint: str, q: np.ndarray, n: int) -> np.ndarray:
        idx, rows = self._load(domain, viewpoint)
        _, ids = idx.search(self.compressor.transform(q), min(n, len(rows)))
        return rows[np.clip(ids, 0, None)]

    def approximate_distances(self, domain: str, viewpoint: str, q: np.ndarray) -> np.ndarray:
        """Code-space squared distances from each query to every view, in `rows()` order (for ranking only)."""
        from .index import flat_vectors

        idx, rows = self._load(domain, viewpoint)
        codes = flat_vectors(idx)
        cq = self.compressor.transform(q)
        return ((cq ** 2).sum(1)[:, None] + (codes ** 2).sum(1)[None, :] - 2.0 * cq @ codes.T)

    def _load(self, domain: str, viewpoint: str):
        import faiss

        from .index import index_file_stem

        key = (domain, viewpoint)
        if key not in self._faiss:
            stem = index_file_stem(domain, viewpoint)
            rows = np.load(self.folder / f"{stem}.rows.npy")
            if not np.array_equal(rows, self.index.rows(domain, viewpoint)):
                raise StoreError(f"{self.folder}: compressed index does not match the store; run `cvret index` again")
            self._faiss[key] = (faiss.read_index(str(self.folder / f"{stem}.faiss")), rows)
        return self._faiss[key]

    def memory_per_view(self) -> float:
        return self.compressor.rank * 4.0
