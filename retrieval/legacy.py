"""Format 1 of the index folder (`meta.h5` + float32 `.faiss` copies), read as it is.

Queries and evaluations work on such a folder unchanged; the next `cvret index` converts it to
the manifest + segments layout (`store.IndexWriter`) and removes these files. Format 1 has no
checksums, so nothing read from it can be verified.
"""
from __future__ import annotations

import json
from pathlib import Path

import h5py
import numpy as np

from .errors import StoreError
from .store import ViewRecord, ViewTable
from .viewpoints import Viewpoint

LEGACY_FILES = ("meta.h5", "*.faiss", "*.rows.npy", "indexes.json", "compressed/*.faiss", "compressed/*.rows.npy",
                "compressed/pca.npz", "compressed/manifest.json")
_COLUMNS = ("domain", "shape", "viewpoint", "path", "sha256")


class LegacyStore(ViewTable):
    """Read-only access to a format-1 `meta.h5` with the same interface as `store.FeatureStore`."""

    layout = "cvret-store v1 (meta.h5 + float32 .faiss copies; the next `cvret index` upgrades it)"
    generation = 0

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self.folder = self.path.parent
        try:
            self.h5 = h5py.File(self.path, "r")
        except OSError as e:
            raise StoreError(f"{self.path}: not a readable HDF5 file ({str(e).splitlines()[0] if str(e) else e})") \
                from None
        try:
            a = self.h5.attrs
            if a.get("format") != "cvret-store" or "features" not in self.h5 or "views" not in self.h5:
                raise KeyError
            self.next_row = int(a["n_views"])
            g = self.h5["views"]
            cols = {c: [x.decode("utf-8") if isinstance(x, bytes) else str(x) for x in g[c][:self.next_row]]
                    for c in _COLUMNS}
            active = g["active"][:self.next_row].astype(bool)
        except (KeyError, OSError, ValueError):
            self.h5.close()
            raise StoreError(f"{self.path}: not a cvret feature store (format 1) or damaged") from None
        self._records = [ViewRecord(i, *(cols[c][i] for c in _COLUMNS)) for i in range(self.next_row) if active[i]]
        self._by_row = {r.row: r for r in self._records}

    def close(self):
        if getattr(self, "h5", None) is not None:
            self.h5.close()
            self.h5 = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

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
        return len(self._records)

    @property
    def viewpoints(self) -> list[Viewpoint]:
        return [Viewpoint.from_dict(d) for d in json.loads(self.h5.attrs["viewpoints"])]

    @property
    def categories(self) -> dict[str, str]:
        return json.loads(self.h5.attrs["categories"])

    @property
    def problems(self) -> list[str]:
        return json.loads(self.h5.attrs.get("problems", "[]"))

    @property
    def calibration(self) -> dict:
        return {}  # format 1 predates calibration: `calibration.Calibration` measures it when needed

    @property
    def source(self) -> str:
        return str(self.h5.attrs.get("source", ""))

    def size_bytes(self) -> int:
        return sum(p.stat().st_size for p in self.folder.rglob("*") if p.is_file())

    def read_raw(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        ds = self.h5["features"]
        out = np.empty((len(rows), self.feature_dim), dtype=self.feature_dtype)
        for i, r in enumerate(rows):
            out[i] = ds[int(r)]
        return out

    def read_raw_into(self, rows, out: np.ndarray):
        out[:] = self.read_raw(rows).view(np.uint8).reshape(len(out), -1)

    def verify(self, progress=None) -> list[ViewRecord]:
        return []  # format 1 has no checksums
