"""`launch.py`: run an experiment TXT file locally, in debug mode, in test mode, or on SLURM."""

from __future__ import annotations

import argparse
import functools
import json
import os
import shlex
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from egolab.launch import child
from egolab.launch.runs import archive_run_folder, experiment_dir, experiment_key, last_checkpoint, run_dir
from egolab.launch.txtfile import (
    ExperimentFileError,
    OverrideLine,
    expand_sweep,
    parse_overrides,
    read_experiment,
)

CLUSTER_ONLY_PREFIXES = ("hydra.launcher.", "+hydra.launcher.", "hydra/launcher=")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="launch.py",
        description="Run an egolab experiment TXT file (one Hydra override per line).",
        epilog="Examples:\n"
        "  python launch.py -c expts/demo/localization.txt -l\n"
        "  python launch.py -c expts/demo/localization.txt -g trainer.max_epochs=1\n"
        "  python launch.py -c expts/localization/thumos_i3d.txt -p gpu --gpus 4 --timeout-min 600\n"
        "  python launch.py -c expts/demo/localization.txt --seeds 0 1 2\n"
        "  python launch.py -c expts/demo/localization.txt --seeds 0 1 2 seed=1   # only the seed-1 run\n"
        "  python launch.py -c expts/demo/localization.txt --seeds 0 1 2 --wandb-sweep",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("-c", "--cfg", required=True, help="experiment TXT file (e.g. expts/demo/x.txt)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("-l", "--local", action="store_true", help="run here on all visible GPUs, or the CPU")
    mode.add_argument(
        "-g",
        "--debug",
        action="store_true",
        help="one process, num_workers=0, one device, in a fresh OUTPUTS/<txt>/debug/<i>/ (never resumes)",
    )
    mode.add_argument("-p", "--partition", help="submit to this SLURM partition (submitit)")
    mode.add_argument("--cluster", action="store_true", help="submit to SLURM with the default partition")
    mode.add_argument(
        "--submitit-local", action="store_true", help="run through submitit's local executor (as SLURM would)"
    )
    mode.add_argument(
        "--wandb-sweep",
        action="store_true",
        help="write OUTPUTS/<txt>/sweep.yaml (a W&B grid over the sweep values); register it with a "
        "W&B key, else run it here through the offline `sweeps` engine",
    )
    parser.add_argument("-t", "--test", action="store_true", help="test the run's last checkpoint")
    parser.add_argument(
        "--restart",
        action="store_true",
        help="archive the run folder(s) as <folder>.archived-<time> and train from scratch (a run folder "
        "holds one configuration: a relaunch with other settings is refused without this)",
    )
    parser.add_argument("--run-id", type=int, help="run only this combination of a sweep")
    parser.add_argument("--seeds", nargs="+", metavar="SEED", help="run once per seed (a seed sweep)")
    parser.add_argument("--nodes", type=int, help="SLURM nodes (hydra.launcher.nodes)")
    parser.add_argument("--gpus", type=int, help="GPUs per node (hydra.launcher.gpus_per_node; 0: CPU nodes)")
    parser.add_argument("--timeout-min", type=int, help="SLURM time limit in minutes")
    parser.add_argument("--cpus", type=int, help="CPUs per task (hydra.launcher.cpus_per_task, default 10)")
    parser.add_argument("--mem-gb", type=int, help="memory per node in GB (default 64)")
    parser.add_argument("--outputs", help="OUTPUTS root (default $EGOLAB_OUTPUTS, else OUTPUTS in the repo)")
    parser.add_argument("--dry-run", action="store_true", help="print the commands, run nothing")
    parser.add_argument("overrides", nargs="*", help="extra Hydra overrides, applied after the file's")
    return parser


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse the command line; ``--seeds 0 1 2 seed=1 ...`` keeps the integers as seeds and the rest as
    overrides (argparse alone would read ``seed=1`` as a fourth seed and reject it)."""
    args = build_parser().parse_args(argv)
    if args.seeds:
        count = next((i for i, token in enumerate(args.seeds) if not _is_int(token)), len(args.seeds))
        if count == 0:
            build_parser().error(f"--seeds needs at least one integer, got {args.seeds[0]!r}")
        args.overrides = args.seeds[count:] + args.overrides
        args.seeds = [int(token) for token in args.seeds[:count]]
    return args


def _is_int(token: str) -> bool:
    try:
        int(token)
    except ValueError:
        return False
    return True


@dataclass
class Plan:
    """The commands one invocation of launch.py runs, the run dirs they write, and the scratch dirs
    (debug runs) to empty before running so that they never resume."""

    commands: list[list[str]]
    run_dirs: list[Path]
    scratch_dirs: list[Path] = field(default_factory=list)


def experiment_name(txt: Path) -> str:
    """`expts/demo/localization.txt` -> `demo/localization` (W&B group, run names), from the experiment's
    key (:func:`egolab.launch.runs.experiment_key`), whatever the working directory."""
    parts = list(experiment_key(txt).with_suffix("").parts)
    if parts and parts[0] == "expts":
        parts = parts[1:]
    return "/".join(parts) or txt.stem


def _is_cluster_only(text: str) -> bool:
    return text.lstrip("~").startswith(CLUSTER_ONLY_PREFIXES)


def _launcher_overrides(args: argparse.Namespace) -> list[str]:
    pairs = [("nodes", args.nodes), ("gpus_per_node", args.gpus), ("timeout_min", args.timeout_min)]
    pairs += [("cpus_per_task", args.cpus), ("mem_gb", args.mem_gb)]
    return [f"hydra.launcher.{key}={value}" for key, value in pairs if value is not None]


def plan(args: argparse.Namespace) -> Plan:
    """Turn the parsed command line into the training commands to run."""
    txt = Path(args.cfg)
    lines, extra, selectors = experiment_lines(args)
    lines = lines + extra
    cluster = bool(args.partition or args.cluster or args.submitit_local)
    if not cluster:
        dropped = [line for line in lines if _is_cluster_only(line.text)]
        if dropped:
            print(f"launch: ignoring {len(dropped)} SLURM-only override(s) for a local run", file=sys.stderr)
        lines = [line for line in lines if not _is_cluster_only(line.text)]
    combos = expand_sweep(lines)
    indices = [i for i, combo in enumerate(combos) if _matches(combo, selectors)]
    if not indices:
        chosen = " ".join(f"{key}={value}" for key, value in selectors.items())
        raise ExperimentFileError(f"{txt}: no combination of the sweep has {chosen}")
    if args.run_id is not None:
        if not 0 <= args.run_id < len(combos):
            raise ExperimentFileError(f"{txt}: --run-id {args.run_id} out of range (sweep has {len(combos)})")
        if args.run_id not in indices:
            raise ExperimentFileError(f"{txt}: --run-id {args.run_id} does not match the selected values")
        indices = [args.run_id]
    launcher = "submitit_local" if args.submitit_local else "slurm"
    validate_composition(
        lines,
        [combos[i] + ([f"hydra/launcher={launcher}"] if cluster else []) for i in indices],
        check_types=cluster,
    )

    if cluster and not args.submitit_local:
        check_time_limit(combos[indices[0]], args)
    name = experiment_name(txt)
    exp_dir = experiment_dir(txt, args.outputs)
    common = [f"name={name}", f"experiment_file={txt.resolve()}"]
    if args.test:
        common.append("test_only=true")
    python = [sys.executable, "-m", "egolab.train"]

    if cluster:
        if len(indices) == len(combos):
            overrides = [line.text for line in lines]
            subdir, index = "${hydra.job.num}", "${hydra:job.num}"
        elif len(indices) == 1:
            overrides, subdir, index = combos[indices[0]], str(indices[0]), str(indices[0])
        else:
            raise ExperimentFileError(f"{txt}: on SLURM, select one combination of the sweep or all of them")
        cmd = [*python, "-m", *overrides, *common, f"hydra/launcher={launcher}"]
        cmd += [f"hydra.sweep.dir={exp_dir}", f"hydra.sweep.subdir={subdir}", f"run_index={index}"]
        if args.partition:
            cmd.append(f"hydra.launcher.partition={args.partition}")
        cmd += _launcher_overrides(args)
        return Plan([cmd], [exp_dir / str(i) for i in indices])

    commands, dirs = [], []
    for index in indices:
        directory = run_dir(txt, f"debug/{index}" if args.debug else index, args.outputs)
        cmd = [*python, *combos[index], *common, f"run_index={index}", f"hydra.run.dir={directory}"]
        if args.debug:
            cmd += ["data.num_workers=0", "trainer.devices=1"]
        if args.test and last_checkpoint(directory) is None and not args.dry_run:
            raise ExperimentFileError(f"{txt}: no checkpoint to test at {directory}/checkpoints/last.ckpt")
        commands.append(cmd)
        dirs.append(directory)
    return Plan(commands, dirs, scratch_dirs=dirs if args.debug and not args.test else [])


def check_time_limit(combo: list[str], args: argparse.Namespace) -> None:
    """Refuse a SLURM time limit that leaves no time before submitit's preemption signal."""
    from hydra import compose, initialize_config_dir

    from egolab.launch.slurm import signal_delay_problem
    from egolab.paths import CONF_DIR

    overrides = [*combo, "hydra/launcher=slurm", *_launcher_overrides(args)]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
    problem = signal_delay_problem(launcher.timeout_min, launcher.signal_delay_s)
    if problem:
        raise ExperimentFileError(f"{args.cfg}: {problem}")


def experiment_lines(
    args: argparse.Namespace,
) -> tuple[list[OverrideLine], list[OverrideLine], dict[str, object]]:
    """The file's lines plus `--seeds`, the plain command-line overrides, and the selectors."""
    lines = read_experiment(args.cfg)
    if args.seeds:
        lines = lines + [OverrideLine("seed=" + ",".join(str(s) for s in args.seeds), "--seeds", 0)]
    extra, selectors = split_selectors(lines, [OverrideLine(t, "command line", 0) for t in args.overrides])
    return lines, extra, selectors


def split_selectors(
    lines: list[OverrideLine], extra: list[OverrideLine]
) -> tuple[list[OverrideLine], dict[str, object]]:
    """Split command-line overrides into plain ones and selectors.

    An override giving one value to a key that the experiment sweeps (`seed=1` with `--seeds 0 1 2`)
    selects the matching runs, which keep their sweep index and run dir, instead of overriding them all.
    """
    swept = {o.key_or_group for o in parse_overrides(lines) if o.is_sweep_override()}
    plain, selectors = [], {}
    for line, override in zip(extra, parse_overrides(extra), strict=True):
        if override.key_or_group in swept and not override.is_sweep_override():
            selectors[override.key_or_group] = override.value()
        else:
            plain.append(line)
    return plain, selectors


def _matches(combo: list[str], selectors: dict[str, object]) -> bool:
    if not selectors:
        return True
    parsed = parse_overrides([OverrideLine(text, "sweep", 0) for text in combo])
    values = {override.key_or_group: override.value() for override in parsed}
    return all(key in values and _same(values[key], value) for key, value in selectors.items())


def _same(a: object, b: object) -> bool:
    """Equal as values (`1e-3` and `0.001`), or as text (`1` and `'1'` from a W&B agent)."""
    return a == b or str(a) == str(b)


def validate_composition(
    lines: list[OverrideLine], combos: list[list[str]], check_types: bool = False
) -> None:
    """Compose the config of every run before starting any, naming the line of a bad override.

    ``check_types`` also checks every value's type against what it is passed to (a SLURM job should not
    queue for hours to fail on a typo); that imports the targets (Lightning: seconds), so local runs
    leave it to the training process, which imports them anyway.
    """
    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from egolab.paths import CONF_DIR
    from egolab.train import config_problems

    def attempt(overrides: list[str]) -> tuple[str | None, list[str]]:
        try:
            cfg = compose("config", overrides=overrides)
        except (HydraException, OmegaConfBaseException) as err:
            return str(err).strip().splitlines()[0], []
        if check_types:
            from egolab.launch.config_types import type_errors

            return None, type_errors(cfg, lines) or config_problems(cfg)
        return None, config_problems(cfg)

    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for combo in combos:
            error, problems = attempt(combo)
            if error is not None:
                line = _blame(lines, error)
                where = f"{line.where}: override {line.text!r}" if line else "configuration"
                raise ExperimentFileError(f"{where} does not compose: {error}")
            if problems:
                where = lines[0].source if lines else "configuration"
                listed = "\n  - ".join(problems)
                raise ExperimentFileError(f"{where}: bad configuration:\n  - {listed}")


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


def print_run_metrics(dirs: list[Path]) -> None:
    """The test-metrics table of each finished run, as a local run prints it."""
    from egolab.train import print_metrics

    for directory in dirs:
        path = directory / "metrics.json"
        if path.is_file():
            print_metrics(json.loads(path.read_text()), title=f"test metrics (run {directory.name})")


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


def wandb_sweep(args: argparse.Namespace) -> int:
    """Write the W&B sweep yaml of the experiment; register it, or run it here offline."""
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from egolab.launch import wandb_sweep as ws
    from egolab.loggers import wandb_mode
    from egolab.paths import CONF_DIR

    plan(args)  # validates the file, the overrides and every combination's composition
    txt = Path(args.cfg)
    lines, passthrough, selectors = experiment_lines(args)
    if selectors:
        raise ExperimentFileError(f"{txt}: --wandb-sweep runs the whole sweep; drop {sorted(selectors)}")
    local = [line for line in lines + passthrough if not _is_cluster_only(line.text)]
    combos = expand_sweep(local)  # in run-index order, as plan() numbers local runs
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=combos[0])
    project = OmegaConf.select(cfg, "logger.wandb.project", default="egolab")
    config = ws.sweep_config(
        str(txt),
        lines,
        [line.text for line in passthrough],
        args.seeds,
        args.outputs,
        metric=cfg.monitor.replace("val/", "test/"),
        goal="maximize" if cfg.monitor_mode == "max" else "minimize",
        project=project,
        name=experiment_name(txt),
    )
    ws.validate(config)
    exp_dir = experiment_dir(txt, args.outputs)
    path = ws.write_yaml(config, exp_dir / ws.SWEEP_FILE)
    print(f"launch: wrote {path}", file=sys.stderr)
    if args.dry_run:
        return 0
    if wandb_mode(str(exp_dir)) == "online":
        sweep_id = ws.register(config)
        print(f"launch: registered sweep {sweep_id}; start agents here with: wandb agent {sweep_id}")
        return 0

    def run_dir_of(values: dict) -> Path:
        index = next(i for i, combo in enumerate(combos) if _matches(combo, values))
        return run_dir(txt, index, args.outputs)

    runs = ws.run_offline(config, run_dir_of)
    failed = [run for run in runs if run.state.name != "finished"]
    print(f"launch: sweep finished: {len(runs) - len(failed)} of {len(runs)} runs succeeded", file=sys.stderr)
    summarize_seeds(exp_dir)
    return 1 if failed else 0


def summarize_seeds(exp_dir: Path) -> None:
    """Print mean ± std over seeds of the finished runs under an experiment dir."""
    from egolab.results import print_summary, seed_summary

    summary = seed_summary(exp_dir)
    if len(summary):
        print_summary(summary)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.wandb_sweep:
        try:
            return wandb_sweep(args)
        except ExperimentFileError as err:
            print(f"launch: error: {err}", file=sys.stderr)
            return 2
    try:
        launch_plan = plan(args)
    except ExperimentFileError as err:
        print(f"launch: error: {err}", file=sys.stderr)
        return 2
    env = dict(os.environ, HYDRA_FULL_ERROR="1")
    if not args.dry_run:
        for directory in launch_plan.scratch_dirs:
            shutil.rmtree(directory, ignore_errors=True)
    if args.restart and not (args.debug or args.test):
        for directory in launch_plan.run_dirs:
            archived = None if args.dry_run else archive_run_folder(directory)
            if archived is not None or (args.dry_run and directory.exists()):
                print(
                    f"launch: --restart: {directory} archived as {archived or '<folder>.archived-<time>'}",
                    file=sys.stderr,
                )
    cluster = bool(args.partition or args.cluster)
    for cmd in launch_plan.commands:
        print("launch:", shlex.join(cmd), file=sys.stderr)
        if args.dry_run:
            continue
        wait = None
        if cluster:
            from egolab.launch.slurm import wait_reporting_queue

            exp_dir = experiment_dir(args.cfg, args.outputs)
            wait = functools.partial(wait_reporting_queue, exp_dir=exp_dir)
        code = child.run(cmd, env, wait)
        if code != 0:
            return code
    if not args.dry_run:
        if cluster:  # a local run printed its table itself; a SLURM job printed it to its log
            print_run_metrics(launch_plan.run_dirs)
        summarize(launch_plan.run_dirs)
        if args.seeds and len(launch_plan.run_dirs) > 1:
            summarize_seeds(experiment_dir(args.cfg, args.outputs))
    return 0
