"""Seed summaries: mean ± std over seeds of every final test metric of an experiment's runs.

    python -m egolab.results OUTPUTS/expts/demo/localization.txt          # table + seed_summary.csv
    python -m egolab.results OUTPUTS/expts/demo/localization.txt --csv out.csv

Runs are the numbered run dirs of the experiment (`<i>/metrics.json` + `<i>/config.yaml`). Runs whose
overrides differ only in `seed` form one group; other swept values (a learning-rate list) make
separate groups. The std is the sample standard deviation (ddof=1), 0 for a single seed.
"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SUMMARY_FILE = "seed_summary.csv"
NOT_A_SETTING = ("seed", "run_index", "name", "test_only", "hydra.")


@dataclass
class RunResult:
    """One finished run: where it is, its seed, the overrides that define its setting, its metrics."""

    run_dir: Path
    seed: int | None
    overrides: list[str]
    metrics: dict[str, float] = field(default_factory=dict)


def _overrides(run_dir: Path) -> list[str]:
    """The run's Hydra overrides, without the ones that do not change the setting (seed, paths)."""
    import yaml

    path = run_dir / ".hydra" / "overrides.yaml"
    if not path.is_file():
        return []
    overrides = yaml.safe_load(path.read_text()) or []
    return [o for o in overrides if not o.lstrip("+~").startswith(NOT_A_SETTING)]


def _seed(run_dir: Path) -> int | None:
    import yaml

    path = run_dir / "config.yaml"
    if not path.is_file():
        return None
    seed = (yaml.safe_load(path.read_text()) or {}).get("seed")
    return int(seed) if seed is not None else None


def collect_runs(experiment_dir: str | Path) -> list[RunResult]:
    """The finished runs (numbered dirs with a metrics.json) of an experiment, in run order."""
    root = Path(experiment_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"experiment dir not found: {root}")
    runs = []
    for run_dir in sorted(
        (d for d in root.iterdir() if d.is_dir() and d.name.isdigit()), key=lambda d: int(d.name)
    ):
        metrics_file = run_dir / "metrics.json"
        if not metrics_file.is_file():
            continue
        try:
            metrics = json.loads(metrics_file.read_text())
        except json.JSONDecodeError as err:
            raise ValueError(f"{metrics_file}: not valid json ({err})") from None
        runs.append(RunResult(run_dir, _seed(run_dir), _overrides(run_dir), metrics))
    return runs


def _group_label(run: RunResult, common: set[str]) -> str:
    return " ".join(o for o in run.overrides if o not in common) or "all"


def seed_summary(experiment_dir: str | Path | list[RunResult]) -> Any:
    """A pandas DataFrame, one row per (setting, metric): mean, std, n, seeds and the per-seed values."""
    import pandas as pd

    runs = experiment_dir if isinstance(experiment_dir, list) else collect_runs(experiment_dir)
    columns = ["setting", "metric", "mean", "std", "n", "seeds", "values"]
    if not runs:
        return pd.DataFrame(columns=columns)
    common = set.intersection(*(set(r.overrides) for r in runs))
    groups: dict[str, list[RunResult]] = {}
    for run in runs:
        groups.setdefault(_group_label(run, common), []).append(run)
    rows = []
    for setting, members in groups.items():
        for metric in sorted({k for r in members for k in r.metrics}):
            pairs = [(r.seed, float(r.metrics[metric])) for r in members if metric in r.metrics]
            values = [v for _, v in pairs]
            mean = sum(values) / len(values)
            var = sum((v - mean) ** 2 for v in values) / (len(values) - 1) if len(values) > 1 else 0.0
            rows.append(
                {
                    "setting": setting,
                    "metric": metric,
                    "mean": mean,
                    "std": math.sqrt(var),
                    "n": len(values),
                    "seeds": " ".join(str(s) for s, _ in pairs),
                    "values": " ".join(f"{v:.6g}" for v in values),
                }
            )
    return pd.DataFrame(rows, columns=columns)


def print_summary(summary: Any, title: str = "test metrics over seeds (mean ± std)") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    for name in ("setting", "metric", "mean ± std", "n", "seeds"):
        table.add_column(name, justify="right" if name in ("mean ± std", "n") else "left")
    for row in summary.itertuples(index=False):
        table.add_row(row.setting, row.metric, f"{row.mean:.4f} ± {row.std:.4f}", str(row.n), row.seeds)
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m egolab.results", description="Mean ± std over seeds of an experiment's test metrics."
    )
    parser.add_argument("experiment_dir", help="OUTPUTS/<path of the txt> (holds the run dirs 0, 1, ...)")
    parser.add_argument("--csv", help=f"where to write the table (default <experiment_dir>/{SUMMARY_FILE})")
    args = parser.parse_args(argv)
    summary = seed_summary(args.experiment_dir)
    if summary.empty:
        print(f"no finished runs (metrics.json) under {args.experiment_dir}")
        return 1
    print_summary(summary)
    out = Path(args.csv) if args.csv else Path(args.experiment_dir) / SUMMARY_FILE
    summary.to_csv(out, index=False)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
