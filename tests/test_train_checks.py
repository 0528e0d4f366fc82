"""egolab.train's start-up checks of the data: every bad file of every split, before fitting."""

import functools
import json

import pytest

from egolab.data.demo_localization import make_demo_localization
from egolab.data.localization import ActivityNetFeatureDataset, LocalizationDataModule
from egolab.train import check_data


def test_a_corrupt_test_file_stops_the_run_before_fitting(tmp_path, monkeypatch):
    """A corrupt test-split file used to surface after all of training; now it is named up front, after
    the demo is generated, together with every other problem."""
    for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID"):
        monkeypatch.delenv(var, raising=False)
    demo = functools.partial(
        make_demo_localization,
        tmp_path,
        num_videos={"training": 4, "validation": 2, "testing": 2},
        feat_dim=8,
    )
    dataset = functools.partial(
        ActivityNetFeatureDataset,
        json_file=tmp_path / "annotations" / "demo.json",
        feat_folders=tmp_path / "features",
        input_dim=8,
    )
    datamodule = LocalizationDataModule(dataset, ["training"], ["validation"], ["testing"], demo=demo)
    check_data(datamodule)  # generates the demo, finds nothing
    database = json.loads((tmp_path / "annotations" / "demo.json").read_text())["database"]
    bad = sorted(v for v, e in database.items() if e["subset"] in ("training", "testing"))[:2]
    for vid in bad:
        (tmp_path / "features" / f"{vid}.npy").write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match=r"data check \(data.validate=headers\) found 2 problem") as err:
        check_data(datamodule)
    assert all(f"{vid}.npy" in str(err.value) for vid in bad)
    datamodule.validate = "none"
    check_data(datamodule)  # the way out the message names
    monkeypatch.setenv("LOCAL_RANK", "1")
    datamodule.validate = "headers"
    check_data(datamodule)  # other ranks leave it to the first


def test_bad_input_is_reported_as_its_message_without_a_traceback(caplog, capsys):
    """A user error (here a feature file error as a DataLoader worker re-raises it, with the worker's
    traceback in its message) ends the run with exit code 1 and the one line that names the file."""
    import signal

    from egolab.callbacks import Interrupted
    from egolab.data.features import FeatureFileError
    from egolab.train import reported_errors

    worker = (
        "Caught FeatureFileError in DataLoader worker process 0.\n"
        "Original Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\n    raise FeatureFileError(...)\n'
        "egolab.data.features.FeatureFileError: /data/v1.npy: cannot read the feature file\n"
    )
    with pytest.raises(SystemExit) as stopped, reported_errors():
        raise FeatureFileError(worker)
    assert stopped.value.code == 1
    assert caplog.messages == [
        "egolab.data.features.FeatureFileError: /data/v1.npy: cannot read the feature file"
    ]
    with pytest.raises(SystemExit) as stopped, reported_errors():
        raise Interrupted(signal.SIGTERM)
    assert stopped.value.code == 143 and "relaunch the same command to resume" in caplog.messages[-1]
    with pytest.raises(SystemExit) as stopped, reported_errors():
        raise KeyboardInterrupt
    assert stopped.value.code == 130
    with pytest.raises(RuntimeError), reported_errors():  # a bug keeps its traceback
        raise RuntimeError("a bug")
