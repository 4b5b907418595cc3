"""bounded mode's pieces that need no cluster: which optimizers it refuses, how contributions with counts
are summed, which rows a host mirrors."""

import grpc
import numpy as np
import pytest

from embps.api import OptimizerSpec, TableSpec
from embps.client.routing import JumpHashRouter
from embps.common.job_config import JobConfig, feature_keys
from embps.datasets import open_dataset
from embps.placement import Placement
from embps.trainer_gateway.bounded_strategy import BoundedStrategy, mirror_keys, usage_placement
from embps.trainer_gateway.errors import GatewayError
from embps.trainer_gateway.peer_exchange import Contribution, sum_counted
from embps.trainer_gateway.strategy import GatewayContext


@pytest.mark.parametrize("kind", ["adam", "rowwise_adagrad"])
def test_optimizers_a_mirror_cannot_merge_are_refused_at_start(tmp_path, kind):
    spec = TableSpec(dim=4, capacity=64, optimizer=OptimizerSpec(kind))
    context = GatewayContext(JobConfig(mode="bounded"), 0, None, None, None, None, spec, 0, tmp_path)
    with pytest.raises(GatewayError) as info:
        BoundedStrategy(context)
    assert info.value.code == grpc.StatusCode.FAILED_PRECONDITION
    assert f"SGD and Adagrad tables only; table 'emb' uses {kind}" in str(info.value)


def test_contributions_sum_in_trainer_order_with_their_counts():
    parts = [Contribution(np.array([3, 9], np.uint64), np.array([[1.0], [2.0]], np.float32), None),
             Contribution(np.array([1, 9], np.uint64), np.array([[4.0], [8.0]], np.float32),
                          np.array([5, 2], np.uint32)),
             Contribution(np.empty(0, np.uint64), np.empty((0, 1), np.float32), None)]
    keys, summed, counts = sum_counted(parts, 1)
    assert keys.tolist() == [1, 3, 9]
    assert summed[:, 0].tolist() == [4.0, 1.0, 10.0]
    assert counts.tolist() == [5, 1, 3]


def test_a_host_mirrors_its_first_store_rate_candidates_of_rows_it_does_not_own():
    placement = Placement(hosts=2, row_keys=np.empty(0, np.uint64), row_owner=np.empty(0, np.uint16),
                          sample_host=np.empty(0, np.uint16), dataset="x",
                          mirrors=(np.array([50, 10, 40, 30], np.uint64), np.empty(0, np.uint64)))
    assert mirror_keys(placement, 0, 0.5).tolist() == [10, 50]   # the best two, sorted
    assert mirror_keys(placement, 0, 0.0).tolist() == []
    assert mirror_keys(placement, 1, 1.0).tolist() == []
    with pytest.raises(GatewayError, match="2 hosts, not one for trainer 2"):
        mirror_keys(placement, 2, 0.5)


def test_a_placement_files_store_rate_counts_the_rows_a_host_does_not_own_once():
    """The file's candidates are already the partition's store_rate of them: the same rate takes them all,
    a smaller one its first ones (the rate of the 10 rows host 0 does not own, not of the 3 candidates)."""
    placement = Placement(hosts=2, row_keys=np.arange(1, 16, dtype=np.uint64),
                          row_owner=np.array([0] * 5 + [1] * 10, np.uint16), sample_host=np.empty(0, np.uint16),
                          dataset="x", mirrors=(np.array([9, 7, 12], np.uint64), np.array([2], np.uint64)))
    assert mirror_keys(placement, 0, 0.3).tolist() == [7, 9, 12]
    assert mirror_keys(placement, 0, 0.2).tolist() == [7, 9]
    assert mirror_keys(placement, 0, 1.0).tolist() == [7, 9, 12]   # all there are
    assert mirror_keys(placement, 1, 0.2).tolist() == [2]


def test_usage_placement_ranks_each_hosts_remote_keys_by_use():
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005, "seed": 5}, trainers=2, global_batch=64,
                    steps=20)
    router = JumpHashRouter(2)
    placement = usage_placement(job, router.shard_of)
    assert placement.hosts == 2
    for host, candidates in enumerate(placement.mirrors):
        assert len(candidates) > 100 and len(np.unique(candidates)) == len(candidates)
        assert (router.shard_of(candidates) != host).all()   # never a row the host owns
    assert not np.array_equal(placement.mirrors[0][:50], placement.mirrors[1][:50])
    uses = {}   # host 0's trainer: in how many batches each key occurs
    for _, batch in zip(range(job.steps), open_dataset(job.dataset, **job.dataset_options).batches(64, "train")):
        for key in np.unique(feature_keys(batch.sparse[:32])):
            uses[int(key)] = uses.get(int(key), 0) + 1
    ranked = [uses[int(k)] for k in placement.mirrors[0]]
    assert ranked == sorted(ranked, reverse=True) and ranked[0] > ranked[-1]
    assert np.array_equal(usage_placement(job, router.shard_of).mirrors[0], placement.mirrors[0])   # deterministic
