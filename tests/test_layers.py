"""The package's layers point one way: every import of every module under services/embps, read with
`ast` (so nothing is executed and lazy imports inside functions count too), against these rules:

- a service (ps_shard, oracle_cacher, trainer_gateway, trainer, deploy) imports no other service;
- nothing but the services and the `embps` command (embps.cli) imports a service: common, client,
  datasets, store, models, rdma, api, ... are libraries the services share;
- embps.api imports nothing from embps but itself;
- embps.testing (harnesses for tests and benchmarks) is a library nothing else in embps imports;
- once embps.api exists, embps.client talks gRPC without the native core: only its native TCP
  module (embps.client.tcp_data_path) and its native routing loops (embps.client.key_router, which
  routing imports when it can) import embps.store.
"""

import ast
from pathlib import Path

SERVICES = ("ps_shard", "oracle_cacher", "trainer_gateway", "trainer", "deploy")
COMMAND = "embps.cli"
NATIVE_CLIENT_MODULES = ("embps.client.tcp_data_path", "embps.client.key_router")
SOURCE_ROOT = Path(__file__).resolve().parents[1] / "services"


def module_name(path: Path, root: Path) -> str:
    parts = path.relative_to(root).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path, root: Path) -> set[str]:
    """The embps modules a file imports: `from a import b` counts as a and a.b (b may be a module)."""
    name = module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names if alias.name != "*")
    return {m for m in found if m == "embps" or m.startswith("embps.")}


def import_graph(root: Path) -> dict[str, set[str]]:
    return {module_name(path, root): imports_of(path, root) for path in sorted((root / "embps").rglob("*.py"))}


def room(module: str) -> str:
    """The top-level part of embps a module belongs to ("ps_shard", "common", "cli", ...)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def violations(graph: dict[str, set[str]]) -> list[str]:
    has_api = any(room(m) == "api" for m in graph)
    found = []
    for module, imported in sorted(graph.items()):
        for target in sorted(imported):
            if room(target) in ("", room(module)):
                continue
            if room(module) in SERVICES and room(target) in SERVICES:
                found.append(f"{module} imports {target}: a service imports no other service")
            elif room(module) not in SERVICES and module != COMMAND and room(target) in SERVICES:
                found.append(f"{module} imports {target}: only services and {COMMAND} import a service")
            elif room(target) == "testing":
                found.append(f"{module} imports {target}: embps.testing is for tests and benchmarks, not the product")
            elif room(module) == "api":
                found.append(f"{module} imports {target}: embps.api imports nothing from embps but itself")
            elif (has_api and room(module) == "client" and module not in NATIVE_CLIENT_MODULES
                  and room(target) == "store"):
                found.append(f"{module} imports {target}: a gRPC client does not load the native core")
    return found


def test_the_package_keeps_its_layers():
    assert violations(import_graph(SOURCE_ROOT)) == []


def test_the_walk_sees_relative_absolute_and_lazy_imports():
    graph = import_graph(SOURCE_ROOT)
    assert {"embps.ps_shard.config", "embps.store"} <= graph["embps.ps_shard.server"]   # relative, absolute
    assert "embps.trainer.training" in graph["embps.trainer.trainer_command"]           # inside a function
    assert "embps.ps_shard" in graph[COMMAND]


def test_each_rule_catches_its_violation():
    graph = {
        "embps.deploy.reshard": {"embps.ps_shard.config", "embps.common.addresses", "embps.deploy"},
        "embps.common.helpers": {"embps.trainer_gateway.service"},
        "embps.api.errors": {"embps.api.status", "embps.store.errors"},
        "embps.client.ps_client": {"embps.store"},
        "embps.client.tcp_data_path": {"embps.store._native"},
        "embps.cli": {"embps.ps_shard.server"},
        "embps.trainer.local_job": {"embps.testing.netns_hosts"},
        "embps.testing.netns_hosts": {"embps.common.local_cluster"},
    }
    assert violations(graph) == [
        "embps.api.errors imports embps.store.errors: embps.api imports nothing from embps but itself",
        "embps.client.ps_client imports embps.store: a gRPC client does not load the native core",
        "embps.common.helpers imports embps.trainer_gateway.service: only services and embps.cli import a service",
        "embps.deploy.reshard imports embps.ps_shard.config: a service imports no other service",
        "embps.trainer.local_job imports embps.testing.netns_hosts: embps.testing is for tests and benchmarks, "
        "not the product",
    ]
    del graph["embps.api.errors"]   # before embps.api exists, the client may still use embps.store
    assert not any("native core" in v for v in violations(graph))
