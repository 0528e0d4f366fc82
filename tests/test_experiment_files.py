"""Only tracked experiment files are collected by the experiment tests."""

import subprocess

import pytest
from experiment_files import tracked_experiments


def test_untracked_experiment_files_are_left_out(tmp_path):
    if subprocess.run(["git", "--version"], capture_output=True).returncode != 0:
        pytest.skip("git is not installed")
    (tmp_path / "expts" / "demo").mkdir(parents=True)
    tracked, draft = tmp_path / "expts" / "demo" / "a.txt", tmp_path / "expts" / "demo" / "draft.txt"
    tracked.write_text("task=localization\n")
    draft.write_text("task=unfinished\n")
    git = ["git", "-c", "user.email=t@t", "-c", "user.name=t"]
    subprocess.run([*git, "init", "-q"], cwd=tmp_path, check=True)
    subprocess.run([*git, "add", "expts/demo/a.txt"], cwd=tmp_path, check=True)
    subprocess.run([*git, "commit", "-q", "-m", "a"], cwd=tmp_path, check=True)
    assert tracked_experiments(tmp_path) == [tracked]


def test_outside_a_checkout_every_file_counts(tmp_path):
    (tmp_path / "expts").mkdir()
    (tmp_path / "expts" / "a.txt").write_text("")
    assert tracked_experiments(tmp_path) == [tmp_path / "expts" / "a.txt"]
