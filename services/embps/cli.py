"""The `embps` command: one subcommand per module exposing COMMAND, HELP, add_arguments(parser) and
run(args) -> exit code.  New services and tools register by joining SUBCOMMANDS."""

import argparse
import sys

from .common import structured_log
from .demos import store_demo
from .deploy import compose_command, health_command, reshard_command
from .oracle_cacher import service as oracle_cacher_service
from .datasets import criteo_cli
from .ps_shard import server as ps_shard_server
from .trainer import train_command, trainer_command
from .trainer_gateway import service as trainer_gateway_service

SUBCOMMANDS = (train_command, store_demo, ps_shard_server, oracle_cacher_service, trainer_gateway_service,
               trainer_command, criteo_cli, reshard_command, compose_command, health_command)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embps", description="Parameter server for huge embedding tables.")
    parser.add_argument("--log-level", default="WARNING", choices=("DEBUG", "INFO", "WARNING", "ERROR"),
                        help="log records go to stderr (default: %(default)s)")
    parser.add_argument("--log-format", default="text", choices=("text", "json"),
                        help="json: one object per line (services choose their own in their config)")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for module in SUBCOMMANDS:
        sub = commands.add_parser(module.COMMAND, help=module.HELP, description=module.__doc__)
        module.add_arguments(sub)
        sub.set_defaults(run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    structured_log.configure(args.log_level, args.log_format == "json")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
