"""`python -m egolab.fusion RUN RUN [...] --weights ...`: fuse runs' predictions, print the metrics."""

from __future__ import annotations

import argparse

from egolab.fusion.core import fuse_runs
from egolab.fusion.scores import NORMALIZATIONS


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egolab.fusion", description=__doc__)
    parser.add_argument("runs", nargs="+", help="run dirs (OUTPUTS/<txt>/<i>) or predictions files")
    parser.add_argument("--weights", type=float, nargs="+", help="one per run (default: equal)")
    parser.add_argument("--normalize", choices=NORMALIZATIONS, default="none", help="per-row, before summing")
    parser.add_argument("--out", help="fused predictions file (default: fused_<name> beside the first)")
    parser.add_argument("--nms-iou", type=float, default=0.1, help="localization: NMS IoU threshold")
    parser.add_argument("--nms-sigma", type=float, default=0.5, help="localization: soft-NMS sigma")
    args = parser.parse_args(argv)
    result = fuse_runs(
        args.runs, args.weights, args.normalize, args.out, iou_threshold=args.nms_iou, sigma=args.nms_sigma
    )
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"late fusion -> {result.path}")
    table.add_column("metric")
    for index, _ in enumerate(result.inputs):
        table.add_column(f"run {index}", justify="right")
    table.add_column("fused", justify="right")
    for key, value in result.metrics.items():
        table.add_row(
            key, *(f"{m.get(key, float('nan')):.4f}" for m in result.inputs.values()), f"{value:.4f}"
        )
    Console().print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
