"""The cluster file refuses what it does not know by name, as the shard, job, security and rdma tables do."""

import pytest

from embps.common.cluster_config import ClusterConfig


def test_a_misspelt_cluster_setting_is_refused_by_name(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\ndeadline = 5\n[[shards]]\naddress = "a:1"\n')
    with pytest.raises(ValueError, match=r"unknown \[cluster\] settings: \['deadline'\]"):
        ClusterConfig.load(path)


def test_every_cluster_setting_loads(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('[cluster]\ndeadline_seconds = 5\ndata_path = "grpc"\nmax_message_bytes = 4096\n'
                    'placement = "p.placement"\n[[shards]]\naddress = "a:1"\n')
    config = ClusterConfig.load(path)
    assert (config.deadline_seconds, config.data_path, config.max_message_bytes, config.placement) == \
        (5, "grpc", 4096, str(tmp_path / "p.placement"))
