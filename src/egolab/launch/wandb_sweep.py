"""`launch.py --wandb-sweep`: a W&B sweep over an experiment's sweep values (seeds, comma lists).

The sweep yaml runs `launch.py -c X.txt -l ...` once per grid point; the agent's `key=value` arguments
select one combination of the experiment's sweep, which keeps its run dir (`OUTPUTS/<txt>/<i>/`), so a
W&B sweep and `launch.py --seeds` write the same runs. With a W&B key the sweep is registered and W&B
agents run it; offline, wandb's open-source `sweeps` engine hands out the same grid here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from egolab.launch.txtfile import ExperimentFileError, OverrideLine, parse_overrides

SWEEP_FILE = "sweep.yaml"


def sweep_parameters(lines: list[OverrideLine]) -> dict[str, dict[str, list]]:
    """W&B `parameters` for every swept key of the experiment (its comma lists and `--seeds`)."""
    parameters = {}
    for override in parse_overrides(lines):
        if override.is_sweep_override():
            values = [v.item() if hasattr(v, "item") else v for v in override.sweep_iterator()]
            parameters[override.key_or_group] = {"values": values}
    return parameters


def sweep_config(
    txt: str,
    lines: list[OverrideLine],
    passthrough: list[str],
    seeds: list[int] | None,
    outputs: str | None,
    metric: str,
    goal: str,
    project: str,
    name: str,
) -> dict[str, Any]:
    """The sweep definition: grid over the swept keys; the command runs one combination locally."""
    parameters = sweep_parameters(lines)
    if not parameters:
        raise ExperimentFileError(f"{txt}: nothing to sweep; give --seeds or a comma list in the file")
    command = ["${env}", "${interpreter}", "${program}"]
    if seeds:  # before -c: `--seeds` takes every value up to the next flag
        command += ["--seeds", *(str(s) for s in seeds)]
    if outputs:
        command += ["--outputs", outputs]
    command += ["-c", txt, "-l", *passthrough, "${args_no_hyphens}"]
    return {
        "program": "launch.py",
        "name": name,
        "project": project,
        "method": "grid",
        "metric": {"name": metric, "goal": goal},
        "parameters": parameters,
        "command": command,
    }


def _sweeps() -> Any:
    """The `sweeps` package, without the pydantic-v2 config-key warning its import prints."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Valid config keys have changed in V2")
        import sweeps
    return sweeps


def validate(config: dict[str, Any]) -> None:
    """Reject a definition that wandb's own sweep validator refuses."""
    violations = _sweeps().schema_violations_from_proposed_config(config)
    if violations:
        raise ExperimentFileError("W&B sweep definition rejected: " + "; ".join(violations))


def write_yaml(config: dict[str, Any], path: Path) -> Path:
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    header = "# W&B sweep written by launch.py --wandb-sweep. Register: wandb sweep <this file>\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def register(config: dict[str, Any]) -> str:
    """Create the sweep on the W&B server (needs a key); returns its id."""
    import wandb

    return wandb.sweep(sweep=config, project=config["project"])


def agent_command(config: dict[str, Any], values: dict[str, Any]) -> list[str]:
    """The command a W&B agent would run for one grid point (its macros expanded)."""
    args = [f"{key}={value}" for key, value in values.items()]
    expanded = {
        "${env}": ["/usr/bin/env"],
        "${interpreter}": [sys.executable],
        "${program}": [config["program"]],
        "${args_no_hyphens}": args,
    }
    return [part for item in config["command"] for part in expanded.get(item, [item])]


def run_offline(config: dict[str, Any], run_dir_of: Callable[[dict[str, Any]], Path]) -> list:
    """Run the sweep here, as agents would, with the grid handed out by the `sweeps` engine.

    Each finished run reports its test metrics (from its `metrics.json`) back to the engine.
    """
    sweeps = _sweeps()
    runs = []
    while (run := sweeps.next_run(config, runs, validate=True)) is not None:
        values = {key: item["value"] for key, item in run.config.items()}
        values = {key: value.item() if hasattr(value, "item") else value for key, value in values.items()}
        command = agent_command(config, values)
        print("sweep:", " ".join(command), file=sys.stderr)
        code = subprocess.call(command, env=dict(os.environ, HYDRA_FULL_ERROR="1"))
        metrics_file = run_dir_of(values) / "metrics.json"
        if code == 0 and metrics_file.is_file():
            run.state = sweeps.RunState.finished
            run.summary_metrics = json.loads(metrics_file.read_text())
        else:
            run.state = sweeps.RunState.failed
        runs.append(run)
    return runs
