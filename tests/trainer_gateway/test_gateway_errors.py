"""A gateway answers malformed peer input with its status and reason; an unexpected exception in a
handler is logged with its traceback and fails the gateway, so the job stops instead of going on
from a half-done step."""

import json

import grpc
import numpy as np
import pytest

from embps.api.status import reason_of_rpc_error
from embps.common.job_config import JobConfig
from embps.trainer.local_job import local_services
from embps.v1 import training_pb2 as pb
from embps.v1 import training_pb2_grpc as pb_grpc
from helpers.grpc_calls import error_info, malformed_requests, raw_call


def test_peer_input_errors(tmp_path):
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=2, global_batch=128, steps=4,
                    dim=8, lookahead=4, timeout_seconds=30)
    with local_services(job, tmp_path, n_shards=1) as (job, _), \
            grpc.insecure_channel(job.addresses.gateways[0]) as channel:
        peer, gateway = pb_grpc.GatewayPeerStub(channel), pb_grpc.TrainerGatewayStub(channel)
        with pytest.raises(grpc.RpcError) as info:   # keys not a multiple of 8 bytes: bad input, not a bug
            peer.Contribute(pb.ContributeRequest(batch=0, trainer=1, keys=b"abc"), timeout=10)
        assert (info.value.code(), reason_of_rpc_error(info.value)) == (grpc.StatusCode.INVALID_ARGUMENT,
                                                                         "INVALID_ARGUMENT")
        assert "not a multiple of 8" in info.value.details()
        peer.Contribute(pb.ContributeRequest(batch=0, trainer=1, keys=np.arange(2, dtype=np.uint64).tobytes(),
                                         grads=np.zeros((2, 8), np.float32).tobytes()), timeout=10)

        with pytest.raises(grpc.RpcError) as info:   # a trainer the job does not have: an IndexError inside
            peer.NotifyRound(pb.NotifyRoundRequest(round=0, trainer=99), timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert info.value.details() == "internal error in NotifyRound; see the gateway's log"
        with pytest.raises(grpc.RpcError) as info:   # the gateway has failed: its trainer hears why
            gateway.NextBatch(pb.NextBatchRequest(), timeout=10)
        assert info.value.code() == grpc.StatusCode.INTERNAL
        assert "NotifyRound failed: IndexError" in info.value.details()
    log = [json.loads(line) for line in (tmp_path / "logs" / "gateway-0.log").read_text().splitlines()
           if line.startswith("{")]
    [entry] = [e for e in log if e["msg"] == "internal error"]
    assert entry["method"] == "NotifyRound" and entry["level"] == "error" and "IndexError" in entry["exc"]


def test_undecodable_requests_are_invalid_arguments(tmp_path):
    """Every RPC of both services a gateway serves; the gateway has not failed afterwards."""
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=64, steps=2,
                    dim=8, lookahead=2, timeout_seconds=30)
    with local_services(job, tmp_path, n_shards=1) as (job, _), \
            grpc.insecure_channel(job.addresses.gateways[0]) as channel:
        for service in ("TrainerGateway", "GatewayPeer"):
            for method in pb.DESCRIPTOR.services_by_name[service].methods:
                for kind, payload in malformed_requests(method.input_type).items():
                    with pytest.raises(grpc.RpcError) as info:
                        raw_call(channel, method, [payload])
                    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, (method.name, kind)
                    assert f"not a valid {method.input_type.full_name}" in info.value.details()
                    assert error_info(info.value) == ("embps.dev", "PROTOCOL")
        reply = pb_grpc.TrainerGatewayStub(channel).NextBatch(pb.NextBatchRequest(), timeout=30)
        assert reply.HasField("batch") and not reply.done
