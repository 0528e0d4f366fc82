"""Anticipation check_files: LMDB keys and sizes, video headers, every split, found before fitting."""

import functools
import re
import shutil
from pathlib import Path

import lmdb
import numpy as np
import pytest
from test_anticipation_data import SMALL_DEMO

from egolab.data.anticipation import (
    AnticipationDataModule,
    AnticipationDataset,
    LMDBFeatureReader,
    Segment,
    VideoFrameReader,
    lmdb_key,
)
from egolab.data.demo_anticipation import make_demo_anticipation


@pytest.fixture
def demo(tmp_path) -> Path:
    """A small generated demo (EPIC-100 csv files, RULSTM LMDB of 8-dim features) under tmp_path."""
    root = tmp_path / "anticipation"
    make_demo_anticipation(root, language_prototypes=False, **SMALL_DEMO)
    return root


def factory(root: Path) -> functools.partial:
    return functools.partial(
        AnticipationDataset,
        actions=root / "annotations" / "actions.csv",
        reader=LMDBFeatureReader(root / "features" / "rgb", 8),
        tau_a=1.0,
        tau_o=4.0,
        num_frames=4,
        fps=1.0,
    )


def module(root: Path, validate: str = "headers", test: str = "test", **kwargs) -> AnticipationDataModule:
    ann = root / "annotations"
    return AnticipationDataModule(
        factory(root),
        ann / "EPIC_100_train.csv",
        ann / "EPIC_100_validation.csv",
        ann / f"EPIC_100_{test}.csv",
        validate=validate,
        **kwargs,
    )


def readers_of(root: Path, split: str, frame_of) -> tuple[str, list[str]]:
    """The key of a frame read by the split's first segment, and the uids of all segments reading it."""
    dataset = factory(root)(annotations=root / "annotations" / f"EPIC_100_{split}.csv", check_first=False)
    first = dataset.segments[0]
    frame = frame_of(dataset.frames_of(first))
    uids = [s.uid for s in dataset.segments if s.video_id == first.video_id and frame in dataset.frames_of(s)]
    return lmdb_key(first.video_id, frame), uids


def test_clean_demo_has_no_problem_in_any_mode(demo):
    for validate in ("headers", "full", "none"):
        dm = module(demo, validate)
        assert dm.validate == validate and dm.check_files() == []
    assert dm.train_dataset is None and not dm._built
    with pytest.raises(ValueError, match=r"validate must be one of \('headers', 'full', 'none'\)"):
        module(demo, "all")


def test_missing_key_wrong_size_and_nan_in_three_splits(demo, monkeypatch):
    missing, train_uids = readers_of(demo, "train", lambda frames: int(frames[-1]))
    short, val_uids = readers_of(demo, "validation", lambda frames: int(frames[-2]))
    nan, test_uids = readers_of(demo, "test", lambda frames: int(frames[-1]))
    assert (len(train_uids), len(val_uids), len(test_uids)) == (1, 1, 1)  # one segment reads each key
    env = lmdb.open(str(demo / "features" / "rgb"), map_size=1 << 30)
    with env.begin(write=True) as txn:
        txn.delete(missing.encode())
        txn.put(short.encode(), np.zeros(5, np.float32).tobytes())
        txn.put(nan.encode(), np.full(8, np.nan, np.float32).tobytes())
    env.close()
    store = re.escape(str(demo / "features" / "rgb"))
    expected = [rf"train split: {store}: no key {missing} \(segment {uid}\)" for uid in train_uids] + [
        rf"val split: {store}: key {short} holds 5 float32 values, expected 8 \(segment {uid}\)"
        for uid in val_uids
    ]

    def no_reading(*args):
        raise AssertionError("headers mode read feature values")

    with monkeypatch.context() as patch:
        patch.setattr(LMDBFeatureReader, "__call__", no_reading)
        headers = module(demo).check_files()  # the NaN values need reading
    assert len(headers) == len(expected) and all(map(re.fullmatch, expected, headers)), headers
    full = module(demo, "full").check_files()
    expected += [
        rf"test split: non-finite values \(NaN or inf\) in the inputs \(segment {uid}\)" for uid in test_uids
    ]
    assert len(full) == len(expected) and all(map(re.fullmatch, expected, full)), full
    shared = module(demo, test="validation").check_files()  # the test split's NaN is not in it
    assert shared == [p.replace("val split:", "val/test split:") for p in headers]


def test_unusable_stores(demo, tmp_path):
    segment = Segment("P01_01_0", "P01_01", "P01", 5.0, 6.0)
    requests = [(segment, np.array([1, 31, 61]))]
    truncated = tmp_path / "truncated"
    shutil.copytree(demo / "features" / "rgb", truncated)
    data = truncated / "data.mdb"
    data.write_bytes(data.read_bytes()[: data.stat().st_size // 2])
    garbage = tmp_path / "garbage"
    garbage.mkdir()
    (garbage / "data.mdb").write_bytes(b"not an lmdb file" * 512)
    reader = LMDBFeatureReader([tmp_path / "absent", garbage, truncated, demo / "features" / "rgb"], 8)
    problems = reader.check_headers(requests)
    assert len(problems) == 3, problems
    assert problems[0].startswith(f"LMDB store not found: {tmp_path / 'absent'}")
    assert "MDB_INVALID" in problems[1]
    assert re.fullmatch(
        rf"{re.escape(str(data))}: \d+ bytes where its pages need \d+ \(truncated\)", problems[2]
    )


def test_demo_not_generated_yet_is_skipped_then_checked(tmp_path):
    root = tmp_path / "anticipation"
    calls = []

    def generate():
        calls.append(1)
        make_demo_anticipation(root, language_prototypes=False, **SMALL_DEMO)

    dm = module(root, demo=generate)
    assert dm.check_files() == [] and calls == []  # nothing generated, nothing to report
    dm.prepare_data()
    assert dm.check_files() == [] and calls == [1]  # the generated data, checked
    no_demo = module(tmp_path / "absent")
    assert no_demo.check_files()[0].startswith("train split: cannot build the dataset (FileNotFoundError: ")


def test_plain_factory_without_check_first(demo):
    ann = demo / "annotations"

    def plain(annotations, training):
        return AnticipationDataset(
            annotations, ann / "actions.csv", LMDBFeatureReader(demo / "features" / "rgb", 4)
        )

    dm = AnticipationDataModule(plain, ann / "EPIC_100_train.csv", validate="full")
    problems = dm.check_files()  # the dataset's own first-segment read fails: one problem for the split
    assert len(problems) == 1 and re.fullmatch(
        r"train split: cannot build the dataset \(ValueError: .*\)", problems[0]
    )


def write_video(path: Path, num_frames: int = 60) -> Path:
    import av

    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height = 64, 48
        for i in range(num_frames):
            image = np.full((48, 64, 3), 4 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def test_video_headers_and_full_decoding(tmp_path, monkeypatch):
    videos = tmp_path / "videos"
    write_video(videos / "P01" / "videos" / "P01_01.MP4")
    (videos / "P01" / "videos" / "P01_02.MP4").write_bytes(b"not a video" * 100)
    (tmp_path / "actions.csv").write_text("id,verb,noun,action\n0,0,0,take tap\n")
    rows = [
        "P01_01_0,P01_01,60,70",
        "P01_01_1,P01_01,75,80",
        "P01_02_0,P01_02,60,70",
        "P01_02_1,P01_02,75,80",
    ]
    (tmp_path / "training.csv").write_text(
        "".join(f"{row},0,0,0\n" for row in rows + ["P02_01_0,P02_01,60,70"])
    )
    reader = VideoFrameReader(videos, crop_size=32, train_scale=(32, 40), eval_scale=36)
    factory = functools.partial(
        AnticipationDataset,
        actions=tmp_path / "actions.csv",
        reader=reader,
        tau_a=0.5,
        tau_o=1.0,
        num_frames=2,
    )
    bad, absent = videos / "P01" / "videos" / "P01_02.MP4", videos / "P02" / "videos" / "P02_01.MP4"

    def no_decoding(*args):
        raise AssertionError("headers mode decoded frames")

    with monkeypatch.context() as patch:
        patch.setattr(VideoFrameReader, "_decode", no_decoding)
        headers = AnticipationDataModule(factory, tmp_path / "training.csv").check_files()
    assert len(headers) == 2, headers
    assert headers[0].startswith(
        f"train split: {bad} (2 segments, e.g. P01_02_0): cannot read the video header ("
    )
    assert headers[1] == f"train split: video not found: {absent} (1 segments, e.g. P02_01_0)"
    full = AnticipationDataModule(factory, tmp_path / "training.csv", validate="full").check_files()
    assert len(full) == 3, full
    for i, problem in enumerate(full[:2]):
        assert problem.startswith(f"train split: {bad}: cannot decode frames (segment P01_02_{i}): ")
    assert full[2] == f"train split: video not found: {absent} (segment P02_01_0)"
