"""Line drawings from geometry, like Blender Freestyle's default line set (the seed paper's NPR).

Pipeline for one view: classify feature edges (edges.py), cut every candidate edge into
pieces of about half an output pixel, keep the pieces whose midpoint the camera sees (one
Embree ray per piece, so an edge half hidden by another part is cut exactly where the
occluder's outline crosses it, not dropped or kept whole), flag visible silhouette/border pieces
that touch the background (Freestyle's external contour), chain the visible runs into
polylines across shared vertices, and draw them black on white with supersampling.

Strokes are public because the synthetic-sketch generator perturbs them into human-like lines;
hence the chaining (one stroke per continuous line, straightest continuation at junctions).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..viewpoints import Viewpoint
from .camera import Camera, RenderSettings
from .edges import BORDER, KIND_NAMES, NONE, SILHOUETTE
from .mesh import prepare

_NEAR = 1e-6          # ignore edges with an endpoint behind (or on) the camera plane
_MAX_PIECES = 4096    # per edge, bounds the work for huge edges crossing the frame
_EXTERNAL_OFFSET = 0.75  # px: probe this far on each side of a contour piece for background
_JOIN_COS = -0.5      # at junctions, continue only if the turn is under 60 degrees


@dataclass
class Stroke:
    """A visible polyline. Points in output pixels (x right, y down); closed loops repeat point 0."""

    points: np.ndarray      # (M, 2) float
    kind: str               # 'silhouette' | 'border' | 'crease'
    external: bool = False  # on the outline against the background (Freestyle's external contour)

    @property
    def length(self) -> float:
        if len(self.points) < 2:
            return 0.0
        return float(np.linalg.norm(np.diff(self.points, axis=0), axis=1).sum())

    @property
    def closed(self) -> bool:
        return len(self.points) > 2 and bool(np.allclose(self.points[0], self.points[-1]))


def visible_strokes(mesh, viewpoint: Viewpoint, settings: RenderSettings = RenderSettings()) -> list[Stroke]:
    """Visible silhouette, border and crease lines of `mesh` seen from `viewpoint`, chained.

    `mesh` is a raw trimesh.Trimesh (normalised inside when settings.normalize, the default,
    exactly as render_npr/render_rgb do) or a PreparedMesh (shares BVH and edges across views).
    """
    pm = prepare(mesh, settings)
    cam = Camera.from_viewpoint(viewpoint, settings)
    es = pm.edges
    kinds = es.classify(cam.position, settings.crease_angle)
    idx = np.nonzero(kinds != NONE)[0]
    if idx.size == 0:
        return []
    p0, p1 = es.vertices[es.edges[idx, 0]], es.vertices[es.edges[idx, 1]]
    xy0, z0 = cam.project(p0)
    xy1, z1 = cam.project(p1)
    front = (z0 > _NEAR) & (z1 > _NEAR)
    idx, p0, p1, xy0, xy1 = idx[front], p0[front], p1[front], xy0[front], xy1[front]
    length = np.linalg.norm(xy1 - xy0, axis=1)
    npieces = np.clip(np.ceil(length / settings.piece_length), 1, _MAX_PIECES).astype(np.int64)

    # pieces: edge slot e (into idx), piece k of npieces[e]; test each piece's midpoint
    slot = np.repeat(np.arange(len(idx)), npieces)
    first = np.cumsum(npieces) - npieces
    k = np.arange(len(slot)) - first[slot]
    tm = (k + 0.5) / npieces[slot]
    mid3 = p0[slot] + (p1 - p0)[slot] * tm[:, None]
    vis = pm.rays.visible(cam.position, mid3, pm.depth_tolerance(settings))

    # external contour: a visible silhouette/border piece with background on either side
    ext = np.zeros(len(slot), dtype=bool)
    kind_of = kinds[idx][slot]
    probe = np.nonzero(vis & ((kind_of == SILHOUETTE) | (kind_of == BORDER)))[0]
    if probe.size:
        s = slot[probe]
        d2 = (xy1 - xy0)[s] / np.maximum(length[s], 1e-12)[:, None]
        nrm = np.stack([-d2[:, 1], d2[:, 0]], axis=1)
        mid2 = xy0[s] + (xy1 - xy0)[s] * tm[probe, None]
        pts = np.concatenate([mid2 + _EXTERNAL_OFFSET * nrm, mid2 - _EXTERNAL_OFFSET * nrm])
        dirs = cam.rays_through(pts)
        faces, _ = pm.rays.first_hit(np.broadcast_to(cam.position, dirs.shape), dirs)
        miss = faces < 0
        ext[probe] = miss[:probe.size] | miss[probe.size:]

    # runs of equal state (0 hidden, 1 visible, 2 visible external) within each edge
    state = vis.astype(np.int8) + (vis & ext).astype(np.int8)
    brk = np.ones(len(slot), dtype=bool)
    brk[1:] = (slot[1:] != slot[:-1]) | (state[1:] != state[:-1])
    starts = np.nonzero(brk)[0]
    ends = np.append(starts[1:], len(slot)) - 1
    keep = state[starts] > 0
    starts, ends = starts[keep], ends[keep]
    if starts.size == 0:
        return []
    s = slot[starts]
    n = npieces[s]
    ka, kb = k[starts], k[ends] + 1
    ta, tb = ka / n, kb / n
    a_xy = xy0[s] + (xy1 - xy0)[s] * ta[:, None]
    b_xy = xy0[s] + (xy1 - xy0)[s] * tb[:, None]
    # chain nodes: mesh vertices at edge ends, fresh ids where a run ends inside an edge
    nv = len(es.vertices)
    fresh = nv + np.arange(2 * len(starts))
    a_node = np.where(ka == 0, es.edges[idx[s], 0], fresh[0::2])
    b_node = np.where(kb == n, es.edges[idx[s], 1], fresh[1::2])
    seg_kind = kinds[idx[s]]
    seg_ext = state[starts] == 2
    strokes = _chain(a_xy, b_xy, a_node, b_node, seg_kind, seg_ext)
    return [st for st in strokes if st.length >= settings.min_stroke_length]


def _chain(a_xy, b_xy, a_node, b_node, seg_kind, seg_ext) -> list[Stroke]:
    """Join segments that share a node and have the same (kind, external) into polylines.

    Where exactly two segment ends meet they are joined; at junctions of three or more, the
    pairs that continue straightest (turn under 60°) are joined first, the rest end there.
    """
    nseg = len(a_xy)
    ends_xy = np.stack([a_xy, b_xy], axis=1)          # (S, 2 sides, 2)
    groups: dict[tuple, list[int]] = {}
    for s in range(nseg):
        key = (int(seg_kind[s]), bool(seg_ext[s]))
        groups.setdefault((int(a_node[s]),) + key, []).append(2 * s)
        groups.setdefault((int(b_node[s]),) + key, []).append(2 * s + 1)
    partner = np.full(2 * nseg, -1, dtype=np.int64)
    for members in groups.values():
        if len(members) == 2:
            e, f = members
            if e // 2 != f // 2:
                partner[e], partner[f] = f, e
        elif len(members) > 2:
            outs = []
            for e in members:
                sgm, side = divmod(e, 2)
                d = ends_xy[sgm, 1 - side] - ends_xy[sgm, side]
                nd = np.linalg.norm(d)
                outs.append(d / nd if nd > 0 else d)
            cand = []
            for i in range(len(members)):
                for j in range(i + 1, len(members)):
                    if members[i] // 2 != members[j] // 2:
                        cand.append((float(outs[i] @ outs[j]), i, j))
            cand.sort()
            used = set()
            for c, i, j in cand:
                if c > _JOIN_COS:
                    break
                if i in used or j in used:
                    continue
                used.update((i, j))
                partner[members[i]], partner[members[j]] = members[j], members[i]

    done = np.zeros(nseg, dtype=bool)
    strokes: list[Stroke] = []

    def walk(seg: int, side: int) -> tuple[list, bool]:
        pts = [ends_xy[seg, side]]
        start = 2 * seg + side
        while True:
            done[seg] = True
            out_end = 2 * seg + (1 - side)
            pts.append(ends_xy[seg, 1 - side])
            nxt = partner[out_end]
            if nxt < 0:
                return pts, False
            if nxt == start:
                return pts, True
            seg, side = divmod(int(nxt), 2)
            if done[seg]:
                return pts, False

    # open chains start at an unpaired end; whatever is left forms closed loops
    for e in range(2 * nseg):
        if partner[e] < 0 and not done[e // 2]:
            pts, _ = walk(e // 2, e % 2)
            strokes.append(_make_stroke(pts, seg_kind[e // 2], seg_ext[e // 2]))
    for s in range(nseg):
        if not done[s]:
            pts, _ = walk(s, 0)
            strokes.append(_make_stroke(pts, seg_kind[s], seg_ext[s]))
    return strokes


def _make_stroke(pts: list, kind: int, external: bool) -> Stroke:
    arr = np.asarray(pts, dtype=np.float64)
    if len(arr) > 2:  # drop repeated points (zero-length joins), keep the first and last
        step = np.linalg.norm(np.diff(arr, axis=0), axis=1) > 1e-9
        arr = arr[np.concatenate([[True], step])] if step.any() else arr[:1]
    return Stroke(arr, KIND_NAMES[int(kind)], bool(external))


def srgb_encode(linear: np.ndarray) -> np.ndarray:
    """Linear light (0..1) to sRGB (0..1), the IEC 61966-2-1 curve Blender applies when saving PNGs."""
    linear = np.clip(linear, 0.0, 1.0)
    return np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * np.power(linear, 1 / 2.4) - 0.055)


def coverage_to_grey(coverage: np.ndarray, tone: str) -> np.ndarray:
    """8-bit grey of black ink covering `coverage` (0..1) of a white pixel.

    'freestyle' composites in linear light and stores sRGB, as Blender Freestyle's PNGs do (a
    half-covered pixel is 188, not 128), so partly covered edge pixels come out lighter;
    'flat' averages 8-bit values (cvret's first look, darker lines). Fully covered and empty
    pixels are the same in both, so the lines' geometry does not change."""
    linear = 1.0 - np.asarray(coverage, dtype=np.float64)
    out = srgb_encode(linear) if tone == "freestyle" else linear
    return np.clip(np.rint(out * 255.0), 0, 255).astype(np.uint8)


def mean_ink_grey(img, background: int = 255) -> float:
    """Mean grey level of the pixels that carry any ink (darker than the background), NaN if none."""
    a = np.asarray(img.convert("L") if hasattr(img, "convert") else img, dtype=np.float64)
    ink = a[a < background]
    return float(ink.mean()) if ink.size else float("nan")


def draw_strokes(strokes: list[Stroke], settings: RenderSettings = RenderSettings(),
                 widths=None) -> Image.Image:
    """Black anti-aliased strokes on white, an 'L' image of settings.size pixels.

    `widths`: None (settings.line_width), one number, or one number per stroke, in output pixels.
    Lines are drawn with round joins and caps at line_supersample times the size; the coverage
    of each output pixel becomes a grey level by settings.line_tone (coverage_to_grey).
    """
    n, ss = int(settings.size), int(settings.line_supersample)
    if widths is None:
        widths = [settings.line_width] * len(strokes)
    elif np.isscalar(widths):
        widths = [float(widths)] * len(strokes)
    elif len(widths) != len(strokes):
        raise ValueError(f"widths has {len(widths)} entries for {len(strokes)} strokes")
    canvas = Image.new("L", (n * ss, n * ss), 255)
    draw = ImageDraw.Draw(canvas)
    for st, w in zip(strokes, widths):
        w_ss = float(w) * ss
        if w_ss <= 0 or len(st.points) == 0:
            continue
        pts = np.asarray(st.points, dtype=np.float64) * ss - 0.5  # PIL: pixel centres at integers
        wi = max(1, int(round(w_ss)))
        r = w_ss / 2.0
        if len(pts) > 1:
            draw.line([tuple(p) for p in pts], fill=0, width=wi, joint="curve" if wi > 2 else None)
        if w_ss > 2:  # round caps (PIL's wide lines end square)
            for p in (pts[0], pts[-1]):
                draw.ellipse([p[0] - r + 0.5, p[1] - r + 0.5, p[0] + r - 0.5, p[1] + r - 0.5], fill=0)
        elif len(pts) == 1:
            draw.point(tuple(pts[0]), fill=0)
    coverage = 1.0 - np.asarray(canvas, dtype=np.float64).reshape(n, ss, n, ss).mean(axis=(1, 3)) / 255.0
    return Image.fromarray(coverage_to_grey(coverage, settings.line_tone), mode="L")


def render_npr(mesh, viewpoint: Viewpoint, settings: RenderSettings = RenderSettings()) -> Image.Image:
    """Freestyle-like line drawing ('L' image): visible_strokes drawn by draw_strokes."""
    return draw_strokes(visible_strokes(mesh, viewpoint, settings), settings)
