"""`embps ps-shard --config FILE`: serves one store over gRPC (control and rows, any language) and the
native TCP data path, with health checking, reflection, Prometheus metrics and JSON logs.  SIGTERM
stops it cleanly: health turns NOT_SERVING, calls in flight finish, the store closes."""

from __future__ import annotations

import json
import logging
import os
import time
from pathlib import Path

from prometheus_client import start_http_server

from embps.common import structured_log
from embps.common.addresses import split_host_port
from embps.common.grpc_service import GrpcService, ServerLimits, run_service
from embps.compat.bagpipe_flags import add_refused
from embps.rdma.config import RdmaPathConfig
from embps.rdma.server import start_rdma_path
from embps.store import Store
from embps.store.data_server import DataServer
from embps.v1 import ps_shard_pb2 as pb

from .config import ShardConfig
from .metrics import ShardMetrics
from .servicer import ParameterShardServicer

COMMAND = "ps-shard"
HELP = "serve one parameter shard"
SERVICE = pb.DESCRIPTOR.services_by_name["ParameterShard"]
log = logging.getLogger("embps.ps_shard")


def add_arguments(parser) -> None:
    parser.add_argument("--config", help="TOML file with a [shard] table; EMBPS_SHARD_<FIELD> variables override it")
    add_refused(parser, "server")   # Bagpipe's embedding server's flags, each refused saying why


def _rdma_config(config: ShardConfig) -> RdmaPathConfig:
    """The RDMA path's settings from the shard's rdma_* fields; its requests stay within max_batch_keys."""
    return RdmaPathConfig(mode=config.rdma, device=config.rdma_device, port=config.rdma_port,
                          gid_index=config.rdma_gid_index, memcached=config.rdma_memcached,
                          cluster=config.rdma_cluster, max_keys=min(RdmaPathConfig.max_keys, config.max_batch_keys))


class ShardServer:
    """One shard: store, data server, metrics endpoint and the gRPC service that run_service serves."""

    def __init__(self, config: ShardConfig):
        self.config = config
        self.started = time.monotonic()
        self.store = Store(config.data_dir, persist=config.persist)
        log.info("store opened", extra={"data_dir": config.data_dir, "tables": self.store.tables(),
                                        "recovery_seconds": round(self.store.recovery_seconds(), 6)})
        for name, why in self.store.unopenable.items():
            log.error("table file cannot be opened; serving the other tables", extra={"table": name, "error": why})
        self.metrics = ShardMetrics(config.id)
        self.data_server = self._start_data_server()
        self.rdma, self.rdma_choice = start_rdma_path(self.store, config.id, _rdma_config(config))
        self.metrics.watch(self.store, self.data_server, self.rdma, self.rdma_choice)
        self.metrics_port = self._start_metrics()
        self.grpc = self._make_grpc()

    def _start_data_server(self) -> DataServer | None:
        if not self.config.data_listen:
            return None
        if self.config.security.enabled:
            log.warning("the native TCP data path has no TLS or token checks: not offered while [security] is on")
            return None
        host, port = split_host_port(self.config.data_listen)
        return DataServer(self.store, host, port, self.config.max_batch_keys, self.config.max_message_bytes,
                          max_connections=self.config.data_max_connections,
                          send_timeout_seconds=self.config.data_send_timeout_seconds,
                          receive_timeout_seconds=self.config.data_receive_timeout_seconds,
                          idle_timeout_seconds=self.config.data_idle_timeout_seconds)

    def _start_metrics(self) -> int | None:
        if not self.config.metrics_listen:
            return None
        host, port = split_host_port(self.config.metrics_listen)
        httpd, _ = start_http_server(port, addr=host, registry=self.metrics.registry)
        self._metrics_httpd = httpd
        return httpd.server_port

    def _make_grpc(self) -> GrpcService:
        config = self.config
        service = GrpcService(config.listen, config.security, ServerLimits(
            workers=config.grpc_workers, max_message_bytes=config.max_message_bytes,
            max_concurrent_rpcs=config.grpc_max_concurrent_rpcs,
            max_streams_per_connection=config.grpc_max_streams_per_connection,
            stream_send_timeout_seconds=config.stream_send_timeout_seconds))
        servicer = ParameterShardServicer(self.store, self.metrics, config.max_batch_keys, config.max_message_bytes,
                                          config.max_tables, stats_extra=self._fill_stats,
                                          drop_guard=self.rdma.table_drop_guard if self.rdma else None)
        service.add(servicer, SERVICE)
        return service

    def addresses(self) -> dict:
        host = split_host_port(self.config.listen)[0]
        result = {"grpc": f"{host}:{self.grpc.port}", "pid": os.getpid()}
        if self.data_server:
            result["tcp"] = f"{self.config.advertise_host}:{self.data_server.port}"
        if self.rdma:
            result["rdma"] = self.rdma.data_path_address()
        if self.metrics_port is not None:
            result["metrics"] = f"{split_host_port(self.config.metrics_listen)[0]}:{self.metrics_port}"
        return result

    def _fill_stats(self, response: pb.ShardStats) -> None:
        response.shard_id = self.config.id
        response.uptime_seconds = time.monotonic() - self.started
        if self.rdma:
            response.data_paths.append(pb.DataPath(kind=pb.DATA_PATH_KIND_RDMA, address=self.rdma.data_path_address()))
            rdma = self.rdma.stats()
            response.operations.append(pb.OperationStats(operation="rdma.lookup", requests=rdma.requests,
                                                         errors=rdma.errors, keys=rdma.keys))
        if self.data_server:
            response.data_paths.append(pb.DataPath(kind=pb.DATA_PATH_KIND_TCP, address=self.addresses()["tcp"]))
            stats = self.data_server.stats()
            for name, op in (("tcp.lookup", stats.lookup), ("tcp.update", stats.update),
                             ("tcp.refresh", stats.refresh)):
                response.operations.append(pb.OperationStats(operation=name, requests=op.requests,
                                                             errors=op.errors, keys=op.keys))
        response.data_paths.append(pb.DataPath(kind=pb.DATA_PATH_KIND_GRPC, address=""))
        response.operations.extend(self._grpc_operation_stats())

    def _grpc_operation_stats(self) -> list[pb.OperationStats]:
        ops: dict[str, pb.OperationStats] = {}
        for sample in list(self.metrics.requests.collect())[0].samples:
            if sample.name.endswith("_total"):
                op = ops.setdefault(sample.labels["method"], pb.OperationStats(operation=sample.labels["method"]))
                op.requests += int(sample.value)
                if sample.labels["code"] != "OK":
                    op.errors += int(sample.value)
        for sample in list(self.metrics.keys.collect())[0].samples:
            if sample.name.endswith("_total") and sample.labels["method"] in ops:
                ops[sample.labels["method"]].keys = int(sample.value)
        return sorted(ops.values(), key=lambda op: op.operation)

    def announce(self) -> None:
        """Once gRPC serves: logs the addresses and writes them to the ready file, if the config names one."""
        log.info("shard serving", extra=self.addresses())
        if self.config.ready_file:
            tmp = Path(self.config.ready_file + ".tmp")
            tmp.write_text(json.dumps(self.addresses()))
            tmp.rename(self.config.ready_file)   # readers never see a partial file

    def close(self) -> None:
        """Once gRPC has stopped: stops the other paths and closes the store."""
        if self.rdma:
            self.rdma.stop()
        if self.data_server:
            self.data_server.stop()
        if self.metrics_port is not None:
            self._metrics_httpd.shutdown()
        self.store.close()
        log.info("shard stopped", extra={"id": self.config.id})


def run(args) -> int:
    config = ShardConfig.load(args.config)
    structured_log.configure(config.log_level, config.log_format == "json")
    server = ShardServer(config)
    return run_service(server.grpc, config.grace_seconds, started=server.announce, stopped=server.close)
