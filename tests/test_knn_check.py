"""The tie-aware k-NN check itself: it must reject shifted labels and accept reordered ties."""
from __future__ import annotations

import numpy as np
import pytest

from .knn_check import check_knn_with_ties, recall_at_k


def test_identical_and_tied_results_pass():
    d = np.array([0.1, 0.2, 0.2, 0.3, 0.4, 0.4])
    check_knn_with_ties(d, [1, 2, 3, 4, 5, 6], d, [1, 2, 3, 4, 5, 6])
    check_knn_with_ties(d, [1, 2, 3, 4, 5, 6], d, [1, 3, 2, 4, 5, 6])  # tie inside the list swapped
    check_knn_with_ties(d, [1, 2, 3, 4, 5, 6], d, [1, 2, 3, 4, 9, 5])  # tie at k cut elsewhere


def test_shifted_labels_fail():
    d = np.array([0.1, 0.2, 0.3, 0.4])
    with pytest.raises(AssertionError, match="position 0"):
        check_knn_with_ties(d, ["a", "b", "c", "d"], d, ["b", "c", "d", "a"])
    with pytest.raises(AssertionError, match="tied positions"):
        e = np.array([0.1, 0.2, 0.2, 0.3])
        check_knn_with_ties(e, [1, 2, 3, 4], e, [1, 2, 7, 4])
    with pytest.raises(AssertionError, match="distances differ"):
        check_knn_with_ties(d, [1, 2, 3, 4], d * 1.01, [1, 2, 3, 4])


def test_several_queries_and_tuple_labels():
    d = np.array([[0.1, 0.2], [0.3, 0.5]])
    check_knn_with_ties(d, [[("s1", "a"), ("s2", "a")], [("s3", "b"), ("s1", "b")]],
                        d, [[("s1", "a"), ("s2", "a")], [("s3", "b"), ("s1", "b")]])
    with pytest.raises(AssertionError, match="query 1"):
        check_knn_with_ties(d, [[1, 2], [3, 4]], d, [[1, 2], [4, 3]])
    assert recall_at_k([[1, 2], [3, 4]], [[2, 1], [3, 9]]) == 0.75
