"""JobConfig <-> embps.v1.JobConfig (what GetJob returns): every setting survives the trip, as it
does through the TOML file, and a message the job could not run with is refused."""

import dataclasses

import pytest

from embps.common.job_config import Addresses, JobConfig
from embps.common.job_messages import GATEWAY_MODES, job_from_message, job_to_message
from embps.common.security import Security
from embps.v1 import ps_shard_pb2 as shard_pb
from embps.v1 import training_pb2 as pb

JOB = JobConfig(
    dataset="criteo:/data/day_0.tsv",
    dataset_options={"eval_fraction": 0.2, "max_table_size": 40_000, "progress": False, "cache_dir": "/tmp/c",
                     "table_sizes": [3, 5, 8]},
    model="dcn_v2", mode="direct", trainers=4, global_batch=2048, steps=77, eval_batches=3, dim=16,
    emb_optimizer="sgd", emb_lr=0.5, emb_eps=1e-6, dense_optimizer="sgd", dense_lr=0.25, lookahead=9,
    cleanup_proportion=0.5, seed=11, table="rows", timeout_seconds=42.5, staleness=100, store_rate=0.25,
    addresses=Addresses(oracle="o:1", gateways=("g:1", "g:2", "g:3", "g:4"), shards=("s:1", "s:2"), trainers="t:1"),
    security=Security(tls_cert="/c.pem", tls_key="/c.key", tls_ca="/ca.pem", tls_client_auth=True,
                      tls_server_name="embps", auth_token_file="/token"))


def wire(job: JobConfig) -> JobConfig:
    return job_from_message(pb.JobConfig.FromString(job_to_message(job).SerializeToString()))


PLACED = dataclasses.replace(JOB, placement="/data/hetgmp.placement",
                             addresses=dataclasses.replace(JOB.addresses, shards=("s:1", "s:2", "s:3", "s:4")))

ADAM = dataclasses.replace(JOB, emb_optimizer="adam", emb_lr=1e-3, emb_beta1=0.8, emb_beta2=0.95)


@pytest.mark.parametrize("job", [JOB, JobConfig(), PLACED, ADAM], ids=["every_setting", "defaults", "placement",
                                                                       "adam"])
def test_round_trip_equals_the_job_and_its_toml_reading(job):
    assert wire(job) == job
    assert wire(job) == JobConfig.from_toml(job.to_toml())


def test_the_message_has_every_setting():
    assert {f.name for f in dataclasses.fields(JobConfig)} == set(pb.JobConfig.DESCRIPTOR.fields_by_name)
    assert {f.name for f in dataclasses.fields(Security)} == set(pb.JobConfig.Security.DESCRIPTOR.fields_by_name)
    assert {f.name for f in dataclasses.fields(Addresses)} == set(pb.JobConfig.Addresses.DESCRIPTOR.fields_by_name)


def test_option_types_survive():
    options = wire(JOB).dataset_options
    assert [type(options[k]) for k in ("eval_fraction", "max_table_size", "progress", "cache_dir", "table_sizes")] \
        == [float, int, bool, str, list]


def test_this_process_security_overrides_apply(monkeypatch):
    monkeypatch.setenv("EMBPS_SECURITY_TLS_SERVER_NAME", "local-name")
    assert wire(JOB).security.tls_server_name == "local-name"


def test_a_message_the_job_cannot_run_with_is_refused():
    message = job_to_message(JOB)
    message.mode = pb.GATEWAY_MODE_UNSPECIFIED
    with pytest.raises(ValueError, match="gateway mode is unspecified"):
        job_from_message(message)
    message = job_to_message(JOB)
    message.emb_optimizer = shard_pb.OPTIMIZER_KIND_ROWWISE_ADAGRAD   # a name the shards know, but not a job
    with pytest.raises(ValueError, match=r"emb_optimizer must be one of \('sgd', 'adagrad', 'adam'\)"):
        job_from_message(message)
    message = job_to_message(ADAM)
    message.emb_beta2 = 1.0
    with pytest.raises(ValueError, match=r"emb_beta1 and emb_beta2 must be in \[0, 1\), got 0.8 and 1.0"):
        job_from_message(message)
    message = job_to_message(JOB)
    message.dataset_options["empty"].Clear()
    with pytest.raises(ValueError, match="without a value"):
        job_from_message(message)
    with pytest.raises(ValueError, match="dataset option 'nested' is a dict"):
        job_to_message(dataclasses.replace(JOB, dataset_options={"nested": {"a": 1}}))


def test_gateway_modes_are_the_job_modes():
    assert GATEWAY_MODES.to_message("sync") == pb.GATEWAY_MODE_SYNC
    assert GATEWAY_MODES.from_message(pb.GATEWAY_MODE_DIRECT) == "direct"


def test_a_placement_needs_a_shard_per_trainer_and_is_read_relative_to_the_job_file(tmp_path):
    with pytest.raises(ValueError, match="4 trainers need 4 shards, not 2"):
        dataclasses.replace(JOB, placement="p.placement")
    dataclasses.replace(PLACED, placement="hetgmp.placement").save(tmp_path / "job.toml")
    loaded = JobConfig.load(tmp_path / "job.toml")
    assert loaded.placement == str(tmp_path / "hetgmp.placement")
    assert loaded.cluster_config().placement == loaded.placement
