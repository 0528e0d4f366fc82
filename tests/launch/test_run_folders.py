"""A run folder holds one configuration: a relaunch with other settings is refused, naming the keys."""

import pytest
from omegaconf import OmegaConf

from egolab.launch.runs import RunFolderConflict, archive_run_folder, check_run_folder, config_differences

SAVED = {
    "seed": 0,
    "task": {"optimizer": {"lr": 0.001}, "warmup_epochs": 5},
    "trainer": {"max_epochs": 10, "devices": "auto"},
    "data": {"num_workers": 4, "batch_size": 2},
    "paths": {"demo_root": "/data/a"},
    "callbacks": {"kill": None},
}


def changed(**values) -> dict:
    """SAVED with dotted keys set."""
    config = OmegaConf.create(SAVED)
    for key, value in values.items():
        OmegaConf.update(config, key.replace("__", "."), value, force_add=True)
    return OmegaConf.to_container(config)


def test_differences_name_each_key_outside_the_ones_a_relaunch_may_change():
    current = changed(task__optimizer__lr=0.01, trainer__max_epochs=2, trainer__devices=2)
    current["paths"]["demo_root"] = "/data/b"
    del current["callbacks"]["kill"]
    current["model"] = {"dropout": 0.1}
    assert config_differences(SAVED, current) == [
        "model.dropout: '(not set)' -> 0.1",
        "task.optimizer.lr: 0.001 -> 0.01",
        "trainer.max_epochs: 10 -> 2",
    ]
    assert config_differences(SAVED, changed(data__num_workers=0, trainer__devices=4)) == []


def write_run(folder, config: dict, checkpoint: bool = True):
    (folder / "checkpoints").mkdir(parents=True)
    OmegaConf.save(OmegaConf.create(config), folder / "config.yaml")
    if checkpoint:
        (folder / "checkpoints" / "last.ckpt").write_bytes(b"x")


def test_a_started_run_refuses_another_configuration_and_says_what_to_do(tmp_path):
    write_run(tmp_path / "0", SAVED)
    check_run_folder(tmp_path / "0", changed(data__num_workers=1))  # the same run: resumes
    with pytest.raises(RunFolderConflict) as err:
        check_run_folder(tmp_path / "0", changed(task__optimizer__lr=0.01))
    message = str(err.value)
    assert "task.optimizer.lr: 0.001 -> 0.01" in message and str(tmp_path / "0") in message
    assert "--restart" in message and "new name" in message


def test_a_folder_without_a_checkpoint_or_metrics_holds_no_run_yet(tmp_path):
    write_run(tmp_path / "0", SAVED, checkpoint=False)
    check_run_folder(tmp_path / "0", changed(task__optimizer__lr=0.01))
    check_run_folder(tmp_path / "missing", SAVED)


def test_restart_archives_the_folder(tmp_path):
    write_run(tmp_path / "0", SAVED)
    archived = archive_run_folder(tmp_path / "0")
    assert not (tmp_path / "0").exists() and archived.name.startswith("0.archived-")
    assert (archived / "checkpoints" / "last.ckpt").read_bytes() == b"x"
    assert archive_run_folder(tmp_path / "0") is None


def test_a_second_trainer_in_a_locked_folder_is_told_who_holds_it(tmp_path):
    """One process holds the folder's lock; another is refused with the holder's pid; once the holder
    ends (killed, here), the lock is free again."""
    import subprocess
    import sys

    from egolab.launch.runs import lock_run_folder

    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time; from pathlib import Path; "
            "from egolab.launch.runs import lock_run_folder; lock_run_folder(Path(sys.argv[1])); "
            "print('locked', flush=True); time.sleep(60)",
            str(tmp_path / "0"),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderConflict, match=f"in use by pid {holder.pid} on .*wait for that run"):
            lock_run_folder(tmp_path / "0")
    finally:
        holder.kill()
        holder.wait()
    lock_run_folder(tmp_path / "0")
