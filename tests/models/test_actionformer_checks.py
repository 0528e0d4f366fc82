"""Start-up check of localization configs: every shipped experiment passes, and a bad one gets every
problem listed at once (by the check, by egolab.train before building, and by launch.py before starting)."""

import subprocess
import sys
from pathlib import Path

import pytest
from experiment_files import tracked_experiments
from hydra import compose, initialize_config_dir

from egolab.launch.txtfile import expand_sweep, read_experiment
from egolab.models.actionformer_checks import config_problems
from egolab.paths import CONF_DIR
from egolab.train import check_config

ROOT = Path(__file__).resolve().parents[2]
LOCALIZATION = sorted(
    p for p in tracked_experiments(ROOT) if "task=localization" in p.read_text().replace(" ", "")
)
BAD = [
    "model.max_seq_len=100",  # not divisible by the level strides x windows of the demo model
    "model.regression_range=[[0,4],[8,4]]",  # 2 entries for the demo's levels, the second reversed
    "task.criterion.label_smoothing=1.5",
    "task.postprocess.nms_sigma=0",
    "task.postprocess.nms_method=greedy",
]


def _compose(overrides: list[str]):
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=overrides)


@pytest.mark.parametrize("path", LOCALIZATION, ids=lambda p: str(p.relative_to(ROOT / "expts")))
def test_shipped_localization_experiments_have_no_problems(path):
    for combo in expand_sweep(read_experiment(path)):
        cfg = _compose([o for o in combo if not o.lstrip("+~").startswith("hydra")])
        assert cfg.config_check == "egolab.models.actionformer_checks.config_problems"
        assert config_problems(cfg) == []


def test_every_problem_is_listed_at_once():
    cfg = _compose(["task=localization", "model=actionformer/demo", "data=localization/demo", *BAD])
    problems = config_problems(cfg)
    text = "\n".join(problems)
    assert "max_seq_len=100 is not divisible" in text
    assert "regression_range has 2 entries" in text and "regression_range[1]=[8, 4]" in text
    assert "label_smoothing must lie in [0, 1), got 1.5" in text
    assert "nms_sigma must be a positive number, got 0.0" in text
    assert "nms_method must be one of" in text
    with pytest.raises(ValueError, match="bad configuration") as err:
        check_config(cfg)
    assert str(err.value).count("\n  - ") == len(problems) >= 6


def test_launch_lists_the_problems_before_starting(tmp_path):
    cmd = [sys.executable, "launch.py", "-c", "expts/demo/localization.txt", "--dry-run", *BAD[:2]]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode != 0
    out = proc.stdout + proc.stderr
    assert "expts/demo/localization.txt: bad configuration" in out
    assert "max_seq_len=100" in out and "regression_range has 2 entries" in out
