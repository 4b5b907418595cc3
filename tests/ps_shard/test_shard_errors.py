"""Bad input to every RPC and to the native data path: a precise status and message, then the shard
still serves with its data unchanged.  Also what the unset (UNSPECIFIED) enums that are not refused mean."""

import dataclasses
import socket
import struct

import grpc
import numpy as np
import pytest
from helpers.data_wire import header, keys_bytes, read_reply, tcp_address

from embps.api import OptimizerSpec, TableSpec
from embps.client import PSClient, ShardError
from embps.common.spec_messages import spec_to_message
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc
from helpers.grpc_calls import error_info

C = grpc.StatusCode
DIM = 8
SPEC = TableSpec(dim=DIM, capacity=1000, optimizer=OptimizerSpec("adagrad", lr=0.1))
KEYS = np.arange(1, 51, dtype=np.uint64)


@pytest.fixture(scope="module")
def stub(shard):
    with grpc.insecure_channel(shard.address) as channel:
        yield pb_grpc.ParameterShardStub(channel)


@pytest.fixture(scope="module")
def table(shard, stub):
    """A table with known rows; every test checks they survive its bad input."""
    stub.CreateTable(pb.CreateTableRequest(name="guarded", spec=spec_to_message(SPEC)))
    rows = np.random.default_rng(0).normal(size=(len(KEYS), DIM)).astype(np.float32)
    stub.Assign(pb.AssignRequest(table="guarded", keys=KEYS.tobytes(), rows=rows.tobytes()))
    yield rows


def floats(n, width=DIM, value=1.0):
    return np.full((n, width), value, np.float32).tobytes()


def raises(code, pattern, call, *args, reason):
    """The call fails with code and a message holding pattern; reason is the ErrorInfo the status
    details carry ("" for none: a failure gRPC itself reports)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args)
    assert info.value.code() == code, info.value.details()
    assert pattern in info.value.details(), info.value.details()
    assert error_info(info.value) == (reason and ("embps.dev", reason))


def assert_intact(stub, rows):
    reply = stub.Lookup(pb.LookupRequest(table="guarded", keys=KEYS.tobytes(), with_state=True))
    np.testing.assert_array_equal(np.frombuffer(reply.rows, np.float32).reshape(-1, DIM), rows)
    assert not np.frombuffer(reply.state, np.float32).any()
    assert stub.DescribeTable(pb.DescribeTableRequest(table="guarded")).rows == len(KEYS)


def spec_with(**changes):
    message = spec_to_message(SPEC)
    for path, value in changes.items():
        target = message
        *parents, leaf = path.split("__")
        for parent in parents:
            target = getattr(target, parent)
        setattr(target, leaf, value)
    return message


BAD_CALLS = {
    "create_bad_name": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "table name must be", "CreateTable",
                        pb.CreateTableRequest(name="no/slash", spec=spec_to_message(SPEC))),
    "create_nul_name": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "without NUL", "CreateTable",
                        pb.CreateTableRequest(name="guarded\0x", spec=spec_to_message(SPEC))),
    "create_dim_zero": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "dim must be an integer in [1, 4294967296), got 0",
                        "CreateTable", pb.CreateTableRequest(name="t2", spec=spec_with(dim=0))),
    "create_unknown_optimizer": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "unknown optimizer 99", "CreateTable",
                                 pb.CreateTableRequest(name="t2", spec=spec_with(optimizer__kind=99))),
    "create_unspecified_optimizer": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "optimizer is unspecified", "CreateTable",
                                     pb.CreateTableRequest(name="t2", spec=spec_with(optimizer__kind=0))),
    "create_unknown_initializer": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "unknown initializer 7", "CreateTable",
                                   pb.CreateTableRequest(name="t2", spec=spec_with(initializer__kind=7))),
    "create_unspecified_initializer": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "initializer is unspecified",
                                       "CreateTable",
                                       pb.CreateTableRequest(name="t2", spec=spec_with(initializer__kind=0))),
    "create_unknown_missing_keys": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "unknown missing_keys 3", "CreateTable",
                                    pb.CreateTableRequest(name="t2", spec=spec_with(missing_keys=3))),
    "create_nan_lr": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "lr, eps and init_scale must be finite", "CreateTable",
                      pb.CreateTableRequest(name="t2", spec=spec_with(optimizer__lr=float("nan")))),
    "create_huge_lr": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "lr, eps and init_scale must be finite and in [0, 1e+06]",
                       "CreateTable", pb.CreateTableRequest(name="t2", spec=spec_with(optimizer__lr=1e39))),   # Inf
    "create_huge_init_scale": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "must be finite and in [0, 1e+06]",
                               "CreateTable", pb.CreateTableRequest(name="t2", spec=spec_with(initializer__scale=1e39))),
    "create_beta_of_one": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "betas must be in [0, 1)", "CreateTable",
                           pb.CreateTableRequest(name="t2", spec=spec_with(optimizer__beta2=1.0))),
    "create_exists": (C.ALREADY_EXISTS, "EXISTS", "already exists", "CreateTable",
                      pb.CreateTableRequest(name="guarded", spec=spec_to_message(SPEC))),
    "describe_unknown": (C.NOT_FOUND, "NOT_FOUND", "no table named 'nope'", "DescribeTable",
                         pb.DescribeTableRequest(table="nope")),
    "drop_unknown": (C.NOT_FOUND, "NOT_FOUND", "no table named 'nope'", "DropTable",
                     pb.DropTableRequest(table="nope")),
    "drop_nul_name": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "without NUL", "DropTable",
                      pb.DropTableRequest(table="guarded\0")),
    "lookup_unknown": (C.NOT_FOUND, "NOT_FOUND", "no table named 'nope'", "Lookup",
                       pb.LookupRequest(table="nope", keys=keys_bytes(1))),
    "lookup_malformed_keys": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "got 13 bytes, not a multiple of 8", "Lookup",
                              pb.LookupRequest(table="guarded", keys=b"x" * 13)),
    "lookup_oversized": (C.RESOURCE_EXHAUSTED, "TOO_LARGE", "batch of 5000 keys exceeds the shard's limit of 4096",
                         "Lookup", pb.LookupRequest(table="guarded", keys=np.arange(5000, dtype=np.uint64).tobytes())),
    "lookup_message_too_large": (C.RESOURCE_EXHAUSTED, "", "", "Lookup",
                                 pb.LookupRequest(table="guarded", keys=b"\0" * (2 << 20))),
    "update_wrong_dim": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "grads must hold 2 x 8 float32", "Update",
                         pb.UpdateRequest(table="guarded", keys=keys_bytes(1, 2), grads=floats(2, 7))),
    "update_nan": (C.INVALID_ARGUMENT, "NONFINITE", "contain NaN or Inf", "Update",
                   pb.UpdateRequest(table="guarded", keys=keys_bytes(1, 2), grads=floats(2, value=np.nan))),
    "update_inf": (C.INVALID_ARGUMENT, "NONFINITE", "contain NaN or Inf", "Update",
                   pb.UpdateRequest(table="guarded", keys=keys_bytes(1, 2), grads=floats(2, value=np.inf))),
    "update_duplicate_sum_overflows": (C.INVALID_ARGUMENT, "NONFINITE", "would store NaN or Inf in row 1", "Update",
                                       pb.UpdateRequest(table="guarded", keys=keys_bytes(2, 1, 1),
                                                        grads=np.repeat([[1.0], [3e38], [3e38]], DIM, 1)
                                                        .astype(np.float32).tobytes())),
    "update_state_overflows": (C.INVALID_ARGUMENT, "NONFINITE", "nothing was applied", "Update",   # Adagrad: 1e20²
                               pb.UpdateRequest(table="guarded", keys=keys_bytes(1, 2), grads=floats(2, value=1e20))),
    "update_reserved_key": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "is reserved", "Update",
                            pb.UpdateRequest(table="guarded", keys=keys_bytes(2**64 - 1), grads=floats(1))),
    "update_unknown": (C.NOT_FOUND, "NOT_FOUND", "no table named 'nope'", "Update",
                       pb.UpdateRequest(table="nope", keys=keys_bytes(1), grads=floats(1))),
    "update_wrong_counts": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "counts must hold 2 x 4-byte integers", "Update",
                            pb.UpdateRequest(table="guarded", keys=keys_bytes(1, 2), grads=floats(2),
                                             counts=np.ones(3, np.uint32).tobytes())),
    "update_zero_count": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "gradient 1 counts 0 contributions", "Update",
                          pb.UpdateRequest(table="guarded", keys=keys_bytes(1, 2), grads=floats(2),
                                           counts=np.array([1, 0], np.uint32).tobytes())),
    "refresh_unknown": (C.NOT_FOUND, "NOT_FOUND", "no table named 'nope'", "RefreshStale",
                        pb.RefreshStaleRequest(table="nope", keys=keys_bytes(1), versions=keys_bytes(0))),
    "refresh_wrong_versions": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "versions must hold 2 x 8-byte integers",
                               "RefreshStale", pb.RefreshStaleRequest(table="guarded", keys=keys_bytes(1, 2),
                                                                      versions=keys_bytes(0))),
    "refresh_malformed_keys": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "not a multiple of 8", "RefreshStale",
                               pb.RefreshStaleRequest(table="guarded", keys=b"x" * 9)),
    "refresh_oversized": (C.RESOURCE_EXHAUSTED, "TOO_LARGE", "batch of 5000 keys exceeds the shard's limit of 4096",
                          "RefreshStale", pb.RefreshStaleRequest(table="guarded",
                                                                 keys=np.arange(5000, dtype=np.uint64).tobytes())),
    "assign_wrong_rows": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "rows must hold 2 x 8 float32", "Assign",
                          pb.AssignRequest(table="guarded", keys=keys_bytes(1, 2), rows=floats(1))),
    "assign_wrong_state": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "state must hold 2 x 8 float32", "Assign",
                           pb.AssignRequest(table="guarded", keys=keys_bytes(1, 2), rows=floats(2),
                                            state=floats(2, 3))),
    "assign_nan_rows": (C.INVALID_ARGUMENT, "NONFINITE", "contain NaN or Inf", "Assign",
                        pb.AssignRequest(table="guarded", keys=keys_bytes(1, 2), rows=floats(2, value=np.nan))),
    "assign_over_capacity": (C.RESOURCE_EXHAUSTED, "CAPACITY", "capacity", "Assign",
                             pb.AssignRequest(table="guarded", keys=np.arange(100, 1100, dtype=np.uint64).tobytes(),
                                              rows=floats(1000))),
    "delete_malformed_keys": (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "not a multiple of 8", "Delete",
                              pb.DeleteRequest(table="guarded", keys=b"abc")),
    "delete_unknown": (C.NOT_FOUND, "NOT_FOUND", "no table named 'nope'", "Delete",
                       pb.DeleteRequest(table="nope", keys=b"")),
}


@pytest.mark.parametrize("case", sorted(BAD_CALLS))
def test_bad_unary_calls(stub, table, case):
    code, reason, pattern, method, request = BAD_CALLS[case]
    raises(code, pattern, getattr(stub, method), request, reason=reason)
    assert_intact(stub, table)


@pytest.mark.parametrize("name", ["n" * 20_000 + "\0", "\u00e9" * 20_000 + "\0"], ids=["ascii", "two_byte_utf8"])
def test_long_bad_names_are_echoed_shortened(stub, table, name):
    """Echoed whole, such a name overflowed gRPC's metadata limit: RESOURCE_EXHAUSTED instead of the refusal."""
    calls = [(stub.CreateTable, pb.CreateTableRequest(name=name, spec=spec_to_message(SPEC))),
             (stub.DescribeTable, pb.DescribeTableRequest(table=name)),
             (stub.DropTable, pb.DropTableRequest(table=name)),
             (stub.Lookup, pb.LookupRequest(table=name, keys=keys_bytes(1))),
             (stub.Update, pb.UpdateRequest(table=name, keys=keys_bytes(1), grads=floats(1))),
             (stub.Delete, pb.DeleteRequest(table=name, keys=keys_bytes(1))),
             (lambda r: list(stub.Export(r)), pb.ExportRequest(table=name)),
             (stub.Import, iter([pb.ImportRequest(table=name, keys=keys_bytes(1), rows=floats(1))]))]
    for call, request in calls:
        with pytest.raises(grpc.RpcError) as info:
            call(request)
        assert info.value.code() == C.INVALID_ARGUMENT, info.value.details()[:200]
        assert "without NUL" in info.value.details() and "\u2026" in info.value.details()
        assert len(info.value.details().encode()) <= 1024
        assert error_info(info.value) == ("embps.dev", "INVALID_ARGUMENT")
    assert_intact(stub, table)


def test_bad_streams(stub, table):
    raises(C.NOT_FOUND, "no table named 'nope'", lambda: list(stub.Export(pb.ExportRequest(table="nope"))),
           reason="NOT_FOUND")
    raises(C.INVALID_ARGUMENT, "must name its table", stub.Import, iter([pb.ImportRequest(keys=keys_bytes(1))]),
           reason="INVALID_ARGUMENT")
    good = pb.ImportRequest(table="other", keys=keys_bytes(900), rows=floats(1))
    bad = pb.ImportRequest(keys=keys_bytes(901), rows=floats(1, value=np.nan))
    stub.CreateTable(pb.CreateTableRequest(name="other", spec=spec_to_message(SPEC)))
    raises(C.INVALID_ARGUMENT, "(after 1 rows were imported)", stub.Import, iter([good, bad]), reason="NONFINITE")
    assert stub.DescribeTable(pb.DescribeTableRequest(table="other")).rows == 1
    stub.DropTable(pb.DropTableRequest(table="other"))
    assert_intact(stub, table)


def test_unspecified_missing_keys_and_absent_optimizer_take_the_defaults(stub, table):
    message = pb.TableSpec(dim=4, capacity=100)   # no optimizer, no initializer, missing_keys UNSPECIFIED
    info = stub.CreateTable(pb.CreateTableRequest(name="defaults", spec=message))
    assert info.spec.missing_keys == pb.MISSING_KEYS_INITIALIZE
    assert info.spec.optimizer.kind == pb.OPTIMIZER_KIND_ADAGRAD and info.spec.optimizer.lr == pytest.approx(0.01)
    assert info.spec.initializer.kind == pb.INITIALIZER_KIND_UNIFORM
    assert stub.DescribeTable(pb.DescribeTableRequest(table="defaults")).spec == info.spec
    stub.DropTable(pb.DropTableRequest(table="defaults"))
    assert_intact(stub, table)


def wire_call(address, request_bytes):
    """One raw request on the native data path, then a good lookup on the same connection if it
    stays open; returns (status name, message, whether the connection was closed)."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(request_bytes)
        status, message, _ = read_reply(sock)
        try:
            sock.sendall(header() + keys_bytes(1))
            closed = read_reply(sock)[0] != "OK"
        except (ConnectionError, struct.error):
            closed = True
        return status, message, closed


@pytest.mark.parametrize("case, request_bytes, status, pattern, closes", [
    ("bad_magic", header(magic=0xDEADBEEF) + keys_bytes(1), "PROTOCOL", "bad magic", True),
    ("bad_op", header(op=9) + keys_bytes(1), "PROTOCOL", "unknown operation 9", True),
    ("no_name", header(name=b"") + keys_bytes(1), "PROTOCOL", "name length 0", True),
    ("oversized", header(n=5000), "TOO_LARGE", "batch of 5000 keys exceeds the limit of 4096", True),
    ("too_many_bytes", header(op=2, n=4000, dim=100), "TOO_LARGE", "exceeds the limit of 1048576", True),
    ("no_keys_first", header(n=0), "OK", "", False),   # once a NULL iovec array: SIGSEGV
    ("unknown_table", header(name=b"nope") + keys_bytes(1), "NOT_FOUND", "no table named 'nope'", False),
    ("wrong_dim", header(op=2, dim=4) + keys_bytes(1) + floats(1, 4), "INVALID_ARGUMENT", "has dim 8", False),
    ("nan_grads", header(op=2) + keys_bytes(1) + floats(1, value=np.nan), "NONFINITE", "contain NaN or Inf", False),
    ("overflowing_grads", header(op=2, n=2) + keys_bytes(1, 2) + floats(2, value=1e20), "NONFINITE",
     "would store NaN or Inf", False),
    ("reserved_key", header(op=2) + keys_bytes(2**64 - 1) + floats(1), "INVALID_ARGUMENT", "reserved", False),
    ("nul_in_name", header(name=b"guarded\0zz") + keys_bytes(1), "INVALID_ARGUMENT", "table name must be", False),
    ("nul_in_update_name", header(op=2, name=b"guarded\0evil") + keys_bytes(51) + floats(1), "INVALID_ARGUMENT",
     "table name must be", False),
    ("slash_in_name", header(name=b"no/slash") + keys_bytes(1), "INVALID_ARGUMENT", "table name must be", False),
    ("zero_count", header(op=2, flags=2) + keys_bytes(1) + floats(1) + np.zeros(1, np.uint32).tobytes(),
     "INVALID_ARGUMENT", "counts 0 contributions", False),
    ("refresh_unknown_table", header(op=3, name=b"nope") + keys_bytes(1, 0, 0), "NOT_FOUND", "no table named 'nope'",
     False),
    ("refresh_wrong_dim", header(op=3, dim=4) + keys_bytes(1, 0, 0), "INVALID_ARGUMENT", "has dim 8", False),
    ("refresh_oversized", header(op=3, n=5000), "TOO_LARGE", "batch of 5000 keys exceeds the limit of 4096", True),
    ("dot_first_name", header(name=b".guarded") + keys_bytes(1), "INVALID_ARGUMENT", "table name must be", False),
])
def test_bad_data_path_requests(shard, stub, table, case, request_bytes, status, pattern, closes):
    got_status, message, closed = wire_call(tcp_address(shard), request_bytes)
    assert (got_status, closed) == (status, closes), message
    assert pattern in message
    assert_intact(stub, table)


def test_client_maps_data_path_errors_to_grpc_codes(shard, table):
    with PSClient(shard.cluster_config) as client:
        assert client.data_path_kinds() == ["tcp"]
        with pytest.raises(ShardError) as info:
            client.update("guarded", [1], np.full((1, DIM), np.nan, np.float32))
        assert info.value.code == C.INVALID_ARGUMENT and "contain NaN or Inf" in info.value.details
        assert info.value.reason == "NONFINITE"
        with pytest.raises(ShardError) as info:
            client.lookup("nope", [1])
        assert info.value.code == C.NOT_FOUND and info.value.reason == "NOT_FOUND"
        with pytest.raises(ShardError) as info:
            client.lookup("guarded", np.arange(5000))
        assert info.value.code == C.RESOURCE_EXHAUSTED and info.value.reason == "TOO_LARGE"
        np.testing.assert_array_equal(client.lookup("guarded", KEYS), table)   # a fresh connection serves


@pytest.mark.parametrize("path", ["tcp", "grpc"])
def test_client_errors_keep_their_reason_on_both_paths(shard, stub, table, path):
    """RESOURCE_EXHAUSTED is a full table or an oversized batch, INVALID_ARGUMENT a NaN or a bad shape:
    the reason tells them apart, whichever path the rows took."""
    full = TableSpec(dim=DIM, capacity=100, optimizer=OptimizerSpec("sgd"))
    with PSClient(dataclasses.replace(shard.cluster_config, data_path=path)) as client:
        client.create_table(f"full-{path}", full)
        client.update(f"full-{path}", np.arange(100), np.ones((100, DIM), np.float32))
        cases = [(C.INVALID_ARGUMENT, "NONFINITE", "guarded", [1], np.full((1, DIM), np.nan, np.float32)),
                 (C.INVALID_ARGUMENT, "INVALID_ARGUMENT", "guarded", [1], np.ones((1, DIM - 1), np.float32)),
                 (C.RESOURCE_EXHAUSTED, "TOO_LARGE", "guarded", np.arange(5000), np.ones((5000, DIM), np.float32)),
                 (C.RESOURCE_EXHAUSTED, "CAPACITY", f"full-{path}", np.arange(100, 2100),
                  np.ones((2000, DIM), np.float32))]
        for code, reason, name, keys, grads in cases:
            with pytest.raises(ShardError) as info:
                client.update(name, keys, grads)
            assert (info.value.code, info.value.reason) == (code, reason), info.value
            assert reason in str(info.value)
        assert client.data_path_kinds() == [path]
        assert client.describe_table(f"full-{path}").rows == 100
        client.drop_table(f"full-{path}")
    assert_intact(stub, table)
