"""Writing a computed report: report.json, report.md, CSVs of every matrix, PNG figures (all atomic)."""
from __future__ import annotations

import csv
import io
import json
import math
import os
from pathlib import Path

import numpy as np

from ..fsio import atomic_write_text
from .report import HEADLINE_COLUMNS, Evaluation, headline_rows

SHREC_KEYS = ("nn", "first_tier", "second_tier", "e_measure", "dcg", "map")

def write_report(ev: Evaluation, out_dir) -> dict:
    """Write everything `run_studies` computed into `out_dir`; returns the report dict."""
    from .. import plots

    out_dir = Path(out_dir)
    os.makedirs(out_dir, exist_ok=True)
    for name, M, row_labels, col_labels, corner in ev.matrices:
        _write_matrix_csv(out_dir / name, M, row_labels, col_labels, corner)
    for name, header, rows in ev.tables:
        _write_csv(out_dir / name, [header] + [[_fmt_csv(c) if isinstance(c, float) else c for c in r] for r in rows])
    draw = {"study1": plots.study1_figure, "study2": plots.study2_figure}
    for kind, name, panels, title in ev.figures:
        if kind == "cmc":
            plots.cmc_figure(panels, str(out_dir / name), title=title)
        else:
            draw[kind](panels, str(out_dir / name), suptitle=title)
    atomic_write_text(out_dir / "report.json", json.dumps(ev.report, indent=1, allow_nan=False), fsync=False)
    atomic_write_text(out_dir / "report.md", report_markdown(ev.report), fsync=False)
    return ev.report


def _write_csv(path: Path, rows) -> None:
    buf = io.StringIO(newline="")
    csv.writer(buf).writerows(rows)
    atomic_write_text(path, buf.getvalue(), fsync=False)


def _write_matrix_csv(path: Path, M: np.ndarray, row_labels, col_labels, corner: str = "") -> None:
    _write_csv(path, [[corner] + [str(c) for c in col_labels]] +
               [[str(lab)] + [_fmt_csv(v) for v in row] for lab, row in zip(row_labels, np.asarray(M))])


def _fmt_csv(v) -> str:
    v = float(v)
    if math.isnan(v):
        return "nan"
    if math.isinf(v):
        return "inf" if v > 0 else "-inf"
    return f"{v:.8g}"


def _f(v, nd=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return str(int(v))
    try:
        v = float(v)
    except (TypeError, ValueError):
        return str(v)
    if not math.isfinite(v):
        return "-"
    return f"{v:.{nd}f}"


def _g(v, digits=4) -> str:
    """A distance with `digits` significant digits, so that untrained weights' ~1e-6 values stay readable."""
    if v is None:
        return "-"
    v = float(v)
    return f"{v:.{digits}g}" if math.isfinite(v) else "-"


def headline_table(report: dict) -> str:
    """Plain-text table with aligned columns: source, pair, N, M, acc@1, acc@5, acc@10, MRR, diag-min, view-acc."""
    rows = report.get("headline") or headline_rows(report)
    cells = [list(HEADLINE_COLUMNS)]
    for r in rows:
        cells.append([str(r["source"]), str(r["pair"])] + [_f(r[c]) for c in HEADLINE_COLUMNS[2:]])
    widths = [max(len(row[c]) for row in cells) for c in range(len(HEADLINE_COLUMNS))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[c].ljust(widths[c]) if c < 2 else row[c].rjust(widths[c]) for c in range(len(row))]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    if report.get("untrained"):
        lines.append("WARNING: numbers from untrained random weights - not the paper's.")
    return "\n".join(lines)


def _md_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] * len(header)) + "|"]
    for r in rows:
        out.append("| " + " | ".join(str(c).replace("|", "\\|") for c in r) + " |")
    return "\n".join(out)


def _fp_summary(fp: dict) -> str:
    if not fp:
        return "-"
    keys = [k for k in ("model", "layer", "weights", "dtype", "input_size") if k in fp] or list(fp)[:5]
    return ", ".join(f"{k}={fp[k]}" for k in keys)


def report_markdown(report: dict) -> str:
    L: list[str] = ["# cvret evaluation report", ""]
    untrained = [s["name"] for s in report["sources"] if s.get("untrained")]
    if untrained:
        L += [f"> **WARNING: the numbers for {', '.join(untrained)} come from UNTRAINED RANDOM WEIGHTS. "
              "They test the pipeline only and are NOT the paper's results.**", ""]
    if report.get("weights_note"):
        L += [f"> Note on weights: {report['weights_note']}", ""]
    L += [f"cvret {report['cvret_version']}, created {report['created']}, seed {report['seed']}; "
          f"Study 1 figure: {report['objects']} objects; Study 2: up to {report['study2_objects']} objects.", ""]
    for note in report.get("notes") or []:
        L += [f"> Note: {note}", ""]

    L += ["## Indexes", ""]
    rows = []
    for s in report["sources"]:
        d = s["dataset"]
        rows.append([s["name"], _fp_summary(s["fingerprint"]), d["n_shapes"], d["n_viewpoints"],
                     ", ".join(d["domains"]), ", ".join(f"{k}: {v}" for k, v in d["categories"].items()) or "-"])
    L += [_md_table(["index", "encoder", "shapes", "V", "domains", "categories"], rows), ""]

    L += ["## Headline", "", "Study 1 shape retrieval: N query shapes (views in both domains; row = query shape in "
          "the first domain) ranked against a gallery of M shapes (every shape with views in the second domain, "
          "including shapes without a query); view-acc = Study 2 view retrieval over the N query shapes.", ""]
    L += [_md_table(list(HEADLINE_COLUMNS),
                    [[r["source"], r["pair"]] + [_f(r[c]) for c in HEADLINE_COLUMNS[2:]] for r in report["headline"]]), ""]
    if len(report["sources"]) > 1:
        L += ["### Side by side", ""]
        names = [s["name"] for s in report["sources"]]
        rows = []
        for pi, (i, j) in enumerate(report["pairs"]):
            for metric, getter in (("acc@1", lambda p: p["study1"].get("acc@1")),
                                   ("acc@10", lambda p: p["study1"].get("acc@10")),
                                   ("MRR", lambda p: p["study1"].get("mrr")),
                                   ("diag-min", lambda p: p["study1"].get("diag_min_frac")),
                                   ("view-acc", lambda p: p["study2"]["view_acc"]["overall"]),
                                   ("joint acc@1", lambda p: p["joint"].get("acc@1")),
                                   ("joint viewpoint-acc", lambda p: p["joint"].get("viewpoint_acc"))):
                rows.append([f"{i}-{j}", metric] + [_f(getter(s["pairs"][pi])) for s in report["sources"]])
        L += [_md_table(["pair", "metric"] + names, rows), ""]

    comparison = report.get("per_category_comparison") or []
    if len(report["sources"]) > 1 and comparison:
        names = [s["name"] for s in report["sources"]]
        L += ["### Per category: " + " vs ".join(names), "",
              "Study 1 acc@1 / acc@5 per query category (gallery: all M shapes). "
              + ("Categories marked * were trained on; the others are zero-shot." if report.get("trained_on")
                 else "No training categories given (`cvret eval --trained-on`)."), ""]
        L += [_md_table(["category", "pair", "n"] + [f"{n} acc@1 / acc@5" for n in names],
                        [[r["category"] + (" *" if r["trained"] else ""), r["pair"], r["n"]]
                         + [f"{_f(r[n]['acc@1'])} / {_f(r[n]['acc@5'])}" for n in names] for r in comparison]), ""]

    for s in report["sources"]:
        L += [f"## {s['name']}", ""]
        if s.get("untrained"):
            L += ["> **Untrained random weights: not the paper's numbers.**", ""]
        L += ["Encoder fingerprint:", "", "```", json.dumps(s["fingerprint"], indent=1, sort_keys=True), "```", ""]
        d = s["dataset"]
        L += [_md_table(["domain", "views present", "complete shapes", "shapes missing some views",
                         "shapes without the domain"],
                        [[k, d["views_present"][k], d["shapes_complete"][k], d["shapes_missing_some_views"][k],
                          d["shapes_without_domain"][k]] for k in d["views_present"]]), ""]
        figs = s["figures"]
        L += ["### Study 1: aggregated feature similarity (seed eq. 1)", "",
              f"![Study 1]({figs['study1']})", "",
              f"Distances between {report['objects']} randomly chosen shapes (seed {report['seed']}); "
              "darker = closer (viridis: low distance dark). Grey cells: no shared viewpoint.", ""]
        rows = []
        for p in s["pairs"]:
            s1 = p["study1"]
            rows.append([p["key"], p["N"], p.get("M", p["N"]), _f(s1.get("acc@1")), _f(s1.get("acc@5")), _f(s1.get("acc@10")),
                         _f(s1.get("mean_rank"), 1), _f(s1.get("median_rank"), 1), _f(s1.get("mrr")),
                         _f(s1.get("diag_min_frac")), _f(s1.get("diag_min_frac_figure")),
                         _f(s1.get("category_acc@1")), f"[csv]({s1['csv']})"])
        L += [_md_table(["pair", "N", "M", "acc@1", "acc@5", "acc@10", "mean rank", "median rank", "MRR", "diag-min",
                         "diag-min (figure)", "category acc@1", "matrix"], rows), ""]
        L += [f"![CMC]({figs['cmc']})", ""]
        shrec_rows = [[p["key"], m["n_queries"], m["n_classes"]] + [_f(m["micro"].get(k)) for k in SHREC_KEYS]
                      for p in s["pairs"] for m in [p["study1"].get("shrec")] if m]
        if shrec_rows:
            L += ["SHREC metrics of Study 1 (relevant = a gallery shape of the query's category; micro means over "
                  "query shapes; definitions in the README):", ""]
            L += [_md_table(["pair", "queries", "classes", "NN", "FT", "ST", "E", "DCG", "mAP"], shrec_rows), ""]
        for p in s["pairs"]:
            per = p["study1"].get("per_category")
            if per:
                L += [f"Per query category, {p['key']} (gallery: all M shapes):", ""]
                L += [_md_table(["category", "n", "acc@1", "acc@5", "acc@10", "mean rank", "MRR", "category acc@1"],
                                [[c, m["n"], _f(m.get("acc@1")), _f(m.get("acc@5")), _f(m.get("acc@10")),
                                  _f(m.get("mean_rank"), 1), _f(m.get("mrr")), _f(m.get("category_acc@1"))]
                                 for c, m in per.items()]), ""]
        L += ["Missing views (shape pairs are compared on the viewpoints they share):", ""]
        mrows = []
        for p in s["pairs"]:
            mv, (i, j) = p["missing_views"], p["pair"]
            mrows.append([p["key"], mv["shapes_in_pair"], mv.get("gallery_shapes", mv["shapes_in_pair"]),
                          mv["shapes_excluded"], mv["shapes_missing_views_in_" + i],
                          mv["shapes_missing_views_in_" + j], mv["shape_pairs_on_fewer_than_V_viewpoints"],
                          mv["shape_pairs_without_shared_viewpoint"], mv["true_pairs_on_fewer_than_V_viewpoints"]])
        L += [_md_table(["pair", "N", "M", "shapes excluded (no view in the gallery domain)", "shapes missing views (first domain)",
                         "shapes missing views (second domain)", "shape pairs on < V viewpoints",
                         "shape pairs with no shared viewpoint", "true pairs on < V viewpoints"], mrows), ""]

        L += ["### Study 2: matching views across domains (seed eq. 2)", "", f"![Study 2]({figs['study2']})", "",
              "Cells: mean ± half-width of the 95% Student t-interval over objects (n per cell in brackets).", ""]
        for p in s["pairs"]:
            s2 = p["study2"]
            vn = list(s2["view_acc"]["per_viewpoint"].keys())
            L += [f"**{p['key']}** ({s2['n_objects']} objects; rows {p['pair'][0]}, columns {p['pair'][1]})", ""]
            rows = []
            for k, name in enumerate(vn):
                row = [name]
                for h in range(len(vn)):
                    m, hc, n = s2["mean"][k][h], s2["half_ci"][k][h], s2["n"][k][h]
                    cell = f"{_g(m)} ± {_g(hc, 2)} ({n})"
                    row.append(f"**{cell}**" if h == k else cell)
                ov = s2["ci_overlap"][k]
                row.append("n/a" if ov["overlaps"] is None else ("yes: " + ", ".join(ov["with"]) if ov["overlaps"] else "no"))
                row.append(_f(s2["view_acc"]["per_viewpoint"][name]))
                rows.append(row)
            L += [_md_table(["view"] + vn + ["diag CI overlaps", "view acc"], rows), ""]
            L += [f"View retrieval accuracy (view k strictly nearest to view k of the same object, over the N query shapes): "
                  f"{_f(s2['view_acc']['overall'])} (n = {s2['view_acc']['n']}, left out {s2['view_acc']['n_left_out']}).", ""]

        L += ["### Joint shape + viewpoint retrieval (beyond the seed)", "",
              "Each view of the first domain queried against all M x V views of the second (single-view distances). "
              "acc@k: a view of the true shape among the k nearest views; shape acc@k: true shape among the k nearest "
              "distinct shapes; viewpoint acc: the best-ranked view of the true shape has the query's viewpoint; "
              "exact@1: the top-1 view is the query's shape and viewpoint.", ""]
        rows = []
        for p in s["pairs"]:
            jm = p["joint"]
            rows.append([p["key"], jm.get("n_queries"), _f(jm.get("acc@1")), _f(jm.get("acc@5")), _f(jm.get("acc@10")),
                         _f(jm.get("shape_acc@1")), _f(jm.get("shape_acc@10")), _f(jm.get("mrr")),
                         _f(jm.get("viewpoint_acc")), _f(jm.get("exact_view_acc@1"))])
        L += [_md_table(["pair", "queries", "acc@1", "acc@5", "acc@10", "shape acc@1", "shape acc@10", "MRR",
                         "viewpoint acc", "exact@1"], rows), ""]

    L += ["## Method", "",
          f"- Distance: {report['distance']}.",
          "- Study 1 (eq. 1): mean of the view distances over the viewpoints both shapes have, view k against view k.",
          "- Study 2 (eq. 2): per cell (k, h), mean over objects of d(view k in domain i, view h in domain j) of the same object.",
          f"- Confidence intervals: {report['ci']['kind']}.",
          f"- Missing views: {report['missing_view_policy']}",
          f"- Ties: {report['tie_rule']}. diag-min = fraction of rows whose minimum is on the diagonal (ties allowed).",
          "- All matrices are in the CSV files next to this report; every number is in report.json.", ""]
    return "\n".join(L)
