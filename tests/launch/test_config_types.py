"""Value types checked at composition: a bad type names its key (and, via type_errors, its TXT line);
every tracked experiment composes without a type problem."""

import subprocess
import sys
from pathlib import Path

import pytest
from experiment_files import tracked_experiments
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from egolab.launch.config_types import TypeProblem, type_errors, type_problems
from egolab.launch.txtfile import expand_sweep, read_experiment
from egolab.paths import CONF_DIR

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "expts" / "demo" / "localization.txt"


def compose_demo(*extra: str):
    """The demo localization config plus ``extra``, composed as cli.validate_composition does."""
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[line.text for line in read_experiment(DEMO)] + list(extra))


@pytest.mark.parametrize(
    "override, message",
    [
        (
            "trainer.max_epochs=three",
            "trainer.max_epochs: expected int | None for lightning.Trainer(max_epochs=...), got str 'three'",
        ),
        (
            "task.optimizer.lr=fast",
            "task.optimizer.lr: expected float | Tensor for torch.optim.AdamW(lr=...), got str 'fast'",
        ),
        (
            "data.batch_size=2.5",
            "data.batch_size: expected int for "
            "egolab.data.localization.LocalizationDataModule(batch_size=...), got float 2.5",
        ),
        (
            "trainer.max_epochs='3'",
            "trainer.max_epochs: expected int | None for lightning.Trainer(max_epochs=...), got str '3'",
        ),
        (
            "trainer.enable_progress_bar=1",
            "trainer.enable_progress_bar: expected bool | None for "
            "lightning.Trainer(enable_progress_bar=...), got int 1",
        ),
        (
            "task.metric.tiou_thresholds=[0.5,high]",
            "task.metric.tiou_thresholds: expected Sequence[float] for "
            "egolab.metrics.localization.DetectionMAP(tiou_thresholds=...), got list [0.5, 'high']",
        ),
        (
            "task.metric.tiou_thresholds=0.5",
            "task.metric.tiou_thresholds: expected Sequence[float] for "
            "egolab.metrics.localization.DetectionMAP(tiou_thresholds=...), got float 0.5",
        ),
        (
            "+task.optimizer.betas=[0.9]",
            "task.optimizer.betas: expected tuple[float | Tensor, float | Tensor] for "
            "torch.optim.AdamW(betas=...), got list [0.9]",
        ),
        ("seed=abc", "seed: expected int, got str 'abc'"),
        ("test_only=1", "test_only: expected bool, got int 1"),
    ],
)
def test_a_bad_value_type_is_one_problem_naming_its_key(override, message):
    key = override.lstrip("+").split("=")[0]
    assert type_problems(compose_demo(override)) == [TypeProblem(key, message)]


@pytest.mark.parametrize(
    "override",
    [
        "trainer.max_epochs=3",
        "trainer.max_epochs=null",
        "task.optimizer.lr=0.01",
        "task.optimizer.lr=1",
        "data.batch_size=8",
        "trainer.precision=bf16-mixed",
        "trainer.precision=16",
        "trainer.devices=[0,1]",
        "trainer.limit_train_batches=3",
        "data.train_split=training",
        "task.postprocess.class_sigma={0:0.3}",
        "+task.optimizer.betas=[0.9,0.99]",
        "recipe.world_size=8",
    ],
)
def test_values_of_an_accepted_type_are_no_problem(override):
    assert type_problems(compose_demo(override)) == []


def test_an_interpolated_value_names_the_key_it_comes_from():
    problems = type_problems(compose_demo("model.num_classes=five"))
    assert sorted(problems) == [
        TypeProblem(
            "data.dataset.num_classes",
            "data.dataset.num_classes (= ${model.num_classes}): expected int | None for "
            "egolab.data.localization.ActivityNetFeatureDataset(num_classes=...), got str 'five'",
            "model.num_classes",
        ),
        TypeProblem(
            "model.num_classes",
            "model.num_classes: expected int for egolab.models.actionformer.ActionFormer(num_classes=...), "
            "got str 'five'",
        ),
        TypeProblem(
            "task.criterion.num_classes",
            "task.criterion.num_classes (= ${model.num_classes}): expected int for "
            "egolab.models.actionformer_loss.ActionFormerLoss(num_classes=...), got str 'five'",
            "model.num_classes",
        ),
    ]


def test_type_errors_name_the_file_and_line(tmp_path):
    txt = tmp_path / "x.txt"
    bad = ["trainer.max_epochs=three", "model.num_classes=five", "data.num_workers=${name}"]
    txt.write_text(DEMO.read_text() + "\n".join(bad) + "\n")
    lines = read_experiment(txt)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[line.text for line in lines])
    where = {
        text: f"{txt}:{len(DEMO.read_text().splitlines()) + 1 + i}: override {text!r}"
        for i, text in enumerate(bad)
    }
    epochs, classes, workers = (where[text] for text in bad)
    assert type_errors(cfg, lines) == [
        f"{classes}: task.criterion.num_classes (= ${{model.num_classes}}): expected int for "
        "egolab.models.actionformer_loss.ActionFormerLoss(num_classes=...), got str 'five'",
        f"{classes}: model.num_classes: expected int for "
        "egolab.models.actionformer.ActionFormer(num_classes=...), got str 'five'",
        f"{classes}: data.dataset.num_classes (= ${{model.num_classes}}): expected int | None for "
        "egolab.data.localization.ActivityNetFeatureDataset(num_classes=...), got str 'five'",
        f"{workers}: data.num_workers (= ${{name}}): expected int for "
        "egolab.data.localization.LocalizationDataModule(num_workers=...), got str 'default'",
        f"{epochs}: trainer.max_epochs: expected int | None for lightning.Trainer(max_epochs=...), "
        "got str 'three'",
    ]


def test_a_value_from_a_config_group_names_the_group_line():
    lines = read_experiment(DEMO)
    cfg = compose_demo()
    cfg.data.batch_size = "four"  # as if data/localization/demo.yaml said so
    assert type_errors(cfg, lines) == [
        f"{DEMO}:4: override 'data=localization/demo': data.batch_size: expected int for "
        "egolab.data.localization.LocalizationDataModule(batch_size=...), got str 'four'"
    ]


def test_unannotated_parameters_take_the_type_of_a_bool_or_numeric_default():
    cfg = OmegaConf.create(
        {
            "dump": {"_target_": "json.dumps", "skipkeys": 1, "indent": "two", "unknown": "x"},
            "fill": {"_target_": "textwrap.fill", "width": "wide"},
            "fine": {"_target_": "textwrap.fill", "width": 7.5},
        }
    )
    assert type_problems(cfg) == [
        TypeProblem(
            "dump.skipkeys",
            "dump.skipkeys: expected bool (its default is False) for json.dumps(skipkeys=...), got int 1",
        ),
        TypeProblem(
            "fill.width",
            "fill.width: expected a number (its default is 70) for textwrap.fill(width=...), got str 'wide'",
        ),
    ]


def test_missing_unresolvable_and_object_values_are_not_checked():
    cfg = OmegaConf.create(
        {
            "seed": "???",
            "run_dir": "${oc.env:EGOLAB_TEST_UNSET_VARIABLE}",  # unresolvable here
            "a": {"_target_": "textwrap.fill", "width": "???"},
            "b": {"_target_": "textwrap.fill", "width": "${run_dir}"},
            "c": {"_target_": "textwrap.fill", "width": {"_target_": "builtins.len", "obj": []}},
            "d": {"_target_": "no.such.module.thing", "width": "wide"},
        }
    )
    assert type_problems(cfg) == []


def test_every_tracked_experiment_has_no_type_problem():
    files = tracked_experiments(ROOT)
    assert files
    problems = {}
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        for name in files:
            for combo in expand_sweep(read_experiment(name)):
                overrides = [o for o in combo if not o.lstrip("+~").startswith("hydra")]
                found = type_problems(compose("config", overrides=overrides))
                if found:
                    problems[str(name.relative_to(ROOT))] = found
    assert problems == {}


def test_training_process_names_the_experiment_line_of_a_bad_type(tmp_path):
    """egolab.train's start-up check (what a local run meets first) blames the TXT line."""
    from egolab.train import check_config

    txt = tmp_path / "bad.txt"
    txt.write_text(DEMO.read_text() + "trainer.max_epochs=three\n")
    lines = read_experiment(txt)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[line.text for line in lines] + [f"experiment_file={txt}"])
    with pytest.raises(ValueError, match="bad configuration") as err:
        check_config(cfg, [line.text for line in lines])
    bad_line = len(DEMO.read_text().splitlines()) + 1
    assert f"{txt}:{bad_line}: override 'trainer.max_epochs=three'" in str(err.value)


def test_cluster_submission_checks_types_before_queueing(tmp_path):
    cmd = [sys.executable, "launch.py", "-c", "expts/demo/localization.txt", "--cluster", "--dry-run"]
    cmd += ["--outputs", str(tmp_path), "task.optimizer.lr=fast"]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "command line: override 'task.optimizer.lr=fast': task.optimizer.lr: expected float" in proc.stderr
