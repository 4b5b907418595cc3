"""A BagCache against a real job (shards, oracle, gateway): Bagpipe's batch layout, get_emb of the
whole batch or of some of its samples, gradients back through either, a clear end of the stream, and
every row on the shards once the last batch is done; with Adam, the rows and their state as
RowStepAdam trains them."""

import dataclasses

import numpy as np
import pytest
import torch

from embps.client import PSClient
from embps.common.job_config import JobConfig, feature_keys
from embps.compat.bagpipe import init_cache
from embps.datasets import open_dataset
from embps.models.row_step_adam import RowStepAdam
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


def test_an_adam_trainer_trains_the_rows_as_torch_with_a_step_count_per_row(tmp_path, monkeypatch):
    """emb_optim=torch.optim.Adam on a job whose table trains with Adam (embps train --emb-optimizer adam
    --emb-betas 0.8 0.99): each row takes one Adam step per batch that uses it, and only then."""
    job = dataclasses.replace(JOB, emb_optimizer="adam", emb_lr=0.01, emb_beta1=0.8, emb_beta2=0.99)
    info = open_dataset(job.dataset, **job.dataset_options).info
    with local_services(job, tmp_path, n_shards=1) as (job, _):
        monkeypatch.setenv("EMBPS_JOB", str(tmp_path / "job.toml"))
        bp = init_cache(lookahead_value=2, emb_size=8, ln_emb=list(info.table_sizes), cache_size=1000, device="cpu",
                        training_worker_id=0, trainer_world_size=1, emb_optim=torch.optim.Adam,
                        emb_optim_params={"lr": 0.01, "betas": (0.8, 0.99)})
        used = []
        for _ in range(job.steps):
            sparse = bp.next_batch()["sparse_vector"]
            sum(e.sum() for e in bp.get_emb(sparse)).backward()
            used.append(feature_keys(sparse.T.numpy()).ravel())
        bp.close()
        keys = np.unique(np.concatenate(used))
        with PSClient(job.cluster_config()) as ps:
            rows, state, found = ps.lookup(job.table, keys, with_state=True)
        assert found.all()
    # The reference: a row's gradient in a step is its uses in that step, in every coordinate.
    weight = torch.nn.Parameter(torch.from_numpy(initial_rows(job.table_spec(1), keys)))
    adam = RowStepAdam([weight], lr=0.01, betas=(0.8, 0.99), eps=job.emb_eps)
    for step_keys in used:
        touched, uses = np.unique(step_keys, return_counts=True)
        grads = np.repeat(uses[:, None].astype(np.float32), 8, axis=1)
        weight.grad = torch.sparse_coo_tensor(torch.from_numpy(np.searchsorted(keys, touched))[None],
                                              torch.from_numpy(grads), weight.shape, check_invariants=True)
        adam.step()
    steps = adam.row_state(weight).numpy()[:, -1]
    assert steps.min() == 1 and steps.max() == job.steps, "some rows skip steps"
    np.testing.assert_allclose(rows, weight.detach().numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(state, adam.row_state(weight).numpy(), atol=1e-5, rtol=0)
