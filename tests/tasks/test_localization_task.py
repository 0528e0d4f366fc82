"""LocalizationTask: the LR schedule, the EMA update and evaluation against the dataset's ground truth."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch import nn

from egolab.metrics.localization import DetectionMAP
from egolab.paths import CONF_DIR
from egolab.tasks.localization import LocalizationTask


class _Linear(nn.Module):
    max_div_factor, max_seq_len = 1, 8

    def __init__(self):
        super().__init__()
        self.layer = nn.Linear(2, 2)
        self.register_buffer("count", torch.tensor(0))


def make_task(**kwargs):
    return LocalizationTask(
        model=_Linear(),
        criterion=nn.Identity(),
        postprocess=lambda outputs, batch: [],
        metric=DetectionMAP(tiou_thresholds=[0.5]),
        optimizer=lambda groups: torch.optim.SGD(groups, lr=1.0),
        **kwargs,
    )


def test_warmup_then_cosine_per_step():
    task = make_task(warmup_epochs=1, eta_min=0.0, weight_decay=0.0)
    task._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
    config = task.configure_optimizers()
    optimizer, scheduler = config["optimizer"], config["lr_scheduler"]["scheduler"]
    assert config["lr_scheduler"]["interval"] == "step"
    lrs = []
    for _ in range(10):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    # 5 warmup steps from 0 rising by 1 / (5 - 1) as the release's (the base rate at step 4), then a half
    # cosine over the 5 remaining: 1, cos terms, ...
    np.testing.assert_allclose(lrs[:6], [0, 0.25, 0.5, 0.75, 1.0, 1.0], atol=1e-9)
    np.testing.assert_allclose(lrs[6:], [0.5 * (1 + np.cos(np.pi * k / 5)) for k in range(1, 5)], atol=1e-9)


def test_lr_scale_from_the_recipe_multiplies_the_configured_rate():
    task = make_task(warmup_epochs=0, weight_decay=0.0)
    task._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
    assert task.configure_optimizers()["optimizer"].param_groups[0]["lr"] == pytest.approx(1.0)
    task.lr_scale = 8.0  # what egolab.recipe sets for the linear rule, e.g. 4 processes x 2 micro-batches
    assert task.configure_optimizers()["optimizer"].param_groups[0]["lr"] == pytest.approx(8.0)


class _Steps(LocalizationTask):
    """A LocalizationTask trained on plain tensors, counting its EMA updates."""

    updates = 0

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        return self.model.layer(batch).sum()

    def _update_ema(self) -> None:
        self.updates += 1
        super()._update_ema()

    def setup(self, stage: str) -> None:
        """No datamodule to wire."""


def test_ema_updates_once_per_optimizer_step_under_accumulation():
    """7 batches, 3 per step: optimizer steps after batches 2, 5 and the epoch's last one (6)."""
    import lightning as L

    task = _Steps(
        model=_Linear(),
        criterion=nn.Identity(),
        postprocess=lambda outputs, batch: [],
        metric=DetectionMAP(tiou_thresholds=[0.5]),
        optimizer=lambda groups: torch.optim.SGD(groups, lr=0.1),
        warmup_epochs=0,
    )
    trainer = L.Trainer(
        max_epochs=1,
        accumulate_grad_batches=3,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, torch.utils.data.DataLoader(torch.randn(7, 2), batch_size=1))
    assert task.updates == 3 == trainer.global_step


def test_ema_update_of_weights_and_buffers():
    task = make_task(ema_decay=0.9)
    with torch.no_grad():
        task.model.layer.weight.fill_(1.0)
        task.ema_model.layer.weight.fill_(0.0)
        task.model.count.fill_(7)
    task._update_ema()
    torch.testing.assert_close(task.ema_model.layer.weight, torch.full((2, 2), 0.1))
    assert int(task.ema_model.count) == 7  # integer buffers are copied


@pytest.mark.parametrize("class_agnostic", [False, True])
def test_evaluate_uses_ground_truth_and_scores_class_agnostic_proposals(class_agnostic):
    task = make_task()
    truth = [{"video_id": "v", "segments": np.array([[1.0, 3.0]]), "labels": np.array([4])}]
    dataset = SimpleNamespace(ground_truth=lambda: truth, class_agnostic=class_agnostic)
    task._trainer = SimpleNamespace(world_size=1)
    logged = {}
    task.log = lambda name, value, **kwargs: logged.__setitem__(name, value)
    pred_label = 0 if class_agnostic else 4
    pred = {
        "video_id": "v",
        "segments": np.array([[1.0, 3.0]]),
        "scores": np.array([0.9]),
        "labels": np.array([pred_label]),
    }
    task._eval_preds = [pred, dict(pred)]  # the same video twice (DistributedSampler padding)
    preds = task._evaluate("val", dataset)
    assert len(preds) == 1
    assert logged["val/average_mAP"] == pytest.approx(1.0)


def test_classes_without_training_annotations_get_the_empty_bias():
    from hydra.utils import instantiate
    from omegaconf import OmegaConf

    cfg = OmegaConf.load(CONF_DIR / "model" / "actionformer" / "base.yaml")
    model = instantiate(
        cfg,
        input_dim=8,
        num_classes=4,
        max_seq_len=64,
        n_mha_win_size=3,
        embd_dim=16,
        fpn_dim=16,
        head_dim=16,
    )
    task = LocalizationTask(model, nn.Identity(), lambda o, b: [], DetectionMAP(), torch.optim.SGD)
    dataset = SimpleNamespace(empty_label_ids=[2], label_names=["a", "b", "c", "d"], class_agnostic=False)
    datamodule = SimpleNamespace(train_dataset=dataset, val_dataset=dataset, test_dataset=None)
    task._trainer = SimpleNamespace(datamodule=datamodule)
    task.setup("fit")
    for net in (task.model, task.ema_model):
        bias = net.cls_head.cls.conv.bias
        assert bias[2].item() == pytest.approx(-np.log((1 - 1e-6) / 1e-6))
        assert bias[0].item() == pytest.approx(-np.log(0.99 / 0.01))
    assert datamodule.max_div_factor == model.max_div_factor


def test_class_agnostic_data_is_scored_per_class_when_the_postprocessor_assigns_labels():
    """ActivityNet: proposals are scored class-agnostic unless classifier fusion labels them."""
    dataset = SimpleNamespace(class_agnostic=True, label_names=["a", "b"])
    task = make_task()
    assert task._scored_agnostic(dataset)
    task.postprocess = SimpleNamespace(assigns_labels=True)
    assert not task._scored_agnostic(dataset)
    assert not make_task()._scored_agnostic(SimpleNamespace(class_agnostic=False))
