"""The placement file: round trip, and every way a file can be wrong is refused with a precise error."""

import hashlib
import struct

import numpy as np
import pytest

from embps.placement import Placement
from embps.placement.placement_file import (FORMAT_VERSION, MAGIC, PlacementFileError, PlacementMismatchError,
                                            load_placement, save_placement)


def small_placement(hosts=3, dataset="synthetic-s0.001") -> Placement:
    rng = np.random.default_rng(7)
    keys = np.unique(rng.integers(0, 1 << 45, 500, dtype=np.uint64))
    mirrors = tuple(np.sort(rng.choice(keys, 4 + h, replace=False))[::-1].copy() for h in range(hosts))
    return Placement(hosts=hosts, row_keys=keys, row_owner=rng.integers(0, hosts, len(keys), dtype=np.uint16),
                     sample_host=rng.integers(0, hosts, 1001, dtype=np.uint16), mirrors=mirrors,
                     dataset=dataset, seed=11)


def assert_same(a: Placement, b: Placement):
    assert (a.hosts, a.dataset, a.seed) == (b.hosts, b.dataset, b.seed)
    for name in ("row_keys", "row_owner", "sample_host"):
        assert getattr(a, name).dtype == getattr(b, name).dtype
        assert np.array_equal(getattr(a, name), getattr(b, name))
    assert len(a.mirrors) == len(b.mirrors)
    assert all(x.dtype == np.uint64 and np.array_equal(x, y) for x, y in zip(a.mirrors, b.mirrors))


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "p.placement"
    save_placement(path, small_placement())
    return path


def test_round_trip(saved):
    assert_same(load_placement(saved, hosts=3, dataset="synthetic-s0.001"), small_placement())


def test_round_trip_of_an_empty_placement(tmp_path):
    empty = Placement(hosts=1, row_keys=np.zeros(0, np.uint64), row_owner=np.zeros(0, np.uint16),
                      sample_host=np.zeros(0, np.uint16), mirrors=(np.zeros(0, np.uint64),), dataset="d")
    save_placement(tmp_path / "e", empty)
    assert_same(load_placement(tmp_path / "e"), empty)


def test_saving_is_byte_for_byte_deterministic(tmp_path):
    save_placement(tmp_path / "a", small_placement())
    save_placement(tmp_path / "b", small_placement())
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    assert (tmp_path / "a").read_bytes().startswith(MAGIC)


@pytest.mark.parametrize("keep", [0, 20, 56, 100, -1])
def test_a_truncated_file_is_refused(saved, keep):
    data = saved.read_bytes()
    saved.write_bytes(data[:keep] if keep >= 0 else data[:-1])
    with pytest.raises(PlacementFileError, match="truncated"):
        load_placement(saved)


def test_trailing_bytes_are_refused(saved):
    saved.write_bytes(saved.read_bytes() + b"\0")
    with pytest.raises(PlacementFileError, match="trailing bytes"):
        load_placement(saved)


@pytest.mark.parametrize("where", [60, 200, -3])
def test_a_flipped_byte_is_refused_as_corrupt(saved, where):
    data = bytearray(saved.read_bytes())
    data[where] ^= 0x10
    saved.write_bytes(bytes(data))
    with pytest.raises(PlacementFileError, match="corrupt"):
        load_placement(saved)


def test_another_file_is_refused_by_its_magic(tmp_path):
    (tmp_path / "x").write_bytes(b"PK\x03\x04" + bytes(100))
    with pytest.raises(PlacementFileError, match="not a placement file"):
        load_placement(tmp_path / "x")


def test_another_format_version_is_refused(saved):
    data = bytearray(saved.read_bytes())
    struct.pack_into("<I", data, 8, FORMAT_VERSION + 1)
    saved.write_bytes(bytes(data))
    with pytest.raises(PlacementFileError, match=f"format version {FORMAT_VERSION + 1}"):
        load_placement(saved)


def test_a_file_for_another_host_count_is_refused(saved):
    with pytest.raises(PlacementMismatchError, match="over 3 hosts, this cluster has 4"):
        load_placement(saved, hosts=4)


def test_a_file_for_another_dataset_is_refused(saved):
    with pytest.raises(PlacementMismatchError, match="made for dataset 'synthetic-s0.001', this job trains on 'movielens-100k'"):
        load_placement(saved, dataset="movielens-100k")


def resealed(path, payload: bytes) -> None:
    """A well-checksummed file around `payload`: what a buggy writer would produce."""
    path.write_bytes(struct.pack("<8sIIQ32s", MAGIC, FORMAT_VERSION, 0, len(payload),
                                 hashlib.sha256(payload).digest()) + payload)


def test_header_counts_that_disagree_with_the_arrays_are_refused(saved):
    payload = saved.read_bytes()[56:]
    resealed(saved, payload[:-2])
    with pytest.raises(PlacementFileError, match="header counts need"):
        load_placement(saved)


def test_a_sound_file_holding_an_invalid_placement_is_refused(saved):
    payload = bytearray(saved.read_bytes()[56:])
    owner_at = len(payload) - 2 * 1001 - 2          # the last row's owner
    struct.pack_into("<H", payload, owner_at, 9)
    resealed(saved, bytes(payload))
    with pytest.raises(PlacementFileError, match="not a valid placement .*row_owner names a host >= hosts"):
        load_placement(saved)
