"""The report as data: run every study on every source and pair, and collect the numbers.

`run_studies` returns an `Evaluation` (the JSON-ready report plus the matrices, tables and
figure panels to write); `evaluate` adds the writing (`writers.write_report`) when given a folder.
"""
from __future__ import annotations

from collections.abc import Sequence

import datetime as _dt
import math
import re
from dataclasses import dataclass, field

import numpy as np

from ..errors import StudyError
from ..fingerprint import Fingerprint
from ..viewpoints import Viewpoint
from .common import (CI_KIND, CI_LEVEL, DEFAULT_MEMORY_MB, DEFAULT_PAIRS, MISSING_VIEW_POLICY, TIE_RULE, _check_domain,
                     _check_viewpoints, _log, _src_label)
from .metrics import (category_metrics, ci_overlaps, joint_metrics, retrieval_metrics, true_ranks,
                      view_distance_stats, view_retrieval)
from .passes import pair_pass, present_masks

def _slug(text: str) -> str:
    s = re.sub(r"[^A-Za-z0-9._-]+", "_", str(text)).strip("._")
    return s or "index"


def _jsonable(x):
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, np.ndarray):
        return _jsonable(x.tolist())
    if isinstance(x, (np.bool_, bool)):
        return bool(x)
    if isinstance(x, (np.integer,)):
        return int(x)
    if isinstance(x, (float, np.floating)):
        v = float(x)
        return v if math.isfinite(v) else None
    if isinstance(x, Viewpoint):
        return x.to_dict()
    return x


def _fingerprint(src) -> Fingerprint:
    return Fingerprint.from_dict(getattr(src, "fingerprint", {}) or {})


def _vp_names(src) -> list[str]:
    out = []
    for i, vp in enumerate(src.viewpoints):
        out.append(str(getattr(vp, "name", vp)) if vp is not None else f"v{i}")
    return out


def _pair_key(i: str, j: str) -> str:
    return f"{i}-{j}"


def evaluate(sources, out_dir=None, pairs=DEFAULT_PAIRS, objects: int = 10, seed: int = 0,
             study2_objects: int = 100, progress: bool = True, cvret_version: str | None = None,
             weights_note: str | None = None, *, memory_mb: float = DEFAULT_MEMORY_MB, device: str = "cpu",
             trained_on: Sequence[str] = ()) -> dict:
    """Study 1, Study 2 and joint retrieval for every source and domain pair: the report dict.

    The numbers come from `run_studies` (no files); with `out_dir` the report is also written there
    by `write_report` (report.json, report.md, CSVs of every matrix, PNG figures). The dict is the
    content of report.json (+/-inf and NaN as None). `device` runs the matrix products (see `gemm`).
    `trained_on`: categories a fine-tuned encoder was trained on, marked in the per-category comparison.
    """
    ev = run_studies(sources, pairs=pairs, objects=objects, seed=seed, study2_objects=study2_objects,
                     progress=progress, cvret_version=cvret_version, weights_note=weights_note,
                     memory_mb=memory_mb, device=device, trained_on=trained_on)
    if out_dir is not None:
        from .writers import write_report

        write_report(ev, out_dir)
    return ev.report


@dataclass
class Evaluation:
    """What the studies produce: the report (JSON-ready numbers) and the tables and figures to write.

    `matrices`: (file, matrix, row labels, column labels, corner) per CSV matrix; `tables`: (file,
    header, rows) per plain CSV; `figures`: (kind, file, panels, title) with kind study1/study2/cmc.
    """
    report: dict
    matrices: list = field(default_factory=list)
    tables: list = field(default_factory=list)
    figures: list = field(default_factory=list)


def run_studies(sources, pairs=DEFAULT_PAIRS, objects: int = 10, seed: int = 0, study2_objects: int = 100,
                progress: bool = True, cvret_version: str | None = None, weights_note: str | None = None,
                *, memory_mb: float = DEFAULT_MEMORY_MB, device: str = "cpu",
                trained_on: Sequence[str] = ()) -> Evaluation:
    """Compute every number of the report; nothing is written (see `write_report`)."""
    if cvret_version is None:
        from .. import __version__ as cvret_version

    if isinstance(sources, (str, bytes)) or not isinstance(sources, (list, tuple)):
        sources = [sources]
    if not sources:
        raise StudyError("no index given to evaluate")
    pairs = [tuple(p) for p in pairs]
    if not pairs:
        raise StudyError("no domain pairs given to evaluate")
    for p in pairs:
        if len(p) != 2:
            raise StudyError(f"a domain pair must have two domains, got {p!r}")
    if int(objects) < 1:
        raise StudyError(f"objects must be at least 1, got {objects}")
    if int(study2_objects) < 1:
        raise StudyError(f"study2_objects must be at least 1, got {study2_objects}")
    objects, study2_objects = int(objects), int(study2_objects)
    for src in sources:
        _check_viewpoints(src)
    # pairs an index cannot run (a domain it lacks, e.g. no sketches yet) are skipped and said so
    notes: list[str] = []
    skipped = []
    for i, j in pairs:
        lacking = [(_src_label(src), d) for src in sources for d in (i, j) if d not in list(getattr(src, "domains", []))]
        if lacking:
            why = "; ".join(f"index '{name}' has no '{d}' views" for name, d in dict.fromkeys(lacking))
            skipped.append({"pair": _pair_key(i, j), "reason": why})
            notes.append(f"skipped {_pair_key(i, j)}: {why}")
    pairs = [p for p in pairs if _pair_key(*p) not in {s["pair"] for s in skipped}]
    if not pairs:
        have = "; ".join(f"index '{_src_label(src)}' has: {', '.join(getattr(src, 'domains', [])) or 'none'}"
                         for src in sources)
        raise StudyError(f"no domain pair can be evaluated ({'; '.join(s['reason'] for s in skipped)}; {have})")

    # presence masks, the query shapes (views in both domains) and the gallery (views in the gallery
    # domain) of every pair, for every source, before any heavy work
    domains_needed = sorted({d for p in pairs for d in p})
    prepared = []
    asked_objects = objects
    for src in sources:
        label = _src_label(src)
        masks = {d: present_masks(src, d, memory_mb=memory_mb) for d in domains_needed}
        pair_sets = {}
        for i, j in pairs:
            sel = np.flatnonzero(masks[i].any(axis=1) & masks[j].any(axis=1))
            gallery = np.flatnonzero(masks[j].any(axis=1))
            if len(sel) < 2:
                raise StudyError(f"index '{label}': only {len(sel)} shape(s) have both '{i}' and '{j}' views; "
                                 f"the studies need at least 2")
            if objects > len(sel):
                objects = len(sel)
            pair_sets[(i, j)] = (sel, gallery)
        prepared.append((masks, pair_sets))
    if objects < asked_objects:
        notes.append(f"--objects {asked_objects} is more than the {objects} shapes with views in both domains of "
                     f"every pair; the figures show {objects}")

    ev = Evaluation(report={})
    used_slugs: set[str] = set()
    report_sources = []

    for src, (masks, pair_sets) in zip(sources, prepared):
        label = _src_label(src)
        slug = _slug(label)
        base, n_dup = slug, 2
        while slug in used_slugs:
            slug, n_dup = f"{base}_{n_dup}", n_dup + 1
        used_slugs.add(slug)
        V = len(src.viewpoints)
        vnames = _vp_names(src)
        shapes = [str(s) for s in src.shapes]
        cats_map = dict(getattr(src, "categories", {}) or {})
        # the figure's shapes: same shapes in every panel when possible (seeded)
        rng = np.random.default_rng(seed)
        common = pair_sets[pairs[0]][0]
        for p in pairs[1:]:
            common = np.intersect1d(common, pair_sets[p][0])
        fig_common = np.sort(rng.choice(common, size=objects, replace=False)) if len(common) >= objects else None

        dataset = {
            "n_shapes": len(shapes),
            "n_viewpoints": V,
            "viewpoints": [vp.to_dict() if hasattr(vp, "to_dict") else str(vp) for vp in src.viewpoints],
            "domains": list(src.domains),
            "views_present": {d: int(m.sum()) for d, m in masks.items()},
            "shapes_complete": {d: int(m.all(axis=1).sum()) for d, m in masks.items()},
            "shapes_missing_some_views": {d: int((m.any(axis=1) & ~m.all(axis=1)).sum()) for d, m in masks.items()},
            "shapes_without_domain": {d: int((~m.any(axis=1)).sum()) for d, m in masks.items()},
            "categories": {},
        }
        if cats_map:
            cc: dict[str, int] = {}
            for s in shapes:
                c = str(cats_map.get(s, "unknown"))
                cc[c] = cc.get(c, 0) + 1
            dataset["categories"] = dict(sorted(cc.items()))

        pair_reports = []
        fig1_panels, fig2_panels, cmc_curves = [], [], []
        for i, j in pairs:
            key = _pair_key(i, j)
            sel, gallery = pair_sets[(i, j)]
            N = len(sel)
            ids = [shapes[s] for s in sel]
            _log(progress, f"{label}: {key}, N={N} queries, M={len(gallery)} gallery shapes, V={V}")
            pp = pair_pass(src, i, j, sel, gallery_idx=gallery, memory_mb=memory_mb, progress=progress, device=device)
            S = pp.S
            M = S.shape[1]
            gallery_ids = [shapes[s] for s in pp.gallery]

            # ---- Study 1
            s1 = retrieval_metrics(S)
            ranks = true_ranks(S)
            nearest = np.argmin(np.where(np.isnan(S), np.inf, S), axis=1)
            if cats_map:
                cats = [str(cats_map.get(s, "unknown")) for s in ids]
                gallery_cats = [str(cats_map.get(s, "unknown")) for s in gallery_ids]
                s1.update(category_metrics(S, cats, gallery_cats=gallery_cats))
                s1["shrec"] = shrec_metrics(S, cats, gallery_cats)
            else:
                cats = None
            if fig_common is not None:
                fsel = np.searchsorted(sel, fig_common)
            else:
                fsel = np.sort(np.random.default_rng(seed).choice(N, size=objects, replace=False))
            Sf = S[np.ix_(fsel, fsel)]
            fig_ids = [ids[s] for s in fsel]
            s1["figure_shapes"] = fig_ids
            s1["figure_matrix"] = Sf
            s1["diag_min_frac_figure"] = float(np.mean(np.diag(Sf) <= Sf.min(axis=1)))
            s1["acc@1_figure"] = float(np.mean(true_ranks(Sf) <= 1))
            csv1 = f"study1_{slug}_{key}.csv"
            ev.matrices.append((csv1, S, ids, gallery_ids, f"{i}\\{j}"))
            csvr = f"study1_{slug}_{key}_ranks.csv"
            ev.tables.append((csvr, ["shape", "category", "rank_of_true_shape", "nearest_shape", "distance_to_true",
                                     "distance_to_nearest", "shared_viewpoints_with_self"],
                              [[ids[a], cats[a] if cats else "", int(ranks[a]), gallery_ids[int(nearest[a])],
                                S[a, a], S[a, nearest[a]], int(pp.shared[a, a])] for a in range(N)]))
            s1["csv"] = csv1
            s1["ranks_csv"] = csvr
            missing = {
                "shapes_in_pair": N,
                "gallery_shapes": M,
                "shapes_excluded": int(len(shapes) - M),
                "gallery_shapes_without_query": int(M - N),
                "shapes_missing_views_in_" + i: int((~pp.mask_i.all(axis=1)).sum()),
                "shapes_missing_views_in_" + j: int((~pp.mask_j.all(axis=1)).sum()),
                "shape_pairs_on_fewer_than_V_viewpoints": int((pp.shared < V).sum()),
                "shape_pairs_without_shared_viewpoint": int((pp.shared == 0).sum()),
                "true_pairs_on_fewer_than_V_viewpoints": int((np.diag(pp.shared) < V).sum()),
            }

            # ---- Study 2 (seeded subset of objects)
            n2 = min(study2_objects, N)
            sub = np.sort(np.random.default_rng(seed).choice(N, size=n2, replace=False))
            st = view_distance_stats(pp.per_object[sub])
            left_out = (n2 - st["n"]).astype(np.int64)
            vr_all = view_retrieval(pp.per_object)
            vr_sub = view_retrieval(pp.per_object[sub])
            overl = ci_overlaps(st["ci_low"], st["ci_high"])
            for o in overl:
                o["viewpoint"] = vnames[o["row"]]
                o["with"] = [vnames[h] for h in o["with"]]
            csv2 = {}
            for name in ("mean", "ci_low", "ci_high", "std", "n"):
                fn = f"study2_{slug}_{key}_{name}.csv"
                ev.matrices.append((fn, st[name], vnames, vnames, f"{i}\\{j}"))
                csv2[name] = fn
            s2 = {
                "n_objects": n2,
                "objects": [ids[s] for s in sub],
                "mean": st["mean"], "std": st["std"], "ci_low": st["ci_low"], "ci_high": st["ci_high"],
                "half_ci": st["half"], "n": st["n"], "left_out": left_out,
                "diag_is_row_min": [bool(np.nanargmin(np.where(np.isnan(st["mean"][k]), np.inf, st["mean"][k])) == k)
                                    if np.isfinite(st["mean"][k]).any() else None for k in range(V)],
                "ci_overlap": overl,
                "view_acc": {"over": "all N shapes of the pair", "overall": vr_all["overall"],
                             "per_viewpoint": dict(zip(vnames, vr_all["per_viewpoint"])),
                             "n": vr_all["n"], "n_left_out": vr_all["n_left_out"]},
                "view_acc_study2_objects": {"overall": vr_sub["overall"],
                                            "per_viewpoint": dict(zip(vnames, vr_sub["per_viewpoint"])),
                                            "n": vr_sub["n"]},
                "csv": csv2,
            }

            # ---- joint retrieval
            jm = joint_metrics(pp, viewpoint_names=vnames)

            pair_reports.append({"pair": [i, j], "key": key, "N": N, "M": M, "V": V, "missing_views": missing,
                                 "study1": s1, "study2": s2, "joint": jm})
            fig1_panels.append((f"{i} (rows) vs {j} (columns)", Sf, fig_ids, fig_ids))
            fig2_panels.append((f"{i} (rows) vs {j} (columns)", st["mean"], st["half"], vnames, vnames))
            cmc_curves.append((key, ranks, M))

        f1 = f"fig1_study1_{slug}.png"
        ev.figures.append(("study1", f1, fig1_panels, f"Study 1 - {label} ({_fingerprint(src).label})"))
        f2 = f"fig2_study2_{slug}.png"
        ev.figures.append(("study2", f2, fig2_panels, f"Study 2 - {label} ({_fingerprint(src).label})"))
        f3 = f"cmc_{slug}.png"
        ev.figures.append(("cmc", f3, cmc_curves, f"Study 1 shape retrieval (CMC) - {label}"))
        figs = {"study1": f1, "study2": f2, "cmc": f3}
        fp = dict(getattr(src, "fingerprint", {}) or {})
        report_sources.append({"name": label, "slug": slug, "fingerprint": fp, "untrained": _fingerprint(src).is_untrained,
                               "dataset": dataset, "pairs": pair_reports, "figures": figs})

    report = {
        "cvret_version": cvret_version,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "seed": int(seed),
        "objects": objects,
        "study2_objects": study2_objects,
        "pairs": [list(p) for p in pairs],
        "skipped_pairs": skipped,
        "notes": notes,
        "sizes": "N: query shapes (views in both domains of the pair); M: gallery shapes (views in the gallery "
                 "domain), ranked for every query; shapes without a query stay in the gallery as distractors",
        "distance": "d(x, y) = mean over feature elements of (x - y)^2 = ||x - y||^2 / D",
        "ci": {"kind": CI_KIND, "level": CI_LEVEL},
        "missing_view_policy": MISSING_VIEW_POLICY,
        "tie_rule": TIE_RULE,
        "weights_note": weights_note,
        "untrained": any(s["untrained"] for s in report_sources),
        "sources": report_sources,
        "trained_on": sorted(str(c) for c in trained_on),
    }
    report["headline"] = headline_rows(report)
    report["per_category_comparison"] = per_category_comparison(report)
    ev.report = _jsonable(report)
    return ev


def shrec_metrics(S: np.ndarray, cats, gallery_cats) -> dict:
    """The SHREC sketch tracks' category metrics (NN, FT, ST, E, DCG, mAP: `retrieval/shrec.py`) of a
    Study 1 matrix, next to acc@k: a gallery shape is relevant when it has the query shape's category."""
    from ..shrec import query_metrics, ranked_relevance, summarize

    rel, n_rel = ranked_relevance(np.where(np.isnan(S), np.inf, S), cats, gallery_cats)
    summ = summarize(query_metrics(rel, n_rel), cats)
    return {"relevance": "category", "n_queries": summ["n_queries"], "n_classes": summ["n_classes"],
            "micro": summ["micro"], "macro": summ["macro"]}


HEADLINE_COLUMNS = ("source", "pair", "N", "M", "acc@1", "acc@5", "acc@10", "MRR", "diag-min", "view-acc")


def headline_rows(report: dict) -> list[dict]:
    rows = []
    for s in report["sources"]:
        for p in s["pairs"]:
            s1, s2 = p["study1"], p["study2"]
            rows.append({"source": s["name"], "pair": p["key"], "N": p["N"], "M": p.get("M", p["N"]),
                         "acc@1": s1.get("acc@1"), "acc@5": s1.get("acc@5"), "acc@10": s1.get("acc@10"),
                         "MRR": s1.get("mrr"), "diag-min": s1.get("diag_min_frac"),
                         "view-acc": s2["view_acc"]["overall"]})
    return rows


def per_category_comparison(report: dict) -> list[dict]:
    """Per category and sketch-query pair, acc@1 / acc@5 of every index: zero-shot transfer in one table.

    Rows for pairs whose query domain is `sketch` (all pairs when none is); `trained` marks the
    categories a fine-tuned encoder saw, so held-out categories read as zero-shot results.
    """
    trained = set(report.get("trained_on") or ())
    keys = [_pair_key(*p) for p in report["pairs"]]
    keys = [k for k, p in zip(keys, report["pairs"]) if p[0] == "sketch"] or keys
    rows = []
    for key in keys:
        per_src = {}
        for s in report["sources"]:
            p = next((p for p in s["pairs"] if p["key"] == key), None)
            per_src[s["name"]] = (p or {}).get("study1", {}).get("per_category") or {}
        cats = sorted({c for per in per_src.values() for c in per})
        for c in cats:
            row = {"category": c, "trained": c in trained, "pair": key,
                   "n": next((per[c]["n"] for per in per_src.values() if c in per), None)}
            for name, per in per_src.items():
                row[name] = {k: per.get(c, {}).get(k) for k in ("acc@1", "acc@5")}
            rows.append(row)
    return rows
