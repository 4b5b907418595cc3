"""Bagpipe's command-line flags on ours: every flag of Bagpipe's oracle cacher, embedding server and
example trainers, what it is here, and the argparse wiring that makes `embps oracle-cacher` take the
oracle's flags that mean something here and refuse the others (and the shard refuse the embedding
server's) by name, saying what to use instead.  docs/bagpipe.md is this table for people."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass
from pathlib import Path

from embps.common.job_config import JobConfig


@dataclass(frozen=True)
class Flag:
    name: str
    roles: tuple[str, ...]   # Bagpipe's programs that take it: "oracle", "server", "trainer"
    here: str                # what it is in embps, or why it has no meaning here
    accepted: bool = False   # `embps oracle-cacher` takes it (the others are refused by name)
    on_shard: str = ""       # why a shard refuses it, where that differs from `here`

    def refusal(self, role: str) -> str:
        return (self.on_shard if role == "server" and self.on_shard else self.here)


FLAGS = (
    Flag("--lookahead-value", ("oracle",), "the job's lookahead L (embps train --lookahead)", True),
    Flag("--mini-batch-size", ("oracle",), "the job's global batch, split evenly over the trainers "
         "(embps train --batch)", True),
    Flag("--cache-size", ("oracle", "trainer"), "the caches' row budget: the oracle refuses a job whose window "
         "holds more rows, naming the lookahead that fits (embps train --cache-size; init_cache's cache_size)", True),
    Flag("--processed-csv", ("oracle",), "the job's data, Criteo's Kaggle TSV layout or a directory written by "
         "`embps preprocess-criteo` (dataset criteo:<path>); not Bagpipe's JSON-lines part files", True),
    Flag("--world-size-trainers", ("oracle", "trainer"), "the job's trainers (embps train --trainers; "
         "init_cache's trainer_world_size)", True),
    Flag("--emb-info-file", ("oracle", "server", "trainer"), "the job's table sizes, one per line "
         "(embps train --emb-info-file)", True,
         on_shard="the oracle creates the job's table from them (embps oracle-cacher --emb-info-file)"),
    Flag("--prefetch", ("oracle",), "the oracle always plans prefetches (the job's mode sync)"),
    Flag("--cache", ("oracle",), "the gateways always cache in mode sync (mode direct is the uncached baseline)"),
    Flag("--dataset-multiprocessing", ("oracle",), "the reader maps the preprocessed data, without loader "
         "processes"),
    Flag("--dataset-multi-num", ("oracle",), "there are no loader processes"),
    Flag("--worker-id", ("oracle", "server", "trainer"), "every server's address is in the job file's "
         "[addresses] (a trainer's worker_id is init_cache's)"),
    Flag("--world-size", ("oracle", "server", "trainer"), "the job file lists every address (a trainer's "
         "world_size is init_cache's)"),
    Flag("--master-ip", ("oracle", "server", "trainer"), "addresses are in the job file's [addresses]; a "
         "trainer finds the job through EMBPS_JOB or EMBPS_ORACLE"),
    Flag("--emb-size", ("server",), "the job's dim sets the table, which the oracle creates (embps train --dim; "
         "init_cache's emb_size)"),
    Flag("--lookahead-val", ("trainer",), "init_cache's lookahead_value, which must be the job's lookahead"),
    Flag("--dist-worker-id", ("trainer",), "init_cache's training_worker_id; embps trainer --rank"),
    Flag("--dist-master-ip", ("trainer",), "the trainers' torch.distributed rendezvous: the job file's "
         "addresses.trainers"),
    Flag("--dist-backend", ("trainer",), "the trainers' own DDP backend (embps trainers use gloo)"),
    Flag("--device", ("trainer",), "init_cache's device"),
    Flag("--arch-mlp-top", ("trainer",), "the model's top MLP; embps models take their sizes in code "
         "(embps.models.build_model)"),
    Flag("--arch-mlp-bot", ("trainer",), "the model's bottom MLP; as --arch-mlp-top"),
    Flag("--filter-range", ("trainer",), "FGCNN's convolution channels (embps.models)"),
    Flag("--logging-prefix", ("trainer",), "embps train writes its logs and results under --data-dir"),
)
BY_NAME = {flag.name: flag for flag in FLAGS}


def _refusal(reason: str) -> type[argparse.Action]:
    class Refused(argparse.Action):
        def __call__(self, parser, namespace, values, option_string=None):
            parser.error(f"{option_string} (Bagpipe's) has no meaning here: {reason}")
    return Refused


def add_refused(parser: argparse.ArgumentParser, role: str) -> None:
    """Makes the parser refuse, by name, every Bagpipe flag of `role` that it does not take itself."""
    taken = {option for action in parser._actions for option in action.option_strings}
    for flag in FLAGS:
        if role in flag.roles and flag.name not in taken:
            parser.add_argument(flag.name, nargs="?", action=_refusal(flag.refusal(role)), help=argparse.SUPPRESS)


def add_oracle_flags(parser: argparse.ArgumentParser) -> None:
    """Bagpipe's oracle flags that mean something here (they set the job), then the refusal of the rest."""
    group = parser.add_argument_group("Bagpipe's flags (they set the job's settings; docs/bagpipe.md)")
    group.add_argument("--lookahead-value", type=int, help=BY_NAME["--lookahead-value"].here)
    group.add_argument("--mini-batch-size", type=int, help=BY_NAME["--mini-batch-size"].here)
    group.add_argument("--processed-csv", help=BY_NAME["--processed-csv"].here)
    group.add_argument("--world-size-trainers", type=int, help=BY_NAME["--world-size-trainers"].here)
    group.add_argument("--emb-info-file", help=BY_NAME["--emb-info-file"].here)
    group.add_argument("--cache-size", type=int, default=0, help=BY_NAME["--cache-size"].here)
    add_refused(parser, "oracle")


def read_emb_info(path: str | Path) -> list[int]:
    """Bagpipe's emb_table_info.txt: one table size per line (blank lines are skipped)."""
    sizes = []
    for number, line in enumerate(Path(path).read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            size = int(line)
        except ValueError:
            size = 0
        if size < 1:
            raise ValueError(f"{path}: line {number}: {line.strip()!r} is not a table size (a positive integer)")
        sizes.append(size)
    if not sizes:
        raise ValueError(f"{path}: no table sizes (one per line)")
    return sizes


def with_table_sizes(job: JobConfig, emb_info_file: str) -> JobConfig:
    """The job with the tables of a Bagpipe emb_table_info.txt (Criteo-format data only)."""
    if not job.dataset.startswith("criteo:"):
        raise ValueError(f"--emb-info-file sets the tables of Criteo-format data (--processed-csv or "
                         f"criteo:<path>), not of {job.dataset!r}")
    options = {**job.dataset_options, "table_sizes": read_emb_info(emb_info_file)}
    return dataclasses.replace(job, dataset_options=options)


def apply_oracle_flags(job: JobConfig, args: argparse.Namespace) -> JobConfig:
    """The job as Bagpipe's oracle flags in args set it (the ones not given leave it as it is)."""
    changes: dict = {}
    for flag, field in (("lookahead_value", "lookahead"), ("mini_batch_size", "global_batch"),
                        ("world_size_trainers", "trainers")):
        if getattr(args, flag) is not None:
            changes[field] = getattr(args, flag)
    if args.processed_csv is not None:
        changes["dataset"] = f"criteo:{args.processed_csv}"
        if not job.dataset.startswith("criteo:"):   # another source's options do not apply
            changes["dataset_options"] = {}
    job = dataclasses.replace(job, **changes)
    return with_table_sizes(job, args.emb_info_file) if args.emb_info_file else job
