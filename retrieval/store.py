"""The index folder's storage: immutable feature segments and one atomically replaced manifest.

    manifest.json        the only commit point: segments, the views table, encoder fingerprint,
                         generation and a sha256 of its own content; written to a temporary file,
                         fsynced and renamed, so a reader sees the old generation or the new one
    manifest.prev.json   the previous generation (a hard link), from which a writer repairs a
                         damaged manifest
    segments/*.seg       raw little-endian feature rows (float16 or float32), one file per commit,
                         written under a temporary name, fsynced, renamed, and never modified
    .writer.lock         the advisory lock (fcntl) held by the one writer; readers never take it

Every view carries the xxh3-64 checksum of its feature bytes, checked on every read, so a
damaged view raises (naming its shape and viewpoint) instead of returning garbage. Features are
stored once: identical images share one stored row, and search reads the segments directly.
Readers open every segment of their snapshot at open time, so a writer that commits and
collects unreferenced segments meanwhile never pulls files from under them.
"""
from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import resource
import shutil
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import xxhash

from . import __version__
from .errors import StoreError
from .fsio import TMP_MARK, atomic_path, describe_os_error, fsync_dir, temp_name
from .viewpoints import Viewpoint

FORMAT = "cvret-index"
FORMAT_VERSION = 2
MANIFEST_FILE = "manifest.json"
PREVIOUS_MANIFEST_FILE = "manifest.prev.json"
SEGMENTS_DIR = "segments"
LOCK_FILE = ".writer.lock"
LEGACY_STORE_FILE = "meta.h5"
FEATURE_DTYPES = ("float16", "float32")
_COLUMNS = ("row", "domain", "shape", "viewpoint", "path", "sha256", "segment", "position", "checksum")


@dataclass(frozen=True)
class ViewRecord:
    row: int
    domain: str
    shape: str
    viewpoint: str
    path: str
    sha256: str            # content hash of the source image
    segment: str = ""      # segment file name ("" in a legacy store)
    position: int = -1     # row inside the segment
    checksum: str = ""     # xxh3-64 of the stored feature bytes

    @property
    def key(self) -> tuple[str, str, str]:
        return self.domain, self.shape, self.viewpoint


def feature_checksum(row_bytes) -> str:
    return xxhash.xxh3_64_hexdigest(row_bytes)


def index_exists(folder: Path | str) -> bool:
    folder = Path(folder)
    return (folder / MANIFEST_FILE).exists() or (folder / LEGACY_STORE_FILE).exists()


# ---------------------------------------------------------------- manifest
def _canonical(body: dict) -> bytes:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def read_manifest(path: Path) -> dict:
    """The manifest at `path`, or StoreError when it is unreadable or its checksum does not match."""
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise StoreError(f"{path}: no manifest") from None
    except OSError as e:
        raise StoreError(f"{path}: cannot read ({describe_os_error(e)})") from None
    try:
        doc = json.loads(raw.decode("utf-8"))
        checksum = doc.pop("checksum")
    except (UnicodeDecodeError, ValueError, KeyError, AttributeError, TypeError):
        raise StoreError(f"{path}: damaged manifest (not valid JSON); `cvret index` restores the previous "
                         "generation") from None
    if hashlib.sha256(_canonical(doc)).hexdigest() != checksum:
        raise StoreError(f"{path}: damaged manifest (checksum mismatch); `cvret index` restores the previous "
                         "generation")
    if doc.get("format") != FORMAT:
        raise StoreError(f"{path}: not a cvret index manifest")
    if doc.get("format_version") != FORMAT_VERSION:
        raise StoreError(f"{path}: index format {doc.get('format_version')} is not supported by cvret {__version__} "
                         f"(it reads format {FORMAT_VERSION} and upgrades format 1)")
    try:
        cols = doc["views"]
        n = len(cols["row"])
        if any(len(cols[c]) != n for c in _COLUMNS) or not isinstance(doc["segments"], list):
            raise KeyError
    except (KeyError, TypeError):
        raise StoreError(f"{path}: damaged manifest (views table incomplete)") from None
    return doc


def _write_manifest(folder: Path, doc: dict, keep_previous: bool = True):
    """Commit: write the new manifest beside the old one, keep the old one as the previous generation."""
    body = dict(doc)
    body.pop("checksum", None)
    body["checksum"] = hashlib.sha256(_canonical(body)).hexdigest()
    data = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    target = folder / MANIFEST_FILE
    with atomic_path(target) as tmp:
        with open(tmp, "wb") as f:
            f.write(data)
        if keep_previous and target.exists():  # keep the generation being replaced, for repair (a hard link: no copy)
            prev_tmp = temp_name(folder / PREVIOUS_MANIFEST_FILE)
            try:
                os.link(target, prev_tmp)
            except OSError as e:
                if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EROFS):
                    raise
                shutil.copyfile(target, prev_tmp)  # a file system without hard links
            os.replace(prev_tmp, folder / PREVIOUS_MANIFEST_FILE)


def _records_from(doc: dict) -> list[ViewRecord]:
    cols = doc["views"]
    segs = doc["segments"]
    try:
        return [ViewRecord(int(cols["row"][i]), cols["domain"][i], cols["shape"][i], cols["viewpoint"][i],
                           cols["path"][i], cols["sha256"][i], segs[int(cols["segment"][i])]["name"],
                           int(cols["position"][i]), cols["checksum"][i]) for i in range(len(cols["row"]))]
    except (IndexError, KeyError, TypeError, ValueError):
        raise StoreError("damaged manifest (views table refers to unknown segments)") from None


def _columns_of(records: list[ViewRecord], segment_index: dict[str, int]) -> dict:
    cols: dict = {c: [] for c in _COLUMNS}
    for r in records:
        for c in _COLUMNS:
            v = getattr(r, c)
            cols[c].append(segment_index[v] if c == "segment" else v)
    return cols


# ---------------------------------------------------------------- reading
class _ManifestFields:
    """What reader and writer both read straight from the manifest document (`self.doc`)."""

    doc: dict

    @property
    def fingerprint(self) -> dict:
        return dict(self.doc["fingerprint"])

    @property
    def feature_dtype(self) -> str:
        return str(self.doc["feature_dtype"])

    @property
    def feature_dim(self) -> int:
        return int(self.doc["feature_dim"])

    @property
    def calibration(self) -> dict:
        """Gallery extents and distance reference measured when indexing (`calibration.py`); {} before."""
        return dict(self.doc.get("calibration", {}))


class ViewTable:
    """The read side both layouts share: the live view records (`_records`, `_by_row`) and float32 reads
    through the layout's own `read_raw`."""

    _records: list[ViewRecord]
    _by_row: dict[int, ViewRecord]

    def records(self) -> list[ViewRecord]:
        return list(self._records)

    def record(self, row: int) -> ViewRecord:
        return self._by_row[int(row)]

    def lookup(self) -> dict[tuple[str, str, str], ViewRecord]:
        return {r.key: r for r in self._records}

    def rows_by_hash(self) -> dict[str, int]:
        return {r.sha256: r.row for r in self._records}

    def read_features(self, rows) -> np.ndarray:
        """Features of the given rows as float32 (checksums checked where the layout has them)."""
        raw = self.read_raw(rows)
        return raw if raw.dtype == np.float32 else raw.astype(np.float32)


class FeatureStore(ViewTable, _ManifestFields):
    """A read-only snapshot of an index folder's views and features. Use as a context manager.

    Opening reads the manifest once; later commits by a writer are not seen (open again for them).
    """

    def __init__(self, folder: Path | str):
        self.folder = Path(folder)
        self.path = self.folder / MANIFEST_FILE
        self._fds: dict[str, int] = {}
        if not self.path.exists():
            if (self.folder / LEGACY_STORE_FILE).exists():
                raise StoreError(f"{self.folder}: legacy layout")  # callers use open_store()
            raise StoreError(f"{self.folder}: no index here (build one with `cvret index`)")
        self.doc = read_manifest(self.path)
        self._records = _records_from(self.doc)
        self._by_row = {r.row: r for r in self._records}
        self._row_bytes = int(self.doc["feature_dim"]) * np.dtype(self.doc["feature_dtype"]).itemsize
        seg_dir = self.folder / SEGMENTS_DIR
        _allow_open_files(len(self.doc["segments"]) + 256)
        try:
            for seg in self.doc["segments"]:
                fd = os.open(seg_dir / seg["name"], os.O_RDONLY)
                self._fds[seg["name"]] = fd
                size = os.fstat(fd).st_size
                if size != int(seg["views"]) * self._row_bytes:
                    self.close()
                    raise StoreError(f"{seg_dir / seg['name']}: damaged segment ({size} bytes, expected "
                                     f"{int(seg['views']) * self._row_bytes}); run `cvret index` to re-embed its views")
        except FileNotFoundError as e:
            self.close()
            raise StoreError(f"{e.filename}: segment listed in the manifest is missing; run `cvret index` to "
                             "re-embed its views") from None

    # ---------------------------------------------------------- context
    def close(self):
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # ---------------------------------------------------------- metadata
    layout = f"{FORMAT} v{FORMAT_VERSION}: manifest + immutable checksummed segments"

    @property
    def generation(self) -> int:
        return int(self.doc["generation"])

    @property
    def n_views(self) -> int:
        return len(self._records)

    @property
    def viewpoints(self) -> list[Viewpoint]:
        return [Viewpoint.from_dict(d) for d in self.doc.get("viewpoints", [])]

    @property
    def categories(self) -> dict[str, str]:
        return dict(self.doc.get("categories", {}))

    @property
    def problems(self) -> list[str]:
        return list(self.doc.get("problems", []))

    @property
    def source(self) -> str:
        return str(self.doc.get("source", ""))

    def size_bytes(self) -> int:
        """Bytes on disk of the manifest and the segments of this snapshot."""
        total = self.path.stat().st_size
        return total + sum(os.fstat(fd).st_size for fd in self._fds.values())

    # ---------------------------------------------------------- rows
    def read_raw(self, rows) -> np.ndarray:
        """Features of the given rows in the stored dtype, in the given order; every view's checksum is checked."""
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        out = np.empty((len(rows), self.feature_dim), dtype=np.dtype(self.feature_dtype))
        self.read_raw_into(rows, out.view(np.uint8).reshape(len(rows), self._row_bytes))
        return out

    def read_raw_into(self, rows, out: np.ndarray):
        """Read the stored bytes of the given rows straight into `out` ((n, bytes per view) uint8), checked."""
        for i, row in enumerate(rows):
            self._read_into(self._by_row[int(row)], out[i])

    def _read_into(self, rec: ViewRecord, buf: np.ndarray):
        if not _read_view(self._fds.get(rec.segment), rec, buf):
            raise StoreError(damaged_message(self.folder, rec))

    def verify(self, progress=None) -> list[ViewRecord]:
        """Read every view and return those whose bytes do not match their checksum."""
        bad = []
        buf = np.empty(self._row_bytes, dtype=np.uint8)
        for rec in self._records:
            try:
                self._read_into(rec, buf)
            except StoreError:
                bad.append(rec)
            if progress is not None:
                progress(1)
        return bad


def _read_view(fd: int | None, rec: ViewRecord, buf: np.ndarray) -> bool:
    """Read one view's bytes into `buf`; False when they are missing or do not match the checksum."""
    if fd is None:
        return False
    try:
        got = os.preadv(fd, [buf], rec.position * buf.nbytes)
    except OSError:
        return False
    return got == buf.nbytes and feature_checksum(buf) == rec.checksum


def _allow_open_files(n: int):
    """A reader holds every segment of its snapshot open: raise the soft limit on open files towards the
    hard limit when a large index needs it (the default soft limit is often 1,024)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < n:
        want = n if hard == resource.RLIM_INFINITY else min(n, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


def damaged_message(folder: Path, rec: ViewRecord) -> str:
    return (f"{folder}: damaged feature of shape {rec.shape}, {rec.domain} {rec.viewpoint} (checksum mismatch in "
            f"{SEGMENTS_DIR}/{rec.segment}); run `cvret index` to re-embed it from {rec.path}")


def open_store(folder: Path | str):
    """The index folder's store: the manifest layout, or a legacy meta.h5 read as it is."""
    folder = Path(folder)
    if not folder.is_dir():
        raise StoreError(f"{folder}: index folder does not exist")
    if not (folder / MANIFEST_FILE).exists() and (folder / LEGACY_STORE_FILE).exists():
        from .legacy import LegacyStore

        return LegacyStore(folder / LEGACY_STORE_FILE)
    return FeatureStore(folder)


# ---------------------------------------------------------------- writing
class WriterLock:
    """The one-writer rule: an fcntl lock on `<index>/.writer.lock`, released by the OS if the writer dies."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.fd: int | None = None

    def acquire(self):
        path = self.folder / LOCK_FILE
        try:
            self.folder.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise StoreError(f"{self.folder}: cannot update the index ({describe_os_error(e)})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            holder = ""
            with contextlib.suppress(OSError, ValueError):
                holder = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
            os.close(fd)
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise StoreError(f"{self.folder}: the index is being updated by {holder or 'another process'}; "
                                 "wait for it to finish") from None
            raise StoreError(f"{self.folder}: cannot lock the index ({describe_os_error(e)})") from None
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"process {os.getpid()} (started {time.strftime('%Y-%m-%d %H:%M:%S')})\n".encode(), 0)
        self.fd = fd

    def release(self):
        if self.fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing drops the flock
            self.fd = None


class IndexWriter(_ManifestFields):
    """The one writer of an index folder: buffers new views, commits them as a new segment plus manifest.

    A commit happens every `commit_views` views or `commit_seconds` seconds (whichever first) and
    at `commit()`/close; a kill loses at most the uncommitted buffer. Use as a context manager:
    leaving it with an exception releases the lock without committing the buffer.
    """

    def __init__(self, folder: Path | str, *, fingerprint: dict | None = None, feature_dim: int | None = None,
                 feature_dtype: str = "float16", commit_views: int = 256, commit_seconds: float = 30.0):
        self.folder = Path(folder)
        if feature_dtype not in FEATURE_DTYPES:
            raise StoreError(f"unknown feature dtype {feature_dtype!r}; use float16 or float32")
        self.commit_views = max(1, int(commit_views))
        self.commit_seconds = float(commit_seconds)
        self.notes: list[str] = []  # what opening found and repaired, for the report
        self._pending_recs: list[ViewRecord] = []
        self._pending_feats: list[np.ndarray] = []
        self._last_commit = time.monotonic()
        self._dirty = False
        self._garbage: list[str] = []  # segments the previous generation still lists, removed one commit later
        self._keep_previous = True  # False while manifest.json is damaged: never keep it as the previous one
        self._fds: dict[str, int] = {}
        self._lock = WriterLock(self.folder)
        self._lock.acquire()
        try:
            self._open(fingerprint, feature_dim, feature_dtype)
        except BaseException:
            self.close(commit=False)
            raise

    # ---------------------------------------------------------- opening, repair, upgrade
    def _open(self, fingerprint, feature_dim, feature_dtype):
        mpath = self.folder / MANIFEST_FILE
        self.doc = None
        legacy = self.folder / LEGACY_STORE_FILE
        if mpath.exists():
            try:
                self.doc = read_manifest(mpath)
            except StoreError as e:
                prev = self.folder / PREVIOUS_MANIFEST_FILE
                try:
                    self.doc = read_manifest(prev)
                except StoreError:
                    raise StoreError(f"{e}; the previous generation is damaged or missing too: rebuild with "
                                     "`cvret index ... --overwrite`") from None
                self.notes.append(f"{mpath}: damaged; restored generation {self.doc['generation']} from "
                                  f"{PREVIOUS_MANIFEST_FILE}")
                self._dirty = True
                self._keep_previous = False
        if self.doc is None:
            if legacy.exists():  # converted below; the placeholders are replaced by the legacy store's values
                fingerprint, feature_dim = fingerprint or {}, feature_dim or 1
            elif fingerprint is None or feature_dim is None:
                raise StoreError(f"{self.folder}: no index here to update")
            self.doc = {"format": FORMAT, "format_version": FORMAT_VERSION, "generation": 0, "next_row": 0,
                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "fingerprint": fingerprint,
                        "feature_dtype": feature_dtype, "feature_dim": int(feature_dim), "viewpoints": [],
                        "categories": {}, "problems": [], "source": "", "segments": [],
                        "views": {c: [] for c in _COLUMNS}}
        self.views: dict[int, ViewRecord] = {}
        self._row_of_key: dict[tuple[str, str, str], int] = {}
        self._row_bytes = int(self.doc["feature_dim"]) * np.dtype(self.doc["feature_dtype"]).itemsize
        if self.doc["segments"]:
            self._load_views()
        (self.folder / SEGMENTS_DIR).mkdir(exist_ok=True)
        self._collect_garbage()
        if legacy.exists() and not mpath.exists():
            self._upgrade_legacy(legacy)
        elif legacy.exists():  # an upgrade killed after its commit: finish removing the old files
            self._remove_legacy_files()

    def _load_views(self):
        seg_dir = self.folder / SEGMENTS_DIR
        lost = 0
        sizes = {s["name"]: int(s["views"]) for s in self.doc["segments"]}
        for rec in _records_from(self.doc):
            fd = self._segment_fd(rec.segment)
            if fd is None or os.fstat(fd).st_size != sizes.get(rec.segment, -1) * self._row_bytes:
                lost += 1
                continue
            self.views[rec.row] = rec
            self._row_of_key[rec.key] = rec.row
        if lost:
            self.notes.append(f"{self.folder}: {lost} views lost with missing or truncated segments in {seg_dir}; "
                              "they will be embedded again")
            self._dirty = True

    def _segment_fd(self, name: str) -> int | None:
        if name not in self._fds:
            try:
                self._fds[name] = os.open(self.folder / SEGMENTS_DIR / name, os.O_RDONLY)
            except OSError:
                return None
        return self._fds[name]

    def _collect_garbage(self):
        """Remove temporary files of crashed writers and segments no committed manifest refers to."""
        keep = {s["name"] for s in self.doc["segments"]}
        prev = self.folder / PREVIOUS_MANIFEST_FILE
        with contextlib.suppress(StoreError):  # a reader may still hold the previous generation's segments open
            keep |= {s["name"] for s in read_manifest(prev)["segments"]} if prev.exists() else set()
        seg_dir = self.folder / SEGMENTS_DIR
        removed = False
        for p in list(seg_dir.iterdir()) + [p for p in self.folder.iterdir() if TMP_MARK in p.name]:
            if p.is_file() and (TMP_MARK in p.name or (p.parent == seg_dir and p.name not in keep)):
                with contextlib.suppress(OSError):
                    p.unlink()
                    removed = True
        if removed:
            fsync_dir(seg_dir)

    def _upgrade_legacy(self, legacy: Path):
        """Convert a format-1 folder (meta.h5 + float32 .faiss copies): its views keep their row numbers."""
        from .legacy import LegacyStore

        with LegacyStore(legacy) as old:
            self.doc.update(fingerprint=old.fingerprint, feature_dtype=old.feature_dtype,
                            feature_dim=old.feature_dim, viewpoints=[v.to_dict() for v in old.viewpoints],
                            categories=old.categories, problems=old.problems, source=old.source)
            self._row_bytes = old.feature_dim * np.dtype(old.feature_dtype).itemsize
            recs = old.records()
            for s in range(0, len(recs), self.commit_views):
                part = recs[s:s + self.commit_views]
                self.add([(r.domain, r.shape, r.viewpoint, r.path, r.sha256) for r in part],
                         old.read_raw([r.row for r in part]), rows=[r.row for r in part])
                self.commit()
            self.doc["next_row"] = max(self.doc["next_row"], old.next_row)
            self._dirty = True
            self.commit()
        self._remove_legacy_files()
        self.notes.append(f"{self.folder}: upgraded from format 1 ({len(recs)} views, float32 copies removed)")

    def _remove_legacy_files(self):
        from .legacy import LEGACY_FILES

        for pattern in LEGACY_FILES:
            for p in self.folder.glob(pattern):
                with contextlib.suppress(OSError):
                    p.unlink()
        fsync_dir(self.folder)

    # ---------------------------------------------------------- the table
    def lookup(self) -> dict[tuple[str, str, str], ViewRecord]:
        return {r.key: r for r in self.views.values()}

    def rows_by_hash(self) -> dict[str, int]:
        return {r.sha256: r.row for r in sorted(self.views.values(), key=lambda r: r.row)}

    def records(self) -> list[ViewRecord]:
        return sorted(self.views.values(), key=lambda r: r.row)

    def find_damaged(self, progress=None) -> list[ViewRecord]:
        """Views whose stored bytes no longer match their checksum (read once, all of them)."""
        bad = []
        buf = np.empty(self._row_bytes, dtype=np.uint8)
        for rec in sorted(self.views.values(), key=lambda r: r.row):
            if not _read_view(self._segment_fd(rec.segment), rec, buf):
                bad.append(rec)
            if progress is not None:
                progress(1)
        return bad

    def remove(self, rows):
        for row in rows:
            rec = self.views.pop(int(row), None)
            if rec is not None:
                self._row_of_key.pop(rec.key, None)
                self._dirty = True

    def add(self, records: list[tuple[str, str, str, str, str]], features: np.ndarray, rows=None):
        """Buffer (domain, shape, viewpoint, path, sha256) views with their features; commits when due."""
        if len(records) != len(features):
            raise ValueError("records and features differ in length")
        if not len(records):
            return
        feats = np.asarray(features)
        if self.feature_dtype == "float16" and feats.dtype != np.float16:
            with np.errstate(over="ignore"):
                f16 = feats.astype(np.float16)
            if not np.isfinite(f16).all():
                raise StoreError(f"{self.folder}: features overflow float16; rebuild with --feature-dtype float32")
            feats = f16
        feats = np.ascontiguousarray(feats, dtype=self.feature_dtype)
        for i, (domain, shape, viewpoint, path, sha) in enumerate(records):
            row = int(rows[i]) if rows is not None else self._next_row()
            self._pending_recs.append(ViewRecord(row, domain, shape, viewpoint, path, sha))
        self._pending_feats.append(feats)
        if len(self._pending_recs) >= self.commit_views or \
                time.monotonic() - self._last_commit >= self.commit_seconds:
            self.commit()

    def add_copies(self, records: list[tuple[str, str, str, str, str]], source_rows: list[int]):
        """New views whose image content is already stored: they share the stored feature (no bytes written)."""
        for (domain, shape, viewpoint, path, sha), src in zip(records, source_rows):
            s = self.views[int(src)]
            self._put(ViewRecord(self._next_row(), domain, shape, viewpoint, path, sha, s.segment, s.position,
                                 s.checksum))

    def _next_row(self) -> int:
        row = int(self.doc["next_row"])
        self.doc["next_row"] = row + 1
        return row

    def _put(self, rec: ViewRecord):
        """Insert a view, superseding the view stored under the same (domain, shape, viewpoint)."""
        old = self._row_of_key.get(rec.key)
        if old is not None:
            self.views.pop(old, None)
        self.views[rec.row] = rec
        self._row_of_key[rec.key] = rec.row
        self._dirty = True

    def set_dataset_info(self, viewpoints: list[Viewpoint], categories: dict[str, str], problems: list[str],
                         source: str = ""):
        known = {v["name"]: v for v in self.doc.get("viewpoints", [])}
        for vp in viewpoints:
            known[vp.name] = vp.to_dict()
        cats = dict(self.doc.get("categories", {}))
        cats.update(categories)
        new = dict(viewpoints=list(known.values()), categories=dict(sorted(cats.items())),
                   problems=list(problems[:1000]), source=source or self.doc.get("source", ""))
        if any(self.doc.get(k) != v for k, v in new.items()):  # a run that changes nothing commits nothing
            self.doc.update(new)
            self._dirty = True

    def set_calibration(self, extents: dict | None = None, distances: dict | None = None,
                        gallery_normalized: bool | None = None):
        """Store what `calibration.py` measured; extents merge per (domain, viewpoint) into those stored."""
        cal = json.loads(json.dumps(self.doc.get("calibration", {})))
        for domain, vps in (extents or {}).items():
            cal.setdefault("extents", {}).setdefault(domain, {}).update(vps)
        if distances is not None:
            cal["distances"] = distances
        if gallery_normalized is not None:
            cal["gallery_normalized"] = bool(gallery_normalized)
        if cal != self.doc.get("calibration", {}):
            self.doc["calibration"] = cal
            self._dirty = True

    # ---------------------------------------------------------- commit
    def commit(self):
        """Write the buffered features as one new segment, then the manifest that lists them."""
        if self._pending_recs:
            feats = np.concatenate(self._pending_feats) if len(self._pending_feats) > 1 else self._pending_feats[0]
            name = f"seg-{int(self.doc['generation']) + 1:06d}-{uuid.uuid4().hex[:8]}.seg"
            flat = feats.view(np.uint8).reshape(len(feats), self._row_bytes)
            checksums = [feature_checksum(flat[i]) for i in range(len(feats))]
            path = self.folder / SEGMENTS_DIR / name
            try:
                with atomic_path(path) as tmp:
                    with open(tmp, "wb") as f:
                        f.write(memoryview(flat).cast("B"))
            except OSError as e:
                self._pending_recs, self._pending_feats = [], []
                raise StoreError(f"{self.folder}: {describe_os_error(e)} while writing a feature segment; "
                                 "everything committed before is intact: free space and run `cvret index` again"
                                 if e.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG) else
                                 f"{self.folder}: cannot write a feature segment ({describe_os_error(e)})") from None
            self.doc["segments"].append({"name": name, "views": len(feats)})
            for i, rec in enumerate(self._pending_recs):
                self._put(ViewRecord(rec.row, rec.domain, rec.shape, rec.viewpoint, rec.path, rec.sha256, name, i,
                                     checksums[i]))
            self._pending_recs, self._pending_feats = [], []
        if not self._dirty:
            return
        used = {r.segment for r in self.views.values()}
        dropped = [s["name"] for s in self.doc["segments"] if s["name"] not in used]
        self.doc["segments"] = [s for s in self.doc["segments"] if s["name"] in used]
        index = {s["name"]: i for i, s in enumerate(self.doc["segments"])}
        self.doc["views"] = _columns_of(sorted(self.views.values(), key=lambda r: r.row), index)
        self.doc["generation"] = int(self.doc["generation"]) + 1
        self.doc["updated"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        self.doc["cvret_version"] = __version__
        try:
            _write_manifest(self.folder, self.doc, keep_previous=self._keep_previous)
        except OSError as e:
            self.doc["generation"] -= 1
            raise StoreError(f"{self.folder}: {describe_os_error(e)} while committing the manifest; the previous "
                             "generation is intact: free space and run `cvret index` again") from None
        self._dirty = False
        self._keep_previous = True
        self._last_commit = time.monotonic()
        # a segment dropped by the previous commit is listed neither here nor in the previous generation
        for name in self._garbage:
            with contextlib.suppress(OSError):
                (self.folder / SEGMENTS_DIR / name).unlink()
        self._garbage = dropped

    # ---------------------------------------------------------- closing
    def close(self, commit: bool = True):
        try:
            if commit:
                self.commit()
        finally:
            for fd in self._fds.values():
                with contextlib.suppress(OSError):
                    os.close(fd)
            self._fds = {}
            self._lock.release()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *exc):
        self.close(commit=exc_type is None)
