"""init_cache takes Bagpipe's arguments, and each one that disagrees with the job is named in one
error that says which setting to change; a trainer without a job to find is told how to name one."""

import inspect

import pytest
import torch

from embps.common.job_config import Addresses, JobConfig
from embps.compat import bagpipe
from embps.compat.bagpipe import BagpipeConfigError, init_cache

JOB = JobConfig(dataset="synthetic", trainers=2, global_batch=64, steps=10, dim=48, emb_optimizer="sgd", emb_lr=0.01,
                lookahead=200, addresses=Addresses(oracle="127.0.0.1:1", gateways=("127.0.0.1:2", "127.0.0.1:3")))
BAGPIPE = dict(emb_size=48, ln_emb=[10] * 26, cache_size=5000000, device="cpu", cleanup_batch_proportion=0.25,
               worker_id=1, world_size=4, training_worker_id=0, trainer_world_size=2, emb_optim=torch.optim.SGD,
               emb_optim_params={"lr": 0.01})


@pytest.fixture
def job_file(tmp_path, monkeypatch):
    path = tmp_path / "job.toml"
    JOB.save(path)
    monkeypatch.setenv("EMBPS_JOB", str(path))
    monkeypatch.delenv("EMBPS_ORACLE", raising=False)
    return path


def test_the_signature_is_bagpipes():
    parameters = inspect.signature(init_cache).parameters
    assert {name: p.default for name, p in parameters.items()} == {
        "lookahead_value": 200, "emb_size": 1, "ln_emb": (), "cache_size": 25000, "cleanup_batch_proportion": 0.25,
        "emb_optim": None, "emb_optim_params": None, "device": "cuda:0", "worker_id": 0, "world_size": None,
        "training_worker_id": 0, "trainer_world_size": None}
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in parameters.values())


def test_every_disagreement_is_named_with_its_fix(job_file):
    with pytest.raises(BagpipeConfigError) as refused:
        init_cache(**{**BAGPIPE, "lookahead_value": 100, "emb_size": 16, "trainer_world_size": 4,
                      "training_worker_id": 2, "cleanup_batch_proportion": 0.5, "world_size": 3,
                      "emb_optim": torch.optim.Adagrad, "emb_optim_params": {"lr": 0.1}})
    message = str(refused.value)
    for part in ("lookahead_value=100, but the job plans 200 batches ahead",
                 "cleanup_batch_proportion=0.5, but the job's is 0.25",
                 "emb_size=16, but the job's table has dim 48 (embps train --dim)",
                 "trainer_world_size=4, but the job has 2 trainers",
                 "training_worker_id=2 is not one of the job's trainers 0..1",
                 "world_size=3, worker_id=1",
                 "emb_optim asks for adagrad(lr=0.1, eps=1e-10), but the job's table trains with sgd(lr=0.01) "
                 "(embps train --emb-optimizer adagrad --emb-lr 0.1 --emb-eps 1e-10)"):
        assert part in message, message


@pytest.mark.parametrize("change, part", [
    ({"emb_optim": torch.optim.SGD, "emb_optim_params": {"lr": 0.01, "momentum": 0.9}}, "has no momentum"),
    ({"emb_optim": torch.optim.Adam, "emb_optim_params": {"betas": (0.8, 0.99)}},
     "(embps train --emb-optimizer adam --emb-lr 0.001 --emb-betas 0.8 0.99 --emb-eps 1e-08)"),
    ({"ln_emb": []}, "one positive table size per feature"),
    ({"cache_size": 0}, "row budget must be positive"),
    ({"device": "cuda:0"}, "pass device='cpu'"),
    ({"device": "tpu:9"}, "device='tpu:9'"),
])
def test_what_cannot_work_here_is_refused(job_file, change, part):
    if change.get("device") == "cuda:0" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(ValueError) as refused:
        init_cache(**{**BAGPIPE, **change})
    assert part in str(refused.value)


def test_without_a_job_the_trainer_is_told_how_to_name_it(monkeypatch):
    monkeypatch.delenv("EMBPS_JOB", raising=False)
    monkeypatch.delenv("EMBPS_ORACLE", raising=False)
    with pytest.raises(BagpipeConfigError, match="set EMBPS_JOB to the job's file or EMBPS_ORACLE"):
        init_cache(**BAGPIPE)


def test_the_oracle_address_finds_the_job(tmp_path, monkeypatch):
    """EMBPS_ORACLE: the job as the oracle's GetJob returns it (here a real oracle over a real shard)."""
    from embps.common.local_cluster import LocalShard, free_ports
    from embps.oracle_cacher.service import make_service
    with LocalShard(tmp_path / "shard") as shard:
        job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=8, steps=2,
                        dim=4, lookahead=2, addresses=Addresses(oracle=f"127.0.0.1:{free_ports(1)[0]}",
                                                                shards=(shard.address,), gateways=("127.0.0.1:9",)))
        service, oracle = make_service(job)
        service.start()
        try:
            monkeypatch.setenv("EMBPS_ORACLE", job.addresses.oracle)
            monkeypatch.delenv("EMBPS_JOB", raising=False)
            assert bagpipe.find_job() == job
        finally:
            oracle.stopping.set()
            service.stop(0)
