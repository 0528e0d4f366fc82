"""SkillTask: parameter groups, clip averaging, and a short fit + test on generated takes
with LoRA and CrossViewFusion whose predictions.json re-scores to the logged metrics."""

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch import nn

from egolab.data.demo_skill import make_demo_skill
from egolab.data.skill import LABEL_NAMES, SkillDataModule, SkillDataset
from egolab.metrics.skill import score_predictions_file
from egolab.models.skillformer import CrossViewFusion, SkillFormer, TimesformerBackbone
from egolab.tasks.skill import SkillTask

TINY = dict(
    image_size=16,
    patch_size=8,
    hidden_size=32,
    num_hidden_layers=1,
    num_attention_heads=4,
    intermediate_size=48,
)


def tiny_skillformer() -> SkillFormer:
    backbone = TimesformerBackbone(4, TINY, lora={"r": 2, "alpha": 4, "dropout": 0.0})
    return SkillFormer(backbone, CrossViewFusion(32, 40, num_heads=4))


def adamw(params):
    return torch.optim.AdamW(params, lr=1e-3)


def test_optimizer_has_trainable_parameters_only_and_decays_matrices_only():
    task = SkillTask(tiny_skillformer(), adamw, weight_decay=0.01, warmup_ratio=0.1, load_pretrained=False)
    task.trainer = SimpleNamespace(estimated_stepping_batches=40)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    ids = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert ids == {id(p) for p in task.model.parameters() if p.requires_grad}
    assert all(p.ndim >= 2 for p in decay["params"]) and all(p.ndim < 2 for p in no_decay["params"])
    assert any(p is task.model.fusion.std for p in no_decay["params"])
    assert config["lr_scheduler"]["interval"] == "step"
    assert scheduler.lr_lambdas[0](2) == pytest.approx(0.5)  # warmup: ceil(0.1 * 40) = 4 steps


class FixedLogits(nn.Module):
    """Logits read from the input: pixel_values[:, 0, 0, 0, 0, :4] (one row per clip)."""

    def forward(self, pixel_values):
        return pixel_values[:, 0, 0, 0, 0, :4]


def test_evaluation_averages_clip_probabilities_per_take():
    task = SkillTask(FixedLogits(), adamw, load_pretrained=False)
    pixels = torch.zeros(2, 2, 1, 1, 1, 1, 4)  # 2 takes x 2 clips
    pixels[0, 0, ..., :] = torch.tensor([2.0, 0.0, 0.0, 0.0])
    pixels[0, 1, ..., :] = torch.tensor([0.0, 4.0, 0.0, 0.0])
    batch = {
        "pixel_values": pixels,
        "labels": torch.tensor([1, -1]),
        "take_uids": ["a", "b"],
        "scenarios": ["X", "Y"],
    }
    task._eval_step(batch)
    first, second = task._eval_records
    expected = (
        torch.softmax(torch.tensor([2.0, 0, 0, 0]), 0) + torch.softmax(torch.tensor([0, 4.0, 0, 0]), 0)
    ) / 2
    assert first["probs"] == pytest.approx(expected.tolist())
    assert first["logits"] == pytest.approx([1.0, 2.0, 0.0, 0.0])
    assert first["label"] == 1 and second["label"] is None and second["probs"] == pytest.approx([0.25] * 4)


def test_fit_and_test_write_predictions_that_rescore_to_the_metrics(tmp_path):
    torch.manual_seed(0)
    make_demo_skill(tmp_path / "demo", num_takes={"train": 8, "val": 8, "test": 8}, num_frames=24)

    def factory(**kwargs):
        return SkillDataset(**kwargs, camera_indices=[0, 1], num_frames=4, shortest_edge=16, crop_size=16)

    data = SkillDataModule(
        tmp_path / "demo",
        factory,
        "annotations/skill_train.jsonl",
        "annotations/skill_val.jsonl",
        "annotations/skill_test.jsonl",
        batch_size=4,
        eval_batch_size=4,
    )
    task = SkillTask(tiny_skillformer(), adamw, load_pretrained=False)
    trainer = L.Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    before = (
        task.model.backbone.encoder.get_base_model().encoder.layer[0].output.dense.base_layer.weight.clone()
    )
    trainer.fit(task, datamodule=data)
    after = task.model.backbone.encoder.get_base_model().encoder.layer[0].output.dense.base_layer.weight
    assert torch.equal(before, after), "frozen backbone weights changed"
    assert "val/accuracy" in trainer.callback_metrics
    metrics = trainer.test(task, datamodule=data, verbose=False)[0]
    assert set(metrics) == {"test/accuracy", "test/accuracy_basketball", "test/accuracy_rock_climbing"}

    path = task.write_predictions(tmp_path)
    payload = json.loads(path.read_text())
    assert payload["version"] == "egolab-skill-1" and payload["task"] == "skill"
    assert payload["label_names"] == list(LABEL_NAMES)
    assert len(payload["results"]) == 8
    entry = next(iter(payload["results"].values()))
    assert set(entry) == {"probs", "logits", "pred", "label", "scenario"}
    assert sum(entry["probs"]) == pytest.approx(1.0, abs=1e-5) and len(entry["logits"]) == 4
    assert entry["pred"] == max(range(4), key=entry["probs"].__getitem__)
    rescored = score_predictions_file(path)
    assert rescored == pytest.approx({k.removeprefix("test/"): v for k, v in metrics.items()}, abs=1e-6)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"
