"""`launch.py`: run an experiment TXT file locally, in debug mode, in test mode, or on SLURM."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from egolab.launch.runs import experiment_dir, last_checkpoint, run_dir
from egolab.launch.txtfile import ExperimentFileError, OverrideLine, expand_sweep, read_experiment

CLUSTER_ONLY_PREFIXES = ("hydra.launcher.", "+hydra.launcher.", "hydra/launcher=")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Run an egolab experiment TXT file (one Hydra override per line).",
        epilog="Examples:\n"
        "  python launch.py -c expts/demo/localization.txt -l\n"
        "  python launch.py -c expts/demo/localization.txt -g trainer.max_epochs=1\n"
        "  python launch.py -c expts/localization/thumos_i3d.txt -p gpu --gpus 4 --timeout-min 600\n"
        "  python launch.py -c expts/demo/localization.txt --seeds 0 1 2",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--cfg", required=True, help="experiment TXT file (e.g. expts/demo/x.txt)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-l", "--local", action="store_true", help="run here on all visible GPUs, or the CPU")
    mode.add_argument("-g", "--debug", action="store_true", help="one process, num_workers=0, one device")
    mode.add_argument("-p", "--partition", help="submit to this SLURM partition (submitit)")
    mode.add_argument("--cluster", action="store_true", help="submit to SLURM with the default partition")
    mode.add_argument(
        "--submitit-local", action="store_true", help="run through submitit's local executor (as SLURM would)"
    )
    parser.add_argument("-t", "--test", action="store_true", help="test the run's last checkpoint")
    parser.add_argument("--run-id", type=int, help="run only this combination of a sweep")
    parser.add_argument("--seeds", type=int, nargs="+", help="run once per seed (a seed sweep)")
    parser.add_argument("--nodes", type=int, help="SLURM nodes (hydra.launcher.nodes)")
    parser.add_argument("--gpus", type=int, help="GPUs per node (hydra.launcher.gpus_per_node)")
    parser.add_argument("--timeout-min", type=int, help="SLURM time limit in minutes")
    parser.add_argument("--mem-gb", type=int, help="memory per node in GB")
    parser.add_argument("--outputs", help="OUTPUTS root (default $EGOLAB_OUTPUTS or ./OUTPUTS)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, applied after the file's")
    return parser


@dataclass
class Plan:
    """The commands one invocation of launch.py runs, and the run dirs they write."""

    commands: list[list[str]]
    run_dirs: list[Path]


def experiment_name(txt: Path) -> str:
    """`expts/demo/localization.txt` -> `demo/localization` (W&B group, run names)."""
    parts = list(txt.with_suffix("").parts)
    if parts and parts[0] == "expts":
        parts = parts[1:]
    return "/".join(parts) or txt.stem


def _is_cluster_only(text: str) -> bool:
    return text.lstrip("~").startswith(CLUSTER_ONLY_PREFIXES)


def _launcher_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [("nodes", args.nodes), ("gpus_per_node", args.gpus), ("timeout_min", args.timeout_min)]
    pairs.append(("mem_gb", args.mem_gb))
    return [f"hydra.launcher.{key}={value}" for key, value in pairs if value is not None]


def plan(args: argparse.Namespace) -> Plan:
    """Turn the parsed command line into the training commands to run."""
    txt = Path(args.cfg)
    lines = read_experiment(txt)
    extra = [OverrideLine(text, "command line", 0) for text in args.overrides]
    if args.seeds:
        extra.append(OverrideLine("seed=" + ",".join(str(s) for s in args.seeds), "--seeds", 0))
    lines = lines + extra
    cluster = bool(args.partition or args.cluster or args.submitit_local)
    if not cluster:
        dropped = [line for line in lines if _is_cluster_only(line.text)]
        if dropped:
            print(f"launch: ignoring {len(dropped)} SLURM-only override(s) for a local run", file=sys.stderr)
        lines = [line for line in lines if not _is_cluster_only(line.text)]
    combos = expand_sweep(lines)
    indices = list(range(len(combos)))
    if args.run_id is not None:
        if not 0 <= args.run_id < len(combos):
            raise ExperimentFileError(f"{txt}: --run-id {args.run_id} out of range (sweep has {len(combos)})")
        indices = [args.run_id]
    launcher = "submitit_local" if args.submitit_local else "slurm"
    validate_composition(
        lines, [combos[i] + ([f"hydra/launcher={launcher}"] if cluster else []) for i in indices]
    )

    name = experiment_name(txt)
    exp_dir = experiment_dir(txt, args.outputs)
    common = [f"name={name}"]
    if args.test:
        common.append("test_only=true")
    python = [sys.executable, "-m", "egolab.train"]

    if cluster:
        if args.run_id is None:
            overrides = [line.text for line in lines]
            subdir, index = "${hydra.job.num}", "${hydra:job.num}"
        else:
            overrides, subdir, index = combos[args.run_id], str(args.run_id), str(args.run_id)
        cmd = [*python, "-m", *overrides, *common, f"hydra/launcher={launcher}"]
        cmd += [f"hydra.sweep.dir={exp_dir}", f"hydra.sweep.subdir={subdir}", f"run_index={index}"]
        if args.partition:
            cmd.append(f"hydra.launcher.partition={args.partition}")
        cmd += _launcher_overrides(args)
        return Plan([cmd], [exp_dir / str(i) for i in indices])

    commands, dirs = [], []
    for index in indices:
        directory = run_dir(txt, "debug" if args.debug else index, args.outputs)
        cmd = [*python, *combos[index], *common, f"run_index={index}", f"hydra.run.dir={directory}"]
        if args.debug:
            cmd += ["data.num_workers=0", "trainer.devices=1"]
        if args.test and last_checkpoint(directory) is None and not args.dry_run:
            raise ExperimentFileError(f"{txt}: no checkpoint to test at {directory}/checkpoints/last.ckpt")
        commands.append(cmd)
        dirs.append(directory)
    return Plan(commands, dirs)


def validate_composition(lines: list[OverrideLine], combos: list[list[str]]) -> None:
    """Compose the config of every run before starting any, naming the line of a bad override."""
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from egolab.paths import CONF_DIR

    def attempt(overrides: list[str]) -> str | None:
        try:
            compose("config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as err:
            return str(err).strip().splitlines()[0]
        return None

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for combo in combos:
            error = attempt(combo)
            if error is not None:
                line = _blame(lines, error)
                where = f"{line.where}: override {line.text!r}" if line else "configuration"
                raise ExperimentFileError(f"{where} does not compose: {error}")


def _blame(lines: list[OverrideLine], error: str) -> OverrideLine | None:
    """The override whose key the composition error names (the longest such key), if any."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    best, best_len = None, 0
    for line in lines:
        override = parser.parse_override(line.text)
        keys = {override.key_or_group, override.key_or_group.split("@")[0]}
        if override.value_type is not None and not override.is_sweep_override():
            keys.add(f"{override.key_or_group}/{override.value()}")
        for key in keys:
            if key and f"'{key}" in error and len(key) > best_len:
                best, best_len = line, len(key)
    return best


def summarize(dirs: list[Path]) -> None:
    """Print the final test metrics of the runs of a sweep side by side (one row per metric)."""
    from rich.console import Console
    from rich.table import Table

    files = {d: d / "metrics.json" for d in dirs}
    results = {d: json.loads(f.read_text()) for d, f in files.items() if f.is_file()}
    if len(results) < 2:
        return
    table = Table(title="test metrics per run")
    table.add_column("metric")
    for directory in results:
        table.add_column(directory.name, justify="right")
    for key in sorted({k for metrics in results.values() for k in metrics}):
        table.add_row(key, *(f"{m[key]:.4f}" if key in m else "" for m in results.values()))
    Console().print(table)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        launch_plan = plan(args)
    except ExperimentFileError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    for cmd in launch_plan.commands:
        print("launch:", " ".join(cmd), file=sys.stderr)
        if args.dry_run:
            continue
        code = subprocess.call(cmd, env=env)
        if code != 0:
            return code
    if not args.dry_run:
        summarize(launch_plan.run_dirs)
    return 0
