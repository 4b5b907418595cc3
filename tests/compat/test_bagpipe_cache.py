"""A BagCache against a real job (shards, oracle, gateway): Bagpipe's batch layout, get_emb of the
whole batch or of some of its samples, gradients back through either, a clear end of the stream, and
every row on the shards once the last batch is done."""

import numpy as np
import pytest
import torch

from embps.client import PSClient
from embps.common.job_config import JobConfig, feature_keys
from embps.compat.bagpipe import init_cache
from embps.datasets import open_dataset
from embps.store import initial_rows
from embps.trainer.local_job import local_services

JOB = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005, "seed": 2}, trainers=1, global_batch=16,
                steps=3, dim=8, emb_optimizer="sgd", emb_lr=0.5, lookahead=2, timeout_seconds=60)


def test_batches_embeddings_and_gradients_as_bagpipe_has_them(tmp_path, monkeypatch):
    info = open_dataset(JOB.dataset, **JOB.dataset_options).info
    with local_services(JOB, tmp_path, n_shards=1) as (job, _):
        monkeypatch.setenv("EMBPS_JOB", str(tmp_path / "job.toml"))
        bp = init_cache(lookahead_value=2, emb_size=8, ln_emb=list(info.table_sizes), cache_size=1000, device="cpu",
                        training_worker_id=0, trainer_world_size=1, emb_optim=torch.optim.SGD,
                        emb_optim_params={"lr": 0.5})
        used = []
        for step in range(job.steps):
            example = bp.next_batch()
            dense, sparse, target = example["dense_x"], example["sparse_vector"], example["target"]
            assert dense.shape == (16, info.n_dense) and target.shape == (16, 1)
            assert sparse.shape == (info.n_tables, 16) and sparse.dtype == torch.int64
            ly = bp.get_emb(sparse)
            assert len(ly) == info.n_tables and all(e.shape == (16, 8) for e in ly)
            part = bp.get_emb(sparse[:, 3:7])   # some samples: the same rows
            for whole, some in zip(ly, part):
                torch.testing.assert_close(some, whole[3:7], rtol=0, atol=0)
            # Odd steps train through the part only: its gradient must reach the rows as well.
            loss = sum(e.sum() for e in (ly if step % 2 == 0 else part))
            loss.backward()
            used.append(feature_keys(sparse.T.numpy() if step % 2 == 0 else sparse[:, 3:7].T.numpy()))
        with pytest.raises(RuntimeError, match="the job's stream is over; it has 3 batches"):
            bp.next_batch()
        bp.close()   # the last batch's backward started the write-back; this waits for it
        keys = np.unique(np.concatenate([k.ravel() for k in used]))
        with PSClient(job.cluster_config()) as ps:
            rows = ps.lookup(job.table, keys)
        start = initial_rows(job.table_spec(1), keys)
        counts = np.unique(np.concatenate([k.ravel() for k in used]), return_counts=True)[1]
        # d(sum)/d(row) is 1 per use, so SGD moved each row by lr x its uses, in every coordinate.
        np.testing.assert_allclose(start - rows, np.repeat(0.5 * counts[:, None], 8, axis=1), atol=1e-5)
