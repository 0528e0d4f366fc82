"""Every experiment file composes and builds its task; every demo experiment runs one batch."""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from experiment_files import tracked_experiments
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.launch.txtfile import expand_sweep, read_experiment
from egolab.paths import CONF_DIR

ROOT = Path(__file__).resolve().parents[1]
EXPERIMENTS = tracked_experiments(ROOT)
# Phase-2 demos (task.support_run) need their support run's checkpoint: tests/test_runs_backpack.py runs
# them after it; fast_dev_run writes no checkpoint to start from.
DEMOS = [p for p in EXPERIMENTS if p.parent.name == "demo" and "task.support_run=" not in p.read_text()]


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: str(p.relative_to(ROOT / "expts")))
def test_experiment_composes_and_builds_its_task(path):
    for combo in expand_sweep(read_experiment(path)):
        overrides = [o for o in combo if not o.lstrip("+~").startswith("hydra")]
        with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
            cfg = compose(
                "config", overrides=[*overrides, "paths.root=/nonexistent"], return_hydra_config=False
            )
        if cfg.task.get("extract"):  # feature extraction: hub weights are not built here (offline)
            from hydra.utils import get_class

            from egolab.extract.plan import ClipPlan

            ClipPlan(**cfg.data.plan)
            assert get_class(cfg.model._target_) and cfg.data.target in (
                "localization",
                "backpack",
                "anticipation",
            )
            continue
        assert cfg.monitor.startswith("val/")
        task = instantiate(cfg.task)  # builds the model: its config validation runs here
        if getattr(task.model, "built", None) is False:  # vqa: the network is made in configure_model
            assert task.model.pretrained or task.model.config, "a lazy model needs weights or a config"
        else:
            assert sum(p.numel() for p in task.parameters()) > 0


@pytest.mark.parametrize("path", DEMOS, ids=lambda p: p.stem)
def test_demo_experiment_fast_dev_run(path, egolab_env, tmp_path):
    cmd = [sys.executable, "launch.py", "-c", str(path.relative_to(ROOT)), "-g", "trainer.fast_dev_run=true"]
    proc = subprocess.run(cmd, cwd=ROOT, env=egolab_env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    warned = re.findall(r"\w+Warning: .*", proc.stdout + proc.stderr)
    assert not warned, f"Python warnings a user cannot act on: {warned}"
    run_dir = tmp_path / "OUTPUTS" / "expts" / "demo" / path.name / "debug" / "0"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics, "no test metrics written"
    assert (run_dir / "config.yaml").is_file()
