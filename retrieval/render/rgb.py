"""Shaded renders on white: the "RGB" domain of the seed paper, from the same ray cast.

Lambert shading with one key light fixed to the camera (every view lit alike, upper left
front) plus ambient, flat face normals turned towards the viewer (so badly wound meshes shade
correctly), the file's face or vertex colours (textures baked to vertex colours) or neutral
grey; with `rgb_colors='uniform'` every mesh gets the neutral grey, so that brightness depends on
shape rather than on file metadata. Supersampled and box-filtered, so edges against the white background are anti-aliased.
"""
from __future__ import annotations

import numpy as np
from PIL import Image

from ..viewpoints import Viewpoint
from .camera import Camera, RenderSettings
from .raycast import RayCast
from .mesh import PreparedMesh, prepare


def cast_view(pm: PreparedMesh, viewpoint: Viewpoint, settings: RenderSettings) -> RayCast:
    """Per-pixel ray cast of one view on the supersampled grid."""
    cam = Camera.from_viewpoint(viewpoint, settings).scaled(int(settings.supersample))
    return pm.rays.cast_image(cam)


def _surface_colors(pm: PreparedMesh, rc: RayCast, hit: np.ndarray, settings: RenderSettings) -> np.ndarray:
    faces = rc.face.reshape(-1)[hit]
    if pm.colors is None or settings.rgb_colors == "uniform":  # uniform: one light material for every mesh
        return np.broadcast_to(np.asarray(settings.base_color, dtype=np.float64), (len(faces), 3))
    kind, values = pm.colors
    if kind == "face":
        return values[faces]
    # vertex colours: interpolate with barycentric coordinates of the hit point
    tri_idx = pm.mesh.faces[faces]
    tri = pm.mesh.vertices[tri_idx]
    pts = rc.points.reshape(-1, 3)[hit]
    v0, v1, v2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0], pts - tri[:, 0]
    d00, d01, d11 = (v0 * v0).sum(1), (v0 * v1).sum(1), (v1 * v1).sum(1)
    d20, d21 = (v2 * v0).sum(1), (v2 * v1).sum(1)
    den = d00 * d11 - d01 * d01
    den = np.where(np.abs(den) > 1e-30, den, 1.0)
    b1 = np.clip((d11 * d20 - d01 * d21) / den, 0, 1)
    b2 = np.clip((d00 * d21 - d01 * d20) / den, 0, 1)
    b0 = np.clip(1 - b1 - b2, 0, 1)
    w = np.stack([b0, b1, b2], axis=1)
    w /= np.maximum(w.sum(1, keepdims=True), 1e-12)
    return np.einsum("ij,ijk->ik", w, values[tri_idx])


def shade(pm: PreparedMesh, rc: RayCast, settings: RenderSettings) -> Image.Image:
    """Turn a supersampled ray cast into the anti-aliased RGB image of settings.size."""
    cam = rc.camera
    hit = rc.face.reshape(-1) >= 0
    light = np.asarray(settings.light_dir, dtype=np.float64)
    light = light[0] * cam.right + light[1] * cam.up - light[2] * cam.forward
    light /= np.linalg.norm(light)
    normals = rc.normal.reshape(-1, 3)[hit]
    intensity = settings.ambient + settings.diffuse * np.clip(normals @ light, 0.0, None)
    img = np.ones((cam.size * cam.size, 3))
    img[hit] = np.clip(_surface_colors(pm, rc, hit, settings) * intensity[:, None], 0.0, 1.0)
    n, ss = int(settings.size), int(settings.supersample)
    img = img.reshape(n, ss, n, ss, 3).mean(axis=(1, 3))
    return Image.fromarray(np.clip(np.rint(img * 255.0), 0, 255).astype(np.uint8), mode="RGB")


def render_rgb(mesh, viewpoint: Viewpoint, settings: RenderSettings = RenderSettings()) -> Image.Image:
    """Shaded view of `mesh` (Trimesh, normalised inside as in render_npr, or a PreparedMesh)."""
    pm = prepare(mesh, settings)
    return shade(pm, cast_view(pm, viewpoint, settings), settings)
