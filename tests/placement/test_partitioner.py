"""The graph partitioner: its objective against a Python reference, a brute-force optimum on a tiny
graph, determinism, never worse than hash placement, rows used more often than a host has samples,
the mirror lists, refused input and the `embps partition` command."""

import dataclasses
import itertools
import math

import numpy as np
import pytest

from embps.api import InvalidArgument
from embps.cli import main
from embps.common.job_config import FEATURE_SHIFT, JobConfig
from embps.datasets.synthetic import SyntheticDataset
from embps.placement.graph import SampleGraph, graph_from_ids, read_graph
from embps.placement.partition_settings import PartitionSettings
from embps.placement.partitioner import NativePartitioner, hash_start, partition
from embps.placement.placement_file import load_placement


def reference_objective(edges, owner, sample_host, hosts, batch, cost=None):
    """The objective from its definition, with dense counts (fine for tiny graphs)."""
    total = 0.0
    for h in range(hosts):
        m = int(np.count_nonzero(sample_host == h))
        counts = np.bincount(edges[sample_host == h].ravel(), minlength=len(owner))
        for row, c in enumerate(counts):
            if c and owner[row] != h:
                p = 1.0 if c >= m else 1 - (1 - c / m) ** batch
                total += (1.0 if cost is None else cost[h][owner[row]]) * p
    return total


def structured_graph(n=6000, segments=8, seed=0):
    ds = SyntheticDataset(scale=0.001, n_train=n, segments=segments, seed=seed)
    return read_graph(ds, workers=1)


def test_native_objective_is_the_definition():
    graph = structured_graph(2000)
    edges = graph.edges.copy()
    settings = PartitionSettings(hosts=3, batch=32, link_cost=((0, 1, 0.1), (1, 0, 2), (0.5, 1, 0)))
    owner, sample_host = hash_start(graph, 3, 32)
    with NativePartitioner(graph, settings, owner, sample_host) as native:
        assert native.objective() == pytest.approx(
            reference_objective(edges, owner, sample_host, 3, 32, settings.link_cost), rel=1e-12)
        for r in range(2):
            native.begin_sweep(r)
            native.refine_samples(0, graph.n_samples)
            native.begin_sweep(r)
            native.refine_rows(0, graph.n_rows)
        owner, sample_host = native.placement_arrays()
        assert native.objective() == pytest.approx(
            reference_objective(edges, owner, sample_host, 3, 32, settings.link_cost), rel=1e-12)
    assert np.array_equal(graph.edges, edges)      # closing the partitioner restored the borrowed edges


def test_tiny_graph_reaches_the_brute_force_optimum():
    # Two communities, interleaved so that the hash start mixes them: samples 0, 2, 4, 6 use feature 0's
    # rows 0, 1 and feature 1's row 0; samples 1, 3, 5, 7 rows 2, 3 and row 1.
    a, b = [[0, 0], [1, 0], [0, 0], [1, 0]], [[2, 1], [3, 1], [2, 1], [3, 1]]
    graph = graph_from_ids(np.array([row for pair in zip(a, b) for row in pair]), [4, 2], "tiny")
    edges = graph.edges.copy()
    settings = PartitionSettings(hosts=2, batch=3, rounds=3, sample_balance=0, row_balance=0, load_balance=0,
                                 sample_slack=0.25, row_slack=0.34)
    rows = np.flatnonzero(graph.used)
    best, best_split = math.inf, None
    for hosts_of_samples in itertools.product(range(2), repeat=8):
        sample_host = np.array(hosts_of_samples, np.uint16)
        if np.bincount(sample_host, minlength=2).max() > 5:             # (1 + 0.25) x 8 samples / 2 hosts
            continue
        for owners in itertools.product(range(2), repeat=len(rows)):
            if np.bincount(np.array(owners), minlength=2).max() > 4:    # (1 + 0.34) x 6 rows / 2 hosts
                continue
            owner = np.zeros(graph.n_rows, np.uint16)
            owner[rows] = owners
            objective = reference_objective(edges, owner, sample_host, 2, 3)
            if objective < best:
                best, best_split = objective, sample_host
    assert best == 0 and set(best_split[::2]) != set(best_split[1::2])     # the communities apart
    result = partition(graph, settings)
    assert result.objectives[0] > 1
    assert result.objectives[-1] == best
    assert len(set(result.placement.sample_host[::2])) == len(set(result.placement.sample_host[1::2])) == 1


def test_same_input_and_seed_give_the_same_placement_bit_for_bit_with_any_threads():
    graph = structured_graph()
    settings = PartitionSettings(hosts=4, batch=64, rounds=3, seed=5, store_rate=0.05, threads=1)
    first, second = partition(graph, settings), partition(graph, dataclasses.replace(settings, threads=3))
    assert first.objectives == second.objectives
    for name in ("row_keys", "row_owner", "sample_host"):
        assert np.array_equal(getattr(first.placement, name), getattr(second.placement, name))
    assert all(np.array_equal(a, b) for a, b in zip(first.placement.mirrors, second.placement.mirrors))


def test_refinement_never_ends_worse_than_hash_placement_and_finds_the_segments():
    for seed in range(3):
        result = partition(structured_graph(seed=seed), PartitionSettings(hosts=4, batch=64, rounds=4, seed=seed))
        assert all(o <= result.objectives[0] for o in result.objectives)
        assert result.objectives[-1] < 0.8 * result.objectives[0]
        mean = result.hosts.samples.mean()
        assert result.hosts.samples.max() <= 1.05 * mean + 1          # the hard cap (sample_slack)


def test_rows_used_more_often_than_a_host_has_samples_fetch_with_probability_one():
    # Row 0 is in two columns of every sample: its count at each host is twice the host's samples.
    edges = np.stack([np.zeros(8), np.zeros(8), np.arange(1, 9)], axis=1).astype(np.uint32)
    graph = SampleGraph(edges, np.array([0, 9]), np.ones(9, bool), "dup")
    owner = np.zeros(graph.n_rows, np.uint16)
    sample_host = np.repeat(np.arange(2, dtype=np.uint16), 4)
    with NativePartitioner(graph, PartitionSettings(hosts=2, batch=3), owner, sample_host) as native:
        objective = native.objective()
    # Host 1 fetches row 0 every iteration (p = 1, not (1 - 8/4)^3) and each of its 4 own rows with
    # p = 1 - (1 - 1/4)^3.
    assert objective == pytest.approx(1 + 4 * (1 - 0.75 ** 3), rel=1e-12)


def test_the_placement_lists_used_rows_and_mirrors_in_priority_order():
    graph = structured_graph()
    edges = graph.edges.copy()
    settings = PartitionSettings(hosts=3, batch=64, rounds=2, store_rate=0.1)
    placement = partition(graph, settings).placement
    used = np.flatnonzero(graph.used)
    feature = np.searchsorted(graph.offsets, used, side="right") - 1
    expected_keys = (feature.astype(np.uint64) << np.uint64(FEATURE_SHIFT)) | (used - graph.offsets[feature]).astype(np.uint64)
    assert np.array_equal(placement.row_keys, expected_keys)
    assert len(placement.sample_host) == graph.n_samples and placement.dataset == graph.dataset
    owner = np.zeros(graph.n_rows, np.uint16)
    owner[used] = placement.row_owner
    for h, mirrors in enumerate(placement.mirrors):
        rows = used[np.searchsorted(placement.row_keys, mirrors)]
        assert np.array_equal(placement.row_keys[np.searchsorted(placement.row_keys, mirrors)], mirrors)
        assert not np.any(owner[rows] == h) and len(np.unique(rows)) == len(rows)
        not_owned = int(np.count_nonzero(placement.row_owner != h))
        assert len(mirrors) == math.ceil(0.1 * not_owned)
        mine = placement.sample_host == h
        m = int(mine.sum())
        counts = np.bincount(edges[mine].ravel(), minlength=graph.n_rows)
        degree = np.bincount(edges.ravel(), minlength=graph.n_rows)
        p = np.where(counts >= m, 1.0, 1 - (1 - counts / m) ** 64)
        with np.errstate(divide="ignore", invalid="ignore"):
            priority = np.where(counts > 0, p * p * (1 / np.maximum(degree, 1) + 1 / counts), 0)
        chosen = priority[rows]
        assert np.all(np.diff(chosen) <= 1e-15) and chosen[-1] > 0
        others = np.setdiff1d(np.flatnonzero((owner != h) & (counts > 0)), rows)
        assert priority[others].max(initial=0) <= chosen[-1] + 1e-15


def test_bad_input_is_refused_with_the_reason():
    graph = graph_from_ids(np.array([[0, 1], [1, 0]]), [2, 2], "bad")
    owner, sample_host = hash_start(graph, 2, 1)
    with pytest.raises(InvalidArgument, match="row_owner"):
        NativePartitioner(graph, PartitionSettings(hosts=2, batch=1), owner + 5, sample_host)
    with pytest.raises(InvalidArgument, match="link_cost"):
        NativePartitioner(graph, PartitionSettings(hosts=2, batch=1, link_cost=((0, -1), (1, 0))), owner, sample_host)
    with pytest.raises(ValueError, match="outside its table"):
        graph_from_ids(np.array([[0, 2]]), [2, 2], "bad")


def test_embps_partition_writes_a_placement_file(tmp_path, capsys):
    job = tmp_path / "job.toml"
    JobConfig(dataset="synthetic", dataset_options={"scale": 0.001, "n_train": 3000, "segments": 4},
              global_batch=128, trainers=2).save(job)
    out = tmp_path / "p.placement"
    assert main(["partition", "--job", str(job), "--hosts", "2", "--samples", "2000", "--rounds", "2",
                 "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "hash placement: objective" in printed and "round 2: objective" in printed
    placement = load_placement(out, hosts=2, dataset="synthetic(scale=0.001, seed=0, segments=4, affinity=0.9)")
    assert len(placement.sample_host) == 2000
    assert main(["partition", "--job", str(job), "--hosts", "2", "--samples", "5000", "--out", str(out)]) == 2
    assert "samples must be in [1, 3000]" in capsys.readouterr().out
