"""The command lines the README and docs/ show are ones `embps` accepts: every `embps ...` line of a
```sh block (and the admin container's, whose entry point is embps) parses with the real parser, and
every EMBPS_SHARD_<SETTING> variable they name is a shard setting.  The commands are parsed, not run:
what they do is tested where it is built."""

import re
import shlex
from pathlib import Path

import pytest

from embps.cli import build_parser
from embps.ps_shard.config import ENV_PREFIX, ShardConfig

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# The part of a line that `embps` receives: after `embps`, or after the admin service's name.
COMMAND = re.compile(r"(?:^|\s)(?:embps|docker compose run --rm admin)\s+(.*)$")


def shell_commands() -> list[tuple[str, str]]:
    """(document, argv text) of every embps command in a ```sh block; synopses with [optional] parts
    are left out."""
    found = []
    for document in DOCUMENTS:
        for block in re.findall(r"^```sh\n(.*?)^```", document.read_text(), re.DOTALL | re.MULTILINE):
            for line in block.replace("\\\n", " ").splitlines():
                match = COMMAND.search(line.split("#")[0].strip())
                if match and "[" not in match.group(1):
                    found.append((document.name, match.group(1)))
    return found


COMMANDS = shell_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 4


@pytest.mark.parametrize("document,argv", COMMANDS, ids=[f"{d}: {a[:40]}" for d, a in COMMANDS])
def test_a_documented_command_parses(document, argv):
    try:
        build_parser().parse_args(shlex.split(argv))
    except SystemExit as stop:
        pytest.fail(f"{document}: `embps {argv}` is refused by the parser (exit {stop.code})")


def test_every_documented_shard_variable_is_a_setting():
    settings = {ENV_PREFIX + name.upper() for name in ShardConfig.__dataclass_fields__ if name != "security"}
    named = {(d.name, v) for d in DOCUMENTS for v in re.findall(rf"{ENV_PREFIX}[A-Z0-9_]*[A-Z0-9]", d.read_text())}
    unknown = sorted((d, v) for d, v in named if v not in settings)
    assert not unknown, f"shard variables the docs name that no setting reads: {unknown}"
