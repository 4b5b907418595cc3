"""What operators rely on: health, reflection, metrics, GetShardStats, logs, config overrides and SIGTERM."""

import json
import time
import urllib.request

import grpc
import numpy as np
import pytest
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from embps.api import TableSpec
from embps.client import PSClient
from embps.common.local_cluster import LocalShard
from embps.ps_shard.config import ShardConfig
from embps.v1 import ps_shard_pb2 as pb


def test_health_and_reflection(shard):
    with grpc.insecure_channel(shard.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "embps.v1.ParameterShard"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING
        reflection = reflection_pb2_grpc.ServerReflectionStub(channel)
        request = reflection_pb2.ServerReflectionRequest(list_services="")
        reply = next(reflection.ServerReflectionInfo(iter([request]), timeout=5))
        names = {s.name for s in reply.list_services_response.service}
        assert {"embps.v1.ParameterShard", "grpc.health.v1.Health"} <= names
        request = reflection_pb2.ServerReflectionRequest(file_containing_symbol="embps.v1.ParameterShard")
        reply = next(reflection.ServerReflectionInfo(iter([request]), timeout=5))
        assert reply.file_descriptor_response.file_descriptor_proto   # grpcurl/grpc_cli can describe the API


def test_reflection_v1(shard):
    """What newer tools ask first.  v1's messages are v1alpha's under another package: the same bytes."""
    with grpc.insecure_channel(shard.address) as channel:
        info = channel.stream_stream("/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
                                     request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
                                     response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        requests = [reflection_pb2.ServerReflectionRequest(list_services=""),
                    reflection_pb2.ServerReflectionRequest(file_containing_symbol="embps.v1.ParameterShard"),
                    reflection_pb2.ServerReflectionRequest(
                        file_containing_symbol="grpc.reflection.v1.ServerReflection")]
        listed, shard_file, v1_file = info(iter(requests), timeout=5)
    names = {s.name for s in listed.list_services_response.service}
    assert {"embps.v1.ParameterShard", "grpc.health.v1.Health", "grpc.reflection.v1.ServerReflection",
            "grpc.reflection.v1alpha.ServerReflection"} <= names
    files = [descriptor_pb2.FileDescriptorProto.FromString(f)
             for f in shard_file.file_descriptor_response.file_descriptor_proto]
    assert "embps.v1.ParameterShard" in {f"{f.package}.{s.name}" for f in files for s in f.service}
    [v1] = [descriptor_pb2.FileDescriptorProto.FromString(f)
            for f in v1_file.file_descriptor_response.file_descriptor_proto]
    assert (v1.name, v1.package, v1.service[0].name) == ("grpc/reflection/v1/reflection.proto", "grpc.reflection.v1",
                                                         "ServerReflection")


def test_metrics_and_stats_count_both_paths(shard):
    with PSClient(shard.cluster_config) as client:
        client.create_table("metered", TableSpec(dim=4, capacity=100))
        client.lookup("metered", np.arange(10))                         # tcp
        client.update("metered", np.arange(3), np.ones((3, 4), np.float32))
        client.assign("metered", np.arange(5), np.ones((5, 4), np.float32))   # grpc
        deadline = time.monotonic() + 10
        while True:   # the data path counts a call once its reply is sent: just after the client has it
            stats = client.stats()[0]
            ops = {op.operation: op for op in stats.operations}
            if ops["tcp.lookup"].keys >= 10 and ops["tcp.update"].keys >= 3 or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        client.drop_table("metered")
    assert [p.kind for p in stats.data_paths] == [pb.DATA_PATH_KIND_TCP, pb.DATA_PATH_KIND_GRPC]
    assert ops["tcp.lookup"].keys >= 10 and ops["tcp.update"].keys >= 3 and ops["Assign"].keys >= 5
    assert stats.max_batch_keys == 4096 and stats.uptime_seconds > 0
    text = urllib.request.urlopen(f"http://{shard.addresses['metrics']}/metrics", timeout=5).read().decode()
    for line in ('embps_shard_requests_total{code="OK",method="Assign"}',
                 'embps_shard_data_keys_total{op="lookup"}', 'embps_shard_data_request_seconds_bucket{le="+Inf",op="update"}',
                 'embps_shard_request_seconds_count{method="Assign"}', "embps_shard_recovery_seconds",
                 'embps_shard_data_path{kind="tcp"} 1.0'):
        assert line in text, line


def test_sigterm_stops_cleanly_and_restart_recovers(tmp_path):
    shard = LocalShard(tmp_path, data_listen="")   # no TCP path: row traffic takes gRPC
    with PSClient(shard.cluster_config) as client:
        assert client.data_path_kinds() == ["grpc"]
        client.create_table("kept", TableSpec(dim=4, capacity=100))
        client.assign("kept", [7], np.full((1, 4), 3.0, np.float32))
    assert shard.stop() == 0
    log = [json.loads(line) for line in (tmp_path / "shard.log").read_text().splitlines()]
    assert [e["msg"] for e in log][-2:] == ["stopping", "shard stopped"]
    assert all({"ts", "level", "logger", "pid", "msg"} <= set(e) for e in log)
    shard.start()
    try:
        with PSClient(shard.cluster_config) as client:
            np.testing.assert_array_equal(client.lookup("kept", [7]), np.full((1, 4), 3.0, np.float32))
            assert client.describe_table("kept").recovery_seconds < 1
    finally:
        shard.stop()


def test_config_file_then_environment(tmp_path):
    path = tmp_path / "shard.toml"
    path.write_text('[shard]\ndata_dir = "/d"\nlisten = "0.0.0.0:7000"\nmax_batch_keys = 10\n')
    config = ShardConfig.load(path, {"EMBPS_SHARD_MAX_BATCH_KEYS": "99", "EMBPS_SHARD_ID": "s7"})
    assert (config.data_dir, config.listen, config.max_batch_keys, config.id) == ("/d", "0.0.0.0:7000", 99, "s7")
    with pytest.raises(ValueError, match="EMBPS_SHARD_MAX_BATCH_KEYS='many' is not a valid int"):
        ShardConfig.load(path, {"EMBPS_SHARD_MAX_BATCH_KEYS": "many"})
    path.write_text('[shard]\ndata_dir = "/d"\nlisen = "x"\n')
    with pytest.raises(ValueError, match=r"unknown \[shard\] settings: \['lisen'\]"):
        ShardConfig.load(path, {})
    with pytest.raises(ValueError, match="needs a data_dir"):
        ShardConfig.load(None, {})
