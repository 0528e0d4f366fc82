"""launch.py planning: commands, run dirs, modes and errors (nothing is run)."""

import sys

import pytest

from egolab.launch.cli import experiment_name, main, parse_args, plan
from egolab.launch.txtfile import ExperimentFileError

BASE = "task=localization\nmodel=actionformer/demo\ndata=localization/demo\n"


@pytest.fixture
def expt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "expts").mkdir()
    path = tmp_path / "expts" / "x.txt"
    path.write_text(BASE + "seed=0,1\nhydra.launcher.nodes=2   # cluster only\n")
    return path


def make_plan(*argv):
    return plan(parse_args(list(argv)))


def test_local_sweep_runs_each_combination_in_its_own_dir(expt, tmp_path):
    result = make_plan("-c", "expts/x.txt", "-l", "--outputs", str(tmp_path / "OUT"))
    assert result.run_dirs == [
        tmp_path / "OUT" / "expts" / "x.txt" / "0",
        tmp_path / "OUT" / "expts" / "x.txt" / "1",
    ]
    first, second = result.commands
    assert first[:3] == [sys.executable, "-m", "egolab.train"]
    assert "seed=0" in first and "seed=1" in second
    assert f"hydra.run.dir={result.run_dirs[1]}" in second
    assert "run_index=1" in second and "name=x" in second
    assert not any(arg.startswith("hydra.launcher.") for arg in first), "SLURM-only line leaked to local run"


def test_debug_mode_single_process(expt, tmp_path):
    result = make_plan("-c", "expts/x.txt", "-g", "--run-id", "1", "--outputs", str(tmp_path / "OUT"))
    (cmd,) = result.commands
    assert "data.num_workers=0" in cmd and "trainer.devices=1" in cmd and "seed=1" in cmd
    assert result.run_dirs == [tmp_path / "OUT" / "expts" / "x.txt" / "debug" / "1"]
    assert result.scratch_dirs == result.run_dirs


def test_debug_runs_get_a_fresh_folder_per_combination(expt, tmp_path):
    """With -g and two seeds, each seed has its own debug folder, emptied before it runs: seed 1 can
    neither restore seed 0's checkpoint nor an older debug run's."""
    result = make_plan("-c", "expts/x.txt", "-g", "--outputs", str(tmp_path / "OUT"))
    debug = tmp_path / "OUT" / "expts" / "x.txt" / "debug"
    assert result.run_dirs == result.scratch_dirs == [debug / "0", debug / "1"]
    stale = debug / "1" / "checkpoints" / "last.ckpt"
    stale.parent.mkdir(parents=True)
    stale.write_text("an earlier debug run")
    assert (
        main(["-c", "expts/x.txt", "-g", "--run-id", "1", "--outputs", str(tmp_path / "OUT"), "--dry-run"])
        == 0
    )
    assert stale.exists(), "a dry run deletes nothing"
    assert (
        make_plan(
            "-c", "expts/x.txt", "-g", "-t", "--run-id", "1", "--outputs", str(tmp_path / "OUT")
        ).scratch_dirs
        == []
    )


def test_cluster_mode_is_one_hydra_multirun(expt, tmp_path):
    result = make_plan("-c", "expts/x.txt", "-p", "gpu", "--gpus", "4", "--outputs", str(tmp_path / "OUT"))
    (cmd,) = result.commands
    assert cmd[3] == "-m"
    assert "seed=0,1" in cmd and "hydra.launcher.nodes=2" in cmd
    assert "hydra/launcher=slurm" in cmd and "hydra.launcher.partition=gpu" in cmd
    assert "hydra.launcher.gpus_per_node=4" in cmd
    assert f"hydra.sweep.dir={tmp_path / 'OUT' / 'expts' / 'x.txt'}" in cmd
    assert "hydra.sweep.subdir=${hydra.job.num}" in cmd


def test_seeds_flag_followed_by_a_selector(expt, tmp_path):
    """The README's `--seeds 0 1 2 seed=1`: the integers are the seeds, `seed=1` selects one run."""
    expt.write_text(BASE)
    args = parse_args(["-c", "expts/x.txt", "--seeds", "0", "1", "2", "seed=1", "trainer.max_epochs=2"])
    assert args.seeds == [0, 1, 2] and args.overrides == ["seed=1", "trainer.max_epochs=2"]
    result = plan(args)
    (cmd,) = result.commands
    assert "seed=1" in cmd and "trainer.max_epochs=2" in cmd and "run_index=1" in cmd
    with pytest.raises(SystemExit):
        parse_args(["-c", "expts/x.txt", "--seeds", "seed=1"])


def test_seeds_flag_makes_a_sweep(expt, tmp_path):
    expt.write_text(BASE)
    result = make_plan("-c", "expts/x.txt", "--seeds", "0", "1", "2", "--outputs", str(tmp_path / "OUT"))
    assert len(result.commands) == 3
    assert [c for cmd in result.commands for c in cmd if c.startswith("seed=")] == [
        "seed=0",
        "seed=1",
        "seed=2",
    ]


def test_errors(expt, tmp_path, capsys):
    with pytest.raises(ExperimentFileError, match="out of range"):
        make_plan("-c", "expts/x.txt", "--run-id", "5")
    with pytest.raises(ExperimentFileError, match="no checkpoint to test"):
        make_plan("-c", "expts/x.txt", "-t", "--outputs", str(tmp_path / "OUT"))
    expt.write_text(BASE + "\n# comment\ntask.metric.nope=3\n")
    assert main(["-c", "expts/x.txt", "--dry-run"]) == 2
    assert "expts/x.txt:6: override 'task.metric.nope=3' does not compose" in capsys.readouterr().err
    expt.write_text(BASE.replace("actionformer/demo", "actionformer/missing"))
    with pytest.raises(ExperimentFileError, match=r"x\.txt:2: .*actionformer/missing"):
        make_plan("-c", "expts/x.txt")


def test_experiment_name():
    from pathlib import Path

    assert experiment_name(Path("expts/demo/localization.txt")) == "demo/localization"


def test_a_value_of_a_swept_key_selects_that_run(expt, tmp_path):
    """`seed=1` with `--seeds 0 1 2` runs only the seed-1 run, in its own run dir (index 1)."""
    expt.write_text(BASE + "task.optimizer.lr=1e-3,1e-4\n")
    out = ["--outputs", str(tmp_path / "OUT")]
    result = make_plan(
        "-c", "expts/x.txt", "-l", "--seeds", "0", "1", "2", *out, "seed=1", "trainer.max_epochs=2"
    )
    assert len(result.commands) == 2  # both learning rates, seed 1 only
    assert [d.name for d in result.run_dirs] == ["1", "4"]
    for cmd in result.commands:
        assert "seed=1" in cmd and "trainer.max_epochs=2" in cmd
    # a W&B agent writes values its own way: 0.0001 selects the `1e-4` combination
    (only,) = make_plan(
        "-c", "expts/x.txt", "--seeds", "0", "1", "2", *out, "seed=2", "task.optimizer.lr=0.0001"
    ).run_dirs
    assert only.name == "5"
    (cluster,) = make_plan(
        "-c", "expts/x.txt", "-p", "gpu", "--seeds", "0", "1", "2", *out, "seed=2", "task.optimizer.lr=0.0001"
    ).commands
    assert "-m" in cluster and "hydra.sweep.subdir=5" in cluster and "run_index=5" in cluster
    with pytest.raises(ExperimentFileError, match="no combination of the sweep has seed=7"):
        make_plan("-c", "expts/x.txt", "--seeds", "0", "1", *out, "seed=7")
    with pytest.raises(ExperimentFileError, match="select one combination"):
        make_plan("-c", "expts/x.txt", "-p", "gpu", "--seeds", "0", "1", *out, "seed=1")


def test_cluster_time_limit_must_exceed_the_preemption_signal_delay(expt, tmp_path):
    """With the default signal_delay_s=120, a 2-minute limit would signal every attempt as it starts."""
    with pytest.raises(ExperimentFileError, match=r"time limit \(2 min\).*signal_delay_s=120"):
        make_plan("-c", "expts/x.txt", "--cluster", "--timeout-min", "2", "--outputs", str(tmp_path / "O"))
    make_plan("-c", "expts/x.txt", "--cluster", "--timeout-min", "3", "--outputs", str(tmp_path / "O"))
    short_delay = ["--cluster", "--timeout-min", "1", "hydra.launcher.signal_delay_s=30"]
    make_plan("-c", "expts/x.txt", *short_delay, "--outputs", str(tmp_path / "O"))


def test_cpu_only_cluster_nodes_get_one_task(expt, tmp_path):
    from hydra import compose, initialize_config_dir

    from egolab.paths import CONF_DIR

    (cmd,) = make_plan(
        "-c", "expts/x.txt", "--cluster", "--gpus", "0", "--cpus", "2", "--mem-gb", "8"
    ).commands
    overrides = [a for a in cmd[4:] if not a.startswith(("hydra.sweep", "run_index", "seed="))]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        launcher = compose("config", overrides=overrides, return_hydra_config=True).hydra.launcher
    assert (launcher.gpus_per_node, launcher.tasks_per_node) == (0, 1)
    assert (launcher.cpus_per_task, launcher.mem_gb) == (2, 8)


def test_printed_commands_can_be_pasted_into_a_shell(expt, tmp_path, capsys):
    """--dry-run prints each command shell-quoted: the list, ${...} interpolations and spaces survive."""
    import shlex

    expt.write_text(BASE + "task.metric.tiou_thresholds=[0.3, 0.5]\n")
    assert main(["-c", "expts/x.txt", "--cluster", "--dry-run", "--outputs", str(tmp_path / "O")]) == 0
    (line,) = [line for line in capsys.readouterr().err.splitlines() if line.startswith("launch: /")]
    (cmd,) = make_plan("-c", "expts/x.txt", "--cluster", "--outputs", str(tmp_path / "O")).commands
    assert shlex.split(line.removeprefix("launch: ")) == cmd


def test_a_repository_experiment_has_one_key_from_any_directory(tmp_path, monkeypatch):
    """The demo TXT given as a relative path from the repository, as an absolute path from elsewhere, or
    relative from a subfolder: the same run folder under the repository's OUTPUTS, the same W&B group,
    and paths.root is the repository (demo data is not regenerated in the working directory)."""
    from hydra import compose, initialize_config_dir

    from egolab.paths import CONF_DIR, REPO_ROOT

    monkeypatch.delenv("EGOLAB_OUTPUTS", raising=False)
    expected = REPO_ROOT / "OUTPUTS" / "expts" / "demo" / "localization.txt" / "0"
    for cwd, txt in [
        (REPO_ROOT, "expts/demo/localization.txt"),
        (tmp_path, str(REPO_ROOT / "expts" / "demo" / "localization.txt")),
        (REPO_ROOT / "expts", "demo/localization.txt"),
    ]:
        monkeypatch.chdir(cwd)
        (cmd,) = make_plan("-c", txt, "-l").commands
        assert f"hydra.run.dir={expected}" in cmd and "name=demo/localization" in cmd, (cwd, txt)
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        overrides = ["task=localization", "model=actionformer/demo", "data=localization/demo"]
        paths = compose("config", overrides=overrides, return_hydra_config=True).paths
    assert paths.root == str(REPO_ROOT)
