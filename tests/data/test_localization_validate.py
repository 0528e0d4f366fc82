"""Localization check_files: every unreadable feature file of every split, found before fitting."""

import functools
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from test_localization_data import ann, ramp, video, write_data, write_h5

import egolab.data.localization as loc
from egolab.data.demo_localization import make_demo_localization
from egolab.data.localization import ActivityNetFeatureDataset, LocalizationDataModule

SPLITS = {
    "training": ["t1", "t2", "t3", "t4"],
    "validation": ["v1", "v2", "v3"],
    "testing": ["s1", "s2", "s3"],
}


@pytest.fixture
def clean(tmp_path) -> Path:
    """Annotation json of three subsets, each video with 75 steps of 3-channel ``.npy`` features."""
    database = {v: video(s, anns=[ann("run", 1.0, 3.0, 0)]) for s, vids in SPLITS.items() for v in vids}
    return write_data(tmp_path, database, {v: 75 for vids in SPLITS.values() for v in vids})


def module(
    json_file: Path, validate: str = "headers", test_split=("testing",), **kwargs
) -> LocalizationDataModule:
    partial = functools.partial(
        ActivityNetFeatureDataset,
        json_file=json_file,
        feat_folders=json_file.parent / "feats",
        input_dim=3,
        feat_stride=4,
        num_frames=16,
        max_seq_len=128,
        **kwargs,
    )
    return LocalizationDataModule(partial, ["training"], ["validation"], list(test_split), validate=validate)


def corrupt(feats: Path) -> None:
    """One damage of each kind, spread over the three splits."""
    data = (feats / "t1.npy").read_bytes()
    (feats / "t1.npy").write_bytes(data[:-100])  # train: valid header, data cut short
    (feats / "t2.npy").write_bytes(b"not a numpy file")  # train: garbage
    np.save(feats / "v1.npy", ramp(75, dim=4))  # val: 4 channels where 3 are expected
    (feats / "v2.npy").unlink()  # val: missing
    bad = ramp(75)
    bad[10, 1] = np.nan
    np.save(feats / "s1.npy", bad)  # test: valid header and size, a NaN in the data
    np.save(feats / "s2.npy", np.zeros(75, np.float32))  # test: 1-d


def assert_problems(problems: list[str], patterns: list[str]) -> None:
    assert len(problems) == len(patterns), problems
    for problem, pattern in zip(problems, patterns):
        assert re.fullmatch(pattern, problem, re.DOTALL), (problem, pattern)


HEADER_PROBLEMS = [
    r"train split: video 't1': .*feats/t1\.npy: cannot read the header \(ValueError: truncated: \d+ bytes "
    r"where its header needs \d+\)",
    r"train split: video 't2': .*feats/t2\.npy: cannot read the header \(ValueError: .*magic string.*\)",
    r"val split: video 'v2': no feature file .*feats/v2\.npy",
    r"val split: video 'v1': .*feats/v1\.npy: expected feature dim 3, got \[4\]",
    r"test split: video 's2': .*feats/s2\.npy: expected a 2-d \(T, C\) array, got shape \(75,\)",
]


def test_clean_data_has_no_problem_in_any_mode(clean):
    for validate in ("headers", "full", "none"):
        dm = module(clean, validate)
        assert dm.validate == validate and dm.check_files() == []
    assert dm.train_dataset is None and not dm._built  # nothing built for setup() to reuse
    with pytest.raises(
        ValueError, match=r"validate must be one of \('headers', 'full', 'none'\), got 'some'"
    ):
        module(clean, "some")


def test_headers_report_every_corrupt_file_of_every_split_without_reading_data(clean, monkeypatch):
    corrupt(clean.parent / "feats")

    def no_reading(*args, **kwargs):
        raise AssertionError("headers mode read feature data")

    monkeypatch.setattr(loc, "load_features", no_reading)
    assert_problems(module(clean).check_files(), HEADER_PROBLEMS)  # the NaN in s1 needs the data
    assert module(clean, "none").check_files() == []


def test_full_also_reports_bad_values(clean):
    corrupt(clean.parent / "feats")
    problems = module(clean, "full").check_files()
    nan = r"test split: video 's1': .*feats/s1\.npy: 1 non-finite values \(NaN or inf\) in the features"
    patterns = HEADER_PROBLEMS[:4] + [nan, HEADER_PROBLEMS[4]]
    for i, vid in enumerate(("t1", "t2")):  # reading, not a header, fails
        patterns[i] = (
            rf"train split: video '{vid}': .*feats/{vid}\.npy: cannot read feature file \(ValueError: .*\)"
        )
    assert_problems(problems, patterns)


def test_shared_split_checked_once_and_skip_policy(clean):
    feats = clean.parent / "feats"
    (feats / "v2.npy").unlink()
    np.save(feats / "v3.npy", ramp(75, dim=2))
    problems = module(clean, test_split=("validation",)).check_files()
    assert_problems(
        problems,
        [
            r"val/test split: video 'v2': no feature file .*v2\.npy",
            r"val/test split: video 'v3': .*v3\.npy: expected feature dim 3, got \[2\]",
        ],
    )
    skipping = module(clean, test_split=("validation",), missing_features="skip").check_files()
    assert skipping == problems[1:]  # with "skip" a missing file is no problem
    for vid in SPLITS["testing"]:
        (feats / f"{vid}.npy").unlink()
    assert module(clean, missing_features="skip").check_files()[-1] == (
        "test split: no usable videos in split ['testing']: all 3 lack features"
    )


def test_npz_torch_and_two_streams(clean):
    root = clean.parent

    def problems(folders, **kwargs):
        ds = ActivityNetFeatureDataset(clean, folders, ["training"], check_on_load=False, **kwargs)
        return ds.check_features() + ["full:"] + ds.check_features(full=True)

    npz = root / "npz"
    npz.mkdir()
    for vid in ("t1", "t4"):
        np.savez_compressed(npz / f"{vid}.npz", feats=ramp(75))
    np.savez(npz / "t2.npz", other=ramp(75))
    (npz / "t3.npz").write_bytes((npz / "t1.npz").read_bytes()[:-30])
    assert_problems(
        problems(npz, file_ext=".npz", input_dim=3),
        [
            r"video 't2': .*t2\.npz: no key 'feats' in the \.npz \(keys: \['other'\]\)",
            r"video 't3': .*t3\.npz: cannot read the header \(BadZipFile: .*\)",
            "full:",
            r"video 't2': .*t2\.npz: no key 'feats' in the \.npz \(keys: \['other'\]\)",
            r"video 't3': .*t3\.npz: cannot read feature file \(BadZipFile: .*\)",
        ],
    )
    pt = root / "pt"
    pt.mkdir()
    torch.save(torch.from_numpy(ramp(75)), pt / "t1.pt")
    torch.save({"feats": torch.from_numpy(ramp(75, dim=5))}, pt / "t2.pt")
    (pt / "t3.pt").write_bytes(b"garbage")
    torch.save({"x": torch.zeros(75, 3)}, pt / "t4.pt")
    assert_problems(
        problems(pt, file_ext=".pt", input_dim=3),
        [
            r"video 't2': .*t2\.pt: expected feature dim 3, got \[5\]",
            r"video 't3': .*t3\.pt: cannot read feature file \(UnpicklingError: .*\)",
            r"video 't4': .*t4\.pt: expected a tensor \(or a dict holding one under 'feats'\)",
            "full:",
            r"video 't2': .*t2\.pt: expected feature dim 3, got \[5\]",
            r"video 't3': .*t3\.pt: cannot read feature file \(UnpicklingError: .*\)",
            r"video 't4': .*t4\.pt: no key 'feats' in the saved dict \(keys: \['x'\]\)",
        ],
    )
    short = root / "short"
    short.mkdir()
    for vid in SPLITS["training"]:
        np.save(short / f"{vid}.npy", ramp(70 if vid == "t4" else 75, dim=2))
    two = problems([root / "feats", short], input_dim=[3, 2])
    stream = r"video 't4': feature streams differ in length by more than 1 step\(s\): .*feats/t4\.npy: 75, .*"
    assert_problems(two, [stream, "full:", stream])


def test_hdf5_shared_file(clean):
    h5 = write_h5(
        clean.parent / "feats.h5", {"t1": ramp(75), "t2": np.zeros((75, 3, 1)), "t3": ramp(75, dim=5)}
    )
    ds = ActivityNetFeatureDataset(clean, h5, ["training"], input_dim=3, check_on_load=False)
    expected = [
        r"video 't4': no feature file .*feats\.h5\[t4\]",
        r"video 't2': .*feats\.h5: video 't2': dataset 't2' has shape \(75, 3, 1\), expected \(T, C\)",
        r"video 't3': .*feats\.h5\[t3\]: expected feature dim 3, got \[5\]",
    ]
    assert_problems(ds.check_features(), expected)
    assert_problems(ds.check_features(full=True), expected)


def test_demo_not_generated_yet_is_skipped_then_checked(tmp_path):
    calls = []

    def demo():
        calls.append(1)
        make_demo_localization(
            tmp_path, num_videos={"training": 4, "validation": 2, "testing": 2}, feat_dim=8
        )

    partial = functools.partial(
        ActivityNetFeatureDataset,
        json_file=tmp_path / "annotations" / "demo.json",
        feat_folders=tmp_path / "features",
        input_dim=8,
    )
    dm = LocalizationDataModule(partial, ["training"], ["validation"], ["testing"], demo=demo)
    assert dm.check_files() == [] and calls == []  # nothing generated, nothing to report
    dm.prepare_data()
    assert dm.check_files() == [] and calls == [1]  # the generated data, checked
    database = json.loads((tmp_path / "annotations" / "demo.json").read_text())["database"]
    vid = next(v for v, e in database.items() if e["subset"] == "testing")
    (tmp_path / "features" / f"{vid}.npy").write_bytes(b"")
    assert_problems(
        dm.check_files(), [rf"test split: video '{vid}': .*{vid}\.npy: cannot read the header .*"]
    )


class Flaky(torch.utils.data.Dataset):
    """Three items drawing from the torch RNG, the second unreadable."""

    def __len__(self) -> int:
        return 3

    def __getitem__(self, index: int) -> dict:
        if index == 1:
            raise OSError("disk error")
        return {"noise": torch.rand(1)}


def test_other_datasets_are_read_item_by_item_in_full_mode(clean, tmp_path):
    def broken():
        raise ValueError("no such split")

    dm = LocalizationDataModule(train_dataset=Flaky(), test_dataset=broken, validate="full")
    state = torch.get_rng_state()
    assert dm.check_files() == [
        "train split: item 1: OSError: disk error",
        "test split: cannot build the dataset (ValueError: no such split)",
    ]
    assert torch.equal(state, torch.get_rng_state())  # training draws stay as without the check
    assert LocalizationDataModule(train_dataset=Flaky()).check_files() == []  # headers: nothing to read
    absent = functools.partial(
        ActivityNetFeatureDataset, json_file=tmp_path / "absent.json", feat_folders=tmp_path
    )
    missing = (
        r"train split: cannot build the dataset \(FileNotFoundError: annotation json not found: .*\.json\)"
    )
    assert_problems(LocalizationDataModule(absent, train_split=["training"]).check_files(), [missing])
    built = ActivityNetFeatureDataset(clean, clean.parent / "feats", ["validation"], input_dim=3)
    np.save(clean.parent / "feats" / "v3.npy", ramp(75, dim=1))
    dm = LocalizationDataModule(val_dataset=built)
    assert_problems(
        dm.check_files(), [r"val split: video 'v3': .*v3\.npy: expected feature dim 3, got \[1\]"]
    )
