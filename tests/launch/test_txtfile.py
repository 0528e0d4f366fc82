"""Experiment TXT parsing: comments, blank lines, sweeps, and errors that name file and line."""

import pytest

from egolab.launch.txtfile import (
    ExperimentFileError,
    compose_experiment,
    expand_sweep,
    is_sweep,
    read_experiment,
    strip_comment,
)


def write(tmp_path, text):
    path = tmp_path / "x.txt"
    path.write_text(text)
    return path


def test_comments_and_blank_lines(tmp_path):
    path = write(
        tmp_path,
        "# header comment\n\ntask=localization   # trailing comment\n  seed=3\n"
        "+extra.key='a # not a comment'\n\n",
    )
    lines = read_experiment(path)
    assert [line.text for line in lines] == ["task=localization", "seed=3", "+extra.key='a # not a comment'"]
    assert [line.lineno for line in lines] == [3, 4, 5]
    assert not is_sweep(lines)


def test_strip_comment_respects_quotes():
    assert strip_comment('a="x#y" # c') == 'a="x#y" '
    assert strip_comment("#all") == ""


def test_sweep_expansion_order_matches_hydra_job_numbers(tmp_path):
    lines = read_experiment(write(tmp_path, "seed=0,1\nmodel.lr=0.1,0.2,0.3\ntask=t\n"))
    assert is_sweep(lines)
    combos = expand_sweep(lines)
    assert len(combos) == 6
    assert combos[0] == ["seed=0", "model.lr=0.1", "task=t"]
    assert combos[1] == ["seed=0", "model.lr=0.2", "task=t"]
    assert combos[5] == ["seed=1", "model.lr=0.3", "task=t"]


def test_no_sweep_gives_one_run(tmp_path):
    assert expand_sweep(read_experiment(write(tmp_path, "a=1\nb=2\n"))) == [["a=1", "b=2"]]


@pytest.mark.parametrize(
    ("text", "lineno"),
    [("a=1\nthis is not an override\n", 2), ("a=1\n\n# ok\nb=[1,2\n", 4), ("=3\n", 1), ("a=1\n-m\n", 2)],
)
def test_bad_line_names_file_and_line(tmp_path, text, lineno):
    path = write(tmp_path, text)
    with pytest.raises(ExperimentFileError, match=rf"x\.txt:{lineno}:"):
        read_experiment(path)


def test_missing_file(tmp_path):
    with pytest.raises(ExperimentFileError, match="not found"):
        read_experiment(tmp_path / "nope.txt")


def test_compose_experiment_builds_one_run_and_refuses_a_sweep(tmp_path):
    path = tmp_path / "x.txt"
    path.write_text(
        "task=localization\nmodel=actionformer/demo\ndata=localization/demo\nhydra.job.chdir=false\n"
    )
    cfg = compose_experiment(path, ["seed=7"])
    assert (cfg.seed, cfg.model.num_classes) == (7, 5)
    path.write_text("task=localization\nmodel=actionformer/demo\ndata=localization/demo\nseed=0,1\n")
    with pytest.raises(ValueError, match="a sweep of 2 runs"):
        compose_experiment(path)
