"""Public datasets read in place, as people have them on disk: no copying, no hand-written patterns.

Two kinds of preset:
* sketch trees (`cvret index DATA --preset NAME`): amateursketch, prosketch, sketch2model,
  shrec13, shrec14 become the same `Dataset` view table that `dataset.discover` builds;
* mesh trees (`cvret render DATA --preset NAME`): shapenet-v1, shapenet-v2, shrec13, shrec14
  become (mesh file, shape id) pairs with categories and the files' orientation convention.
Files a preset does not expect are never silently dropped: the first few are listed with the
reason in the dataset's problems (and printed by the CLI), with a count of the rest.
"""
from __future__ import annotations

import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .dataset import IMAGE_EXTENSIONS, Dataset, View, read_dataset_json
from .errors import ConfigError, DatasetError
from .viewpoints import DEFAULT_ELEVATION, DEFAULT_VIEWPOINTS, Viewpoint, viewpoint_name

SKETCH_PRESETS = ("amateursketch", "prosketch", "sketch2model", "shrec13", "shrec14")
MESH_PRESETS = ("shapenet-v1", "shapenet-v2", "shrec13", "shrec14")
PRESETS = tuple(dict.fromkeys(SKETCH_PRESETS + MESH_PRESETS))
SHOWN_UNEXPECTED = 5

TREES = {
    "amateursketch": "<shapenet_id>/<view>.png or <shapenet_id>_<view>.png (any folders above), "
                     "view 0/1/2 = az000/az030/az075 unless --views says otherwise",
    "prosketch": "<shapenet_id>-<suffix>.png at the top, under prosketch/original/ or ProSketch-3Dchair/; "
                 "suffix -> viewpoint from --views (default 0/1/2 = az000/az030/az075)",
    "sketch2model": "<synset>/<shape_id>/sketch.png with view.txt beside it (first line: azimuth elevation "
                    "distance); each sketch goes to the nearest declared viewpoint, or to its own "
                    "(--viewpoints-from on cvret render)",
    "shrec13": "sketches <class>/{train,test}/<id>.png (a doubled top folder is fine); models m<id>.off "
               "with the .cla class files (PSB format)",
    "shrec14": "sketches <class>/{train,test}/<id>.png; models M<id>.off with the .cla class files",
    "shapenet-v1": "<synset>/<id>/model.obj (taxonomy.json for category names); front +X, up +Y",
    "shapenet-v2": "<synset>/<id>/models/model_normalized.obj (taxonomy.json for names); front -Z, up +Y",
}

# ShapeNetCore's most used synsets, named as the first word of taxonomy.json's names, so that
# sketch trees without a taxonomy (sketch2model) and mesh trees with one agree on categories.
SHAPENET_SYNSETS = {
    "02691156": "airplane", "02828884": "bench", "02933112": "cabinet", "02958343": "car",
    "03001627": "chair", "03211117": "display", "03636649": "lamp", "03691459": "loudspeaker",
    "04090263": "rifle", "04256520": "sofa", "04379243": "table", "04401088": "telephone",
    "04530566": "vessel",
}


# ------------------------------------------------------------------------------------ unexpected

class _Unexpected:
    """Collects files a preset does not expect; reports the first few with their reason."""

    def __init__(self, root: Path, preset: str):
        self.root, self.preset, self.items = root, preset, []

    def add(self, path: Path, reason: str) -> None:
        self.items.append((path, reason))

    def problems(self) -> list[str]:
        out = [f"{p}: unexpected for preset {self.preset} ({why})" for p, why in self.items[:SHOWN_UNEXPECTED]]
        if len(self.items) > SHOWN_UNEXPECTED:
            out.append(f"... and {len(self.items) - SHOWN_UNEXPECTED} more files unexpected for preset {self.preset}")
        return out

    def empty_error(self, what: str) -> DatasetError:
        hint = "; ".join(f"{p.relative_to(self.root)}: {why}" for p, why in self.items[:3])
        return DatasetError(f"{self.root}: no {what} found for preset {self.preset} (expected {TREES[self.preset]})"
                            + (f"; e.g. {hint}" if hint else ""))


def _walk(root: Path):
    """Every file under root (sorted, hidden files and folders skipped)."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in sorted(filenames):
            if not f.startswith("."):
                yield Path(dirpath) / f


def _is_image(p: Path) -> bool:
    return p.suffix.lower().lstrip(".") in IMAGE_EXTENSIONS


def _check_root(root) -> Path:
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    return root.absolute()  # views are stored by absolute path (results work from any working directory)


def check_preset(name: str, kind: str = "sketch") -> str:
    names = SKETCH_PRESETS if kind == "sketch" else MESH_PRESETS
    if name not in names:
        raise ConfigError(f"--preset {name!r}: not a {kind} preset; choose from {', '.join(names)}")
    return name


# --------------------------------------------------------------------------------- view mapping

def parse_view_map(text: str | None, elevation: float = DEFAULT_ELEVATION) -> dict[str, Viewpoint]:
    """'0=az000,1=az030,2=75' -> {'0': Viewpoint('az000', 0), ..., '2': Viewpoint('az075', 75)}.

    The right side is a viewpoint name with its azimuth in it (az030) or an azimuth in degrees.
    None gives the seed's mapping (0/1/2 = 0°/30°/75°)."""
    if text is None:
        return {str(i): vp for i, vp in enumerate(DEFAULT_VIEWPOINTS)}
    out = {}
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        key, sep, val = item.partition("=")
        key, val = key.strip(), val.strip()
        if not sep or not key or not val:
            raise ConfigError(f"--views {item!r}: expected VIEW=VIEWPOINT, e.g. 0=az000 or 1=30")
        m = re.fullmatch(r"az(\d+(?:\.\d+)?)", val)
        try:
            az = float(m.group(1)) if m else float(val)
        except ValueError:
            raise ConfigError(f"--views {item!r}: {val!r} is neither a name like az030 nor an azimuth") from None
        out[key] = Viewpoint(val if m else viewpoint_name(az), az, float(elevation))
    if not out:
        raise ConfigError("--views: no VIEW=VIEWPOINT pairs given")
    return out


def _mapping_text(vmap: dict[str, Viewpoint]) -> str:
    return ", ".join(f"{k}={vp.name}" for k, vp in vmap.items())


def _declared(vmap: dict[str, Viewpoint]) -> list[Viewpoint]:
    return list({vp.name: vp for vp in vmap.values()}.values())


# ------------------------------------------------------------------------------- sketch presets

def read_preset(name: str, root, *, views: str | None = None, viewpoints: list[Viewpoint] | None = None,
                domain: str = "sketch", split: str = "all", elevation: float = DEFAULT_ELEVATION) -> Dataset:
    """The view table of a sketch tree read with preset `name` (see TREES), files left in place.

    views: the view-token -> viewpoint mapping (amateursketch, prosketch); viewpoints: the gallery's
    viewpoints that sketch2model sketches are snapped to (default the seed's three); split:
    'train', 'test' or 'all' (shrec13/14)."""
    check_preset(name, "sketch")
    root = _check_root(root)
    unexpected = _Unexpected(root, name)
    if name == "amateursketch":
        vmap = parse_view_map(views, elevation)
        found = _amateursketch(root, vmap, unexpected)
        vps, cats = _declared(vmap), {}
    elif name == "prosketch":
        vmap = parse_view_map(views, elevation)
        found = _prosketch(root, vmap, unexpected)
        vps, cats = _declared(vmap), {}
    elif name == "sketch2model":
        found, vps, cats = _sketch2model(root, viewpoints, unexpected)
    else:
        if split not in ("train", "test", "all"):
            raise ConfigError(f"--split {split!r}: choose train, test or all")
        found, cats = _shrec_sketches(root, split, unexpected)
        vps = [FREE_VIEWPOINT]
    if not found:
        raise unexpected.empty_error("sketches")
    view_list = [View(domain, s, vp, str(p)) for (s, vp), p in sorted(found.items())]
    problems = unexpected.problems()
    names = {vp.name for vp in vps}
    have = set(found)
    if name in ("amateursketch", "prosketch"):
        for shape in sorted({s for s, _ in found}):
            problems += [f"missing view: {domain}/{shape}/{vp}" for vp in sorted(names) if (shape, vp) not in have]
    meta = read_dataset_json(root)
    cats = {**{str(k): str(v) for k, v in (meta.get("categories") or {}).items()}, **cats}
    return Dataset(root=root, viewpoints=vps, views=view_list, categories=cats, problems=problems,
                   source=f"{root} read in place with preset {name}")


def _add(found: dict, key: tuple, path: Path) -> None:
    if key in found and found[key] != path:
        raise DatasetError(f"{path}: duplicate view {key[0]}/{key[1]} (also {found[key]})")
    found[key] = path


def _amateursketch(root: Path, vmap, unexpected) -> dict:
    found = {}
    for p in _walk(root):
        if p.name == "dataset.json":
            continue
        if not _is_image(p):
            unexpected.add(p, "not an image")
            continue
        stem = p.stem
        if stem in vmap and p.parent != root:            # <shape>/<view>.png
            _add(found, (p.parent.name, vmap[stem].name), p)
            continue
        shape, sep, view = stem.rpartition("_")
        if sep and shape and view in vmap:                # <shape>_<view>.png
            _add(found, (shape, vmap[view].name), p)
        elif sep and shape:
            unexpected.add(p, f"view {view!r} is not in the --views mapping ({_mapping_text(vmap)})")
        else:
            unexpected.add(p, "name is neither <shape>/<view>.png nor <shape>_<view>.png")
    return found


PROSKETCH_DIRS = ("", "prosketch/original", "ProSketch-3Dchair")


def _prosketch(root: Path, vmap, unexpected) -> dict:
    found = {}
    allowed = {d.lower() for d in PROSKETCH_DIRS}
    for p in _walk(root):
        if p.name == "dataset.json":
            continue
        rel_dir = p.parent.relative_to(root).as_posix()
        rel_dir = "" if rel_dir == "." else rel_dir
        if not _is_image(p):
            unexpected.add(p, "not an image")
            continue
        if rel_dir.lower() not in allowed:
            unexpected.add(p, "not in a ProSketch folder (the top, prosketch/original/ or ProSketch-3Dchair/)")
            continue
        shape, sep, suffix = p.stem.rpartition("-")
        if not sep or not shape:
            unexpected.add(p, "name is not <shapenet_id>-<suffix>.png")
        elif suffix not in vmap:
            unexpected.add(p, f"suffix {suffix!r} is not in the --views mapping ({_mapping_text(vmap)})")
        else:
            _add(found, (shape, vmap[suffix].name), p)
    return found


FREE_VIEWPOINT = Viewpoint("free", float("nan"), float("nan"))  # a sketch drawn from no known camera


def sketch2model_viewpoints(root) -> dict[str, Viewpoint]:
    """{shape id: the sketch's own viewpoint} from every `<synset>/<shape>/view.txt` under root."""
    root = _check_root(root)
    out, bad = {}, _Unexpected(root, "sketch2model")
    for p in _walk(root):
        if p.name == "view.txt":
            vp = _read_view_txt(p, bad)
            if vp is not None:
                out[p.parent.name] = vp
    if not out:
        raise bad.empty_error("view.txt files")
    return out


def own_viewpoint_name(azimuth: float, elevation: float) -> str:
    """'az030_el020' (decimals kept to 0.1 degree): a sketch's own camera as a viewpoint name."""
    def part(x):
        x = round(float(x), 1)
        return f"{int(x) % 360:03d}" if float(x).is_integer() else f"{x % 360:05.1f}"
    el = round(float(elevation), 1)
    el_txt = f"{int(el):03d}" if el.is_integer() else f"{el:05.1f}"
    return f"az{part(azimuth)}_el{el_txt}"


def _read_view_txt(path: Path, unexpected) -> Viewpoint | None:
    try:
        first = path.read_text(encoding="utf-8", errors="replace").splitlines()[0]
        az, el = (float(x) for x in re.split(r"[\s,]+", first.strip())[:2])
        if not (math.isfinite(az) and math.isfinite(el)):
            raise ValueError
    except (OSError, IndexError, ValueError):
        unexpected.add(path, "first line is not 'azimuth elevation distance'")
        return None
    return Viewpoint(own_viewpoint_name(az, el), az % 360.0, el)


def _angle(a: Viewpoint, b: Viewpoint) -> float:
    """Angle in degrees between two camera directions (azimuth, elevation)."""
    def unit(v):
        az, el = math.radians(v.azimuth), math.radians(v.elevation)
        return (math.cos(el) * math.sin(az), math.sin(el), math.cos(el) * math.cos(az))
    dot = sum(x * y for x, y in zip(unit(a), unit(b)))
    return math.degrees(math.acos(max(-1.0, min(1.0, dot))))


def _sketch2model(root: Path, viewpoints, unexpected):
    """viewpoints None: snap to the seed's three; 'own': each sketch keeps its own viewpoint."""
    own = viewpoints == "own"
    gallery = None if own else list(viewpoints or DEFAULT_VIEWPOINTS)
    found, cats, used = {}, {}, {}
    for p in _walk(root):
        if p.name in ("view.txt", "dataset.json"):
            continue
        rel = p.relative_to(root).parts
        if p.name != "sketch.png" or len(rel) < 3:
            unexpected.add(p, "not <synset>/<shape_id>/sketch.png")
            continue
        synset, shape = rel[-3], rel[-2]
        vt = p.parent / "view.txt"
        if not vt.is_file():
            unexpected.add(p, "no view.txt beside it")
            continue
        vp = _read_view_txt(vt, unexpected)
        if vp is None:
            continue
        if not own:
            vp = min(gallery, key=lambda g: _angle(vp, g))
        used[vp.name] = vp
        _add(found, (shape, vp.name), p)
        cats[shape] = SHAPENET_SYNSETS.get(synset, synset)
    vps = list(used.values()) if own else gallery
    return found, sorted(vps, key=lambda v: (v.azimuth, v.elevation)) if own else vps, cats


def _shrec_sketches(root: Path, split: str, unexpected):
    found, cats = {}, {}
    for p in _walk(root):
        if p.name == "dataset.json" or p.suffix.lower() in (".cla", ".off", ".txt"):
            continue
        rel = p.relative_to(root).parts
        if not _is_image(p):
            unexpected.add(p, "not an image")
            continue
        if len(rel) < 3 or rel[-2].lower() not in ("train", "test"):
            unexpected.add(p, "not <class>/{train,test}/<id>.png")
            continue
        cls, part = rel[-3], rel[-2].lower()
        if split != "all" and part != split:
            continue
        sid = f"{cls}_{part}_{p.stem}"
        _add(found, (sid, FREE_VIEWPOINT.name), p)
        cats[sid] = cls
    return found, cats


# --------------------------------------------------------------------------------- mesh presets

@dataclass
class MeshTree:
    """Mesh files of a preset tree: (path, shape id) pairs, categories and the files' convention."""
    root: Path
    files: list[tuple[Path, str]]
    categories: dict[str, str]
    convention: str
    problems: list[str] = field(default_factory=list)


def read_mesh_preset(name: str, root) -> MeshTree:
    check_preset(name, "mesh")
    root = _check_root(root)
    unexpected = _Unexpected(root, name)
    if name.startswith("shapenet"):
        files, cats = _shapenet(root, name, unexpected)
        convention = name
    else:
        files, cats = _shrec_models(root, name, unexpected)
        convention = "shapenet-v2"  # PSB/SHREC models: +Y up; their front is not standardised
    if not files:
        raise unexpected.empty_error("mesh files")
    return MeshTree(root, files, cats, convention, unexpected.problems())


def _taxonomy(root: Path) -> dict[str, str]:
    """synset id -> first name in taxonomy.json (ShapeNet's), when the file is there."""
    for p in (root / "taxonomy.json", root.parent / "taxonomy.json"):
        if p.is_file():
            try:
                data = json.loads(p.read_text(encoding="utf-8"))
                return {str(d["synsetId"]): str(d["name"]).split(",")[0].strip() for d in data}
            except (OSError, ValueError, KeyError, TypeError) as e:
                raise DatasetError(f"{p}: not a ShapeNet taxonomy.json ({type(e).__name__}: {e})") from None
    return {}


_MESH_COMPANIONS = {".mtl", ".json", ".jpg", ".jpeg", ".png", ".bmp", ".tga", ".gif", ".binvox", ".solid",
                    ".surface", ".txt", ".csv"}


def _shapenet(root: Path, name: str, unexpected):
    names = {**SHAPENET_SYNSETS, **_taxonomy(root)}
    want = ("model.obj",) if name == "shapenet-v1" else ("models", "model_normalized.obj")
    files, cats, seen = [], {}, {}
    for p in _walk(root):
        rel = p.relative_to(root).parts
        if len(rel) >= 1 + len(want) and tuple(rel[-len(want):]) == want:
            # <synset>/<id>/..., or a synset folder given as the root: <id>/...
            synset = rel[-len(want) - 2] if len(rel) >= 2 + len(want) else root.name
            sid = rel[-len(want) - 1]
            if sid in seen:
                raise DatasetError(f"{p}: shape id {sid} appears twice (also {seen[sid]})")
            seen[sid] = p
            files.append((p, sid))
            cats[sid] = names.get(synset, synset)
        elif p.suffix.lower() in (".obj", ".off", ".ply", ".stl", ".glb", ".gltf"):
            other = "model.obj" if name == "shapenet-v2" else "models/model_normalized.obj"
            why = (f"a {'ShapeNet v1' if name == 'shapenet-v2' else 'ShapeNet v2'} file? this preset reads "
                   f"<synset>/<id>/{'/'.join(want)}" if p.name == other.split("/")[-1]
                   else f"not <synset>/<id>/{'/'.join(want)}")
            unexpected.add(p, why)
        elif p.suffix.lower() not in _MESH_COMPANIONS and p.name != "taxonomy.json":
            unexpected.add(p, "not a mesh or a mesh's companion file")
    return files, cats


def parse_cla(path) -> dict[str, str]:
    """A PSB/SHREC .cla file -> {item id: class}. Format: 'PSB 1', '<nClasses> <nItems>', then per
    class '<class> <parent> <n>' followed by n ids. Raises DatasetError naming the file and line."""
    path = Path(path)
    try:
        lines = [ln.strip() for ln in path.read_text(encoding="utf-8", errors="replace").splitlines()]
    except OSError as e:
        raise DatasetError(f"{path}: cannot read ({e.strerror or e})") from None
    toks = [(i + 1, ln) for i, ln in enumerate(lines) if ln]
    if not toks or toks[0][1].split()[:1] != ["PSB"]:
        raise DatasetError(f"{path}: not a .cla file (first line should be 'PSB 1')")
    try:
        n_classes, n_items = (int(x) for x in toks[1][1].split()[:2])
    except (IndexError, ValueError):
        raise DatasetError(f"{path}: line {toks[1][0] if len(toks) > 1 else 2}: expected "
                           "'<nClasses> <nItems>'") from None
    out, pos = {}, 2
    for _ in range(n_classes):
        if pos >= len(toks):
            raise DatasetError(f"{path}: ends after {len(out)} items; the header promised {n_classes} classes")
        lineno, text = toks[pos]
        parts = text.split()
        try:
            cls, n = parts[0], int(parts[2])
        except (IndexError, ValueError):
            raise DatasetError(f"{path}: line {lineno}: expected '<class> <parent> <count>', got {text!r}") from None
        ids = [t[1] for t in toks[pos + 1:pos + 1 + n]]
        if len(ids) < n:
            raise DatasetError(f"{path}: class {cls} promises {n} items, the file ends after {len(ids)}")
        for item in ids:
            out[item.split()[0]] = cls
        pos += 1 + n
    if len(out) != n_items:
        raise DatasetError(f"{path}: header says {n_items} items, the classes list {len(out)}")
    return out


def _shrec_models(root: Path, name: str, unexpected):
    prefix = "m" if name == "shrec13" else "M"
    models, clas = {}, []
    for p in _walk(root):
        if p.suffix.lower() == ".cla":
            clas.append(p)
            continue
        if p.suffix.lower() == ".off":
            m = re.fullmatch(r"([mM])(\d+)", p.stem)
            if m and m.group(1) == prefix:
                if m.group(2) in models:
                    raise DatasetError(f"{p}: model {p.stem} appears twice (also {models[m.group(2)]})")
                models[m.group(2)] = p
            else:
                unexpected.add(p, f"not {prefix}<id>.off")
        elif not (_is_image(p) or p.suffix.lower() == ".txt" or p.name == "dataset.json"):
            unexpected.add(p, "not a model, an image or a .cla file")
    # the model classification is the .cla file whose ids are the models' ids
    best, best_hits = {}, 0
    for c in clas:
        table = parse_cla(c)
        hits = sum(1 for i in table if i in models)
        if hits > best_hits:
            best, best_hits = table, hits
    files = [(p, f"{prefix}{i}") for i, p in sorted(models.items(), key=lambda kv: int(kv[0]))]
    cats = {f"{prefix}{i}": best[i] for i in models if i in best}
    for i, p in sorted(models.items()):
        if models and clas and i not in best:
            unexpected.add(p, "model not listed in the model .cla file (no category)")
    if models and not clas:
        unexpected.add(root, "no .cla class file: models get no category")
    return files, cats
