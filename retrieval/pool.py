"""One way to run independent jobs on worker processes (the renderer's meshes, the demo's shapes).

With one worker the jobs run inline (easy to debug, no pickling). Otherwise they run in a pool
of fresh processes — forkserver where the platform has it, else spawn; never a fork of this
process, whose threads (torch, Embree, BLAS) do not survive forking. Results arrive in
completion order; a job that raises (or whose worker dies) goes to `on_fail`, and without one
the run stops: pending jobs are cancelled and the error is raised.
"""
from __future__ import annotations

import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterable


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity, e.g. a container's share), else the machine's."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def fresh_context(method: str | None = None):
    """A multiprocessing context that starts clean processes: `method`, or forkserver, else spawn."""
    if method is None:
        method = "forkserver" if "forkserver" in multiprocessing.get_all_start_methods() else "spawn"
    return multiprocessing.get_context(method)


def run_jobs(fn: Callable, jobs: Iterable, workers: int, on_done: Callable, *,
             on_fail: Callable | None = None, initializer: Callable | None = None,
             start_method: str | None = None) -> None:
    """Call `on_done(job, fn(job))` for every job; `on_fail(job, error)` for a job that fails."""
    jobs = list(jobs)
    if workers <= 1:
        for job in jobs:
            try:
                result = fn(job)
            except Exception as e:
                if on_fail is None:
                    raise
                on_fail(job, e)
                continue
            on_done(job, result)
        return
    with ProcessPoolExecutor(max_workers=workers, mp_context=fresh_context(start_method),
                             initializer=initializer) as pool:
        futures = {pool.submit(fn, job): job for job in jobs}
        try:
            for fut in as_completed(futures):
                job = futures[fut]
                try:
                    result = fut.result()
                except Exception as e:  # raised in the job, or its worker died (e.g. killed for memory)
                    if on_fail is None:
                        raise
                    on_fail(job, e)
                    continue
                on_done(job, result)
        except BaseException:
            for f in futures:
                f.cancel()
            raise
