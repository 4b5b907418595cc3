"""`embps trainer --job FILE --rank R --out DIR`: one data-parallel trainer of a training job (see
embps.trainer.training; PyTorch is imported only when a trainer runs)."""

COMMAND = "trainer"
HELP = "one data-parallel trainer of a training job"
EXTRA = "train"


def add_arguments(parser) -> None:
    parser.add_argument("--job", required=True, help="the job's TOML file")
    parser.add_argument("--rank", type=int, required=True)
    parser.add_argument("--out", required=True, help="directory for metrics and the dense parameters")


def run(args) -> int:
    from .training import main
    main(args.job, args.rank, args.out)
    return 0
