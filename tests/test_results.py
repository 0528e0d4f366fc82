"""egolab.results: mean ± std over seeds, grouped by setting, from run dirs."""

import json
import math

import pandas as pd
import pytest
import yaml

from egolab.results import collect_runs, main, seed_summary


def make_run(root, index, seed, lr, metrics):
    run = root / str(index)
    (run / ".hydra").mkdir(parents=True)
    overrides = ["task=skill", f"task.optimizer.lr={lr}", f"seed={seed}", "name=x", f"run_index={index}"]
    (run / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run / "config.yaml").write_text(yaml.safe_dump({"seed": seed}))
    if metrics is not None:
        (run / "metrics.json").write_text(json.dumps(metrics))


@pytest.fixture
def experiment(tmp_path):
    root = tmp_path / "OUTPUTS" / "expts" / "x.txt"
    for index, (seed, acc) in enumerate([(0, 0.5), (1, 0.6), (2, 0.7)]):
        make_run(root, index, seed, 0.001, {"test/acc": acc, "test/loss": 1.0})
    make_run(root, 3, 0, 0.0001, {"test/acc": 0.2, "test/loss": 2.0})
    make_run(root, 4, 1, 0.0001, None)  # unfinished: no metrics.json
    (root / "debug").mkdir()
    return root


def test_runs_are_collected_in_order_and_unfinished_ones_skipped(experiment):
    runs = collect_runs(experiment)
    assert [r.run_dir.name for r in runs] == ["0", "1", "2", "3"]
    assert [r.seed for r in runs] == [0, 1, 2, 0]
    assert runs[0].overrides == ["task=skill", "task.optimizer.lr=0.001"]


def test_mean_and_sample_std_per_setting(experiment):
    summary = seed_summary(experiment).set_index(["setting", "metric"])
    row = summary.loc[("task.optimizer.lr=0.001", "test/acc")]
    assert row["mean"] == pytest.approx(0.6)
    assert row["std"] == pytest.approx(math.sqrt((0.1**2 + 0 + 0.1**2) / 2))  # ddof=1
    assert row["n"] == 3 and row["seeds"] == "0 1 2"
    single = summary.loc[("task.optimizer.lr=0.0001", "test/acc")]
    assert single["mean"] == pytest.approx(0.2) and single["std"] == 0.0 and single["n"] == 1
    assert summary.loc[("task.optimizer.lr=0.001", "test/loss")]["std"] == 0.0


def test_cli_prints_and_writes_csv(experiment, capsys):
    assert main([str(experiment)]) == 0
    out = capsys.readouterr().out
    assert "0.6000 ± 0.1000" in out
    table = pd.read_csv(experiment / "seed_summary.csv")
    assert set(table["metric"]) == {"test/acc", "test/loss"} and len(table) == 4


def test_missing_or_empty_experiment(tmp_path, capsys):
    with pytest.raises(FileNotFoundError, match="experiment dir not found"):
        collect_runs(tmp_path / "nope")
    assert main([str(tmp_path)]) == 1
    assert "no finished runs" in capsys.readouterr().out
    (tmp_path / "0").mkdir()
    (tmp_path / "0" / "metrics.json").write_text("{oops")
    with pytest.raises(ValueError, match=r"0/metrics.json: not valid json"):
        collect_runs(tmp_path)
