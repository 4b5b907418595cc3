"""Real shard processes on loopback.  Module-scoped: starting a shard costs about a second."""

import dataclasses

import pytest

from embps.client import PSClient
from embps.common.local_cluster import LocalCluster, LocalShard


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    with LocalCluster(tmp_path_factory.mktemp("cluster"), 3, max_batch_keys=4096) as c:
        yield c


@pytest.fixture(scope="module")
def shard(tmp_path_factory):
    with LocalShard(tmp_path_factory.mktemp("shard"), max_batch_keys=4096, max_message_bytes=1 << 20) as s:
        yield s


@pytest.fixture(params=["tcp", "grpc"])
def cluster_client(cluster, request):
    """A client of the 3-shard cluster on each data path."""
    with PSClient(dataclasses.replace(cluster.config, data_path=request.param, deadline_seconds=20)) as client:
        yield client
