"""docker-compose.yml from a cluster config (the one source of shard count and addresses).

Shard i is the compose service named by the host of the cluster's i-th address ("shard-0:50051" is
service shard-0, gRPC on port 50051), so the cluster config works unchanged inside the compose
network.  Every shard gets its settings from EMBPS_SHARD_* variables and its PM files from a named
volume (default) or a host path: one directory per shard under a pmem (fsdax, `mount -o dax`) mount,
or one path per shard.  Services, and the image of deploy/Dockerfile each runs:

    memcached                      queue-pair exchange of the RDMA data path       <prefix>-memcached
    <shard>...                     `embps ps-shard`, healthy once its gRPC health  <prefix>-shard
                                   service says SERVING
    oracle-cacher, gateway-<i>,    profile "training": started after the shards    <prefix>-training
    trainer-<i>                    are healthy, in that order, all reading the job
                                   file (see compose_job)
    admin                          profile "admin": `docker compose run --rm admin  <prefix>-shard
                                   reshard ...` with the cluster config's directory

With hosts (the cluster config's `host = ...` on every shard), host h is shard h's service, named like
the host (its address is "<host>:<port>"), and gateway-h and trainer-h join that service's network
namespace (`network_mode: service:<host>`): a shard and a trainer with its gateway per host, one
trainer per host, and the job file's [addresses] hosts are the cluster's.

The images are built by `make image` (the compose file has no build sections: one way to build them);
memcached can come from a registry instead (memcached_image).

Every health check is `embps health HOST:PORT`.  With `rdma`, shards and gateways also get
/dev/infiniband, CAP_IPC_LOCK and unlimited locked memory (registering memory regions pins pages).
The YAML is written by hand (block mappings, JSON scalars and flow lists: JSON is YAML), so
generating needs no YAML library.
"""

from __future__ import annotations

import dataclasses
import json
import re
from dataclasses import dataclass

from embps.common.cluster_config import ClusterConfig
from embps.common.job_config import Addresses, JobConfig
from embps.common.addresses import split_host_port

DEFAULT_IMAGE_PREFIX, DEFAULT_TAG = "embps", "latest"
MEMCACHED_PORT = 11211
DATA_DIR = "/var/lib/embps"            # the image makes it (and pm/, out/) for its non-root user
PM_DIR = f"{DATA_DIR}/pm"
OUT_DIR = f"{DATA_DIR}/out"
JOB_PATH = "/etc/embps/job.toml"
CLUSTER_DIR = "/etc/embps/cluster"     # the admin service's view of the cluster config's directory
ADMIN, ADMIN_PROFILE = "admin", "admin"
DATA_PORT, METRICS_PORT = 50061, 9151  # every shard has its own network namespace: same ports
ORACLE, ORACLE_PORT = "oracle-cacher", 50070
GATEWAY_PORT, RENDEZVOUS_PORT = 50071, 29500   # RENDEZVOUS: trainer-0 hosts torch.distributed's
TRAINING_PROFILE = "training"
SERVICE_NAME = re.compile(r"^[a-z0-9]([a-z0-9-]*[a-z0-9])?$")   # a compose service name that is a DNS name


@dataclass(frozen=True)
class ComposeOptions:
    image_prefix: str = DEFAULT_IMAGE_PREFIX   # images <prefix>-shard, -training, -memcached (make image)
    tag: str = DEFAULT_TAG
    memcached_image: str = ""        # "": the project's <prefix>-memcached; else e.g. memcached:1.6-bookworm
    trainers: int = 2                # gateways and trainers (one each per rank); 0: no training services
    pm: tuple[str, ...] = ()         # host PM paths: () = a named volume per shard; one path = a
                                     # directory per shard under it; else one path per shard
    rdma: bool = False
    job_file: str = "./deploy/job.toml"       # as the compose file names them (relative to the file)
    cluster_file: str = "./deploy/cluster.toml"
    command: str = ""                # the command that generated the file, for its header


def image(options: ComposeOptions, role: str) -> str:
    """The image of a role: "shard", "training" or "memcached" (as `make image` tags them)."""
    if role == "memcached" and options.memcached_image:
        return options.memcached_image
    return f"{options.image_prefix}-{role}:{options.tag}"


def shard_services(cluster: ClusterConfig) -> list[tuple[str, int]]:
    """(service name, gRPC port) of every shard, in routing order."""
    shards = []
    for address in cluster.shards:
        host, port = split_host_port(address)
        if not SERVICE_NAME.match(host):
            raise ValueError(f"shard address {address!r}: in compose the host is the shard's service name "
                             "(lowercase letters, digits and '-')")
        if port in (DATA_PORT, METRICS_PORT):
            raise ValueError(f"shard address {address!r}: port {port} is the shard's data or metrics port")
        shards.append((host, port))
    names = [name for name, _ in shards]
    if len(set(names)) != len(names):
        raise ValueError(f"every shard needs its own service name, got {names}")
    for name, host in zip(names, cluster.hosts):
        if name != host:
            raise ValueError(f"shard of host {host!r} is reached at {name!r}: with hosts, a shard's address is "
                             f"its host's name (\"{host}:<port>\"), the service its gateway and trainer join")
    return shards


def check_trainers(cluster: ClusterConfig, trainers: int) -> None:
    if cluster.hosts and trainers not in (0, len(cluster.hosts)):
        raise ValueError(f"each host runs one trainer: {len(cluster.hosts)} hosts, {trainers} trainers")


def job_addresses(cluster: ClusterConfig, trainers: int) -> Addresses:
    """Without hosts, gateway-i and trainer-i are services of their own; with hosts, they live on host i."""
    check_trainers(cluster, trainers)
    where = cluster.hosts or tuple(f"gateway-{i}" for i in range(trainers))
    rendezvous = cluster.hosts[0] if cluster.hosts else "trainer-0"
    return Addresses(oracle=f"{ORACLE}:{ORACLE_PORT}", gateways=tuple(f"{w}:{GATEWAY_PORT}" for w in where),
                     shards=cluster.shards, trainers=f"{rendezvous}:{RENDEZVOUS_PORT}", hosts=cluster.hosts)


def compose_job(cluster: ClusterConfig, trainers: int, base: JobConfig | None = None) -> JobConfig:
    """The job file the training services read: base's settings (default: the demo's synthetic data)
    with `trainers` and the compose network's addresses."""
    base = base or JobConfig(dataset_options={"scale": 0.01})
    return dataclasses.replace(base, trainers=trainers, addresses=job_addresses(cluster, trainers))


def compose(cluster: ClusterConfig, options: ComposeOptions = ComposeOptions()) -> dict:
    shards = shard_services(cluster)
    check_trainers(cluster, options.trainers)
    if len(options.pm) not in (0, 1, len(shards)):
        raise ValueError(f"give one PM path for all shards or one per shard ({len(shards)}), got {len(options.pm)}")
    services = {"memcached": _memcached(options)}
    volumes: dict[str, dict] = {}
    for i, (name, port) in enumerate(shards):
        if name in services or name in (ORACLE, ADMIN) or name.startswith(("gateway-", "trainer-")):
            raise ValueError(f"shard service name {name!r} is taken by another service")
        services[name] = _shard(name, port, _pm_source(i, name, options.pm), options)
        if not options.pm:
            volumes[f"pm-{name}"] = {}
    if options.trainers > 0:
        services.update(_training(options, [name for name, _ in shards], cluster.hosts))
        volumes["training-out"] = {}
    services[ADMIN] = _admin(options)
    return {"services": services, "volumes": volumes}


def generate(cluster: ClusterConfig, options: ComposeOptions = ComposeOptions()) -> str:
    header = ["# Generated by:", f"#   {options.command or 'embps compose'}",
              "# Edit the cluster config (and the job file's [job] settings) and regenerate; do not edit this file.",
              "#   docker compose up -d                      memcached and the parameter shards",
              "#   docker compose --profile training up -d   and the oracle cacher, trainer gateways, trainers",
              "#   docker compose run --rm admin ...         tools in the cluster's network (reshard, health)",
              "# Build the images first: make image (or: make up)."]
    return "\n".join(header) + "\n\n" + to_yaml(compose(cluster, options))


def to_yaml(doc: dict) -> str:
    def lines(mapping: dict, depth: int):
        for n, (key, value) in enumerate(mapping.items()):
            if n and (depth == 0 or depth == 1 and isinstance(value, dict) and value):
                yield ""
            if isinstance(value, dict) and value:
                yield "  " * depth + f"{key}:"
                yield from lines(value, depth + 1)
            else:
                yield "  " * depth + f"{key}: {json.dumps(value)}"
    return "\n".join(lines(doc, 0)) + "\n"


# ---- services --------------------------------------------------------------------------------

def _embps(image: str, command: list[str], probe: str | None = None, **fields) -> dict:
    """An embps service: the image, its command, `fields` in order, then the health check."""
    service = {"image": image, "command": command, **fields}
    if probe:
        service["healthcheck"] = {"test": ["CMD", "embps", "health", probe, "--timeout", "3"],
                                  "interval": "5s", "timeout": "5s", "retries": 5, "start_period": "30s"}
    return service


def _healthy(*names: str) -> dict:
    return {name: {"condition": "service_healthy"} for name in names}


def _rdma() -> dict:
    return {"devices": ["/dev/infiniband:/dev/infiniband"], "cap_add": ["IPC_LOCK"], "ulimits": {"memlock": -1}}


def _memcached(options: ComposeOptions) -> dict:
    probe = "exec 3<>/dev/tcp/127.0.0.1/11211 && printf 'version\\r\\n' >&3 && head -c 7 <&3 | grep -q VERSION"
    return {"image": image(options, "memcached"), "command": ["memcached", "-m", "64", "-p", str(MEMCACHED_PORT)],
            "expose": [str(MEMCACHED_PORT)], "restart": "unless-stopped",
            "healthcheck": {"test": ["CMD", "bash", "-c", probe], "interval": "5s", "timeout": "3s", "retries": 5}}


def _pm_source(i: int, name: str, pm: tuple[str, ...]) -> str:
    if not pm:
        return f"pm-{name}"
    path = pm[i] if len(pm) > 1 else f"{pm[0].rstrip('/')}/{name}"
    if path.startswith("/dev/dax"):
        raise ValueError(f"{path} is a device-DAX namespace, but a shard's store is a directory of table files: "
                         "use an fsdax namespace mounted with -o dax (ndctl create-namespace --mode=fsdax; "
                         "mkfs.ext4 /dev/pmem0; mount -o dax /dev/pmem0 /mnt/pmem0) and give that mount")
    if not path.startswith("/"):
        raise ValueError(f"PM paths are host paths and must be absolute, got {path!r}")
    return path


def _shard(name: str, port: int, pm_source: str, options: ComposeOptions) -> dict:
    environment = {"EMBPS_SHARD_ID": name, "EMBPS_SHARD_DATA_DIR": PM_DIR, "EMBPS_SHARD_LISTEN": f"0.0.0.0:{port}",
                   "EMBPS_SHARD_DATA_LISTEN": f"0.0.0.0:{DATA_PORT}", "EMBPS_SHARD_ADVERTISE_HOST": name,
                   "EMBPS_SHARD_METRICS_LISTEN": f"0.0.0.0:{METRICS_PORT}"}
    rdma = {}
    if options.rdma:   # queue pairs are exchanged through memcached, as PetPS does
        environment.update(EMBPS_SHARD_RDMA="on", EMBPS_SHARD_RDMA_MEMCACHED="memcached:11211")
        rdma = {**_rdma(), "depends_on": _healthy("memcached")}
    return _embps(image(options, "shard"), ["ps-shard"], f"{name}:{port}", environment=environment,
                  expose=[str(port), str(DATA_PORT), str(METRICS_PORT)], volumes=[f"{pm_source}:{PM_DIR}"], **rdma,
                  restart="unless-stopped",   # recovery takes milliseconds: a restarted shard serves the same rows
                  stop_grace_period="30s")


def _on_host(hosts: tuple[str, ...], i: int, own_ports: list[str]) -> dict:
    """Where gateway or trainer i lives: in host i's network namespace (its shard's), or on its own."""
    return {"network_mode": f"service:{hosts[i]}"} if hosts else ({"expose": own_ports} if own_ports else {})


def _training(options: ComposeOptions, shards: list[str], hosts: tuple[str, ...]) -> dict:
    job = [f"{options.job_file}:{JOB_PATH}:ro"]
    training: dict[str, object] = {"profiles": [TRAINING_PROFILE]}
    gateways = [f"gateway-{i}" for i in range(options.trainers)]
    training_image = image(options, "training")
    services = {ORACLE: _embps(training_image, ["oracle-cacher", "--job", JOB_PATH], f"{ORACLE}:{ORACLE_PORT}", **training,
                               expose=[str(ORACLE_PORT)], volumes=job, depends_on=_healthy(*shards))}
    rdma = {**_rdma(), "depends_on": _healthy("memcached", ORACLE, *shards)} if options.rdma else {}
    for i, gateway in enumerate(gateways):
        probe = f"{hosts[i] if hosts else gateway}:{GATEWAY_PORT}"
        services[gateway] = _embps(training_image, ["trainer-gateway", "--job", JOB_PATH, "--trainer", str(i)],
                                   probe, **training, **_on_host(hosts, i, [str(GATEWAY_PORT)]), volumes=job,
                                   shm_size="1gb",   # the row cache is a table under /dev/shm
                                   **{"depends_on": _healthy(ORACLE, *shards), **rdma})
    for rank in range(options.trainers):
        rendezvous = [str(RENDEZVOUS_PORT)] if rank == 0 else []   # torch.distributed's
        services[f"trainer-{rank}"] = _embps(
            training_image, ["trainer", "--job", JOB_PATH, "--rank", str(rank), "--out", OUT_DIR], None, **training,
            **_on_host(hosts, rank, rendezvous), volumes=job + [f"training-out:{OUT_DIR}"],
            depends_on=_healthy(*gateways))
    return services


def _admin(options: ComposeOptions) -> dict:
    """Tools that need the cluster's network (`embps reshard`, `embps health`); by default it checks that
    every row is on the shard the cluster config routes it to."""
    directory, _, name = options.cluster_file.rpartition("/")
    cluster = f"{CLUSTER_DIR}/{name}"
    return _embps(image(options, "shard"), ["reshard", "--from", cluster, "--to", cluster, "--verify-only",
                                           "--no-progress"], None, profiles=[ADMIN_PROFILE],
                  volumes=[f"{directory or '.'}:{CLUSTER_DIR}:ro"])
