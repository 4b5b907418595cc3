"""`embps train --external-trainers`: a program that exits without training the job's steps fails the
job with an error that says so and shows the program's output; nothing is left running."""

import sys

import pytest

from embps.common.job_config import JobConfig
from embps.trainer.local_job import JobFailed, run_external_job
from helpers.processes import processes_of


def test_trainers_that_stop_short_fail_the_job(tmp_path):
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=1, global_batch=8, steps=2,
                    dim=4, lookahead=2, timeout_seconds=30)
    program = [sys.executable, "-c", "import os; print('trained nothing with', os.environ['EMBPS_JOB'])"]
    with pytest.raises(JobFailed) as failed:
        run_external_job(job, tmp_path, program, n_shards=1)
    message = str(failed.value)
    assert "gateways [(0, 0)] (gateway, steps) short of the job's 2 steps" in message, message
    assert f"trained nothing with {tmp_path / 'job.toml'}" in message
    assert processes_of(tmp_path / "job.toml") == []
