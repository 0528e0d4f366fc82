"""The recipe's world size: hand-worked plans for each `adapt` mode, and how a run applies one."""

import logging
from types import SimpleNamespace

import pytest
import torch

from egolab.recipe import apply_recipe, plan_for_world_size, scale_learning_rates


def test_same_global_batch_changes_nothing():
    plan = plan_for_world_size(2, 64, 1, recipe_world_size=2, recipe_batch_size=64, recipe_accumulate=1)
    assert (plan.accumulate, plan.lr_scale) == (1, 1.0)
    assert "as the recipe" in plan.message
    # 1 process x 32 x 4 = 2 x 64 x 1: the same global batch by another split
    plan = plan_for_world_size(1, 32, 4, recipe_world_size=2, recipe_batch_size=64, recipe_accumulate=1)
    assert (plan.accumulate, plan.lr_scale) == (4, 1.0)


def test_accumulate_keeps_the_global_batch():
    # AVT's TSN run: 2 GPUs x 64. On one device: accumulate 2.
    plan = plan_for_world_size(1, 64, 1, recipe_world_size=2, recipe_batch_size=64, recipe_accumulate=1)
    assert (plan.accumulate, plan.lr_scale) == (2, 1.0)
    assert "accumulation 1 -> 2" in plan.message
    # AVT's ViT run: 32 GPUs x 3; on 4 devices with batch 3: 8 micro-batches
    plan = plan_for_world_size(4, 3, 1, recipe_world_size=32, recipe_batch_size=3, recipe_accumulate=1)
    assert plan.accumulate == 8
    # a smaller per-device batch to fit memory: THUMOS's 1 x 2 with batch 1 -> accumulate 2
    assert plan_for_world_size(1, 1, 1, recipe_world_size=1, recipe_batch_size=2).accumulate == 2


def test_accumulate_refuses_what_it_cannot_keep_and_says_the_ways_out():
    # THUMOS (1 GPU x 2) on 4 GPUs x 2: 2 / 8 is no whole number
    with pytest.raises(ValueError, match="scale_lr") as err:
        plan_for_world_size(4, 2, 1, recipe_world_size=1, recipe_batch_size=2)
    assert "a device count that divides 2" in str(err.value)
    # 1 x 16 on 2 x 16: a per-device batch of 8 would keep it
    with pytest.raises(ValueError, match="data.batch_size=8"):
        plan_for_world_size(2, 16, 1, recipe_world_size=1, recipe_batch_size=16)


def test_scale_lr_is_the_linear_rule():
    # the fork's rule: 4 processes x 2 micro-batches against the release's 1 GPU -> lr x 8
    plan = plan_for_world_size(
        4, 2, 2, recipe_world_size=1, recipe_batch_size=2, recipe_accumulate=1, adapt="scale_lr"
    )
    assert (plan.accumulate, plan.lr_scale) == (2, 8.0)
    # fewer samples per step than tuned: the rate goes down
    plan = plan_for_world_size(1, 64, 1, recipe_world_size=2, recipe_batch_size=64, adapt="scale_lr")
    assert plan.lr_scale == 0.5 and "linear rule" in plan.message


def test_none_and_unstated_recipes_change_nothing():
    plan = plan_for_world_size(8, 2, 1, recipe_world_size=1, recipe_batch_size=2, adapt="none")
    assert (plan.accumulate, plan.lr_scale) == (1, 1.0) and "not the recipe's" in plan.message
    plan = plan_for_world_size(8, 2, 1, recipe_world_size=None)
    assert (plan.accumulate, plan.lr_scale) == (1, 1.0) and "states no world size" in plan.message


def test_bad_values_are_refused():
    with pytest.raises(ValueError, match="recipe.adapt"):
        plan_for_world_size(1, 2, 1, recipe_world_size=1, adapt="sqrt")
    with pytest.raises(ValueError, match="recipe.world_size"):
        plan_for_world_size(1, 2, 1, recipe_world_size=0)


def test_apply_sets_the_trainer_and_task_and_logs_it(caplog):
    trainer = SimpleNamespace(world_size=1, accumulate_grad_batches=1, is_global_zero=True)
    task = SimpleNamespace()
    recipe = {"world_size": 2, "batch_size": 64, "accumulate": 1, "adapt": "accumulate"}
    with caplog.at_level(logging.INFO, logger="egolab"):
        apply_recipe(recipe, trainer, task, batch_size=64)
    assert trainer.accumulate_grad_batches == 2 and task.lr_scale == 1.0
    assert "recipe: the recipe's global batch" in caplog.text
    apply_recipe(dict(recipe, adapt="scale_lr"), trainer, task, batch_size=64)
    assert task.lr_scale == 1.0  # 1 x 64 x 2 (set above) = 128: the recipe's batch again
    trainer.accumulate_grad_batches = 1
    apply_recipe(dict(recipe, adapt="scale_lr"), trainer, task, batch_size=64)
    assert trainer.accumulate_grad_batches == 1 and task.lr_scale == 0.5


def test_scale_learning_rates_multiplies_every_group():
    a, b = torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))
    optimizer = torch.optim.SGD([{"params": [a], "lr": 0.1}, {"params": [b], "lr": 0.01}], lr=0.1)
    scale_learning_rates(optimizer, 4.0)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.4, 0.04])


@pytest.mark.parametrize(
    "txt", ["demo/localization", "anticipation/ek100_avt_tsn", "demo/skill", "demo/backpack_mtl"]
)
def test_tasks_multiply_their_learning_rates_by_lr_scale(txt):
    """What `recipe.adapt=scale_lr` relies on: each task's optimizer takes ``task.lr_scale`` into account."""
    from hydra.utils import instantiate

    from egolab.launch.txtfile import compose_experiment
    from egolab.paths import REPO_ROOT

    extra = ["paths.root=/nonexistent", "paths.run_dir=/nonexistent"]
    cfg = compose_experiment(REPO_ROOT / "expts" / f"{txt}.txt", extra)
    rates = []
    for scale in (1.0, 3.0):
        task = instantiate(cfg.task)
        task._trainer = SimpleNamespace(estimated_stepping_batches=10, max_epochs=2)
        task.lr_scale = scale
        optimizer = task.configure_optimizers()["optimizer"]
        rates.append([group["initial_lr"] for group in optimizer.param_groups])  # before warmup
    assert rates[1] == pytest.approx([3.0 * lr for lr in rates[0]]) and min(rates[0]) > 0
