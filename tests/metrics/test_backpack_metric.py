"""Backpack metrics: hand-worked AR / OSCC / LTA / PNR values, equivalence with torchmetrics and with the
released meters' code paths, the predictions file and its CLI."""

import json
import math
import subprocess
import sys

import numpy as np
import pytest

from egolab.metrics.backpack import (
    PREDICTIONS_VERSION,
    ar_metrics,
    lta_metrics,
    main,
    mean_class_accuracy,
    metrics_from_arrays,
    oscc_metrics,
    pnr_metrics,
    read_predictions,
    score_predictions_file,
    topk_accuracy,
    write_predictions,
)


def test_topk_by_hand_with_ties():
    scores = np.array(
        [
            [0.5, 0.9, 0.9, 0.1, 0.1, 0.1],  # label 2 ties with class 1 for first place: class 1 wins
            [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],  # all tied: label 4 has rank 4 (top-5 hit), label 5 rank 5
            [0.2, 0.2, 0.2, 0.2, 0.2, 0.2],
            [0.0, 0.0, 0.0, 0.0, 0.0, 1.0],  # ignored (-1)
        ]
    )
    labels = np.array([2, 4, 5, -1])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(0.0)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(1 / 3)  # row 0: classes 1, 2
    assert topk_accuracy(scores, labels, 5) == pytest.approx(2 / 3)  # rows 0 and 1
    assert math.isnan(topk_accuracy(scores, np.full(4, -1), 1))


def test_mean_class_counts_predicted_but_absent_classes():
    # argmax per row: 0, 2, 1, 3; the last row is unlabelled and drops out with its prediction
    scores = np.eye(4)[[0, 2, 1, 3]]
    labels = np.array([0, 0, 1, -1])
    # class 0: 1 of 2, class 1: 1 of 1, class 2: predicted, never labelled -> recall 0 and counted;
    # class 3: neither labelled nor predicted among labelled rows -> left out: (0.5 + 1 + 0) / 3
    assert mean_class_accuracy(scores, labels) == pytest.approx(0.5)
    # a tie goes to the lower class: [1, 1, 0, 0] predicts 0
    assert mean_class_accuracy(np.array([[1.0, 1.0, 0, 0]]), np.array([1])) == pytest.approx(0.0)
    metrics = ar_metrics(scores, scores[:, :4], labels, labels)
    assert set(metrics) == {f"ar_{s}_{m}" for s in ("verb", "noun") for m in ("top1", "top5", "mean_class")}
    assert metrics["ar_verb_top1"] == pytest.approx(2 / 3) and metrics["ar_noun_mean_class"] == pytest.approx(
        0.5
    )
    with pytest.raises(ValueError, match="labels must lie in"):
        ar_metrics(scores, scores, np.array([0, 0, 4, -1]), labels)


@pytest.mark.parametrize(
    ("num_classes", "ties"),
    [(7, False), (115, False), (478, False), (320, True), (7, True)],
)
def test_ar_matches_torchmetrics(num_classes, ties):
    torch = pytest.importorskip("torch")
    from torchmetrics.classification import MulticlassAccuracy

    rng = np.random.default_rng(num_classes + ties)
    n = 300
    if ties:  # few distinct values: many ties, including at the argmax
        scores = rng.integers(0, 4, size=(n, num_classes)).astype(np.float32)
    else:
        scores = rng.normal(size=(n, num_classes)).astype(np.float32)
    # a third of the classes never labelled, some rows ignored
    labels = rng.integers(0, max(2 * num_classes // 3, 1), size=n)
    labels[rng.random(n) < 0.2] = -1
    # torch.topk breaks ties at the k-th place by lower index only when 64 k <= C (CPU) or on CUDA
    tops = (1, 5) if not ties or num_classes >= 320 else (1,)
    reference = {k: MulticlassAccuracy(num_classes, top_k=k, average="micro", ignore_index=-1) for k in tops}
    reference["mc"] = MulticlassAccuracy(num_classes, top_k=1, average="macro", ignore_index=-1)
    for batch in np.array_split(np.arange(n), 3):  # accumulated over batches, as the release does
        for metric in reference.values():
            metric.update(torch.from_numpy(scores[batch]), torch.from_numpy(labels[batch]))
    for k in tops:
        assert topk_accuracy(scores, labels, k) == pytest.approx(float(reference[k].compute()), abs=1e-6)
    assert mean_class_accuracy(scores, labels) == pytest.approx(float(reference["mc"].compute()), abs=1e-6)


def test_oscc_by_hand_and_against_torchmetrics():
    logits = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5], [2.0, 3.0]])
    # rows 0, 1 right; row 2 ties -> class 0, wrong; row 3 ignored
    assert oscc_metrics(logits, np.array([0, 1, 1, -1])) == {"oscc_accuracy": pytest.approx(2 / 3)}
    torch = pytest.importorskip("torch")
    from torchmetrics.classification import MulticlassAccuracy

    rng = np.random.default_rng(0)
    logits = rng.integers(0, 3, size=(200, 2)).astype(np.float32)
    labels = rng.integers(-1, 2, size=200)
    reference = MulticlassAccuracy(num_classes=2, average="micro", ignore_index=-1)
    reference(torch.from_numpy(logits), torch.from_numpy(labels))
    assert oscc_metrics(logits, labels)["oscc_accuracy"] == pytest.approx(
        float(reference.compute()), abs=1e-6
    )


def test_pnr_by_hand():
    logits = np.full((2, 16), -5.0)
    logits[0, 5] = 2.0  # window 100..260: 160 / 16 * 5 = 50 frames; truth 190 - 100 = 90 -> 40 / 30 s
    logits[1, 1] = 1.0  # window 0..240: 15 frames; truth 45 -> 30 / 30 = 1 s
    out = pnr_metrics(logits, [100, 0], [260, 240], [190.0, 45.0])
    assert out == {"pnr_error_s": pytest.approx((40 / 30 + 1.0) / 2)}
    # float32 sigmoids of 20 and 30 are both exactly 1: the first candidate (3) wins, not the larger logit
    saturated = np.zeros((1, 16))
    saturated[0, 3], saturated[0, 7] = 20.0, 30.0
    assert pnr_metrics(saturated, [0], [160], [30.0])["pnr_error_s"] == pytest.approx(0.0)  # 10 * 3 frames
    assert pnr_metrics(saturated, [0], [160], [30.0], fps=15)["pnr_error_s"] == pytest.approx(0.0)
    assert math.isnan(pnr_metrics(np.zeros((0, 16)), [], [], [])["pnr_error_s"])


def test_pnr_matches_the_released_meter_loop():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    n = 40
    logits = (rng.normal(size=(n, 16)) * 4).astype(np.float32)
    logits[::5, 2] = 25.0  # saturated candidates that tie with the ones below
    logits[::5, 9] = 40.0
    start = rng.integers(0, 5000, size=n)
    end = start + rng.integers(150, 250, size=n)
    pnr = (start + rng.integers(0, 150, size=n)).astype(np.float32)
    # the release: node sigmoids, per graph argmax, (ef - sf) / 16 * idx on the collated tensors
    probs = torch.sigmoid(torch.from_numpy(logits.reshape(-1)))
    errors = []
    for preds, sf, ef, pf in zip(
        probs.split(16), torch.from_numpy(start), torch.from_numpy(end), torch.from_numpy(pnr), strict=True
    ):
        mapped = ((ef - sf) / 16 * torch.argmax(preds).item()).item()
        errors.append(abs(mapped - (pf.item() - sf.item())) / 30)
    assert pnr_metrics(logits, start, end, pnr)["pnr_error_s"] == pytest.approx(np.mean(errors), rel=1e-12)


def test_lta_edit_distance_by_hand():
    labels = np.array([[1, 2, 3], [4, 4, 4], [-1, -1, -1]])
    samples = np.array(
        [
            [[1, 3, 3], [3, 2, 1], [2, 1, 3]],  # 1 substitution; 2 substitutions; swap = 2 for Levenshtein
            [[5, 5, 5], [4, 4, 4], [4, 5, 4]],  # 3; 0; 1
            [[0, 0, 0], [0, 0, 0], [0, 0, 0]],  # unlabelled: left out
        ]
    )
    out = lta_metrics_of(samples, labels)
    assert out["lta_verb_ed"] == pytest.approx((1 / 3 + 0) / 2)
    # Levenshtein, not Damerau: a transposition costs 2
    assert lta_metrics_of(samples[:1, 2:], labels[:1])["lta_verb_ed"] == pytest.approx(2 / 3)
    # noun sequences scored the same way, separately
    assert out["lta_noun_ed"] == pytest.approx(out["lta_verb_ed"])


def lta_metrics_of(samples, labels):
    """Verb and noun sections alike."""
    return lta_metrics(samples, samples, labels, labels)


def test_lta_matches_the_released_meter_on_node_level_samples():
    import editdistance

    rng = np.random.default_rng(5)
    graphs, inputs, horizon, k = 6, 2, 20, 5
    # the release samples K labels per node: (graphs * 22, K); the 2 input nodes carry label -1
    node_samples = rng.integers(0, 4, size=(graphs * (inputs + horizon), k))
    node_labels = rng.integers(0, 4, size=(graphs, inputs + horizon))
    node_labels[:, :inputs] = -1
    preds = node_samples.reshape(-1, inputs + horizon, k)[:, inputs:]
    labels = node_labels.reshape(-1, inputs + horizon)[:, inputs:]
    released = np.mean(
        [min(editdistance.eval(preds[n, :, j], labels[n]) / horizon for j in range(k)) for n in range(graphs)]
    )
    # the predictions file stores (N, K, Z)
    out = lta_metrics_of(preds.transpose(0, 2, 1), labels)
    assert out["lta_verb_ed"] == pytest.approx(released, rel=1e-12)


def full_arrays(rng=None):
    """Every section, 4 rows each, with a deterministic layout."""
    rng = rng or np.random.default_rng(0)
    return {
        "ar_uid": np.array(["c_1", "c_2", "c_3", "c_4"]),
        "ar_verb_logits": rng.normal(size=(4, 6)).astype(np.float32),
        "ar_noun_logits": rng.normal(size=(4, 8)).astype(np.float32),
        "ar_verb_label": np.array([0, 1, 5, -1]),
        "ar_noun_label": np.array([7, 1, 2, 3]),
        "oscc_uid": np.array(["o1", "o2", "o3", "o4"]),
        "oscc_logits": rng.normal(size=(4, 2)).astype(np.float32),
        "oscc_label": np.array([0, 1, 1, 0]),
        "lta_uid": np.array(["l1", "l2", "l3", "l4"]),
        "lta_verb_samples": rng.integers(0, 3, size=(4, 5, 20)),
        "lta_noun_samples": rng.integers(0, 3, size=(4, 5, 20)),
        "lta_verb_label": rng.integers(0, 3, size=(4, 20)),
        "lta_noun_label": rng.integers(0, 3, size=(4, 20)),
        "pnr_uid": np.array(["p1", "p2", "p3", "p4"]),
        "pnr_logits": rng.normal(size=(4, 16)).astype(np.float32),
        "pnr_start_frame": np.array([0.0, 30, 60, 90]),
        "pnr_end_frame": np.array([240.0, 270, 300, 330]),
        "pnr_frame": np.array([120.0, 100, 200, 95]),
    }


def test_predictions_file_round_trip_and_cli(tmp_path, capsys):
    arrays = full_arrays()
    path = write_predictions(tmp_path / "run" / "predictions.npz", arrays)
    stored = read_predictions(path)
    assert str(stored["task"]) == "backpack" and str(stored["version"]) == PREDICTIONS_VERSION
    assert stored["tasks"].tolist() == ["ar", "lta", "oscc", "pnr"]
    assert stored["ar_verb_label"].dtype == np.int64 and stored["pnr_logits"].dtype == np.float32
    expected = metrics_from_arrays(arrays)
    assert len(expected) == 6 + 2 + 1 + 1
    assert score_predictions_file(path) == pytest.approx(expected)
    assert main([str(path), "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == pytest.approx(expected)
    assert main([str(path)]) == 0
    printed = capsys.readouterr().out
    assert "ar_verb_top1" in printed and "pnr_error_s" in printed and "lta: 4 samples" in printed
    only_oscc = write_predictions(tmp_path / "oscc.npz", {k: v for k, v in arrays.items() if "oscc" in k})
    assert set(score_predictions_file(only_oscc)) == {"oscc_accuracy"}


def test_predictions_file_errors_name_the_file(tmp_path):
    arrays = full_arrays()
    path = write_predictions(tmp_path / "predictions.npz", arrays)
    with np.load(path) as data:
        content = {k: data[k] for k in data.files}
    old = tmp_path / "old.npz"
    np.savez(old, **{**content, "version": np.array("egolab-backpack-0")})
    with pytest.raises(ValueError, match=r"old\.npz: expected version 'egolab-backpack-1'"):
        score_predictions_file(old)
    with pytest.raises(SystemExit):  # the CLI reports it as a usage error
        main([str(old)])
    short = tmp_path / "short.npz"
    np.savez(short, **{**content, "ar_uid": content["ar_uid"][:3]})
    with pytest.raises(ValueError, match=r"short\.npz: ar arrays disagree on the number of rows"):
        read_predictions(short)
    other = tmp_path / "other.npz"
    np.savez(other, **{**content, "task": np.array("anticipation")})
    with pytest.raises(ValueError, match=r"other\.npz: not a backpack predictions file"):
        read_predictions(other)
    with pytest.raises(ValueError, match="lta section is missing"):
        write_predictions(tmp_path / "x.npz", {k: v for k, v in arrays.items() if k != "lta_noun_label"})
    with pytest.raises(ValueError, match="disagree on Z"):
        metrics_from_arrays({**arrays, "lta_verb_label": arrays["lta_verb_label"][:, :10]})
    with pytest.raises(ValueError, match="no task section"):
        write_predictions(tmp_path / "x.npz", {})
    with pytest.raises(FileNotFoundError, match="not found"):
        read_predictions(tmp_path / "missing.npz")


def test_import_does_not_load_torch():
    code = "import egolab.metrics.backpack, sys; assert 'torch' not in sys.modules, 'torch imported'"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
