"""Tables created, dropped, reopened and filled against a real shard: concurrent lifecycle calls never
crash it, a drop waits only for its own table, a failed create leaves nothing, a table file that cannot
open is reported while the others are served, and storage is reserved when a table is created."""

import os
import socket
import struct
import subprocess
import threading
import time

import grpc
import numpy as np
import pytest

from embps.client.errors import ShardError
from embps.client.tcp_data_path import TcpDataPath
from embps.common.addresses import split_host_port
from embps.common.local_cluster import LocalShard
from embps.common.spec_messages import spec_to_message
from embps.api import OptimizerSpec, TableSpec
from embps.store._native import lib
from embps.v1 import ps_shard_pb2 as pb
from embps.v1 import ps_shard_pb2_grpc as pb_grpc

C = grpc.StatusCode
PAIR_SPEC = spec_to_message(TableSpec(dim=4, capacity=100))
KEYS = np.arange(1, 9, dtype=np.uint64)


def code_of(call) -> C:
    try:
        call()
        return C.OK
    except grpc.RpcError as error:
        return error.code()
    except ShardError as error:
        return error.code


def tcp_target(shard) -> tuple[str, int]:
    host, port = split_host_port(shard.addresses["tcp"])
    return host or "127.0.0.1", int(port)


def tcp_path(shard) -> TcpDataPath:
    host, port = tcp_target(shard)
    return TcpDataPath(f"{host}:{port}", 20)


def store_files(shard) -> list[str]:
    return sorted(os.listdir(shard.settings["data_dir"]))


@pytest.fixture
def stub(shard):
    with grpc.insecure_channel(shard.address) as channel:
        yield pb_grpc.ParameterShardStub(channel)


def assert_serving(shard, stub):
    assert shard.process.poll() is None, "the shard died"
    stub.CreateTable(pb.CreateTableRequest(name="alive", spec=PAIR_SPEC, if_not_exists=True), timeout=30)
    stub.Assign(pb.AssignRequest(table="alive", keys=KEYS.tobytes(), rows=np.ones((8, 4), np.float32).tobytes()))
    reply = stub.Lookup(pb.LookupRequest(table="alive", keys=KEYS.tobytes()), timeout=30)
    np.testing.assert_array_equal(np.frombuffer(reply.rows, np.float32), np.ones(32))


# ---- every lifecycle call against every other ------------------------------------------------------

def lifecycle_calls(stub, tcp):
    """name -> (call, the codes some order of the calls allows) on the table "s_pair"."""
    describe, drop = pb.DescribeTableRequest(table="s_pair"), pb.DropTableRequest(table="s_pair")
    grads = np.full((8, 4), 0.5, np.float32)
    chunk = pb.ImportRequest(table="s_pair", keys=KEYS.tobytes(), rows=grads.tobytes())
    exists_or_not = {C.OK, C.NOT_FOUND}
    return {
        "create": (lambda: stub.CreateTable(pb.CreateTableRequest(name="s_pair", spec=PAIR_SPEC), timeout=60),
                   {C.OK, C.ALREADY_EXISTS}),
        "create_if_not_exists": (lambda: stub.CreateTable(pb.CreateTableRequest(
            name="s_pair", spec=PAIR_SPEC, if_not_exists=True), timeout=60), {C.OK}),
        "drop": (lambda: stub.DropTable(drop, timeout=60), exists_or_not),
        "drop_too": (lambda: stub.DropTable(drop, timeout=60), exists_or_not),
        "describe": (lambda: stub.DescribeTable(describe, timeout=60), exists_or_not),
        "grpc_lookup": (lambda: stub.Lookup(pb.LookupRequest(table="s_pair", keys=KEYS.tobytes(), with_state=True),
                                            timeout=60), exists_or_not),
        "grpc_update": (lambda: stub.Update(pb.UpdateRequest(table="s_pair", keys=KEYS.tobytes(),
                                                             grads=grads.tobytes()), timeout=60), exists_or_not),
        "tcp_lookup": (lambda: tcp.lookup("s_pair", KEYS, 4, timeout=60), exists_or_not),
        "tcp_update": (lambda: tcp.update("s_pair", KEYS, grads, timeout=60), exists_or_not),
        "export": (lambda: list(stub.Export(pb.ExportRequest(table="s_pair"), timeout=60)), exists_or_not),
        "import": (lambda: stub.Import(iter([chunk]), timeout=60), exists_or_not),
        "stats": (lambda: stub.GetShardStats(pb.GetShardStatsRequest(), timeout=60), {C.OK}),
        "list": (lambda: stub.ListTables(pb.ListTablesRequest(), timeout=60), {C.OK}),
    }


def test_lifecycle_calls_of_one_table_race_safely(shard, stub):
    """Issue 10 item 1: CreateTable and DropTable of one name in loops (the shard died of SIGSEGV within
    a few calls), racing every other call on it over gRPC and the TCP data path."""
    tcp = tcp_path(shard)
    calls = lifecycle_calls(stub, tcp)
    seen: dict[str, set] = {name: set() for name in calls}

    def hammer(name):
        call, _ = calls[name]
        for _ in range(120):
            seen[name].add(code_of(call))

    threads = [threading.Thread(target=hammer, args=(name,)) for name in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    tcp.close()
    unexpected = {name: codes - calls[name][1] for name, codes in seen.items() if codes - calls[name][1]}
    assert not unexpected
    assert C.OK in seen["drop"] | seen["drop_too"] and C.OK in seen["grpc_update"]   # the race was run
    assert_serving(shard, stub)


def test_two_drops_of_one_table_one_succeeds(shard, stub):
    for _ in range(10):
        stub.CreateTable(pb.CreateTableRequest(name="s_twice", spec=PAIR_SPEC))
        barrier = threading.Barrier(2)
        codes = []

        def drop():
            barrier.wait()
            codes.append(code_of(lambda: stub.DropTable(pb.DropTableRequest(table="s_twice"), timeout=60)))

        threads = [threading.Thread(target=drop) for _ in range(2)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert sorted(codes, key=lambda c: c.name) == [C.NOT_FOUND, C.OK]


# ---- a stalled reader holds only its own table ------------------------------------------------------

@pytest.fixture(scope="module")
def patient_shard(tmp_path_factory):
    """A shard that waits 55 s (near the longest it allows) for a stalled TCP reader, so that only a
    per-table exclusion lets the calls below (20 s deadlines) through meanwhile."""
    with LocalShard(tmp_path_factory.mktemp("patient"), max_batch_keys=4096, max_message_bytes=1 << 20,
                    data_send_timeout_seconds=55) as s:
        yield s


def stall_tcp_reader(shard, table: str, dim: int) -> socket.socket:
    """Sends lookups whose replies far exceed the socket buffers, and reads none."""
    keys = np.arange(4096, dtype=np.uint64).tobytes()
    request = struct.pack("<IBBBBII", lib.EMBPS_WIRE_MAGIC, lib.EMBPS_WIRE_OP_LOOKUP, 0, len(table), 0, 4096, dim)
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(tcp_target(shard))
    # 40 replies of 1 MB; the requests may not all fit in the buffers either, once the shard stops reading
    threading.Thread(target=sock.sendall, args=((request + table.encode() + keys) * 40,), daemon=True).start()
    return sock


def tcp_lookups_done(stub) -> int:
    ops = {op.operation: op for op in stub.GetShardStats(pb.GetShardStatsRequest(), timeout=60).operations}
    return ops["tcp.lookup"].requests if "tcp.lookup" in ops else 0


def wait_until_stalled(stub, deadline_seconds=60.0) -> None:
    """Until the shard's count of answered TCP lookups stops moving (its send is blocked)."""
    deadline, last = time.monotonic() + deadline_seconds, -1
    while time.monotonic() < deadline:
        done = tcp_lookups_done(stub)
        if done == last:
            return
        last = done
        time.sleep(0.5)


def test_a_stalled_reader_delays_no_other_table(patient_shard):
    """Issue 10 items 1 and 4: with one TCP client and one gRPC Export stalled on a table, a drop of an
    unrelated table used to wait for them (a store-wide drop lock) and so did every call behind it."""
    shard = patient_shard
    with grpc.insecure_channel(shard.address) as channel:
        stub = pb_grpc.ParameterShardStub(channel)
        dim = 64
        spec = spec_to_message(TableSpec(dim=dim, capacity=60_000, optimizer=OptimizerSpec("sgd")))
        for name in ("stalled", "unrelated", "third"):
            stub.CreateTable(pb.CreateTableRequest(name=name, spec=spec))
        rows = np.ones((1000, dim), np.float32).tobytes()
        for lo in range(0, 50_000, 1000):
            stub.Assign(pb.AssignRequest(table="stalled", keys=np.arange(lo, lo + 1000, dtype=np.uint64).tobytes(),
                                         rows=rows))
        export = stub.Export(pb.ExportRequest(table="stalled", chunk_rows=64))
        next(export)   # then read no more: 13 MB wait in the shard
        sock = stall_tcp_reader(shard, "stalled", dim)
        try:
            wait_until_stalled(stub)
            stub.DropTable(pb.DropTableRequest(table="unrelated"), timeout=20)
            stub.Lookup(pb.LookupRequest(table="third", keys=KEYS.tobytes()), timeout=20)
            tcp = tcp_path(shard)
            tcp.update("third", KEYS, np.ones((8, dim), np.float32))
            tcp.close()
            assert [t.name for t in stub.ListTables(pb.ListTablesRequest(), timeout=20).tables] \
                == ["stalled", "third"]
        finally:
            sock.shutdown(socket.SHUT_RDWR)   # wakes the sending thread too
            sock.close()
            export.cancel()
        stub.DropTable(pb.DropTableRequest(table="stalled"), timeout=60)   # its readers are gone: it goes too
        assert shard.process.poll() is None


# ---- a table exists only once it opened; a file that cannot open is reported ----------------------

def test_failed_create_leaves_no_file_and_the_shard_restarts(tmp_path):
    """Issue 10 item 2: CreateTable(dim 1, capacity 2^32) failed but left <name>.table, and the next start
    exited with MemoryError."""
    with LocalShard(tmp_path) as shard, grpc.insecure_channel(shard.address) as channel:
        stub = pb_grpc.ParameterShardStub(channel)
        for capacity in (2**32, 2**36):
            with pytest.raises(grpc.RpcError) as info:
                stub.CreateTable(pb.CreateTableRequest(name="s_big", spec=spec_to_message(TableSpec(1, capacity))))
            assert info.value.code() == C.RESOURCE_EXHAUSTED, info.value.details()
            assert shard.settings["data_dir"] not in info.value.details()
        assert store_files(shard) == ["LOCK"]
        assert_serving(shard, stub)
        shard.restart()
        assert_serving(shard, stub)


def corrupt_header(path) -> None:
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF   # inside the header: its checksum catches it
    path.write_bytes(bytes(data))


def test_a_table_file_that_cannot_open_is_reported_and_the_others_served(tmp_path):
    """Issue 10 item 2: a start-up that finds a table it cannot open keeps serving the others (health
    SERVING, LocalShard waits for it), and reports that one in Stats, in its errors and in the log."""
    with LocalShard(tmp_path) as shard:
        with grpc.insecure_channel(shard.address) as channel:
            stub = pb_grpc.ParameterShardStub(channel)
            for name in ("good", "bad"):
                stub.CreateTable(pb.CreateTableRequest(name=name, spec=PAIR_SPEC))
            stub.Assign(pb.AssignRequest(table="good", keys=KEYS.tobytes(),
                                         rows=np.full((8, 4), 2.0, np.float32).tobytes()))
        shard.stop()
        corrupt_header(tmp_path / "store" / "bad.table")
        shard.start()
        with grpc.insecure_channel(shard.address) as channel:
            stub = pb_grpc.ParameterShardStub(channel)
            unopenable = dict(stub.GetShardStats(pb.GetShardStatsRequest()).unopenable_tables)
            assert list(unopenable) == ["bad"] and "checksum" in unopenable["bad"]
            assert shard.settings["data_dir"] not in unopenable["bad"]
            assert "table file cannot be opened" in (tmp_path / "shard.log").read_text()
            reply = stub.Lookup(pb.LookupRequest(table="good", keys=KEYS.tobytes()))
            np.testing.assert_array_equal(np.frombuffer(reply.rows, np.float32), np.full(32, 2.0))
            tcp = tcp_path(shard)
            rows, _, found = tcp.lookup("good", KEYS, 4)
            tcp.close()
            assert found.all() and (rows == 2.0).all()
            for call, code, pattern in (
                    (lambda: stub.Lookup(pb.LookupRequest(table="bad", keys=KEYS.tobytes())), C.DATA_LOSS, "checksum"),
                    (lambda: stub.CreateTable(pb.CreateTableRequest(name="bad", spec=PAIR_SPEC)), C.ALREADY_EXISTS,
                     "could not be opened")):
                with pytest.raises(grpc.RpcError) as info:
                    call()
                assert info.value.code() == code and pattern in info.value.details(), info.value.details()
            assert [t.name for t in stub.ListTables(pb.ListTablesRequest()).tables] == ["good"]
            stub.DropTable(pb.DropTableRequest(table="bad"))   # removes the file
            assert not stub.GetShardStats(pb.GetShardStatsRequest()).unopenable_tables
            stub.CreateTable(pb.CreateTableRequest(name="bad", spec=PAIR_SPEC))
            assert_serving(shard, stub)


# ---- storage is reserved at create ---------------------------------------------------------------

@pytest.fixture
def small_tmpfs(tmp_path):
    """A 24 MiB file system the shard's store can fill."""
    mount = tmp_path / "pm"
    mount.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)], capture_output=True,
                             text=True)
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs for this test (it needs root): {mounted.stderr.strip()}")
    yield mount
    subprocess.run(["umount", "-l", str(mount)], check=True)


def test_storage_is_reserved_when_a_table_is_created(small_tmpfs):
    """Issue 10 item 3: tables were sparse files, so a create was accepted beyond the free space, and
    filling it killed the shard with SIGBUS.  Now the blocks are reserved, or the create refused."""
    with LocalShard(small_tmpfs, max_batch_keys=4096, max_message_bytes=1 << 20) as shard, \
            grpc.insecure_channel(shard.address) as channel:
        stub = pb_grpc.ParameterShardStub(channel)

        def create(name, capacity):
            spec = spec_to_message(TableSpec(dim=32, capacity=capacity, optimizer=OptimizerSpec("sgd")))
            return code_of(lambda: stub.CreateTable(pb.CreateTableRequest(name=name, spec=spec)))

        with pytest.raises(grpc.RpcError) as info:   # 150 MB on 24 MiB
            stub.CreateTable(pb.CreateTableRequest(name="huge", spec=spec_to_message(TableSpec(32, 1_000_000))))
        assert info.value.code() == C.RESOURCE_EXHAUSTED and "not enough storage" in info.value.details()
        assert str(small_tmpfs) not in info.value.details()
        assert create("first", 50_000) == C.OK                # an 8 MB file
        assert create("second", 120_000) == C.RESOURCE_EXHAUSTED   # 20 MB: only the first's 8 are taken
        assert store_files(shard) == ["LOCK", "first.table"]
        rows = np.random.default_rng(0).standard_normal((50_000, 32)).astype(np.float32)
        for lo in range(0, 50_000, 4000):   # the whole table: every block it writes was reserved
            stub.Assign(pb.AssignRequest(table="first", keys=np.arange(lo, min(lo + 4000, 50_000),
                                                                       dtype=np.uint64).tobytes(),
                                         rows=rows[lo:lo + 4000].tobytes()))
        reply = stub.Lookup(pb.LookupRequest(table="first", keys=np.arange(0, 50_000, 997, dtype=np.uint64).tobytes()))
        np.testing.assert_array_equal(np.frombuffer(reply.rows, np.float32).reshape(-1, 32), rows[::997])
        assert stub.DescribeTable(pb.DescribeTableRequest(table="first")).rows == 50_000
        assert shard.process.poll() is None


def test_a_shape_beyond_the_file_system_is_refused_precisely(shard, stub):
    """Issue 10 item 3: dim 65536 x capacity 2^36 needs a 57 PB file: never INTERNAL, no server path."""
    spec = spec_to_message(TableSpec(dim=65536, capacity=2**36, optimizer=OptimizerSpec("adam")))
    with pytest.raises(grpc.RpcError) as info:
        stub.CreateTable(pb.CreateTableRequest(name="s_vast", spec=spec))
    assert info.value.code() in (C.RESOURCE_EXHAUSTED, C.INVALID_ARGUMENT), info.value.details()
    assert shard.settings["data_dir"] not in info.value.details()
    assert "s_vast.table" not in store_files(shard) and "s_vast.creating" not in store_files(shard)
