"""How a gateway takes apart the contributions that came in one message (sync's deferred part: the cached
rows' gradients and the streamed rows'), and which waits a change of its progress wakes."""

import threading

import grpc
import numpy as np
import pytest

from embps.trainer_gateway.errors import GatewayError
from embps.trainer_gateway.peer_exchange import Contribution, split_contributions
from embps.trainer_gateway.progress import Progress


def _contribution(keys, values):
    return Contribution(np.array(keys, np.uint64), np.array(values, np.float32).reshape(-1, 1), None)


def test_contributions_split_by_the_batch_keys_they_name():
    batch = np.array([2, 5, 7, 11], np.uint64)
    streamed = np.array([False, True, False, True])
    parts = [_contribution([2, 5, 11], [1, 2, 3]), _contribution([7], [4]), _contribution([], [])]
    cached, stream = split_contributions(parts, batch, streamed)
    assert [p.keys.tolist() for p in cached] == [[2], [7], []]
    assert [p.grads[:, 0].tolist() for p in cached] == [[1.0], [4.0], []]
    assert [p.keys.tolist() for p in stream] == [[5, 11], [], []]
    assert [p.grads[:, 0].tolist() for p in stream] == [[2.0, 3.0], [], []]


@pytest.mark.parametrize("keys", [[3], [12]])   # between the batch's keys, and past the last
def test_a_contribution_outside_the_batch_is_refused(keys):
    with pytest.raises(GatewayError) as info:
        split_contributions([_contribution(keys, [1])], np.array([2, 5, 11], np.uint64), np.zeros(3, bool))
    assert info.value.code == grpc.StatusCode.INVALID_ARGUMENT


def test_a_change_wakes_the_wait_it_made_ready():
    progress = Progress(0, timeout_seconds=30)
    woke = threading.Event()

    def waiter():
        progress.wait(lambda: progress.next_batch >= 2, "batch 2")
        woke.set()
    thread = threading.Thread(target=waiter)
    thread.start()
    with progress.changing():
        progress.next_batch = 1
    assert not woke.is_set()   # not ready yet: it sleeps on
    with progress.changing():
        progress.next_batch = 2
    assert woke.wait(5)
    thread.join()


def test_a_failure_wakes_every_wait():
    progress = Progress(0, timeout_seconds=30)
    errors = []

    def waiter():
        try:
            progress.wait(lambda: False, "nothing")
        except GatewayError as error:
            errors.append(error)
    threads = [threading.Thread(target=waiter) for _ in range(3)]
    for thread in threads:
        thread.start()
    while len(progress._waiting) < 3:
        threading.Event().wait(0.01)
    progress.fail(GatewayError(grpc.StatusCode.UNAVAILABLE, "stopping"))
    for thread in threads:
        thread.join(5)
    assert len(errors) == 3
