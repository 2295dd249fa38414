"""Finding views on disk: the cvret layout, other layouts through patterns, and the view table.

A dataset is a table of views (domain, shape, viewpoint, path). The cvret layout is
`<root>/<domain>/<shape>/<viewpoint>.png` with a `dataset.json` beside it; other layouts
(AmateurSketch's `{shape}_{viewpoint}.png`, ShapeNet-style folders) are read in place through
patterns such as `'{domain}/{shape}_{viewpoint}.png'`, without copying images.
"""
from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from .errors import DatasetError
from .viewpoints import AXIS_CONVENTION, DEFAULT_VIEWPOINTS, Viewpoint, viewpoint_name

DATASET_JSON = "dataset.json"
DEFAULT_PATTERN = "{domain}/{shape}/{viewpoint}.{ext}"
IMAGE_EXTENSIONS = ("png", "jpg", "jpeg", "bmp", "webp", "tif", "tiff")
_FIELDS = ("domain", "shape", "viewpoint", "ext")


@dataclass(frozen=True)
class View:
    domain: str
    shape: str
    viewpoint: str
    path: str  # absolute path of the image


@dataclass
class Dataset:
    root: Path
    viewpoints: list[Viewpoint]
    views: list[View]
    categories: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)  # missing views, empty shape folders, ...
    source: str = ""

    @property
    def shapes(self) -> list[str]:
        return sorted({v.shape for v in self.views})

    @property
    def domains(self) -> list[str]:
        return sorted({v.domain for v in self.views})

    def summary(self) -> dict:
        return {
            "root": str(self.root),
            "shapes": len(self.shapes),
            "domains": {d: sum(v.domain == d for v in self.views) for d in self.domains},
            "viewpoints": [vp.name for vp in self.viewpoints],
            "problems": len(self.problems),
        }


def write_dataset_json(root: Path | str, viewpoints: list[Viewpoint], categories: dict[str, str] | None = None,
                       source: str = "", extra: dict | None = None, axis_convention: str | None = None) -> Path:
    """Write (or merge into) `<root>/dataset.json`: viewpoints, categories, axis convention, notes."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    path = root / DATASET_JSON
    data = {}
    if path.exists():
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = {}
    data["viewpoints"] = [vp.to_dict() for vp in viewpoints]
    data["axis_convention"] = axis_convention or AXIS_CONVENTION
    cats = dict(data.get("categories") or {})
    cats.update(categories or {})
    data["categories"] = dict(sorted(cats.items()))
    if source:
        data["source"] = source
    if extra:
        data.update(extra)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path


def read_dataset_json(root: Path) -> dict:
    path = root / DATASET_JSON
    if not path.exists():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as e:
        raise DatasetError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(data, dict):
        raise DatasetError(f"{path}: expected a JSON object")
    return data


def pattern_regex(pattern: str) -> re.Pattern:
    """Compile a `{domain}/{shape}_{viewpoint}.png` pattern into a regex over relative posix paths."""
    names = re.findall(r"{(\w+)}", pattern)
    unknown = sorted(set(names) - set(_FIELDS))
    if unknown:
        raise DatasetError(f"pattern {pattern!r}: unknown field(s) {unknown}; use {{domain}} {{shape}} {{viewpoint}}")
    if "shape" not in names or "viewpoint" not in names:
        raise DatasetError(f"pattern {pattern!r}: needs at least {{shape}} and {{viewpoint}}")
    out, pos, seen = [], 0, set()
    for m in re.finditer(r"{(\w+)}", pattern):
        out.append(re.escape(pattern[pos:m.start()]))
        name = m.group(1)
        if name in seen:
            out.append(f"(?P={name})")
        elif name == "ext":
            out.append("(?P<ext>" + "|".join(IMAGE_EXTENSIONS) + ")")
        else:
            # no field crosses a '/'; shape is greedy and the others lazy, so that
            # '{shape}_{viewpoint}' splits at the last underscore.
            out.append(f"(?P<{name}>[^/]+)" if name == "shape" else f"(?P<{name}>[^/]+?)")
        seen.add(name)
        pos = m.end()
    out.append(re.escape(pattern[pos:]))
    return re.compile("^" + "".join(out) + "$", re.IGNORECASE if "ext" in names else 0)


def discover(root: Path | str, patterns: list[str] | None = None, domains: list[str] | None = None,
             viewpoints: list[Viewpoint] | None = None, default_domain: str = "sketch") -> Dataset:
    """Build the view table of a dataset folder.

    `patterns` (default: the cvret layout) are matched against each file's path relative to root.
    A pattern without `{domain}` assigns `default_domain`. Viewpoints come from the argument, else
    dataset.json, else the names found on disk that match the defaults, else every name found.
    """
    root = Path(root)
    if not root.exists():
        raise DatasetError(f"{root}: dataset folder does not exist")
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder")
    meta = read_dataset_json(root)
    patterns = list(patterns or [DEFAULT_PATTERN])
    regexes = [(p, pattern_regex(p)) for p in patterns]

    found: dict[tuple[str, str, str], str] = {}
    problems: list[str] = []
    # absolute paths: the index stores them, and query results must work from any working directory
    top = root.absolute()
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames.sort()
        for fname in sorted(filenames):
            full = Path(dirpath) / fname
            rel = full.relative_to(top).as_posix()
            if rel == DATASET_JSON:
                continue
            for pat, rx in regexes:
                m = rx.match(rel)
                if not m:
                    continue
                g = m.groupdict()
                key = (g.get("domain") or default_domain, g["shape"], g["viewpoint"])
                if key in found and found[key] != str(full):
                    raise DatasetError(
                        f"{full}: duplicate view {key[0]}/{key[1]}/{key[2]} (also {found[key]}); "
                        "two patterns or extensions give the same shape id")
                found[key] = str(full)
                break

    if domains:
        found = {k: v for k, v in found.items() if k[0] in domains}

    if viewpoints is None and meta.get("viewpoints"):
        try:
            viewpoints = [Viewpoint.from_dict(d) for d in meta["viewpoints"]]
        except (KeyError, TypeError, ValueError) as e:
            raise DatasetError(f"{root / DATASET_JSON}: bad viewpoints entry ({e})") from None
    names_on_disk = sorted({k[2] for k in found})
    if viewpoints is None:
        defaults = {vp.name: vp for vp in DEFAULT_VIEWPOINTS}
        if names_on_disk and all(n in defaults for n in names_on_disk):
            viewpoints = [vp for vp in DEFAULT_VIEWPOINTS if vp.name in names_on_disk]
        else:
            viewpoints = [_guess_viewpoint(n) for n in names_on_disk]
    vp_names = {vp.name for vp in viewpoints}
    unknown = sorted({k[2] for k in found} - vp_names)
    for name in unknown:
        problems.append(f"viewpoint {name!r} found on disk but not declared; its views are ignored")
    found = {k: v for k, v in found.items() if k[2] in vp_names}

    views = [View(d, s, vp, p) for (d, s, vp), p in sorted(found.items())]
    if not views:
        raise DatasetError(f"{root}: no views found (patterns: {', '.join(patterns)})")

    # Report shape folders with no views and missing (shape, domain, viewpoint) combinations.
    if patterns == [DEFAULT_PATTERN]:
        with_views = {k[:2] for k in found}  # a set: one look-up per folder, not a pass over every view
        for dom_dir in sorted(p for p in root.iterdir() if p.is_dir()):
            if domains and dom_dir.name not in domains:
                continue
            for shape_dir in sorted(p for p in dom_dir.iterdir() if p.is_dir()):
                if (dom_dir.name, shape_dir.name) not in with_views:
                    problems.append(f"{shape_dir}: shape folder has no views")
    present = {(v.domain, v.shape) for v in views}
    have = set(found)
    for dom, shape in sorted(present):
        for vp in viewpoints:
            if (dom, shape, vp.name) not in have:
                problems.append(f"missing view: {dom}/{shape}/{vp.name}")

    cats = meta.get("categories") or {}
    if not isinstance(cats, dict):
        raise DatasetError(f"{root / DATASET_JSON}: 'categories' must map shape id to category")
    return Dataset(root=root, viewpoints=list(viewpoints), views=views,
                   categories={str(k): str(v) for k, v in cats.items()}, problems=problems,
                   source=str(meta.get("source", "")))


def _guess_viewpoint(name: str) -> Viewpoint:
    """A viewpoint found on disk without a declaration: take the azimuth from `az030`-like names."""
    m = re.fullmatch(r"az(\d+(?:\.\d+)?)", name)
    if m:
        az = float(m.group(1))
        if viewpoint_name(az) == name:
            return Viewpoint(name, az)
    return Viewpoint(name, float("nan"), float("nan"))
