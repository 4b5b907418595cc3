"""AUC and log-loss of a click model, hit rate and NDCG of a ranking, in numpy."""

from collections.abc import Callable, Iterable

import numpy as np

LOGLOSS_EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC: the probability that a random positive scores above a random negative, a tie counting
    one half (Mann-Whitney U with average ranks). NaN when either class is missing."""
    labels = np.asarray(labels).reshape(-1) > 0.5
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    if labels.shape != scores.shape:
        raise ValueError(f"labels and scores differ in length: {labels.size} vs {scores.size}")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    # Values sorted ascending; a group of c tied values taking ranks k+1..k+c gets their mean k + (c+1)/2.
    ends = np.cumsum(counts)
    avg_rank = ends - (counts - 1) / 2.0
    rank_sum_pos = avg_rank[inverse][labels].sum()
    return float((rank_sum_pos - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def logloss(labels: np.ndarray, probs: np.ndarray, eps: float = LOGLOSS_EPS) -> float:
    """Mean binary cross-entropy with probabilities clipped to [eps, 1 - eps]."""
    y = np.asarray(labels, dtype=np.float64).reshape(-1)
    p = np.clip(np.asarray(probs, dtype=np.float64).reshape(-1), eps, 1.0 - eps)
    if y.shape != p.shape:
        raise ValueError(f"labels and probs differ in length: {y.size} vs {p.size}")
    if y.size == 0:
        return float("nan")
    return float(-np.mean(y * np.log(p) + (1.0 - y) * np.log1p(-p)))


def evaluate(predict_fn: Callable[[np.ndarray, np.ndarray], np.ndarray],
             batches: Iterable[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Runs predict_fn(dense, sparse) -> probabilities over every (dense, sparse, labels) batch and
    returns dict(auc=..., logloss=...) over all of them together."""
    all_labels, all_probs = [], []
    for dense, sparse, labels in batches:
        all_probs.append(np.asarray(predict_fn(dense, sparse), dtype=np.float64).reshape(-1))
        all_labels.append(np.asarray(labels, dtype=np.float64).reshape(-1))
    if not all_labels:
        return {"auc": float("nan"), "logloss": float("nan")}
    y, p = np.concatenate(all_labels), np.concatenate(all_probs)
    return {"auc": auc(y, p), "logloss": logloss(y, p)}


def ranking_metrics(scores: np.ndarray, k: int = 10) -> dict[str, float]:
    """Hit rate@k and NDCG@k of queries scores [queries, candidates] whose column 0 is the one relevant
    candidate (the held-out item) and the rest are negatives.  The positive's rank is the number of
    negatives scoring at least as high (ties count against it, so a constant scorer gets no credit);
    a hit is rank < k and NDCG@k is 1 / log2(rank + 2) for a hit, else 0."""
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or scores.shape[1] < 2:
        raise ValueError(f"scores must be [queries, candidates >= 2], got {list(scores.shape)}")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    rank = (scores[:, 1:] >= scores[:, :1]).sum(axis=1)
    hit = rank < k
    ndcg = np.where(hit, 1 / np.log2(rank + 2), 0.0)
    return {f"hit_rate_at_{k}": float(hit.mean()), f"ndcg_at_{k}": float(ndcg.mean())}
