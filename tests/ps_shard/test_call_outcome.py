"""How a shard call ends, streams included, on a real gRPC server with the shard's CallOutcome around
handlers that fail on purpose: a store failure is answered with its code and reason; anything else is
logged with its traceback and counted as INTERNAL; a call its client left is counted CANCELLED.
Never OK."""

import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

from embps.api import NonFiniteValues
from embps.api.status import reason_of_rpc_error
from embps.ps_shard.call_outcome import CallOutcome
from embps.ps_shard.metrics import ShardMetrics


def wait_until_cancelled(context) -> None:
    deadline = time.monotonic() + 20
    while context.is_active() and time.monotonic() < deadline:
        time.sleep(0.01)


@pytest.fixture
def calls():
    """Export streams 3 chunks, then ends as its request says; Import counts the chunks it reads
    until its client has gone, then reads once more."""
    metrics = ShardMetrics("test")
    importing = threading.Event()

    def export(request: bytes, context):
        with CallOutcome(metrics, "Export", context) as call:
            for _ in range(3):
                call.count += 1
                yield b"chunk"
            if request == b"bug":
                raise RuntimeError("a bug half-way through the stream")
            if request == b"nan":
                raise NonFiniteValues("rows contain NaN or Inf")
            if request == b"wait":
                wait_until_cancelled(context)
                yield b"never sent"

    def import_(request_iterator, context):
        with CallOutcome(metrics, "Import", context) as call:
            call.count += len(next(request_iterator))
            importing.set()
            wait_until_cancelled(context)
            next(request_iterator)   # raises: the call is over
        return b""

    server = grpc.server(ThreadPoolExecutor(4))
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("test.Streams", {
        "Export": grpc.unary_stream_rpc_method_handler(export),
        "Import": grpc.stream_unary_rpc_method_handler(import_)})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
        yield channel, metrics, importing
    server.stop(None)


def count(metrics: ShardMetrics, method: str, code: str) -> float:
    return metrics.registry.get_sample_value("embps_shard_requests_total", {"method": method, "code": code}) or 0


def wait_counted(metrics: ShardMetrics, method: str, code: str) -> float:
    """The server counts a call when its handler ends, which may be just after the client has its answer."""
    deadline = time.monotonic() + 20
    while not count(metrics, method, code) and time.monotonic() < deadline:
        time.sleep(0.01)
    return count(metrics, method, code)


def test_an_unexpected_error_in_a_stream_is_logged_and_counted_internal(calls, caplog):
    channel, metrics, _ = calls
    chunks = []
    with pytest.raises(grpc.RpcError) as info:
        for chunk in channel.unary_stream("/test.Streams/Export")(b"bug", timeout=10):
            chunks.append(chunk)
    assert chunks == [b"chunk"] * 3
    assert info.value.code() == grpc.StatusCode.INTERNAL
    assert info.value.details() == "internal error in Export; see the shard's log"
    assert (wait_counted(metrics, "Export", "INTERNAL"), count(metrics, "Export", "OK")) == (1, 0)
    assert metrics.registry.get_sample_value("embps_shard_keys_total", {"method": "Export"}) == 3
    [record] = [r for r in caplog.records if r.name == "embps.ps_shard"]
    assert record.levelno == logging.ERROR and record.method == "Export"
    assert isinstance(record.exc_info[1], RuntimeError)


def test_a_store_failure_in_a_stream_keeps_its_reason(calls):
    channel, metrics, _ = calls
    export = channel.unary_stream("/test.Streams/Export")
    with pytest.raises(grpc.RpcError) as info:
        list(export(b"nan", timeout=10))
    assert (info.value.code(), reason_of_rpc_error(info.value)) == (grpc.StatusCode.INVALID_ARGUMENT, "NONFINITE")
    assert list(export(b"", timeout=10)) == [b"chunk"] * 3
    assert (wait_counted(metrics, "Export", "INVALID_ARGUMENT"), wait_counted(metrics, "Export", "OK")) == (1, 1)


def test_a_stream_its_client_left_is_counted_cancelled(calls, caplog):
    channel, metrics, importing = calls
    stream = channel.unary_stream("/test.Streams/Export")(b"wait", timeout=10)
    assert next(stream) == b"chunk"
    stream.cancel()
    assert wait_counted(metrics, "Export", "CANCELLED") == 1 and count(metrics, "Export", "OK") == 0

    sent = threading.Event()

    def chunks():
        yield b"12345678"
        sent.wait(10)
    future = channel.stream_unary("/test.Streams/Import").future(chunks(), timeout=10)
    assert importing.wait(10)
    future.cancel()
    sent.set()
    assert wait_counted(metrics, "Import", "CANCELLED") == 1 and count(metrics, "Import", "OK") == 0
    assert [r.method for r in caplog.records if r.msg == "call ended by its client"] == ["Export", "Import"]
