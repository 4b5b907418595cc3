"""A push answers with the next batch when it asks for it (then_next_batch), and with nothing otherwise:
then NextBatch serves that batch.  Either way the trainer gets the same batches."""

import grpc
import numpy as np
import pytest

from embps.common.job_config import JobConfig
from embps.trainer.local_job import local_services
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc


def push(batch: pb.TrainingBatch, dim: int, then_next_batch: bool) -> pb.PushGradientsRequest:
    keys = np.frombuffer(batch.keys, np.uint64)
    return pb.PushGradientsRequest(batch=batch.batch, keys=batch.keys, then_next_batch=then_next_batch,
                                   grads=np.full((len(keys), dim), 0.01, np.float32).tobytes())


def served_batches(tmp_path, then_next_batch: bool) -> list[pb.TrainingBatch]:
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=64, steps=3,
                    dim=8, lookahead=2, timeout_seconds=30)
    with local_services(job, tmp_path, n_shards=1) as (job, _), \
            grpc.insecure_channel(job.addresses.gateways[0]) as channel:
        gateway = pb_grpc.TrainerGatewayStub(channel)
        reply = gateway.NextBatch(pb.NextBatchRequest(), timeout=30)
        batches = []
        while not reply.done:
            batches.append(reply.batch)
            answer = gateway.PushGradients(push(reply.batch, job.dim, then_next_batch), timeout=30)
            assert answer.HasField("next") == then_next_batch
            reply = answer.next if then_next_batch else gateway.NextBatch(pb.NextBatchRequest(), timeout=30)
        gateway.Finish(pb.FinishRequest(), timeout=30)
    return batches


def test_the_next_batch_comes_with_the_push_or_after_it(tmp_path):
    with_push = served_batches(tmp_path / "with", then_next_batch=True)
    after_push = served_batches(tmp_path / "after", then_next_batch=False)
    assert [b.batch for b in with_push] == [0, 1, 2]
    assert with_push == after_push   # the same rows: the pushed gradients were applied before either answer


def test_a_push_for_other_keys_is_refused_and_the_batch_stays_open(tmp_path):
    """Gradients must be for the keys the batch was served with: others (a key outside the batch, a
    reordering) would update rows the step never read.  The refused push changes nothing, and the right
    one is taken after it."""
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=64, steps=2,
                    dim=8, lookahead=2, timeout_seconds=30, mode="direct")
    with local_services(job, tmp_path, n_shards=1) as (job, _), \
            grpc.insecure_channel(job.addresses.gateways[0]) as channel:
        gateway = pb_grpc.TrainerGatewayStub(channel)
        batch = gateway.NextBatch(pb.NextBatchRequest(), timeout=30).batch
        keys = np.frombuffer(batch.keys, np.uint64)
        for wrong in (np.append(keys[:-1], keys[-1] + 1), keys[::-1].copy()):
            request = push(batch, job.dim, then_next_batch=True)
            request.keys = wrong.tobytes()
            with pytest.raises(grpc.RpcError) as info:
                gateway.PushGradients(request, timeout=30)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            assert f"must be for the batch's {len(keys)} keys" in info.value.details()
        answer = gateway.PushGradients(push(batch, job.dim, then_next_batch=True), timeout=30)
        assert answer.next.batch.batch == 1
