"""Prometheus metrics of a shard: gRPC calls (counted in Python) and the native data path (counted in
C and read at scrape time), table sizes and recovery time."""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from embps.rdma.server import collect_metrics
from embps.store import Store
from embps.store.data_server import LATENCY_BOUNDS_SECONDS, DataServer

LATENCY_BUCKETS = LATENCY_BOUNDS_SECONDS + (float("inf"),)


class ShardMetrics:
    def __init__(self, shard_id: str):
        self.registry = CollectorRegistry()
        self.requests = Counter("embps_shard_requests", "gRPC calls by method and status code",
                                ["method", "code"], registry=self.registry)
        self.keys = Counter("embps_shard_keys", "keys in gRPC calls by method", ["method"], registry=self.registry)
        self.latency = Histogram("embps_shard_request_seconds", "gRPC call latency by method", ["method"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.shard_id = shard_id

    def observe(self, method: str, code: str, keys: int, started: float) -> None:
        self.requests.labels(method, code).inc()
        if keys:
            self.keys.labels(method).inc(keys)
        self.latency.labels(method).observe(time.perf_counter() - started)

    def watch(self, store: Store, data_server: DataServer | None, rdma=None, rdma_choice=None) -> None:
        self.registry.register(_StoreCollector(store, data_server, rdma, rdma_choice))


class _StoreCollector:
    """Reads table sizes and native data-path counters when Prometheus scrapes."""

    def __init__(self, store: Store, data_server: DataServer | None, rdma, rdma_choice):
        self.store, self.data_server = store, data_server
        self.rdma, self.rdma_choice = rdma, rdma_choice

    def collect(self):
        rows = GaugeMetricFamily("embps_shard_table_rows", "rows held per table", labels=["table"])
        recovery = GaugeMetricFamily("embps_shard_recovery_seconds", "time the last open spent recovering tables")
        for name, stats in self.store.table_stats().items():
            rows.add_metric([name], stats.rows)
        recovery.add_metric([], self.store.recovery_seconds())
        yield rows
        yield recovery
        paths = GaugeMetricFamily("embps_shard_data_path", "data paths offered (1 = offered)", labels=["kind"])
        paths.add_metric(["grpc"], 1)
        paths.add_metric(["tcp"], 1 if self.data_server else 0)
        paths.add_metric(["rdma"], 1 if self.rdma else 0)
        yield paths
        yield from collect_metrics(self.rdma, self.rdma_choice)
        if self.data_server is None:
            return
        stats = self.data_server.stats()
        requests = CounterMetricFamily("embps_shard_data_requests", "native data-path requests", labels=["op"])
        errors = CounterMetricFamily("embps_shard_data_errors", "native data-path requests that failed",
                                     labels=["op"])
        keys = CounterMetricFamily("embps_shard_data_keys", "keys in native data-path requests", labels=["op"])
        latency = HistogramMetricFamily("embps_shard_data_request_seconds", "native data-path latency",
                                        labels=["op"])
        for op_name, op in (("lookup", stats.lookup), ("update", stats.update), ("refresh", stats.refresh)):
            requests.add_metric([op_name], op.requests)
            errors.add_metric([op_name], op.errors)
            keys.add_metric([op_name], op.keys)
            cumulative, buckets = 0, []
            for bound, count in zip(LATENCY_BUCKETS, op.latency_buckets):
                cumulative += count
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            latency.add_metric([op_name], buckets, op.latency_sum_seconds)
        yield from (requests, errors, keys, latency)
        connections = GaugeMetricFamily("embps_shard_data_connections", "open native data-path connections")
        connections.add_metric([], stats.connections_open)
        yield connections
        closed = CounterMetricFamily("embps_shard_data_connections_closed",
                                     "native data-path connections the shard refused or timed out", labels=["reason"])
        closed.add_metric(["refused"], stats.connections_refused)
        closed.add_metric(["timed_out"], stats.connections_timed_out)
        yield closed
