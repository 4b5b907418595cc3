"""The request and error records that travel over the queue pair."""

from __future__ import annotations

import numpy as np
import pytest

from embps.rdma.wire import (INVALID_ARGUMENT, REQUEST_HEADER, ProtocolViolation, decode_error, decode_request,
                             encode_error, encode_request)
from helpers.rdma import REMOTE_BASE


def test_request_and_error_records_round_trip():
    buf = np.zeros(4096, np.uint8)
    keys = np.array([1, 2**63 + 5, 7], np.uint64)
    length = encode_request(buf, 77, "user", keys, 32, True, REMOTE_BASE, 1 << 20)
    assert length == REQUEST_HEADER.size + 8 + 24
    request = decode_request(buf, length)
    assert (request.batch_id, request.table, request.width, request.with_state) == (77, "user", 32, True)
    assert (request.remote_addr, request.remote_capacity) == (REMOTE_BASE, 1 << 20)
    assert request.keys.tolist() == keys.tolist()
    with pytest.raises(ProtocolViolation, match="do not fit") as info:
        decode_request(buf, length - 1)
    assert info.value.code == INVALID_ARGUMENT
    with pytest.raises(ProtocolViolation, match="magic"):
        decode_request(np.zeros(64, np.uint8))
    with pytest.raises(ValueError, match="slot holds"):
        encode_request(np.zeros(64, np.uint8), 1, "user", keys, 32, False, 0, 0)

    record = encode_error(5, "no table named 'x'", capacity=1000)
    assert decode_error(record) == (5, "no table named 'x'")
    assert decode_error(encode_error(5, "a long message", capacity=14)) == (5, "a ")   # truncated to the slot
