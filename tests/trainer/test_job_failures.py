"""A trainer or gateway that dies stops the whole job with a clear error, quickly, and leaves no process
behind."""

import os
import signal
import threading
import time
from pathlib import Path

import pytest

from embps.common.job_config import JobConfig
from embps.trainer.local_job import JobFailed, run_local_job
from helpers.processes import processes_of


def kill_when_training(data_dir: Path, argv_part: str, after_steps: int, killed: list) -> None:
    progress = data_dir / "out" / "progress.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if progress.exists() and len(progress.read_text().splitlines()) >= after_steps:
            for pid in processes_of(data_dir / "job.toml"):
                if argv_part.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" "):
                    os.kill(pid, signal.SIGKILL)
                    killed.append(time.monotonic())
                    return
        time.sleep(0.05)


@pytest.mark.parametrize("victim, argv_part", [("trainer 1", "trainer --job"), ("gateway 0", "--trainer 0")])
def test_a_dead_process_stops_the_job(tmp_path, victim, argv_part):
    if victim == "trainer 1":
        argv_part += f" {tmp_path / 'job.toml'} --rank 1"
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005}, trainers=2, global_batch=128,
                    steps=100_000, dim=8, lookahead=8, timeout_seconds=30)
    killed: list = []
    killer = threading.Thread(target=kill_when_training, args=(tmp_path, argv_part, 5, killed))
    killer.start()
    with pytest.raises(JobFailed) as failure:
        run_local_job(job, tmp_path, n_shards=1, show_progress=False)
    stopped = time.monotonic()
    killer.join()
    assert killed, "the process was never killed"
    assert stopped - killed[0] < 20, "the job took too long to notice"
    message = str(failure.value)
    assert "exited with code" in message and ("-9" in message or victim.split()[0] in message), message
    assert processes_of(tmp_path / "job.toml") == []
