"""Ray casting with Embree (through trimesh), no OpenGL: works headless on any CPU box.

Two queries serve both renderers: a per-pixel cast on the supersampled grid (face id, depth,
normal: what the RGB shading and the foreground mask need), and point-visibility rays from the
camera to sample points on edges (the NPR hidden-line test, done per small piece of an edge as
Freestyle does per edge segment). Hit distances are recomputed in float64 from the hit
triangle's plane, because Embree works in float32.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh
from trimesh.ray.ray_pyembree import RayMeshIntersector

from .camera import Camera

_CHUNK = 1 << 20  # rays per Embree call (bounds temporary memory)


@dataclass
class RayCast:
    """Per-pixel result of one view at the supersampled resolution (H = W = camera.size)."""

    camera: Camera
    face: np.ndarray      # (H, W) int64, -1 where the ray misses
    distance: np.ndarray  # (H, W) float64, along the ray; inf on misses
    depth: np.ndarray     # (H, W) float64, camera z (along the view axis); inf on misses
    normal: np.ndarray    # (H, W, 3) float64, unit face normal turned towards the camera; 0 on misses
    points: np.ndarray    # (H, W, 3) float64, hit positions; NaN on misses

    @property
    def mask(self) -> np.ndarray:
        """Foreground mask (H, W) bool."""
        return self.face >= 0


class RayScene:
    """A mesh with its Embree BVH and float64 triangle planes; build once, cast many views."""

    def __init__(self, mesh: trimesh.Trimesh):
        self.mesh = mesh
        tri = np.asarray(mesh.triangles, dtype=np.float64)
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        norm = np.linalg.norm(n, axis=1)
        self.normals = np.divide(n, norm[:, None], out=np.zeros_like(n), where=norm[:, None] > 0)
        self.plane = np.einsum("ij,ij->i", self.normals, tri[:, 0])
        self.centroids = tri.mean(axis=1)
        self.intersector = RayMeshIntersector(mesh)

    def first_hit(self, origins: np.ndarray, directions: np.ndarray, grazing: float = 1e-9):
        """First face hit (-1: none) and float64 distance along unit `directions` (inf: none).

        For a hit whose plane is within `grazing` of parallel to the ray, the distance falls back
        to the projection of the triangle's centroid (the plane equation is ill-conditioned there).
        """
        origins = np.asarray(origins, dtype=np.float64)
        directions = np.asarray(directions, dtype=np.float64)
        faces = np.empty(len(origins), dtype=np.int64)
        for s in range(0, len(origins), _CHUNK):
            sl = slice(s, s + _CHUNK)
            faces[sl] = self.intersector.intersects_first(origins[sl], directions[sl])
        t = np.full(len(origins), np.inf)
        hit = np.nonzero(faces >= 0)[0]
        if hit.size:
            f = faces[hit]
            nrm = self.normals[f]
            denom = np.einsum("ij,ij->i", nrm, directions[hit])
            num = self.plane[f] - np.einsum("ij,ij->i", nrm, origins[hit])
            ok = np.abs(denom) > grazing
            th = np.where(ok, num / np.where(ok, denom, 1.0),
                          np.einsum("ij,ij->i", self.centroids[f] - origins[hit], directions[hit]))
            t[hit] = th
        return faces, t

    def cast_image(self, camera: Camera) -> RayCast:
        """Cast one ray through every pixel centre of `camera` (use a scaled camera to supersample).

        Only the window around the mesh's projected bounding box is traced; the rest is background.
        """
        n = camera.size
        rows = cols = slice(0, n)
        xy, z = camera.project(self.mesh.vertices[np.unique(self.mesh.faces)])
        if len(z) and (z > 1e-6).all():  # everything in front of the camera: trace only its window
            lo = np.clip(np.floor(xy.min(axis=0)).astype(int) - 1, 0, n)
            hi = np.clip(np.ceil(xy.max(axis=0)).astype(int) + 2, 0, n)
            cols, rows = slice(lo[0], hi[0]), slice(lo[1], hi[1])
        origins, dirs = camera.pixel_rays(rows, cols)
        faces_w, t_w = self.first_hit(origins, dirs)
        face = np.full((n, n), -1, dtype=np.int64)
        dist = np.full((n, n), np.inf)
        depth = np.full((n, n), np.inf)
        normal = np.zeros((n, n, 3))
        points = np.full((n, n, 3), np.nan)
        h, w = rows.stop - rows.start, cols.stop - cols.start
        if h > 0 and w > 0:
            hit = faces_w >= 0
            pts = np.full((len(faces_w), 3), np.nan)
            pts[hit] = origins[hit] + dirs[hit] * t_w[hit, None]
            nrm = np.zeros((len(faces_w), 3))
            nf = self.normals[faces_w[hit]]
            facing = np.einsum("ij,ij->i", nf, dirs[hit])
            nrm[hit] = np.where(facing[:, None] > 0, -nf, nf)  # two-sided: always towards the viewer
            face[rows, cols] = faces_w.reshape(h, w)
            dist[rows, cols] = t_w.reshape(h, w)
            depth[rows, cols] = np.where(hit, t_w * (dirs @ camera.forward), np.inf).reshape(h, w)
            normal[rows, cols] = nrm.reshape(h, w, 3)
            points[rows, cols] = pts.reshape(h, w, 3)
        return RayCast(camera, face, dist, depth, normal, points)

    def visible(self, eye: np.ndarray, points: np.ndarray, tolerance: float) -> np.ndarray:
        """True where nothing lies between `eye` and each point (closer than `tolerance` to it).

        A point on the surface hits its own face at its own distance, so it stays visible; a
        near-parallel (grazing) hit cannot hide anything and counts as a miss.
        """
        points = np.asarray(points, dtype=np.float64)
        if len(points) == 0:
            return np.zeros(0, dtype=bool)
        vec = points - eye
        dist = np.linalg.norm(vec, axis=1)
        dirs = vec / np.where(dist > 0, dist, 1.0)[:, None]
        origins = np.broadcast_to(np.asarray(eye, dtype=np.float64), points.shape)
        faces, t = self.first_hit(origins, dirs, grazing=1e-6)
        hit = faces >= 0
        if hit.any():
            cos = np.abs(np.einsum("ij,ij->i", self.normals[faces[hit]], dirs[hit]))
            t[np.nonzero(hit)[0][cos < 1e-6]] = np.inf
        return t >= dist - tolerance
