"""Procedural 3D shapes for the embedded demo data: chairs, tables, lamps and airplanes.

Every shape is a concatenation of simple closed (or, for lamp shades, open) primitives built
with trimesh: boxes, rods, frusta, convex hulls and lathe (revolved) profiles. Shapes within a
category differ in the fine-grained ways sketch-based retrieval is about: leg styles, back
styles, arms, proportions, tilt, number of parts...

Conventions: ShapeNetCore v2's, the renderer's default (``retrieval/render/orientation.py``):
+Y is up, the floor is ``y = 0``, and the front of a chair (the side a person sits down from)
faces −Z, as do the nose of an airplane and the long side of a table's front, so that the demo
data and real ShapeNet meshes render alike. (The builders work with the front on +Z and the
finished mesh is turned half a turn about +Y.) Units are roughly metres; the renderer
normalises the scale.

A shape is a pure function of ``(category, index, seed)``: the random numbers come from a numpy
Generator seeded with ``(seed, crc32(category), index)``, so ``generate_shape('chair', 7, 0)`` is
the same mesh on every machine and in every worker process.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import trimesh

__all__ = [
    "CATEGORIES", "GENERATOR_VERSION", "ShapeSpec", "shape_id", "parse_shape_id", "shape_rng",
    "generate_shape", "generate_shape_spec", "generate_shapes",
]

GENERATOR_VERSION = "synth-shapes-2"  # bump when any builder changes its output (2: front -Z)

_UP = np.array([0.0, 1.0, 0.0])
_HALF_TURN_Y = np.diag([-1.0, 1.0, -1.0, 1.0])  # x -> -x, z -> -z: a proper rotation by 180 deg about +Y


# --------------------------------------------------------------------------- primitives

def _align(direction) -> np.ndarray:
    """3x3 rotation taking +Z onto `direction` (minimal rotation)."""
    d = np.asarray(direction, float)
    d = d / np.linalg.norm(d)
    return trimesh.geometry.align_vectors([0.0, 0.0, 1.0], d)[:3, :3]


def _mesh(vertices, faces) -> trimesh.Trimesh:
    return trimesh.Trimesh(np.asarray(vertices, float), np.asarray(faces, np.int64), process=True)


def _box(center, extents, rotation=None) -> trimesh.Trimesh:
    T = np.eye(4)
    if rotation is not None:
        T[:3, :3] = rotation
    T[:3, 3] = center
    return trimesh.creation.box(extents=np.asarray(extents, float), transform=T)


def _bounds_box(lo, hi) -> trimesh.Trimesh:
    lo, hi = np.asarray(lo, float), np.asarray(hi, float)
    return _box((lo + hi) / 2, hi - lo)


def _bar(p0, p1, width, depth=None) -> trimesh.Trimesh:
    """A box of cross-section width x depth running from p0 to p1."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    depth = width if depth is None else depth
    return _box((p0 + p1) / 2, (width, depth, length), _align(p1 - p0))


def _frustum(p0, p1, r0, r1, sections=20, caps=(True, True)) -> trimesh.Trimesh:
    """A truncated cone (a cylinder when r0 == r1) from p0 (radius r0) to p1 (radius r1)."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    length = float(np.linalg.norm(p1 - p0))
    a = np.linspace(0.0, 2 * np.pi, sections, endpoint=False)
    ring = np.c_[np.cos(a), np.sin(a), np.zeros_like(a)]
    n = sections
    verts = [ring * max(r0, 1e-4), ring * max(r1, 1e-4) + [0, 0, length]]
    i = np.arange(n)
    j = (i + 1) % n
    faces = [np.c_[i, j, n + j], np.c_[i, n + j, n + i]]
    k = 2 * n
    if caps[0]:
        verts.append([[0.0, 0.0, 0.0]])
        faces.append(np.c_[np.full(n, k), j, i])
        k += 1
    if caps[1]:
        verts.append([[0.0, 0.0, length]])
        faces.append(np.c_[np.full(n, k), n + i, n + j])
    v = np.vstack(verts) @ _align(p1 - p0).T + p0
    return _mesh(v, np.vstack(faces))


def _rod(p0, p1, radius, sections=16) -> trimesh.Trimesh:
    return _frustum(p0, p1, radius, radius, sections)


def _hull(points) -> trimesh.Trimesh:
    return trimesh.convex.convex_hull(np.asarray(points, float))


def _slab(p0, p1, w0, w1, thickness, normal) -> trimesh.Trimesh:
    """A tapered flat plate (wing, fin, tapered square leg): centre line p0 -> p1, widths w0/w1
    across `normal` x direction, `thickness` along `normal`."""
    p0, p1, nrm = np.asarray(p0, float), np.asarray(p1, float), np.asarray(normal, float)
    nrm = nrm / np.linalg.norm(nrm)
    side = np.cross(nrm, p1 - p0)
    side = side / np.linalg.norm(side)
    pts = []
    for p, w in ((p0, w0), (p1, w1)):
        for s in (-0.5, 0.5):
            for t in (-0.5, 0.5):
                pts.append(p + side * s * w + nrm * t * thickness)
    return _hull(pts)


def _tapered_bar(p0, p1, w0, w1) -> trimesh.Trimesh:
    """A square-section bar from p0 (side w0) to p1 (side w1), sides aligned with x and z."""
    p0, p1 = np.asarray(p0, float), np.asarray(p1, float)
    pts = [p + (sx * w / 2, 0, sz * w / 2) for p, w in ((p0, w0), (p1, w1)) for sx in (-1, 1) for sz in (-1, 1)]
    return _hull(pts)


def _lathe(profile, base, direction=(0, 1, 0), sections=24) -> trimesh.Trimesh:
    """Revolve a (radius, height) profile around the axis through `base` along `direction`.
    Profiles that start and end on the axis give closed solids; others give open surfaces."""
    m = trimesh.creation.revolve(np.asarray(profile, float), sections=sections)
    T = np.eye(4)
    T[:3, :3] = _align(direction)
    T[:3, 3] = base
    m.apply_transform(T)
    return m


def _sphere(center, radius) -> trimesh.Trimesh:
    m = trimesh.creation.icosphere(subdivisions=1, radius=radius)
    m.apply_translation(center)
    return m


def _rot_x(deg: float) -> np.ndarray:
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[1, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(deg: float) -> np.ndarray:
    t = np.radians(deg)
    c, s = np.cos(t), np.sin(t)
    return np.array([[c, 0, s], [0, 1, 0], [-s, 0, c]])


def _transform(parts, rotation=None, translation=(0, 0, 0)):
    out = []
    for p in parts:
        p = p.copy()
        T = np.eye(4)
        if rotation is not None:
            T[:3, :3] = rotation
        T[:3, 3] = translation
        p.apply_transform(T)
        out.append(p)
    return out


def _choice(rng, options, p=None):
    return options[int(rng.choice(len(options), p=p))]


def _u(rng, lo, hi) -> float:
    return float(rng.uniform(lo, hi))


def _mirror_x(parts):
    out = []
    for p in parts:
        q = p.copy()
        q.apply_transform(np.diag([-1.0, 1.0, 1.0, 1.0]))  # trimesh fixes the winding
        out.append(q)
    return out


# --------------------------------------------------------------------------- chairs

CHAIR_LEGS = ("straight", "tapered", "splayed", "pedestal", "sled")
CHAIR_BACKS = ("solid", "raised_panel", "vertical_slats", "horizontal_slats", "frame")


def _chair(rng) -> tuple[list, dict]:
    legs = _choice(rng, CHAIR_LEGS, p=[0.28, 0.2, 0.18, 0.18, 0.16])
    back = _choice(rng, CHAIR_BACKS, p=[0.22, 0.18, 0.22, 0.2, 0.18])
    round_seat = legs in ("pedestal", "splayed", "straight") and rng.random() < 0.15
    W = _u(rng, 0.40, 0.58)                 # seat width (x)
    D = _u(rng, 0.38, 0.54) if not round_seat else W  # seat depth (z)
    H = _u(rng, 0.38, 0.52)                 # seat top height
    t = _u(rng, 0.025, 0.09)                # seat thickness
    BH = _u(rng, 0.28, 0.62)                # back height above the seat
    tilt = _u(rng, 0.0, 22.0)               # back tilt, degrees backwards
    BW = W * _u(rng, 0.75, 1.0) if not round_seat else W * _u(rng, 0.6, 0.8)
    bt = _u(rng, 0.02, 0.05)                # back thickness
    arms = rng.random() < (0.45 if legs == "pedestal" else 0.28)
    parts: list[trimesh.Trimesh] = []
    params = dict(legs=legs, back=back, round_seat=round_seat, arms=bool(arms), seat_width=W,
                  seat_depth=D, seat_height=H, seat_thickness=t, back_height=BH, back_tilt=tilt)

    # seat
    y0 = H - t
    if round_seat:
        parts.append(_rod((0, y0, 0), (0, H, 0), W / 2, sections=32))
    else:
        parts.append(_bounds_box((-W / 2, y0, -D / 2), (W / 2, H, D / 2)))

    # legs
    inset = _u(rng, 0.015, 0.06)
    if round_seat:
        r = W / 2 * 0.72
        corners = [(r * np.cos(a), r * np.sin(a)) for a in np.radians([45, 135, 225, 315])]
    else:
        hx, hz = W / 2 - inset, D / 2 - inset
        corners = [(hx, hz), (-hx, hz), (-hx, -hz), (hx, -hz)]
    square = rng.random() < 0.5
    lw = _u(rng, 0.022, 0.05)
    params["leg_section"] = "square" if square else "round"
    if legs in ("straight", "tapered"):
        taper = _u(rng, 0.4, 0.75) if legs == "tapered" else 1.0
        for (x, z) in corners:
            if square:
                parts.append(_tapered_bar((x, 0, z), (x, y0, z), lw * taper, lw))
            else:
                parts.append(_frustum((x, 0, z), (x, y0, z), lw / 2 * taper, lw / 2, sections=16))
        if rng.random() < 0.5:  # stretchers
            ys = _u(rng, 0.08, 0.22)
            sw = lw * 0.6
            style = _choice(rng, ("box", "h", "front_back"))
            params["stretchers"] = style
            c = corners
            pairs = {"box": [(0, 1), (1, 2), (2, 3), (3, 0)], "h": [(0, 3), (1, 2)],
                     "front_back": [(0, 1), (2, 3)]}[style]
            for a, b in pairs:
                parts.append(_rod((c[a][0], ys, c[a][1]), (c[b][0], ys, c[b][1]), sw / 2, sections=10))
            if style == "h":
                parts.append(_rod((c[0][0], ys, 0), (c[1][0], ys, 0), sw / 2, sections=10))
    elif legs == "splayed":
        splay = _u(rng, 0.03, 0.09)
        for (x, z) in corners:
            d = np.array([x, 0, z])
            d = d / (np.linalg.norm(d) + 1e-9)
            bottom = np.array([x, 0, z]) + d * splay
            parts.append(_frustum(bottom, (x * 0.85, y0, z * 0.85), lw / 2 * _u(rng, 0.55, 0.8), lw / 2,
                                  sections=14))
        params["splay"] = splay
    elif legs == "pedestal":
        arms_n = int(rng.choice([4, 5], p=[0.3, 0.7]))
        col_r = _u(rng, 0.018, 0.035)
        base_y = _u(rng, 0.05, 0.09)
        arm_len = _u(rng, 0.22, 0.33)
        parts.append(_rod((0, base_y, 0), (0, y0, 0), col_r, sections=18))
        parts.append(_bounds_box((-0.08, y0 - 0.04, -0.1), (0.08, y0, 0.1)))  # tilt mechanism
        parts.append(_rod((0, base_y - 0.02, 0), (0, base_y + 0.03, 0), col_r * 1.6, sections=18))
        casters = rng.random() < 0.7
        phase = _u(rng, 0, 360 / arms_n)
        for k in range(arms_n):
            a = np.radians(phase + k * 360 / arms_n)
            tip = np.array([np.sin(a) * arm_len, base_y - 0.03, np.cos(a) * arm_len])
            parts.append(_bar((0, base_y, 0), tip, _u(rng, 0.03, 0.045), 0.03))
            if casters:
                parts.append(_sphere(tip - [0, 0.015, 0], 0.022))
        params.update(star_arms=arms_n, casters=bool(casters))
    elif legs == "sled":
        r = _u(rng, 0.008, 0.016)
        fwd = _u(rng, 0.0, 0.06)
        for x in (-W / 2 + inset, W / 2 - inset):
            fb, bb = (x, r, D / 2 + fwd), (x, r, -D / 2 - fwd * 0.5)
            parts.append(_rod(fb, bb, r, sections=10))
            parts.append(_rod(fb, (x, y0, D / 2 - inset), r, sections=10))
            parts.append(_rod(bb, (x, y0, -D / 2 + inset), r, sections=10))

    # back, built with its bottom edge at the local origin then tilted around the seat's back edge
    bparts: list[trimesh.Trimesh] = []
    pw = _u(rng, 0.025, 0.05)  # post width
    rail = _u(rng, 0.04, 0.1)
    if back == "solid":
        bparts.append(_bounds_box((-BW / 2, 0, -bt / 2), (BW / 2, BH, bt / 2)))
        if rng.random() < 0.35:  # rounded top
            bparts.append(_frustum((-BW / 2, BH, 0), (BW / 2, BH, 0), bt * 0.5 + 0.01, bt * 0.5 + 0.01, 12))
            params["back_top"] = "rounded"
    else:
        for x in (-BW / 2 + pw / 2, BW / 2 - pw / 2):
            bparts.append(_bounds_box((x - pw / 2, 0, -bt / 2), (x + pw / 2, BH, bt / 2)))
        inner = BW - 2 * pw
        if back == "raised_panel":
            lo = BH * _u(rng, 0.25, 0.55)
            bparts.append(_bounds_box((-inner / 2, lo, -bt * 0.4), (inner / 2, BH * 0.97, bt * 0.4)))
        else:
            bparts.append(_bounds_box((-inner / 2, BH - rail, -bt / 2), (inner / 2, BH, bt / 2)))
        if back == "vertical_slats":
            n = int(rng.integers(1, 7))
            sw = min(_u(rng, 0.012, 0.06), inner / (n + 1) * 0.8)
            low = rail * 0.8 if rng.random() < 0.5 else 0.0
            if low:
                bparts.append(_bounds_box((-inner / 2, 0, -bt / 2), (inner / 2, low, bt / 2)))
            for k in range(n):
                x = -inner / 2 + inner * (k + 1) / (n + 1)
                bparts.append(_bounds_box((x - sw / 2, low, -bt * 0.35), (x + sw / 2, BH - rail, bt * 0.35)))
            params["slats"] = n
        elif back == "horizontal_slats":
            n = int(rng.integers(1, 5))
            sh = _u(rng, 0.02, 0.06)
            for k in range(n):
                y = (BH - rail) * (k + 1) / (n + 1)
                bparts.append(_bounds_box((-inner / 2, y - sh / 2, -bt * 0.35), (inner / 2, y + sh / 2, bt * 0.35)))
            params["slats"] = n
        elif back == "frame" and rng.random() < 0.4:
            bparts.append(_bounds_box((-inner / 2, 0, -bt / 2), (inner / 2, rail * 0.7, bt / 2)))
    if round_seat:
        back_z = -D / 2 * 0.85
    else:
        back_z = -D / 2 + bt / 2
    parts += _transform(bparts, _rot_x(-tilt), (0, H, back_z))

    # arms
    if arms:
        ah = _u(rng, 0.16, 0.26)
        aw = _u(rng, 0.03, 0.07)
        front = D / 2 - _u(rng, 0.0, 0.08)
        solid = legs not in ("pedestal",) and rng.random() < 0.25
        params["arm_style"] = "panel" if solid else "posts"
        x = W / 2 + aw / 2 - 0.005 if not round_seat else W / 2 * 0.8
        one = [_bounds_box((x - aw / 2, H + ah - 0.03, -D / 2), (x + aw / 2, H + ah, front))]
        if solid:
            one.append(_bounds_box((x - aw * 0.4, y0, -D / 2 + 0.02), (x + aw * 0.4, H + ah - 0.03, front - 0.02)))
        else:
            one.append(_bar((x, H - 0.01, front - 0.03), (x, H + ah - 0.03, front - 0.03), aw * 0.6))
            if rng.random() < 0.4:
                one.append(_bar((x, H - 0.01, -D / 2 + 0.08), (x, H + ah - 0.03, -D / 2 + 0.08), aw * 0.5))
        parts += one + _mirror_x(one)
    return parts, params


# --------------------------------------------------------------------------- tables

TABLE_TOPS = ("rect", "round", "square", "oval")
TABLE_BASES = ("four_legs", "pedestal", "trestle")


def _table(rng) -> tuple[list, dict]:
    top = _choice(rng, TABLE_TOPS, p=[0.4, 0.25, 0.15, 0.2])
    base = _choice(rng, TABLE_BASES, p=[0.5, 0.25, 0.25])
    if base == "trestle" and top == "round":
        top = "rect"
    H = _u(rng, 0.42, 0.78)
    t = _u(rng, 0.02, 0.07)
    if top in ("rect", "oval"):
        L, Wd = _u(rng, 0.9, 1.7), _u(rng, 0.5, 0.9)
    else:
        L = Wd = _u(rng, 0.6, 1.1)
    y0 = H - t
    parts: list[trimesh.Trimesh] = []
    params = dict(top=top, base=base, height=H, length=L, width=Wd, top_thickness=t)
    if top in ("rect", "square"):
        parts.append(_bounds_box((-L / 2, y0, -Wd / 2), (L / 2, H, Wd / 2)))
    else:
        disc = _rod((0, y0, 0), (0, H, 0), 0.5, sections=40)
        disc.apply_scale(1.0)
        disc.vertices[:, 0] *= L
        disc.vertices[:, 2] *= Wd
        parts.append(disc)
    shelf = False
    if base == "four_legs":
        lw = _u(rng, 0.03, 0.07)
        inset = _u(rng, 0.03, 0.12)
        if top in ("rect", "square"):
            hx, hz = L / 2 - inset - lw / 2, Wd / 2 - inset - lw / 2
        else:
            hx, hz = L / 2 * 0.68, Wd / 2 * 0.68
        corners = [(hx, hz), (-hx, hz), (-hx, -hz), (hx, -hz)]
        style = _choice(rng, ("square", "round", "tapered"))
        params["legs"] = style
        for (x, z) in corners:
            if style == "square":
                parts.append(_bar((x, 0, z), (x, y0, z), lw))
            elif style == "round":
                parts.append(_rod((x, 0, z), (x, y0, z), lw / 2))
            else:
                parts.append(_frustum((x, 0, z), (x, y0, z), lw * 0.25, lw / 2, 16))
        if rng.random() < 0.55:  # apron
            ah = _u(rng, 0.05, 0.12)
            params["apron"] = True
            parts.append(_bounds_box((-hx, y0 - ah, hz - lw / 4), (hx, y0, hz + lw / 4)))
            parts.append(_bounds_box((-hx, y0 - ah, -hz - lw / 4), (hx, y0, -hz + lw / 4)))
            parts.append(_bounds_box((hx - lw / 4, y0 - ah, -hz), (hx + lw / 4, y0, hz)))
            parts.append(_bounds_box((-hx - lw / 4, y0 - ah, -hz), (-hx + lw / 4, y0, hz)))
        shelf = rng.random() < 0.35
        if shelf:
            ys = _u(rng, 0.1, 0.3) * H / 0.7
            parts.append(_bounds_box((-hx, ys, -hz), (hx, ys + _u(rng, 0.015, 0.03), hz)))
    elif base == "pedestal":
        cr = _u(rng, 0.04, 0.1)
        col = _choice(rng, ("cylinder", "flared", "turned"))
        params["column"] = col
        if col == "cylinder":
            parts.append(_rod((0, 0, 0), (0, y0, 0), cr, 24))
        elif col == "flared":
            parts.append(_frustum((0, 0, 0), (0, y0, 0), cr * 1.6, cr * 0.7, 24))
        else:
            prof = [(0, 0), (cr, 0), (cr * 0.6, 0.15 * y0), (cr * 1.3, 0.4 * y0), (cr * 0.6, 0.7 * y0),
                    (cr * 0.8, y0), (0, y0)]
            parts.append(_lathe(prof, (0, 0, 0), sections=24))
        foot = _choice(rng, ("disc", "cross", "tripod"))
        params["foot"] = foot
        reach = min(L, Wd) * _u(rng, 0.3, 0.45)
        if foot == "disc":
            parts.append(_frustum((0, 0, 0), (0, _u(rng, 0.02, 0.06), 0), reach, reach * _u(rng, 0.7, 1.0), 36))
        else:
            n = 4 if foot == "cross" else 3
            for k in range(n):
                a = np.radians(45 + k * 360 / n)
                parts.append(_bar((0, 0.03, 0), (np.sin(a) * reach, 0.02, np.cos(a) * reach), 0.05, 0.04))
        if top in ("rect", "oval") and L > 1.2:
            parts.append(_bounds_box((-L * 0.3, y0 - 0.04, -0.04), (L * 0.3, y0, 0.04)))
    else:  # trestle
        inset = _u(rng, 0.08, 0.2)
        kind = _choice(rng, ("plank", "a_frame", "double_post"))
        params["trestle"] = kind
        ext = Wd * _u(rng, 0.6, 0.9)
        parts_side = []
        x = L / 2 - inset
        if kind == "plank":
            th = _u(rng, 0.03, 0.06)
            parts_side.append(_bounds_box((x - th / 2, 0.05, -ext / 2 * 0.7), (x + th / 2, y0 - 0.04, ext / 2 * 0.7)))
        elif kind == "a_frame":
            for s in (-1, 1):
                parts_side.append(_bar((x, 0.05, s * ext / 2), (x, y0 - 0.04, s * 0.04), 0.045))
        else:
            for s in (-1, 1):
                parts_side.append(_bar((x, 0.05, s * ext / 4), (x, y0 - 0.04, s * ext / 4), 0.045))
        parts_side.append(_bounds_box((x - 0.035, 0, -ext / 2), (x + 0.035, 0.05, ext / 2)))          # foot
        parts_side.append(_bounds_box((x - 0.03, y0 - 0.045, -ext / 2), (x + 0.03, y0, ext / 2)))     # cleat
        parts += parts_side + _mirror_x(parts_side)
        yb = _u(rng, 0.15, 0.5) * y0
        parts.append(_bounds_box((-x, yb - 0.03, -0.025), (x, yb + 0.03, 0.025)))               # stretcher
        shelf = rng.random() < 0.25
        if shelf:
            parts.append(_bounds_box((-x, 0.12, -ext / 2 * 0.8), (x, 0.14, ext / 2 * 0.8)))
    params["shelf"] = bool(shelf)
    return parts, params


# --------------------------------------------------------------------------- lamps

LAMP_BASES = ("disc", "square", "dome", "tripod")
LAMP_STEMS = ("straight", "angled", "articulated")
LAMP_SHADES = ("cone", "cylinder", "dome")


def _shade(kind, rim_center, axis, radius, height, rng, sections=28) -> trimesh.Trimesh:
    """An open lamp shade whose wide rim is at `rim_center`, opening along `axis`."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    if kind == "cone":
        top = radius * _u(rng, 0.3, 0.65)
        prof = [(radius, 0.0), (top, height)]
    elif kind == "cylinder":
        prof = [(radius, 0.0), (radius * _u(rng, 0.9, 1.0), height)]
    else:  # dome: a quarter ellipse, closed at the top
        a = np.linspace(0, np.pi / 2, 9)
        prof = [(radius * np.cos(x), height * np.sin(x)) for x in a]
        prof[-1] = (0.0, height)
    # the profile goes up from the rim along -axis (the shade opens along +axis)
    return _lathe(prof, rim_center, -axis, sections)


def _lamp(rng) -> tuple[list, dict]:
    base = _choice(rng, LAMP_BASES)
    stem = _choice(rng, LAMP_STEMS, p=[0.4, 0.25, 0.35])
    shade = _choice(rng, LAMP_SHADES)
    floor = rng.random() < 0.4 and stem != "articulated"
    S = _u(rng, 1.2, 1.7) if floor else _u(rng, 0.35, 0.6)  # overall height scale
    parts: list[trimesh.Trimesh] = []
    params = dict(base=base, stem=stem, shade=shade, floor_lamp=bool(floor), height=S)
    br = S * _u(rng, 0.12, 0.22) if not floor else _u(rng, 0.14, 0.22)
    bh = _u(rng, 0.02, 0.06) * (S / 0.5 if not floor else 1.5)
    if base == "disc":
        parts.append(_frustum((0, 0, 0), (0, bh, 0), br, br * _u(rng, 0.75, 1.0), 32))
    elif base == "square":
        parts.append(_bounds_box((-br, 0, -br), (br, bh, br)))
    elif base == "dome":
        a = np.linspace(0, np.pi / 2, 8)
        prof = [(0, 0)] + [(br * np.cos(x), bh * 2.2 * np.sin(x)) for x in a]
        prof[-1] = (0.0, bh * 2.2)
        parts.append(_lathe(prof, (0, 0, 0), sections=28))
        bh *= 2.0
    else:
        hub = 0.25 * S
        for k in range(3):
            a = np.radians(k * 120 + 30)
            parts.append(_rod((np.sin(a) * br * 1.3, 0, np.cos(a) * br * 1.3), (0, hub, 0), 0.012, 10))
        bh = hub
    sr = _u(rng, 0.008, 0.018) * (1.5 if floor else 1.0)
    shade_r = S * _u(rng, 0.15, 0.3) if not floor else _u(rng, 0.17, 0.28)
    shade_h = shade_r * _u(rng, 0.6, 1.3)
    if stem == "straight":
        top = np.array([0, S * _u(rng, 0.7, 0.85), 0])
        parts.append(_rod((0, bh, 0), top, sr, 14))
        rim = top + [0, -shade_h * 0.35, 0]
        parts.append(_shade(shade, rim, (0, -1, 0), shade_r, shade_h, rng))
        if rng.random() < 0.4:  # finial / bulb holder
            parts.append(_sphere(top + [0, shade_h * 0.7, 0], sr * 2.0))
    elif stem == "angled":
        lean = _u(rng, 10, 30)
        az = _u(rng, -60, 60)
        length = S * _u(rng, 0.75, 0.95)
        d = _rot_y(az) @ np.array([0, np.cos(np.radians(lean)), np.sin(np.radians(lean))])
        top = np.array([0, bh, 0]) + d * length
        parts.append(_rod((0, bh, 0), top, sr, 14))
        hang = _u(rng, 0.03, 0.1) * S
        parts.append(_rod(top, top - [0, hang, 0], sr * 0.7, 10))
        parts.append(_shade(shade, top - [0, hang + shade_h * 0.8, 0], (0, -1, 0), shade_r, shade_h, rng))
        params.update(lean=lean)
    else:  # articulated desk lamp: two or three arms with joints, shade pointing down/forward
        n = int(rng.choice([2, 3], p=[0.7, 0.3]))
        az = _u(rng, -40, 40)
        p = np.array([0, bh, 0])
        joints = [p.copy()]
        angles = [_u(rng, -10, 35)] + [_u(rng, 55, 115) for _ in range(n - 1)]  # from vertical, forward +
        length = S * _u(rng, 0.4, 0.55)
        for k, a in enumerate(angles):
            d = _rot_y(az) @ np.array([0, np.cos(np.radians(a)), np.sin(np.radians(a))])
            p = p + d * length * (1.0 if k == 0 else _u(rng, 0.7, 1.0))
            joints.append(p.copy())
        double = rng.random() < 0.5
        for a, b in zip(joints[:-1], joints[1:]):
            if double:  # parallel twin bars
                off = _rot_y(az) @ np.array([0.012, 0, 0])
                parts.append(_rod(a + off, b + off, sr * 0.6, 8))
                parts.append(_rod(a - off, b - off, sr * 0.6, 8))
            else:
                parts.append(_rod(a, b, sr, 12))
        for j in joints:
            parts.append(_sphere(j, sr * 2.2))
        head_dir = _rot_y(az) @ np.array([0, -np.cos(np.radians(35)), np.sin(np.radians(35))])
        parts.append(_shade(shade, joints[-1] + head_dir * shade_h * 0.95, head_dir, shade_r * 0.7,
                            shade_h * 0.8, rng))
        params.update(arm_segments=n, twin_bars=bool(double))
    return parts, params


# --------------------------------------------------------------------------- airplanes

PLANE_ENGINES = ("propeller", "wing_2", "wing_4", "rear_2")
PLANE_TAILS = ("conventional", "t_tail", "twin")
PLANE_WINGS = ("low", "mid", "high")


def _airplane(rng) -> tuple[list, dict]:
    L = 1.0
    R = _u(rng, 0.04, 0.085)
    engines = _choice(rng, PLANE_ENGINES)
    tail = _choice(rng, PLANE_TAILS, p=[0.5, 0.3, 0.2])
    wing_pos = _choice(rng, PLANE_WINGS)
    span = _u(rng, 0.7, 1.3)
    root_c = _u(rng, 0.12, 0.3)
    taper = _u(rng, 0.25, 0.9)
    sweep = _u(rng, 0.0, 40.0) if engines != "propeller" else _u(rng, 0.0, 12.0)
    dihedral = _u(rng, -4.0, 8.0)
    params = dict(engines=engines, tail=tail, wing_position=wing_pos, span=span, sweep=sweep,
                  root_chord=root_c, taper=taper, dihedral=dihedral, fuselage_radius=R)
    parts: list[trimesh.Trimesh] = []
    # fuselage along z: tail at z=-L/2, nose at z=+L/2
    nose = _u(rng, 0.08, 0.18)
    tailc = _u(rng, 0.2, 0.35)
    up = _u(rng, 0.0, 0.6)  # tail cone rises (centreline offset is approximated by a shear)
    prof = [(0, 0), (R * 0.25, 0.02), (R, tailc), (R, 1 - nose), (R * 0.6, 1 - nose * 0.35), (0, 1.0)]
    fus = _lathe(prof, (0, 0, -L / 2), (0, 0, 1), sections=24)
    v = fus.vertices
    w = np.clip((tailc - (v[:, 2] + L / 2)) / tailc, 0, 1)
    v[:, 1] += w * R * up
    fus.vertices = v
    parts.append(fus)
    wy = {"low": -0.6 * R, "mid": 0.0, "high": 0.7 * R}[wing_pos]
    wz = _u(rng, -0.08, 0.08)
    thick = 0.018
    sw = np.tan(np.radians(sweep))
    dh = np.tan(np.radians(dihedral))
    half = span / 2
    tip = np.array([half, wy + half * dh, wz - half * sw])
    wing = [_slab((0, wy, wz), tip, root_c, root_c * taper, thick, (0, 1, 0))]
    # horizontal stabiliser
    hs_span = span * _u(rng, 0.28, 0.4)
    hs_c = root_c * _u(rng, 0.45, 0.7)
    fin_h = _u(rng, 0.12, 0.22)
    fin_c = _u(rng, 0.12, 0.22)
    tz = -L / 2 + fin_c * 0.6
    top_y = R * up + R * 0.4
    fins = []
    if tail == "t_tail":
        hs_y = top_y + fin_h
    else:
        hs_y = R * up * 0.8
    hs_tip = np.array([hs_span / 2, hs_y + hs_span / 2 * dh * 0.5, tz - hs_span / 2 * sw * 0.8])
    wing.append(_slab((0, hs_y, tz), hs_tip, hs_c, hs_c * 0.6, thick * 0.8, (0, 1, 0)))
    fin_sweep = _u(rng, 0.3, 0.9) * fin_h
    if tail == "twin":
        fx = hs_span / 2 * 0.9
        fins_one = [_slab((fx, hs_y, tz - 0.01), (fx, hs_y + fin_h * 0.8, tz - fin_sweep * 0.8), fin_c * 0.8,
                          fin_c * 0.5, thick, (1, 0, 0))]
        fins += fins_one + _mirror_x(fins_one)
    else:
        fins.append(_slab((0, top_y - R * 0.3, tz), (0, top_y + fin_h, tz - fin_sweep), fin_c, fin_c * 0.55,
                          thick, (1, 0, 0)))
    eng = []
    if engines == "propeller":
        hub = _frustum((0, 0, L / 2 - 0.01), (0, 0, L / 2 + 0.05), R * 0.45, 0.004, 14)
        parts.append(hub)
        nb = int(rng.choice([2, 3, 4]))
        for k in range(nb):
            a = np.radians(k * 360 / nb + 20)
            d = np.array([np.cos(a), np.sin(a), 0])
            parts.append(_slab((0, 0, L / 2 + 0.02), d * R * 2.8 + [0, 0, L / 2 + 0.02], 0.03, 0.015, 0.006, (0, 0, 1)))
        params["blades"] = nb
    elif engines in ("wing_2", "wing_4"):
        spots = [0.35] if engines == "wing_2" else [0.28, 0.6]
        er = _u(rng, 0.022, 0.04)
        el = _u(rng, 0.12, 0.2)
        for s in spots:
            x = half * s
            z = wz - x * sw + root_c * 0.2
            y = wy + x * dh - er * 1.4
            eng.append(_frustum((x, y, z - el * 0.6), (x, y, z + el * 0.6), er * 0.8, er, 18))
    else:  # rear fuselage engines
        er = _u(rng, 0.025, 0.04)
        el = _u(rng, 0.12, 0.18)
        x = R + er * 1.1
        z = -L / 2 + tailc + 0.05
        eng.append(_frustum((x, R * 0.3, z - el / 2), (x, R * 0.3, z + el / 2), er * 0.8, er, 18))
        eng.append(_bar((R * 0.5, R * 0.3, z), (x, R * 0.3, z), 0.012, 0.04))
    one = wing + eng
    parts += one + _mirror_x(one) + fins
    return parts, params


# --------------------------------------------------------------------------- public API

_BUILDERS: dict[str, Callable] = {"chair": _chair, "table": _table, "lamp": _lamp, "airplane": _airplane}
CATEGORIES: tuple[str, ...] = tuple(_BUILDERS)


@dataclass
class ShapeSpec:
    """A generated shape with its id, category and the parameters that made it."""
    shape_id: str
    category: str
    index: int
    seed: int
    mesh: trimesh.Trimesh
    params: dict = field(default_factory=dict)


def shape_id(category: str, index: int) -> str:
    """`chair_0007`-style id (ids sort in generation order)."""
    return f"{category}_{int(index):04d}"


def parse_shape_id(sid: str) -> tuple[str, int]:
    """Inverse of :func:`shape_id`; raises ValueError for ids this generator does not make."""
    cat, _, num = sid.rpartition("_")
    if cat not in _BUILDERS or not num.isdigit():
        raise ValueError(f"not a synthetic shape id: {sid!r}")
    return cat, int(num)


def shape_rng(category: str, index: int, seed: int) -> np.random.Generator:
    """The Generator behind one shape: seeded by (seed, crc32(category), index), stable everywhere."""
    return np.random.default_rng([int(seed) & 0xFFFFFFFF, zlib.crc32(category.encode("utf-8")), int(index)])


def _check_category(category: str) -> None:
    if category not in _BUILDERS:
        raise ValueError(f"unknown shape category {category!r}; choose from {', '.join(CATEGORIES)}")


def generate_shape_spec(category: str, index: int, seed: int = 0) -> ShapeSpec:
    _check_category(category)
    if int(index) < 0:
        raise ValueError(f"shape index must be >= 0, got {index}")
    parts, params = _BUILDERS[category](shape_rng(category, index, seed))
    mesh = trimesh.util.concatenate(parts)
    if category == "airplane":  # parked: lowest point on the floor like the other categories
        mesh.apply_translation([0.0, -float(mesh.vertices[:, 1].min()), 0.0])
    mesh.apply_transform(_HALF_TURN_Y)  # builders face +Z; ShapeNet v2 (the default) faces -Z
    mesh.metadata["shape_id"] = shape_id(category, index)
    mesh.metadata["category"] = category
    if not (len(mesh.faces) and np.isfinite(mesh.vertices).all()):  # a builder bug, never user input
        raise RuntimeError(f"generator produced an invalid mesh for {shape_id(category, index)}")
    params = {k: (round(v, 4) if isinstance(v, float) else v) for k, v in params.items()}
    return ShapeSpec(shape_id(category, index), category, int(index), int(seed), mesh, params)


def generate_shape(category: str, index: int, seed: int = 0) -> trimesh.Trimesh:
    """One procedural mesh, deterministic in (category, index, seed). +Y up, front towards -Z (ShapeNet v2)."""
    return generate_shape_spec(category, index, seed).mesh


def generate_shapes(category: str, n: int, seed: int = 0, start: int = 0) -> dict[str, trimesh.Trimesh]:
    """`n` shapes of one category as {shape_id: mesh}, indices start..start+n-1."""
    _check_category(category)
    return {shape_id(category, i): generate_shape(category, i, seed) for i in range(start, start + int(n))}
