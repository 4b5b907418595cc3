"""The core install (`pip install embps`, no extras) in a clean venv: a shard serves and PSClient
round-trips there without PyTorch, matplotlib or pymemcache, and the commands that train name the
extra they need."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

from embps.common.health import wait_serving

REPO = Path(__file__).resolve().parents[2]
BUILD_INPUTS = ("pyproject.toml", "setup.py", "README.md", "native", "services")   # as deploy/Dockerfile copies
EXTRA_MODULES = ("torch", "matplotlib", "pymemcache")
START_TIMEOUT_SECONDS = 60.0

# Runs in the venv, from outside the repository: PSClient on both data paths, and the RDMA choice a
# machine with a device but without pymemcache would make.
CLIENT_SCRIPT = """
import json, sys
import numpy as np
import embps
from embps.client import ClusterConfig, PSClient
from embps.rdma.discovery import RdmaProbe, choose_data_path
from embps.api import InitializerSpec, OptimizerSpec, TableSpec

address = sys.argv[1]
keys = np.array([7, 9, 7], np.uint64)
grads = np.arange(12, dtype=np.float32).reshape(3, 4)
rows = {}
for path in ("grpc", "tcp"):
    with PSClient(ClusterConfig.from_addresses([address], data_path=path)) as client:
        spec = TableSpec(dim=4, capacity=1024, optimizer=OptimizerSpec("sgd", lr=0.5),
                         initializer=InitializerSpec("zeros"))
        client.create_table(path, spec)
        client.update(path, keys, grads)
        rows[path] = client.lookup(path, np.array([9, 7, 5], np.uint64)).tolist()
        assert client.data_path_kinds() == [path], client.data_path_kinds()
rdma = choose_data_path("auto", "", "127.0.0.1:11211", probe=RdmaProbe(("rxe0",)), role="client")
print(json.dumps({"embps": embps.__file__, "rows": rows, "rdma_reason": rdma.reason}))
"""


def clean_env() -> dict:
    """The environment without this test run's source path, so the venv runs what it installed."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}


def run(argv, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], cwd=cwd, env=clean_env(), capture_output=True, text=True,
                          **kwargs)


def copy_build_inputs(src: Path) -> Path:
    """The sources pip builds from, without this checkout's build products (the in-place native core)."""
    ignore = shutil.ignore_patterns("__pycache__", "*.so", "*.o", "_native.c", "*.egg-info", "build")
    src.mkdir()
    for name in BUILD_INPUTS:
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, src / name, ignore=ignore)
        else:
            shutil.copy(REPO / name, src / name)
    return src


@pytest.fixture(scope="module")
def core_venv(tmp_path_factory, request) -> Path:
    """A venv holding `pip install <repo>` and nothing else; pip's downloads are kept in pytest's cache."""
    root = tmp_path_factory.mktemp("core-install")
    created = run([sys.executable, "-m", "venv", root / "venv"], root)
    if created.returncode != 0:
        pytest.skip(f"cannot create a venv here (python3-venv missing?): {created.stderr.strip()}")
    src = copy_build_inputs(root / "src")
    pytest_cache = getattr(request.config, "cache", None)   # None under -p no:cacheprovider
    cache = pytest_cache.mkdir("pip-cache") if pytest_cache else root / "pip-cache"
    python = root / "venv" / "bin" / "python"
    installed = run([python, "-m", "pip", "install", "--quiet", "--cache-dir", cache, src], root, timeout=600)
    assert installed.returncode == 0, f"pip install of the core package failed:\n{installed.stderr[-4000:]}"
    return root / "venv"


def test_core_install_leaves_out_every_extra(core_venv):
    for module in EXTRA_MODULES:
        probe = run([core_venv / "bin" / "python", "-c", f"import {module}"], core_venv.parent)
        assert probe.returncode != 0 and f"No module named '{module}'" in probe.stderr, (module, probe.stderr)
    help_text = run([core_venv / "bin" / "embps", "--help"], core_venv.parent)
    assert help_text.returncode == 0 and "ps-shard" in help_text.stdout, help_text.stderr


@pytest.mark.parametrize("argv", [["train", "--steps", "1"], ["trainer", "--job", "job.toml", "--rank", "0",
                                                                   "--out", "out"]])
def test_training_commands_name_their_extra(core_venv, argv):
    result = run([core_venv / "bin" / "embps", *argv], core_venv.parent)
    assert result.returncode == 2
    assert result.stderr.strip() == (f"embps {argv[0]} needs torch and matplotlib, which this installation lacks: "
                                     "pip install 'embps[train]'")


def test_shard_serves_and_psclient_round_trips(core_venv):
    work = core_venv.parent / "shard"
    work.mkdir()
    ready = work / "ready.json"
    settings = {"id": "core-0", "data_dir": str(work / "store"), "listen": "127.0.0.1:0",
                "data_listen": "127.0.0.1:0", "metrics_listen": "127.0.0.1:0", "ready_file": str(ready)}
    (work / "shard.toml").write_text("[shard]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in settings.items()))
    with open(work / "shard.log", "wb") as log:
        shard = subprocess.Popen([core_venv / "bin" / "embps", "ps-shard", "--config", work / "shard.toml"],
                                 cwd=work, env=clean_env(), stdout=log, stderr=log)
    try:
        addresses = wait_ready(shard, ready, work / "shard.log")
        wait_serving(addresses["grpc"], START_TIMEOUT_SECONDS)

        client = run([core_venv / "bin" / "python", "-c", CLIENT_SCRIPT, addresses["grpc"]], work, timeout=120)
        assert client.returncode == 0, client.stderr
        report = json.loads(client.stdout)
        assert Path(report["embps"]).is_relative_to(core_venv)   # the installed copy, not the repository
        # Zero rows, SGD with lr 0.5, key 7's two gradients summed; key 5 was never written.
        expected = [-0.5 * np.arange(4, 8), -0.5 * (np.arange(0, 4) + np.arange(8, 12)), np.zeros(4)]
        for path in ("grpc", "tcp"):
            np.testing.assert_allclose(report["rows"][path], expected)
        assert report["rdma_reason"] == "pymemcache is not installed: pip install 'embps[rdma]'"

        # Without pyverbs the shard offers no RDMA path and says why in its metrics.
        metrics = urllib.request.urlopen(f"http://{addresses['metrics']}/metrics", timeout=10).read().decode()
        offered = [line for line in metrics.splitlines() if line.startswith("embps_shard_rdma_offered{")]
        assert len(offered) == 1 and "pyverbs not importable" in offered[0] and offered[0].endswith(" 0.0"), offered
    finally:
        code = stop(shard)
    assert code == 0, (work / "shard.log").read_text()[-4000:]


def wait_ready(process: subprocess.Popen, ready: Path, log: Path) -> dict:
    """The shard's bound addresses, once it has written its ready file."""
    deadline = time.monotonic() + START_TIMEOUT_SECONDS
    while not ready.exists():
        assert process.poll() is None, f"the shard exited with {process.returncode}:\n{log.read_text()[-4000:]}"
        assert time.monotonic() < deadline, f"the shard did not start:\n{log.read_text()[-4000:]}"
        time.sleep(0.05)
    return json.loads(ready.read_text())


def stop(process: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL if it does not exit; its exit code (negative when killed)."""
    process.send_signal(signal.SIGTERM)
    try:
        return process.wait(30)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.wait()
