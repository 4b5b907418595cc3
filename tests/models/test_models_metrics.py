"""embps.models.metrics: AUC against brute-force pair counting (ties included), log-loss, evaluate, ranking."""

import math

import numpy as np
import pytest

from embps.models import auc, evaluate, logloss, ranking_metrics


def pairwise_auc(labels, scores):
    pos = [s for y, s in zip(labels, scores) if y]
    neg = [s for y, s in zip(labels, scores) if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@pytest.mark.parametrize("seed", range(8))
def test_auc_matches_pairwise_count_with_ties(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 300))
    labels = rng.integers(0, 2, n)
    labels[:2] = [0, 1]
    scores = np.round(rng.random(n) + 0.3 * labels, decimals=int(rng.integers(0, 3)))  # coarse: many ties
    assert auc(labels, scores) == pytest.approx(pairwise_auc(labels, scores), abs=1e-12)


def test_auc_edge_cases():
    assert auc([0, 0, 1, 1], [0.1, 0.2, 0.3, 0.4]) == 1.0
    assert auc([1, 1, 0, 0], [0.1, 0.2, 0.3, 0.4]) == 0.0
    assert auc([0, 1, 0, 1], [0.5, 0.5, 0.5, 0.5]) == 0.5
    assert auc([0, 1, 1], [0.2, 0.2, 0.9]) == 0.75
    assert math.isnan(auc([1, 1], [0.1, 0.2]))
    assert math.isnan(auc([0, 0], [0.1, 0.2]))
    with pytest.raises(ValueError):
        auc([0, 1], [0.1])


def test_logloss_and_clipping():
    y = np.array([1, 0, 1, 0])
    p = np.array([0.9, 0.2, 0.6, 0.5])
    want = -np.mean([math.log(0.9), math.log(0.8), math.log(0.6), math.log(0.5)])
    assert logloss(y, p) == pytest.approx(want, rel=1e-12)
    assert logloss([1, 0], [0.0, 1.0]) == pytest.approx(-math.log(1e-7), rel=1e-9)
    assert math.isfinite(logloss([1], [0.0], eps=1e-12))


def test_evaluate_pools_all_batches():
    rng = np.random.default_rng(0)
    batches = [(rng.normal(size=(n, 2)).astype(np.float32), rng.integers(0, 5, (n, 3)),
                rng.integers(0, 2, n).astype(np.float32)) for n in (10, 1, 25)]

    def predict(dense, sparse):
        return 1 / (1 + np.exp(-(dense[:, 0] + 0.1 * sparse[:, 1])))

    got = evaluate(predict, batches)
    y = np.concatenate([b[2] for b in batches])
    p = np.concatenate([predict(b[0], b[1]) for b in batches])
    assert set(got) == {"auc", "logloss"}
    assert got["auc"] == pytest.approx(pairwise_auc(y, p))
    assert got["logloss"] == pytest.approx(logloss(y, p))


def test_ranking_metrics_by_hand():
    scores = np.array([[0.9, 0.1, 0.2, 0.3],     # rank 0: hit, NDCG 1
                       [0.5, 0.6, 0.5, 0.1],     # one above, one tie (counts against): rank 2
                       [0.0, 0.1, 0.2, 0.3]])    # rank 3
    got = ranking_metrics(scores, k=3)
    assert got["hit_rate_at_3"] == pytest.approx(2 / 3)
    assert got["ndcg_at_3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert ranking_metrics(scores, k=4)["hit_rate_at_4"] == 1.0
    assert ranking_metrics(np.zeros((5, 101)), k=10) == {"hit_rate_at_10": 0.0, "ndcg_at_10": 0.0}
    for bad in (np.zeros(4), np.zeros((3, 1))):
        with pytest.raises(ValueError):
            ranking_metrics(bad)
    with pytest.raises(ValueError):
        ranking_metrics(scores, k=0)
