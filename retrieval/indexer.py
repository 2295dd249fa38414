"""Building an index folder from a dataset: hash, embed what is new, commit segments, update the codes.

Resumable by construction: embedded views are committed (a new segment, then the manifest)
every few dozen views, and a view whose (domain, shape, viewpoint) already holds the same
image content is never embedded again; an identical image stored under another key shares
the stored feature. Damaged stored views are found by their checksums and embedded again
from their images. Unreadable views are reported and skipped (or stop the run with `strict`).
One writer at a time: a second `cvret index` on the same folder stops at once.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from .dataset import Dataset
from .fingerprint import Fingerprint
from .errors import CvretError, EncoderError, ImageError, StoreError
from .prescan import PendingScan, ViewScan, scan_views
from .store import IndexWriter, index_exists

from .spec import EncoderSpec

if TYPE_CHECKING:  # imported when a model is built: `cvret index` scans the files while torch loads (prescan.py)
    from .encoder import LayerEncoder


@dataclass
class IndexReport:
    index: str
    embedded: int = 0
    copied: int = 0          # identical image content already stored under another key
    unchanged: int = 0       # already stored with the same content
    failed: list[tuple[str, str]] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    repaired: int = 0        # damaged stored views embedded again
    notes: list[str] = field(default_factory=list)  # what opening the index found and repaired
    seconds: float = 0.0
    embed_seconds: float = 0.0
    total_views: int = 0

    @property
    def views_per_second(self) -> float:
        return self.embedded / self.embed_seconds if self.embed_seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"index": self.index, "embedded": self.embedded, "copied": self.copied, "unchanged": self.unchanged,
                "failed": [{"path": p, "error": m} for p, m in self.failed], "problems": self.problems,
                "repaired": self.repaired, "notes": self.notes, "seconds": round(self.seconds, 3),
                "views_per_second": round(self.views_per_second, 2), "total_views": self.total_views}


def build_index(dataset: Dataset, out: Path | str, spec: EncoderSpec, *, domains: list[str] | None = None,
                device: str = "auto", precision: str = "auto", batch_size: int = 16,
                feature_dtype: str = "float16", strict: bool = False, max_pixels: int | None = None,
                overwrite: bool = False, prune: bool = False, progress: bool = True,
                encoder: LayerEncoder | None = None, compress: str | None = None,
                compress_sample: int = 2048, commit_views: int = 256, verify: bool = True,
                encoder_cache: dict | None = None, compile: str = "auto", normalize: bool = False,
                extents_from: Dataset | None = None, scan: ViewScan | PendingScan | None = None) -> IndexReport:
    """Embed the views of `dataset` with the encoder `spec` into the index folder `out` (created or resumed).

    Only what is new is embedded: a view whose content hash is stored is left alone, an image
    identical to a stored one shares its stored feature, a changed image replaces its view; `prune`
    drops views gone from disk. An index built with another encoder (see `Fingerprint`) stops with
    an EncoderError. Unreadable views are reported and skipped (`strict` raises instead); damaged
    stored views are embedded again (`verify`). Any compressed candidate index (`compress='pca:R'`
    builds one) is brought in step at the end. `encoder` reuses an already built LayerEncoder;
    `encoder_cache`, a dict, keeps the one built here for the next call (several shards, one model);
    `commit_views`: views per committed segment (a kill loses at most that many); `compile`
    (auto/always/never) runs the AOTInductor-compiled trunk (`compiled.py`), by default when a CPU
    job is large enough to repay compiling or a compiled package is already cached.
    The gallery's object extents and distance reference are measured and stored (`calibration.py`);
    `normalize` frames every view to its (domain, viewpoint)'s extent before embedding, as queries are;
    `extents_from`: the dataset the extents are measured on (a shard: the whole dataset, so that every
    shard stores the same extents and a sharded index frames queries as one index would).
    `scan`: the views' hashes (and extents) already read by `prescan.py` (`cvret index` reads them while torch
    loads); used only when it covers exactly these views, else they are read here.
    Returns the counts and timings.
    """
    out = Path(out)
    t0 = time.perf_counter()
    if compress is not None:
        from .compress import parse_spec

        parse_spec(compress)
    report = IndexReport(index=str(out), problems=list(dataset.problems))
    views = [v for v in dataset.views if not domains or v.domain in domains]
    if not views:
        raise CvretError(f"{dataset.root}: no views in domains {', '.join(domains or [])}")
    report.total_views = len(views)
    want = spec.expected_fingerprint()
    created = not out.exists()
    if overwrite and index_exists(out):
        _discard(out)
    try:
        _update(dataset, views, out, spec, want, report, device=device, precision=precision, batch_size=batch_size,
                feature_dtype=feature_dtype, strict=strict, max_pixels=max_pixels, prune=prune, progress=progress,
                encoder=encoder, commit_views=commit_views, verify=verify, encoder_cache=encoder_cache,
                compile=compile, normalize=normalize, extents_from=extents_from, scan=scan)
    except BaseException:
        if created and out.is_dir() and not index_exists(out):  # nothing committed: leave no empty folder behind
            import shutil

            shutil.rmtree(out, ignore_errors=True)
        raise
    _update_compressed(out, compress, compress_sample, progress)
    report.seconds = time.perf_counter() - t0
    return report


def _discard(out: Path):
    """--overwrite: remove what an index folder holds (under the writer lock, so never under a running writer)."""
    import shutil

    from .store import LOCK_FILE, WriterLock

    lock = WriterLock(out)
    lock.acquire()
    try:
        for p in out.iterdir():
            if p.name == LOCK_FILE:
                continue
            if p.is_dir():
                shutil.rmtree(p)
            else:
                p.unlink()
    finally:
        lock.release()


def _update(dataset, views, out, spec, want, report, *, device, precision, batch_size, feature_dtype, strict,
            max_pixels, prune, progress, encoder, commit_views, verify, encoder_cache=None, compile="auto",
            normalize=False, extents_from=None, scan=None):
    # Decide per view: unchanged, copy from an identical image, or embed; before any model is built.
    if isinstance(scan, PendingScan):
        scan = scan.result()
    if scan is None or not scan.covers(views, max_pixels):
        scan = scan_views(views, max_pixels)
    for i in sorted(scan.unreadable):
        if strict:
            raise ImageError(scan.unreadable[i])
        report.failed.append((views[i].path, scan.unreadable[i]))
    shas = scan.shas
    writer = None
    if index_exists(out):
        writer = IndexWriter(out, commit_views=commit_views)
        _check_compatible(writer, want, feature_dtype, out)
        _check_framing(writer, normalize, out)
    try:
        if writer is not None:
            report.notes.extend(writer.notes)
            if verify:
                damaged = writer.find_damaged()
                if damaged:
                    report.notes.append(f"{out}: {len(damaged)} damaged stored views (checksum mismatch), embedded "
                                        "again: " + ", ".join(f"{r.shape} {r.domain} {r.viewpoint}"
                                                               for r in damaged[:5]))
                    report.repaired = len(damaged)
                    writer.remove([r.row for r in damaged])
        existing = writer.lookup() if writer else {}
        by_hash = writer.rows_by_hash() if writer else {}
        to_embed, to_copy, copy_later = [], [], []
        embedding = set()
        for i, v in enumerate(views):
            if i not in shas:
                continue
            sha = shas[i]
            rec = existing.get((v.domain, v.shape, v.viewpoint))
            if rec is not None and rec.sha256 == sha:
                report.unchanged += 1
            elif sha in by_hash:
                to_copy.append((v, sha, by_hash[sha]))
            elif sha in embedding:  # the same image twice in this run: embedded once, then shared
                copy_later.append((v, sha))
            else:
                to_embed.append((v, sha))
                embedding.add(sha)
        if encoder is None and encoder_cache is not None:
            encoder = encoder_cache.get("encoder")
        # the gallery's object scale, measured when views change (and before embedding: --normalize frames to it)
        stored = writer.calibration if writer else {}
        extents = {}
        if to_embed or to_copy or copy_later or prune or report.repaired or not stored.get("extents"):
            from .calibration import measure_extents

            if extents_from is None and scan.extents is not None:  # measured on these views while torch loaded
                extents = scan.extents
            else:
                domains = {v.domain for v in views}
                measured = views if extents_from is None else [v for v in extents_from.views if v.domain in domains]
                extents = measure_extents([(v.domain, v.shape, v.viewpoint, v.path) for v in measured], max_pixels)
            if normalize:  # framed views keep the extent they were framed to (no spread): only new ones are set
                extents = {d: {vp: dict(e, extent_range=[e["extent"]] * 2, centre_radius=0.0)
                               for vp, e in vps.items() if vp not in stored.get("extents", {}).get(d, {})}
                           for d, vps in extents.items()}
        if to_embed and encoder is None:
            from .encoder import LayerEncoder

            encoder = LayerEncoder(spec, device=device, precision=precision)
            if encoder_cache is not None:
                encoder_cache["encoder"] = encoder
        if writer is None:
            if encoder is None:
                raise CvretError(f"{dataset.root}: no readable views to index")
            fp = encoder.fingerprint.to_dict()
            fp["feature_dtype"] = feature_dtype
            writer = IndexWriter(out, fingerprint=fp, feature_dim=encoder.feature_dim, feature_dtype=feature_dtype,
                                 commit_views=commit_views)
        if to_copy:
            writer.add_copies([(v.domain, v.shape, v.viewpoint, v.path, sha) for v, sha, _ in to_copy],
                              [row for _, _, row in to_copy])
            report.copied = len(to_copy)
        writer.set_calibration(extents=extents, gallery_normalized=normalize)
        if to_embed:
            if encoder.compile_for(len(to_embed), compile):
                report.notes.append("the trunk runs compiled (AOTInductor package, --compile never to switch off)")
            load = _framed_loader(writer.calibration, to_embed, max_pixels) if normalize else None
            _embed_all(writer, encoder, to_embed, report, batch_size=batch_size, strict=strict,
                       max_pixels=max_pixels, progress=progress, load=load)
        if copy_later:
            writer.commit()  # the shared features must be in a committed segment
            by_hash = writer.rows_by_hash()
            later = [(v, sha) for v, sha in copy_later if sha in by_hash]  # not when its image failed to embed
            writer.add_copies([(v.domain, v.shape, v.viewpoint, v.path, sha) for v, sha in later],
                              [by_hash[sha] for _, sha in later])
            report.copied += len(later)
        if prune:
            on_disk = {(v.domain, v.shape, v.viewpoint) for v in views}
            writer.remove([r.row for key, r in writer.lookup().items() if key not in on_disk])
        writer.set_dataset_info(dataset.viewpoints, dataset.categories,
                                report.problems + [m for _, m in report.failed], dataset.source)
        writer.commit()
        if extents or "distances" not in writer.calibration:  # views changed: the distance scale too
            from .calibration import distance_reference
            from .store import FeatureStore

            with FeatureStore(out) as reader:
                writer.set_calibration(distances=distance_reference(reader))
            writer.commit()
    except KeyboardInterrupt:
        if writer is not None:
            writer.close(commit=True)  # keep what was embedded before the interrupt
            writer = None
        raise
    finally:
        if writer is not None:
            writer.close(commit=False)
    if encoder is not None and to_embed:
        _write_query_model(encoder, report)


def _write_query_model(encoder: LayerEncoder, report: IndexReport):
    """Export the ONNX model of the index's weights when not cached yet, so queries start without torch (`portable`)."""
    from .portable import ensure_model

    if hasattr(encoder, "fp32_trunk") and ensure_model(encoder, verify=False) is not None:
        report.notes.append("wrote the ONNX model of these weights to the cvret cache (queries start without torch)")


def _check_compatible(writer: IndexWriter, want: Fingerprint, feature_dtype: str, out: Path):
    have = Fingerprint.from_dict(writer.fingerprint)
    if have.diff(want):
        writer.close(commit=False)
        raise EncoderError(have.mismatch(want, str(out), "stored", "requested") + "; use another --out or --overwrite")
    if writer.feature_dtype != feature_dtype:
        stored = writer.feature_dtype
        writer.close(commit=False)
        raise StoreError(f"{out}: stores {stored} features, not {feature_dtype}; use another --out or --overwrite")


def _check_framing(writer: IndexWriter, normalize: bool, out: Path):
    stored = writer.calibration.get("gallery_normalized", False)
    if writer.records() and stored != normalize:
        writer.close(commit=False)
        had = "with" if stored else "without"
        raise StoreError(f"{out}: its views were embedded {had} --normalize; index {had} it, or use another "
                         "--out or --overwrite")


def _framed_loader(calibration: dict, to_embed, max_pixels):
    """`cvret index --normalize`: each view framed to its (domain, viewpoint)'s measured extent and centre, like a
    query."""
    from .calibration import DEFAULT_EXTENT
    from .framing import Target, normalize_sketch
    from .images import load_image

    extents = calibration.get("extents", {})
    target = {}
    for v, _ in to_embed:
        e = extents.get(v.domain, {}).get(v.viewpoint, {})
        target[v.path] = Target(e.get("extent", DEFAULT_EXTENT), tuple(e.get("centre", (0.0, 0.0))))  # always framed

    def load(path):
        return normalize_sketch(load_image(path, max_pixels=max_pixels, keep_alpha=True), target[path], path)

    return load


def _embed_all(writer: IndexWriter, encoder: LayerEncoder, to_embed, report: IndexReport, *, batch_size, strict,
               max_pixels, progress, load=None):
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
        framed = {} if load is None else {"load": load}  # --normalize only: other encoders need not know it
        for positions, feats in encoder.encode_paths(paths, batch_size=batch_size, max_pixels=max_pixels,
                                                    on_error=on_error, **framed):
            recs = [(to_embed[p][0].domain, to_embed[p][0].shape, to_embed[p][0].viewpoint, to_embed[p][0].path,
                     to_embed[p][1]) for p in positions]
            writer.add(recs, feats)
            report.embedded += len(recs)
            if bar is not None:
                bar.update(len(recs))
    finally:
        report.embed_seconds = time.perf_counter() - t
        if bar is not None:
            bar.close()


def _update_compressed(out: Path, spec: str | None, sample: int, progress: bool):
    """Build the PCA candidate index when asked, and keep an existing one in step with the store."""
    from .compress import build_compressed, is_current, parse_spec, read_manifest
    from .index import ShapeIndex

    if spec is None:
        try:
            old = read_manifest(out)
        except StoreError:
            old = None
        if old is None or "spec" not in old:
            return
        spec, sample = old["spec"], int(old.get("sample", sample))
    parse_spec(spec)
    with ShapeIndex(out, gpu="never") as si:
        if spec is not None and is_current(si) and read_manifest(out).get("spec") == spec:
            return
        build_compressed(si, spec, sample=sample, progress=progress)
