"""`embps compose --cluster cluster.toml [--out docker-compose.yml] [--job deploy/job.toml] ...`: writes
the compose file for a cluster config (see embps.deploy.compose_generator) and, with trainers, the
job file the training services read: its [job] settings are kept when it exists, `trainers` and
[addresses] are rewritten to match the compose services."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from embps.common.cluster_config import ClusterConfig
from embps.common.job_config import JobConfig

from .compose_generator import DEFAULT_IMAGE_PREFIX, DEFAULT_TAG, ComposeOptions, compose_job, generate

COMMAND = "compose"
HELP = "write docker-compose.yml (and the training job file) from a cluster config"
DEFAULT_OUT, DEFAULT_JOB, DEFAULT_TRAINERS = "docker-compose.yml", "deploy/job.toml", 2


def add_arguments(parser) -> None:
    parser.add_argument("--cluster", required=True, help="cluster config: its [[shards]] are the shard services")
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help='compose file to write, "-" for stdout (default: %(default)s)')
    parser.add_argument("--job", default=DEFAULT_JOB, help="job file of the training services (default: %(default)s)")
    parser.add_argument("--trainers", type=int,
                        help="trainer gateways and trainers, profile 'training'; 0: none (default: one per host "
                             f"when the cluster has hosts, else {DEFAULT_TRAINERS})")
    parser.add_argument("--pm", action="append", default=[], metavar="HOST_PATH",
                        help="PM for the shards: once = a directory per shard under this pmem mount, or once "
                             "per shard (default: a named volume per shard)")
    parser.add_argument("--rdma", action="store_true", help="pass /dev/infiniband to shards and gateways")
    parser.add_argument("--image-prefix", default=DEFAULT_IMAGE_PREFIX,
                        help="images PREFIX-shard, PREFIX-training, PREFIX-memcached, as `make image IMAGE_PREFIX=` "
                             "tags them (default: %(default)s)")
    parser.add_argument("--tag", default=DEFAULT_TAG, help="their tag (default: %(default)s)")
    parser.add_argument("--memcached-image", default="",
                        help="memcached from elsewhere, e.g. memcached:1.6-bookworm (default: PREFIX-memcached)")


def command_line(args) -> str:
    """The command, with the options that differ from the defaults: the compose file's header."""
    words = ["embps", "compose", "--cluster", args.cluster, "--out", args.out]
    for flag, value, default in (("--job", args.job, DEFAULT_JOB), ("--trainers", args.trainers, None),
                                 ("--image-prefix", args.image_prefix, DEFAULT_IMAGE_PREFIX),
                                 ("--tag", args.tag, DEFAULT_TAG), ("--memcached-image", args.memcached_image, "")):
        if value != default:
            words += [flag, str(value)]
    for path in args.pm:
        words += ["--pm", path]
    return " ".join(words + (["--rdma"] if args.rdma else []))


def _relative(path: str, compose_dir: Path) -> str:
    """path as the compose file names it: relative to the file's directory, starting with . or /."""
    relative = os.path.relpath(Path(path).resolve(), compose_dir)
    return relative if relative.startswith(("/", ".")) else "./" + relative


def run(args) -> int:
    compose_dir = Path.cwd() if args.out == "-" else Path(args.out).resolve().parent
    try:
        cluster = ClusterConfig.load(args.cluster)
        trainers = args.trainers if args.trainers is not None else len(cluster.hosts) or DEFAULT_TRAINERS
        options = ComposeOptions(image_prefix=args.image_prefix, tag=args.tag, memcached_image=args.memcached_image,
                                 trainers=trainers, pm=tuple(args.pm), rdma=args.rdma,
                                 job_file=_relative(args.job, compose_dir),
                                 cluster_file=_relative(args.cluster, compose_dir), command=command_line(args))
        text = generate(cluster, options)
        if trainers > 0:
            job_path = Path(args.job)
            job = compose_job(cluster, trainers, JobConfig.load(job_path) if job_path.exists() else None)
            if not job_path.exists() or job_path.read_text() != job.to_toml():
                job_path.parent.mkdir(parents=True, exist_ok=True)
                job.save(job_path)
                print(f"wrote {job_path}", file=sys.stderr)
    except ValueError as error:
        print(f"embps compose: {error}", file=sys.stderr)
        return 2
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    return 0
