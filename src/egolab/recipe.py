"""The world size a released recipe was tuned for, and how a run on another world size keeps to it.

A recipe's learning rate belongs to its global batch: processes x per-device batch x accumulation. The
root config block ``recipe`` states that tuning (``world_size``, ``batch_size``, ``accumulate``; the last
two default to this run's ``data.batch_size`` and ``trainer.accumulate_grad_batches``) and ``adapt`` says
what a run on another global batch does:

* ``accumulate``: keep the global batch by setting gradient accumulation to
  ``world_size * batch_size * accumulate / (processes * data.batch_size)`` (an error when that is not a
  whole number >= 1, with the ways out);
* ``scale_lr``: keep this run's batch and accumulation, multiply every learning rate by the ratio of the
  global batches (the linear scaling rule);
* ``none``: change nothing (the global batch and the learning rate's meaning differ from the recipe's).

``world_size: null`` (the default, for recipes no release states) changes nothing either. Either way the
start-up log says what the run does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch

log = logging.getLogger("egolab")

ADAPT = ("accumulate", "scale_lr", "none")


@dataclass(frozen=True)
class RecipePlan:
    """What a run does about its recipe: gradient accumulation, LR factor, and the sentence that says so."""

    accumulate: int
    lr_scale: float
    message: str


def plan_for_world_size(
    world_size: int,
    batch_size: int,
    accumulate: int,
    recipe_world_size: int | None,
    recipe_batch_size: int | None = None,
    recipe_accumulate: int | None = None,
    adapt: str = "accumulate",
) -> RecipePlan:
    """The accumulation and LR factor that keep a run on ``world_size`` processes to the recipe."""
    if adapt not in ADAPT:
        raise ValueError(f"recipe.adapt must be one of {ADAPT}, got {adapt!r}")
    for name, value in (("world size", world_size), ("batch size", batch_size), ("accumulation", accumulate)):
        if value < 1:
            raise ValueError(f"this run's {name} must be >= 1, got {value}")
    run_batch = world_size * batch_size * accumulate
    here = f"{world_size} process(es) x batch {batch_size} x accumulation {accumulate} = {run_batch}"
    if recipe_world_size is None:
        return RecipePlan(accumulate, 1.0, f"global batch {here} (the recipe states no world size)")
    recipe_batch_size = batch_size if recipe_batch_size is None else recipe_batch_size
    recipe_accumulate = accumulate if recipe_accumulate is None else recipe_accumulate
    if min(recipe_world_size, recipe_batch_size, recipe_accumulate) < 1:
        raise ValueError("recipe.world_size, recipe.batch_size and recipe.accumulate must be >= 1")
    tuned = recipe_world_size * recipe_batch_size * recipe_accumulate
    recipe = (
        f"{recipe_world_size} process(es) x batch {recipe_batch_size} x accumulation {recipe_accumulate}"
        f" = {tuned}"
    )
    if run_batch == tuned:
        return RecipePlan(accumulate, 1.0, f"global batch {here}, as the recipe ({recipe})")
    if adapt == "none":
        return RecipePlan(
            accumulate, 1.0, f"global batch {here}, not the recipe's ({recipe}); learning rate unchanged"
        )
    if adapt == "scale_lr":
        scale = run_batch / tuned
        return RecipePlan(
            accumulate,
            scale,
            f"global batch {here} instead of the recipe's ({recipe}): learning rate x {scale:g}"
            " (linear rule)",
        )
    needed = Fraction(tuned, world_size * batch_size)
    if needed.denominator != 1:
        per_device = Fraction(tuned, world_size)
        hint = (
            f"data.batch_size={int(per_device)} with trainer.accumulate_grad_batches=1"
            if per_device.denominator == 1
            else f"a device count that divides {tuned}"
        )
        raise ValueError(
            f"recipe.adapt=accumulate cannot keep the recipe's global batch ({recipe}) on {world_size}"
            f" process(es) with batch {batch_size}: {tuned} / ({world_size} x {batch_size}) is not a whole"
            f" number. Ways out: {hint}; recipe.adapt=scale_lr (linear LR rule); or recipe.adapt=none."
        )
    return RecipePlan(
        int(needed),
        1.0,
        f"the recipe's global batch ({recipe}) kept on {world_size} process(es) x batch {batch_size}:"
        f" accumulation {accumulate} -> {int(needed)}",
    )


def apply_recipe(recipe: Any, trainer: Any, task: Any, batch_size: int) -> RecipePlan:
    """Plan for the trainer's world size, set its accumulation and the task's ``lr_scale``, and log it."""
    recipe = recipe or {}
    plan = plan_for_world_size(
        trainer.world_size,
        batch_size,
        trainer.accumulate_grad_batches,
        recipe.get("world_size"),
        recipe.get("batch_size"),
        recipe.get("accumulate"),
        recipe.get("adapt", "accumulate"),
    )
    trainer.accumulate_grad_batches = plan.accumulate
    task.lr_scale = plan.lr_scale
    if trainer.is_global_zero:
        log.info("recipe: %s", plan.message)
    return plan


def scale_learning_rates(optimizer: torch.optim.Optimizer, factor: float) -> torch.optim.Optimizer:
    """Multiply every parameter group's learning rate by ``factor`` (before a scheduler captures it)."""
    for group in optimizer.param_groups:
        group["lr"] *= factor
    return optimizer
