"""Merge the per-shard LMDBs of an anticipation extraction into one store the anticipation task reads.

python -m egolab.extract.merge OUTPUTS/.../features/features.lmdb OUTPUTS/.../features/shard_*_of_4.lmdb
"""

from __future__ import annotations

import argparse
from pathlib import Path

from egolab.extract.writers import merge_lmdb


def main(argv: list[str] | None = None) -> int:
    summary = __doc__.split("\n")[0]
    parser = argparse.ArgumentParser(prog="python -m egolab.extract.merge", description=summary)
    parser.add_argument("out", type=Path, help="the merged LMDB folder to create")
    parser.add_argument("shards", type=Path, nargs="+", help="the shard LMDB folders (shard_<i>_of_<n>.lmdb)")
    args = parser.parse_args(argv)
    count = merge_lmdb(args.shards, args.out)
    print(f"merged {len(args.shards)} shard(s) into {args.out}: {count} keys")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
