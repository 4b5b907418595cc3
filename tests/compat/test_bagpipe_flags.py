"""Bagpipe's command lines: `embps oracle-cacher` takes the oracle's flags that mean something here
(they set the job, and the job file says so afterwards) and refuses the others by name, as
`embps ps-shard` refuses the embedding server's; --emb-info-file reads Bagpipe's emb_table_info.txt;
--cache-size refuses a window that needs more rows, naming the lookahead that fits; and
docs/bagpipe.md lists exactly the flags the code knows."""

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from embps.cli import build_parser
from embps.common.job_config import JobConfig
from embps.compat.bagpipe_flags import FLAGS, read_emb_info, with_table_sizes
from embps.datasets import open_dataset
from embps.oracle_cacher.cache_budget import CacheBudgetExceeded, check_cache_budget, peak_rows
from embps.oracle_cacher.service import job_of

DOCS = Path(__file__).resolve().parents[2] / "docs" / "bagpipe.md"


def parse(*argv: str) -> argparse.Namespace:
    return build_parser().parse_args(list(argv))


@pytest.mark.parametrize("argv, flag, reason", [
    (("oracle-cacher", "--job", "j", "--prefetch"), "--prefetch", "always plans prefetches"),
    (("oracle-cacher", "--job", "j", "--worker-id", "0"), "--worker-id", "[addresses]"),
    (("oracle-cacher", "--job", "j", "--master-ip", "10.10.1.1"), "--master-ip", "EMBPS_JOB or EMBPS_ORACLE"),
    (("oracle-cacher", "--job", "j", "--dataset-multiprocessing"), "--dataset-multiprocessing", "loader processes"),
    (("ps-shard", "--worker-id", "3"), "--worker-id", "[addresses]"),
    (("ps-shard", "--emb-size", "50"), "--emb-size", "the job's dim"),
    (("ps-shard", "--emb-info-file", "../emb_table_info.txt"), "--emb-info-file", "the oracle creates the job's table"),
])
def test_flags_without_a_meaning_here_are_refused_by_name(capsys, argv, flag, reason):
    with pytest.raises(SystemExit) as exited:
        parse(*argv)
    assert exited.value.code == 2
    err = capsys.readouterr().err
    assert f"{flag} (Bagpipe's) has no meaning here" in err and reason in err, err


def test_the_oracle_takes_bagpipes_flags_and_the_job_file_records_them(tmp_path):
    """The README's oracle command line, less what it refuses, sets the job's settings."""
    job_file, data, info = tmp_path / "job.toml", tmp_path / "kaggle_criteo_weekly.txt", tmp_path / "emb_table_info.txt"
    JobConfig(dataset="synthetic", dataset_options={"scale": 0.001}, lookahead=64, trainers=4).save(job_file)
    info.write_text("1460\n583\n\n305\n")
    args = parse("oracle-cacher", "--job", str(job_file), "--lookahead-value", "200", "--mini-batch-size=4096",
                 "--world-size-trainers", "2", "--processed-csv", str(data), "--emb-info-file", str(info))
    job = job_of(args)
    assert (job.lookahead, job.global_batch, job.trainers, job.dataset) == (200, 4096, 2, f"criteo:{data}")
    assert job.dataset_options == {"table_sizes": [1460, 583, 305]}
    assert JobConfig.load(job_file) == job   # the gateways read this


def test_emb_info_file_is_one_table_size_per_line(tmp_path):
    path = tmp_path / "emb_table_info.txt"
    path.write_text("10\n 20 \n\n30\n")
    assert read_emb_info(path) == [10, 20, 30]
    path.write_text("10\nC1\n")
    with pytest.raises(ValueError, match=r"line 2: 'C1' is not a table size"):
        read_emb_info(path)
    path.write_text("\n")
    with pytest.raises(ValueError, match="no table sizes"):
        read_emb_info(path)
    path.write_text("10\n")
    with pytest.raises(ValueError, match="tables of Criteo-format data"):
        with_table_sizes(JobConfig(dataset="synthetic"), str(path))


def test_the_table_sizes_reach_the_criteo_reader(tmp_path):
    tsv, info = tmp_path / "head.txt", tmp_path / "emb_table_info.txt"
    tsv.write_text("".join("\t".join(["1", *["3"] * 13, *[f"{k * 7 + i:x}" for i in range(26)]]) + "\n"
                           for k in range(20)))
    info.write_text("".join(f"{5 + i}\n" for i in range(26)))
    job = with_table_sizes(JobConfig(dataset=f"criteo:{tsv}"), str(info))
    dataset = open_dataset(job.dataset, **job.dataset_options, progress=False)
    assert dataset.info.table_sizes == tuple(5 + i for i in range(26))
    batch = next(dataset.batches(8))
    assert (batch.sparse < [5 + i for i in range(26)]).all()


def test_a_window_over_the_budget_is_refused_naming_the_lookahead_that_fits():
    job = JobConfig(dataset="synthetic", dataset_options={"scale": 0.0005, "seed": 1}, global_batch=64, steps=40,
                    lookahead=16)
    dataset = open_dataset(job.dataset, **job.dataset_options)
    peak = peak_rows(job, dataset)
    assert check_cache_budget(job, dataset, peak) == peak
    with pytest.raises(CacheBudgetExceeded) as refused:
        check_cache_budget(job, dataset, peak - 1)
    message = str(refused.value)
    assert f"holds up to {peak:,} rows, more than --cache-size {peak - 1:,}" in message
    fits = int(re.search(r"lookahead (\d+) fits", message).group(1))
    assert peak_rows(dataclasses.replace(job, lookahead=fits), dataset) <= peak - 1
    assert peak_rows(dataclasses.replace(job, lookahead=fits + 1), dataset) > peak - 1
    with pytest.raises(CacheBudgetExceeded, match="lookahead 1 fits"):   # it streams every row: no cache
        check_cache_budget(job, dataset, 0)


def test_the_docs_table_lists_every_flag_the_code_knows():
    rows = re.findall(r"^\| `(--[a-z-]+)` \| ([a-z, ]+) \|", DOCS.read_text(), re.MULTILINE)
    assert sorted(rows) == sorted((f.name, ", ".join(f.roles)) for f in FLAGS)


def test_a_bad_table_file_stops_the_command_with_its_line(tmp_path):
    job_file, info = tmp_path / "job.toml", tmp_path / "emb_table_info.txt"
    JobConfig(dataset=f"criteo:{tmp_path / 'data.txt'}").save(job_file)
    info.write_text("1460\nC2\n")
    with pytest.raises(SystemExit, match=r"embps oracle-cacher: .*line 2: 'C2' is not a table size"):
        job_of(parse("oracle-cacher", "--job", str(job_file), "--emb-info-file", str(info)))
    assert JobConfig.load(job_file).dataset_options == {}   # the file is left as it was
    args = parse("train", "--emb-info-file", str(info))   # the default data is synthetic
    with pytest.raises(SystemExit, match=r"embps train: --emb-info-file sets the tables of Criteo-format data"):
        args.run(args)
