"""Slow, stalled, idle and surplus clients of the native TCP data path, against real shards: each is cut
after a bounded wait, holds nothing beyond it, and every other client keeps being served."""

import dataclasses
import socket
import threading
import time

import grpc
import numpy as np
import pytest
from helpers.data_wire import data_connections_open, header, keys_bytes, read_reply, shard_metric, tcp_address

from embps.client import PSClient, ShardError
from embps.client.tcp_data_path import TcpDataPath
from embps.common.local_cluster import LocalShard
from embps.ps_shard.config import ShardConfig
from embps.api import InitializerSpec, InvalidArgument, OptimizerSpec, TableSpec
from embps.store import Store
from embps.store.data_server import DataServer

BOUND = 60.0   # generous: every wait below ends far sooner unless the defect is back


@pytest.fixture(scope="module")
def slow_shard(tmp_path_factory):
    with LocalShard(tmp_path_factory.mktemp("slow"), data_send_timeout_seconds=2) as s:
        yield s


@pytest.fixture(scope="module")
def idle_shard(tmp_path_factory):
    with LocalShard(tmp_path_factory.mktemp("idle"), data_idle_timeout_seconds=1,
                    data_receive_timeout_seconds=1) as s:
        yield s


@pytest.fixture(scope="module")
def crowded_shard(tmp_path_factory):
    with LocalShard(tmp_path_factory.mktemp("crowded"), data_max_connections=4) as s:
        yield s


def tcp_client(shard) -> PSClient:
    return PSClient(dataclasses.replace(shard.cluster_config, data_path="tcp", deadline_seconds=30))


def stalled_socket(shard) -> socket.socket:
    """A connection with a tiny receive window: what it does not read stays in the shard's send buffer."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(BOUND)
    sock.connect(tcp_address(shard))
    return sock


def wait_until(predicate, what: str) -> None:
    deadline = time.monotonic() + BOUND
    while not predicate():
        assert time.monotonic() < deadline, f"still waiting, after {BOUND} s, for {what}"
        time.sleep(0.05)


def test_a_trickling_reader_is_cut_at_the_send_deadline(slow_shard):
    """The deadline covers the whole reply: a reader that takes a little every 0.2 s is not kept
    alive by each send making progress, and lookups on other tables and a drop go on meanwhile."""
    dim, n = 2048, 4096
    reply_bytes = n * (dim * 4 + 1)
    third_rows = np.arange(32, dtype=np.float32).reshape(4, 8)
    with tcp_client(slow_shard) as client:
        client.create_table("wide", TableSpec(dim=dim, capacity=n))
        client.create_table("third", TableSpec(dim=8, capacity=100))
        client.create_table("unrelated", TableSpec(dim=8, capacity=100))
        client.assign("third", [1, 2, 3, 4], third_rows)
        sock = stalled_socket(slow_shard)
        sock.sendall(header(name=b"wide", n=n, dim=dim) + np.arange(n, dtype=np.uint64).tobytes())
        dropped = []
        drop = threading.Thread(target=lambda: dropped.append(client.drop_table("unrelated")))
        started, received = time.monotonic(), 0
        while True:
            try:
                chunk = sock.recv(16384)
            except ConnectionResetError:
                break
            if not chunk:
                break
            received += len(chunk)
            if not drop.is_alive() and not dropped:
                drop.start()
            np.testing.assert_array_equal(client.lookup("third", [1, 2, 3, 4]), third_rows)
            assert time.monotonic() - started < BOUND, f"a reader taking 80 KiB/s still connected ({received} B)"
            time.sleep(0.2)
        sock.close()
        assert received < reply_bytes
        drop.join(BOUND)
        assert dropped == [None] and "unrelated" not in client.list_tables()
        assert client.lookup("wide", [5]).shape == (1, dim)   # the shard serves the table it was sending
    assert shard_metric(slow_shard, 'embps_shard_data_connections_closed_total{reason="timed_out"}') >= 1


def test_writers_wait_for_the_slabs_a_stalled_reader_pins(slow_shard):
    """A stalled reader keeps every slab retired after it entered: updates wait for the send deadline
    to cut it (and release its guard) rather than fail when the pool's headroom is used up."""
    dim, n_keys, lr, updates = 64, 64, 0.25, 200
    keys = np.arange(n_keys, dtype=np.uint64)
    with tcp_client(slow_shard) as client:
        client.create_table("small64", TableSpec(dim=dim, capacity=n_keys, optimizer=OptimizerSpec("sgd", lr=lr),
                                                 initializer=InitializerSpec("zeros")))
        client.assign("small64", keys, np.zeros((n_keys, dim), np.float32))
        sock = stalled_socket(slow_shard)
        batch = 65536   # a 16 MiB reply: far more than the socket buffers hold
        sock.sendall(header(name=b"small64", n=batch, dim=dim) + np.resize(keys, batch).tobytes())
        assert len(sock.recv(16, socket.MSG_WAITALL)) == 16   # the reply has begun: the guard is held
        grads = np.ones((n_keys, dim), np.float32)
        for _ in range(updates):   # each retires 64 slabs; the pool has 4096 to spare
            client.update("small64", keys, grads)
        sock.close()
        np.testing.assert_array_equal(client.lookup("small64", keys), np.full((n_keys, dim), -lr * updates))


def test_an_idle_connection_is_closed(idle_shard):
    with socket.create_connection(tcp_address(idle_shard), timeout=BOUND) as sock:
        assert sock.recv(1) == b""


@pytest.mark.parametrize("first, trickle", [(16, b""), (8, b""), (16, b"\0" * 8)], ids=["body", "header", "trickle"])
def test_a_half_sent_request_is_closed(idle_shard, first, trickle):
    """A request's bytes must all arrive within the receive timeout, however they trickle in."""
    request = header(name=b"nope", n=1) + keys_bytes(7)
    started = time.monotonic()
    with socket.create_connection(tcp_address(idle_shard), timeout=BOUND) as sock:
        sock.sendall(request[:first])
        try:
            for byte in trickle:
                sock.sendall(bytes([byte]))
                time.sleep(0.3)
            assert sock.recv(1) == b""
        except (BrokenPipeError, ConnectionResetError):
            pass
    assert time.monotonic() - started < BOUND


def test_a_client_reconnects_after_its_idle_connection_was_closed(idle_shard):
    with tcp_client(idle_shard) as client:
        client.create_table("kept", TableSpec(dim=4, capacity=10, optimizer=OptimizerSpec("sgd", lr=1.0),
                                              initializer=InitializerSpec("zeros")))
        client.update("kept", [3], np.ones((1, 4), np.float32))
        wait_until(lambda: data_connections_open(idle_shard) == 0, "the shard to close the idle connection")
        client.update("kept", [3], np.ones((1, 4), np.float32))   # not retried: the stale connection is skipped
        np.testing.assert_array_equal(client.lookup("kept", [3]), [[-2.0] * 4])


def test_a_client_beyond_the_connection_limit_is_told_so(crowded_shard):
    with tcp_client(crowded_shard) as client:
        client.create_table("t", TableSpec(dim=8, capacity=10))
    held = [socket.create_connection(tcp_address(crowded_shard), timeout=BOUND) for _ in range(4)]
    for sock in held:   # each is being served, so each holds a slot
        sock.sendall(header(name=b"t") + keys_bytes(1))
        assert read_reply(sock)[0] == "OK"
    with socket.create_connection(tcp_address(crowded_shard), timeout=BOUND) as sock:
        status, message, _ = read_reply(sock)
        assert (status, sock.recv(1)) == ("TOO_LARGE", b"")
        assert "too many connections" in message and "at most 4" in message
    path = TcpDataPath(f"127.0.0.1:{tcp_address(crowded_shard)[1]}", timeout=BOUND)
    with pytest.raises(ShardError) as info:
        path.lookup("t", np.array([1], np.uint64))
    assert info.value.code == grpc.StatusCode.RESOURCE_EXHAUSTED and "too many connections" in info.value.details
    held.pop().close()

    def served():
        try:
            return path.lookup("t", np.array([1], np.uint64))[0].shape == (1, 8)
        except ShardError as error:
            assert error.code == grpc.StatusCode.RESOURCE_EXHAUSTED
            return False

    wait_until(served, "a freed slot to serve a new client")
    path.close()
    for sock in held:
        sock.close()
    assert shard_metric(crowded_shard, 'embps_shard_data_connections_closed_total{reason="refused"}') >= 2


@pytest.mark.parametrize("setting, value", [("data_max_connections", 0), ("data_send_timeout_seconds", 0),
                                            ("data_receive_timeout_seconds", -1), ("data_idle_timeout_seconds", 1e9)])
def test_limits_out_of_range_are_refused(setting, value):
    with pytest.raises(ValueError, match=setting):
        ShardConfig(data_dir="unused", **{setting: value})


def test_a_send_timeout_writers_cannot_wait_out_is_refused(tmp_path):
    with Store(tmp_path) as store, pytest.raises(InvalidArgument, match="must be below 60000 ms"):
        DataServer(store, "127.0.0.1", 0, 16, 1 << 16, send_timeout_seconds=60)
