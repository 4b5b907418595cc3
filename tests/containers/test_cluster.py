"""The cluster in containers (`make test-containers`, with a Docker engine): the images by role are built
from this checkout; memcached and two shards come up healthy under the committed docker-compose.yml; a
DLRM job trains across containers under the training profile; a shard killed with SIGKILL in the middle
of a stream of acknowledged updates (by `docker kill`, then compose brings it back; and from the host,
then its restart policy does) recovers every one of them from its PM file on its named volume; `make down` and `make up` serve the same rows; a third shard added to a copy
of deploy/cluster.toml joins after `embps compose`, and `embps reshard` inside the cluster leaves every
row on exactly one shard, its own.

The tests run in order and build on each other (pytest -x).  Compose project embps-test; its containers
and volumes are removed before and after.  Skipped when no engine is reachable."""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from embps.common.job_config import JobConfig

ROOT = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent
PROJECT = "embps-test"
DOCKER = os.environ.get("DOCKER", "docker")
COMPOSE = shlex.split(os.environ.get("COMPOSE", "docker-compose"))
ENV = dict(os.environ, COMPOSE_PROJECT_NAME=PROJECT, DOCKER=DOCKER)   # DOCKER: for deploy/*.sh
COMMITTED = ROOT / "docker-compose.yml"
SCALED = ROOT / "build/containers-test"          # the scaled-out copy of deploy/ and its compose file
CLUSTER_IN_ADMIN = "/etc/embps/cluster/cluster.toml"
IMAGES = {"shard": "embps-shard:latest", "training": "embps-training:latest", "memcached": "embps-memcached:latest"}
USERS = {"shard": "embps", "training": "embps", "memcached": "memcache"}
TIMINGS: dict[str, float] = {}

pytestmark = pytest.mark.timeout(1800)


def run(command: list[str], timeout: float = 120, check: bool = True, **kwargs) -> subprocess.CompletedProcess:
    kwargs = {"cwd": ROOT, "env": ENV, **kwargs}
    result = subprocess.run(command, capture_output=True, text=True, timeout=timeout, **kwargs)
    if check and result.returncode != 0:
        raise AssertionError(f"{shlex.join(command)} exited {result.returncode}\n"
                             f"--- stdout\n{result.stdout[-4000:]}\n--- stderr\n{result.stderr[-4000:]}")
    return result


def docker(*args: str, **kwargs) -> subprocess.CompletedProcess:
    return run([DOCKER, *args], **kwargs)


def compose(*args: str, file: Path = COMMITTED, **kwargs) -> subprocess.CompletedProcess:
    return run([*COMPOSE, "-f", str(file), *args], **kwargs)


def make(target: str, timeout: float, **variables: str) -> subprocess.CompletedProcess:
    started = time.monotonic()
    result = run(["make", "--no-print-directory", target, f"DOCKER={DOCKER}", f"COMPOSE={shlex.join(COMPOSE)}",
                  *(f"{k}={v}" for k, v in variables.items())], timeout=timeout)
    TIMINGS[f"make {target}"] = TIMINGS.get(f"make {target}", 0) + time.monotonic() - started
    print(result.stdout + result.stderr, end="")
    return result


def container(service: str, file: Path = COMMITTED) -> str:
    ids = compose("ps", "-q", service, file=file).stdout.split()
    assert len(ids) == 1, f"{service}: containers {ids}"
    return ids[0]


def running_services() -> list[str]:
    """The services of the test project with a running container (asked of the engine, alike for compose
    1.29 and v2)."""
    names = docker("ps", "--filter", f"label=com.docker.compose.project={PROJECT}", "--format",
                   '{{.Label "com.docker.compose.service"}}').stdout.split()
    return sorted(names)


def inspect(target: str, template: str) -> str:
    return docker("inspect", "-f", template, target).stdout.strip()


def admin_python(script: str, *args: str, file: Path = COMMITTED, timeout: float = 300,
                 mounts: tuple[str, ...] = ()) -> str:
    """A client container on the cluster's network (the admin service) runs tests/containers/<script>."""
    volumes = [arg for mount in (f"{HERE}:/tests:ro", *mounts) for arg in ("-v", mount)]
    return compose("--profile", "admin", "run", "--rm", "-T", *volumes, "--entrypoint", "python", "admin",
                   f"/tests/{script}", *args, file=file, timeout=timeout).stdout


def rows_report(file: Path = COMMITTED) -> dict:
    return json.loads(admin_python("rows_report.py", "--cluster", CLUSTER_IN_ADMIN, file=file).splitlines()[-1])


def shard_log(service: str, message: str) -> list[dict]:
    """The JSON records of a shard's log (all its runs: a restarted container keeps its log) with msg."""
    lines = docker("logs", container(service)).stderr.splitlines()
    records = [json.loads(line) for line in lines if line.startswith("{")]
    return [r for r in records if r.get("msg") == message]


def wait_healthy(*containers: str, timeout: int = 180) -> None:
    run(["deploy/wait-healthy.sh", str(timeout), *containers], timeout=timeout + 30)


def remove_project() -> None:
    """Every container, network and volume of the test project, whichever compose file made them."""
    label = f"label=com.docker.compose.project={PROJECT}"
    if containers := docker("ps", "-aq", "--filter", label).stdout.split():
        docker("rm", "-f", "-v", *containers, timeout=300)
    compose("--profile", "training", "--profile", "admin", "down", "-v", "--remove-orphans", timeout=300)
    if volumes := docker("volume", "ls", "-q", "--filter", label).stdout.split():
        docker("volume", "rm", *volumes)


@pytest.fixture(scope="module", autouse=True)
def engine():
    if shutil.which(DOCKER) is None or run([DOCKER, "info"], check=False).returncode != 0:
        pytest.skip("no Docker engine is reachable: `make test-containers` starts one (DOCKER_HOST is "
                    f"{os.environ.get('DOCKER_HOST', 'unset')})")
    remove_project()
    shutil.rmtree(SCALED, ignore_errors=True)
    yield
    remove_project()
    shutil.rmtree(SCALED, ignore_errors=True)
    print("\ntimings: " + ", ".join(f"{name} {seconds:.0f} s" for name, seconds in TIMINGS.items()))


# ---- images -------------------------------------------------------------------------------------

def test_images_by_role():
    make("image", timeout=3600)
    version = next(line.split('"')[1] for line in (ROOT / "pyproject.toml").read_text().splitlines()
                   if line.startswith("version = "))
    for role, image in IMAGES.items():
        labels = json.loads(inspect(image, "{{json .Config.Labels}}"))
        assert labels["io.embps.role"] == role and labels["org.opencontainers.image.version"] == version, labels
        assert labels["org.opencontainers.image.revision"] == run(["git", "rev-parse", "HEAD"]).stdout.strip()
        assert inspect(image, "{{.Config.User}}") == USERS[role]
        uid = docker("run", "--rm", "--entrypoint", "id", image, "-u").stdout.strip()
        assert uid != "0", f"{image} runs as root"
        print(f"{image}: {int(inspect(image, '{{.Size}}')) / 1e6:.0f} MB, user {USERS[role]} ({uid})")
    for role in ("shard", "memcached"):
        assert inspect(IMAGES[role], "{{json .Config.Healthcheck.Test}}") != "null", role
    # Alone (no compose), the shard and memcached images serve with their defaults and pass their own checks.
    alone = [docker("run", "-d", "--label", f"com.docker.compose.project={PROJECT}", IMAGES[role]).stdout.strip()
             for role in ("shard", "memcached")]
    try:
        wait_healthy(*alone, timeout=120)
    finally:
        docker("rm", "-f", "-v", *alone)
    python = ("run", "--rm", "--entrypoint", "python")
    no_torch = docker(*python, IMAGES["shard"], "-c", "import torch", check=False)
    assert no_torch.returncode != 0 and "No module named 'torch'" in no_torch.stderr, "the shard image has torch"
    docker(*python, IMAGES["shard"], "-c", "import embps.store._native, embps.rdma.verbs, pyverbs, pymemcache")
    torch = docker(*python, IMAGES["training"], "-c", "import torch, embps.store._native; print(torch.__version__)")
    assert torch.stdout.strip() == "2.13.0+cpu"


# ---- the cluster --------------------------------------------------------------------------------

def test_memcached_and_shards_turn_healthy():
    make("up", timeout=600)
    services = running_services()
    assert services == ["memcached", "shard-0", "shard-1"]
    for service in services:
        assert inspect(container(service), "{{.State.Health.Status}}") == "healthy", service
    assert docker("exec", container("shard-0"), "id", "-u").stdout.strip() == "10001"
    answer = docker("exec", container("memcached"), "bash", "-c",
                    "exec 3<>/dev/tcp/127.0.0.1/11211 && printf 'version\\r\\n' >&3 && head -c 7 <&3").stdout
    assert answer == "VERSION"


def test_training_across_containers():
    job = JobConfig.load(ROOT / "deploy/job.toml")
    make("up-training", timeout=600)
    started = time.monotonic()
    trainers = [container(f"trainer-{rank}") for rank in range(job.trainers)]
    for rank, trainer in enumerate(trainers):
        code = docker("wait", trainer, timeout=1800).stdout.strip()
        assert code == "0", f"trainer-{rank} exited {code}:\n{docker('logs', '--tail', '40', trainer).stderr}"
    TIMINGS["training"] = time.monotonic() - started
    metrics = json.loads(docker("run", "--rm", "-v", f"{PROJECT}_training-out:/out", "--entrypoint", "cat",
                                IMAGES["shard"], "/out/metrics.json").stdout)
    auc = metrics["eval"]["auc"]
    print(f"DLRM across containers: {len(metrics['losses'])} steps in {TIMINGS['training']:.0f} s, "
          f"held-out AUC {auc:.4f}, log-loss {metrics['eval']['logloss']:.4f}")
    assert len(metrics["losses"]) == job.steps
    assert auc > 0.55, "held-out AUC not above chance"
    # Writers stop before the rows are checked and moved (embps reshard is offline).
    compose("--profile", "training", "rm", "-s", "-f", "oracle-cacher", *[f"gateway-{i}" for i in range(job.trainers)],
            *[f"trainer-{i}" for i in range(job.trainers)], timeout=300)


def crash(container_id: str) -> bool:
    """SIGKILL to the container's process from the host, as a crash (or the OOM killer) would come: the
    engine applies the restart policy.  False when the engine's processes are not visible here."""
    pid = int(inspect(container_id, "{{.State.Pid}}"))
    cmdline = Path(f"/proc/{pid}/cmdline")
    if pid <= 0 or not cmdline.exists() or b"ps-shard" not in cmdline.read_bytes():
        return False
    os.kill(pid, signal.SIGKILL)
    return True


def test_killed_shard_keeps_every_acknowledged_update(tmp_path):
    victim = container("shard-1")
    restarts = int(inspect(victim, "{{.RestartCount}}"))
    client = subprocess.Popen(
        [*COMPOSE, "-f", str(COMMITTED), "--profile", "admin", "run", "--rm", "-T", "-v", f"{HERE}:/tests:ro",
         "--entrypoint", "python", "admin", "/tests/stream_updates.py", "--cluster", CLUSTER_IN_ADMIN,
         "--table", "acks", "--acked", "300"],
        cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    batches: dict[str, list[int]] = {"acked": [], "unacked": []}
    kills: list[tuple[str, int]] = []   # (how, the last batch the test saw before it)
    brought_back = False
    for line in client.stdout:
        record = json.loads(line)
        batches["acked" if record["acked"] else "unacked"].append(record["batch"])
        acked = len(batches["acked"])
        if not kills and acked == 40:
            docker("kill", "-s", "KILL", victim)
            kills.append(("docker kill -s KILL", record["batch"]))
        elif kills and not record["acked"] and not brought_back:
            # A container stopped by `docker kill` stays down whatever its restart policy (the engine counts
            # it as stopped by hand): compose brings the service back, as `make up` does.
            compose("up", "-d", timeout=300)
            brought_back = True
        elif len(kills) == 1 and brought_back and acked == 150 and crash(victim):
            kills.append(("SIGKILL from the host", record["batch"]))
    assert client.wait(timeout=600) == 0, client.stderr.read()
    assert kills and batches["unacked"], "the kill did not interrupt the stream"
    assert min(batches["unacked"]) > kills[0][1], "updates failed before the kill"
    for how, after in kills:
        refused = [b for b in batches["unacked"] if b > after]
        assert refused and any(b > refused[0] for b in batches["acked"]), f"{how}: the stream did not resume"
    if len(kills) == 1:
        print("the engine's processes are not visible from here: the restart policy's restart is not exercised")
    wait_healthy(victim)
    assert int(inspect(victim, "{{.RestartCount}}")) == restarts + len(kills) - 1, "the engine did not restart it"

    (tmp_path / "batches.json").write_text(json.dumps(batches))
    tmp_path.chmod(0o755)   # mounted into the client container, whose user is not root
    (tmp_path / "batches.json").chmod(0o644)
    report = json.loads(admin_python("stream_updates.py", "--cluster", CLUSTER_IN_ADMIN, "--table", "acks",
                                     "--verify", "/check/batches.json", mounts=(f"{tmp_path}:/check:ro",)))
    print(f"{kills}: {len(batches['acked'])} batches acknowledged, {len(batches['unacked'])} refused; {report}")
    assert report["problems"] == [] and report["acked_keys"] == 64 * len(batches["acked"]), report

    opened = shard_log("shard-1", "store opened")
    assert len(opened) == restarts + 1 + len(kills), opened   # the first start, and once after each kill
    assert "acks" in opened[-1]["tables"], opened[-1]
    print(f"shard-1 recovered {opened[-1]['tables']} in {opened[-1]['recovery_seconds'] * 1e3:.1f} ms")
    files = docker("run", "--rm", "-v", f"{PROJECT}_pm-shard-1:/pm", "--entrypoint", "ls", IMAGES["shard"],
                   "/pm").stdout.split()
    assert any("acks" in name for name in files), f"no PM file of table acks on volume pm-shard-1: {files}"


def test_down_and_up_serve_the_same_rows():
    before = rows_report()
    assert {"emb", "acks"} <= set(before), before
    make("down", timeout=300)
    assert docker("ps", "-aq", "--filter", f"label=com.docker.compose.project={PROJECT}").stdout.strip() == ""
    make("up", timeout=600)
    assert rows_report() == before
    for shard in ("shard-0", "shard-1"):
        assert set(shard_log(shard, "store opened")[-1]["tables"]) >= {"emb", "acks"}, shard


def test_a_shard_added_in_the_config_gets_its_rows():
    before = rows_report()
    (SCALED / "deploy").mkdir(parents=True)
    shutil.copy(ROOT / "deploy/cluster.toml", SCALED / "deploy/cluster.old.toml")
    shutil.copy(ROOT / "deploy/job.toml", SCALED / "deploy/job.toml")
    (SCALED / "deploy/cluster.toml").write_text((ROOT / "deploy/cluster.toml").read_text()
                                                + '\n[[shards]]\naddress = "shard-2:50051"\n')
    run([sys.executable, "-m", "embps.cli", "compose", "--cluster", "deploy/cluster.toml", "--out",
         "docker-compose.yml"], cwd=SCALED)
    scaled = SCALED / "docker-compose.yml"
    make("up", timeout=600, COMPOSE_YML=str(scaled))
    assert running_services() == ["memcached", "shard-0", "shard-1", "shard-2"]

    moved = compose("--profile", "admin", "run", "--rm", "-T", "admin", "reshard", "--from",
                    "/etc/embps/cluster/cluster.old.toml", "--to", CLUSTER_IN_ADMIN, "--no-progress",
                    file=scaled, timeout=900)
    print(moved.stdout)
    after = rows_report(scaled)
    assert set(after) == set(before)
    for table, report in after.items():
        assert report["duplicates"] == 0 and report["misrouted"] == 0, (table, report)
        assert report["distinct_keys"] == before[table]["distinct_keys"] and report["digest"] == before[table]["digest"]
        assert report["rows_per_shard"][2] > 0, (table, report)
        assert sum(report["rows_per_shard"]) == report["distinct_keys"]
    # The admin service's default command: every row is on the shard the new layout routes it to.
    compose("--profile", "admin", "run", "--rm", "-T", "admin", file=scaled, timeout=900)
