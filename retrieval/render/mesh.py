"""Loading meshes into one triangle soup and normalising them like the seed paper.

Shapes arrive as OBJ/OFF/PLY/STL/GLB/GLTF files, often as scenes of many parts; the
renderer wants one `trimesh.Trimesh` with its colours, centred on its bounding box and scaled
to a fixed half-diagonal so that every shape fills the frame the same way. `PreparedMesh`
bundles what every view of one shape shares (the normalised mesh, its Embree BVH, its feature
edges, its colours), so that several viewpoints and domains pay for them once.
"""
from __future__ import annotations

import hashlib
import re
from pathlib import Path

import numpy as np
import trimesh

from ..errors import MeshError
from .camera import RenderSettings

# File types a folder scan picks up (others, e.g. .mtl, .bin, textures, are companions).
MESH_EXTENSIONS = ("obj", "off", "ply", "stl", "glb", "gltf") + tuple(
    e for e in ("dae", "3mf") if e in {f.lower() for f in trimesh.available_formats()})


def mesh_name(mesh: trimesh.Trimesh) -> str:
    """The file a mesh came from (for error messages), else '<mesh>'."""
    meta = getattr(mesh, "metadata", None) or {}
    return str(meta.get("file_path") or meta.get("file_name") or meta.get("name") or "<mesh>")


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0]}" if text else type(e).__name__


def _to_color(part: trimesh.Trimesh, texture: bool | None = None, obj_file: bool = False) -> bool:
    """Bake textures/materials to colours in place (RGB needs colours, not UV-mapped images).

    A texture image becomes vertex colours; a material without an image (an MTL with only Kd)
    becomes its flat colour; a part whose texture file is missing, or with no colour at all, is
    left uncoloured. `texture`: for OBJ files, whether the part's MTL names a texture image that
    exists (True), one that is missing (False) or none (None); other formats: None, trimesh decides.
    Returns whether the part now has colours."""
    vis = part.visual
    kind = getattr(vis, "kind", None)
    if texture is False:
        part.visual = trimesh.visual.ColorVisuals(part)
        return False
    if kind == "texture":
        mat = getattr(vis, "material", None)
        if texture is None and obj_file:  # trimesh's 2x2 placeholder image for UVs without a texture
            has_image = False
        else:
            has_image = any(getattr(mat, a, None) is not None for a in ("image", "baseColorTexture"))
        baked = None
        try:
            baked = vis.to_color() if has_image else None
        except Exception:  # a broken texture must not cost the shape; it renders grey instead
            baked = None
        if baked is not None and baked.kind is not None:
            part.visual = baked
            return True
        main = _explicit_color(getattr(vis, "material", None))
        if main is not None:
            part.visual = trimesh.visual.ColorVisuals(
                part, face_colors=np.tile(np.asarray(main, dtype=np.uint8)[:4], (len(part.faces), 1)))
            return True
        part.visual = trimesh.visual.ColorVisuals(part)
        return False
    return kind in ("face", "vertex")


def _explicit_color(material):
    """The flat colour a material states (MTL Kd, glTF baseColorFactor), None for trimesh's default."""
    if material is None:
        return None
    if getattr(material, "baseColorFactor", None) is not None:
        return material.main_color
    kwargs = getattr(material, "kwargs", None) or {}
    if any(k in kwargs for k in ("kd", "Kd", "diffuse")):
        return material.main_color
    return None


def _material_name(part: trimesh.Trimesh) -> str | None:
    mat = getattr(part.visual, "material", None)
    return getattr(mat, "name", None)


def _obj_textures(path: Path) -> dict[str, bool]:
    """{material name: whether its texture image (map_Kd) is on disk} for an OBJ's MTL files.

    trimesh drops a missing texture silently and keeps the material's flat Kd colour, which
    would render a textured ShapeNet part in a colour its author never showed; such parts are
    rendered like an uncoloured mesh instead (the settings' light grey)."""
    missing: dict[str, bool] = {}
    if path.suffix.lower() != ".obj":
        return missing
    try:
        head = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return missing
    for lib in re.findall(r"^\s*mtllib\s+(.+?)\s*$", head, flags=re.MULTILINE):
        mtl = path.parent / lib
        try:
            text = mtl.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        name = None
        for line in text.splitlines():
            tok = line.strip().split(None, 1)
            if not tok:
                continue
            if tok[0] == "newmtl" and len(tok) > 1:
                name = tok[1].strip()
            elif tok[0] == "map_Kd" and len(tok) > 1 and name is not None:
                image = tok[1].strip().split()[-1]  # options such as -s 1 1 come first
                missing[name] = (mtl.parent / image).is_file()
    return missing


def _colour_array(rows: list) -> np.ndarray:
    """RGBA uint8 from OFF colour rows: 3 or 4 numbers each, 0..255 integers or 0..1 floats."""
    vals = np.array([r[:3] + [r[3] if len(r) > 3 else None] for r in rows], dtype=object)
    rgb = vals[:, :3].astype(np.float64)
    scale = 1.0 if rgb.max(initial=0.0) > 1.0 else 255.0  # floats in 0..1, or bytes
    alpha = np.array([255.0 if v is None else float(v) * scale for v in vals[:, 3]])
    return np.clip(np.rint(np.column_stack([rgb * scale, alpha])), 0, 255).astype(np.uint8)


def _off_with_colors(path: Path) -> trimesh.Trimesh | None:
    """An OFF file with its vertex (COFF) or face colours, which trimesh's OFF reader drops; None when the
    file states no colours (trimesh reads it then). Polygons are split into triangle fans."""
    words = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        line = line.split("#", 1)[0].split()
        if line:
            words.append(line)
    if not words or not words[0][0].upper().endswith("OFF"):
        return None
    raw = words[0][0][:-3]
    if "ST" in raw.upper() or "4" in raw or "n" in raw:  # texture coordinates, 4D, nOFF: left to trimesh
        return None
    head = raw.upper()
    rest = words[0][1:] or words[1]
    body = words[1:] if words[0][1:] else words[2:]
    nv, nf = int(rest[0]), int(rest[1])
    vlines, flines = body[:nv], body[nv:nv + nf]
    if len(vlines) < nv or len(flines) < nf:
        return None
    skip = 3 + (3 if "N" in head else 0)
    vertices = np.array([[float(x) for x in v[:3]] for v in vlines], dtype=np.float64)
    vcols = [[float(x) for x in v[skip:skip + 4]] for v in vlines] if "C" in head else None
    faces, fcols = [], []
    for f in flines:
        n = int(f[0])
        idx = [int(x) for x in f[1:1 + n]]
        extra = [float(x) for x in f[1 + n:]]
        for t in range(1, n - 1):
            faces.append([idx[0], idx[t], idx[t + 1]])
            fcols.append(extra)
    has_face = bool(fcols) and all(len(c) >= 3 for c in fcols)
    has_vertex = vcols is not None and all(len(c) >= 3 for c in vcols)
    if not (has_face or has_vertex):
        return None
    faces = np.array(faces, dtype=np.int64).reshape(-1, 3)
    if has_face:  # a face colour is the more specific statement
        return trimesh.Trimesh(vertices, faces, face_colors=_colour_array(fcols), process=False)
    return trimesh.Trimesh(vertices, faces, vertex_colors=_colour_array(vcols), process=False)


def load_mesh(path) -> trimesh.Trimesh:
    """Read any file trimesh reads as one triangle mesh (scene parts flattened with their transforms).

    Raises MeshError naming the file when it is missing, unreadable, has no triangles, or has
    non-finite vertices. Textures are baked to vertex colours (a part whose texture file is missing
is rendered the light grey of an uncoloured mesh); nothing else is changed.
    """
    path = Path(path)
    if not path.exists():
        raise MeshError(f"{path}: mesh file does not exist")
    if path.is_dir():
        raise MeshError(f"{path}: is a folder, not a mesh file")
    if path.stat().st_size == 0:
        raise MeshError(f"{path}: empty file")
    try:
        coloured_off = None
        if path.suffix.lower() == ".off":
            try:
                coloured_off = _off_with_colors(path)
            except (ValueError, IndexError):  # not the simple OFF this reads: trimesh reads it (or says why not)
                coloured_off = None
        if coloured_off is not None:
            parts = [coloured_off] if len(coloured_off.faces) else []
        else:
            scene = trimesh.load_scene(str(path), process=False)
            parts = [g for g in scene.dump(concatenate=False) if isinstance(g, trimesh.Trimesh) and len(g.faces)]
    except MeshError:
        raise
    except Exception as e:  # trimesh raises many types (ValueError, KeyError, struct.error, ...)
        raise MeshError(f"{path}: cannot read mesh ({_first_line(e)})") from None
    if not parts:
        raise MeshError(f"{path}: no triangles (empty mesh or not a mesh file)")
    textures = _obj_textures(path)
    is_obj = path.suffix.lower() == ".obj"
    coloured = [_to_color(p, textures.get(_material_name(p)), is_obj) for p in parts]
    if any(coloured) and not all(coloured):
        # uncoloured parts beside coloured ones get the uncoloured mesh's grey explicitly
        # (trimesh would fill in its own darker default when concatenating)
        grey = np.append(np.rint(np.asarray(RenderSettings().base_color) * 255), 255).astype(np.uint8)
        for p, has in zip(parts, coloured):
            if not has:
                p.visual = trimesh.visual.ColorVisuals(p, face_colors=np.tile(grey, (len(p.faces), 1)))
    mesh = parts[0] if len(parts) == 1 else trimesh.util.concatenate(parts)
    if not isinstance(mesh, trimesh.Trimesh) or len(mesh.faces) == 0:
        raise MeshError(f"{path}: no triangles (empty mesh or not a mesh file)")
    used = np.unique(mesh.faces)
    if used.size and (used.min() < 0 or used.max() >= len(mesh.vertices)):
        raise MeshError(f"{path}: faces refer to vertices that do not exist")
    bad = int((~np.isfinite(mesh.vertices[used])).any(axis=1).sum())
    if bad:
        raise MeshError(f"{path}: {bad} vertices are not finite (NaN or inf)")
    mesh.metadata["file_path"] = str(path)
    mesh.metadata["file_name"] = path.name
    return mesh


def normalize_mesh(mesh: trimesh.Trimesh, half_diagonal: float = 0.56) -> trimesh.Trimesh:
    """A copy centred on its bounding box and scaled to the given bounding-box half-diagonal."""
    if len(mesh.faces) == 0 or len(mesh.vertices) == 0:
        raise MeshError(f"{mesh_name(mesh)}: empty mesh (no triangles)")
    used = mesh.vertices[np.unique(mesh.faces)]
    if not np.isfinite(used).all():
        raise MeshError(f"{mesh_name(mesh)}: vertices are not finite (NaN or inf)")
    lo, hi = used.min(axis=0), used.max(axis=0)
    diag = float(np.linalg.norm(hi - lo))
    if not diag > 1e-12 * max(1.0, float(np.abs(used).max())):
        raise MeshError(f"{mesh_name(mesh)}: zero extent (all vertices coincide)")
    out = mesh.copy()
    out.apply_translation(-(lo + hi) / 2.0)
    out.apply_scale(2.0 * half_diagonal / diag)
    return out


def mesh_signature(mesh: trimesh.Trimesh) -> str:
    """Content hash of geometry and colours (resume key for in-memory meshes)."""
    h = hashlib.sha1()
    h.update(np.ascontiguousarray(mesh.vertices, dtype=np.float64).tobytes())
    h.update(np.ascontiguousarray(mesh.faces, dtype=np.int64).tobytes())
    colors = mesh_colors(mesh)
    if colors is not None:
        h.update(colors[0].encode())
        h.update(np.ascontiguousarray(colors[1]).tobytes())
    return h.hexdigest()[:16]


def mesh_colors(mesh: trimesh.Trimesh):
    """('face', (F,3) float) or ('vertex', (V,3) float) in 0..1 when the mesh has colours, else None."""
    vis = mesh.visual
    kind = getattr(vis, "kind", None)
    try:
        if kind == "face":
            return "face", np.asarray(vis.face_colors[:, :3], dtype=np.float64) / 255.0
        if kind == "vertex":
            return "vertex", np.asarray(vis.vertex_colors[:, :3], dtype=np.float64) / 255.0
        if kind == "texture":
            c = vis.to_color()
            if c.kind == "vertex":
                return "vertex", np.asarray(c.vertex_colors[:, :3], dtype=np.float64) / 255.0
            if c.kind == "face":
                return "face", np.asarray(c.face_colors[:, :3], dtype=np.float64) / 255.0
    except Exception:
        return None
    return None


def orient_mesh(mesh: trimesh.Trimesh, settings: RenderSettings) -> trimesh.Trimesh:
    """The mesh turned from its file's convention (settings.front/up) into the cameras' frame."""
    from .orientation import rotation

    if (settings.front, settings.up) == ("+z", "+y"):
        return mesh
    m = np.eye(4)
    m[:3, :3] = rotation(settings.front, settings.up)
    out = mesh.copy()
    out.apply_transform(m)
    return out


class PreparedMesh:
    """One shape ready for any number of views: oriented and normalised mesh, BVH, feature edges, colours."""

    def __init__(self, mesh: trimesh.Trimesh, settings: RenderSettings):
        from .raycast import RayScene  # local: raycast imports nothing from here, keeps import order simple

        if not isinstance(mesh, trimesh.Trimesh):
            raise TypeError(f"expected a trimesh.Trimesh, got {type(mesh).__name__}")
        self.name = mesh_name(mesh)
        mesh = orient_mesh(mesh, settings)
        self.mesh = normalize_mesh(mesh, settings.half_diagonal) if settings.normalize else mesh
        if not settings.normalize:  # still refuse what cannot be rendered
            normalize_mesh(mesh, settings.half_diagonal)
        bounds = self.mesh.vertices[np.unique(self.mesh.faces)]
        self.half_diagonal = float(np.linalg.norm(bounds.max(axis=0) - bounds.min(axis=0))) / 2.0
        self.rays = RayScene(self.mesh)
        self.colors = mesh_colors(self.mesh)
        self._edges = None

    @property
    def edges(self):
        """Feature-edge table (computed on first use; shared by all viewpoints)."""
        if self._edges is None:
            from .edges import EdgeSet

            self._edges = EdgeSet.from_mesh(self.mesh)
        return self._edges

    def depth_tolerance(self, settings: RenderSettings) -> float:
        """Occlusion slack in this mesh's units (settings are in units of a 0.56 half-diagonal)."""
        return settings.depth_tolerance * self.half_diagonal / 0.56


def prepare(mesh, settings: RenderSettings) -> PreparedMesh:
    """Accept a Trimesh or an already prepared mesh (so batch code can share the BVH)."""
    return mesh if isinstance(mesh, PreparedMesh) else PreparedMesh(mesh, settings)
