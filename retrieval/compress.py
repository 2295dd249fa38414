"""Compressed candidate search for large galleries: PCA codes in FAISS, then exact re-ranking.

Exact search reads 200,704 numbers per gallery view. A PCA basis fitted through the Gram
matrix of a sample of stored features (n×n instead of D×D: n ≪ D) maps every view to R
numbers; the FAISS index over those codes proposes candidates, and the candidates are
re-ranked exactly from the stored features, so the reported distances are always exact
and only recall can suffer (the README and `scripts/bench.py` report recall@10 against
exact). Spatial pooling was measured too and needs far more candidates for the same recall.

Files (`<index>/compressed/`): `manifest.json` (the commit point, with the sha256 of every
file it lists and the store generation it was built from) and generation-named code files
written before it, so a killed rebuild leaves the previous compressed index usable or a clear
"run `cvret index` again", and a damaged file is refused rather than silently changing rankings.
"""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import re
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import StoreError
from .fsio import atomic_write_bytes, atomic_write_text

COMPRESSED_DIR = "compressed"
MANIFEST = "manifest.json"
FORMAT = "cvret-compressed/v2"


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

    def to_bytes(self) -> bytes:
        buf = io.BytesIO()
        np.savez(buf, mean=self.mean, basis=self.basis.astype(np.float16))
        return buf.getvalue()

    @classmethod
    def from_bytes(cls, data: bytes) -> "PCACompressor":
        with np.load(io.BytesIO(data)) as z:
            return cls(z["mean"].astype(np.float32), z["basis"].astype(np.float32))


def parse_spec(spec: str) -> int:
    """'pca:128' → 128."""
    m = re.fullmatch(r"pca:(\d+)", spec.strip())
    if not m or int(m.group(1)) < 1:
        raise StoreError(f"unknown compression {spec!r}; use pca:R, e.g. pca:128")
    return int(m.group(1))


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a, allow_pickle=False)
    return buf.getvalue()


def read_manifest(folder: Path) -> dict | None:
    """The compressed manifest, None when there is none, StoreError when it is damaged."""
    path = folder / COMPRESSED_DIR / MANIFEST
    if not path.exists():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if not isinstance(doc, dict):
            raise ValueError
    except (OSError, ValueError, UnicodeDecodeError):
        raise StoreError(f"{path}: damaged compressed index manifest; run `cvret index` again to rebuild it") from None
    return doc


def build_compressed(index, spec: str = "pca:128", sample: int = 2048, seed: int = 0, progress: bool = False) -> dict:
    """Fit a PCA on a seeded sample of an index's stored views (all domains) and write one code table per
    (domain, viewpoint) under `<index>/compressed/`; the manifest is written last."""
    rank = parse_spec(spec)
    folder = Path(index.folder) / COMPRESSED_DIR
    folder.mkdir(exist_ok=True)
    rows = np.array(sorted(r.row for r in index.store.records()), dtype=np.int64)
    rng = np.random.default_rng(seed)
    pick = np.sort(rng.choice(rows, size=min(sample, len(rows)), replace=False))
    comp = PCACompressor.fit(index.store.read_features(pick), rank)
    tag = uuid.uuid4().hex[:8]
    files = {}

    def put(name: str, data: bytes):
        atomic_write_bytes(folder / name, data)
        files[name] = hashlib.sha256(data).hexdigest()

    put(f"pca-{tag}.npz", comp.to_bytes())
    manifest = {"format": FORMAT, "spec": spec, "rank": comp.rank, "sample": int(len(pick)), "seed": seed,
                "store_generation": index.store.generation, "pca": f"pca-{tag}.npz", "indexes": {}, "files": files}
    keys = [(d, vp) for d in index.domains for vp in index.viewpoint_names(d)]
    if progress:
        from tqdm import tqdm
        keys = tqdm(keys, desc="compressed", unit="index", leave=False)
    for n, (d, vp) in enumerate(keys):
        r = index.rows(d, vp)
        codes = np.concatenate([comp.transform(index.store.read_features(r[s:s + 256])) for s in range(0, len(r), 256)])
        name = f"codes-{tag}-{n:04d}.npy"
        put(name, _npy_bytes(np.ascontiguousarray(codes, dtype=np.float32)))
        put(f"rows-{tag}-{n:04d}.npy", _npy_bytes(r))
        manifest["indexes"][f"{d}/{vp}"] = {"codes": name, "rows": f"rows-{tag}-{n:04d}.npy", "views": int(len(r))}
    atomic_write_text(folder / MANIFEST, json.dumps(manifest, indent=2) + "\n")
    # the previous generation's files (and any leftovers of killed rebuilds) are no longer listed
    keep = set(files) | {MANIFEST}
    for p in folder.iterdir():
        if p.is_file() and p.name not in keep:
            with contextlib.suppress(OSError):
                p.unlink()
    return manifest


def is_current(index) -> bool:
    """Whether `<index>/compressed` exists and was built from the index's current generation."""
    try:
        doc = read_manifest(Path(index.folder))
    except StoreError:
        return False
    return doc is not None and doc.get("format") == FORMAT and doc.get("store_generation") == index.store.generation


class CompressedCandidates:
    """Candidate search over PCA codes of one index folder; exact re-ranking is the caller's."""

    name = "compressed"

    def __init__(self, index):
        import faiss

        self.index = index
        self.folder = Path(index.folder) / COMPRESSED_DIR
        doc = read_manifest(Path(index.folder))
        if doc is None:
            raise StoreError(f"{index.folder}: no compressed index (build one with `cvret index ... --compress pca:128`)")
        if doc.get("format") != FORMAT or doc.get("store_generation") != index.store.generation:
            raise StoreError(f"{self.folder}: compressed index is older than the store; run `cvret index` again")
        self.manifest = doc
        data = {name: self._read(name, digest) for name, digest in doc["files"].items()}
        self.compressor = PCACompressor.from_bytes(data[doc["pca"]])
        self._faiss: dict = {}
        for key, entry in doc["indexes"].items():
            d, vp = key.split("/", 1)
            codes = np.load(io.BytesIO(data[entry["codes"]]))
            rows = np.load(io.BytesIO(data[entry["rows"]]))
            if not np.array_equal(rows, index.rows(d, vp)):
                raise StoreError(f"{self.folder}: compressed index does not match the store; run `cvret index` again")
            idx = faiss.IndexFlatL2(codes.shape[1])
            idx.add(codes)
            self._faiss[(d, vp)] = (idx, rows, codes)

    def _read(self, name: str, digest: str) -> bytes:
        path = self.folder / name
        try:
            data = path.read_bytes()
        except OSError:
            raise StoreError(f"{path}: missing; run `cvret index` again to rebuild the compressed index") from None
        if hashlib.sha256(data).hexdigest() != digest:
            raise StoreError(f"{path}: damaged (checksum mismatch); run `cvret index` again to rebuild the "
                             "compressed index")
        return data

    def _get(self, domain: str, viewpoint: str):
        try:
            return self._faiss[(domain, viewpoint)]
        except KeyError:
            raise StoreError(f"{self.folder}: no compressed codes for {domain} {viewpoint}") from None

    def candidates(self, domain: str, viewpoint: str, q: np.ndarray, n: int) -> np.ndarray:
        idx, rows, _ = self._get(domain, viewpoint)
        _, ids = idx.search(self.compressor.transform(q), min(n, len(rows)))
        return rows[np.clip(ids, 0, None)]

    def approximate_distances(self, domain: str, viewpoint: str, q: np.ndarray) -> np.ndarray:
        """Code-space squared distances from each query to every view, in `rows()` order (for ranking only)."""
        _, _, codes = self._get(domain, viewpoint)
        cq = self.compressor.transform(q)
        return ((cq ** 2).sum(1)[:, None] + (codes ** 2).sum(1)[None, :] - 2.0 * cq @ codes.T)

    def memory_per_view(self) -> float:
        return self.compressor.rank * 4.0
