"""SkillTask: HF-Trainer parameter groups, clip averaging, a short fit + test on generated takes with
LoRA and CrossViewFusion whose predictions.json re-scores to the logged metrics (the paper's population
too), the recipe of the skill experiments, and checkpoints holding only the trained state: exact resume,
`-t`-style reload onto a rebuilt base, refusal of another base, full fine-tuning round trips."""

import hashlib
import json
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from lightning.pytorch.callbacks import ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader

from egolab.checkpoints import FROZEN_SHA256, TRAINED_KEYS, frozen_fingerprint, trained_keys
from egolab.data.demo_skill import make_demo_skill
from egolab.data.skill import LABEL_NAMES, SkillDataModule, SkillDataset, read_annotation_jsonl
from egolab.launch.txtfile import read_experiment
from egolab.metrics.skill import score_predictions_file
from egolab.models.skillformer import CrossViewFusion, MeanViewFusion, SkillFormer, TimesformerBackbone
from egolab.paths import CONF_DIR
from egolab.tasks.skill import SkillTask, decay_parameter_names

EXPERIMENTS = Path(__file__).resolve().parents[2] / "expts" / "skill"

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


# CrossViewFusion + classifier parameters, as the HF Trainer splits them: decay on all but biases and
# LayerNorm weights, so on the calibration scalars `mean` and `std` (plain parameters) too
HEAD_DECAY = {
    "fusion.mean",
    "fusion.std",
    "fusion.attention.in_proj_weight",
    "fusion.attention.out_proj.weight",
    "fusion.project.0.weight",
    "fusion.gate.weight",
    "fusion.out.0.weight",
    "classifier.weight",
}
HEAD_NO_DECAY = {
    "fusion.view_norm.weight",
    "fusion.view_norm.bias",
    "fusion.attention.in_proj_bias",
    "fusion.attention.out_proj.bias",
    "fusion.project.0.bias",
    "fusion.project.2.weight",  # LayerNorm
    "fusion.project.2.bias",
    "fusion.gate.bias",
    "fusion.out.0.bias",
    "fusion.out.1.weight",  # LayerNorm
    "fusion.out.1.bias",
    "classifier.bias",
}


def test_optimizer_groups_split_weight_decay_like_the_hf_trainer():
    task = SkillTask(tiny_skillformer(), adamw, weight_decay=0.01, warmup_ratio=0.1, load_pretrained=False)
    task.trainer = SimpleNamespace(estimated_stepping_batches=40)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    decay, no_decay = optimizer.param_groups
    assert decay["weight_decay"] == 0.01 and no_decay["weight_decay"] == 0.0
    names = {id(p): n for n, p in task.model.named_parameters()}
    trainable = {n for n, p in task.model.named_parameters() if p.requires_grad}
    lora = {n for n in trainable if "lora_" in n}
    assert len(lora) == 2 * 7 * TINY["num_hidden_layers"]
    assert {names[id(p)] for p in decay["params"]} == HEAD_DECAY | lora
    assert {names[id(p)] for p in no_decay["params"]} == HEAD_NO_DECAY
    assert trainable == HEAD_DECAY | HEAD_NO_DECAY | lora  # nothing frozen enters the optimizer
    assert config["lr_scheduler"]["interval"] == "step"
    assert scheduler.lr_lambdas[0](2) == pytest.approx(0.5)  # warmup: ceil(0.1 * 40) = 4 steps


def test_decay_names_match_the_hf_trainer_on_a_fully_trained_backbone():
    """Full fine-tuning: the embeddings (cls token, position and time tables, patch conv) decay, the
    backbone's LayerNorms and biases do not; the same names as transformers' Trainer picks."""
    from transformers import Trainer

    model = SkillFormer(TimesformerBackbone(4, TINY), CrossViewFusion(32, 40, num_heads=4))
    decay = decay_parameter_names(model)
    names = {n for n, _ in model.named_parameters()}  # HF also lists MultiheadAttention's unset (None) q/k/v
    assert set(Trainer.get_decay_parameter_names(None, model)) & names == decay
    embeddings = {"cls_token", "position_embeddings", "time_embeddings", "patch_embeddings.projection.weight"}
    assert {f"backbone.encoder.embeddings.{n}" for n in embeddings} <= decay
    assert "backbone.encoder.layernorm.weight" not in decay and "backbone.encoder.layernorm.bias" not in decay
    assert "backbone.encoder.encoder.layer.0.layernorm_before.weight" not in decay
    assert decay & (HEAD_DECAY | HEAD_NO_DECAY) == HEAD_DECAY


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
        "take_names": ["take_a", "take_b"],
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
    assert first["take_name"] == "take_a"


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
    # the paper's way on top: a release-format population listing a basketball take twice and a rock
    # climbing take (bucketed "music" by the release's path rule: no "bouldering" in its name) once
    takes = read_annotation_jsonl(tmp_path / "demo" / "annotations" / "skill_test.jsonl")
    basketball = next(t for t in takes if t.scenario == "Basketball")
    climbing = next(t for t in takes if t.scenario == "Rock Climbing")
    population = tmp_path / "population.jsonl"
    population.write_text(
        "".join(
            json.dumps({"video_paths": list(t.video_paths), "proficiency_level": LABEL_NAMES[t.label]}) + "\n"
            for t in (basketball, climbing, basketball)
        )
    )
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):  # read at setup, before any training
        SkillTask(tiny_skillformer(), adamw, paper_population=tmp_path / "missing.jsonl").setup("fit")
    task = SkillTask(tiny_skillformer(), adamw, load_pretrained=False, paper_population=population)
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
    assert "val/accuracy" in trainer.callback_metrics and "val/paper_accuracy" not in trainer.callback_metrics
    metrics = trainer.test(task, datamodule=data, verbose=False)[0]
    paper = {"test/paper_accuracy", "test/paper_accuracy_basketball", "test/paper_accuracy_music"}
    assert (
        set(metrics) == {"test/accuracy", "test/accuracy_basketball", "test/accuracy_rock_climbing"} | paper
    )
    records = {r["take_uid"]: r for r in task.test_records}
    right = {
        t.take_uid: float(max(range(4), key=records[t.take_uid]["probs"].__getitem__) == t.label)
        for t in (basketball, climbing)
    }
    assert metrics["test/paper_accuracy"] == pytest.approx(
        (2 * right[basketball.take_uid] + right[climbing.take_uid]) / 3
    )
    assert metrics["test/paper_accuracy_basketball"] == right[basketball.take_uid]
    assert metrics["test/paper_accuracy_music"] == right[climbing.take_uid]

    path = task.write_predictions(tmp_path)
    payload = json.loads(path.read_text())
    assert payload["version"] == "egolab-skill-1" and payload["task"] == "skill"
    assert payload["label_names"] == list(LABEL_NAMES)
    assert len(payload["results"]) == 8
    entry = next(iter(payload["results"].values()))
    assert set(entry) == {"take_name", "probs", "logits", "pred", "label", "scenario"}
    assert sum(entry["probs"]) == pytest.approx(1.0, abs=1e-5) and len(entry["logits"]) == 4
    assert entry["pred"] == max(range(4), key=entry["probs"].__getitem__)
    rescored = score_predictions_file(path, population)
    assert rescored == pytest.approx({k.removeprefix("test/"): v for k, v in metrics.items()}, abs=1e-6)
    assert (tmp_path / "confusion_matrix.png").read_bytes()[:4] == b"\x89PNG"


def overrides(path: Path) -> list[str]:
    return [line.text for line in read_experiment(path)]


@pytest.mark.parametrize("setting", ["ego", "exos", "egoexos"])
def test_skill_experiments_clip_gradients_and_release_frozen_is_the_setting_frozen(setting):
    """Every skill experiment clips gradients at norm 1.0 (the HF Trainer default); release_frozen_<setting>
    is <setting> with the backbone frozen (LoRA included) and the paper's population scored."""
    for path in EXPERIMENTS.glob("*.txt"):
        assert "trainer.gradient_clip_val=1.0" in overrides(path), path
    paper, frozen = (
        overrides(EXPERIMENTS / f"{setting}.txt"),
        overrides(EXPERIMENTS / f"release_frozen_{setting}.txt"),
    )
    population = "task.paper_population=${data.root}/annotations/paper_eval_population_test.jsonl"
    assert sorted(frozen) == sorted([*paper, "model.backbone.freeze=true", population])
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*frozen, "paths.data_root=/data"])
    assert cfg.trainer.gradient_clip_val == 1.0 and cfg.model.backbone.freeze
    assert cfg.task.paper_population == "/data/egoexo4d/annotations/paper_eval_population_test.jsonl"
    assert cfg.model.backbone.lora.r == {"ego": 32, "exos": 48, "egoexos": 64}[setting]


# ----------------------------------------------------------------------------- trained-only checkpoints
LORA = {"r": 2, "alpha": 4, "dropout": 0.0}


def seeded_skillformer(
    seed: int, lora: dict | None = LORA, freeze: bool = False, pretrained: str | None = None
) -> SkillFormer:
    """A tiny SkillFormer (views averaged, as the demo) whose random base is fixed by ``seed``."""
    torch.manual_seed(seed)
    backbone = TimesformerBackbone(4, TINY, pretrained=pretrained, lora=lora, freeze=freeze)
    return SkillFormer(backbone, MeanViewFusion())


def random_takes(batches: int, clips: int | None = None) -> DataLoader:
    """Fixed batches of 2 random 2-view takes: training ones, or evaluation ones of ``clips`` clips."""
    generator = torch.Generator().manual_seed(1)
    shape = (2, 2, 4, 3, 16, 16) if clips is None else (2, clips, 2, 4, 3, 16, 16)
    items = [
        {
            "pixel_values": torch.randn(shape, generator=generator),
            "labels": torch.randint(0, 4, (2,), generator=generator),
            "take_uids": [f"take_{i}_{j}" for j in range(2)],
            "take_names": [f"name_{i}_{j}" for j in range(2)],
            "scenarios": ["Basketball", "Cooking"],
        }
        for i in range(batches)
    ]
    return DataLoader(items, batch_size=None)


def cpu_trainer(tmp_path: Path, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**options, **kwargs})


def test_fingerprint_covers_the_frozen_weights_and_checkpoints_keep_buffers():
    model = seeded_skillformer(0)
    first = frozen_fingerprint(model)
    assert frozen_fingerprint(seeded_skillformer(0)) == first != frozen_fingerprint(seeded_skillformer(1))
    with torch.no_grad():
        model.classifier.weight.add_(1.0)  # trained: not part of it
    assert frozen_fingerprint(model) == first
    with torch.no_grad():
        model.backbone.encoder.get_base_model().embeddings.cls_token.add_(1.0)
    assert frozen_fingerprint(model) != first
    norm = nn.BatchNorm1d(3).requires_grad_(False)  # running statistics change in training: kept
    assert trained_keys(norm) == ["num_batches_tracked", "running_mean", "running_var"]


def test_lora_checkpoint_holds_the_trained_state_and_resumes_exactly(tmp_path, single_thread):
    """Two epochs straight, against one epoch then a resume from its checkpoint in a new task."""
    task = SkillTask(seeded_skillformer(0), adamw, load_pretrained=False)
    every_epoch = ModelCheckpoint(dirpath=tmp_path, filename="{epoch}", save_top_k=-1)
    straight = cpu_trainer(tmp_path, max_epochs=2, enable_checkpointing=True, callbacks=[every_epoch])
    straight.fit(task, train_dataloaders=random_takes(3))
    path = tmp_path / "epoch=0.ckpt"
    saved = torch.load(path, weights_only=True)
    trained = {f"model.{n}" for n, p in task.model.named_parameters() if p.requires_grad}
    assert trained == {k for k in task.state_dict() if "lora_" in k or k.startswith("model.classifier.")}
    assert set(saved["state_dict"]) == trained and saved[TRAINED_KEYS] == sorted(trained)
    assert saved[FROZEN_SHA256] == task.frozen_sha256 == frozen_fingerprint(task)
    kept = sum(v.numel() for v in saved["state_dict"].values())
    assert kept < sum(v.numel() for v in task.state_dict().values()) / 10
    assert len(saved["optimizer_states"][0]["state"]) == len(trained)

    resumed = SkillTask(seeded_skillformer(0), adamw, load_pretrained=False)
    again = cpu_trainer(tmp_path, max_epochs=2)
    again.fit(resumed, train_dataloaders=random_takes(3), ckpt_path=str(path))
    assert again.global_step == straight.global_step == 6
    for (name, value), other in zip(task.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(value, other), name
    first, second = straight.optimizers[0].state_dict(), again.optimizers[0].state_dict()
    assert first["param_groups"] == second["param_groups"]
    torch.testing.assert_close(first["state"], second["state"], rtol=0, atol=0)


def test_test_style_load_rebuilds_the_base_and_refuses_another_one(tmp_path, single_thread):
    task = SkillTask(seeded_skillformer(0), adamw, load_pretrained=False)
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, train_dataloaders=random_takes(3))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    takes = random_takes(2, clips=2)
    trainer.test(task, dataloaders=takes, verbose=False)
    logits = [r["logits"] for r in task.test_records]

    fresh = SkillTask(seeded_skillformer(0), adamw, load_pretrained=False)
    cpu_trainer(tmp_path).test(fresh, dataloaders=takes, ckpt_path=str(path), verbose=False)
    assert [r["logits"] for r in fresh.test_records] == logits
    untrained = SkillTask(seeded_skillformer(0), adamw, load_pretrained=False)
    cpu_trainer(tmp_path).test(untrained, dataloaders=takes, verbose=False)
    assert [r["logits"] for r in untrained.test_records] != logits

    other_base = SkillTask(seeded_skillformer(1), adamw, load_pretrained=False)
    with pytest.raises(ValueError, match=r"last\.ckpt was trained on other frozen weights"):
        cpu_trainer(tmp_path).test(other_base, dataloaders=takes, ckpt_path=str(path))
    frozen_lora = SkillTask(seeded_skillformer(0, freeze=True), adamw, load_pretrained=False)
    with pytest.raises(ValueError, match=r"last\.ckpt does not fit this model.*14 trained in the checkpoint"):
        cpu_trainer(tmp_path).test(frozen_lora, dataloaders=takes, ckpt_path=str(path))


def test_full_fine_tuning_checkpoint_holds_everything_and_round_trips(tmp_path, single_thread):
    task = SkillTask(seeded_skillformer(0, lora=None), adamw, load_pretrained=False)
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, train_dataloaders=random_takes(3))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=True)
    assert sorted(saved["state_dict"]) == saved[TRAINED_KEYS] == sorted(task.state_dict())
    assert saved[FROZEN_SHA256] == hashlib.sha256().hexdigest()  # nothing frozen
    takes = random_takes(2, clips=2)
    trainer.test(task, dataloaders=takes, verbose=False)

    other_seed = SkillTask(seeded_skillformer(1, lora=None), adamw, load_pretrained=False)  # all restored
    cpu_trainer(tmp_path).test(other_seed, dataloaders=takes, ckpt_path=str(path), verbose=False)
    assert [r["logits"] for r in other_seed.test_records] == [r["logits"] for r in task.test_records]


@pytest.mark.parametrize("lora", [LORA, None], ids=["lora", "full"])
def test_test_style_load_rebuilds_the_base_from_its_pretrained_source(tmp_path, lora, single_thread):
    """The base is loaded at the first setup of any stage (so `-t` has it: another seed's random init is
    overwritten) and only then (a test after fit keeps the fine-tuned weights)."""
    from transformers import TimesformerConfig, TimesformerModel

    torch.manual_seed(2)
    TimesformerModel(TimesformerConfig(**TINY, num_frames=4)).save_pretrained(tmp_path / "hub")
    pretrained = str(tmp_path / "hub")
    task = SkillTask(seeded_skillformer(0, lora=lora, pretrained=pretrained), adamw)
    trainer = cpu_trainer(tmp_path, max_epochs=1)
    trainer.fit(task, train_dataloaders=random_takes(3))
    path = tmp_path / "last.ckpt"
    trainer.save_checkpoint(path)
    takes = random_takes(2, clips=2)
    trainer.test(task, dataloaders=takes, verbose=False)

    fresh = SkillTask(seeded_skillformer(1, lora=lora, pretrained=pretrained), adamw)
    cpu_trainer(tmp_path).test(fresh, dataloaders=takes, ckpt_path=str(path), verbose=False)
    assert fresh.frozen_sha256 == task.frozen_sha256
    assert [r["logits"] for r in fresh.test_records] == [r["logits"] for r in task.test_records]
