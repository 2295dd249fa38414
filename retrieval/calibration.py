"""What an index knows about its own gallery, measured when indexing: object scale and distance scale.

- **Extent and centre** per (domain, viewpoint): the medians, over a sample of the views, of the
  object's extent and of its ink box's offset from the image centre (`framing.placement`), with
  their spread (10th-90th percentile of the extents, 90th percentile of the centres' distance from
  the median). A sketch query outside that spread is framed to the medians of the domain it is
  compared with, so that its object has the gallery's scale and position (the seed paper's scale
  finding); one inside it is already framed like the gallery and is left as drawn.
- **Distance reference**: view distances between the index's own domains (the same shape and
  viewpoint in two domains; with one domain, two shapes at one viewpoint). A query whose best
  distance is more than WARN_FACTOR times the largest of them is unlike anything the index was
  built from, and its ranking carries a warning.

Both are stored in the manifest (`calibration`). Indexes built before this (or in format 1)
are measured when opened: extents from the stored image paths when the files are still there,
else DEFAULT_EXTENT (with a note); the distance reference from the stored features.
"""
from __future__ import annotations

from collections import defaultdict

import numpy as np

from .framing import Target, placement

SAMPLE = 64            # views per (domain, viewpoint) whose extent is measured
PAIR_SAMPLE = 32       # view pairs per domain pair for the distance reference
DEFAULT_EXTENT = 0.7   # an object's extent when nothing can be measured (cvret's demo renders: 0.69-0.72)
WARN_FACTOR = 3.0      # best distance above this × the largest reference distance: a warning


def _spread(items: list, n: int) -> list:
    """Up to n items evenly spread over a (sorted) list: a deterministic sample."""
    if len(items) <= n:
        return list(items)
    return [items[i] for i in np.linspace(0, len(items) - 1, n).round().astype(int)]


def measure_extents(views, max_pixels: int | None = None, sample: int = SAMPLE) -> dict[str, dict[str, dict]]:
    """{domain: {viewpoint: {"extent", "centre": medians, "views": measured}}} from (domain, shape, viewpoint, path).

    Unreadable and blank images are left out; a (domain, viewpoint) with none measured is absent.
    """
    from .errors import ImageError
    from .framing import on_paper
    from .images import load_image

    groups: dict[tuple[str, str], list] = defaultdict(list)
    for domain, shape, viewpoint, path in views:
        groups[(domain, viewpoint)].append((shape, path))
    out: dict[str, dict[str, dict]] = {}
    for (domain, viewpoint), items in sorted(groups.items()):
        found = []
        for _, path in _spread(sorted(items), sample):
            try:
                p = placement(on_paper(load_image(path, max_pixels=max_pixels, keep_alpha=True))[0])
            except (ImageError, OSError):
                continue
            if p is not None:
                found.append((p[0], *p[1]))
        if found:
            a = np.asarray(found)
            med = np.median(a, axis=0)
            radius = np.percentile(np.hypot(a[:, 1] - med[1], a[:, 2] - med[2]), 90)
            out.setdefault(domain, {})[viewpoint] = {
                "extent": round(float(med[0]), 4), "centre": [round(float(med[1]), 4), round(float(med[2]), 4)],
                "extent_range": [round(float(np.percentile(a[:, 0], q)), 4) for q in (10, 90)],
                "centre_radius": round(float(radius), 4), "views": len(found)}
    return out


def distance_reference(store, sample: int = PAIR_SAMPLE) -> dict | None:
    """Distances between the index's own domains (same shape and viewpoint), or between shapes with one domain.

    `store`: anything with `records()` and `read_features(rows)` (a FeatureStore, LegacyStore, ShardedStore).
    """
    from .distance import exact_mean_sq

    by_key: dict[tuple[str, str], dict[str, int]] = defaultdict(dict)
    for r in store.records():
        by_key[(r.shape, r.viewpoint)][r.domain] = r.row
    domains = sorted({d for rows in by_key.values() for d in rows})
    pairs: list[tuple[int, int]] = []
    if len(domains) > 1:
        for i, a in enumerate(domains):
            for b in domains[i + 1:]:
                keys = sorted(k for k, rows in by_key.items() if a in rows and b in rows)
                pairs += [(by_key[k][a], by_key[k][b]) for k in _spread(keys, sample)]
        kind = "same shape and viewpoint in two domains"
    elif domains:
        per_vp: dict[str, list[int]] = defaultdict(list)
        for (shape, vp), rows in sorted(by_key.items()):
            per_vp[vp].append(rows[domains[0]])
        for rows in per_vp.values():
            pairs += _spread(list(zip(rows, rows[1:])), sample)
        kind = "two shapes at one viewpoint"
    if not pairs:
        return None
    d = []
    for a, b in pairs:
        fa, fb = store.read_features([a, b])
        d.append(float(exact_mean_sq(fa, fb[None, :])[0]))
    d = np.asarray(d)
    return {"pairs": len(d), "between": kind, "median": float(np.median(d)), "p95": float(np.percentile(d, 95)),
            "max": float(d.max())}


def merge(calibrations: list[dict]) -> dict:
    """One calibration for shards: extents averaged weighted by views measured, distance references pooled."""
    extents: dict[str, dict[str, list]] = defaultdict(lambda: defaultdict(list))
    refs, normalized = [], set()
    for cal in calibrations:
        for domain, vps in (cal or {}).get("extents", {}).items():
            for vp, e in vps.items():
                extents[domain][vp].append(e)
        if (cal or {}).get("distances"):
            refs.append(cal["distances"])
        if cal and "gallery_normalized" in cal:
            normalized.add(bool(cal["gallery_normalized"]))
    def mean(es, f):
        return round(sum(f(e) * e["views"] for e in es) / sum(e["views"] for e in es), 4)

    def spread(es):
        if not all("extent_range" in e for e in es):
            return {}
        return {"extent_range": [min(e["extent_range"][0] for e in es), max(e["extent_range"][1] for e in es)],
                "centre_radius": max(e["centre_radius"] for e in es)}

    out: dict = {"extents": {d: {vp: {"extent": mean(es, lambda e: e["extent"]),
                                      "centre": [mean(es, lambda e: e.get("centre", (0, 0))[i]) for i in (0, 1)],
                                      **spread(es), "views": sum(e["views"] for e in es)} for vp, es in vps.items()}
                             for d, vps in extents.items()}}
    if refs:
        n = sum(r["pairs"] for r in refs)
        out["distances"] = {"pairs": n, "between": refs[0]["between"],
                            "median": sum(r["median"] * r["pairs"] for r in refs) / n,
                            "p95": max(r["p95"] for r in refs), "max": max(r["max"] for r in refs)}
    if len(normalized) == 1:
        out["gallery_normalized"] = normalized.pop()
    return out


class Calibration:
    """An opened index's calibration, with the fallbacks for indexes built before it was stored."""

    def __init__(self, index):
        self.index = index
        self.doc = dict(getattr(index, "calibration", None) or {})
        self.notes: list[str] = []
        self._measured: dict | None = None

    def target(self, domain: str, viewpoint: str | None = None) -> Target:
        """Where a query compared with `domain` (at `viewpoint`, or all its viewpoints) is framed to: the medians
        of the extents and centres, and the union of their spreads."""
        vps = self.doc.get("extents", {}).get(domain)
        if not vps:
            vps = self._measure_from_images().get(domain)
        if not vps:
            note = (f"{self.index.folder}: no gallery extent stored or measurable for domain {domain} (an index "
                    f"built before calibration, its images gone): sketches framed to the default {DEFAULT_EXTENT}")
            if note not in self.notes:
                self.notes.append(note)
            return Target(DEFAULT_EXTENT)
        chosen = [vps[viewpoint]] if viewpoint in vps else list(vps.values())
        extent = float(np.median([v["extent"] for v in chosen]))
        cx, cy = np.median([v.get("centre", (0.0, 0.0)) for v in chosen], axis=0)
        if not all("extent_range" in v for v in chosen):
            return Target(extent, (float(cx), float(cy)))
        return Target(extent, (float(cx), float(cy)), (min(v["extent_range"][0] for v in chosen),
                                                       max(v["extent_range"][1] for v in chosen)),
                      max(v["centre_radius"] for v in chosen))

    def _measure_from_images(self) -> dict:
        if self._measured is None:
            from pathlib import Path

            recs = [(r.domain, r.shape, r.viewpoint, r.path) for r in self.index.store.records()
                    if Path(r.path).is_file()]
            self._measured = measure_extents(recs)
            if self._measured:
                self.notes.append(f"{self.index.folder}: no gallery extent stored (an index built before "
                                  "calibration): measured from its image files; `cvret index` again stores it")
        return self._measured

    def reference(self) -> dict | None:
        if "distances" not in self.doc:
            self.doc["distances"] = distance_reference(self.index.store)
        return self.doc["distances"]

    def warning(self, best: float | None) -> str | None:
        """A one-line warning when `best` is far beyond the distances seen between the index's own domains."""
        ref = self.reference()
        if best is None or ref is None or not ref.get("max"):
            return None
        if best > WARN_FACTOR * ref["max"]:
            return (f"best distance {best:.4g} is {best / ref['max']:.1f}× the largest distance between this "
                    f"index's own views ({ref['max']:.4g}, {ref['between']}): the sketch is unlike the gallery "
                    "(blank, inverted, noise or a photograph?); the ranking is unreliable")
        return None
