"""Real data: DLRM trained through the cluster on MovieLens-100k (rating >= 4, the last 20% of ratings in
time held out) beats chance clearly on the held-out ratings."""

import pytest

from embps.common.job_config import JobConfig
from embps.datasets import open_dataset
from embps.trainer.local_job import run_local_job


def test_movielens_auc_clearly_above_chance(tmp_path):
    try:
        open_dataset("movielens-100k")
    except (FileNotFoundError, ImportError) as error:
        pytest.skip(f"MovieLens-100k not installed (make install puts it in .venv via recbole): {error}")
    job = JobConfig(dataset="movielens-100k", trainers=2, global_batch=512, steps=250, eval_batches=39, dim=16,
                    lookahead=16, timeout_seconds=60)
    result = run_local_job(job, tmp_path, n_shards=2, show_progress=False)
    auc = result.metrics["eval"]["auc"]
    print(f"MovieLens-100k held-out AUC {auc:.4f}, log-loss {result.metrics['eval']['logloss']:.4f}")
    assert auc > 0.62
