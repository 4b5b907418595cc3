"""The oracle's plans, followed by a simulated cache: every row is there when its batch runs, the
cache stays bounded, evictions come only after a row's last use in its window, and re-fetches wait
for the write-back of the eviction that removed the row."""

import numpy as np
import pytest

from embps.oracle_cacher.lookahead_planner import LookaheadPlanner

SIZES = (50, 400, 3000)


def stream(n_batches, batch=64, seed=0):
    rng = np.random.default_rng(seed)
    hot = [rng.choice(size, max(1, size // 100), replace=False) for size in SIZES]
    out = []
    for _ in range(n_batches):
        cols = []
        for size, h in zip(SIZES, hot):
            use_hot = rng.random(batch) < 0.9
            cols.append(np.where(use_hot, rng.choice(h, batch), rng.integers(0, size, batch)))
        out.append(np.stack(cols, axis=1))
    return out


@pytest.mark.parametrize("lookahead, cleanup_every", [(1, 1), (4, 1), (8, 2), (16, 4), (32, 8)])
def test_plans_drive_a_correct_bounded_cache(lookahead, cleanup_every):
    batches = stream(120)
    planner = LookaheadPlanner(SIZES, lookahead, cleanup_every)
    plans = list(planner.plan(iter(batches)))
    assert [p.batch for p in plans] == list(range(120))
    cache: set[int] = set()
    evicted_round: dict[int, int] = {}
    fetched = used = 0
    for plan, sparse in zip(plans, batches):
        keys = set(plan.keys.tolist())
        assert keys == set(planner.keys_of(planner.rows_of(sparse)).tolist())
        if plan.evict.size:
            assert plan.batch % cleanup_every == 0
            evicted = set(plan.evict.tolist())
            assert evicted <= cache
            assert lookahead == 1 or not evicted & keys          # with a window, never evict what this batch uses
            cache -= evicted
            evicted_round.update({k: plan.batch for k in evicted})
        prefetch = set(plan.prefetch.tolist())
        assert prefetch == keys - cache                          # fetch exactly what is missing
        assert plan.fetch_after_round == max([evicted_round.get(k, 0) for k in prefetch], default=0)
        assert plan.fetch_after_round <= plan.batch
        streamed = set(plan.stream.tolist())
        assert streamed <= prefetch
        window = set().union(*(set(p.keys.tolist()) for p in plans[plan.batch + 1: plan.batch + lookahead]))
        assert not streamed & window                               # streamed rows are not reused in the window
        cache |= prefetch - streamed
        evicted_round.update({k: (plan.batch // cleanup_every + 1) * cleanup_every for k in streamed})
        next_keys = set(plans[plan.batch + 1].keys.tolist()) if plan.batch + 1 < len(plans) else set()
        assert set(plan.sync_now.tolist()) == keys & next_keys
        fetched += len(prefetch)
        used += len(keys)
        # bounded: at most the rows of the last L + C + 1 batches
        recent = set().union(*(set(p.keys.tolist()) for p in plans[max(0, plan.batch - lookahead - cleanup_every):
                                                                      plan.batch + 1]))
        assert cache <= recent
    if lookahead == 1:
        assert fetched == used and not cache                     # no reuse without lookahead: all streamed
    else:
        assert fetched < used * 0.6                              # skew makes the cache pay off


def test_same_data_same_plans():
    def run():
        return [(p.keys.tobytes(), p.prefetch.tobytes(), p.stream.tobytes(), p.evict.tobytes(), p.sync_now.tobytes(),
                 p.fetch_after_round)
                for p in LookaheadPlanner(SIZES, 8, 2).plan(iter(stream(40, seed=3)))]
    assert run() == run()


def test_keys_encode_feature_and_id():
    planner = LookaheadPlanner(SIZES, 2, 1)
    keys = planner.keys_of(planner.rows_of(np.array([[3, 5, 7]])))
    assert keys.tolist() == [3, (1 << 40) | 5, (2 << 40) | 7]
