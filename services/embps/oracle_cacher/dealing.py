"""Dealt batches: with a placement, trainer h trains the samples the placement gives host h.

Sample i is the i-th sample of the train split's first epoch, the order a partitioner reads the split in
(a source that reshuffles every epoch is read in its first epoch's order, every pass).  Trainer h iterates
its own samples in order, and from its first again once past its last: each trainer's passes over its
partition are its own, as in HET-GMP.  Samples the placement does not list (a placement of the first N
samples) are not trained.  Global batch b is trainer 0's b-th local batch, then trainer 1's, and so on, so
a trainer's slice of the global batch is its own local batch, and the planner plans the union.

Samples are read in chunks of consecutive positions, a few chunks kept: trainers that advance through the
split at about the same pace (a balanced placement) share each chunk; any other pace only reads more.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator

import numpy as np

from embps.datasets import Batch, Dataset
from embps.placement import Placement

CHUNK_SAMPLES = 1024
CHUNKS_KEPT = 64


class DealingError(ValueError):
    """A placement whose samples cannot be dealt over this job's trainers."""


def trainer_samples(placement: Placement, n_train: int) -> list[np.ndarray]:
    """Each trainer's sample positions, ascending."""
    if len(placement.sample_host) > n_train:
        raise DealingError(f"the placement places {len(placement.sample_host)} samples, the train split has "
                           f"only {n_train}")
    order = np.argsort(placement.sample_host, kind="stable")
    bounds = np.searchsorted(placement.sample_host[order], np.arange(placement.hosts + 1))
    positions = [order[lo:hi] for lo, hi in zip(bounds[:-1], bounds[1:])]
    empty = [h for h, p in enumerate(positions) if not len(p)]
    if empty:
        raise DealingError(f"the placement gives host(s) {empty} no training samples: every trainer needs some")
    return positions


def dealt_batches(dataset: Dataset, placement: Placement, local_batch: int) -> Iterator[Batch]:
    """Global batches 0, 1, ...: the union of the trainers' local batches, trainer 0's first.  A placement
    that cannot be dealt is refused here, not at the first batch."""
    return _deal(_ChunkReader(dataset), trainer_samples(placement, dataset.info.n_train), local_batch)


def _deal(reader: _ChunkReader, positions: list[np.ndarray], local_batch: int) -> Iterator[Batch]:
    within = np.arange(local_batch)
    for b in range(1 << 62):
        wanted = np.concatenate([p[(b * local_batch + within) % len(p)] for p in positions])
        yield reader.samples(wanted)


class _ChunkReader:
    """Samples at any positions of the train split's first epoch, read CHUNK_SAMPLES at a time."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset
        self.n = dataset.info.n_train
        self.chunks: OrderedDict[int, Batch] = OrderedDict()

    def samples(self, positions: np.ndarray) -> Batch:
        chunk_of, at = np.divmod(positions, CHUNK_SAMPLES)
        out = None
        for chunk in np.unique(chunk_of):
            data = self._chunk(int(chunk))
            where = np.flatnonzero(chunk_of == chunk)
            if out is None:
                out = Batch(*(np.empty((len(positions), *a.shape[1:]), a.dtype)
                              for a in (data.dense, data.sparse, data.labels)))
            for target, source in ((out.dense, data.dense), (out.sparse, data.sparse), (out.labels, data.labels)):
                target[where] = source[at[where]]
        if out is None:
            raise ValueError("no sample positions to read")
        return out

    def _chunk(self, chunk: int) -> Batch:
        if chunk in self.chunks:
            self.chunks.move_to_end(chunk)
            return self.chunks[chunk]
        if (chunk + 1) * CHUNK_SAMPLES <= self.n:
            data = next(self.dataset.batches(CHUNK_SAMPLES, "train", start_batch=chunk, epochs=1))
        else:   # the ragged tail, past the last full chunk: one sample at a time
            tail = [next(self.dataset.batches(1, "train", start_batch=p, epochs=1))
                    for p in range(chunk * CHUNK_SAMPLES, self.n)]
            data = Batch(*(np.concatenate(parts) for parts in zip(*((s.dense, s.sparse, s.labels) for s in tail))))
        self.chunks[chunk] = data
        if len(self.chunks) > CHUNKS_KEPT:
            self.chunks.popitem(last=False)
        return data
