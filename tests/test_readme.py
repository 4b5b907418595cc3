"""The README tells the truth: each of its Python examples runs as written, in a fresh empty directory,
as its own process; an example that reads cluster.toml finds one naming a real local cluster; the
shard and cluster files it shows are valid configs."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from embps.client import ClusterConfig
from embps.common.local_cluster import LocalCluster
from embps.ps_shard.config import ShardConfig

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
EXAMPLE_SECONDS = 300


def fenced(language: str) -> list[str]:
    return re.findall(rf"^```{language}\n(.*?)^```", README, re.DOTALL | re.MULTILINE)


PYTHON_EXAMPLES = fenced("python")
TOML_EXAMPLES = fenced("toml")


def test_the_readme_shows_a_store_and_a_client_example():
    assert len(PYTHON_EXAMPLES) >= 2
    assert any("Store(" in code for code in PYTHON_EXAMPLES)
    assert any("cluster.toml" in code for code in PYTHON_EXAMPLES)


def run_example(code: str, directory: Path) -> subprocess.CompletedProcess:
    """`python -c code` in directory, with this checkout's package first on the path."""
    path = [str(ROOT / "services")] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(path))
    return subprocess.run([sys.executable, "-c", code], cwd=directory, env=env, capture_output=True, text=True,
                          timeout=EXAMPLE_SECONDS)


@pytest.mark.parametrize("index", range(len(PYTHON_EXAMPLES)))
def test_python_example_runs_as_written(tmp_path, index):
    code = PYTHON_EXAMPLES[index]
    directory = tmp_path / "example"
    directory.mkdir()
    if "cluster.toml" in code:
        with LocalCluster(tmp_path / "shards", 2) as cluster:
            (directory / "cluster.toml").write_text(cluster.config.to_toml())
            result = run_example(code, directory)
    else:
        result = run_example(code, directory)
    assert result.returncode == 0, f"README example {index + 1} failed:\n{code}\n{result.stderr}"


@pytest.mark.parametrize("index", range(len(TOML_EXAMPLES)))
def test_config_example_loads(tmp_path, index):
    text = TOML_EXAMPLES[index]
    path = tmp_path / "example.toml"
    path.write_text(text)
    if "[shard]" in text:
        assert ShardConfig.load(path, environ={}).data_dir
    elif "[[shards]]" in text:
        assert ClusterConfig.load(path).shards
    else:
        pytest.fail(f"README config example {index + 1} is neither a shard nor a cluster file:\n{text}")
