"""Bytes that are not a protobuf message, sent to every RPC of the shard (and as one chunk of an
Import): INVALID_ARGUMENT with reason PROTOCOL naming the expected message, never grpcio's INTERNAL
"Exception deserializing request!"; then the shard still serves, its rows unchanged."""

import grpc
import numpy as np
import pytest

from embps.api import TableSpec
from embps.common.spec_messages import spec_to_message
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc
from helpers.grpc_calls import GARBAGE, error_info, malformed_requests, raw_call

SERVICE = pb.DESCRIPTOR.services_by_name["ParameterShard"]
KEYS = np.arange(1, 21, dtype=np.uint64)
ROWS = np.arange(20 * 4, dtype=np.float32).reshape(20, 4)
CASES = [pytest.param(method, data, id=f"{method.name}-{kind}") for method in SERVICE.methods
         for kind, data in malformed_requests(method.input_type).items()]


@pytest.fixture(scope="module")
def channel(shard):
    with grpc.insecure_channel(shard.address) as channel:
        stub = pb_grpc.ParameterShardStub(channel)
        stub.CreateTable(pb.CreateTableRequest(name="kept", spec=spec_to_message(TableSpec(dim=4, capacity=100))))
        stub.Assign(pb.AssignRequest(table="kept", keys=KEYS.tobytes(), rows=ROWS.tobytes()))
        yield channel


def assert_refused(error: grpc.RpcError, message_type: str) -> None:
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert f"not a valid {message_type}" in error.details(), error.details()
    assert error_info(error) == ("embps.dev", "PROTOCOL")


def assert_intact(channel) -> None:
    reply = pb_grpc.ParameterShardStub(channel).Lookup(pb.LookupRequest(table="kept", keys=KEYS.tobytes()))
    np.testing.assert_array_equal(np.frombuffer(reply.rows, np.float32).reshape(-1, 4), ROWS)


@pytest.mark.parametrize("method, payload", CASES)
def test_every_rpc_refuses_undecodable_requests(channel, method, payload):
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, method, [payload])
    assert_refused(info.value, method.input_type.full_name)
    assert_intact(channel)


def test_a_garbage_import_chunk_ends_the_import_after_the_good_ones(channel):
    good = pb.ImportRequest(table="kept", keys=np.array([50], np.uint64).tobytes(),
                            rows=np.full(4, 5.0, np.float32).tobytes())
    with pytest.raises(grpc.RpcError) as info:
        raw_call(channel, SERVICE.methods_by_name["Import"], [good.SerializeToString(), GARBAGE])
    assert_refused(info.value, "embps.v1.ImportRequest")
    assert "(after 1 rows were imported)" in info.value.details()
    stub = pb_grpc.ParameterShardStub(channel)
    assert stub.DescribeTable(pb.DescribeTableRequest(table="kept")).rows == len(KEYS) + 1
    stub.Delete(pb.DeleteRequest(table="kept", keys=np.array([50], np.uint64).tobytes()))
    assert_intact(channel)
