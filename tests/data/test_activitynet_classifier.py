"""ActivityNet external classifier fusion: hand-worked scores and labels, file checks, Hydra experiment."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.data.activitynet_classifier import (
    ClassifierFusion,
    ClassifierFusionPostProcessor,
    fuse_video,
    label_ids_from_json,
    load_class_scores,
)
from egolab.launch.txtfile import read_experiment
from egolab.metrics.localization import DetectionMAP
from egolab.models.temporal_constraints import ConstrainedPostProcessor
from egolab.paths import CONF_DIR, REPO_ROOT

EXPERIMENT = REPO_ROOT / "expts" / "localization" / "anet_tsp_classifier.txt"


def proposals(video_id: str = "vid1") -> dict:
    """Class-agnostic proposals as the post-processor returns them (labels all 0)."""
    return {
        "video_id": video_id,
        "segments": torch.tensor([[0.0, 1.0], [2.0, 3.0], [4.0, 5.0]], dtype=torch.float64),
        "scores": torch.tensor([0.5, 0.9, 0.1]),
        "labels": torch.zeros(3, dtype=torch.int64),
    }


def write_files(root: Path, with_names: bool = True) -> tuple[Path, Path]:
    """Annotation json (run 0, swim 1, cook 2) and a score file whose columns are swim, cook, run."""
    anns = [
        {"label": "cook", "segment": [2.0, 3.0], "label_id": 2},
        {"label": "run", "segment": [0, 1], "label_id": 0},
    ]
    database = {
        "vid1": {"subset": "validation", "duration": 10.0, "annotations": anns[:1]},
        "vid2": {
            "subset": "training",
            "duration": 10.0,
            "annotations": [*anns[1:], {**anns[1], "label": "swim", "label_id": 1}],
        },
    }
    json_file = root / "anet.json"
    json_file.write_text(json.dumps({"version": "1.3", "database": database}))
    scores = {"results": {"vid1": [0.2, 0.7, 0.1], "vid2": [0.3, 0.3, 0.4]}, "version": "CUHK"}
    if with_names:
        scores["class"] = ["swim", "cook", "run"]
    score_file = root / "cuhk.json"
    score_file.write_text(json.dumps(scores))
    return json_file, score_file


def rows(pred: dict) -> list:
    return [
        (s, e, round(p, 6), c)
        for (s, e), p, c in zip(pred["segments"].tolist(), pred["scores"].tolist(), pred["labels"].tolist())
    ]


def test_label_ids_and_score_columns_by_name(tmp_path):
    json_file, score_file = write_files(tmp_path)
    ids = label_ids_from_json(json_file)
    assert ids == {"cook": 2, "run": 0, "swim": 1}
    table = load_class_scores(score_file, ids)
    assert table.label_ids.tolist() == [1, 2, 0]  # swim, cook, run
    np.testing.assert_allclose(table.scores["vid1"], [0.2, 0.7, 0.1])
    (tmp_path / "bare").mkdir()
    _, bare = write_files(tmp_path / "bare", with_names=False)
    assert load_class_scores(bare, ids).label_ids.tolist() == [0, 1, 2]  # the release's column = label id


def test_fuse_video_by_hand():
    # top-2 classes of vid1: column 1 (0.7 -> label 2), column 0 (0.2 -> label 1); top-2 proposals:
    # [2, 3] (0.9) and [0, 1] (0.5); sqrt(0.7 * 0.9), sqrt(0.7 * 0.5), sqrt(0.2 * 0.9), sqrt(0.2 * 0.5)
    class_scores, label_ids = np.array([0.2, 0.7, 0.1]), np.array([1, 2, 0])
    out = fuse_video(proposals(), class_scores, label_ids, topk=2, num_proposals=2)
    expected = [
        (2, 3, math.sqrt(0.63), 2),
        (0, 1, math.sqrt(0.35), 2),
        (2, 3, math.sqrt(0.18), 1),
        (0, 1, math.sqrt(0.1), 1),
    ]
    assert rows(out) == [(s, e, round(p, 6), c) for s, e, p, c in expected]
    assert out["video_id"] == "vid1" and out["scores"].dtype == torch.float32
    assert out["segments"].dtype == torch.float64 and out["labels"].dtype == torch.int64
    product = fuse_video(proposals(), class_scores, label_ids, topk=2, num_proposals=2, fusion="product")
    assert [round(p, 6) for p in product["scores"].tolist()] == [0.63, 0.35, 0.18, 0.1]
    assert product["labels"].tolist() == out["labels"].tolist()  # same ranking as sqrt
    assert len(fuse_video(proposals(), class_scores, label_ids, topk=5)["labels"]) == 9  # 3 classes x 3


def test_classifier_fusion_reads_on_first_use(tmp_path):
    json_file, score_file = write_files(tmp_path)
    fusion = ClassifierFusion(tmp_path / "absent.json", json_file=json_file)  # built without the file
    with pytest.raises(ValueError, match=r"absent\.json: cannot read the classifier score json"):
        fusion(proposals())
    fusion = ClassifierFusion(score_file, json_file=json_file, num_proposals=1)
    out = fusion.apply([proposals("vid1"), proposals("vid2")])
    assert rows(out[0]) == [(2, 3, round(math.sqrt(0.63), 6), 2), (2, 3, round(math.sqrt(0.18), 6), 1)]
    # vid2 [0.3, 0.3, 0.4]: run (0.4 -> id 0), then swim (first of the tie -> id 1)
    assert out[1]["labels"].tolist() == [0, 1]
    by_names = ClassifierFusion(score_file, label_names=["cook", "run", "swim"], num_proposals=1)
    assert by_names(proposals())["labels"].tolist() == [0, 2]
    with pytest.raises(ValueError, match=r"cuhk\.json: no class scores for video 'vid9'"):
        fusion(proposals("vid9"))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            {"results": {"vid1": [0.1, 0.2, 0.3]}, "class": ["swim", "cook", "fly"]},
            r"not labels of the dataset, e\.g\. \['fly'\]",
        ),
        (
            {"results": {"vid1": [0.1, 0.2]}, "class": ["swim", "cook", "run"]},
            r"video 'vid1': 2 class scores, expected 3",
        ),
        (
            {"results": {"vid1": [0.1, -0.2, 0.3]}, "class": ["swim", "cook", "run"]},
            r"video 'vid1': .* finite and >= 0",
        ),
        ({"scores": {}}, r"expected \{'results'"),
        ({"results": {"vid1": [1]}, "class": "swim"}, "'class' must be a list"),
    ],
)
def test_bad_score_file_names_file_and_video(tmp_path, content, message):
    path = tmp_path / "cls.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ValueError, match=r"cls\.json: .*" + message):
        load_class_scores(path, {"swim": 1, "cook": 2, "run": 0})


def test_invalid_options_and_json(tmp_path):
    with pytest.raises(ValueError, match="exactly one of json_file"):
        ClassifierFusion("x.json")
    with pytest.raises(ValueError, match="fusion must be one of"):
        ClassifierFusion("x.json", label_names=["a"], fusion="mean")
    path = tmp_path / "a.json"
    path.write_text(
        json.dumps(
            {
                "database": {
                    "v": {"annotations": [{"label": "a", "label_id": 0}, {"label": "a", "label_id": 1}]}
                }
            }
        )
    )
    with pytest.raises(ValueError, match=r"a\.json: video 'v', annotation 1: label 'a' / label_id 1"):
        label_ids_from_json(path)


def test_wrappers_flag_labelled_detections():
    def inner(outputs, batch):
        return [proposals()]

    fusion = ClassifierFusionPostProcessor(inner, ClassifierFusion("unused.json", label_names=["a"]))
    assert fusion.assigns_labels is True
    assert ConstrainedPostProcessor(fusion, {}).assigns_labels is True  # constraints after fusion keep it
    assert ConstrainedPostProcessor(inner, {}).assigns_labels is False


def anet_outputs() -> tuple[dict, dict]:
    """One ActivityNet video "vid1" with two proposals, in seconds: [2, 3] (p 0.99) and [6, 8] (p 0.5)."""
    logits = torch.full((1, 8, 1), -20.0)
    logits[0, 2, 0], logits[0, 7, 0] = 4.6, 0.0
    offsets = torch.zeros(1, 8, 2)
    offsets[0, 2], offsets[0, 7] = torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])
    outputs = {
        "cls_logits": [logits],
        "offsets": [offsets],
        "masks": [torch.ones(1, 8, dtype=torch.bool)],
        "points": [torch.tensor([[float(t), 0, 1e4, 1] for t in range(8)])],
    }
    batch = {  # seconds = grid (fps = feat_stride, no clip offset)
        "video_ids": ["vid1"],
        "fps": torch.tensor([1.0], dtype=torch.float64),
        "duration": torch.tensor([10.0], dtype=torch.float64),
        "feat_stride": torch.tensor([1.0], dtype=torch.float64),
        "feat_num_frames": torch.tensor([0.0], dtype=torch.float64),
    }
    return outputs, batch


def test_experiment_file_builds_fusion_and_the_metric_scores_per_class(tmp_path):
    folder = tmp_path / "anet_1.3" / "annotations"
    folder.mkdir(parents=True)
    json_file, score_file = write_files(folder)
    json_file.rename(folder / "anet1.3_tsp_filtered.json")
    score_file.rename(folder / "cuhk_val_simp_share.json")
    overrides = [line.text for line in read_experiment(EXPERIMENT)]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.data_root={tmp_path}"])
    post = instantiate(cfg.task.postprocess)
    assert isinstance(post, ClassifierFusionPostProcessor) and post.assigns_labels
    assert (post.fusion.topk, post.fusion.num_proposals, post.fusion.fusion) == (2, 200, "sqrt")
    assert post.postprocess.multiclass_nms is False and post.postprocess.max_seg_num == 100
    (pred,) = post(*anet_outputs())
    # cook (0.7, id 2) then swim (0.2, id 1), each over both proposals
    assert pred["labels"].tolist() == [2, 2, 1, 1]
    torch.testing.assert_close(
        pred["segments"][:2], torch.tensor([[2.0, 3.0], [6.0, 8.0]], dtype=torch.float64)
    )
    # scored per class against the true label ids: the GT "cook" [2, 3] is found first -> AP 1
    metric = DetectionMAP(tiou_thresholds=[0.5, 0.95])
    metric.update(
        [pred], [{"video_id": "vid1", "segments": torch.tensor([[2.0, 3.0]]), "labels": torch.tensor([2])}]
    )
    assert float(metric.compute()["average_mAP"]) == pytest.approx(1.0)
