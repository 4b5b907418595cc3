"""Runs every bench/*_bench.py with this interpreter, one after another; exits 1 if any of them failed.

Each script writes straight to our stdout/stderr (no pipe), so its output streams live and its
progress bars still see the terminal.
"""

import argparse
import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def run(script: Path, quick: bool) -> tuple[int, float]:
    print(f"=== {script.name}{' --quick' if quick else ''}", flush=True)
    start = time.perf_counter()
    rc = subprocess.run([sys.executable, str(script), *(["--quick"] if quick else [])]).returncode
    return rc, time.perf_counter() - start


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="pass --quick to every benchmark")
    args = parser.parse_args()
    scripts = sorted(BENCH_DIR.glob("*_bench.py"))
    if not scripts:
        print(f"no *_bench.py scripts in {BENCH_DIR}", file=sys.stderr)
        return 1
    results = {script.name: run(script, args.quick) for script in scripts}
    print("=== summary", flush=True)
    for name, (rc, seconds) in results.items():
        print(f"{name:30s} {'ok' if rc == 0 else f'FAILED (exit {rc})':18s} {seconds:7.1f} s")
    return 1 if any(rc for rc, _ in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
