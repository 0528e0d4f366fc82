"""Anticipation data: csv formats (real EK100 files), window sampling, LMDB, frames, demo, datamodule."""

from pathlib import Path

import lmdb
import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared

from egolab.data.anticipation import (
    ActionTable,
    AnticipationDataModule,
    AnticipationDataset,
    LMDBFeatureReader,
    Segment,
    VideoFrameReader,
    anticipation_window,
    lmdb_key,
    parse_timestamp,
    read_segments,
    rulstm_sequence_frames,
    sample_frames,
)
from egolab.data.demo_anticipation import make_demo_anticipation

EK100 = SHARED_DATA / "epic_kitchens_100"
SMALL_DEMO = {
    "videos": {"train": ["P01_01", "P02_01"], "validation": ["P03_01"], "test": ["P04_01"]},
    "segments_per_video": 12,
    "num_actions": 10,
    "feat_dim": 8,
}


def write_lmdb(path: Path, entries: dict[str, np.ndarray]) -> Path:
    env = lmdb.open(str(path), map_size=1 << 24)
    with env.begin(write=True) as txn:
        for key, value in entries.items():
            txn.put(key.encode(), np.asarray(value, dtype=np.float32).tobytes())
    env.close()
    return path


def test_lmdb_key_format():
    assert lmdb_key("P01_01", 1) == "P01_01_frame_0000000001.jpg"
    assert lmdb_key("P22_107", 1234567) == "P22_107_frame_0001234567.jpg"


def test_window_and_sampled_frames_by_hand():
    # action at 20 s, tau_a = 1, tau_o = 4: window [15, 19] s; 4 frames at 1 fps on the 30-fps grid
    assert anticipation_window(20.0, 1.0, 4.0) == (15.0, 19.0)
    np.testing.assert_array_equal(sample_frames(15.0, 19.0, 4, 1.0), [480, 510, 540, 570])
    # 2 fps -> stride 15, last frame floor(19 * 30) = 570
    np.testing.assert_array_equal(sample_frames(15.0, 19.0, 3, 2.0), [540, 555, 570])
    # EK100 S-GEAR: 15 frames at 1 fps, an action at 5 s: window [-11, 4] s -> frames before 1 repeat frame 1
    frames = sample_frames(*anticipation_window(5.0, 1.0, 15.0), 15, 1.0)
    np.testing.assert_array_equal(frames, [1] * 11 + [30, 60, 90, 120])
    # a window starting later (training jitter) repeats its first frame
    np.testing.assert_array_equal(sample_frames(17.5, 19.0, 4, 1.0), [525, 525, 540, 570])
    with pytest.raises(ValueError, match="before the first frame"):
        sample_frames(-5.0, 0.01, 4, 1.0)


def test_timestamps():
    assert parse_timestamp("00:00:01.89") == pytest.approx(1.89)
    assert parse_timestamp("01:02:03.50") == pytest.approx(3723.5)


def test_real_ek100_actions_and_annotations():
    root = require_shared(EK100)
    actions = ActionTable.from_csv(root / "rulstm_ek100" / "actions.csv")
    assert (actions.num_actions, actions.num_verbs, actions.num_nouns) == (3806, 97, 300)
    assert actions.names[3] == "take wrap:plastic" and actions.action_of(0, 100) == 3
    epic = read_segments(root / "EPIC_100_validation.csv", actions)
    assert len(epic) == 9668
    first = epic[0]
    assert (first.uid, first.video_id, first.participant_id) == ("P01_11_0", "P01_11", "P01")
    assert (first.start, first.stop, first.verb, first.noun) == (0.0, 1.89, 0, 2)
    assert first.action == actions.action_of(0, 2)
    rulstm = read_segments(root / "rulstm_ek100" / "validation.csv", actions)
    assert len(rulstm) == 9668 and rulstm[0].uid == "P01_11_0"
    assert (rulstm[0].start, rulstm[0].action) == (pytest.approx(1 / 30), 106)
    by_uid = {s.uid: s for s in epic}
    agree = sum(by_uid[s.uid].action == s.action for s in rulstm)
    assert agree == len(rulstm), "EPIC (verb, noun) pairs map to RULSTM's action ids"
    test = read_segments(root / "EPIC_100_test_timestamps.csv", actions)
    assert len(test) == 13092 and test[0].action == -1


def test_malformed_rows_name_file_line_and_segment(tmp_path):
    actions = ActionTable(np.array([0, 1]), np.array([0, 0]), ("take tap", "put tap"))
    bad = tmp_path / "training.csv"
    bad.write_text("P01_01_0,P01_01,4,101,0,0,0\nP01_01_1,P01_01,131,x,1,0,1\n")
    with pytest.raises(ValueError, match=r"training.csv, line 2 \(segment 'P01_01_1'\).*end frame"):
        read_segments(bad, actions)
    bad.write_text("P01_01_0,P01_01,4,101,1,0,0\n")
    with pytest.raises(ValueError, match="action 0 is"):
        read_segments(bad, actions)
    (tmp_path / "actions.csv").write_text("id,verb,noun,action\n0,0,0,take tap\n2,0,1,take spoon\n")
    with pytest.raises(ValueError, match="actions.csv, line 3"):
        ActionTable.from_csv(tmp_path / "actions.csv")


def test_lmdb_reader_round_trip_and_errors(tmp_path):
    rgb = write_lmdb(tmp_path / "rgb", {lmdb_key("P01_01", f): np.full(4, f) for f in range(1, 11)})
    obj = write_lmdb(tmp_path / "obj", {lmdb_key("P01_01", f): np.full(2, -f) for f in range(1, 11)})
    segment = Segment("P01_01_3", "P01_01", "P01", 1.0, 2.0)
    reader = LMDBFeatureReader([rgb, obj], [4, 2])
    out = reader(segment, np.array([1, 5, 10]))
    assert out.dtype == torch.float32 and out.shape == (3, 6)
    np.testing.assert_array_equal(out[:, 0], [1, 5, 10])
    np.testing.assert_array_equal(out[:, 5], [-1, -5, -10])
    with pytest.raises(KeyError, match=r"P01_01_frame_0000000011.jpg \(segment P01_01_3\)"):
        reader(segment, np.array([11]))
    assert LMDBFeatureReader(rgb, 4, max_backtrack=2)(segment, np.array([12]))[0, 0] == 10
    with pytest.raises(ValueError, match=r"holds 4 float32 values, expected 8 \(segment P01_01_3\)"):
        LMDBFeatureReader(rgb, 8)(segment, np.array([1]))
    with pytest.raises(FileNotFoundError, match="LMDB store not found"):
        LMDBFeatureReader(tmp_path / "flow", 4)(segment, np.array([1]))


def test_backward_key_lookup_of_a_10fps_store_by_hand(tmp_path):
    """AVT's irCSN store: a key every third 30-fps frame; a frame reads the latest key at or before it."""
    segment = Segment("P01_01_3", "P01_01", "P01", 1.0, 2.0)
    from_zero = write_lmdb(tmp_path / "a", {lmdb_key("P01_01", f): np.full(2, f) for f in (0, 3, 6, 9, 12)})
    reader = LMDBFeatureReader(from_zero, 2, max_backtrack=9)
    # 1, 2 -> 0 (frame 0 is reachable); 3 -> 3; 5 -> 3; 8 -> 6; 12 -> 12; 21 -> 12 (9 back)
    out = reader(segment, np.array([1, 2, 3, 5, 8, 12, 21]))
    np.testing.assert_array_equal(out[:, 0], [0, 0, 3, 3, 6, 12, 12])
    with pytest.raises(KeyError, match=r"0000000022.jpg nor at the 9 frames before it \(segment P01_01_3\)"):
        reader(segment, np.array([22]))  # 12 is 10 frames back
    from_one = write_lmdb(tmp_path / "b", {lmdb_key("P01_01", f): np.full(2, f) for f in (1, 4, 7)})
    out = LMDBFeatureReader(from_one, 2, max_backtrack=2)(segment, np.array([1, 3, 6, 7, 9]))
    np.testing.assert_array_equal(out[:, 0], [1, 1, 4, 7, 7])
    with pytest.raises(KeyError, match="0000000006.jpg"):
        LMDBFeatureReader(from_one, 2)(segment, np.array([6]))  # no lookup by default
    only_later = write_lmdb(tmp_path / "c", {lmdb_key("P01_01", 3): np.full(2, 3)})
    with pytest.raises(KeyError, match=r"0000000002.jpg nor at the 2 frames before it"):
        LMDBFeatureReader(only_later, 2, max_backtrack=9)(segment, np.array([2]))  # never a later frame


def test_rulstm_sequence_frames_by_hand():
    # an action at 2 s: floor((2 - k / 4) * 30) = floor(60 - 7.5 k) for k = 14 .. 1
    expected = [-45, -38, -30, -23, -15, -8, 0, 7, 15, 22, 30, 37, 45, 52]
    np.testing.assert_array_equal(rulstm_sequence_frames(2.0), expected)
    # RULSTM split files: start frame 9 keeps floor(1.5) = 1, frame 8 has none (floor(0.5) = 0)
    assert rulstm_sequence_frames(9 / 30).max() == 1 and rulstm_sequence_frames(8 / 30).max() == 0


def test_rulstm_discard_reproduces_the_official_ek100_validation_set():
    """RULSTM discards the 10 validation segments at frame 1; AVT's rule drops 30."""
    root = require_shared(EK100) / "rulstm_ek100"
    actions = ActionTable.from_csv(root / "actions.csv")

    def build(**kwargs):
        return AnticipationDataset(
            root / "validation.csv", actions, lambda *a: None, 1.0, 10.0, 10, 1.0, check_first=False, **kwargs
        )

    official = {
        "P01_11_0", "P03_26_0", "P08_10_0", "P08_16_0", "P08_17_0", "P17_02_0", "P18_04_0", "P26_33_0",
        "P26_38_0", "P32_02_0",
    }  # fmt: skip
    rulstm, avt = build(rulstm_discard=True), build()
    assert {s.uid for s in rulstm.discarded} == official
    assert len(rulstm) == 9668 - 10 and len(avt.discarded) == 30
    padded = {s.uid for s in avt.discarded} - official
    assert set(rulstm.rulstm_padding) == padded and len(padded) == 20
    by_start = {round(s.start * 30): s for s in rulstm.segments if s.uid in padded}
    # start frame 11: floor(11 - 7.5) = 3 is RULSTM's only valid frame; 30: 22, 15, 7 valid -> pads with 7
    np.testing.assert_array_equal(rulstm.frames_of(by_start[11]), [3] * 10)
    np.testing.assert_array_equal(rulstm.frames_of(by_start[30]), [7] * 10)
    kept = next(s for s in rulstm.segments if s.uid not in padded)
    np.testing.assert_array_equal(rulstm.frames_of(kept), avt.frames_of(kept))
    assert len(build(rulstm_discard=True, training=True).discarded) == 30  # training discards as AVT


def test_video_frame_reader(tmp_path):
    import av

    path = tmp_path / "P01" / "videos" / "P01_01.MP4"
    path.parent.mkdir(parents=True)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=30)
        stream.width, stream.height = 64, 48
        for i in range(60):  # brightness encodes the frame index
            image = np.full((48, 64, 3), 4 * i, dtype=np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(image, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    reader = VideoFrameReader(tmp_path, crop_size=32, train_scale=(32, 40), eval_scale=36, mean=0.0, std=1.0)
    segment = Segment("P01_01_0", "P01_01", "P01", 2.0, 3.0)
    clip = reader(segment, np.array([1, 30, 59]), training=False)
    assert clip.shape == (3, 3, 32, 32)
    brightness = clip.mean(dim=(1, 2, 3)) * 255
    np.testing.assert_allclose(brightness.numpy(), [4, 120, 236], atol=6)
    assert reader(segment, np.array([1, 2]), training=True).shape == (2, 3, 32, 32)
    with pytest.raises(FileNotFoundError, match=r"P02_01.MP4 \(segment x\)"):
        reader(Segment("x", "P02_01", "P02", 0.0, 1.0), np.array([1]))


def test_demo_dataset_items_and_datamodule(tmp_path):
    root = tmp_path / "anticipation"
    ann = make_demo_anticipation(root, language_prototypes=False, **SMALL_DEMO)
    reader = LMDBFeatureReader(root / "features" / "rgb", 8)
    dataset = AnticipationDataset(
        ann / "EPIC_100_train.csv",
        ann / "actions.csv",
        reader,
        tau_a=1.0,
        tau_o=4.0,
        num_frames=4,
        fps=1.0,
        unseen_participants=ann / "EPIC_100_unseen_participant_ids_test.csv",
        tail_verbs=ann / "EPIC_100_tail_verbs.csv",
        tail_nouns=ann / "EPIC_100_tail_nouns.csv",
    )
    assert len(dataset) == 24 and not dataset.discarded and not dataset.unseen.any()
    item = dataset[1]
    segment = dataset.segments[1]
    assert item["inputs"].shape == (4, 8) and item["uid"] == segment.uid == "P01_01_1"
    assert item["action"] == segment.action == dataset.actions.action_of(segment.verb, segment.noun)
    # each observed frame carries the label of the segment under it (here the previous one), else -1
    previous, frames = dataset.segments[0], dataset.frames_of(segment)
    expected = [previous.action if previous.start <= f / 30 <= previous.stop else -1 for f in frames]
    assert item["past_actions"].tolist() == expected and previous.action in expected
    np.testing.assert_array_equal(item["inputs"].numpy(), reader(segment, frames).numpy())

    def factory(annotations, training):
        return AnticipationDataset(
            annotations, ann / "actions.csv", reader, 1.0, 4.0, 4, 1.0, training=training
        )

    dm = AnticipationDataModule(
        factory, ann / "EPIC_100_train.csv", ann / "EPIC_100_validation.csv", ann / "EPIC_100_validation.csv",
        batch_size=5,
    )  # fmt: skip
    dm.setup("fit")
    dm.setup("test")
    assert dm.val_dataset is dm.test_dataset
    batch = next(iter(dm.train_dataloader()))
    assert batch["inputs"].shape == (5, 4, 8) and batch["past_actions"].shape == (5, 4)
    assert len(batch["uid"]) == 5 and batch["action"].dtype == torch.int64
    assert len(dm.train_dataloader()) == 4  # 24 segments, batches of 5, last one dropped


def test_demo_is_deterministic_and_idempotent(tmp_path):
    a = make_demo_anticipation(tmp_path / "a", language_prototypes=False, **SMALL_DEMO)
    b = make_demo_anticipation(tmp_path / "b", language_prototypes=False, **SMALL_DEMO)
    for name in ("EPIC_100_train.csv", "actions.csv", "EPIC_100_tail_verbs.csv"):
        assert (a / name).read_text() == (b / name).read_text()
    stamp = (a / "EPIC_100_train.csv").stat().st_mtime_ns
    make_demo_anticipation(tmp_path / "a", language_prototypes=False, **SMALL_DEMO)
    assert (a / "EPIC_100_train.csv").stat().st_mtime_ns == stamp
    header = (a / "EPIC_100_train.csv").read_text().splitlines()[0].split(",")
    assert len(header) == 15 and header[0] == "narration_id"
    assert (a / "actions.csv").read_text().startswith("id,verb,noun,action\n")
    assert (a / "EPIC_100_unseen_participant_ids_test.csv").read_text().split() == [
        "participant_id",
        "P03",
        "P04",
    ]
