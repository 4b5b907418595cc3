"""The `embps` command: one subcommand per module exposing COMMAND, HELP, add_arguments(parser) and
run(args) -> exit code, and EXTRA when it needs an optional extra of the package.  New services and
tools register by joining SUBCOMMANDS.  Nothing here imports an extra: a core install runs the shards."""

import argparse
import importlib.util
import sys

from .common import structured_log
from .demos import store_demo
from .deploy import compose_command, health_command, reshard_command
from .oracle_cacher import service as oracle_cacher_service
from .placement import partition_command
from .datasets import criteo_cli
from .ps_shard import server as ps_shard_server
from .trainer import train_command, trainer_command
from .trainer_gateway import service as trainer_gateway_service

SUBCOMMANDS = (train_command, store_demo, ps_shard_server, oracle_cacher_service, trainer_gateway_service,
               trainer_command, criteo_cli, reshard_command, compose_command, health_command, partition_command)

# The modules that tell whether an extra of pyproject.toml is installed.
EXTRA_MODULES = {"train": ("torch", "matplotlib")}


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
        sub.set_defaults(run=module.run, extra=getattr(module, "EXTRA", None))
    return parser


def missing_extra(command: str, extra: str | None) -> str | None:
    """Why `embps COMMAND` cannot run here (its extra is not installed), or None when it can."""
    missing = [name for name in EXTRA_MODULES.get(extra or "", ()) if importlib.util.find_spec(name) is None]
    if not missing:
        return None
    return (f"embps {command} needs {' and '.join(missing)}, which this installation lacks: "
            f"pip install 'embps[{extra}]'")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if (reason := missing_extra(args.command, args.extra)) is not None:
        print(reason, file=sys.stderr)
        return 2
    structured_log.configure(args.log_level, args.log_format == "json")
    return args.run(args)


if __name__ == "__main__":
    sys.exit(main())
