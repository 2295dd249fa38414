"""Synthetic freehand sketches made from the renderer's visible NPR strokes.

Amateur sketches (AmateurSketch, the seed's queries) differ from a clean line rendering in
recognisable ways, and :func:`sketchify` imitates each of them on the polylines that
:func:`retrieval.render.visible_strokes` returns:

* the whole drawing is slightly off: a small random affine (rotation, aspect change, shear,
  offset) plus a smooth low-frequency warp of the page;
* lines are simplified (Douglas-Peucker with a tolerance that grows with the style level),
  inner lines (creases, borders) are dropped much more often than silhouettes, and tiny
  details vanish first;
* long lines are drawn in several strokes, sharp corners often lift the pen, and stroke ends
  overshoot or stop short of where they should meet;
* every stroke wobbles (smooth noise along its arclength plus a slight bow), its width follows
  a pressure profile (thin at the ends, varying along the way), and its grey level varies;
  a few strokes are retraced.

`style` runs from 0 (close to the NPR drawing) to 1 (quick and abstract); the names
``clean`` (0.15), ``medium`` (0.5) and ``abstract`` (0.9) are accepted. The result is a pure
function of (strokes, size, style, seed); :func:`sketch_seed` derives a per-view seed from
(dataset seed, shape id, viewpoint) so that batch generation does not depend on worker order.
Lines are drawn at `supersample` times the size and box-filtered (anti-aliasing).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from ..errors import ConfigError

__all__ = ["STYLES", "SKETCH_VERSION", "SketchStyle", "resolve_style", "sketch_seed", "sketch_polylines",
           "sketchify", "simplify_polyline"]

SKETCH_VERSION = "synth-sketch-1"  # bump when the output of sketchify changes
STYLES = {"clean": 0.15, "medium": 0.5, "abstract": 0.9}
_REF = 224.0  # lengths below are in pixels at this image size and scale with it


def resolve_style(style) -> float:
    """A style name or a number in [0, 1] -> the level in [0, 1]."""
    if isinstance(style, str):
        key = style.strip().lower()
        if key in STYLES:
            return STYLES[key]
        try:
            style = float(key)
        except ValueError:
            raise ConfigError(f"unknown sketch style {style!r}; use {', '.join(STYLES)} or a number in [0, 1]") from None
    try:
        level = float(style)
    except (TypeError, ValueError):
        raise ConfigError(f"sketch style must be a name or a number in [0, 1], got {style!r}") from None
    if not 0.0 <= level <= 1.0:
        raise ConfigError(f"sketch style level must be in [0, 1], got {level}")
    return level


@dataclass(frozen=True)
class SketchStyle:
    """Every knob of the stylizer as a function of one level in [0, 1] (lengths at 224 px)."""

    level: float
    simplify_tol: float      # Douglas-Peucker tolerance, px
    drop_silhouette: float   # probability of dropping a silhouette stroke
    drop_inner: float        # ... a crease / border stroke
    drop_short: float        # extra drop probability for strokes shorter than `short_len`
    short_len: float         # px
    break_len: float         # strokes longer than this may be split, px
    break_rate: float        # expected extra pieces per break_len of stroke
    corner_lift: float       # probability of lifting the pen at a sharp corner
    overshoot: float         # max extension past an endpoint, px
    gap: float               # max shortening at an endpoint, px
    wobble: float            # amplitude of the smooth perpendicular noise, px
    bow: float               # std of the bow (sagitta) of a stroke, px
    jitter: float            # high-frequency tremor, px
    rotation: float          # std of the global rotation, degrees
    aspect: float            # std of the log aspect/scale change
    shear: float             # std of the shear
    shift: float             # std of the global offset, fraction of the size
    warp: float              # amplitude of the smooth page warp, px
    width_var: float         # relative spread of stroke widths
    grey_max: int            # lightest grey (0 = black) a stroke may take
    retrace: float           # probability of drawing a stroke twice

    @classmethod
    def from_level(cls, level: float) -> "SketchStyle":
        s = resolve_style(level)
        return cls(
            level=s,
            simplify_tol=0.35 + 3.2 * s,
            drop_silhouette=0.12 * s ** 1.5,
            drop_inner=0.05 + 0.55 * s ** 1.2,
            drop_short=0.15 + 0.6 * s,
            short_len=4.0 + 10.0 * s,
            break_len=70.0 - 30.0 * s,
            break_rate=0.25 + 0.6 * s,
            corner_lift=0.35 + 0.45 * s,
            overshoot=1.0 + 7.0 * s,
            gap=0.5 + 3.5 * s,
            wobble=0.3 + 1.7 * s,
            bow=0.4 + 3.2 * s,
            jitter=0.03 + 0.07 * s,
            rotation=0.5 + 3.5 * s,
            aspect=0.01 + 0.07 * s,
            shear=0.01 + 0.06 * s,
            shift=0.005 + 0.02 * s,
            warp=0.5 + 4.0 * s,
            width_var=0.15 + 0.3 * s,
            grey_max=int(30 + 110 * s),
            retrace=0.03 + 0.2 * s,
        )


def sketch_seed(seed: int, shape_id: str, viewpoint: str, domain: str = "sketch") -> int:
    """A 63-bit seed for one view, stable across processes, platforms and worker order."""
    key = f"{int(seed)}|{shape_id}|{viewpoint}|{domain}".encode("utf-8")
    return int.from_bytes(hashlib.blake2b(key, digest_size=8).digest(), "little") >> 1


# --------------------------------------------------------------------------- geometry helpers

def simplify_polyline(points: np.ndarray, tol: float) -> np.ndarray:
    """Douglas-Peucker simplification (keeps both endpoints; closed loops keep their farthest point)."""
    pts = np.asarray(points, dtype=np.float64)
    n = len(pts)
    if n <= 2 or tol <= 0:
        return pts
    keep = np.zeros(n, bool)
    keep[0] = keep[-1] = True
    if np.allclose(pts[0], pts[-1]):  # closed loop: split at the point farthest from the start
        far = int(np.argmax(np.linalg.norm(pts - pts[0], axis=1)))
        keep[far] = True
        stack = [(0, far), (far, n - 1)]
    else:
        stack = [(0, n - 1)]
    while stack:
        a, b = stack.pop()
        if b - a < 2:
            continue
        seg = pts[b] - pts[a]
        L = math.hypot(seg[0], seg[1])
        rel = pts[a + 1:b] - pts[a]
        if L < 1e-12:
            d = np.hypot(rel[:, 0], rel[:, 1])
        else:
            d = np.abs(rel[:, 0] * seg[1] - rel[:, 1] * seg[0]) / L
        i = int(np.argmax(d))
        if d[i] > tol:
            m = a + 1 + i
            keep[m] = True
            stack.append((a, m))
            stack.append((m, b))
    return pts[keep]


def _arclength(p: np.ndarray) -> np.ndarray:
    if len(p) < 2:
        return np.zeros(len(p))
    return np.concatenate([[0.0], np.cumsum(np.hypot(*np.diff(p, axis=0).T))])


def _resample(p: np.ndarray, spacing: float) -> np.ndarray:
    s = _arclength(p)
    total = s[-1]
    if total <= 1e-9:
        return p[:1].copy()
    n = max(2, int(math.ceil(total / spacing)) + 1)
    t = np.linspace(0.0, total, n)
    return np.c_[np.interp(t, s, p[:, 0]), np.interp(t, s, p[:, 1])]


def _cut(p: np.ndarray, s0: float, s1: float) -> np.ndarray:
    """The part of polyline p between arclengths s0 < s1 (vertices kept, ends interpolated)."""
    s = _arclength(p)
    inner = (s > s0) & (s < s1)
    a = [np.interp(s0, s, p[:, 0]), np.interp(s0, s, p[:, 1])]
    b = [np.interp(s1, s, p[:, 0]), np.interp(s1, s, p[:, 1])]
    return np.vstack([a, p[inner], b])


def _split_corners(p: np.ndarray, rng, prob: float, min_angle: float = 55.0) -> list[np.ndarray]:
    """Lift the pen at sharp corners with probability `prob` each."""
    if len(p) < 3:
        return [p]
    d = np.diff(p, axis=0)
    ang = np.degrees(np.abs(np.arctan2(d[:-1, 0] * d[1:, 1] - d[:-1, 1] * d[1:, 0],
                                       (d[:-1] * d[1:]).sum(1))))
    cuts = [i + 1 for i in np.nonzero(ang > min_angle)[0] if rng.random() < prob]
    if not cuts:
        return [p]
    out, start = [], 0
    for c in cuts:
        out.append(p[start:c + 1])
        start = c
    out.append(p[start:])
    return [q for q in out if len(q) >= 2]


def _smooth_noise(t: np.ndarray, rng, amp: float, wl_lo: float, wl_hi: float, terms: int = 3) -> np.ndarray:
    """Sum of random sinusoids along arclength t: smooth, low-frequency, ~amp std."""
    out = np.zeros_like(t)
    for _ in range(terms):
        wl = rng.uniform(wl_lo, wl_hi)
        out += rng.normal(0, 1) * np.sin(2 * np.pi * t / wl + rng.uniform(0, 2 * np.pi))
    return out * amp / math.sqrt(terms / 2)


def _normals(p: np.ndarray) -> np.ndarray:
    t = np.gradient(p, axis=0) if len(p) > 2 else np.repeat(p[-1:] - p[:1], len(p), axis=0)
    if len(t) > 5:  # smooth the tangent a little so that corners do not flip the offset direction
        k = np.array([1, 2, 3, 2, 1], float) / 9
        t = np.c_[np.convolve(np.pad(t[:, 0], 2, mode="edge"), k, "valid"),
                  np.convolve(np.pad(t[:, 1], 2, mode="edge"), k, "valid")]
    n = np.c_[-t[:, 1], t[:, 0]]
    norm = np.linalg.norm(n, axis=1, keepdims=True)
    return n / np.where(norm < 1e-12, 1.0, norm)


def _global_transform(size: int, st: SketchStyle, rng, k: float, lo: np.ndarray, hi: np.ndarray):
    """A function mapping (N,2) pixel points through the page distortion (affine + smooth warp).

    The distortion is relative to the drawing (bounding box lo..hi): it turns and stretches the
    drawing about its centre, moves it by a fraction of its extent and warps it on the scale of
    its extent, so small and large drawings are distorted alike.
    """
    c = (lo + hi) / 2.0
    ext = float(max(hi[0] - lo[0], hi[1] - lo[1], 8.0 * k))
    th = math.radians(rng.normal(0, st.rotation))
    R = np.array([[math.cos(th), -math.sin(th)], [math.sin(th), math.cos(th)]])
    S = np.diag(np.exp(rng.normal(0, st.aspect, 2)))
    H = np.array([[1.0, rng.normal(0, st.shear)], [0.0, 1.0]])
    A = R @ H @ S
    shift = rng.normal(0, st.shift * 1.6 * ext, 2)
    waves = [(rng.normal(0, 1, 2), rng.uniform(0.5, 1.5, 2) * 2 * np.pi / ext, rng.uniform(0, 2 * np.pi, 2))
             for _ in range(2)]
    amp = st.warp * k * min(1.0, ext / (0.6 * size)) / math.sqrt(2)

    def apply(p: np.ndarray) -> np.ndarray:
        q = (p - c) @ A.T + c + shift
        w = np.zeros_like(q)
        for a, f, ph in waves:
            w[:, 0] += a[0] * np.sin(f[0] * q[:, 1] + ph[0])
            w[:, 1] += a[1] * np.sin(f[1] * q[:, 0] + ph[1])
        return q + amp * w

    return apply


# --------------------------------------------------------------------------- the stylizer

def _stroke_fields(s):
    pts = getattr(s, "points", None)
    kind = getattr(s, "kind", None)
    if pts is None and isinstance(s, (tuple, list)) and len(s) == 2:  # (points, kind) pairs
        pts, kind = s
    pts = np.asarray(pts, dtype=np.float64).reshape(-1, 2)
    return pts, str(kind or "silhouette")


def sketch_polylines(strokes, size: int = 224, style="medium", seed=0, line_width: float | None = None):
    """The stylised strokes before drawing: a list of (points (N,2) px, widths (N,) px, grey 0..255).

    `strokes` are objects with `.points` ((M,2) pixel coordinates, x right, y down, at `size`)
    and `.kind` ('silhouette' | 'border' | 'crease'), such as retrieval.render.Stroke.
    """
    st = SketchStyle.from_level(resolve_style(style))
    rng = np.random.default_rng(seed)
    k = size / _REF
    lw = (1.35 if line_width is None else float(line_width) / k) * k

    items = []
    for s in strokes:
        pts, kind = _stroke_fields(s)
        finite = np.isfinite(pts).all(axis=1)
        if finite.sum() >= 2:
            items.append((pts[finite], kind))
    if not items:
        return []
    allp = np.vstack([p for p, _ in items])
    page = _global_transform(size, st, rng, k, allp.min(axis=0), allp.max(axis=0))

    # 1. drop strokes (inner lines and short details first), never everything
    lengths = np.array([_arclength(p)[-1] for p, _ in items])
    kept = []
    for (p, kind), L in zip(items, lengths):
        pd = st.drop_silhouette if kind == "silhouette" else st.drop_inner
        if L < st.short_len * k:
            pd = pd + (1 - pd) * st.drop_short
        if rng.random() >= pd:
            kept.append(p)
    if not kept:
        kept = [items[int(np.argmax(lengths))][0]]

    out = []
    for p in kept:
        # 2. page distortion, then simplification
        p = simplify_polyline(page(p), st.simplify_tol * k)
        if _arclength(p)[-1] < 0.5 * k:
            continue
        # 3. pen lifts at corners and on long lines
        pieces = []
        for q in _split_corners(p, rng, st.corner_lift):
            L = _arclength(q)[-1]
            n_extra = rng.poisson(st.break_rate * L / (st.break_len * k)) if L > st.break_len * k else 0
            if n_extra == 0:
                pieces.append(q)
                continue
            cuts = np.sort(rng.uniform(0.2, 0.8, n_extra)) * L
            bounds = [0.0] + list(cuts) + [L]
            for a, b in zip(bounds[:-1], bounds[1:]):
                # pieces restart with a small overlap or leave a small gap
                a2 = max(0.0, a - rng.uniform(-st.gap, st.overshoot) * 0.5 * k) if a > 0 else a
                if b - a2 > 1.0 * k:
                    pieces.append(_cut(q, a2, b))
        for q in pieces:
            out.extend(_style_piece(q, st, rng, k, lw))
    # darker strokes are drawn last so crossings keep the darker ink
    out.sort(key=lambda item: -item[2])
    return out


def _style_piece(q: np.ndarray, st: SketchStyle, rng, k: float, lw: float):
    L = _arclength(q)[-1]
    # 4. endpoints: overshoot (extend along the end tangent) or stop short
    ends = []
    for end, nxt in ((q[0], q[1]), (q[-1], q[-2])):
        d = end - nxt
        dn = np.linalg.norm(d)
        d = d / dn if dn > 1e-9 else np.zeros(2)
        e = rng.uniform(-st.gap, st.overshoot) * k
        e = max(e, -L / 4)
        ends.append((d, e))
    q = q.copy()
    head = [q[0] + ends[0][0] * ends[0][1]] if ends[0][1] > 0 else []
    tail = [q[-1] + ends[1][0] * ends[1][1]] if ends[1][1] > 0 else []
    q = np.vstack(head + [q] + tail) if (head or tail) else q
    s_all = _arclength(q)
    a, b = -min(ends[0][1], 0.0), s_all[-1] + min(ends[1][1], 0.0)
    if b - a < 0.8 * k:
        return []
    if a > 0 or b < s_all[-1]:
        q = _cut(q, a, b)
    # 5. wobble: smooth perpendicular noise, a bow, and a little tremor
    p = _resample(q, 1.0 * k)
    t = _arclength(p)
    L = t[-1]
    if L <= 0 or len(p) < 2:
        return []
    u = t / L
    scale = min(1.0, 0.35 + L / (60.0 * k))  # short strokes wobble less
    off = _smooth_noise(t, rng, st.wobble * k * scale, 50 * k, 260 * k)
    off += rng.normal(0, st.bow * k) * min(1.0, L / (50 * k)) * 4 * u * (1 - u)
    off += _smooth_noise(t, rng, st.jitter * k, 6 * k, 14 * k, terms=2)
    along = _smooth_noise(t, rng, 0.3 * st.wobble * k * scale, 40 * k, 200 * k, terms=2)
    nrm = _normals(p)
    tan = np.c_[nrm[:, 1], -nrm[:, 0]]
    p = p + nrm * off[:, None] + tan * (along - along[0])[:, None] * 0.3
    # 6. pressure: tapered ends, slow variation along the stroke, per-stroke width and grey
    w0 = lw * math.exp(rng.normal(0, st.width_var))
    ramp = np.clip(np.minimum(t, L - t) / max(3.0 * k, 0.12 * L), 0, 1)
    pressure = (0.45 + 0.55 * np.sqrt(ramp)) * np.exp(_smooth_noise(t, rng, 0.18, 20 * k, 90 * k, terms=2))
    widths = np.clip(w0 * pressure, 0.35 * k, 4.0 * k)
    grey = int(rng.integers(0, st.grey_max + 1))
    res = [(p, widths, grey)]
    if rng.random() < st.retrace:  # a second, slightly offset pass over the same line
        off2 = _smooth_noise(t, rng, (0.6 + st.wobble) * k, 20 * k, 120 * k)
        res.append((p + nrm * off2[:, None], widths * 0.8, min(255, grey + 30)))
    return res


def sketchify(strokes, size: int = 224, style="medium", seed=0, line_width: float | None = None,
              supersample: int = 4, mode: str = "L") -> Image.Image:
    """A freehand-looking sketch (dark lines on white, `size` x `size`) of a shape's visible strokes.

    strokes: the renderer's visible NPR strokes (retrieval.render.visible_strokes) in pixel
      coordinates at `size`; anything with `.points` and `.kind` works.
    style: 'clean' | 'medium' | 'abstract' or a level in [0, 1] (higher: more wobble, more
      dropped lines, more distortion, coarser simplification).
    seed: int or sequence of ints (numpy seeding); see sketch_seed() for per-view seeds.
    line_width: mean stroke width in output pixels (default 1.35 at 224 px, scaled with size).
    supersample: drawing resolution factor before the box-filter downsample (2-4 is plenty).
    mode: 'L' (default) or 'RGB' output image.
    """
    size = int(size)
    if size < 8:
        raise ConfigError(f"sketch size must be >= 8 pixels, got {size}")
    ss = max(1, int(supersample))
    lines = sketch_polylines(strokes, size, style, seed, line_width)
    S = size * ss
    ink = Image.new("L", (S, S), 0)
    draw = ImageDraw.Draw(ink)
    for pts, widths, grey in lines:
        value = 255 - int(grey)
        P = (pts * ss - 0.5).tolist()  # PIL puts pixel centres at integers
        Wd = widths * ss
        for i in range(len(P) - 1):
            w = 0.5 * (Wd[i] + Wd[i + 1])
            draw.line([tuple(P[i]), tuple(P[i + 1])], fill=value, width=max(1, int(round(w))))
            r = w / 2
            if r >= 1.0:  # round joins
                x, y = P[i + 1]
                draw.ellipse([x - r, y - r, x + r, y + r], fill=value)
    if ss > 1:
        ink = ink.resize((size, size), Image.BOX)
    img = Image.eval(ink, lambda v: 255 - v)
    return img.convert("RGB") if mode.upper() == "RGB" else img
