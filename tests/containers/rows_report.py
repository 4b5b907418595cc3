"""Runs inside a client container of the container test: what every shard of a cluster holds, as JSON on
stdout.  Each shard is asked on its own (not through the router), so a row on the wrong shard, or on two,
shows.

    python rows_report.py --cluster cluster.toml

Per table: rows on each shard, distinct keys, keys held by more than one shard, keys on a shard other
than the one the cluster config routes them to, and a digest of (key, row, optimizer state) over the
distinct keys, independent of which shard holds them.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys

import numpy as np

from embps.client import ClusterConfig, PSClient, jump_hash


def shard_rows(config: ClusterConfig, address: str) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """(keys, rows, state) of every table on one shard."""
    with PSClient(ClusterConfig.from_addresses([address], deadline_seconds=config.deadline_seconds)) as ps:
        tables = {}
        for table in ps.list_tables():
            chunks = list(ps.export(table))
            if chunks:
                tables[table] = tuple(np.concatenate(part) for part in zip(*chunks))
        return tables


def table_report(table: str, per_shard: list[dict], n_shards: int) -> dict:
    held = [(i, shard[table]) for i, shard in enumerate(per_shard) if table in shard]
    keys = np.concatenate([k for _, (k, _, _) in held])
    rows = np.concatenate([r for _, (_, r, _) in held])
    state = np.concatenate([s for _, (_, _, s) in held])
    owner = np.concatenate([np.full(len(k), i) for i, (k, _, _) in held])
    distinct, first = np.unique(keys, return_index=True)   # sorted by key: the digest ignores placement
    digest = hashlib.sha256(keys[first].tobytes() + rows[first].tobytes() + state[first].tobytes())
    return {"rows_per_shard": [int(len(shard[table][0])) if table in shard else 0 for shard in per_shard],
            "distinct_keys": int(len(distinct)), "duplicates": int(len(keys) - len(distinct)),
            "misrouted": int(np.sum(jump_hash(keys, n_shards) != owner)),
            "digest": digest.hexdigest()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cluster", required=True)
    args = parser.parse_args()
    config = ClusterConfig.load(args.cluster)
    per_shard = [shard_rows(config, address) for address in config.shards]
    tables = sorted({table for shard in per_shard for table in shard})
    print(json.dumps({table: table_report(table, per_shard, len(config.shards)) for table in tables}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
