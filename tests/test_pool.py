"""The worker-pool runner shared by the renderer and the demo data: same results inline and pooled."""
from __future__ import annotations

import pytest

from retrieval.pool import run_jobs


def _square_but_three(x: int) -> int:
    if x == 3:
        raise ValueError("three")
    return x * x


@pytest.mark.parametrize("workers", [1, 2])
def test_results_and_failures_reach_their_callbacks(workers):
    done, failed = {}, {}
    run_jobs(_square_but_three, range(6), workers, lambda j, r: done.__setitem__(j, r),
             on_fail=lambda j, e: failed.__setitem__(j, str(e)))
    assert done == {0: 0, 1: 1, 2: 4, 4: 16, 5: 25} and failed == {3: "three"}


@pytest.mark.parametrize("workers", [1, 2])
def test_without_on_fail_the_first_failure_stops_the_run(workers):
    with pytest.raises(ValueError, match="three"):
        run_jobs(_square_but_three, [3, 1], workers, lambda j, r: None)
