"""The job file refuses a model or a dense optimizer no trainer can build when it is read, not when a trainer
starts."""

import pytest

from embps.common.job_config import DENSE_OPTIMIZERS, MODELS, JobConfig


def test_a_misspelt_dense_optimizer_is_refused_on_load():
    with pytest.raises(ValueError, match="dense_optimizer must be one of"):
        JobConfig.from_toml('[job]\ndense_optimizer = "adm"\n')


def test_the_job_accepts_exactly_the_optimizers_a_trainer_builds():
    from embps.trainer.training import DENSE_OPTIMIZERS as BUILT   # imports PyTorch
    assert set(DENSE_OPTIMIZERS) == set(BUILT)
    for name in DENSE_OPTIMIZERS:
        assert JobConfig.from_toml(f'[job]\ndense_optimizer = "{name}"\n').dense_optimizer == name


def test_a_misspelt_model_is_refused_on_load():
    with pytest.raises(ValueError, match="model must be one of"):
        JobConfig.from_toml('[job]\nmodel = "dlmr"\n')


def test_the_job_accepts_every_model_a_trainer_builds():
    from embps.models import _CLASSES   # imports PyTorch
    assert set(_CLASSES) == set(MODELS)
    for name in MODELS:
        assert JobConfig.from_toml(f'[job]\nmodel = "{name}"\n').model == name
