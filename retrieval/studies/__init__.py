"""Study 1 and Study 2 of the seed paper as computations, plus retrieval metrics and the report.

Definitions (the seed's, exactly; see ARCHITECTURE.md):

* view distance ``d(x, y) = mean over the feature's elements of (x - y)**2 = ||x - y||**2 / D``.
* Study 1 (seed eq. 1): for domains i, j the N x N matrix ``S[a, b]`` = mean over the viewpoints k
  that shape a has in domain i *and* shape b has in domain j of ``d(A_k^i, B_k^j)``. A pair that
  shares no viewpoint gets ``+inf``.
* Study 2 (seed eq. 2): the V x V matrix ``M[k, h]`` = mean over objects of ``d(A_k^i, A_h^j)``
  (same object, view k in domain i against view h in domain j). Objects lacking view k in i or
  view h in j are left out of that cell (the cell's ``n`` says how many objects it averages).

Everything is computed with blocked matrix products: ``||a||^2 + ||b||^2 - 2 a.b`` with float32
products and float64 norms / accumulation, clamped at 0. Features are centred on one common vector
(the mean of the first loaded block) before the products; distances do not change under a common
translation, but the float32 cancellation error (large for non-negative ReLU activations) shrinks.

Features are read through the :class:`FeatureSource` protocol in blocks of shapes sized from a
memory budget (``memory_mb``), so thousands of shapes with D = 200,704 stay bounded in memory.

Rank conventions (ties are counted pessimistically everywhere):

* rank of the true shape (1-based) = number of gallery shapes whose distance is ``<=`` the true
  shape's distance (the true shape included). So a tie with a wrong shape costs a rank.
* ``diag_min_frac`` (the seed's statement "the same object has the lowest distance"): fraction of
  rows whose minimum value is attained on the diagonal (ties with the minimum allowed - this is the
  only optimistic number; ``acc@1`` is its pessimistic counterpart).

The package follows those steps: `passes` (blocked feature passes, arrays out), `metrics` (pure
array functions), `report` (the report as data) and `writers` (markdown, CSV, figures).
"""
from __future__ import annotations

from .common import (CI_KIND, CI_LEVEL, DEFAULT_MEMORY_MB, DEFAULT_PAIRS, KS, MISSING_VIEW_POLICY, TIE_RULE,
                     FeatureSource)
from .metrics import (category_metrics, ci_overlaps, joint_metrics, retrieval_metrics, t_interval, true_ranks,
                      view_distance_stats, view_retrieval)
from .passes import PairPass, pair_pass, present_masks, shape_distance_matrix, view_distance_matrix
from .report import Evaluation, evaluate, headline_rows, per_category_comparison, run_studies
from .writers import headline_table, report_markdown, write_report

__all__ = [
    "CI_KIND", "CI_LEVEL", "DEFAULT_MEMORY_MB", "DEFAULT_PAIRS", "KS", "MISSING_VIEW_POLICY", "TIE_RULE",
    "Evaluation", "FeatureSource", "PairPass", "category_metrics", "ci_overlaps", "evaluate", "headline_rows", "per_category_comparison",
    "headline_table", "joint_metrics", "pair_pass", "present_masks", "report_markdown", "retrieval_metrics",
    "run_studies", "shape_distance_matrix", "t_interval", "true_ranks", "view_distance_matrix",
    "view_distance_stats", "view_retrieval", "write_report",
]
