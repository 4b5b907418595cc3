"""Dealing by placement: trainer h's slice of every global batch is the next samples of its own partition,
in order, wrapping around it; read through chunks, they equal the samples read whole."""

import numpy as np
import pytest

from embps.datasets import open_dataset
from embps.oracle_cacher import dealing
from embps.oracle_cacher.dealing import DealingError, dealt_batches, trainer_samples
from embps.placement import Placement

N_TRAIN = 2500   # not a multiple of the chunk: the ragged tail is read too


def sample_placement(hosts, sample_host) -> Placement:
    return Placement(hosts=hosts, row_keys=np.zeros(0, np.uint64), row_owner=np.zeros(0, np.uint16),
                     sample_host=np.asarray(sample_host, np.uint16), mirrors=(np.zeros(0, np.uint64),) * hosts,
                     dataset="d")


@pytest.fixture
def small_chunks(monkeypatch):
    monkeypatch.setattr(dealing, "CHUNK_SAMPLES", 256)
    monkeypatch.setattr(dealing, "CHUNKS_KEPT", 3)   # fewer than the trainers' spread: chunks are read again


@pytest.mark.parametrize("spec, options", [("synthetic", {"scale": 0.0005, "seed": 2, "n_train": N_TRAIN}),
                                           ("movielens-100k", {})])
def test_each_trainer_iterates_its_own_partition_in_order(small_chunks, spec, options):
    dataset = open_dataset(spec, **options)
    n = min(N_TRAIN, dataset.info.n_train)
    rng = np.random.default_rng(4)
    hosts, local = 3, 40
    placement = sample_placement(hosts, rng.choice(hosts, n - 7, p=[0.6, 0.3, 0.1]))   # unbalanced, tail unplaced
    whole = next(dataset.batches(dataset.info.n_train, "train", epochs=1))   # the first epoch, read at once
    mine = [np.flatnonzero(placement.sample_host == h) for h in range(hosts)]
    batches = dealt_batches(dataset, placement, local)
    for b in range(30):                       # host 2 has ~250 samples: about 5 passes over it
        batch = next(batches)
        assert len(batch) == hosts * local
        for h in range(hosts):
            expected = mine[h][(b * local + np.arange(local)) % len(mine[h])]
            part = slice(h * local, (h + 1) * local)
            np.testing.assert_array_equal(batch.sparse[part], whole.sparse[expected])
            np.testing.assert_array_equal(batch.dense[part], whole.dense[expected])
            np.testing.assert_array_equal(batch.labels[part], whole.labels[expected])


def test_placements_that_cannot_be_dealt_are_refused():
    with pytest.raises(DealingError, match="places 11 samples, the train split has only 10"):
        trainer_samples(sample_placement(2, [0, 1] * 5 + [0]), 10)
    with pytest.raises(DealingError, match=r"host\(s\) \[1\] no training samples"):
        trainer_samples(sample_placement(3, [0, 2, 2, 0]), 10)
