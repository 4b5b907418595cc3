"""bench/torchrec_baseline.py: TorchRec (fbgemm fused optimizer) trains exactly what LocalTrainer trains.

Skipped when torchrec is not installed (see the pip lines in bench/torchrec_baseline.py)."""

import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    pytest.importorskip("fbgemm_gpu")
    pytest.importorskip("torchrec")

from embps.models import LocalTrainer, build_model

BASELINE = Path(__file__).resolve().parents[2] / "bench" / "torchrec_baseline.py"


@pytest.fixture(scope="module")
def baseline():
    spec = importlib.util.spec_from_file_location("torchrec_baseline", BASELINE)
    module = importlib.util.module_from_spec(spec)
    sys.modules["torchrec_baseline"] = module
    spec.loader.exec_module(module)
    return module


SIZES, DIM, N_DENSE = (30, 7, 50), 4, 3


@pytest.mark.parametrize("name,emb_optimizer", [("dlrm", "adagrad"), ("deepfm", "sgd")])
def test_fused_torchrec_matches_local_trainer(baseline, name, emb_optimizer):
    rng = np.random.default_rng(0)
    tables = [rng.normal(0, 0.1, (r, DIM)).astype(np.float32) for r in SIZES]
    batches = baseline.synthetic_batches(4, 32, N_DENSE, [5, 7, 5], seed=1)  # few ids: many repeats
    kw = dict(emb_eps=1e-6, dense_optimizer="adam", dense_lr=1e-2, seed=2)
    trec = baseline.TorchRecTrainer(name, N_DENSE, SIZES, DIM, emb_optimizer, 0.1, tables=tables, **kw)
    local = LocalTrainer(build_model(name, N_DENSE, len(SIZES), DIM, seed=2), tables, emb_optimizer, 0.1,
                         kw["emb_eps"], dense_optimizer="adam", dense_lr=1e-2)
    for b in batches:
        assert trec.step(*b) == pytest.approx(local.step(*b), rel=1e-5, abs=1e-6)
    for t in range(len(SIZES)):
        np.testing.assert_allclose(trec.table(t), local.table(t), rtol=1e-4, atol=1e-6)
        assert not np.array_equal(trec.table(t), tables[t])


def test_iteration_seconds_is_a_positive_mean(baseline):
    batches = baseline.synthetic_batches(4, 16, N_DENSE, SIZES)
    for fn in (baseline.torchrec_iteration_seconds, baseline.local_iteration_seconds):
        seconds = fn("dcn_v2", N_DENSE, SIZES, DIM, batches, "sgd", 0.1, warmup=2)
        assert 0 < seconds < 5
    with pytest.raises(ValueError):
        baseline.torchrec_iteration_seconds("dlrm", N_DENSE, SIZES, DIM, batches[:2], "sgd", 0.1, warmup=2)


def test_dmp_mode_runs_on_one_cpu_rank(baseline):
    import torch.distributed as dist

    if dist.is_initialized():
        pytest.skip("a process group already exists in this process")
    batches = baseline.synthetic_batches(3, 16, N_DENSE, SIZES)
    trainer = baseline.TorchRecTrainer("dlrm", N_DENSE, SIZES, DIM, "adagrad", 0.1, mode="dmp")
    try:
        losses = [trainer.step(*b) for b in batches]
    finally:
        trainer.close()
    assert all(np.isfinite(losses)) and not dist.is_initialized()
