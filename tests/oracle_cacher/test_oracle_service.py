"""The oracle cacher's API against a real shard: GetJob returns the job as a message, StreamPlans
streams one plan per batch to a trainer of the job and refuses anyone else; a placement made for another
job is refused at the start."""

import dataclasses
import re

import grpc
import numpy as np
import pytest

from embps.common.job_config import Addresses, JobConfig
from embps.common.job_messages import job_from_message
from embps.common.local_cluster import LocalShard, free_port
from embps.oracle_cacher.dealing import DealingError
from embps.oracle_cacher.service import OracleCacher, make_service
from embps.placement import Placement
from embps.placement.placement_file import PlacementMismatchError, save_placement
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc
from helpers.grpc_calls import error_info, malformed_requests, raw_call


@pytest.fixture(scope="module")
def oracle(tmp_path_factory):
    with LocalShard(tmp_path_factory.mktemp("shard")) as shard:
        job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005, "seed": 3}, trainers=1,
                        global_batch=16, steps=3, dim=4, lookahead=2, timeout_seconds=30,
                        addresses=Addresses(oracle=f"127.0.0.1:{free_port()}", shards=(shard.address,)))
        service, cacher = make_service(job)
        service.start()
        try:
            with grpc.insecure_channel(job.addresses.oracle) as channel:
                yield job, pb_grpc.OracleCacherStub(channel)
        finally:
            cacher.stopping.set()
            service.stop(0)


def test_get_job_returns_the_oracles_job(oracle):
    job, stub = oracle
    assert job_from_message(stub.GetJob(pb.GetJobRequest(), timeout=10)) == job


def test_stream_plans_sends_every_batch_to_a_trainer_of_the_job(oracle):
    job, stub = oracle
    plans = [reply.plan for reply in stub.StreamPlans(pb.StreamPlansRequest(trainer=0), timeout=30)]
    assert [plan.batch for plan in plans] == list(range(job.steps))
    assert all(plan.features.samples == job.local_batch and len(plan.keys) for plan in plans)
    keys = np.frombuffer(plans[0].keys, np.uint64)
    np.testing.assert_array_equal(keys, np.unique(keys))   # distinct and sorted
    with pytest.raises(grpc.RpcError) as info:
        next(stub.StreamPlans(pb.StreamPlansRequest(trainer=0), timeout=10))
    assert info.value.code() == grpc.StatusCode.ALREADY_EXISTS
    with pytest.raises(grpc.RpcError) as info:
        next(stub.StreamPlans(pb.StreamPlansRequest(trainer=job.trainers), timeout=10))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT and "not in this job" in info.value.details()


@pytest.mark.parametrize("method, payload", [
    pytest.param(method, data, id=f"{method.name}-{kind}")
    for method in pb.DESCRIPTOR.services_by_name["OracleCacher"].methods
    for kind, data in malformed_requests(method.input_type).items()])
def test_undecodable_requests_are_invalid_arguments(oracle, method, payload):
    job, stub = oracle
    with grpc.insecure_channel(job.addresses.oracle) as channel, pytest.raises(grpc.RpcError) as info:
        raw_call(channel, method, [payload])
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert f"not a valid {method.input_type.full_name}" in info.value.details()
    assert error_info(info.value) == ("embps.dev", "PROTOCOL")
    assert job_from_message(stub.GetJob(pb.GetJobRequest(), timeout=10)) == job


@pytest.mark.parametrize("hosts, dataset, samples, error, refusal", [
    (2, "synthetic(scale=0.0005, seed=3)", 8, PlacementMismatchError, "over 2 hosts, this cluster has 1"),
    (1, "movielens-100k", 8, PlacementMismatchError,
     "made for dataset 'movielens-100k', this job trains on 'synthetic(scale=0.0005, seed=3)'"),
    (1, "synthetic(scale=0.0005, seed=3)", 0, DealingError, "gives host(s) [0] no training samples")])
def test_a_placement_for_another_job_is_refused_at_the_start(oracle, tmp_path, hosts, dataset, samples, error,
                                                             refusal):
    job, _ = oracle
    save_placement(tmp_path / "p", Placement(hosts=hosts, row_keys=np.zeros(0, np.uint64),
                                             row_owner=np.zeros(0, np.uint16),
                                             sample_host=np.zeros(samples, np.uint16),
                                             mirrors=(np.zeros(0, np.uint64),) * hosts, dataset=dataset))
    with pytest.raises(error, match=re.escape(refusal)):
        OracleCacher(dataclasses.replace(job, placement=str(tmp_path / "p")))
