"""Feature edges of a mesh, classified per view the way Blender Freestyle does by default.

Freestyle's default line set draws silhouettes (an edge between a front- and a back-facing
face), borders (an edge with one face) and creases (dihedral angle below the crease angle,
134.43° by default, i.e. face normals more than 45.57° apart). The view-independent part
(which faces meet at which edge, at what angle) is computed once per mesh here; only the
front/back test depends on the camera.

Real-world meshes need some care first: duplicate vertices are merged (else every triangle is
an island of border edges), duplicated faces (double-sided ShapeNet geometry) are dropped,
degenerate faces are ignored, and neighbours with inconsistent winding are compared with one
normal flipped, so a badly oriented but smooth surface gives neither silhouettes nor creases.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import trimesh

NONE, SILHOUETTE, BORDER, CREASE = 0, 1, 2, 3
KIND_NAMES = {SILHOUETTE: "silhouette", BORDER: "border", CREASE: "crease"}


@dataclass
class EdgeSet:
    vertices: np.ndarray     # (V, 3) merged vertices
    edges: np.ndarray        # (E, 2) vertex indices (sorted pair)
    faces: np.ndarray        # (E, 2) adjacent faces; second is -1 for borders and non-manifold edges
    flipped: np.ndarray      # (E,) bool, the two faces are wound inconsistently
    angle: np.ndarray        # (E,) degrees between the (winding-corrected) face normals; 0 for others
    border: np.ndarray       # (E,) bool, one adjacent face
    nonmanifold: np.ndarray  # (E,) bool, three or more adjacent faces (drawn as creases)
    face_normals: np.ndarray   # (F, 3)
    face_points: np.ndarray    # (F, 3) a point on each face (centroid)

    @classmethod
    def from_mesh(cls, mesh: trimesh.Trimesh) -> "EdgeSet":
        em = trimesh.Trimesh(np.asarray(mesh.vertices, dtype=np.float64).copy(),
                             np.asarray(mesh.faces).copy(), process=True)  # merges duplicate vertices
        v, f = em.vertices.view(np.ndarray), em.faces.view(np.ndarray)
        tri = v[f]
        n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area2 = np.linalg.norm(n, axis=1)
        scale = max(float(np.ptp(v, axis=0).max()) if len(v) else 1.0, 1e-12)
        keep = area2 > 1e-12 * scale * scale
        # double-sided copies and exact duplicates: keep the first face of each vertex set
        key = np.sort(f, axis=1)
        _, first = np.unique(key, axis=0, return_index=True)
        uniq = np.zeros(len(f), dtype=bool)
        uniq[first] = True
        keep &= uniq
        f, n, area2 = f[keep], n[keep], area2[keep]
        normals = n / area2[:, None]
        points = v[f].mean(axis=1)

        directed = f[:, [0, 1, 1, 2, 2, 0]].reshape(-1, 2)
        face_of = np.repeat(np.arange(len(f)), 3)
        srt = np.sort(directed, axis=1)
        ekey = srt[:, 0].astype(np.int64) * (len(v) + 1) + srt[:, 1]
        order = np.argsort(ekey, kind="stable")
        _, start, count = np.unique(ekey[order], return_index=True, return_counts=True)
        i0 = order[start]
        edges = srt[i0]
        faces = np.full((len(start), 2), -1, dtype=np.int64)
        faces[:, 0] = face_of[i0]
        pair = count == 2
        i1 = order[np.minimum(start + 1, len(order) - 1)]
        faces[pair, 1] = face_of[i1[pair]]
        flipped = np.zeros(len(start), dtype=bool)
        flipped[pair] = directed[i0[pair], 0] == directed[i1[pair], 0]  # same direction = inconsistent
        angle = np.zeros(len(start))
        if pair.any():
            n0 = normals[faces[pair, 0]]
            n1 = normals[faces[pair, 1]] * np.where(flipped[pair], -1.0, 1.0)[:, None]
            angle[pair] = np.degrees(np.arccos(np.clip(np.einsum("ij,ij->i", n0, n1), -1.0, 1.0)))
        return cls(v, edges.astype(np.int64), faces, flipped, angle, count == 1, count >= 3, normals, points)

    def classify(self, eye: np.ndarray, crease_angle: float = 134.43) -> np.ndarray:
        """Kind of every edge seen from `eye`: SILHOUETTE > BORDER > CREASE > NONE (int8 array)."""
        to_eye = np.asarray(eye, dtype=np.float64) - self.face_points
        front = np.einsum("ij,ij->i", self.face_normals, to_eye) > 0
        pair = ~self.border & ~self.nonmanifold
        f0 = front[self.faces[:, 0]]
        f1 = front[np.maximum(self.faces[:, 1], 0)] ^ self.flipped
        silhouette = pair & (f0 != f1)
        crease = (pair & (self.angle > 180.0 - crease_angle)) | self.nonmanifold
        kinds = np.zeros(len(self.edges), dtype=np.int8)
        kinds[crease] = CREASE
        kinds[self.border] = BORDER
        kinds[silhouette] = SILHOUETTE
        return kinds
