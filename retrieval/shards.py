"""Sharded indexes: shapes spread over K ordinary index folders by a stable hash of the shape id.

    <index>/shards.json          {"format": "cvret-shards/v1", "shards": K}  (written atomically)
    <index>/shards/0003/         an ordinary index folder (manifest + segments) holding shard 3's shapes

A shape always lands in the same shard (sha256 of its id, modulo K), so machines can build
different shards of one dataset independently (`cvret index --shards K --shard k`) and
`cvret index --merge` puts the folders together without embedding anything again.
`ShardedIndex` opens such a folder with the same interface as `index.ShapeIndex`: searches run
per shard and their exact top-k lists are merged, so rankings and distances equal those of one
unsharded index. Global row numbers are `local_row * K + shard`.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections import Counter
from dataclasses import replace
from pathlib import Path

import numpy as np

from .dataset import Dataset
from .errors import CvretError, StoreError
from .fsio import atomic_write_text
from .store import MANIFEST_FILE, SEGMENTS_DIR, ViewRecord, index_exists

SHARDS_FILE = "shards.json"
FORMAT = "cvret-shards/v1"


def shard_of(shape: str, n_shards: int) -> int:
    """The shard of a shape id: stable across machines, Python versions and runs."""
    return int.from_bytes(hashlib.sha256(shape.encode("utf-8")).digest()[:8], "big") % n_shards


def is_sharded(folder: Path | str) -> bool:
    return (Path(folder) / SHARDS_FILE).exists()


def shard_folder(folder: Path | str, k: int) -> Path:
    return Path(folder) / "shards" / f"{k:04d}"


def read_shards(folder: Path | str) -> int:
    """K of a sharded folder (StoreError when shards.json is unreadable)."""
    path = Path(folder) / SHARDS_FILE
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        if doc.get("format") != FORMAT or int(doc["shards"]) < 1:
            raise ValueError
        return int(doc["shards"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        raise StoreError(f"{path}: damaged or not a cvret shards file") from None


def declare_shards(folder: Path, n_shards: int):
    """Create or check `<folder>/shards.json`; refuses to turn an unsharded index into a sharded one."""
    folder.mkdir(parents=True, exist_ok=True)
    if is_sharded(folder):
        have = read_shards(folder)
        if have != n_shards:
            raise CvretError(f"{folder}: index has {have} shards, not {n_shards} (shards are fixed when created)")
        return
    if index_exists(folder):
        raise CvretError(f"{folder}: holds an unsharded index; use another --out to build a sharded one")
    atomic_write_text(folder / SHARDS_FILE, json.dumps({"format": FORMAT, "shards": n_shards}) + "\n")


def split_dataset(ds: Dataset, n_shards: int, k: int) -> Dataset:
    views = [v for v in ds.views if shard_of(v.shape, n_shards) == k]
    cats = {s: c for s, c in ds.categories.items() if shard_of(s, n_shards) == k}
    return Dataset(ds.root, ds.viewpoints, views, cats, list(ds.problems), ds.source)


def build_sharded(dataset: Dataset, out: Path | str, spec, n_shards: int, shards: list[int] | None = None,
                  **options) -> dict:
    """Build (or update) the given shards (default: all) of a sharded index, one after another in this
    process with one encoder; returns {shard: IndexReport}. Options are those of `indexer.build_index`."""
    from .indexer import build_index

    out = Path(out)
    if n_shards < 1:
        raise CvretError(f"--shards must be at least 1, not {n_shards}")
    todo = list(range(n_shards)) if shards is None else shards
    bad = [k for k in todo if not 0 <= k < n_shards]
    if bad:
        raise CvretError(f"--shard {bad[0]} is not between 0 and {n_shards - 1}")
    declare_shards(out, n_shards)
    cache = options.pop("encoder_cache", None)
    cache = {} if cache is None else cache
    reports = {}
    for k in todo:
        sub = split_dataset(dataset, n_shards, k)
        if not sub.views:
            continue
        reports[k] = build_index(sub, shard_folder(out, k), spec, encoder_cache=cache, extents_from=dataset,
                                 **options)
    return reports


def merge_shards(sources: list[Path], out: Path) -> list[int]:
    """Put shard folders built elsewhere into `out` (hard links where possible, else copies); returns the
    shards added. Every source must be a sharded index of the same K and the same encoder."""
    from .fingerprint import Fingerprint

    out = Path(out)
    n = None
    fp = None
    added = []
    for src in sources:
        src = Path(src)
        k_src = read_shards(src)
        if n is None:
            n = k_src
            declare_shards(out, n)
        elif k_src != n:
            raise CvretError(f"{src}: has {k_src} shards, the others {n}")
        for k in range(n):
            folder = shard_folder(src, k)
            if not (folder / MANIFEST_FILE).exists():
                continue
            with open(folder / MANIFEST_FILE, encoding="utf-8") as f:
                shard_fp = json.load(f)["fingerprint"]
            if fp is None:
                fp = shard_fp
            elif Fingerprint.from_dict(fp).diff(shard_fp):
                raise CvretError(f"{folder}: built with another encoder than the other shards")
            dest = shard_folder(out, k)
            if dest.resolve() == folder.resolve():
                continue
            if (dest / MANIFEST_FILE).exists():
                raise CvretError(f"{dest}: shard {k} is already there (from another source)")
            _link_tree(folder, dest)
            added.append(k)
    if n is None:
        raise CvretError("no sharded index to merge")
    return added


def _link_tree(src: Path, dest: Path):
    """Copy an index folder (segments are immutable, so hard links are safe), manifest last."""
    tmp = dest.with_name(dest.name + ".merging")
    shutil.rmtree(tmp, ignore_errors=True)
    (tmp / SEGMENTS_DIR).mkdir(parents=True)
    for p in (src / SEGMENTS_DIR).iterdir():
        try:
            os.link(p, tmp / SEGMENTS_DIR / p.name)
        except OSError:
            shutil.copy2(p, tmp / SEGMENTS_DIR / p.name)
    if (src / "compressed").is_dir():
        shutil.copytree(src / "compressed", tmp / "compressed")
    shutil.copy2(src / MANIFEST_FILE, tmp / MANIFEST_FILE)
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(tmp, dest)


class ShardedStore:
    """The `store` of a sharded index: reads by global row, verifies every shard."""

    def __init__(self, index: "ShardedIndex"):
        self.index = index

    @property
    def feature_dtype(self) -> str:
        return self.index.parts[0][1].store.feature_dtype

    @property
    def feature_dim(self) -> int:
        return self.index.feature_dim

    @property
    def n_views(self) -> int:
        return sum(si.store.n_views for _, si in self.index.parts)

    @property
    def problems(self) -> list[str]:
        return [p for _, si in self.index.parts for p in si.store.problems]

    @property
    def generation(self) -> dict:
        return {k: si.store.generation for k, si in self.index.parts}

    @property
    def layout(self) -> str:
        return f"{FORMAT}: {self.index.n_shards} shards of " + self.index.parts[0][1].store.layout

    def records(self) -> list[ViewRecord]:
        return [self.index.record(self.index.global_row(k, r.row)) for k, si in self.index.parts
                for r in si.store.records()]

    def read_raw(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.feature_dim), dtype=self.feature_dtype)
        for k, si in self.index.parts:
            sel = np.flatnonzero(rows % self.index.n_shards == k)
            if len(sel):
                out[sel] = si.store.read_raw(rows[sel] // self.index.n_shards)
        return out

    def read_features(self, rows) -> np.ndarray:
        return self.read_raw(rows).astype(np.float32)

    def verify(self, progress=None) -> list[ViewRecord]:
        return [self.index.record(self.index.global_row(k, r.row)) for k, si in self.index.parts
                for r in si.store.verify(progress)]

    def size_bytes(self) -> int:
        return sum(si.store.size_bytes() for _, si in self.index.parts)

    def close(self):
        self.index.close()


class ShardedIndex:
    """A sharded index folder with the interface of `index.ShapeIndex` (read-only)."""

    def __init__(self, folder: Path | str, gpu: str = "auto", gpu_float16: bool = True, torch_device: str = "cuda",
                 ray: str | None = None):
        """`ray`: None (shards opened in this process) or a Ray address ('auto', 'local', host:port): each
        shard is then held by an actor of that cluster (`cluster.open_remote_shards`)."""
        from .fingerprint import Fingerprint
        from .index import ShapeIndex

        self.folder = Path(folder)
        self.name = self.folder.name
        self.n_shards = read_shards(self.folder)
        self.parts: list[tuple[int, ShapeIndex]] = []
        try:
            if ray is not None:
                from .cluster import open_remote_shards

                self.parts = open_remote_shards(self.folder, ray)
            for k in range(self.n_shards if ray is None else 0):
                if index_exists(shard_folder(self.folder, k)):
                    self.parts.append((k, ShapeIndex(shard_folder(self.folder, k), gpu=gpu, gpu_float16=gpu_float16,
                                                     torch_device=torch_device)))
            if not self.parts:
                raise StoreError(f"{self.folder}: none of its {self.n_shards} shards has been built yet")
            fp = self.parts[0][1].fingerprint
            for k, si in self.parts[1:]:
                if Fingerprint.from_dict(fp).diff(si.fingerprint):
                    raise StoreError(f"{shard_folder(self.folder, k)}: built with another encoder than shard "
                                     f"{self.parts[0][0]}")
        except BaseException:
            self.close()
            raise
        self.store = ShardedStore(self)
        self._build_tables()

    def close(self):
        for _, si in getattr(self, "parts", []):
            si.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ------------------------------------------------------------ tables
    def global_row(self, k: int, row) -> int:
        return int(row) * self.n_shards + k

    def _part(self, row: int):
        return self._by_shard[int(row) % self.n_shards], int(row) // self.n_shards

    def _build_tables(self):
        self._by_shard = dict(self.parts)
        first = self.parts[0][1]
        self.fingerprint = first.fingerprint
        self.feature_dim = first.feature_dim
        self.shapes = sorted({s for _, si in self.parts for s in si.shapes})
        self._shape_pos = {s: i for i, s in enumerate(self.shapes)}
        self._shape_home = {s: (k, si, si._shape_pos[s]) for k, si in self.parts for s in si.shapes}
        self.domains = sorted({d for _, si in self.parts for d in si.domains})
        seen, vps = set(), []
        for _, si in self.parts:
            for vp in si.viewpoints:
                if vp.name not in seen:
                    seen.add(vp.name)
                    vps.append(vp)
        self.viewpoints = vps
        self.categories = {s: c for _, si in self.parts for s, c in si.categories.items()}
        from .calibration import merge

        self.calibration = merge([getattr(si, "calibration", None) or {} for _, si in self.parts])

    def record(self, row: int) -> ViewRecord:
        si, local = self._part(row)
        return replace(si.record(local), row=int(row))

    def row_of(self, domain: str, shape: str, viewpoint: str) -> int | None:
        home = self._shape_home.get(shape)
        if home is None:
            return None
        k, si, _ = home
        r = si.row_of(domain, shape, viewpoint)
        return None if r is None else self.global_row(k, r)

    def rows(self, domain: str, viewpoint: str) -> np.ndarray:
        parts = [si.rows(domain, viewpoint) * self.n_shards + k for k, si in self.parts]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def viewpoint_names(self, domain: str | None = None) -> list[str]:
        have = {n for _, si in self.parts for n in si.viewpoint_names(domain)}
        return [vp.name for vp in self.viewpoints if vp.name in have]

    def summary(self) -> dict:
        parts = [si.summary() for _, si in self.parts]
        size = sum(p["size_bytes"] for p in parts)
        views = sum(p["views"] for p in parts)
        domains = Counter()
        for p in parts:
            domains.update(p["domains"])
        return {**parts[0], "index": str(self.folder), "shapes": len(self.shapes), "views": views,
                "domains": dict(sorted(domains.items())), "viewpoints": [vp.to_dict() for vp in self.viewpoints],
                "categories": dict(sorted(Counter(self.categories.values()).items())),
                "layout": self.store.layout, "generation": self.store.generation, "size_bytes": size,
                "bytes_per_view": size / max(1, views), "problems": self.store.problems,
                "shards": {"count": self.n_shards, "built": [k for k, _ in self.parts]}}

    # ------------------------------------------------------------ features (the studies)
    def present(self, domain: str) -> np.ndarray:
        out = np.zeros((len(self.shapes), len(self.viewpoints)), dtype=bool)
        for s, i in self._shape_pos.items():
            _, si, j = self._shape_home[s]
            for v, vp in enumerate(self.viewpoints):
                out[i, v] = si.row_of(domain, s, vp.name) is not None
        return out

    def features(self, domain: str, shape_idx) -> tuple[np.ndarray, np.ndarray]:
        shape_idx = np.asarray(shape_idx, dtype=np.int64)
        V = len(self.viewpoints)
        feats = np.zeros((len(shape_idx), V, self.feature_dim), dtype=np.float32)
        present = np.zeros((len(shape_idx), V), dtype=bool)
        for k, si in self.parts:
            sel = [a for a, g in enumerate(shape_idx) if self._shape_home[self.shapes[g]][0] == k]
            if not sel:
                continue
            local = [self._shape_home[self.shapes[shape_idx[a]]][2] for a in sel]
            f, p = si.features(domain, local)
            local_vps = {vp.name: j for j, vp in enumerate(si.viewpoints)}
            for v, vp in enumerate(self.viewpoints):
                j = local_vps.get(vp.name)
                if j is not None:
                    feats[sel, v] = f[:, j]
                    present[sel, v] = p[:, j]
        return feats, present

    # ------------------------------------------------------------ search
    def gpu_backend(self):
        return self.parts[0][1].gpu_backend()

    def search(self, domain: str, viewpoint: str, queries: np.ndarray, k: int,
               mode: str = "exact", candidates: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Each shard's exact top-k, merged: the k best overall are among them (ties by global row)."""
        q = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.feature_dim)
        ds, rs = [], []
        for sk, si in self.parts:
            if len(si.rows(domain, viewpoint)):
                d, r = si.search(domain, viewpoint, q, k, mode=mode, candidates=candidates)
                ds.append(d)
                rs.append(r * self.n_shards + sk)
        if not ds:
            raise StoreError(f"{self.folder}: no {domain} views at viewpoint {viewpoint}")
        d, r = np.concatenate(ds, axis=1), np.concatenate(rs, axis=1)
        k = min(k, d.shape[1])
        order = np.lexsort((r, d), axis=1)[:, :k]
        return np.take_along_axis(d, order, 1), np.take_along_axis(r, order, 1)

    def exact_distances(self, domain: str, viewpoint: str, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty(len(rows), dtype=np.float32)
        for k, si in self.parts:
            sel = np.flatnonzero(rows % self.n_shards == k)
            if len(sel):
                out[sel] = si.exact_distances(domain, viewpoint, q, rows[sel] // self.n_shards)
        return out

    def distances_to_all(self, domain: str, viewpoint: str, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        ds, rs = [], []
        for k, si in self.parts:
            if len(si.rows(domain, viewpoint)):
                d, r = si.distances_to_all(domain, viewpoint, queries)
                ds.append(d)
                rs.append(r * self.n_shards + k)
        return np.concatenate(ds, axis=1), np.concatenate(rs)

    def compressed(self):
        return _ShardedCompressed(self)


class _ShardedCompressed:
    """Code-space distances of every shard, in the sharded index's `rows()` order."""

    def __init__(self, index: ShardedIndex):
        self.parts = [(si, si.compressed()) for _, si in index.parts]

    def approximate_distances(self, domain: str, viewpoint: str, q: np.ndarray) -> np.ndarray:
        out = [c.approximate_distances(domain, viewpoint, q) for si, c in self.parts if len(si.rows(domain, viewpoint))]
        return np.concatenate(out, axis=1)

    def memory_per_view(self) -> float:
        return self.parts[0][1].memory_per_view()


def open_any(folder: Path | str, gpu: str = "auto"):
    """ShapeIndex or ShardedIndex, whichever the folder holds."""
    from .index import ShapeIndex

    return ShardedIndex(folder, gpu=gpu) if is_sharded(folder) else ShapeIndex(folder, gpu=gpu)

