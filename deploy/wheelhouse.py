"""The wheelhouse the images install from, offline (`make wheelhouse`): every third-party wheel the
images' Python (Debian bookworm's CPython 3.11, x86_64) needs, fetched on the host with `pip download`,
plus one requirements file per part of pyproject.toml the Dockerfile installs.

    python3 deploy/wheelhouse.py build/wheelhouse

Inside a build container pip has neither the host's package index nor its CA bundle, so the images
run `pip install --no-index --find-links` on this directory.  The host's pip configuration decides
where wheels come from (its index, find-links, a local torch wheel); a wheelhouse that already holds
every requirement (an earlier run, or one carried to an air-gapped site) is used without any index.  The embps wheel itself is not here: the Dockerfile
compiles it (its cffi extension against Debian's libpmem2) in its build stage.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON_VERSION, ABI = "3.11", "cp311"          # Debian bookworm's python3
GLIBC_MINOR = 36                               # bookworm's glibc: manylinux_2_36 and every older tag
EXTRAS = ("train", "rdma")                     # the images' roles (pyproject.toml's optional dependencies)


def requirement_sets(pyproject: dict) -> dict[str, list[str]]:
    """Requirements by part: "build" (the build stage's build-system), "core", and each extra."""
    project = pyproject["project"]
    sets = {"build": list(pyproject["build-system"]["requires"]), "core": list(project["dependencies"])}
    for extra in EXTRAS:
        sets[extra] = list(project["optional-dependencies"][extra])
    return sets


def platform_args() -> list[str]:
    tags = [f"manylinux_2_{minor}_x86_64" for minor in range(GLIBC_MINOR, 16, -1)]
    tags += ["manylinux2014_x86_64", "manylinux2010_x86_64", "manylinux1_x86_64"]
    return [arg for tag in tags for arg in ("--platform", tag)]


def download(dest: Path, requirements: list[str], offline: bool = False) -> bool:
    """pip download into dest; offline: from dest alone (is it complete?).  True when pip succeeded."""
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--dest", str(dest), "--only-binary=:all:",
               "--python-version", PYTHON_VERSION, "--implementation", "cp", "--abi", ABI, *platform_args(),
               *(["--no-index", "--find-links", str(dest)] if offline else []), *requirements]
    return subprocess.run(command, check=False, capture_output=offline).returncode == 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path, help="the wheelhouse directory")
    args = parser.parse_args(argv)
    sets = requirement_sets(tomllib.loads((ROOT / "pyproject.toml").read_text()))
    args.dest.mkdir(parents=True, exist_ok=True)
    requirements = [r for part in sets.values() for r in part]
    # A complete wheelhouse (an earlier run, or one carried to an air-gapped site) needs no index.
    if not download(args.dest, requirements, offline=True) and not download(args.dest, requirements):
        print("wheelhouse: pip could not fetch the wheels (see above)", file=sys.stderr)
        return 1
    for part, requirements in sets.items():
        path = args.dest / f"requirements-{part}.txt"
        text = "".join(r + "\n" for r in requirements)
        if not path.exists() or path.read_text() != text:   # unchanged files keep the image layers cached
            path.write_text(text)
    wheels = sorted(args.dest.glob("*.whl"))
    size = sum(w.stat().st_size for w in wheels) / 1e6
    print(f"wheelhouse {args.dest}: {len(wheels)} wheels, {size:.0f} MB", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
