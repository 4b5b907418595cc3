"""The caches' row budget (`embps oracle-cacher --cache-size`, Bagpipe's flag): before serving, the job's
stream is planned once to find the most rows its caches hold at once.  A job whose window needs more
rows than the budget is refused, naming the largest lookahead that fits; the planner does not evict
earlier, since its plans (and so the training) would then depend on the budget."""

from __future__ import annotations

import dataclasses

from embps.common.job_config import JobConfig
from embps.datasets import Dataset

from .lookahead_planner import LookaheadPlanner


class CacheBudgetExceeded(ValueError):
    pass


def peak_rows(job: JobConfig, dataset: Dataset) -> int:
    """The most rows the job's caches hold at once (the planner's cached rows after any batch)."""
    planner = LookaheadPlanner(dataset.info.table_sizes, job.lookahead, job.cleanup_every)
    stream = (batch.sparse for _, batch in zip(range(job.steps), dataset.batches(job.global_batch, "train")))
    return max((int(planner.cached.sum()) for _ in planner.plan(stream)), default=0)


def check_cache_budget(job: JobConfig, dataset: Dataset, cache_size: int) -> int:
    """The job's peak rows if they fit in cache_size; else CacheBudgetExceeded with the largest lookahead
    whose window fits (found by bisection, as a longer window holds more rows)."""
    peak = peak_rows(job, dataset)
    if peak <= cache_size:
        return peak

    def peak_at(lookahead: int) -> int:
        return peak_rows(dataclasses.replace(job, lookahead=lookahead), dataset)

    # low fits, high does not; lookahead 1 caches nothing (every row is streamed for its one batch).
    low, high = 1, job.lookahead
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if peak_at(middle) <= cache_size else (low, middle)
    raise CacheBudgetExceeded(f"the job's window (lookahead {job.lookahead}, cleanup every {job.cleanup_every} "
                              f"batches, {job.global_batch} samples a batch) holds up to {peak:,} rows, more than "
                              f"--cache-size {cache_size:,}; lookahead {low} fits")
