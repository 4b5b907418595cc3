"""The Bagpipe promise, tested: two trainers training through the shards, in sync mode (lookahead
caching), direct mode or bounded mode with staleness 0 (HET-GMP's mirrors, synchronous), end with every
embedding row, its optimizer state and every dense parameter equal to one process training the same
model on the same global batches with plain PyTorch.  And bounded mode with s > 0 keeps its bound."""

import numpy as np
import pytest
import torch

from embps.common.job_config import JobConfig, feature_keys
from embps.models import build_model
from embps.models.local_training import LocalTrainer
from embps.datasets import open_dataset
from embps.store import Store, initial_rows
from embps.trainer.local_job import run_local_job
from embps.trainer_gateway.bounded_strategy import AUDIT_ENV

TOLERANCE = 1e-5


def rows_on_shards(shards_dir, table, keys):
    """Rows and state as the shards' PM files hold them after the job (missing: initial row, zero state)."""
    rows = state = None
    for store_dir in sorted(shards_dir.glob("shard-*/store")):
        with Store(store_dir) as store:
            r, s, found = store.table(table).lookup_with_state(keys)
        if rows is None:
            rows, state = r, s
        else:
            rows[found], state[found] = r[found], s[found]
    return rows, state


def reference(job: JobConfig):
    dataset = open_dataset(job.dataset, **job.dataset_options)
    info = dataset.info
    spec = job.table_spec(sum(info.table_sizes))
    keys = [feature_keys(np.arange(size).reshape(-1, 1) * np.eye(1, len(info.table_sizes), i, dtype=np.int64))[:, i]
            for i, size in enumerate(info.table_sizes)]
    tables = [initial_rows(spec, k) for k in keys]
    model = build_model(job.model, info.n_dense, len(info.table_sizes), job.dim, seed=job.seed)
    trainer = LocalTrainer(model, tables, job.emb_optimizer, job.emb_lr, job.emb_eps, job.dense_optimizer,
                           job.dense_lr)
    for _, batch in zip(range(job.steps), dataset.batches(job.global_batch, "train")):
        trainer.step(batch.dense, batch.sparse, batch.labels)
    return trainer, keys


def small_job(mode: str, emb_optimizer: str, lookahead: int = 8, **bounded) -> JobConfig:
    return JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005, "seed": 5}, model="dlrm", mode=mode,
                     trainers=2, global_batch=128, steps=50, eval_batches=1, dim=8, emb_optimizer=emb_optimizer,
                     emb_lr=0.1 if emb_optimizer == "sgd" else 0.01, lookahead=lookahead, timeout_seconds=60,
                     # Adam and Adagrad divide by the gradient's own scale, so where trainers' gradients nearly
                     # cancel, float32 rounding (sum of two halves vs one batch) moves a row by lr x that
                     # relative error: the check keeps lr x 1e-3 below its tolerance and uses SGD for dense.
                     dense_optimizer="sgd", dense_lr=0.05, **bounded)


@pytest.mark.parametrize("mode, emb_optimizer, lookahead", [
    ("sync", "sgd", 8), ("sync", "adagrad", 8), ("sync", "adagrad", 1), ("direct", "sgd", 8),
    ("direct", "adagrad", 8), ("bounded", "sgd", 8), ("bounded", "adagrad", 8)])
def test_two_trainers_equal_one_process(tmp_path, monkeypatch, mode, emb_optimizer, lookahead):
    # bounded, s = 0: a third of each host's remote rows mirrored, the audit shows they were used
    bounded = mode == "bounded"
    job = small_job(mode, emb_optimizer, lookahead, **({"staleness": 0, "store_rate": 0.3} if bounded else {}))
    if bounded:
        monkeypatch.setenv(AUDIT_ENV, str(tmp_path))
    result = run_local_job(job, tmp_path, n_shards=2, show_progress=False)
    if bounded:
        audits = [np.load(tmp_path / f"audit-{t}.npz") for t in range(job.trainers)]
        assert all(len(a["key"]) > 1000 for a in audits), "mirrors were served"
        assert all((a["owner"] == a["held"]).all() for a in audits), "s = 0: every mirror served is current"
    expected, keys = reference(job)
    for i, table_keys in enumerate(keys):
        rows, state = rows_on_shards(tmp_path / "shards", job.table, table_keys)
        np.testing.assert_allclose(rows, expected.table(i), atol=TOLERANCE, rtol=0, err_msg=f"rows of feature {i}")
        if emb_optimizer == "adagrad":
            np.testing.assert_allclose(state, expected.table_state(i), atol=TOLERANCE, rtol=0,
                                       err_msg=f"adagrad state of feature {i}")
    dense = torch.load(result.out / "dense.pt")
    for name, value in expected.model.state_dict().items():
        np.testing.assert_allclose(dense[name].numpy(), value.numpy(), atol=TOLERANCE, rtol=0, err_msg=name)
    assert len(result.metrics["losses"]) == job.steps


def test_bounded_mirrors_stay_within_the_staleness_bound(tmp_path, monkeypatch):
    """s = 3: on every read of a mirrored row its owner is at most 3 contributions ahead of the version the
    mirror reflects (the owner's version read at that moment: no update of the batch lands before every
    gateway has its rows), at most 3 of its own contributions are unpushed, and mirrors do go stale and get
    refreshed, so the bound is what held them in."""
    s = 3
    job = small_job("bounded", "adagrad", staleness=s, store_rate=0.3)
    monkeypatch.setenv(AUDIT_ENV, str(tmp_path))
    run_local_job(job, tmp_path, n_shards=2, show_progress=False)
    for t in range(job.trainers):
        audit = np.load(tmp_path / f"audit-{t}.npz")
        behind = audit["owner"].astype(np.int64) - audit["held"].astype(np.int64)
        assert len(behind) > 1000
        assert behind.min() >= 0 and behind.max() <= s, f"gateway {t}: a mirror {behind.max()} versions behind"
        assert audit["pending"].max() <= s
        assert (behind > 0).mean() > 0.05, "mirrors went stale within the bound"
        assert (audit["pending"] > 0).mean() > 0.05, "mirrors held unpushed contributions"
        refreshed = {int(k) for k in audit["key"][behind > 0]} & {int(k) for k in audit["key"][behind == 0]}
        assert refreshed, "refreshes brought stale mirrors back to their owners"
