"""Worker processes for the pure code that takes a ``map`` (``models.bootstrap.refit_replicates``).

models/ never starts processes: it takes a ``map``-like callable, and the stage decides here whether worker
processes pay for themselves and supplies them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any

import joblib

from models.bootstrap import MapFn

# Below this many unique purchase histories a replicate takes milliseconds: worker processes cost more than they save.
PARALLEL_MIN_HISTORIES = 50_000


def process_map(processes: int, n_histories: int, *, min_histories: int = PARALLEL_MIN_HISTORIES) -> MapFn:
    """A ``map`` over ``processes`` worker processes (joblib's loky), or ``map`` itself where they would not pay.

    ``n_histories`` is how many unique purchase histories each call of the mapped function fits on: below
    ``min_histories`` (or with one process) the builtin ``map`` is returned. The process map, like ``map``, is
    lazy and yields the results in the order of the inputs, so a caller that draws its inputs in order as it
    goes (the bootstrap's weights) gets the results it would get from ``map``.
    """
    if processes < 1:
        raise ValueError(f"processes must be >= 1, got {processes}")
    if processes == 1 or n_histories < min_histories:
        return map

    def loky_map(func: Callable[[Any], Any], items: Iterable[Any]) -> Iterator[Any]:
        runner = joblib.Parallel(n_jobs=processes, backend="loky", return_as="generator")
        return iter(runner(joblib.delayed(func)(item) for item in items))

    return loky_map
