"""The `embps` command: one subcommand per module exposing COMMAND, HELP, add_arguments(parser) and
run(args) -> exit code.  New services and tools register by joining SUBCOMMANDS."""

import argparse
import logging
import sys

from .demos import store_demo

SUBCOMMANDS = (store_demo,)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [pid %(process)d]: %(message)s"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embps", description="Parameter server for huge embedding tables.")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log records go to stderr (default: %(default)s)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, format=LOG_FORMAT, stream=sys.stderr)
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
