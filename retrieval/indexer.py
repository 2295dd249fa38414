"""Building an index folder from a dataset: hash, embed what is new, append, rebuild FAISS.

Resumable by construction: every batch is committed to the store before the next one
starts, and a view whose (domain, shape, viewpoint) already holds the same image content
is never embedded again; an identical image stored under another key is copied, not
re-embedded. Unreadable views are reported and skipped (or stop the run with `strict`).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import Dataset
from .encoder import EncoderSpec, LayerEncoder
from .fingerprint import Fingerprint
from .errors import CvretError, EncoderError, ImageError, StoreError
from .images import content_sha256
from .index import MANIFEST, write_indexes
from .store import STORE_FILE, FeatureStore


@dataclass
class IndexReport:
    index: str
    embedded: int = 0
    copied: int = 0          # identical image content already stored under another key
    unchanged: int = 0       # already stored with the same content
    failed: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    recovered_rows: int = 0
    seconds: float = 0.0
    embed_seconds: float = 0.0
    total_views: int = 0

    @property
    def views_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"index": self.index, "embedded": self.embedded, "copied": self.copied, "unchanged": self.unchanged,
                "failed": [{"path": p, "error": m} for p, m in self.failed], "problems": self.problems,
                "recovered_rows": self.recovered_rows, "seconds": round(self.seconds, 3),
                "views_per_second": round(self.views_per_second, 2), "total_views": self.total_views}


def build_index(dataset: Dataset, out: Path | str, spec: EncoderSpec, *, domains: list[str] | None = None,
                device: str = "auto", precision: str = "auto", batch_size: int = 16,
                feature_dtype: str = "float16", strict: bool = False, max_pixels: int | None = None,
                overwrite: bool = False, prune: bool = False, progress: bool = True,
                encoder: LayerEncoder | None = None, compress: str | None = None,
                compress_sample: int = 2048) -> IndexReport:
    """Embed the views of `dataset` with the encoder `spec` into the index folder `out` (created or resumed).

    Only what is new is embedded: a view whose content hash is stored is left alone, an image
    identical to a stored one is copied, a changed image replaces its row; `prune` drops views
    gone from disk. An index built with another encoder (see `Fingerprint`) stops with an
    EncoderError. Unreadable views are reported and skipped (`strict` raises instead). The FAISS
    files and any compressed candidate index (`compress='pca:R'` builds one) are brought in step
    with the store at the end.
    `encoder` reuses an already built LayerEncoder. Returns the counts and timings.
    """
    out = Path(out)
    t0 = time.perf_counter()
    if compress is not None:
        from .compress import parse_spec

        parse_spec(compress)
    report = IndexReport(index=str(out), problems=list(dataset.problems))
    store_path = out / STORE_FILE
    if overwrite and out.exists():
        for p in [store_path, out / MANIFEST, *out.glob("*.faiss"), *out.glob("*.rows.npy")]:
            if p.exists():
                p.unlink()
    out.mkdir(parents=True, exist_ok=True)

    views = [v for v in dataset.views if not domains or v.domain in domains]
    if not views:
        raise CvretError(f"{dataset.root}: no views in domains {', '.join(domains or [])}")
    report.total_views = len(views)
    want = spec.expected_fingerprint()

    store = None
    if store_path.exists():
        store = FeatureStore(store_path, "r+")
        have = Fingerprint.from_dict(store.fingerprint)
        if have.diff(want):
            store.close()
            raise EncoderError(have.mismatch(want, str(store_path), "stored", "requested") +
                               "; use another --out or --overwrite")
        if store.feature_dtype != feature_dtype:
            store.close()
            raise StoreError(f"{store_path}: stores {store.feature_dtype} features, not {feature_dtype}; "
                             "use another --out or --overwrite")
        report.recovered_rows = store.recover()
    try:
        # Decide per view: unchanged, copy from an identical image, or embed.
        existing = store.lookup() if store else {}
        by_hash = store.rows_by_hash() if store else {}
        to_embed, to_copy = [], []
        for v in views:
            try:
                sha = content_sha256(v.path)
            except OSError as e:
                msg = f"{v.path}: cannot read ({e.strerror or e})"
                if strict:
                    raise ImageError(msg) from None
                report.failed.append((v.path, msg))
                continue
            rec = existing.get((v.domain, v.shape, v.viewpoint))
            if rec is not None and rec.sha256 == sha:
                report.unchanged += 1
            elif sha in by_hash:
                to_copy.append((v, sha, by_hash[sha]))
            else:
                to_embed.append((v, sha))
        if to_embed and encoder is None:
            encoder = LayerEncoder(spec, device=device, precision=precision)
        if store is None:
            if encoder is None:
                raise CvretError(f"{dataset.root}: no readable views to index")
            fp = encoder.fingerprint.to_dict()
            fp["feature_dtype"] = feature_dtype
            store = FeatureStore.create(store_path, fp, encoder.feature_dim, feature_dtype)
        if to_copy:
            feats = store.read_features([row for _, _, row in to_copy])
            store.append([(v.domain, v.shape, v.viewpoint, v.path, sha) for v, sha, _ in to_copy], feats)
            report.copied = len(to_copy)
        if to_embed:
            _embed_all(store, encoder, to_embed, report, batch_size=batch_size, strict=strict,
                       max_pixels=max_pixels, progress=progress)
        if prune:
            on_disk = {(v.domain, v.shape, v.viewpoint) for v in views}
            gone = [r.row for key, r in store.lookup().items() if key not in on_disk]
            store.deactivate(gone)
        store.set_dataset_info(dataset.viewpoints, dataset.categories,
                               report.problems + [m for _, m in report.failed], dataset.source)
    finally:
        if store is not None:
            store.close()
    write_indexes(out, progress=progress)
    _update_compressed(out, compress, compress_sample, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _embed_all(store: FeatureStore, encoder: LayerEncoder, to_embed, report: IndexReport, *, batch_size, strict,
               max_pixels, progress):
    paths = [v.path for v, _ in to_embed]
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=len(paths), desc="embedding", unit="view", dynamic_ncols=True)

    def on_error(pos, err):
        msg = str(err) if isinstance(err, ImageError) else f"{paths[pos]}: {type(err).__name__}: {err}"
        if strict:
            raise ImageError(msg + " (--strict)")
        report.failed.append((paths[pos], msg))
        if bar is not None:
            bar.update(1)

    t = time.perf_counter()
    try:
        for positions, feats in encoder.encode_paths(paths, batch_size=batch_size, max_pixels=max_pixels,
                                                    on_error=on_error):
            recs = [(to_embed[p][0].domain, to_embed[p][0].shape, to_embed[p][0].viewpoint, to_embed[p][0].path,
                     to_embed[p][1]) for p in positions]
            store.append(recs, feats)
            report.embedded += len(recs)
            if bar is not None:
                bar.update(len(recs))
    finally:
        report.embed_seconds = time.perf_counter() - t
        if bar is not None:
            bar.close()


def _update_compressed(out: Path, spec: str | None, sample: int, progress: bool):
    """Build the PCA candidate index when asked, and keep an existing one in step with the store."""
    import json

    from .compress import COMPRESSED_DIR, build_compressed, parse_spec
    from .index import ShapeIndex

    manifest = out / COMPRESSED_DIR / "manifest.json"
    if spec is None and manifest.exists():
        old = json.loads(manifest.read_text())
        spec, sample = old["spec"], int(old.get("sample", sample))
    if spec is None:
        return
    parse_spec(spec)
    with ShapeIndex(out, gpu="never") as si:
        build_compressed(si, spec, sample=sample, progress=progress)

