"""Runs inside a client container of the container test: a stream of updates to a cluster, one line of JSON
per batch on stdout saying whether the shards acknowledged it; and, with --verify, the check that every
acknowledged update is in the cluster.

    python stream_updates.py --cluster cluster.toml --table acks --acked 300
    python stream_updates.py --cluster cluster.toml --table acks --verify batches.json

Batch b updates keys KEY_BASE + b*BATCH_KEYS ... once each, with gradients that depend only on the key.
The table is SGD with lr 1 from zero rows, so a key's row is exactly -gradient once its update is applied,
and reported missing before.  An update is not retried (it is not idempotent): a batch the shards did not
acknowledge may be applied on some shards and not on others, and the check allows exactly that.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from embps.api import InitializerSpec, OptimizerSpec, TableSpec
from embps.client import ClusterConfig, PSClient, ShardError

KEY_BASE, BATCH_KEYS, DIM = 1 << 40, 64, 8
SPEC = TableSpec(dim=DIM, capacity=1 << 20, optimizer=OptimizerSpec("sgd", lr=1.0),
                 initializer=InitializerSpec("zeros"), missing_keys="report")


def batch_keys(batch: int) -> np.ndarray:
    return np.arange(KEY_BASE + batch * BATCH_KEYS, KEY_BASE + (batch + 1) * BATCH_KEYS, dtype=np.uint64)


def gradients(keys: np.ndarray) -> np.ndarray:
    """Exact in float32 (eighths below 2^10), so -gradient is the row bit for bit."""
    base = ((keys % np.uint64(997)).astype(np.float32) + 1) / 8
    return base[:, None] + np.arange(DIM, dtype=np.float32)


def stream(ps: PSClient, table: str, acked_target: int, pause: float, give_up: float) -> int:
    ps.create_table(table, SPEC, if_not_exists=True)
    acked, batch, last_ack = 0, 0, time.monotonic()
    while acked < acked_target:
        keys = batch_keys(batch)
        try:
            ps.update(table, keys, gradients(keys))
        except ShardError as error:
            print(json.dumps({"batch": batch, "acked": False, "code": error.code.name}), flush=True)
            if time.monotonic() - last_ack > give_up:
                print(f"no acknowledged update for {give_up} s: giving up", file=sys.stderr)
                return 1
            time.sleep(0.2)
        else:
            acked, last_ack = acked + 1, time.monotonic()
            print(json.dumps({"batch": batch, "acked": True}), flush=True)
            time.sleep(pause)
        batch += 1
    return 0


def verify(ps: PSClient, table: str, batches: dict) -> dict:
    """Every acknowledged key holds -gradient; an unacknowledged one holds -gradient or is missing."""
    report = {"acked_keys": 0, "unacked_applied": 0, "unacked_missing": 0, "problems": []}
    for acked, numbers in ((True, batches["acked"]), (False, batches["unacked"])):
        if not numbers:
            continue
        keys = np.concatenate([batch_keys(b) for b in numbers])
        rows, _, found = ps.lookup(table, keys, with_state=True)
        right = found & np.all(rows == -gradients(keys), axis=1)
        missing = ~found & np.all(rows == 0, axis=1)
        if acked:
            report["acked_keys"] += len(keys)
            bad = ~right
        else:
            report["unacked_applied"] += int(right.sum())
            report["unacked_missing"] += int(missing.sum())
            bad = ~(right | missing)
        for i in np.flatnonzero(bad)[:5]:
            report["problems"].append({"key": int(keys[i]), "acked": acked, "found": bool(found[i]),
                                       "row": rows[i].tolist(), "expected": (-gradients(keys[i:i + 1]))[0].tolist()})
    return report


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    parser.add_argument("--table", required=True)
    parser.add_argument("--acked", type=int, default=300, help="stop after this many acknowledged batches")
    parser.add_argument("--pause", type=float, default=0.02, help="seconds between acknowledged batches")
    parser.add_argument("--give-up", type=float, default=120.0, help="seconds without an acknowledgement")
    parser.add_argument("--verify", metavar="BATCHES.json", help='{"acked": [...], "unacked": [...]}: check them')
    args = parser.parse_args()
    with PSClient(ClusterConfig.load(args.cluster)) as ps:
        if args.verify:
            with open(args.verify) as f:
                print(json.dumps(verify(ps, args.table, json.load(f))))
            return 0
        return stream(ps, args.table, args.acked, args.pause, args.give_up)


if __name__ == "__main__":
    sys.exit(main())
