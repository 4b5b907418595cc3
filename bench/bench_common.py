"""What every benchmark shares: the report that prints `figure`/`context` lines, the key and Zipf
workload generators, and result-file helpers.  (Benchmarks run as scripts, so this is imported by
name from bench/.)"""

from __future__ import annotations

import contextlib
import json
import operator
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path

import numpy as np


class Report:
    """Collects figures and context numbers, printing each as it comes; goals: {figure: (op, target)}."""

    def __init__(self, goals: dict[str, tuple[str, float]]):
        self.goal_specs = goals
        self.figures: dict[str, dict] = {}
        self.context: dict[str, dict] = {}
        self.samples: dict[str, list[float]] = {}
        self.info: dict[str, object] = {}

    def figure(self, name: str, value: float, unit: str) -> None:
        print(f"figure {name} {value:.4g} {unit}", flush=True)
        self.figures[name] = {"value": value, "unit": unit}

    def note(self, name: str, value: float, unit: str) -> None:
        print(f"context {name} {value:.4g} {unit}", flush=True)
        self.context[name] = {"value": value, "unit": unit}

    def passes(self, times: dict[str, list[float]]) -> dict[str, float]:
        """Keeps every timed pass and returns the best of each contender."""
        self.samples.update(times)
        return {name: min(seconds) for name, seconds in times.items()}

    def goals(self) -> dict[str, dict]:
        compare = {">=": operator.ge, "<=": operator.le}
        return {name: {"op": op, "target": target, "met": compare[op](self.figures[name]["value"], target)}
                for name, (op, target) in self.goal_specs.items() if name in self.figures}

    def print_goals(self) -> dict[str, dict]:
        """Prints whether each goal was met; returns them for the results file."""
        goals = self.goals()
        for name, goal in goals.items():
            print(f"goal {name} {goal['op']} {goal['target']:g}: {'met' if goal['met'] else 'MISSED'}")
        return goals


def save_results(report: Report, results_dir: Path, name: str, benchmark: str, config, timing: str,
                 environment: dict, wall_seconds: float, plot: Callable[[dict, Path], None], **extra) -> None:
    """Prints the goals, then writes results_dir/name.json (every figure, pass and setting) and the plot
    (plot(goals, png_path)) beside it."""
    results_dir.mkdir(parents=True, exist_ok=True)
    goals = report.print_goals()
    results = {
        "benchmark": benchmark,
        "timestamp": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "config": asdict(config),
        "timing": timing,
        "figures": report.figures,
        "goals": goals,
        "context": report.context,
        "details": report.info,
        "samples_seconds": report.samples,
        "environment": environment,
        **extra,
        "wall_seconds": wall_seconds,
    }
    json_path, png_path = results_dir / f"{name}.json", results_dir / f"{name}.png"
    write_atomically(json_path, lambda tmp: tmp.write_text(json.dumps(results, indent=2) + "\n"))
    plot(goals, png_path)
    print(f"wrote {json_path} and {png_path}")


class BenchRun:
    """One run of a benchmark: its wall time and the load average before and after, which its results
    file records (on a shared machine the load says how far to trust the figures)."""

    def __init__(self, benchmark: str):
        self.benchmark = benchmark
        self.started = time.perf_counter()
        self.load = {"before": list(os.getloadavg())}

    def save(self, report: Report, results_dir: Path, config, timing: str, environment: dict,
             plot: Callable[[Report, dict, object, Path], None]) -> None:
        """save_results with this run's wall time and load; plot(report, goals, config, png_path)."""
        self.load["after"] = list(os.getloadavg())
        save_results(report, results_dir, config.results_name, self.benchmark, config, timing, environment,
                     time.perf_counter() - self.started, lambda goals, path: plot(report, goals, config, path),
                     load_average=self.load)
        print(f"{self.benchmark} bench took {time.perf_counter() - self.started:.1f} s")


@contextlib.contextmanager
def logs_kept_on_failure(data_dir: Path, label: str, console) -> Iterator[None]:
    """A job under data_dir that fails leaves its logs in a new temporary directory, named on the console
    (the caller removes data_dir)."""
    try:
        yield
    except BaseException:
        kept = Path(tempfile.mkdtemp(prefix=f"embps-bench-failed-{slug(label)}-"))
        with contextlib.suppress(OSError):
            shutil.copytree(data_dir / "logs", kept / "logs")
        console.print(f"[red]{label} failed; its logs are kept in {kept}")
        raise


def slug(label: str) -> str:
    """label as a file name: every run of other characters than word characters and dots becomes a dash."""
    return re.sub(r"[^\w.]+", "-", label)


def make_keys(rows: int) -> np.ndarray:
    """Random-looking distinct 64-bit ids: splitmix64 of the row index (a bijection, so no collisions)."""
    x = np.arange(rows, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def zipf_batches(rows: int, n_batches: int, batch: int, theta: float, rng: np.random.Generator) -> np.ndarray:
    """(n_batches, batch) row indices drawn Zipf(theta) by inverse CDF.  Popularity ranks are shuffled
    over the rows so hot rows lie scattered in memory, as hot ids do in a real table."""
    cdf = np.cumsum(np.arange(1, rows + 1, dtype=np.float64) ** -theta)
    cdf /= cdf[-1]
    ranks = np.searchsorted(cdf, rng.random((n_batches, batch)), side="right")
    return rng.permutation(rows)[ranks]


def mount_of(path: str) -> str:
    """'fstype options' of the file system holding path, from /proc/mounts."""
    target = os.path.realpath(path)
    mounts = [line.split() for line in Path("/proc/mounts").read_text().splitlines()]
    best = max((m for m in mounts if target == m[1] or target.startswith(m[1].rstrip("/") + "/")),
               key=lambda m: len(m[1]))
    return f"{best[2]} {best[3]}"


def save_figure(fig, path: Path) -> None:
    """Lays out a matplotlib figure, writes it to path as a PNG (atomically) and closes it."""
    import matplotlib.pyplot as plt
    fig.tight_layout()
    write_atomically(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110))
    plt.close(fig)


def write_atomically(path: Path, write: Callable[[Path], None]) -> None:
    tmp = path.with_name(path.name + ".tmp")  # bench/results/*.tmp is git-ignored
    write(tmp)
    os.replace(tmp, path)
