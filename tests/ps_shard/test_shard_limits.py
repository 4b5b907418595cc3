"""The shard's resource limits (docs/operations.md): a reply is checked against max_message_bytes before
it is built, a table whose row cannot fit a message is refused and any other exports row by row if it
must, the tables per shard and the calls in flight are bounded, and a reply stream whose client stops
reading is cut after stream_send_timeout_seconds, releasing its table."""

import threading
import time
import urllib.request

import grpc
import numpy as np
import pytest

from embps.api import OptimizerSpec, TableSpec
from embps.common.local_cluster import LocalShard
from embps.common.spec_messages import spec_to_message
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc
from helpers.grpc_calls import error_info

C = grpc.StatusCode
MAX_MESSAGE_BYTES = 512 << 10   # rows are at most 65536 floats (256 KiB), 512 KiB with Adagrad's state
MAX_TABLES = 4
SEND_TIMEOUT_SECONDS = 2


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    with LocalShard(tmp_path_factory.mktemp("limits"), max_batch_keys=4096, max_message_bytes=MAX_MESSAGE_BYTES,
                    max_tables=MAX_TABLES, stream_send_timeout_seconds=SEND_TIMEOUT_SECONDS) as s:
        yield s


@pytest.fixture
def stub(shard):
    with grpc.insecure_channel(shard.address, options=[("grpc.max_receive_message_length", 64 << 20)]) as channel:
        stub = pb_grpc.ParameterShardStub(channel)
        yield stub
        assert not stub.ListTables(pb.ListTablesRequest()).tables   # every test drops its tables


def create(stub, name, dim, optimizer="sgd", capacity=100):
    spec = TableSpec(dim=dim, capacity=capacity, optimizer=OptimizerSpec(optimizer))
    return stub.CreateTable(pb.CreateTableRequest(name=name, spec=spec_to_message(spec)), timeout=30)


def fill(stub, name, dim, n):
    """Rows 0..n-1 (row k all k), assigned in requests below the message limit; returns them."""
    rows = np.repeat(np.arange(n, dtype=np.float32)[:, None], dim, axis=1)
    step = max(1, (MAX_MESSAGE_BYTES // 2) // (4 * dim + 8))
    for lo in range(0, n, step):
        keys = np.arange(lo, min(n, lo + step), dtype=np.uint64)
        stub.Assign(pb.AssignRequest(table=name, keys=keys.tobytes(), rows=rows[keys].tobytes()), timeout=30)
    return rows


def refused(code, reason, pattern, call, *args):
    """The call fails with code, a message holding pattern and reason ("": a refusal by gRPC itself)."""
    with pytest.raises(grpc.RpcError) as info:
        call(*args, timeout=30)
    assert info.value.code() == code, info.value.details()
    assert pattern in info.value.details(), info.value.details()
    assert error_info(info.value) == (reason and ("embps.dev", reason))


def metrics(shard) -> str:
    return urllib.request.urlopen(f"http://{shard.addresses['metrics']}/metrics", timeout=10).read().decode()


def test_a_lookup_whose_reply_exceeds_the_message_limit_is_refused_before_it_is_built(stub):
    create(stub, "wide", 1024, "adagrad")   # 4 KiB rows, 8 KiB with their state
    fit = (MAX_MESSAGE_BYTES - 32) // (4 * 1024 + 1)
    keys = np.arange(300, dtype=np.uint64).tobytes()
    refused(C.RESOURCE_EXHAUSTED, "TOO_LARGE",
            f"a lookup of 300 keys of table 'wide' would reply with {300 * 4097} bytes, above the shard's "
            f"max_message_bytes of {MAX_MESSAGE_BYTES}; ask for at most {fit} keys per call",
            stub.Lookup, pb.LookupRequest(table="wide", keys=keys))
    refused(C.RESOURCE_EXHAUSTED, "TOO_LARGE", "a lookup of 200 keys", stub.Lookup,
            pb.LookupRequest(table="wide", keys=np.arange(200, dtype=np.uint64).tobytes(), with_state=True))
    reply = stub.Lookup(pb.LookupRequest(table="wide", keys=np.arange(fit, dtype=np.uint64).tobytes()))
    assert len(reply.rows) == fit * 4096   # the most that fits is served
    stub.DropTable(pb.DropTableRequest(table="wide"))


def test_a_table_whose_row_cannot_fit_a_message_is_refused(stub):
    refused(C.INVALID_ARGUMENT, "INVALID_ARGUMENT",
            f"a row of dim 65536 with its optimizer state needs a message of {8 + 4 * 2 * 65536 + 32} bytes, more "
            f"than the shard's max_message_bytes of {MAX_MESSAGE_BYTES}",
            stub.CreateTable, pb.CreateTableRequest(name="too_wide", spec=spec_to_message(
                TableSpec(dim=65536, capacity=4, optimizer=OptimizerSpec("adagrad")))))
    assert not stub.ListTables(pb.ListTablesRequest()).tables
    create(stub, "wide_sgd", 65536, capacity=4)   # without state the same row fits
    stub.DropTable(pb.DropTableRequest(table="wide_sgd"))


def test_rows_wider_than_a_sixteenth_of_the_limit_export_row_by_row(stub):
    dim = 65536   # 256 KiB rows: 16 of them, the least the store exports at once, are 4 MiB
    create(stub, "wide_rows", dim, capacity=16)
    rows = fill(stub, "wide_rows", dim, 3)
    chunks = list(stub.Export(pb.ExportRequest(table="wide_rows"), timeout=60))
    assert [len(chunk.keys) // 8 for chunk in chunks] == [1, 1, 1]
    got = {int(np.frombuffer(c.keys, np.uint64)[0]): np.frombuffer(c.rows, np.float32) for c in chunks}
    for key, row in got.items():
        np.testing.assert_array_equal(row, rows[key])
    assert sorted(got) == [0, 1, 2]
    stub.DropTable(pb.DropTableRequest(table="wide_rows"))


def test_tables_per_shard_are_bounded(stub):
    for i in range(MAX_TABLES):
        create(stub, f"t{i}", 4)
    refused(C.RESOURCE_EXHAUSTED, "CAPACITY", f"the shard holds {MAX_TABLES} tables, its limit (max_tables)",
            stub.CreateTable, pb.CreateTableRequest(name="one_more", spec=spec_to_message(TableSpec(dim=4,
                                                                                                  capacity=100))))
    again = pb.CreateTableRequest(name="t0", spec=spec_to_message(TableSpec(dim=4, capacity=100,
                                                                            optimizer=OptimizerSpec("sgd"))),
                                  if_not_exists=True)
    assert stub.CreateTable(again).name == "t0"   # an existing table is no new one
    stub.DropTable(pb.DropTableRequest(table="t0"))
    create(stub, "one_more", 4)
    for name in ("t1", "t2", "t3", "one_more"):
        stub.DropTable(pb.DropTableRequest(table=name))


def test_an_export_whose_client_stops_reading_is_cut_and_releases_its_table(shard, stub):
    dim, n = 1024, 8192   # 32 MiB: far more than the sockets and gRPC's windows buffer
    create(stub, "stalled", dim, capacity=n)
    fill(stub, "stalled", dim, n)
    export = stub.Export(pb.ExportRequest(table="stalled"), timeout=300)
    next(export)   # the shard holds the table now (a drop before it would win the race); no more is read
    stub.DropTable(pb.DropTableRequest(table="stalled"), timeout=120)      # waits for the table's release
    with pytest.raises(grpc.RpcError) as info:
        for _ in export:
            pass
    assert info.value.code() == C.CANCELLED, info.value.details()
    log = (shard.dir / "shard.log").read_text()
    assert '"msg": "reply stream cut: its client took no message"' in log
    assert '"method": "/embps.v1.ParameterShard/Export"' in log
    create(stub, "stalled", 4)   # the name is free again
    stub.DropTable(pb.DropTableRequest(table="stalled"))


def test_calls_beyond_the_concurrency_limit_are_refused(tmp_path):
    with LocalShard(tmp_path, data_listen="", grpc_max_concurrent_rpcs=2) as shard, \
            grpc.insecure_channel(shard.address) as channel:
        stub = pb_grpc.ParameterShardStub(channel)
        create(stub, "t", 4)
        release = threading.Event()

        def chunks(key):   # an import that holds its call open until released
            yield pb.ImportRequest(table="t", keys=np.array([key], np.uint64).tobytes(),
                                   rows=np.ones(4, np.float32).tobytes())
            release.wait(120)

        imports = [stub.Import.future(chunks(key), timeout=180) for key in (1, 2)]
        try:
            # Both imports are in flight once both rows are in; the metrics endpoint is no gRPC call.
            deadline = time.monotonic() + 60
            while 'embps_shard_table_rows{table="t"} 2.0' not in metrics(shard):
                assert time.monotonic() < deadline, "the imports' first chunks did not arrive"
                time.sleep(0.05)
            refused(C.RESOURCE_EXHAUSTED, "", "Concurrent RPC limit exceeded", stub.DescribeTable,
                    pb.DescribeTableRequest(table="t"))
        finally:
            release.set()
        assert [future.result().rows for future in imports] == [1, 1]
        assert stub.DescribeTable(pb.DescribeTableRequest(table="t")).rows == 2
