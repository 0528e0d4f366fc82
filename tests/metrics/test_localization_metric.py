"""Tests of the temporal action localization metric (ActivityNet detection mAP, Recall@kx)."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared

from egolab.data.demo_localization import synthetic_detections
from egolab.metrics.localization import (
    ANET_TIOU_THRESHOLDS,
    DetectionMAP,
    SegmentTable,
    average_precision_detection,
    evaluate_detection,
    main,
    pairwise_tiou,
    remove_duplicate_annotations,
    segment_tiou,
    topkx_recall_detection,
)
from egolab.metrics.localization_metric import records_by_video

ANET_DIR = SHARED_DATA / "activitynet"


# ----------------------------------------------------------------------------------------------------
# Reference: a deliberately plain loop transcription of the official algorithm, written from its
# description. Ties are broken by np.argsort(...)[::-1] on the same arrays, as the official code does.


def ref_tiou(s1: float, e1: float, s2: float, e2: float) -> float:
    inter = max(0.0, min(e1, e2) - max(s1, s2))
    union = (e1 - s1) + (e2 - s2) - inter
    return inter / union if union > 0 else 0.0


def ref_ap(gts: list[tuple], preds: list[tuple], thresholds: list[float]) -> list[float]:
    """gts: (video, start, end); preds: (video, start, end, score), one class, input order."""
    if not preds:
        return [0.0] * len(thresholds)
    order = np.argsort(np.array([p[3] for p in preds]))[::-1]
    result = []
    for t in thresholds:
        locked = [False] * len(gts)
        flags = []
        for i in order:
            video, s, e, _ = preds[i]
            cands = [j for j, g in enumerate(gts) if g[0] == video]
            ious = np.array([ref_tiou(s, e, gts[j][1], gts[j][2]) for j in cands])
            hit = False
            for jj in np.argsort(ious)[::-1]:
                if ious[jj] < t:
                    break
                if locked[cands[jj]]:
                    continue
                locked[cands[jj]] = True
                hit = True
                break
            flags.append(hit)
        tp = fp = 0
        prec, rec = [], []
        for f in flags:
            tp += f
            fp += not f
            prec.append(tp / (tp + fp))
            rec.append(tp / len(gts))
        mprec = [0.0, *prec, 0.0]
        mrec = [0.0, *rec, 1.0]
        for i in range(len(mprec) - 2, -1, -1):
            mprec[i] = max(mprec[i], mprec[i + 1])
        result.append(
            sum((mrec[i] - mrec[i - 1]) * mprec[i] for i in range(1, len(mrec)) if mrec[i] != mrec[i - 1])
        )
    return result


def ref_recall(gts: list[tuple], preds: list[tuple], thresholds: list[float], top_k: list[int]) -> np.ndarray:
    """Recall@kx of one class: per video, the top k*n_gt predictions of that video may recall any GT."""
    out = np.zeros((len(thresholds), len(top_k)))
    for video in {g[0] for g in gts}:
        vg = [g for g in gts if g[0] == video]
        vp = [p for p in preds if p[0] == video]
        if not vp:
            continue
        ranked = [vp[i] for i in np.argsort(np.array([p[3] for p in vp]))[::-1]]
        for ti, t in enumerate(thresholds):
            for ki, k in enumerate(top_k):
                top = ranked[: k * len(vg)]
                out[ti, ki] += sum(any(ref_tiou(p[1], p[2], g[1], g[2]) >= t for p in top) for g in vg)
    return out / len(gts)


def table(rows: list[tuple], scored: bool) -> SegmentTable:
    """SegmentTable from (video, start, end, label[, score]) tuples."""
    return SegmentTable(
        [r[0] for r in rows],
        np.array([r[1:3] for r in rows], dtype=float).reshape(-1, 2),
        np.array([r[3] for r in rows], dtype=np.int64),
        np.array([r[4] for r in rows], dtype=float) if scored else None,
    )


def random_case(seed: int, ties: bool = True) -> tuple[list[tuple], list[tuple]]:
    """Random GT/predictions on an integer grid (tied tIoUs; tied scores unless ``ties`` is False):
    several videos, > 16 GTs in some groups, exact duplicate GTs, a GT class without predictions and
    a predicted class absent from the GT."""
    rng = np.random.default_rng(seed)
    gts, preds = [], []
    for v in range(6):
        for c in range(4):
            n = int(rng.choice([0, 1, 2, 3, 20]))
            for _ in range(n):
                s = int(rng.integers(0, 40))
                gts.append((f"v{v}", float(s), float(s + rng.integers(1, 12)), c))
    gts += gts[:3]  # exact duplicates
    gts.append(("v0", 3.0, 9.0, 5))  # class 5: ground truth only
    for _ in range(400):
        v, c = int(rng.integers(0, 7)), int(rng.choice([0, 1, 2, 3, 6]))  # v6 has no GT, class 6 no GT
        s = int(rng.integers(0, 40))
        score = float(rng.integers(0, 5)) / 4 if ties else float(rng.random())
        preds.append((f"v{v}", float(s), float(s + rng.integers(0, 12)), c, score))
    return gts, preds


# ----------------------------------------------------------------------------------------------------
# tIoU


def test_segment_tiou_values():
    got = segment_tiou([0, 10], [[0, 10], [5, 15], [10, 20], [20, 30], [2, 4], [-5, 20]])
    np.testing.assert_array_equal(got, [1.0, 5 / 15, 0.0, 0.0, 0.2, 10 / 25])


def test_pairwise_tiou_matches_one_vs_many_and_zero_union():
    a = np.array([[0.0, 10.0], [3.0, 7.0], [5.0, 5.0]])
    b = np.array([[0.0, 5.0], [4.0, 12.0], [5.0, 5.0]])
    got = pairwise_tiou(a, b)
    assert got.shape == (3, 3)
    for i in range(3):
        np.testing.assert_array_equal(got[i], segment_tiou(a[i], b))
    np.testing.assert_array_equal(got, pairwise_tiou(b, a).T)
    assert got[2, 2] == 0.0  # two zero-length segments: union 0 -> tIoU 0 (not NaN)


# ----------------------------------------------------------------------------------------------------
# AP worked by hand


def ap_one_class(gts: list[tuple], preds: list[tuple], thresholds: list[float]) -> np.ndarray:
    return average_precision_detection(
        table([(*g, 0) for g in gts], False), table([(*p[:3], 0, p[3]) for p in preds], True), thresholds
    )


def test_ap_duplicate_other_video_and_boundary():
    # GT (video a): g1 = [0, 10], g2 = [20, 30]. Predictions by score:
    #   p1 a [0, 10]  .9  tIoU(g1) = 1                      -> TP
    #   p2 a [1, 10]  .8  tIoU(g1) = 9/10 but g1 taken      -> FP (duplicate)
    #   p3 b [20, 30] .7  another video                     -> FP
    #   p4 a [20, 25] .6  tIoU(g2) = 5/10 = 0.5 exactly     -> TP at t=0.5, FP at t=0.7
    # t=0.5: prec 1, 1/2, 1/3, 1/2; rec 1/2, 1/2, 1/2, 1. Interpolated precision at the recall
    #        steps: 1 (rec 1/2) and 1/2 (rec 1) -> AP = 1/2*1 + 1/2*1/2 = 0.75.
    # t=0.7: only p1 -> AP = 1/2*1 = 0.5.
    gts = [("a", 0, 10), ("a", 20, 30)]
    preds = [("a", 0, 10, 0.9), ("a", 1, 10, 0.8), ("b", 20, 30, 0.7), ("a", 20, 25, 0.6)]
    np.testing.assert_array_equal(ap_one_class(gts, preds, [0.5, 0.7]), [0.75, 0.5])


def test_ap_falls_back_to_second_best_gt():
    # g1 = [0, 10], g2 = [4, 14].
    #   p1 [0, 10] .9: tIoU g1 = 1, g2 = 6/14 -> TP on g1.
    #   p2 [1, 11] .8: tIoU g1 = 9/11 (taken), g2 = 7/13 = 0.538 -> TP on g2 at t=0.5, FP at t=0.6.
    # t=0.5: AP = 1. t=0.6: prec 1, 1/2; rec 1/2, 1/2 -> AP = 0.5.
    gts = [("a", 0, 10), ("a", 4, 14)]
    preds = [("a", 0, 10, 0.9), ("a", 1, 11, 0.8)]
    np.testing.assert_array_equal(ap_one_class(gts, preds, [0.5, 0.6]), [1.0, 0.5])


def test_ap_order_by_score_not_input():
    # Same as above but the FP comes first by score: p_fp [50, 60] .95, then p1 [0, 10] .9 (TP).
    # prec 0, 1/2; rec 0, 1 -> AP = 1 * 1/2 = 0.5. Input order must not matter (scores distinct).
    gts = [("a", 0, 10)]
    preds = [("a", 0, 10, 0.9), ("a", 50, 60, 0.95)]
    assert ap_one_class(gts, preds, [0.5])[0] == 0.5


def test_ap_tied_scores_follow_official_argsort():
    # Equal scores: the official order is np.argsort(scores)[::-1], NumPy's default (not stable) sort
    # reversed. For an all-equal pair it returns [0, 1], so the *later* prediction goes first:
    # FP [50, 60] then TP [0, 10] -> AP = 0.5 (a stable descending sort would give 1.0).
    gts = [("a", 0, 10)]
    preds = [("a", 0, 10, 0.5), ("a", 50, 60, 0.5)]
    first = np.argsort(np.array([0.5, 0.5]))[::-1][0]
    assert ap_one_class(gts, preds, [0.5])[0] == (0.5 if first == 1 else 1.0)
    assert first == 1  # what NumPy does for equal pairs; the line above documents the dependency


def test_ap_edge_cases():
    assert ap_one_class([("a", 0, 10)], [], [0.5, 0.7]).tolist() == [0.0, 0.0]
    assert np.isnan(ap_one_class([], [("a", 0, 10, 1.0)], [0.5])).all()


def test_map_over_gt_classes_only():
    # class 0: one perfect prediction (AP 1); class 2: GT but no prediction (AP 0);
    # class 1: predicted but absent from the GT -> ignored, even though it overlaps class 2's GT.
    gt = table([("a", 0, 10, 0), ("a", 20, 30, 2)], False)
    pred = table([("a", 0, 10, 0, 0.9), ("a", 20, 30, 1, 0.8)], True)
    res = evaluate_detection(gt, pred, [0.5, 0.9])
    assert res.classes.tolist() == [0, 2]
    np.testing.assert_array_equal(res.ap, [[1.0, 0.0], [1.0, 0.0]])
    np.testing.assert_array_equal(res.mAP, [0.5, 0.5])
    assert res.average_mAP == 0.5


def test_thresholds_and_top_k_are_validated():
    gt = table([("a", 0, 10, 0)], False)
    pred = table([("a", 0, 10, 0, 0.9)], True)
    for bad in ([], [0.0], [1.5]):
        with pytest.raises(ValueError, match="tIoU"):
            evaluate_detection(gt, pred, bad)
    with pytest.raises(ValueError, match="top_k"):
        evaluate_detection(gt, pred, [0.5], top_k=[0])
    with pytest.raises(ValueError, match="end < start"):
        table([("a", 5, 1, 0)], False)


# ----------------------------------------------------------------------------------------------------
# Recall@kx worked by hand


def test_topkx_recall_hand_example():
    # Class 0. Video a: g1 = [0, 10], g2 = [20, 30]; predictions by score
    #   [0, 10] .9 (g1), [1, 10] .8 (g1, 0.9), [20, 30] .7 (g2), [50, 60] .6.
    # Video b: g3 = [0, 10], no prediction (still counts in the denominator).
    # k=1 -> top 2 in a: g1 only -> 1/3; k=2 -> top 4 in a: g1, g2 -> 2/3.
    # Class 1. Video a: g = [40, 50], prediction [40, 45] (tIoU 0.5): recalled at t=0.5, not 0.7.
    rows_gt = [("a", 0, 10, 0), ("a", 20, 30, 0), ("b", 0, 10, 0), ("a", 40, 50, 1)]
    rows_pred = [
        ("a", 0, 10, 0, 0.9),
        ("a", 1, 10, 0, 0.8),
        ("a", 20, 30, 0, 0.7),
        ("a", 50, 60, 0, 0.6),
        ("a", 40, 45, 1, 0.5),
    ]
    res = evaluate_detection(table(rows_gt, False), table(rows_pred, True), [0.5, 0.7], top_k=(1, 2))
    np.testing.assert_allclose(res.recall[:, :, 0], [[1 / 3, 2 / 3], [1 / 3, 2 / 3]], rtol=0, atol=1e-15)
    np.testing.assert_array_equal(res.recall[:, :, 1], [[1.0, 1.0], [0.0, 0.0]])
    np.testing.assert_allclose(res.mean_recall, [[2 / 3, 5 / 6], [1 / 6, 1 / 3]], rtol=0, atol=1e-15)
    single = topkx_recall_detection(
        table(rows_gt[:3], False), table(rows_pred[:4], True), [0.5, 0.7], top_k=(1, 2)
    )
    np.testing.assert_allclose(single, res.recall[:, :, 0], rtol=0, atol=0)


# ----------------------------------------------------------------------------------------------------
# Vectorised implementation == loop reference


@pytest.mark.parametrize("seed", range(6))
def test_matches_loop_reference(seed):
    gts, preds = random_case(seed)
    thresholds = [0.1, 0.3, 0.5, 0.7, 0.9, 1.0]
    top_k = [1, 2, 5]
    res = evaluate_detection(table(gts, False), table(preds, True), thresholds, top_k)
    classes = sorted({g[3] for g in gts})
    assert res.classes.tolist() == classes
    n_matched = 0
    for ci, c in enumerate(classes):
        cg = [g[:3] for g in gts if g[3] == c]
        cp = [(*p[:3], p[4]) for p in preds if p[3] == c]
        expected = ref_ap(cg, cp, thresholds)
        np.testing.assert_allclose(res.ap[:, ci], expected, rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            res.recall[:, :, ci], ref_recall(cg, cp, thresholds, top_k), rtol=0, atol=1e-6
        )
        n_matched += sum(e > 0 for e in expected)
    assert n_matched > 0 and res.ap[:, classes.index(5)].tolist() == [0.0] * len(thresholds)


# ----------------------------------------------------------------------------------------------------
# Duplicate annotations


def test_remove_duplicate_annotations():
    gt = table(
        [
            ("a", 0.0, 10.0, 0),
            ("a", 0.0005, 10.0005, 0),  # repeat of the first within 1e-3 -> dropped
            ("a", 0.0, 10.0, 1),  # other label -> kept
            ("a", 5.0, 5.0005, 0),  # shorter than 1e-3 -> dropped
            ("a", 0.0015, 10.0, 0),  # start differs by more than 1e-3 -> kept
            ("b", 0.0, 10.0, 0),  # other video -> kept
        ],
        False,
    )
    kept = remove_duplicate_annotations(gt)
    assert kept.videos.tolist() == ["a", "a", "a", "b"]
    assert kept.labels.tolist() == [0, 1, 0, 0]
    np.testing.assert_array_equal(kept.segments[:, 0], [0.0, 0.0, 0.0015, 0.0])


# ----------------------------------------------------------------------------------------------------
# torchmetrics wrapper


def make_batch(gts: list[tuple], preds: list[tuple], videos: list[str]) -> tuple[list[dict], list[dict]]:
    """Contract-style preds/targets (tensors) for the given videos from row tuples."""
    p_out, t_out = [], []
    for v in videos:
        vp = [p for p in preds if p[0] == v]
        vg = [g for g in gts if g[0] == v]
        p_out.append(
            {
                "video_id": v,
                "segments": torch.tensor([p[1:3] for p in vp], dtype=torch.float32).reshape(-1, 2),
                "scores": torch.tensor([p[4] for p in vp], dtype=torch.float32),
                "labels": torch.tensor([p[3] for p in vp], dtype=torch.int64),
            }
        )
        t_out.append(
            {
                "video_id": v,
                "segments": torch.tensor([g[1:3] for g in vg], dtype=torch.float32).reshape(-1, 2),
                "labels": torch.tensor([g[3] for g in vg], dtype=torch.int64),
            }
        )
    return p_out, t_out


def test_metric_two_updates_equal_api_and_reset():
    gts, preds = random_case(11)
    videos = sorted({g[0] for g in gts} | {p[0] for p in preds})
    metric = DetectionMAP(tiou_thresholds=(0.3, 0.5, 0.7), top_k=(1, 5))
    metric.update(*make_batch(gts, preds, videos[:3]))
    metric.update(*make_batch(gts, preds, videos[3:]))
    out = metric.compute()
    # float32 tensors in the batch: compare with the API on float32-rounded inputs, in the same order
    order = [p for v in videos for p in preds if p[0] == v]
    rounded = [(p[0], *np.float32(p[1:3]).tolist(), p[3], float(np.float32(p[4]))) for p in order]
    res = evaluate_detection(table(gts, False), table(rounded, True), [0.3, 0.5, 0.7], (1, 5))
    assert list(out) == [
        "mAP@0.3",
        "mAP@0.5",
        "mAP@0.7",
        "average_mAP",
        "recall@1x@0.3",
        "recall@1x@0.5",
        "recall@1x@0.7",
        "average_recall@1x",
        "recall@5x@0.3",
        "recall@5x@0.5",
        "recall@5x@0.7",
        "average_recall@5x",
    ]
    assert all(v.dtype == torch.float64 and v.ndim == 0 for v in out.values())
    np.testing.assert_array_equal([out[f"mAP@{t}"].item() for t in ("0.3", "0.5", "0.7")], res.mAP)
    assert out["average_mAP"].item() == res.average_mAP
    assert out["recall@5x@0.5"].item() == res.mean_recall[1, 1]
    assert 0 < out["average_mAP"].item() < 1

    metric.reset()
    metric.update(*make_batch([("x", 0, 10, 0)], [("x", 0, 10, 0, 1.0)], ["x"]))
    after = metric.compute()
    assert after["average_mAP"].item() == 1.0 and after["recall@1x@0.7"].item() == 1.0


def test_metric_counts_a_repeated_video_once():
    # DistributedSampler pads by repeating videos: the second record of a video must be ignored.
    # a: GT [0, 10], prediction [0, 10] (TP). b: GT [0, 10], prediction [50, 60] (FP).
    # Once: TP, FP -> prec 1, 1/2; rec 1/2, 1/2 -> AP 1/2. Counting b twice: 3 GTs -> AP 1/3.
    gts = [("a", 0, 10, 0), ("b", 0, 10, 0)]
    preds = [("a", 0, 10, 0, 0.9), ("b", 50, 60, 0, 0.8)]
    metric = DetectionMAP(tiou_thresholds=(0.5,))
    metric.update(*make_batch(gts, preds, ["a", "b"]))
    metric.update(*make_batch(gts, preds, ["b"]))
    assert metric.compute()["mAP@0.5"].item() == 0.5


def test_metric_label_names_and_per_class_ap():
    metric = DetectionMAP(tiou_thresholds=(0.5, 0.7), label_names=["jump", "run", "swim"])
    gts = [("a", 0, 10, 0), ("a", 20, 30, 2)]
    preds = [("a", 0, 10, 0, 0.9), ("a", 20, 26, 2, 0.8)]  # swim: tIoU 0.6
    metric.update(*make_batch(gts, preds, ["a"]))
    per_class = metric.per_class_ap()
    assert list(per_class) == ["jump", "swim"]
    assert per_class["jump"].tolist() == [1.0, 1.0]
    assert per_class["swim"].tolist() == [1.0, 0.0]
    with pytest.raises(ValueError, match="beyond the 3 label_names"):
        metric.update(*make_batch([("b", 0, 1, 3)], [], ["b"]))


def test_metric_remove_duplicates_flag():
    # GT a has the same segment twice; one perfect prediction recalls half of it unless deduplicated.
    gts = [("a", 0, 10, 0), ("a", 0, 10, 0)]
    batch = make_batch(gts, [("a", 0, 10, 0, 0.9)], ["a"])
    plain, dedup = (
        DetectionMAP(tiou_thresholds=(0.5,)),
        DetectionMAP(tiou_thresholds=(0.5,), remove_duplicates=True),
    )
    plain.update(*batch)
    dedup.update(*batch)
    assert plain.compute()["mAP@0.5"].item() == 0.5
    assert dedup.compute()["mAP@0.5"].item() == 1.0


def test_metric_rejects_inconsistent_batches():
    metric = DetectionMAP()
    p, t = make_batch([("a", 0, 10, 0)], [("a", 0, 10, 0, 1.0)], ["a"])
    with pytest.raises(ValueError, match="different videos"):
        metric.update(p, [])
    with pytest.raises(ValueError, match="twice"):
        metric.update(p + p, t + t)
    bad = [dict(p[0], segments=torch.tensor([[5.0, 1.0]]))]
    with pytest.raises(ValueError, match="end < start"):
        metric.update(bad, t)
    with pytest.raises(ValueError, match="distinct"):
        DetectionMAP(tiou_thresholds=(0.5, 0.5000001))


def test_metric_without_ground_truth_is_nan():
    metric = DetectionMAP(tiou_thresholds=(0.5,))
    metric.update(*make_batch([], [("a", 0, 10, 0, 1.0)], ["a"]))
    assert torch.isnan(metric.compute()["mAP@0.5"])


def _ddp_worker(rank: int, world: int, init_file: str, out_dir: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    gts, preds = random_case(3, ties=False)
    videos = sorted({g[0] for g in gts} | {p[0] for p in preds})
    mine = videos[rank::world] + ([videos[0]] if rank == 1 else [])  # rank 1 repeats a video (padding)
    shared = DetectionMAP(tiou_thresholds=(0.3, 0.5), top_k=(1,))
    for v in mine:
        shared.update(*make_batch(gts, preds, [v]))
    only_rank0 = DetectionMAP(tiou_thresholds=(0.3, 0.5))  # rank 1 never updates
    if rank == 0:
        only_rank0.update(*make_batch(gts, preds, videos))
    out = {
        "shared": {k: v.item() for k, v in shared.compute().items()},
        "only_rank0": {k: v.item() for k, v in only_rank0.compute().items()},
    }
    Path(out_dir, f"{rank}.json").write_text(json.dumps(out))
    dist.destroy_process_group()


@pytest.mark.slow
def test_metric_under_ddp(tmp_path):
    import torch.multiprocessing as mp

    mp.spawn(_ddp_worker, args=(2, str(tmp_path / "init"), str(tmp_path)), nprocs=2, join=True)
    gts, preds = random_case(3, ties=False)  # distinct scores: the gather order cannot matter
    videos = sorted({g[0] for g in gts} | {p[0] for p in preds})
    single = DetectionMAP(tiou_thresholds=(0.3, 0.5), top_k=(1,))
    single.update(*make_batch(gts, preds, videos))
    expected = {k: v.item() for k, v in single.compute().items()}
    for rank in range(2):
        got = json.loads((tmp_path / f"{rank}.json").read_text())
        assert got["shared"] == pytest.approx(expected, rel=0, abs=1e-12)
        assert got["only_rank0"]["mAP@0.5"] == expected["mAP@0.5"]
    assert 0 < expected["mAP@0.5"] < 1


# ----------------------------------------------------------------------------------------------------
# ActivityNet-like inputs: reference agreement at medium size, speed at ActivityNet-val size


def test_anet_like_matches_loop_reference():
    gt, pred = synthetic_detections(n_videos=40, n_classes=6, per_video=60, seed=5)
    thresholds = ANET_TIOU_THRESHOLDS.tolist()
    res = evaluate_detection(gt, pred, thresholds, (1, 5))
    for ci, c in enumerate(res.classes):
        cg = [(v, s, e) for v, (s, e), lab in zip(gt.videos, gt.segments, gt.labels, strict=True) if lab == c]
        cp = [
            (v, s, e, sc)
            for v, (s, e), lab, sc in zip(pred.videos, pred.segments, pred.labels, pred.scores, strict=True)
            if lab == c
        ]
        np.testing.assert_allclose(res.ap[:, ci], ref_ap(cg, cp, thresholds), rtol=0, atol=1e-6)
        np.testing.assert_allclose(
            res.recall[:, :, ci], ref_recall(cg, cp, thresholds, [1, 5]), rtol=0, atol=1e-6
        )
    assert 0.05 < res.average_mAP < 0.95


@pytest.mark.slow
def test_detection_map_matches_api_at_activitynet_val_scale():
    # ActivityNet-1.3 val: 4,728 videos x 100 predictions = 472,800, 200 classes, 10 thresholds.
    # Timings: benchmarks/metric_cli_time.py.
    gt, pred = synthetic_detections(n_videos=4728, n_classes=200, per_video=100)
    assert len(pred) == 472_800
    res = evaluate_detection(gt, pred, ANET_TIOU_THRESHOLDS, top_k=(1, 5))

    metric = DetectionMAP(tiou_thresholds=ANET_TIOU_THRESHOLDS.tolist(), top_k=(1, 5))
    preds, targets = records_by_video(gt, pred)
    for b in range(0, len(preds), 16):
        metric.update(preds[b : b + 16], targets[b : b + 16])
    out = metric.compute()
    assert out["average_mAP"].item() == pytest.approx(res.average_mAP, abs=1e-12)


# ----------------------------------------------------------------------------------------------------
# Command line


def write_json(path: Path, obj: object) -> str:
    path.write_text(json.dumps(obj))
    return str(path)


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    try:
        code = main(args)
    except SystemExit as e:
        code = e.code
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def small_files(tmp_path: Path) -> tuple[str, dict]:
    gt = {
        "database": {
            "vidA": {"subset": "Validation", "annotations": [{"label": "jump", "segment": [0, 10]}]},
            "vidB": {"subset": "training", "annotations": [{"label": "run", "segment": [0, 10]}]},
        }
    }
    return write_json(tmp_path / "gt.json", gt), {
        "results": {
            "vidA": [
                {"segment": [0, 10], "score": 0.9, "label": "jump"},
                {"segment": [0, 4], "score": 0.8, "label": "jump"},
            ],
            "vidB": [{"segment": [0, 10], "score": 0.99, "label": "jump"}],  # outside the subset
        }
    }


@pytest.mark.parametrize(("ignore", "expected_ap"), [(False, 0.5), (True, 1.0)])
def test_cli_small(tmp_path, small_files, capsys, ignore, expected_ap):
    gt_path, pred = small_files
    pred_path = write_json(tmp_path / "pred.json", pred)
    argv = ["--gt", gt_path, "--pred", pred_path, "--tiou", "0.5", "0.7", "--top-k", "1"]
    code, out, err = run_main(argv + (["--ignore-other-videos"] if ignore else []), capsys)
    assert code == 0
    # Official: vidB's prediction (outside the subset) ranks first and is an FP, then vidA's TP, then an
    # FP (tIoU 0.4): precision at recall 1 is 1/2, so AP = 0.5. Ignoring vidB: TP then FP, AP = 1.
    # Recall@1x looks only at vidA's top prediction: 1 either way.
    assert json.loads(out) == {
        "mAP": {"0.5": expected_ap, "0.7": expected_ap},
        "average_mAP": expected_ap,
        "recall": {"1x": {"0.5": 1.0, "0.7": 1.0}},
        "average_recall": {"1x": 1.0},
    }
    assert "1 predictions on videos outside subset 'validation'" in err
    assert ("ignored)" if ignore else "counted as false positives") in err


def test_file_evaluation_imports_only_numpy(tmp_path, small_files, modules_after):
    # The command line and score_predictions_file must not pay for torch / torchmetrics / transformers.
    gt_path, pred = small_files
    pred_path = write_json(tmp_path / "pred.json", pred)
    run_file = write_json(
        tmp_path / "predictions.json",
        {
            "results": {"vidA": [{"segment": [0, 10], "score": 0.9, "label_id": 0}]},
            "ground_truth": {"vidA": {"segments": [[0, 10]], "label_ids": [0]}},
            "tiou_thresholds": [0.5],
        },
    )
    code = (
        "from egolab.metrics.localization import main, score_predictions_file; "
        f"assert main(['--gt', {gt_path!r}, '--pred', {pred_path!r}]) == 0; "
        f"assert score_predictions_file({run_file!r})['average_mAP'] == 1.0"
    )
    loaded = modules_after(code, dict(os.environ)) & {"torch", "torchmetrics", "transformers"}
    assert not loaded


def test_detection_map_still_importable_from_localization():
    from egolab.metrics import localization, localization_metric

    assert localization.DetectionMAP is localization_metric.DetectionMAP is DetectionMAP
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        localization.nope  # noqa: B018


@pytest.mark.parametrize(
    ("record", "message"),
    [
        ({"segment": [3], "score": 0.5, "label": "jump"}, "'segment' must be two numbers"),
        ({"segment": ["0", 3], "score": 0.5, "label": "jump"}, "'segment' must be two numbers"),
        ({"segment": [5, 3], "score": 0.5, "label": "jump"}, "segment end < start"),
        ({"segment": [0, 3], "label": "jump"}, "numeric 'score'"),
        ({"segment": [0, 3], "score": 0.5}, "string 'label'"),
        ({"segment": [0, True], "score": 0.5, "label": "jump"}, "'segment' must be two numbers"),
        ({"segment": [0, 3], "score": True, "label": "jump"}, "numeric 'score'"),
        ({"segment": [0, 3], "score": 0.5, "label": 1}, "string 'label'"),
        ({"segment": [0, 3], "score": float("nan"), "label": "jump"}, "numeric 'score'"),  # NaN literal
        ({"segment": [0, float("inf")], "score": 0.5, "label": "jump"}, "'segment' must be two numbers"),
        (["segment", "score", "label"], "must be an object"),
    ],
)
def test_cli_rejects_bad_prediction_records(tmp_path, small_files, capsys, record, message):
    gt_path, pred = small_files
    pred["results"]["vid_bad"] = [{"segment": [0, 1], "score": 1.0, "label": "jump"}, record]
    pred_path = write_json(tmp_path / "pred.json", pred)
    code, out, err = run_main(["--gt", gt_path, "--pred", pred_path], capsys)
    assert code == 2 and out == ""
    assert f"{pred_path}: video 'vid_bad', result #1: " in err and message in err


def test_cli_rejects_bad_files(tmp_path, small_files, capsys):
    gt_path, pred = small_files
    pred_path = write_json(tmp_path / "pred.json", pred)
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"results": {')
    no_results = write_json(tmp_path / "no_results.json", {"version": "1.3"})
    bad_gt = write_json(
        tmp_path / "bad_gt.json",
        {"database": {"vidZ": {"subset": "validation", "annotations": [{"label": "x", "segment": [4, 1]}]}}},
    )
    cases = [
        (["--gt", str(tmp_path / "missing.json"), "--pred", pred_path], "missing.json: not found"),
        (["--gt", gt_path, "--pred", str(bad_json)], "invalid JSON"),
        (["--gt", gt_path, "--pred", no_results], "missing 'results'"),
        (["--gt", pred_path, "--pred", pred_path], "missing 'database'"),
        (["--gt", bad_gt, "--pred", pred_path], "video 'vidZ', annotation #0: segment end < start"),
        (["--gt", gt_path, "--pred", pred_path, "--subset", "testing"], "no annotations in subset 'testing'"),
        (["--gt", gt_path, "--pred", pred_path, "--tiou", "0"], "tIoU thresholds"),
    ]
    for args, message in cases:
        code, out, err = run_main(args, capsys)
        assert code == 2 and out == "" and message in err, (args, err)


def load_sample_submission() -> tuple[dict, dict, set[str]]:
    """BSN's ActivityNet-1.3 annotations (ids without the 'v_' prefix) and the official sample submission."""
    require_shared(ANET_DIR)
    anno = json.loads((ANET_DIR / "bsn" / "anet_anno_action.json").read_text())
    with open(ANET_DIR / "bsn" / "video_info_new.csv", newline="") as f:
        subset = {row["video"]: row["subset"] for row in csv.DictReader(f)}
    database = {
        vid.removeprefix("v_"): {
            "subset": subset[vid],
            "duration": v["duration_second"],
            "annotations": v["annotations"],
        }
        for vid, v in anno.items()
    }
    submission = json.loads((ANET_DIR / "sample_detection_prediction.json").read_text())
    val = {vid for vid, v in database.items() if v["subset"] == "validation"}
    return database, submission, val


def test_cli_on_official_sample_submission(tmp_path):
    database, submission, val = load_sample_submission()
    assert len(val) == 4728 and len(submission["results"]) == 4926
    gt_path = write_json(tmp_path / "gt.json", {"version": "bsn", "database": database})
    cmd = [sys.executable, "-m", "egolab.metrics.localization", "--gt", gt_path, "--pred"]
    cmd += [str(ANET_DIR / "sample_detection_prediction.json"), "--subset", "Validation"]
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2] / "src"))
    official = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True, env=env).stdout)
    proc = subprocess.run(
        [*cmd, "--ignore-other-videos"], capture_output=True, text=True, check=True, env=env
    )
    out = json.loads(proc.stdout)
    # Officially the 361 sample predictions on videos missing from BSN's val list count as FPs.
    assert official["average_mAP"] == pytest.approx(0.9710295392120292, abs=1e-9)
    keys = [f"{t:g}" for t in np.linspace(0.5, 0.95, 10)]
    assert (
        list(out["mAP"])
        == keys
        == ["0.5", "0.55", "0.6", "0.65", "0.7", "0.75", "0.8", "0.85", "0.9", "0.95"]
    )
    values = np.array(list(out["mAP"].values()))
    assert ((values >= 0) & (values <= 1)).all()
    assert out["average_mAP"] == pytest.approx(values.mean(), abs=1e-12)

    # Python API on the same data, parsed here independently; labels by sorted name.
    names = sorted({a["label"] for v in val for a in database[v]["annotations"]})
    index = {n: i for i, n in enumerate(names)}
    gt_rows = [
        (v, *a["segment"], index[a["label"]])
        for v in database
        if v in val
        for a in database[v]["annotations"]
    ]
    pred_rows = [
        (v, *r["segment"], index[r["label"]], r["score"])
        for v, rs in submission["results"].items()
        if v in val
        for r in rs
    ]
    res = evaluate_detection(table(gt_rows, False), table(pred_rows, True), ANET_TIOU_THRESHOLDS)
    np.testing.assert_allclose(values, res.mAP, rtol=0, atol=1e-9)
    # The fake submission copies most validation GTs with score 1.0: near-perfect, all thresholds equal.
    assert out["average_mAP"] == pytest.approx(0.9990985192523266, abs=1e-9)

    # And the loop reference agrees on this real, all-tied (score 1.0) data.
    ref = np.mean(
        [
            ref_ap(
                [r[:3] for r in gt_rows if r[3] == c],
                [(*r[:3], r[4]) for r in pred_rows if r[3] == c],
                [0.5, 0.95],
            )
            for c in range(len(names))
        ],
        axis=0,
    )
    np.testing.assert_allclose(ref, res.mAP[[0, -1]], rtol=0, atol=1e-6)


def test_a_predictions_file_without_label_ids_names_the_video_and_detection(tmp_path):
    """An official-format submission (labels by name only) given where an egolab predictions file is
    expected: the error names the file, the video and the detection."""
    from egolab.metrics.localization import AnnotationFormatError, score_predictions_file

    path = tmp_path / "predictions.json"
    path.write_text(
        json.dumps(
            {
                "results": {"v1": [{"segment": [1.0, 2.0], "score": 0.9, "label": "a"}]},
                "ground_truth": {"v1": {"segments": [[1.0, 2.0]], "label_ids": [0]}},
                "tiou_thresholds": [0.5],
            }
        )
    )
    expected = r"predictions.json: video 'v1', detection 0: .*'label_id'"
    with pytest.raises(AnnotationFormatError, match=expected):
        score_predictions_file(path)
