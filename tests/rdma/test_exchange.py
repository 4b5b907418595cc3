"""The memcached exchange of queue-pair endpoints, against a real memcached on loopback: a shard and a
client meeting, timeouts and malformed records with clear errors, endpoint validation, the address."""

from __future__ import annotations

import threading
import time

import pytest

from embps.common.local_cluster import free_port
from embps.rdma.exchange import EndpointInfo, ExchangeError, ExchangeTimeout, RdmaExchange, parse_rdma_address


def _endpoint(qp_num: int, **extra) -> EndpointInfo:
    return EndpointInfo(gid="fe80:0000:0000:0000:0202:c9ff:fe00:0001", lid=0, qp_num=qp_num, psn=0x123456,
                        mr_addr=0x7F12_3456_0000, mr_rkey=0xDEADBEEF, mr_length=4 << 20, max_sge=30, mtu=4096,
                        generation="gen-1", extra=extra)


def test_exchange_round_trip_between_a_shard_and_a_client(memcached):
    """Shard: open, notice the client, read its endpoint, answer with its QP.  Client: read the shard
    record, take an id, publish, poll for the answer.  Concurrent, through a real memcached."""
    shard_x = RdmaExchange(memcached, "test-rt", "shard-0")
    client_x = RdmaExchange(memcached, "test-rt", "shard-0")
    base = shard_x.open_shard({"generation": "gen-1", "max_keys": 8191, "slots": 8, "request_slot_bytes": 65832})
    client_info = _endpoint(0x000ABC, slots=4, slot_bytes=1 << 20)
    shard_info = _endpoint(0x000DEF, slots=4, request_slot_bytes=65832, max_keys=8191)
    seen: dict = {}

    def shard_side():
        deadline = time.monotonic() + 10
        while shard_x.client_count() <= base:
            assert time.monotonic() < deadline
            time.sleep(0.005)
        cid = base + 1
        seen["client"] = shard_x.wait_client(cid, timeout=5, generation="gen-1")
        shard_x.publish_qp(cid, shard_info)

    thread = threading.Thread(target=shard_side)
    thread.start()
    record = client_x.wait_shard(timeout=5)
    assert record["generation"] == "gen-1" and record["max_keys"] == 8191
    cid = client_x.register_client()
    assert cid == base + 1
    time.sleep(0.05)   # the shard is polling for the record meanwhile
    client_x.publish_client(cid, client_info)
    got = client_x.wait_qp(cid, timeout=5, generation="gen-1")
    thread.join(5)
    assert got == shard_info and seen["client"] == client_info
    assert client_x.get(f"embps/test-rt/shard-0/qp/{cid}") == shard_info.to_json()

    client_x.forget_client(cid)
    assert client_x.get(client_x.client_key(cid)) is None and client_x.get(client_x.qp_key(cid)) is None
    assert client_x.register_client() == cid + 1   # ids keep increasing
    shard_x.close_shard()
    assert client_x.get(client_x.shard_key) is None
    shard_x.close()
    client_x.close()


def test_exchange_timeouts_and_errors_are_clear(memcached):
    x = RdmaExchange(memcached, "test-err", "shard-7", poll_interval=0.01)
    started = time.monotonic()
    with pytest.raises(ExchangeTimeout, match=r"0.3s waiting for shard shard-7's queue pair at memcached "
                                              r".* key 'embps/test-err/shard-7/qp/42'"):
        x.wait_qp(42, timeout=0.3)
    assert 0.25 < time.monotonic() - started < 2
    with pytest.raises(ExchangeTimeout, match="RDMA record"):
        x.wait_shard(timeout=0.05)
    with pytest.raises(ExchangeError, match="has not opened its RDMA path"):
        x.register_client()

    x.open_shard({"generation": "new"})
    x.publish_client(1, _endpoint(5))   # gen-1: a record from an earlier run of the shard
    with pytest.raises(ExchangeError, match="joined shard generation 'gen-1'.*runs 'new'"):
        x.wait_client(1, timeout=1, generation="new")
    x.publish_refusal(2, "at most 64 clients")
    with pytest.raises(ExchangeError, match="refused the connection: at most 64 clients"):
        x.wait_qp(2, timeout=1)
    x.set(x.qp_key(3), b'{"v": 99, "gid": "x"}')
    with pytest.raises(ExchangeError, match="version 99"):
        x.wait_qp(3, timeout=1)
    x.set(x.qp_key(4), b"not json")
    with pytest.raises(ExchangeError, match="not a JSON endpoint record"):
        x.wait_qp(4, timeout=1)
    x.close()

    dead = RdmaExchange(f"127.0.0.1:{free_port()}", "c", "s", connect_timeout=0.5)
    with pytest.raises(ExchangeError, match=r"memcached at 127\.0\.0\.1:\d+: get embps/c/s/shard failed: "
                                            r"ConnectionRefusedError"):
        dead.wait_shard(timeout=1)
    with pytest.raises(ValueError, match="shard id"):
        RdmaExchange(memcached, "c", "shard 0")   # spaces cannot be in memcached keys


def test_endpoint_records_validate():
    info = _endpoint(7, slots=2)
    assert EndpointInfo.from_json(info.to_json()) == info
    for bad in ({"qp_num": 1 << 24}, {"psn": -1}, {"mr_rkey": 1 << 32}, {"mtu": 1500}, {"gid": "fe80::1"},
                {"max_sge": 0}, {"link_layer": "wifi"}):
        with pytest.raises(ExchangeError):
            EndpointInfo(**{**vars(info), **bad})
    with pytest.raises(ExchangeError, match="unknown endpoint fields"):
        EndpointInfo.from_json(info.to_json().replace(b'"lid"', b'"lid2"'))


def test_rdma_address_round_trip():
    address = parse_rdma_address("memcached://10.0.0.5:11211/prod/shard-3")
    assert (address.memcached, address.cluster, address.shard_id) == ("10.0.0.5:11211", "prod", "shard-3")
    assert str(address) == "memcached://10.0.0.5:11211/prod/shard-3"
    assert parse_rdma_address("memcached://[::1]:11211/c/s").memcached == "[::1]:11211"
    for bad in ("10.0.0.5:11211", "memcached://h/c/s", "memcached://h:1/c", "memcached://h:1/c d/s"):
        with pytest.raises(ValueError):
            parse_rdma_address(bad)
