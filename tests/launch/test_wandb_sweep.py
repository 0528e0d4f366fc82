"""`launch.py --wandb-sweep`: the sweep yaml, its validation by wandb's `sweeps`, and the offline run."""

import json
import sys

import pytest
import yaml

from egolab.launch import wandb_sweep as ws
from egolab.launch.cli import main
from egolab.launch.txtfile import ExperimentFileError, OverrideLine

BASE = "task=localization\nmodel=actionformer/demo\ndata=localization/demo\n"


@pytest.fixture
def expt(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))  # no ~/.netrc key
    (tmp_path / "expts").mkdir()
    path = tmp_path / "expts" / "x.txt"
    path.write_text(BASE + "task.optimizer.lr=1e-3,1e-4\n")
    return path


def test_sweep_yaml_is_a_valid_grid_over_the_swept_values(expt, tmp_path):
    out = tmp_path / "OUT"
    argv = [
        "-c",
        "expts/x.txt",
        "--seeds",
        "0",
        "1",
        "2",
        "--wandb-sweep",
        "--dry-run",
        "--outputs",
        str(out),
    ]
    assert main([*argv, "trainer.max_epochs=2"]) == 0
    config = yaml.safe_load((out / "expts" / "x.txt" / "sweep.yaml").read_text())
    assert config["method"] == "grid" and config["program"] == "launch.py"
    assert config["parameters"] == {
        "task.optimizer.lr": {"values": [1e-3, 1e-4]},
        "seed": {"values": [0, 1, 2]},
    }
    assert config["metric"] == {"name": "test/average_mAP", "goal": "maximize"}
    assert config["name"] == "x"
    command = config["command"]
    assert command[-1] == "${args_no_hyphens}" and "trainer.max_epochs=2" in command
    assert command.index("--seeds") < command.index("-c"), "--seeds must not swallow the overrides"
    ws.validate(config)  # wandb's own validator accepts it
    bad = dict(config, method="exhaustive")
    with pytest.raises(ExperimentFileError, match="rejected"):
        ws.validate(bad)


def test_nothing_to_sweep_is_an_error(expt, capsys):
    expt.write_text(BASE)
    assert main(["-c", "expts/x.txt", "--wandb-sweep", "--dry-run"]) == 2
    assert "nothing to sweep" in capsys.readouterr().err


def test_agent_command_expands_the_macros():
    config = ws.sweep_config(
        "expts/x.txt", [OverrideLine("seed=0,1", "f", 1)], ["a=1"], [0, 1], None, "m", "max", "p", "x"
    )
    cmd = ws.agent_command(config, {"seed": 1})
    assert cmd == [
        "/usr/bin/env",
        sys.executable,
        "launch.py",
        "--seeds",
        "0",
        "1",
        "-c",
        "expts/x.txt",
        "-l",
        "a=1",
        "seed=1",
    ]


def test_offline_sweep_runs_the_grid_through_the_sweeps_engine(tmp_path):
    """The engine hands out every grid point once; each run's metrics.json goes back to it."""
    program = tmp_path / "fake_launch.py"
    program.write_text(
        "import json, pathlib, sys\n"
        "args = dict(a.split('=') for a in sys.argv[1:])\n"
        "d = pathlib.Path(sys.argv[0]).parent / ('run_' + args['seed'] + '_' + args['lr'])\n"
        "d.mkdir()\n"
        "acc = int(args['seed']) * 10 + float(args['lr'])\n"
        "(d / 'metrics.json').write_text(json.dumps({'test/acc': acc}))\n"
    )
    config = {
        "program": str(program),
        "method": "grid",
        "metric": {"name": "test/acc", "goal": "maximize"},
        "parameters": {"seed": {"values": [0, 1]}, "lr": {"values": [0.5, 0.25]}},
        "command": ["${interpreter}", "${program}", "${args_no_hyphens}"],
    }
    runs = ws.run_offline(config, lambda values: tmp_path / f"run_{values['seed']}_{values['lr']}")
    assert [r.state.name for r in runs] == ["finished"] * 4
    got = sorted(r.summary_metrics["test/acc"] for r in runs)
    assert got == [0.25, 0.5, 10.25, 10.5]
    failing = dict(config, command=["${interpreter}", "-c", "raise SystemExit(3)"])
    (run,) = ws.run_offline(dict(failing, parameters={"seed": {"values": [0]}}), lambda v: tmp_path / "none")
    assert run.state.name == "failed"


def test_with_a_key_the_sweep_is_registered_not_run(expt, tmp_path, monkeypatch, capsys):
    """W&B online (a key, the server answering: egolab.loggers.wandb_mode says so) registers the sweep."""
    import egolab.loggers

    registered = []
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    monkeypatch.setattr(egolab.loggers, "wandb_mode", lambda *a, **k: "online")
    monkeypatch.setattr(ws, "register", lambda config: registered.append(config) or "abc123")
    monkeypatch.setattr(ws, "run_offline", lambda *a: pytest.fail("must not run offline with a key"))
    assert (
        main(["-c", "expts/x.txt", "--seeds", "0", "1", "--wandb-sweep", "--outputs", str(tmp_path / "OUT")])
        == 0
    )
    assert registered and registered[0]["parameters"]["seed"] == {"values": [0, 1]}
    assert "wandb agent abc123" in capsys.readouterr().out
    assert json.loads(json.dumps(registered[0]))  # plain data, as the W&B API needs
