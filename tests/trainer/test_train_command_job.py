"""`embps train`'s job file: a relative `--placement` names the file the user meant after the job file
moves to --data-dir, and `--segments` gives the synthetic data the structure `embps partition` was run
on, so the placement's dataset matches the job's; a placement whose trainers and shards differ is refused
before any process starts."""

import pytest

from embps.cli import build_parser
from embps.common.job_config import JobConfig
from embps.datasets import open_dataset
from embps.trainer.train_command import job_from_args


def parse(*argv):
    return build_parser().parse_args(["train", *argv])


def test_a_relative_placement_survives_the_job_file_in_the_data_dir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "hosts.placement").write_bytes(b"")
    job = job_from_args(parse("--placement", "hosts.placement", "--data-dir", "data/train"))
    job_file = tmp_path / "data" / "train" / "job.toml"   # where the launcher saves it
    job_file.parent.mkdir(parents=True)
    job.save(job_file)
    assert JobConfig.load(job_file).placement == str(tmp_path / "hosts.placement")


def test_segments_make_the_dataset_that_partition_reads_from_a_job_file(tmp_path):
    job = job_from_args(parse("--segments", "16"))
    assert job.dataset_options == {"scale": 0.01, "segments": 16}
    written = tmp_path / "job.toml"
    written.write_text('[job]\ndataset = "synthetic"\n[job.dataset_options]\nscale = 0.01\nsegments = 16\n')
    by_hand = JobConfig.load(written)
    assert open_dataset(job.dataset, **job.dataset_options).info.name == \
        open_dataset(by_hand.dataset, **by_hand.dataset_options).info.name
    assert job_from_args(parse()).dataset_options == {"scale": 0.01}


def test_segments_are_refused_on_other_data():
    with pytest.raises(ValueError, match="--segments shapes the synthetic data"):
        job_from_args(parse("--dataset", "movielens-100k", "--segments", "4"))


def test_a_placement_with_unequal_trainers_and_shards_is_refused_before_anything_starts(tmp_path):
    with pytest.raises(ValueError, match="2 trainers need 2 shards, not 3"):
        job_from_args(parse("--placement", str(tmp_path / "p.placement"), "--shards", "3"))
    args = parse("--placement", str(tmp_path / "p.placement"), "--shards", "3", "--data-dir", str(tmp_path / "job"))
    with pytest.raises(SystemExit, match="embps train: with a placement"):
        args.run(args)
    assert not (tmp_path / "job").exists()
