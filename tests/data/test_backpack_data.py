"""Backpack (EgoPack) data: edges, windows, sampling by hand, real Ego4D FHO files, errors, cache, demo."""

import json
import logging
import os
from functools import partial
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared
from torch_geometric.loader import DataLoader as GraphLoader

from egolab.data.backpack import (
    TASKS,
    ARGraphDataset,
    BackpackDataModule,
    FeatureStore,
    LTAGraphDataset,
    OSCCGraphDataset,
    PNRGraphDataset,
    Taxonomy,
    lta_edges,
    radius_edges,
    read_fho_actions,
    read_oscc_clips,
    segment_indices,
)
from egolab.data.demo_backpack import make_demo_backpack

FHO = SHARED_DATA / "ego4d" / "fho"
TAXONOMY = Taxonomy(["take", "put", "cut", "wash"], ["knife", "cup", "pan", "plate", "bowl"])
SMALL_DEMO = {
    "videos": {"train": 3, "val": 1},
    "actions_per_video": 30,
    "oscc_clips_per_video": 6,
    "feature_dim": 16,
}


def write_json(path: Path, clips: list[dict]) -> Path:
    path.write_text(json.dumps({"clips": clips}))
    return path


def action(video, clip, idx, start, end, verb=0, noun=0, parent=0) -> dict:
    """An fho_lta record (the fields the reader uses); frames relative to the clip at ``parent``."""
    return {
        "video_uid": video, "clip_uid": clip, "clip_parent_start_frame": parent, "action_idx": idx,
        "action_clip_start_frame": start, "action_clip_end_frame": end,
        "verb_label": verb, "noun_label": noun,
    }  # fmt: skip


def oscc(video, uid, start, end, state_change=True, pnr=None) -> dict:
    return {
        "video_uid": video, "unique_id": uid, "parent_start_frame": start, "parent_end_frame": end,
        "parent_start_sec": start / 30, "parent_end_sec": end / 30, "state_change": state_change,
        "parent_pnr_frame": pnr,
    }  # fmt: skip


def row_features(length: int, dim: int = 4) -> torch.Tensor:
    """Features whose channel 0 is the row index and channel 1 its square (to check which rows are used)."""
    rows = torch.arange(length, dtype=torch.float32)
    feats = torch.zeros(length, dim)
    feats[:, 0], feats[:, 1] = rows, rows**2
    return feats


@pytest.fixture
def data(tmp_path):
    """features/ (raw), cache/, and a FeatureStore over them (4-d features)."""
    (tmp_path / "features").mkdir()
    return tmp_path, FeatureStore(tmp_path / "features", tmp_path / "cache", feature_dim=4)


def save(root: Path, video: str, feats) -> None:
    torch.save(torch.as_tensor(feats), root / "features" / f"{video}.pt")


# ----------------------------------------------------------------------------------------------------
# Edges and sampling


def test_radius_edges_by_hand():
    chain = radius_edges(torch.arange(-4, 5), 1.5)
    expected = [
        [0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5, 6, 6, 7, 7, 8],
        [1, 0, 2, 1, 3, 2, 4, 3, 5, 4, 6, 5, 7, 6, 8, 7],
    ]
    assert chain.dtype == torch.long and chain.tolist() == expected
    wider = radius_edges(torch.tensor([0, 1, 2, 3]), 2.5)
    assert wider.tolist() == [[0, 0, 1, 1, 1, 2, 2, 2, 3, 3], [1, 2, 0, 2, 3, 0, 1, 3, 1, 2]]


def test_lta_edges_by_hand():
    # chain on 0..4 plus the last observed node (1) -> every forecast node (2, 3, 4), (1, 2) only once
    assert lta_edges(2, 3, 1.5).tolist() == [
        [0, 1, 1, 1, 1, 2, 2, 3, 3, 4],
        [1, 0, 2, 3, 4, 1, 3, 2, 4, 3],
    ]
    full = lta_edges(2, 20, 1.5)
    pairs = set(map(tuple, full.t().tolist()))
    chain = {(i, i + 1) for i in range(21)} | {(i + 1, i) for i in range(21)}
    assert pairs == chain | {(1, j) for j in range(2, 22)} and full.shape[1] == len(pairs) == 61
    # the release counts forecast nodes with verb > 0: with one verb 0 the last forecast node gets no edge
    assert lta_edges(2, 3, 1.5, release_forecast_count=2).tolist() == [
        [0, 1, 1, 1, 2, 2, 3, 3, 4],
        [1, 0, 2, 3, 1, 3, 2, 4, 3],
    ]
    assert (
        lta_edges(2, 3, 1.5, release_forecast_count=0).tolist() == radius_edges(torch.arange(5), 1.5).tolist()
    )
    # r = 2.5: both observed nodes reach every forecast node
    extra = set(map(tuple, lta_edges(2, 3, 2.5).t().tolist())) - set(
        map(tuple, radius_edges(torch.arange(5), 2.5).t().tolist())
    )
    assert extra == {(0, 3), (0, 4), (1, 4)}
    with pytest.raises(ValueError, match="release_forecast_count"):
        lta_edges(2, 3, 1.5, release_forecast_count=4)


def test_segment_indices_as_released():
    assert segment_indices(10, 3, training=False).tolist() == [1, 4, 7]  # linspace + half a segment
    assert segment_indices(2, 3, training=False).tolist() == [0, 0, 1]
    assert segment_indices(2, 3, training=True).tolist() == [0, 0, 1]  # shorter than S: linspace
    np.random.seed(0)
    offsets = np.random.randint(3, size=3)
    np.random.seed(0)
    drawn = segment_indices(10, 3, training=True)
    assert drawn.tolist() == np.round(np.array([0, 10 / 3, 20 / 3]) + offsets).astype(int).tolist()
    for _ in range(50):
        assert all(0 <= i < 10 for i in segment_indices(10, 3, training=True))


# ----------------------------------------------------------------------------------------------------
# Datasets


def test_ar_window_padding_labels_and_rows(data):
    root, store = data
    save(root, "v", row_features(40))
    # three actions: rows [0, 4), [4, 10), [10, 16)
    path = write_json(
        root / "fho_lta_val.json",
        [
            action("v", "c", 2, 160, 256, 3, 4),
            action("v", "c", 0, 0, 64, 1, 2),
            action("v", "c", 1, 64, 160, 2, 3),
        ],
    )
    ds = ARGraphDataset(path, store, TAXONOMY)
    assert ds.uids == ["c_0", "c_1", "c_2"]  # sorted by action_idx
    first = ds[0]
    assert first.uid == "c_0" and first.pos.tolist() == list(range(-4, 5))
    rows = first.x[:, :, 0]
    assert first.x.shape == (9, 3, 4) and first.x.dtype == torch.float32
    # uniform sampling: [0, 4) -> 0, 1, 2; [4, 10) -> 5, 7, 9; [10, 16) -> 11, 13, 15
    assert rows.tolist() == [[0, 1, 2]] * 5 + [[5, 7, 9]] + [[11, 13, 15]] * 3
    assert first.y.tolist() == [[-1, -1]] * 4 + [[1, 2]] + [[-1, -1]] * 4
    # last action: window actions -2..6 -> 0, 0, 0, 1, 2, 2, 2, 2, 2
    assert ds[2].x[:, :, 0].tolist() == [[0, 1, 2]] * 3 + [[5, 7, 9]] + [[11, 13, 15]] * 5
    assert first.edge_index.tolist() == radius_edges(torch.arange(9), 1.5).tolist()


def test_ar_empty_range_is_zero_node_and_outside_video_is_an_error(data):
    root, store = data
    save(root, "v", row_features(10) + 1.0)
    # [40 // 16, 47 // 16) = [2, 2) is empty; the second one starts at row 9 = T - 1: [9, min(9, 10)) empty
    path = write_json(root / "fho_lta_val.json", [action("v", "c", 0, 40, 47), action("v", "c", 1, 150, 170)])
    ds = ARGraphDataset(path, store, TAXONOMY)
    assert torch.all(ds[0].x[4] == 0) and torch.all(ds[1].x[4] == 0)
    assert torch.all(ds[0].x[5] == 0)
    outside = write_json(
        root / "fho_lta_train.json", [action("v", "c", 0, 0, 50), action("v", "c", 1, 160, 200)]
    )
    with pytest.raises(
        ValueError, match=r"fho_lta_train.json, record 1 \(clip_uid c, action_idx 1\).*after the end"
    ):
        ARGraphDataset(outside, store, TAXONOMY)
    ds = ARGraphDataset(outside, store, TAXONOMY, bad_records="skip")
    assert len(ds) == 1 and len(ds.skipped_records) == 1 and "record 1" in ds.skipped_records[0]


def test_ar_subset_is_seeded(data):
    root, store = data
    save(root, "v", row_features(200))
    path = write_json(
        root / "fho_lta_val.json", [action("v", "c", i, 16 * i, 16 * i + 64) for i in range(20)]
    )
    a = ARGraphDataset(path, store, TAXONOMY, max_samples=5, subset_seed=3)
    b = ARGraphDataset(path, store, TAXONOMY, max_samples=5, subset_seed=3)
    assert len(a) == 5 and a.uids == b.uids
    assert ARGraphDataset(path, store, TAXONOMY, max_samples=5, subset_seed=4).uids != a.uids


def test_lta_windows_rows_and_release_count(data):
    root, store = data
    save(root, "v", row_features(500))
    records = [action("v", "c", i, 64 * i, 64 * i + 64, verb=i % 4, noun=i % 5) for i in range(25)]
    path = write_json(root / "fho_lta_val.json", records)
    ds = LTAGraphDataset(path, store, TAXONOMY)
    assert len(ds) == 25 - 22 + 1 and ds.uids == ["c_1", "c_2", "c_3", "c_4"]
    assert len(LTAGraphDataset(path, store, TAXONOMY, release_bugs=True)) == 25 - 22
    item = ds[0]
    assert item.x.shape == (22, 3, 4) and item.pos.tolist() == list(range(22))
    # observed rows: [max(1, 0) - 1, 4) = [0, 4) -> 0, 1, 2 and [max(1, 4) - 1, 8) = [3, 8) -> 3, 4, 6
    assert item.x[:2, :, 0].tolist() == [[0, 1, 2], [3, 4, 6]]
    assert torch.equal(item.x[2:], item.x[:2].mean(0).expand(20, 3, 4))
    assert item.y[:2].tolist() == [[-1, -1]] * 2
    assert item.y[2:].tolist() == [[i % 4, i % 5] for i in range(2, 22)]
    assert item.edge_index.tolist() == lta_edges(2, 20, 1.5).tolist()
    # the release gives the extra edges to the first count(verb > 0) forecast nodes only
    buggy = LTAGraphDataset(path, store, TAXONOMY, release_bugs=True)[0]
    zeros = int((item.y[2:, 0] == 0).sum())
    assert zeros == 5 and buggy.edge_index.tolist() == lta_edges(2, 20, 1.5, 20 - zeros).tolist()


def test_lta_unlabelled_test_file(data):
    root, store = data
    save(root, "v", row_features(100))
    records = [action("v", "c", i, 64 * i, 64 * i + 64) for i in range(4)]
    for record in records:
        del record["verb_label"], record["noun_label"]
    path = write_json(root / "fho_lta_test_unannotated.json", records)
    ds = LTAGraphDataset(path, store, TAXONOMY, num_forecast=3)
    assert ds.uids == ["c_1", "c_2", "c_3"] and torch.all(ds[0].y == -1)
    assert len(LTAGraphDataset(path, store, TAXONOMY, num_forecast=3, release_bugs=True)) == 2
    buggy = LTAGraphDataset(path, store, TAXONOMY, num_forecast=3, release_bugs=True)[0]
    assert buggy.edge_index.tolist() == radius_edges(torch.arange(5), 1.5).tolist()  # no extra edges
    with pytest.raises(ValueError, match="no labels"):
        LTAGraphDataset(path, store, TAXONOMY, training=True)


def test_oscc_rows_in_eval_and_training(data):
    root, store = data
    save(root, "v", row_features(40))
    # frames 5..390 snap to 0..384: 24 rows from row 0; 12 = 4 x 3 indices linspace(0, 24, 12) = 0, 2, ..., 22
    # frames 40..120 snap to 32..112: 5 rows from row 2
    path = write_json(
        root / "fho_oscc-pnr_val.json", [oscc("v", "a", 5, 390, True, 200), oscc("v", "b", 40, 120, False)]
    )
    ds = OSCCGraphDataset(path, store)
    item = ds[0]
    assert item.x.shape == (4, 3, 4) and item.uid == "a" and item.y.tolist() == [1]
    assert item.x[:, :, 0].tolist() == [[0, 2, 4], [6, 8, 10], [12, 14, 16], [18, 20, 22]]
    assert ds[1].y.tolist() == [0] and ds[1].x[:, :, 0].flatten().tolist() == [
        2,
        2,
        2,
        3,
        3,
        4,
        4,
        4,
        5,
        5,
        6,
        6,
    ]
    assert item.edge_index.tolist() == radius_edges(torch.arange(4), 1.5).tolist()
    train = OSCCGraphDataset(path, store, training=True)
    np.random.seed(1)
    rows = train[0].x[:, :, 0].flatten()
    assert len(set(rows.tolist())) == 12 and torch.equal(rows, rows.sort().values)  # no replacement, sorted
    short = train[1].x[:, :, 0].flatten()
    assert set(short.tolist()) <= {2.0, 3.0, 4.0, 5.0, 6.0}  # 5 rows < 12: drawn with replacement


def test_oscc_bad_clips(data):
    root, store = data
    save(root, "v", row_features(10))
    path = write_json(
        root / "fho_oscc-pnr_train.json",
        [oscc("v", "ok", 0, 150), oscc("v", "late", 100, 200), oscc("v", "tiny", 20, 30, False)],
    )
    with pytest.raises(ValueError, match=r"record 1 \(unique_id late\).*rows up to 11.*10 features"):
        OSCCGraphDataset(path, store)
    ds = OSCCGraphDataset(path, store, bad_records="skip")
    assert (
        ds.uids == ["ok"]
        and len(ds.skipped_records) == 2
        and "no whole feature stride" in ds.skipped_records[1]
    )


def test_pnr_interpolation_and_one_hot(data):
    root, store = data
    save(root, "v", row_features(40))
    path = write_json(
        root / "fho_oscc-pnr_val.json",
        [
            oscc("v", "a", 100, 260, True, 173),
            oscc("v", "tie", 100, 260, True, 175),
            oscc("v", "neg", 0, 160, False),
        ],
    )
    ds = PNRGraphDataset(path, store)
    assert ds.uids == ["a", "tie"]  # only clips with a PNR frame
    item = ds[0]
    # candidates 100, 110, ..., 250; frame 110: rows 6 and 7, weight 14 / 16
    assert item.x.shape == (16, 3, 4) and torch.equal(item.x[:, 0], item.x[:, 2])
    assert item.x[1, 0, 1].item() == pytest.approx(0.125 * 36 + 0.875 * 49)
    assert item.x[:, 0, 0].tolist() == pytest.approx([(100 + 10 * k) / 16 for k in range(16)])
    assert item.x[6, 0, 1].item() == 10**2  # frame 160 sits on row 10
    assert item.y.tolist() == [0] * 7 + [1] + [0] * 8  # 170 is closest to 173
    assert ds[1].y.argmax().item() == 7  # 175 is as close to 170 as to 180: the first
    assert (item.start_frame, item.end_frame, item.pnr_frame) == (100, 260, 173.0)
    batch = next(iter(GraphLoader(ds, batch_size=2)))
    assert batch.start_frame.tolist() == [100, 100] and batch.pnr_frame.tolist() == [173.0, 175.0]


def test_pnr_training_crop(data, monkeypatch):
    root, store = data
    save(root, "v", row_features(40))
    path = write_json(root / "fho_oscc-pnr_train.json", [oscc("v", "a", 60, 300, True, 200)])  # 2..10 s
    calls = []

    def fake_uniform(*args):
        calls.append(args)
        return 6.0 if len(calls) % 2 else 1.5  # crop length 6 s, offset 1.5 s

    monkeypatch.setattr(np.random, "uniform", fake_uniform)
    ds = PNRGraphDataset(path, store, training=True)
    clip = ds.samples[0].payload
    assert ds.window(clip) == (105, 285)  # start (2 + 1.5) s, end min(3.5 + 6, 10) s; the PNR (200) inside
    assert calls == [(5.0, 8.0), (0.0, 2.0)]
    calls.clear()
    PNRGraphDataset(path, store, training=True, release_bugs=True).window(clip)
    assert calls == [(5.0, 8.0), (2.0,)]  # the release's np.random.uniform(8 - L): U(8 - L, 1)


def test_pnr_training_crop_keeps_the_pnr(data, monkeypatch):
    root, store = data
    save(root, "v", row_features(40))
    path = write_json(root / "fho_oscc-pnr_train.json", [oscc("v", "a", 60, 300, True, 80)])
    monkeypatch.setattr(np.random, "uniform", lambda *args: 5.0 if len(args) == 2 and args[0] == 5.0 else 2.0)
    ds = PNRGraphDataset(path, store, training=True)
    # crop 5 s from 4 s: frames 120..270; the PNR (80) is before it -> the annotated start
    assert ds.window(ds.samples[0].payload) == (60, 270)


# ----------------------------------------------------------------------------------------------------
# Real Ego4D files


def test_real_taxonomy_and_lta_samples(tmp_path):
    from egolab.data.backpack import load_taxonomy

    fho = require_shared(FHO)
    taxonomy = load_taxonomy(fho / "fho_lta_taxonomy.json")
    assert (taxonomy.num_verbs, taxonomy.num_nouns) == (115, 478)
    train = read_fho_actions(fho / "fho_lta_train_sample.json", taxonomy)
    assert [(a.start_frame, a.end_frame, a.verb, a.noun) for a in train] == [
        (74, 314, 65, 259),
        (195, 435, 0, 259),
    ]
    assert train[0].uid == "b6a88030-b904-4f06-89b4-d2c8eb219bf6_0"
    assert taxonomy.verbs[65] == "put_(place,_leave,_drop)"
    assert len(read_fho_actions(fho / "fho_lta_val_sample.json", taxonomy)) == 2
    test = read_fho_actions(fho / "fho_lta_test_unannotated_sample.json", taxonomy)
    assert [(a.start_frame, a.end_frame, a.verb, a.noun) for a in test] == [
        (9141, 9381, -1, -1),
        (9110, 9350, -1, -1),
    ]
    records = json.loads((fho / "fho_lta_train_sample.json").read_text())
    records["clips"][1]["verb_label"] = 115
    bad = tmp_path / "fho_lta_train.json"
    bad.write_text(json.dumps(records))
    with pytest.raises(
        ValueError, match=r"fho_lta_train.json, record 1 \(clip_uid b6a88030.*action_idx 1\).*115"
    ):
        read_fho_actions(bad, taxonomy)
    del records["clips"][0]["action_clip_end_frame"]
    bad.write_text(json.dumps(records))
    with pytest.raises(ValueError, match="record 0 .*missing field 'action_clip_end_frame'"):
        read_fho_actions(bad, taxonomy)


def test_real_oscc_samples():
    fho = require_shared(FHO)
    train = read_oscc_clips(fho / "fho_oscc-pnr_train_sample.json")
    assert [(c.start_frame, c.end_frame, c.state_change, c.pnr_frame) for c in train] == [
        (74, 314, 1, 184.0),
        (195, 435, 1, 267.0),
    ]
    assert train[0].start_sec == pytest.approx(2.487695266666667)
    test = read_oscc_clips(fho / "fho_oscc-pnr_test_unannotated_sample.json")
    assert [(c.unique_id, c.start_frame, c.state_change, c.pnr_frame) for c in test] == [
        ("1397-230-238-1397", 6919, -1, None),
        ("2422-902-910-2422", 27085, -1, None),
    ]


# ----------------------------------------------------------------------------------------------------
# Features: errors, skip, conversion


def test_missing_feature_file_names_file_and_record(data, caplog):
    root, store = data
    save(root, "v1", row_features(30))
    path = write_json(
        root / "fho_lta_val.json",
        [action("v1", "c1", 0, 0, 64), action("v2", "c2", 0, 0, 64), action("v2", "c2", 1, 64, 128)],
    )
    with pytest.raises(
        FileNotFoundError, match=r"v2\.pt.*fho_lta_val.json, record 1 \(clip_uid c2, action_idx 0\)"
    ):
        ARGraphDataset(path, store, TAXONOMY)
    with caplog.at_level(logging.WARNING, logger="egolab.data.backpack"):
        ds = ARGraphDataset(path, store, TAXONOMY, missing_features="skip")
    assert ds.uids == ["c1_0"] and ds.skipped == ["c2_0", "c2_1"]
    assert "left out 2 samples of 1 videos" in caplog.text


def test_wrong_feature_shapes_name_the_file(data):
    root, store = data
    path = write_json(root / "fho_oscc-pnr_val.json", [oscc("v", "a", 0, 200)])
    save(root, "v", torch.zeros(20, 7))
    with pytest.raises(ValueError, match=r"v\.pt: expected \(T, 4\) features.*\(20, 7\)"):
        OSCCGraphDataset(path, store)
    np.save(root / "features" / "w.npy", np.zeros((20, 4, 2), np.float32))
    with pytest.raises(ValueError, match=r"w\.npy.*2-d"):
        store.prepare(["w"], "x.csv")


def test_conversion_to_memmap_and_csv_is_idempotent(data):
    root, store = data
    save(root, "v1", row_features(30).double())
    np.save(root / "features" / "v2.npy", row_features(12).numpy())
    lengths = store.prepare(["v1", "v2"], "fho_val_v1.csv")
    assert lengths == {"v1": 30, "v2": 12}
    cached = np.load(root / "cache" / "v1.npy", mmap_mode="r")
    assert cached.dtype == np.float32 and cached.shape == (30, 4) and cached[7, 1] == 49
    assert isinstance(store.get("v1"), np.memmap)
    csv_text = (root / "cache" / "fho_val_v1.csv").read_text().split()
    assert csv_text == ["video_uid,length,features_size", "v1,30,4", "v2,12,4"]
    stamps = {p.name: p.stat().st_mtime_ns for p in (root / "cache").iterdir()}
    (root / "features" / "v1.pt").unlink()  # a second call does not even look at the raw files
    assert store.prepare(["v1", "v2"], "fho_val_v1.csv") == lengths
    assert {p.name: p.stat().st_mtime_ns for p in (root / "cache").iterdir()} == stamps
    assert not [p for p in (root / "cache").iterdir() if p.name.endswith(".tmp")]
    with pytest.raises(ValueError, match="fho_val_v1.csv.*4-d features, not feature_dim=8"):
        FeatureStore(root / "features", root / "cache", feature_dim=8).prepare(["v1"], "fho_val_v1.csv")


def test_workers_open_their_own_memmaps(data):
    root, store = data
    save(root, "v", row_features(40))
    path = write_json(root / "fho_lta_val.json", [action("v", "c", i, 64 * i, 64 * i + 64) for i in range(6)])
    ds = ARGraphDataset(path, store, TAXONOMY)
    ds[0]  # opens a memmap in this process; the workers must not inherit it through pickling
    batches = list(GraphLoader(ds, batch_size=2, num_workers=2))
    assert sum(b.num_graphs for b in batches) == 6


# ----------------------------------------------------------------------------------------------------
# Demo and data module


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("backpack") / "demo"


def test_demo_schema_and_determinism(demo, tmp_path):
    root = make_demo_backpack(demo, **SMALL_DEMO)
    ann = root / "annotations"
    taxonomy = json.loads((ann / "fho_lta_taxonomy.json").read_text())
    assert (len(taxonomy["verbs"]), len(taxonomy["nouns"])) == (8, 12)
    lta = json.loads((ann / "fho_lta_train.json").read_text())["clips"]
    clips = json.loads((ann / "fho_oscc-pnr_train.json").read_text())["clips"]
    assert len(lta) == 3 * 30 and len(clips) == 3 * 6
    assert {r["state_change"] for r in clips} == {True, False}
    assert all((r["parent_pnr_frame"] is None) != r["state_change"] for r in clips)
    assert all(r["parent_start_sec"] == r["parent_start_frame"] / 30 for r in clips)
    assert {(r["verb_label"], r["noun_label"]) for r in lta} <= {(k % 8, k % 12) for k in range(16)}
    if FHO.is_dir():
        real_lta = json.loads((FHO / "fho_lta_train_sample.json").read_text())["clips"][0]
        real_oscc = json.loads((FHO / "fho_oscc-pnr_train_sample.json").read_text())["clips"][0]
        assert list(lta[0]) == list(real_lta) and list(clips[0]) == list(real_oscc)
    video = lta[0]["video_uid"]
    feats = torch.load(root / "features" / f"{video}.pt")
    assert feats.dtype == torch.float32 and feats.shape[1] == 16
    stamp = (root / "demo_params.json").stat().st_mtime_ns
    assert (
        make_demo_backpack(demo, **SMALL_DEMO) == root
        and (root / "demo_params.json").stat().st_mtime_ns == stamp
    )
    again = make_demo_backpack(tmp_path / "again", **SMALL_DEMO)
    files = sorted(p.relative_to(root) for d in ("annotations", "features") for p in (root / d).iterdir())
    assert files == sorted(
        p.relative_to(again) for d in ("annotations", "features") for p in (again / d).iterdir()
    )
    assert all((root / f).read_bytes() == (again / f).read_bytes() for f in files)
    assert not [p for p in demo.parent.iterdir() if p.name.startswith(".")]


def test_datamodule_on_demo(demo):
    dm = BackpackDataModule(
        list(TASKS),
        demo / "annotations",
        demo / "features",
        demo / "cache",
        feature_dim=16,
        batch_size=4,
        eval_batch_size=8,
        task_options={"ar": {"max_samples": 20}, "pnr": {"num_candidates": 16}},
        demo=partial(make_demo_backpack, demo, **SMALL_DEMO),
    )
    dm.prepare_data()
    assert (demo / "cache" / "fho_train_v1.csv").is_file() and (demo / "cache" / "oscc_val_v1.csv").is_file()
    dm.setup("fit")
    assert (dm.taxonomy.num_verbs, dm.taxonomy.num_nouns) == (8, 12)
    assert len(dm.train_datasets["ar"]) == 20 and len(dm.val_datasets["ar"]) == 30  # subset: training only
    assert len(dm.train_datasets["lta"]) == 3 * (30 - 22 + 1)
    batch, _, _ = next(iter(dm.train_dataloader()))
    assert list(batch) == list(TASKS)
    shapes = {task: (tuple(b.x.shape), tuple(b.y.shape), b.num_graphs) for task, b in batch.items()}
    assert shapes == {
        "ar": ((36, 3, 16), (36, 2), 4),
        "lta": ((88, 3, 16), (88, 2), 4),
        "oscc": ((16, 3, 16), (4,), 4),
        "pnr": ((64, 3, 16), (64,), 4),
    }
    assert batch["pnr"].start_frame.shape == (4,) and len(batch["oscc"].uid) == 4
    val = dm.val_dataloader()
    assert [loader.dataset.task for loader in val] == dm.eval_tasks == list(TASKS)
    assert not any(loader.dataset.training for loader in val)
    prototypes = dm.prototype_dataloader()
    uids = [uid for b in prototypes for uid in b.uid]
    assert sorted(uids) == sorted(dm.train_datasets["ar"].uids) and len(set(uids)) == 20
    assert not prototypes.dataset.training
    release = dm.prototype_dataloader(release=True)
    assert release.dataset.training and release.drop_last and release.batch_size == 256
    with pytest.raises(ValueError, match="unknown options"):
        BackpackDataModule(["ar"], demo, demo, demo, task_options={"ar": {"window": 3}})


def test_demo_files_are_official_for_the_readers(demo):
    make_demo_backpack(demo, **SMALL_DEMO)
    from egolab.data.backpack import load_taxonomy

    taxonomy = load_taxonomy(demo / "annotations" / "fho_lta_taxonomy.json")
    actions = read_fho_actions(demo / "annotations" / "fho_lta_val.json", taxonomy)
    assert all(0 <= a.verb < 8 and 0 <= a.noun < 12 and a.end_frame - a.start_frame >= 48 for a in actions)
    clips = read_oscc_clips(demo / "annotations" / "fho_oscc-pnr_val.json")
    positives = [c for c in clips if c.state_change == 1]
    assert positives and all(c.start_frame < c.pnr_frame < c.end_frame for c in positives)
    assert os.path.getsize(demo / "annotations" / "fho_lta_train.json") < 1_000_000
