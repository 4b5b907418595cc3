"""Hosts in the job and cluster configs: host h runs shard h and trainer h with its gateway, so a job
with hosts has as many trainers, gateways and shards as hosts; the files, the GetJob message and
`embps train --hosts` keep that, and configs that break it are refused with what is wrong."""

import argparse

import pytest

from embps.common.cluster_config import ClusterConfig
from embps.common.job_config import Addresses, JobConfig
from embps.common.job_messages import job_from_message, job_to_message
from embps.trainer import train_command
from embps.trainer.local_job import JobLayout
from embps.v1 import training_pb2 as pb

HOSTS = ("host-0", "host-1", "host-2")
ADDRESSES = Addresses(oracle="o:1", gateways=tuple(f"{h}:50071" for h in HOSTS),
                      shards=tuple(f"{h}:50051" for h in HOSTS), trainers="host-0:29500", hosts=HOSTS)
JOB = JobConfig(trainers=3, global_batch=768, addresses=ADDRESSES)


def test_a_job_with_hosts_survives_its_file_and_its_message():
    assert JobConfig.from_toml(JOB.to_toml()) == JOB
    assert job_from_message(pb.JobConfig.FromString(job_to_message(JOB).SerializeToString())) == JOB
    assert [JOB.local_shard(t) for t in range(3)] == [0, 1, 2]
    assert JobConfig().local_shard(0) is None   # separate lists: no shard is a trainer's own
    assert JOB.cluster_config().hosts == HOSTS


@pytest.mark.parametrize("change, message", [
    (dict(trainers=2, global_batch=768, addresses=ADDRESSES), "3 hosts need 3 trainers, got 2"),
    (dict(addresses=Addresses(shards=("a:1", "b:1"), hosts=HOSTS)), "3 hosts need 3 shards, got 2"),
    (dict(addresses=Addresses(gateways=("a:1",) * 4, hosts=HOSTS)), "3 hosts need 3 gateways, got 4"),
    (dict(addresses=Addresses(hosts=("h", "h", "g"))), "its own non-empty name"),
    (dict(addresses=Addresses(hosts=("h", "", "g"))), "its own non-empty name"),
])
def test_a_job_whose_hosts_do_not_match_is_refused(change, message):
    with pytest.raises(ValueError, match=message):
        JobConfig(**{**dict(trainers=3, global_batch=768), **change})


def test_separate_lists_still_work():
    job = JobConfig(trainers=4, addresses=Addresses(gateways=("g:1",) * 4, shards=("s:1", "s:2")))
    assert JobConfig.from_toml(job.to_toml()) == job and job.addresses.hosts == ()


def test_cluster_config_names_the_host_of_every_shard(tmp_path):
    config = ClusterConfig.from_addresses([f"{h}:50051" for h in HOSTS], hosts=HOSTS)
    path = tmp_path / "cluster.toml"
    path.write_text(config.to_toml())
    assert 'host = "host-1"' in path.read_text()
    assert ClusterConfig.load(path) == config
    path.write_text('[[shards]]\naddress = "a:1"\nhost = "h0"\n[[shards]]\naddress = "b:1"\n')
    with pytest.raises(ValueError, match="give every \\[\\[shards\\]\\] entry a host, or none"):
        ClusterConfig.load(path)
    with pytest.raises(ValueError, match="each host runs one shard"):
        ClusterConfig.from_addresses(["a:1", "b:1"], hosts=("h", "h"))


def parse_train(argv: list[str]):
    parser = argparse.ArgumentParser()
    train_command.add_arguments(parser)
    return parser.parse_args(argv)


def test_embps_train_hosts_sets_trainers_and_shards():
    assert train_command.counts_from_args(parse_train([])) == (2, 2)
    assert train_command.counts_from_args(parse_train(["--trainers", "3", "--shards", "1"])) == (3, 1)
    assert train_command.counts_from_args(parse_train(["--hosts", "3"])) == (3, 3)
    assert train_command.counts_from_args(parse_train(["--hosts", "3", "--trainers", "3"])) == (3, 3)
    with pytest.raises(SystemExit, match="--shards 2 contradicts --hosts 3"):
        train_command.counts_from_args(parse_train(["--hosts", "3", "--shards", "2"]))
    layout = JobLayout.loopback_hosts(3)
    assert layout.hosts and layout.shards == layout.trainers
    assert [h.name for h in layout.shards] == list(HOSTS)
    with pytest.raises(ValueError, match="the job has 2 trainers, the layout places 3"):
        layout.check(JobConfig())
