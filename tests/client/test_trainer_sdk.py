"""The trainer SDK against a real gateway, oracle and shards (one trainer, no DDP): batches arrive in
order with their rows, get_emb takes the batch or its ids, backward pushes the gradients, and after
finish() the shards hold the updated rows."""


import grpc
import numpy as np
import pytest

from embps.client import PSClient, ShardError
from embps.client.trainer_sdk import RemoteEmbeddings, init_cache
from embps.common.job_config import JobConfig, feature_keys
from embps.store import initial_rows
from embps.trainer.local_job import local_services
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc


def test_sdk_round_trip(tmp_path):
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=32, steps=6,
                    dim=4, emb_optimizer="sgd", emb_lr=0.5, lookahead=4, timeout_seconds=30)
    with local_services(job, tmp_path, n_shards=1) as (job, _):
        spec = job.table_spec(1)
        cache = init_cache(job.addresses.gateways[0], grad_scale=1.0, timeout=30)
        embeddings = RemoteEmbeddings(cache)
        touched = {}
        for step in range(job.steps):
            batch = cache.next_batch()
            assert batch.number == step
            embs = embeddings(batch)
            keys = feature_keys(batch.sparse)
            if step == 0:   # rows start as the table's initializer says
                np.testing.assert_array_equal(embs.detach().numpy(), initial_rows(spec, keys.ravel()).reshape(embs.shape))
            np.testing.assert_array_equal(cache.get_emb(batch.sparse[:3]).detach().numpy(), embs[:3].detach().numpy())
            embs.sum().backward()   # every use of a row adds 1 to its gradient
            for key, count in zip(*np.unique(keys, return_counts=True)):
                touched[int(key)] = touched.get(int(key), 0) + count
            with pytest.raises(KeyError):
                cache.get_emb(np.full((1, batch.sparse.shape[1]), 10**9))
        assert cache.next_batch() is None
        stats = cache.finish()
        assert stats.steps == job.steps and stats.rows_fetched <= stats.rows_used
        assert stats.mode == pb.GATEWAY_MODE_SYNC
        with grpc.insecure_channel(job.addresses.gateways[0]) as channel:
            assert pb_grpc.TrainerGatewayStub(channel).GetGatewayStats(pb.GetGatewayStatsRequest(), timeout=30) == stats
        cache.close()
        with PSClient(job.cluster_config()) as ps:
            keys = np.array(sorted(touched), np.uint64)
            expected = initial_rows(spec, keys) - 0.5 * np.array([touched[int(k)] for k in keys], np.float32)[:, None]
            np.testing.assert_allclose(ps.lookup(job.table, keys), expected, atol=1e-6)


def test_gateway_rejects_out_of_order_use(tmp_path):
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=32, steps=4,
                    dim=4, lookahead=2, timeout_seconds=30)
    with local_services(job, tmp_path, n_shards=1) as (job, _):
        cache = init_cache(job.addresses.gateways[0], timeout=30)
        cache.next_batch()
        with pytest.raises(ShardError, match="push the gradients of batch 0 before asking for batch 1"):
            cache.next_batch()   # no backward: nothing was pushed
        cache.close()
