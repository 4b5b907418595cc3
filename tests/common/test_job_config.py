"""The job file refuses a model or a dense optimizer no trainer can build when it is read, not when a trainer
starts."""

import pytest

from embps.common.job_config import DENSE_OPTIMIZERS, MODELS, JobConfig


def _built(setting: str) -> set[str]:
    """What a trainer can build for the setting (imports PyTorch)."""
    if setting == "model":
        from embps.models import _CLASSES
        return set(_CLASSES)
    from embps.trainer.training import DENSE_OPTIMIZERS as BUILT
    return set(BUILT)


@pytest.mark.parametrize("setting, names, misspelt", [("model", MODELS, "dlmr"),
                                                      ("dense_optimizer", DENSE_OPTIMIZERS, "adm")])
def test_the_job_accepts_exactly_what_a_trainer_builds(setting, names, misspelt):
    with pytest.raises(ValueError, match=f"{setting} must be one of"):
        JobConfig.from_toml(f'[job]\n{setting} = "{misspelt}"\n')
    assert set(names) == _built(setting)
    for name in names:
        assert getattr(JobConfig.from_toml(f'[job]\n{setting} = "{name}"\n'), setting) == name
