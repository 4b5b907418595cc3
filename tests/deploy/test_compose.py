"""Containers without a Docker engine: the committed docker-compose.yml is the generator's output for
deploy/cluster.toml, parses, runs only real `embps` subcommands, matches the cluster config's shards
and ports, health-checks every server with `embps health`, starts in dependency order and keeps PM on
volumes; the Dockerfile has its stages by role and installs offline; `embps health` answers for a real
shard.  Building the images and running containers need an engine: tests/containers (make test-containers)."""

import argparse
import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from embps.cli import build_parser, main
from embps.common.cluster_config import ClusterConfig
from embps.common.job_config import JobConfig
from embps.common.local_cluster import LocalShard, free_port
from embps.deploy import compose_command, health_command
from embps.deploy.compose_generator import (DATA_PORT, JOB_PATH, METRICS_PORT, PM_DIR, ComposeOptions, compose,
                                            compose_job, generate)
from embps.common.addresses import split_host_port

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE, DOCKERFILE = ROOT / "docker-compose.yml", ROOT / "deploy/Dockerfile"
CLUSTER_FILE, JOB_FILE = ROOT / "deploy/cluster.toml", ROOT / "deploy/job.toml"
COMMAND = "embps compose --cluster deploy/cluster.toml --out docker-compose.yml"   # `make compose`


@pytest.fixture(scope="module")
def doc():
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="module")
def cluster():
    return ClusterConfig.load(CLUSTER_FILE)


def embps_services(doc):
    """The services that run `embps` (the shard and training images)."""
    return {name: s for name, s in doc["services"].items()
            if s["image"].startswith(("embps-shard:", "embps-training:"))}


def shard_services(doc):
    return {name: s for name, s in embps_services(doc).items() if s["command"][0] == "ps-shard"}


def subcommands() -> set[str]:
    action = next(a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return set(action.choices)


def require_registered():
    missing = {"health", "compose"} - subcommands()
    if missing:
        pytest.fail(f"`embps {' / '.join(sorted(missing))}` not registered: add embps.deploy.health_command and "
                    "embps.deploy.compose_command to SUBCOMMANDS in services/embps/cli.py")


# ---- the committed files -------------------------------------------------------------------

def test_committed_files_are_the_generators_output(tmp_path, monkeypatch):
    assert COMPOSE_FILE.read_text().splitlines()[1] == f"#   {COMMAND}"
    (tmp_path / "deploy").mkdir()
    for path in (CLUSTER_FILE, JOB_FILE):
        shutil.copy(path, tmp_path / "deploy" / path.name)
    monkeypatch.chdir(tmp_path)
    parser = argparse.ArgumentParser()
    compose_command.add_arguments(parser)
    assert compose_command.run(parser.parse_args(COMMAND.split()[2:])) == 0
    assert (tmp_path / "docker-compose.yml").read_text() == COMPOSE_FILE.read_text(), "regenerate: make compose"
    assert (tmp_path / "deploy/job.toml").read_text() == JOB_FILE.read_text(), "regenerate: make compose"


def test_deploy_subcommands_are_registered():
    require_registered()


def test_every_command_is_an_embps_subcommand(doc):
    names = subcommands()
    require_registered()
    parser = build_parser()
    for name, service in embps_services(doc).items():
        argv = service["command"]
        assert argv[0] in names, f"{name}: `embps {argv[0]}` does not exist"
        assert parser.parse_args(argv).command == argv[0]
        if "healthcheck" in service:
            test = service["healthcheck"]["test"]
            assert test[:3] == ["CMD", "embps", "health"], name
            assert parser.parse_args(test[2:]).command == "health"


def test_shards_match_the_cluster_config(doc, cluster):
    shards = shard_services(doc)
    assert list(shards) == [split_host_port(a)[0] for a in cluster.shards]   # routing order
    for address in cluster.shards:
        name, port = split_host_port(address)
        s = shards[name]
        env = s["environment"]
        assert env["EMBPS_SHARD_ID"] == name
        assert split_host_port(env["EMBPS_SHARD_LISTEN"]) == ("0.0.0.0", port)
        assert env["EMBPS_SHARD_ADVERTISE_HOST"] == name
        data_port = split_host_port(env["EMBPS_SHARD_DATA_LISTEN"])[1]
        metrics_port = split_host_port(env["EMBPS_SHARD_METRICS_LISTEN"])[1]
        assert set(s["expose"]) == {str(port), str(data_port), str(metrics_port)}
        assert len({port, data_port, metrics_port}) == 3
        assert s["healthcheck"]["test"][3] == address   # probed where clients reach it
        assert s["restart"] == "unless-stopped"


def test_pm_files_live_on_volumes(doc):
    for name, s in shard_services(doc).items():
        assert s["environment"]["EMBPS_SHARD_DATA_DIR"] == PM_DIR
        sources = [v.split(":")[0] for v in s["volumes"] if v.split(":")[1] == PM_DIR]
        assert len(sources) == 1, f"{name}: one volume at {PM_DIR}"
        assert sources[0] in doc["volumes"], f"{name}: named volume {sources[0]} is not declared"
    assert len({v for s in shard_services(doc).values() for v in s["volumes"]}) == len(shard_services(doc))


def test_training_services_match_the_job_file(doc, cluster):
    job = JobConfig.load(JOB_FILE)
    services = doc["services"]
    assert job.addresses.shards == cluster.shards
    assert len(job.addresses.gateways) == job.trainers
    expected = {split_host_port(job.addresses.oracle): ["oracle-cacher", "--job", JOB_PATH]}
    for i, address in enumerate(job.addresses.gateways):
        expected[split_host_port(address)] = ["trainer-gateway", "--job", JOB_PATH, "--trainer", str(i)]
    for (name, port), command in expected.items():
        s = services[name]
        assert s["command"] == command and s["profiles"] == ["training"]
        assert s["healthcheck"]["test"][3] == f"{name}:{port}" and str(port) in s["expose"]
        assert f"./deploy/job.toml:{JOB_PATH}:ro" in s["volumes"]
    rendezvous, port = split_host_port(job.addresses.trainers)
    assert str(port) in services[rendezvous]["expose"]
    trainers = {n: s for n, s in services.items() if s.get("command", [""])[0] == "trainer"}
    assert sorted(int(s["command"][s["command"].index("--rank") + 1]) for s in trainers.values()) == \
        list(range(job.trainers))
    for s in trainers.values():
        assert s["profiles"] == ["training"]


def test_start_order_waits_for_health(doc, cluster):
    services = doc["services"]
    shards = set(shard_services(doc))
    gateways = {n for n, s in services.items() if s.get("command", [""])[0] == "trainer-gateway"}
    for name, s in services.items():
        for dependency, condition in s.get("depends_on", {}).items():
            assert condition == {"condition": "service_healthy"}, f"{name} -> {dependency}"
            assert "healthcheck" in services[dependency], f"{name} waits for {dependency}, which has no health check"
            assert not services[dependency].get("profiles") or s.get("profiles"), \
                f"{name} (always on) depends on {dependency} (profile only)"
    assert set(services["oracle-cacher"]["depends_on"]) == shards
    for g in gateways:
        assert set(services[g]["depends_on"]) >= shards | {"oracle-cacher"}
    for name, s in services.items():
        if s.get("command", [""])[0] == "trainer":
            assert set(s["depends_on"]) == gateways


def test_memcached_is_there(doc):
    memcached = doc["services"]["memcached"]
    assert memcached["image"] == "embps-memcached:latest" and "profiles" not in memcached
    assert memcached["command"][0] == "memcached" and "healthcheck" in memcached
    assert "$" not in COMPOSE_FILE.read_text(), "compose would interpolate $"


def test_every_service_runs_the_image_of_its_role(doc):
    roles = {"ps-shard": "shard", "reshard": "shard", "oracle-cacher": "training", "trainer-gateway": "training",
             "trainer": "training"}
    for name, service in embps_services(doc).items():
        assert service["image"] == f"embps-{roles[service['command'][0]]}:latest", name
    for name, service in doc["services"].items():
        assert "build" not in service, f"{name}: images are built by `make image`, not by compose"


def test_admin_service_sees_the_cluster_config(doc):
    admin = doc["services"]["admin"]
    assert admin["profiles"] == ["admin"] and admin["image"] == "embps-shard:latest"
    assert admin["volumes"] == ["./deploy:/etc/embps/cluster:ro"]
    command = admin["command"]
    assert command[:1] == ["reshard"] and "--verify-only" in command
    assert command[command.index("--from") + 1] == command[command.index("--to") + 1] == \
        "/etc/embps/cluster/cluster.toml"


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose (Debian's 1.29) validates offline")
def test_docker_compose_validates_without_an_engine(cluster, tmp_path):
    """`docker compose` (v2) is not installed here; Debian's docker-compose checks the schema offline."""
    variants = {"committed": COMPOSE_FILE}
    rdma = tmp_path / "rdma.yml"
    rdma.write_text(generate(cluster, ComposeOptions(rdma=True, pm=("/mnt/pmem0",), trainers=3)))
    variants["rdma"] = rdma
    for name, path in variants.items():
        for profile in ([], ["--profile", "training"]):
            run = subprocess.run(["docker-compose", "-f", str(path), "--project-directory", str(ROOT), *profile,
                                  "config", "-q"], capture_output=True, text=True, timeout=60, check=False)
            assert run.returncode == 0, f"{name}: {run.stderr}"


# ---- generator options -----------------------------------------------------------------------

def test_options(cluster):
    host = compose(cluster, ComposeOptions(pm=("/mnt/pmem0",), rdma=True, trainers=0))
    assert set(host["services"]) == {"memcached", "shard-0", "shard-1", "admin"} and host["volumes"] == {}
    for name in ("shard-0", "shard-1"):
        s = host["services"][name]
        assert s["volumes"] == [f"/mnt/pmem0/{name}:{PM_DIR}"]
        assert s["devices"] == ["/dev/infiniband:/dev/infiniband"] and s["cap_add"] == ["IPC_LOCK"]
        assert s["ulimits"] == {"memlock": -1}
        assert s["depends_on"] == {"memcached": {"condition": "service_healthy"}}
    per_shard = compose(cluster, ComposeOptions(pm=("/mnt/pmem0/a", "/mnt/pmem1/b"), trainers=1))
    assert per_shard["services"]["shard-1"]["volumes"] == [f"/mnt/pmem1/b:{PM_DIR}"]
    assert "devices" not in per_shard["services"]["shard-0"]
    assert "gateway-0" in per_shard["services"] and "gateway-1" not in per_shard["services"]
    registry = compose(cluster, ComposeOptions(image_prefix="registry.example/embps", tag="1",
                                               memcached_image="memcached:1.6-bookworm"))["services"]
    assert registry["shard-0"]["image"] == registry["admin"]["image"] == "registry.example/embps-shard:1"
    assert registry["gateway-0"]["image"] == "registry.example/embps-training:1"
    assert registry["memcached"]["image"] == "memcached:1.6-bookworm"


@pytest.mark.parametrize("shards, pm, message", [
    (["shard-0:50051", "shard-0:50052"], (), "its own service name"),
    (["10.0.0.1:50051"], (), "service name"),
    (["Shard_0:50051"], (), "service name"),
    (["oracle-cacher:50051"], (), "taken"),
    (["admin:50051"], (), "taken"),
    ([f"shard-0:{DATA_PORT}"], (), "data or metrics port"),
    ([f"shard-0:{METRICS_PORT}"], (), "data or metrics port"),
    (["shard-0:50051", "shard-1:50051"], ("/dev/dax0.0", "/dev/dax1.0"), "fsdax"),
    (["shard-0:50051", "shard-1:50051", "shard-2:50051"], ("/a", "/b"), "one per shard"),
    (["shard-0:50051"], ("mnt/pmem0",), "absolute"),
])
def test_bad_layouts_are_refused(shards, pm, message):
    with pytest.raises(ValueError, match=message):
        compose(ClusterConfig.from_addresses(shards), ComposeOptions(pm=pm))


def test_job_file_keeps_settings_and_rewrites_addresses(cluster):
    base = JobConfig(steps=7, trainers=4, global_batch=512)
    job = compose_job(cluster, 2, base)
    assert (job.steps, job.trainers, job.global_batch) == (7, 2, 512)
    assert job.addresses.gateways == ("gateway-0:50071", "gateway-1:50071")
    assert job.addresses.shards == cluster.shards
    assert JobConfig.from_toml(job.to_toml()) == job


# ---- the Dockerfile --------------------------------------------------------------------------

def dockerfile_stages() -> dict[str, tuple[str, str]]:
    """stage name -> (its FROM, its instructions without comments)."""
    text = re.sub(r"^#.*\n", "", DOCKERFILE.read_text(), flags=re.MULTILINE)
    parts = re.split(r"^FROM\s+(\S+)\s+AS\s+(\w+)\s*$", text, flags=re.MULTILINE | re.IGNORECASE)
    return {parts[i + 1]: (parts[i], parts[i + 2]) for i in range(1, len(parts), 3)}


def test_dockerfile_builds_an_image_per_role_offline():
    text = DOCKERFILE.read_text()
    stages = dockerfile_stages()
    assert list(stages) == ["build", "runtime", "shard", "training", "memcached"]
    assert not re.search(r"^#\s*syntax\s*=", text, re.MULTILINE | re.IGNORECASE), \
        "a syntax line makes BuildKit pull a frontend image"
    assert "bookworm" in re.search(r"^ARG BASE_IMAGE=(\S+)", text, re.MULTILINE)[1]
    assert {stages[name][0] for name in ("build", "runtime", "memcached")} == {"${BASE_IMAGE}"}
    assert stages["shard"][0] == stages["training"][0] == "runtime"
    for pip in re.findall(r"pip (?:install|wheel)[^\n]*", text):
        assert "--no-index" in pip and "--find-links /wheelhouse" in pip, pip
    assert "index-url" not in text and "https://" not in text
    build, runtime, shard, training = (stages[name][1] for name in ("build", "runtime", "shard", "training"))
    for piece in ("python3-dev", "gcc", "libpmem2-dev", "pkg-config", "pip wheel"):
        assert piece in build, piece
    for package in ("libpmem2", "rdma-core", "ibverbs-providers", "python3-pyverbs"):
        assert re.search(rf"\s{package}(\s|$)", runtime, re.MULTILINE), package
    for stage in (runtime, shard, training):
        assert "-dev" not in stage and "gcc" not in stage
    assert "--system-site-packages" in runtime   # pyverbs comes from Debian
    assert "'embps[rdma]'" in shard and "train" not in shard   # no PyTorch in the shard image
    assert "requirements-train.txt" in training and "'embps[train,rdma]'" in training


def test_every_image_has_a_user_labels_and_its_health_check():
    stages = dockerfile_stages()
    for role in ("shard", "training", "memcached"):
        text = stages[role][1]
        user = re.findall(r"^USER\s+(\S+)", text, re.MULTILINE)
        assert user and user[-1] not in ("root", "0"), role
        assert f'io.embps.role="{role}"' in text and "org.opencontainers.image.revision" in text, role
    for role in ("shard", "memcached"):
        assert re.search(r"^HEALTHCHECK .*\n\s+CMD \[", stages[role][1], re.MULTILINE), role
    assert re.search(r'^ENTRYPOINT \["embps"\]\s*$', stages["shard"][1], re.MULTILINE)


def test_the_build_context_is_what_the_dockerfile_reads():
    text = DOCKERFILE.read_text()
    sources = {path.rstrip("/") for line in re.findall(r"^COPY\s+(?!--)(.+)\s+\S+$", text, re.MULTILINE)
               for path in line.split()}
    sources |= set(re.findall(r"--mount=type=bind,source=([^,\s]+)", text))
    for path in sources - {"build/wheelhouse"}:   # make wheelhouse fills that one
        assert (ROOT / path).exists(), f"the Dockerfile reads {path}: missing"
    rules = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert rules[0] == "*", ".dockerignore starts by ignoring everything"
    assert {rule[1:].rstrip("/") for rule in rules if rule.startswith("!")} == sources


# ---- embps health ----------------------------------------------------------------------------

def test_health_probe_against_a_real_shard(tmp_path):
    with LocalShard(tmp_path) as shard:
        assert health_command.check(shard.address) == "SERVING"
        assert health_command.check(shard.address, "embps.v1.ParameterShard") == "SERVING"
        assert health_command.check(shard.address, "no.such.Service") == "NOT_FOUND"
        require_registered()
        assert main(["health", shard.address]) == 0
        assert main(["health", shard.address, "--service", "embps.v1.ParameterShard", "--timeout", "2"]) == 0
        assert main(["health", shard.address, "--service", "no.such.Service"]) == 1


def test_health_probe_fails_fast_on_a_closed_port():
    address = f"127.0.0.1:{free_port()}"
    started = time.monotonic()
    assert health_command.check(address, timeout=5) == "UNAVAILABLE"
    assert time.monotonic() - started < 3
    require_registered()
    started = time.monotonic()
    assert main(["health", address, "--timeout", "5"]) == 1
    assert time.monotonic() - started < 3


# ---- hosts -----------------------------------------------------------------------------------

HOSTS_CLUSTER = ClusterConfig.from_addresses(["host-0:50051", "host-1:50051"], hosts=("host-0", "host-1"))


def test_hosts_put_each_gateway_and_trainer_on_its_shards_host(tmp_path):
    doc = compose(HOSTS_CLUSTER)
    services = doc["services"]
    for h in (0, 1):
        assert services[f"host-{h}"]["command"] == ["ps-shard"]
        for role in ("gateway", "trainer"):
            assert services[f"{role}-{h}"]["network_mode"] == f"service:host-{h}"
            assert "expose" not in services[f"{role}-{h}"]
        assert services[f"gateway-{h}"]["healthcheck"]["test"][3] == f"host-{h}:50071"
    job = compose_job(HOSTS_CLUSTER, 2)
    assert job.addresses.hosts == HOSTS_CLUSTER.hosts
    assert job.addresses.gateways == ("host-0:50071", "host-1:50071") and job.addresses.trainers == "host-0:29500"
    assert JobConfig.from_toml(job.to_toml()) == job
    if shutil.which("docker-compose"):
        path = tmp_path / "hosts.yml"
        path.write_text(generate(HOSTS_CLUSTER))
        run = subprocess.run(["docker-compose", "-f", str(path), "--project-directory", str(ROOT), "--profile",
                              "training", "config", "-q"], capture_output=True, text=True, timeout=60, check=False)
        assert run.returncode == 0, run.stderr


def test_hosts_refuse_other_trainer_counts_and_other_names():
    with pytest.raises(ValueError, match="each host runs one trainer: 2 hosts, 3 trainers"):
        compose(HOSTS_CLUSTER, ComposeOptions(trainers=3))
    with pytest.raises(ValueError, match="its host's name"):
        compose(ClusterConfig.from_addresses(["shard-0:50051"], hosts=("host-0",)))


def test_compose_command_gives_every_host_a_trainer(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "cluster.toml").write_text(HOSTS_CLUSTER.to_toml())
    parser = argparse.ArgumentParser()
    compose_command.add_arguments(parser)
    assert compose_command.run(parser.parse_args(["--cluster", "cluster.toml", "--job", "job.toml"])) == 0
    job = JobConfig.load(tmp_path / "job.toml")
    assert job.trainers == 2 and job.addresses.hosts == ("host-0", "host-1")
