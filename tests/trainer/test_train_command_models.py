"""`embps train --model`: every model of embps.models is a choice, Caser brings its data set and width
(MovieLens sequences, dim 50) and is refused by name on data that has no sequences; `--emb-optimizer adam`
and `--emb-betas` set the table's optimizer."""

import pytest

from embps.api import OptimizerKind
from embps.cli import build_parser
from embps.trainer.train_command import job_from_args


def parse(*argv):
    return build_parser().parse_args(["train", *argv])


def test_defaults_per_model():
    job = job_from_args(parse("--model", "caser"))
    assert (job.dataset, job.dim) == ("movielens-100k-seq", 50)
    job = job_from_args(parse("--model", "fgcnn"))
    assert (job.dataset, job.dim, job.dataset_options) == ("synthetic", 32, {"scale": 0.01})
    job = job_from_args(parse("--model", "caser", "--dim", "16"))
    assert job.dim == 16


def test_an_adam_table_with_its_betas():
    spec = job_from_args(parse("--emb-optimizer", "adam", "--emb-lr", "0.001", "--emb-betas", "0.8", "0.99")
                         ).table_spec(10).optimizer
    assert (spec.kind, spec.lr, spec.eps, spec.beta1, spec.beta2) == (OptimizerKind.ADAM, 0.001, 1e-8, 0.8, 0.99)
    spec = job_from_args(parse("--emb-optimizer", "adam")).table_spec(10).optimizer
    assert (spec.beta1, spec.beta2) == (0.9, 0.999)   # torch's


def test_caser_on_ctr_data_is_refused_before_anything_starts(tmp_path):
    args = parse("--model", "caser", "--dataset", "synthetic", "--data-dir", str(tmp_path / "job"))
    with pytest.raises(SystemExit, match="caser.*sequence data set"):
        args.run(args)
    assert not (tmp_path / "job").exists()


def test_unknown_model_is_refused(tmp_path):
    args = parse("--model", "fgcn", "--data-dir", str(tmp_path / "job"))
    with pytest.raises(SystemExit, match="fgcnn"):
        args.run(args)
