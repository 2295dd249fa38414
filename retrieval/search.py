"""The query engine: rank (shape, viewpoint) pairs for one sketch, or shapes for several sketch views.

Per-view: a sketch is compared with every view of a domain (default `npr`), optionally only
at one viewpoint; by default each shape appears once, at its best viewpoint. View-aggregated
(seed eq. 1): sketch views with known viewpoints rank shapes by the mean over those
viewpoints of the view distance, the sketch's view k compared with the shape's view k.
Sketches are framed to the gallery's object scale first (`framing.py`, `calibration.py`), and a
ranking whose best distance is far beyond the index's own distances carries a warning.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .distance import candidate_count
from .errors import CvretError, EncoderError
from .fingerprint import Fingerprint
from .index import ShapeIndex
from .portable import check_backend
from .spec import EncoderSpec


@dataclass
class Hit:
    rank: int
    shape: str
    category: str
    viewpoint: str
    domain: str
    distance: float
    path: str
    per_view: dict[str, float] = field(default_factory=dict)  # aggregated queries: distance per viewpoint

    def to_dict(self) -> dict:
        d = asdict(self)
        if not self.per_view:
            d.pop("per_view")
        return d


def encoder_for_index(index: ShapeIndex, weights: str | None = None, device: str = "auto",
                      precision: str = "auto", backend: str = "torch"):
    """The encoder an index was built with; a differing one stops with a clear error.

    `backend`: 'torch' (`LayerEncoder`), 'onnx' (`portable.OnnxEncoder`, fp32 on the CPU; its model is
    exported first when not cached) or 'auto' (the ONNX encoder when its model is cached and the
    options allow it, else torch: a short query then never imports torch).
    """
    check_backend(backend)
    local = weights if weights not in (None, "openai", "untrained") else None
    built = str(index.fingerprint.get("weights"))
    if weights in ("openai", "untrained") and built.split(":", 1)[0] != weights:
        raise EncoderError(f"{index.folder}: --weights {weights} asked, but the index was built with weights "
                           f"{built[:26]}; leave --weights out (a query uses the index's own weights)")
    spec = EncoderSpec.from_fingerprint(index.fingerprint, weights_path=local)
    if local is not None:  # a file given for an openai/untrained index: its fingerprint will not match
        spec = replace(spec, weights=local)
    enc = _onnx_encoder(spec, device, precision, backend) if backend != "torch" else None
    if enc is None:
        from .encoder import LayerEncoder

        enc = LayerEncoder(spec, device=device, precision=precision)
    _check_encoder(index, enc)
    return enc


def _onnx_encoder(spec: EncoderSpec, device: str, precision: str, backend: str):
    """The ONNX encoder for `backend` 'auto' (None when not usable as it is) or 'onnx' (made usable, or an error)."""
    from . import portable

    why = portable.onnx_unsuitable(device, precision)
    if why is not None:
        if backend == "onnx":
            raise EncoderError(f"--backend onnx: {why}")
        return None
    enc = portable.open_onnx_encoder(spec)
    if enc is not None or backend == "auto":
        return enc
    if not portable.enabled():
        raise EncoderError("--backend onnx: CVRET_ONNX=0 turns the ONNX encoder off")
    missing = [m for m, ok in (("onnxruntime", portable.runtime_available()),
                               ("onnx and onnxscript", portable.exporter_available())) if not ok]
    if missing:
        raise EncoderError(f"--backend onnx needs {' and '.join(missing)} (pip install onnxruntime onnx onnxscript)")
    if portable.model_paths(spec) is None:
        raise EncoderError("--backend onnx needs the cvret cache for its model, and CVRET_CACHE_DIR is empty")
    from .encoder import LayerEncoder

    if portable.write_model(spec, LayerEncoder(spec, device="cpu", precision="fp32").fp32_trunk()) is None:
        raise EncoderError("--backend onnx: the ONNX model could not be exported (see the log); use --backend torch")
    enc = portable.open_onnx_encoder(spec)
    if enc is None:
        raise EncoderError("--backend onnx: the exported ONNX model could not be loaded (see the log)")
    return enc


def _check_encoder(index: ShapeIndex, encoder):
    have = Fingerprint.from_dict(index.fingerprint)
    if have.diff(encoder.fingerprint):
        raise EncoderError(have.mismatch(encoder.fingerprint, str(index.folder)))


class QueryEngine:
    """Queries one index. `mode='compressed'` takes candidates from the PCA index (exact re-ranking)."""

    def __init__(self, index: ShapeIndex, encoder=None, mode: str = "exact",
                 candidates: int | None = None, *, weights: str | None = None, device: str = "auto",
                 precision: str = "auto", normalize: bool = True, max_pixels: int | None = None,
                 backend: str = "torch"):
        """`encoder` (already built) or `weights`/`device`/`precision`/`backend` for the one the index records
        (`encoder_for_index`; a `LayerEncoder` or an `OnnxEncoder`).

        The encoder is built on the first query that needs one, so feature-only use never loads a model.
        `normalize`: frame sketches to the gallery's object extent (`prepare`); False embeds them as they are.
        `max_pixels`: the largest sketch file accepted (images.DEFAULT_MAX_PIXELS when None).
        """
        if mode not in ("exact", "compressed"):
            raise CvretError(f"unknown search mode {mode!r}; use exact or compressed")
        self.index = index
        self.mode = mode
        self.candidates = candidates
        if encoder is not None:
            _check_encoder(index, encoder)
        self._encoder = encoder
        check_backend(backend)
        self._encoder_options = {"weights": weights, "device": device, "precision": precision, "backend": backend}
        self.normalize = normalize
        self.max_pixels = max_pixels
        self._calibration = None

    @property
    def calibration(self):
        """The index's gallery extents and distance reference (`calibration.Calibration`, with its fallbacks)."""
        if self._calibration is None:
            from .calibration import Calibration

            self._calibration = Calibration(self.index)
        return self._calibration

    def prepare(self, image, domain: str = "npr", viewpoint: str | None = None, name: str | None = None):
        """A sketch (a path, or a PIL image decoded with its alpha) → the image that is embedded.

        With `normalize`, light-on-dark ink is inverted and, unless its extent and centre are within the
        spread of `domain`'s views (at `viewpoint`, else over its viewpoints), the ink is cropped and put
        on white at their median extent and centre (`calibration.Calibration.target`); a blank
        sketch raises ImageError naming `name` (or the path).
        """
        from .framing import normalize_sketch
        from .images import load_image

        if isinstance(image, (str, Path)):
            name = name or str(image)
            image = load_image(image, max_pixels=self.max_pixels, keep_alpha=self.normalize)
        if not self.normalize:
            return image
        return normalize_sketch(image, self.calibration.target(domain, viewpoint), name or "sketch")

    def warning(self, hits: list[Hit]) -> str | None:
        """A warning when the best distance is far beyond those between the index's own views (else None)."""
        return self.calibration.warning(hits[0].distance if hits else None)

    @property
    def encoder(self):
        if self._encoder is None:
            self._encoder = encoder_for_index(self.index, **self._encoder_options)
        return self._encoder

    def save_onnx_model(self) -> bool:
        """After embedding on torch where the ONNX encoder could have served (backend 'auto' without its model):
        export the model (`portable.ensure_model`), so that the next process starts without torch. True if written."""
        from . import portable

        enc, opts = self._encoder, self._encoder_options
        if enc is None or isinstance(enc, portable.OnnxEncoder) or opts["backend"] == "torch":
            return False
        if portable.onnx_unsuitable(opts["device"], opts["precision"]) is not None:
            return False
        return portable.ensure_model(enc) is not None

    def embed(self, images: list) -> np.ndarray:
        return self.encoder.encode_images(images)

    def _check_domain(self, domain: str):
        if domain not in self.index.domains:
            raise CvretError(f"{self.index.folder}: no {domain!r} views in this index "
                             f"(it holds: {', '.join(self.index.domains)})")

    def _gallery_viewpoints(self, domain: str, viewpoint: str | None) -> list[str]:
        """The viewpoints a per-view query searches; a bad domain or viewpoint stops before any embedding."""
        self._check_domain(domain)
        vps = self.index.viewpoint_names(domain)
        if viewpoint is None:
            return vps
        if viewpoint not in vps:
            raise CvretError(f"{self.index.folder}: no viewpoint {viewpoint!r} in domain {domain} "
                             f"(have: {', '.join(vps)})")
        return [viewpoint]

    def query(self, image, domain: str = "npr", viewpoint: str | None = None, k: int = 10,
              per_shape: bool = True) -> list[Hit]:
        """Rank the views of `domain` for one sketch (a path, a PIL image, or a feature vector)."""
        self._gallery_viewpoints(domain, viewpoint)  # checked before the (costly) embedding
        feat = image if isinstance(image, np.ndarray) else self.embed([self.prepare(image, domain, viewpoint)])[0]
        return self.query_features(feat, domain=domain, viewpoint=viewpoint, k=k, per_shape=per_shape)

    def query_features(self, feat: np.ndarray, domain: str = "npr", viewpoint: str | None = None, k: int = 10,
                       per_shape: bool = True) -> list[Hit]:
        vps = self._gallery_viewpoints(domain, viewpoint)
        # The k best shapes (or pairs) are always among the k best of each viewpoint's index.
        dists, rows = [], []
        for vp in vps:
            d, r = self.index.search(domain, vp, feat[None, :], k, mode=self.mode, candidates=self.candidates)
            dists.append(d[0])
            rows.append(r[0])
        d = np.concatenate(dists)
        r = np.concatenate(rows)
        order = np.lexsort((r, d))  # distance, then store row for a stable tie order
        hits: list[Hit] = []
        seen: set[str] = set()
        for j in order:
            rec = self.index.record(r[j])
            if per_shape and rec.shape in seen:
                continue
            seen.add(rec.shape)
            hits.append(Hit(len(hits) + 1, rec.shape, self.index.categories.get(rec.shape, ""), rec.viewpoint,
                            rec.domain, float(d[j]), rec.path))
            if len(hits) == k:
                break
        return hits

    def query_views(self, views: dict[str, object], domain: str = "npr", k: int = 10) -> tuple[list[Hit], int]:
        """Rank shapes by the mean view distance over the given {viewpoint: sketch} (seed eq. 1).

        Returns the hits and the number of shapes left out because they lack one of the viewpoints.
        """
        self._check_domain(domain)
        if not views:
            raise CvretError("no sketch views given")
        have = self.index.viewpoint_names(domain)
        unknown = [vp for vp in views if vp not in have]
        if unknown:
            raise CvretError(f"{self.index.folder}: unknown viewpoint(s) {', '.join(unknown)} in domain {domain} "
                             f"(have: {', '.join(have)})")
        names = list(views)
        raw = [views[n] for n in names]
        need = [i for i, x in enumerate(raw) if not isinstance(x, np.ndarray)]
        feats = [None] * len(raw)
        if need:
            enc = self.embed([self.prepare(raw[i], domain, names[i]) for i in need])
            for j, i in enumerate(need):
                feats[i] = enc[j]
        for i, x in enumerate(raw):
            if feats[i] is None:
                feats[i] = x
        shape_pos = {s: i for i, s in enumerate(self.index.shapes)}
        n_shapes = len(self.index.shapes)
        total = np.zeros(n_shapes, dtype=np.float64)
        count = np.zeros(n_shapes, dtype=np.int64)
        per_view = np.full((len(names), n_shapes), np.nan, dtype=np.float64)
        positions = []
        for i, vp in enumerate(names):
            rows = self.index.rows(domain, vp)
            positions.append(np.fromiter((shape_pos[self.index.record(r).shape] for r in rows), dtype=np.int64,
                                         count=len(rows)))
            count[positions[-1]] += 1
        lacking = int((count < len(names)).sum())
        # approximate means over all shapes (code-space for compressed, direct sums for exact) pick the
        # candidates; their exact distances (one definition, index.exact_distances) decide the ranking
        approx = np.zeros(n_shapes)
        for i, vp in enumerate(names):
            q = np.asarray(feats[i], dtype=np.float32)[None, :]
            if self.mode == "compressed":
                a = self.index.compressed().approximate_distances(domain, vp, q)[0]
            else:
                a, _ = self.index.distances_to_all(domain, vp, q)
                a = a[0]
            approx[positions[i]] += a
        approx[count < len(names)] = np.inf
        n_keep = max(k, self.candidates or max(100, 10 * k)) if self.mode == "compressed" else \
            candidate_count(k, n_shapes)
        keep = np.argsort(approx, kind="stable")[:n_keep]
        keep = keep[np.isfinite(approx[keep])]
        for i, vp in enumerate(names):
            rows = np.array([self.index.row_of(domain, self.index.shapes[s], vp) for s in keep], dtype=np.int64)
            d = self.index.exact_distances(domain, vp, np.asarray(feats[i], dtype=np.float32), rows)
            total[keep] += d
            per_view[i, keep] = d
        count[np.setdiff1d(np.arange(n_shapes), keep)] = 0  # not candidates: left out of the ranking
        complete = count == len(names)
        mean = np.where(complete, total / np.maximum(count, 1), np.inf)
        order = np.lexsort((np.arange(len(mean)), mean))
        hits = []
        for si in order[: min(k, int(complete.sum()))]:
            shape = self.index.shapes[si]
            best = names[int(np.nanargmin(per_view[:, si]))]
            rec = self.index.record(self.index.row_of(domain, shape, best))
            hits.append(Hit(len(hits) + 1, shape, self.index.categories.get(shape, ""), best, domain,
                            float(mean[si]), rec.path, {n: float(per_view[i, si]) for i, n in enumerate(names)}))
        return hits, lacking


def open_engine(index_dir: Path | str, gpu: str = "auto", *, mode: str = "exact", candidates: int | None = None,
                weights: str | None = None, device: str = "auto", precision: str = "auto",
                ray: str | None = None, normalize: bool = True, max_pixels: int | None = None,
                backend: str = "torch") -> QueryEngine:
    """Open an index folder and a query engine on it (the encoder is built on the first embedding).

    `ray`: search a sharded index through one Ray actor per shard (`cluster.py`) at that address.
    """
    if ray is not None:
        from .shards import ShardedIndex, is_sharded

        if not is_sharded(index_dir):
            raise CvretError(f"{index_dir}: --ray searches a sharded index (built with --shards K)")
        index = ShardedIndex(index_dir, ray=ray)
    else:
        index = ShapeIndex(index_dir, gpu=gpu)
    return QueryEngine(index, mode=mode, candidates=candidates, weights=weights, device=device, precision=precision,
                       normalize=normalize, max_pixels=max_pixels, backend=backend)


def query_result(engine: QueryEngine, index: str, query: dict, domain: str, hits: list[Hit],
                 excluded: int = 0) -> dict:
    """One ranking as JSON data: what `cvret query --json` prints and `cvret serve` answers, built in one place."""
    return {"query": query, "index": index, "domain": domain, "weights": engine.index.fingerprint.get("weights"),
            "excluded_shapes": excluded, "hits": [h.to_dict() for h in hits],
            "normalized": engine.normalize, "warning": engine.warning(hits)}
