"""The feature store: one HDF5 file (meta.h5) per index with views, features and the encoder fingerprint.

Appends are crash-safe by ordering: a batch is written and flushed first, and only then
is the committed row count (`n_views`) advanced, so an interrupted build leaves at worst
uncommitted rows that the next writer truncates. Each view carries the sha256 of its image,
so a rebuild never re-embeds an image whose content is already stored.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from . import __version__
from .errors import StoreError
from .viewpoints import Viewpoint

STORE_FILE = "meta.h5"
FORMAT = "cvret-store"
FORMAT_VERSION = 1
FEATURE_DTYPES = ("float16", "float32")
_STR = h5py.string_dtype(encoding="utf-8")
_COLUMNS = ("domain", "shape", "viewpoint", "path", "sha256")


@dataclass(frozen=True)
class ViewRecord:
    row: int
    domain: str
    shape: str
    viewpoint: str
    path: str
    sha256: str


class FeatureStore:
    """Read or append views and features of one index. Use as a context manager."""

    def __init__(self, path: Path | str, mode: str = "r"):
        self.path = Path(path)
        self.mode = mode
        if mode == "r" and not self.path.exists():
            raise StoreError(f"{self.path}: no feature store here (build one with `cvret index`)")
        try:
            self.h5 = h5py.File(self.path, mode)
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file, corrupted or truncated ({_first_line(e)}); "
                             "rebuild with `cvret index ... --overwrite`") from None
        if self.h5.attrs.get("format") != FORMAT or "features" not in self.h5 or "views" not in self.h5 \
                or "fingerprint" not in self.h5.attrs:
            self.h5.close()
            raise StoreError(f"{self.path}: not a cvret feature store (missing format, features or views)")
        problems = self.check_integrity()
        if problems:
            self.h5.close()
            raise StoreError(problems[0])
        self._cache: dict | None = None

    # -------------------------------------------------------------- creation
    @classmethod
    def create(cls, path: Path | str, fingerprint: dict, feature_dim: int, feature_dtype: str = "float16") -> "FeatureStore":
        if feature_dtype not in FEATURE_DTYPES:
            raise StoreError(f"unknown feature dtype {feature_dtype!r}; use float16 or float32")
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".h5.tmp")
        with h5py.File(tmp, "w") as h5:
            h5.attrs["format"] = FORMAT
            h5.attrs["format_version"] = FORMAT_VERSION
            h5.attrs["cvret_version"] = __version__
            h5.attrs["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            h5.attrs["fingerprint"] = json.dumps(fingerprint, sort_keys=True)
            h5.attrs["feature_dtype"] = feature_dtype
            h5.attrs["n_views"] = 0
            h5.attrs["viewpoints"] = "[]"
            h5.attrs["categories"] = "{}"
            h5.attrs["problems"] = "[]"
            h5.create_dataset("features", shape=(0, feature_dim), maxshape=(None, feature_dim),
                              dtype=feature_dtype, chunks=(1, feature_dim))
            g = h5.create_group("views")
            for col in _COLUMNS:
                g.create_dataset(col, shape=(0,), maxshape=(None,), dtype=_STR, chunks=(1024,))
            g.create_dataset("active", shape=(0,), maxshape=(None,), dtype="u1", chunks=(1024,))
        tmp.replace(path)
        return cls(path, "r+")

    def close(self):
        if getattr(self, "h5", None) is not None:
            self.h5.close()
            self.h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -------------------------------------------------------------- metadata
    @property
    def fingerprint(self) -> dict:
        return json.loads(self.h5.attrs["fingerprint"])

    @property
    def feature_dtype(self) -> str:
        return str(self.h5.attrs["feature_dtype"])

    @property
    def feature_dim(self) -> int:
        return int(self.h5["features"].shape[1])

    @property
    def n_views(self) -> int:
        """Committed rows (rows past this were written by an interrupted run and are ignored)."""
        return int(self.h5.attrs["n_views"])

    @property
    def viewpoints(self) -> list[Viewpoint]:
        return [Viewpoint.from_dict(d) for d in json.loads(self.h5.attrs["viewpoints"])]

    @property
    def categories(self) -> dict[str, str]:
        return json.loads(self.h5.attrs["categories"])

    @property
    def problems(self) -> list[str]:
        return json.loads(self.h5.attrs.get("problems", "[]"))

    def set_dataset_info(self, viewpoints: list[Viewpoint], categories: dict[str, str], problems: list[str],
                         source: str = ""):
        known = {vp.name: vp for vp in self.viewpoints}
        for vp in viewpoints:
            known[vp.name] = vp
        self.h5.attrs["viewpoints"] = json.dumps([vp.to_dict() for vp in known.values()])
        cats = self.categories
        cats.update(categories)
        self.h5.attrs["categories"] = json.dumps(cats, ensure_ascii=False, sort_keys=True)
        self.h5.attrs["problems"] = json.dumps(problems[:1000], ensure_ascii=False)
        if source:
            self.h5.attrs["source"] = source
        self.h5.flush()

    # -------------------------------------------------------------- rows
    def records(self, active_only: bool = True) -> list[ViewRecord]:
        """All committed view rows (cached; appends refresh the cache)."""
        if self._cache is None:
            n = self.n_views
            g = self.h5["views"]
            cols = {c: [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in g[c][:n]] for c in _COLUMNS}
            active = g["active"][:n].astype(bool)
            recs = [ViewRecord(i, *(cols[c][i] for c in _COLUMNS)) for i in range(n)]
            self._cache = {"all": recs, "active": active}
        if not active_only:
            return self._cache["all"]
        act = self._cache["active"]
        return [r for r in self._cache["all"] if act[r.row]]

    def lookup(self) -> dict[tuple[str, str, str], ViewRecord]:
        """(domain, shape, viewpoint) → the active record."""
        return {(r.domain, r.shape, r.viewpoint): r for r in self.records()}

    def rows_by_hash(self) -> dict[str, int]:
        return {r.sha256: r.row for r in self.records(active_only=False)}

    def read_features(self, rows) -> np.ndarray:
        """Features of the given rows as float32, in the given order (rows need not be sorted)."""
        rows = np.asarray(rows, dtype=np.int64)
        out = np.empty((len(rows), self.feature_dim), dtype=np.float32)
        if len(rows) == 0:
            return out
        # FeatureStore.create writes one uncompressed chunk per view: read the raw chunk bytes (no HDF5
        # selection machinery) and convert float16 through torch (vectorised; numpy's is ~8× slower)
        import torch

        ds = self.h5["features"]
        dtype = np.dtype(self.feature_dtype)
        tout = torch.from_numpy(out)
        for i, r in enumerate(rows):
            _, raw = ds.id.read_direct_chunk((int(r), 0))
            tout[i].copy_(torch.from_numpy(np.frombuffer(raw, dtype=dtype).copy()))
        return out

    # -------------------------------------------------------------- appends
    def recover(self) -> int:
        """Drop rows an interrupted run wrote but never committed; returns how many."""
        n = self.n_views
        extra = self.h5["features"].shape[0] - n
        if extra > 0 or any(self.h5["views"][c].shape[0] != n for c in (*_COLUMNS, "active")):
            self.h5["features"].resize(n, axis=0)
            for c in (*_COLUMNS, "active"):
                self.h5["views"][c].resize(n, axis=0)
            self.h5.flush()
        return max(extra, 0)

    def append(self, records: list[tuple[str, str, str, str, str]], features: np.ndarray):
        """Append (domain, shape, viewpoint, path, sha256) rows with their features, then commit.

        An existing active row for the same (domain, shape, viewpoint) is deactivated, so
        a changed image replaces the old view without rewriting the file.
        """
        if self.mode == "r":
            raise StoreError(f"{self.path}: opened read-only")
        if len(records) != len(features):
            raise ValueError("records and features differ in length")
        if not records:
            return
        feats = np.asarray(features)
        if self.feature_dtype == "float16":
            with np.errstate(over="ignore"):
                f16 = feats.astype(np.float16)
            if not np.isfinite(f16).all():
                raise StoreError(f"{self.path}: features overflow float16; rebuild with --feature-dtype float32")
            feats = f16
        n = self.n_views
        b = len(records)
        old = self.lookup()
        self.h5["features"].resize(n + b, axis=0)
        self.h5["features"][n:n + b] = feats
        g = self.h5["views"]
        for c in (*_COLUMNS, "active"):
            g[c].resize(n + b, axis=0)
        for j, c in enumerate(_COLUMNS):
            g[c][n:n + b] = [r[j] for r in records]
        g["active"][n:n + b] = 1
        superseded = sorted({old[r[:3]].row for r in records if r[:3] in old})
        for row in superseded:
            g["active"][row] = 0
        self.h5.flush()
        self.h5.attrs["n_views"] = n + b  # commit last
        self.h5.attrs["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.h5.flush()
        self._cache = None

    def deactivate(self, rows: list[int]):
        g = self.h5["views"]["active"]
        for row in rows:
            g[row] = 0
        self.h5.flush()
        self._cache = None

    def check_integrity(self) -> list[str]:
        """Problems with the committed rows (empty list = healthy)."""
        out = []
        n = self.n_views
        ds = self.h5["features"]
        if ds.chunks != (1, ds.shape[1]) or ds.compression is not None:
            out.append(f"{self.path}: features are not stored one uncompressed chunk per view")
        if self.h5["features"].shape[0] < n:
            out.append(f"{self.path}: {n} views committed but only {self.h5['features'].shape[0]} feature rows")
        for c in (*_COLUMNS, "active"):
            if self.h5["views"][c].shape[0] < n:
                out.append(f"{self.path}: column {c} shorter than the {n} committed views")
        return out


def _first_line(e: Exception) -> str:
    s = str(e)
    return s.splitlines()[0] if s else type(e).__name__
