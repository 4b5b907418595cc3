"""Convert a Criteo click-log TSV (Kaggle / Terabyte layout) into the raw arrays the `criteo:<dir>`
data set reads with np.memmap: dense log(x+1) floats, categorical ids hashed into each table's size,
labels.  Prints the throughput; a malformed line stops it with the line number."""

import argparse
import sys
from pathlib import Path

from .criteo import CHUNK_BYTES, DEFAULT_MAX_TABLE_SIZE, CriteoFormatError, preprocess_criteo

COMMAND = "preprocess-criteo"
HELP = "convert a Criteo TSV into memory-mappable arrays for the criteo:<dir> data set"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("tsv", type=Path, help="Criteo TSV file (label, I1..I13, C1..C26)")
    parser.add_argument("out_dir", type=Path, help="output directory (its arrays are overwritten)")
    parser.add_argument("--max-table-size", type=_positive, default=DEFAULT_MAX_TABLE_SIZE,
                        help="cap on each table's rows: ids are hex %% min(Kaggle size, cap) (default: %(default)s)")
    parser.add_argument("--chunk-mb", type=_positive, default=CHUNK_BYTES >> 20,
                        help="bytes of TSV parsed at once per thread, in MiB (default: %(default)s)")
    parser.add_argument("--workers", type=_positive, help="parsing threads (default: one per core, at most 4)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")


def _positive(text: str) -> int:
    value = int(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def run(args: argparse.Namespace) -> int:
    try:
        stats = preprocess_criteo(args.tsv, args.out_dir, max_table_size=args.max_table_size,
                                  chunk_bytes=args.chunk_mb << 20, workers=args.workers,
                                  progress=False if args.no_progress else None)
    except (CriteoFormatError, OSError) as error:
        print(f"preprocess-criteo: {error}", file=sys.stderr)
        return 1
    print(f"{stats.n_samples:,} samples from {stats.n_bytes / 1e6:,.1f} MB in {stats.seconds:.1f} s: "
          f"{stats.rows_per_second:,.0f} rows/s, {stats.n_bytes / 1e6 / max(stats.seconds, 1e-9):,.0f} MB/s "
          f"-> {args.out_dir}")
    return 0
