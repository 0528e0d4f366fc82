"""Hydra entry point: compose `conf/`, build data + task + trainer, fit, test, write the run dir.

    python -m egolab.train task=localization model=actionformer/demo data=localization/demo

Normally started by launch.py, which fixes the run dir so that a relaunch resumes from
`checkpoints/last.ckpt` and `-t` tests it. The run dir receives `config.yaml` (resolved),
`metrics.json` (final test metrics), the task's predictions file, checkpoints and logs.
"""

from __future__ import annotations

import json
import logging
import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import hydra
from omegaconf import DictConfig, OmegaConf

log = logging.getLogger("egolab")
# SLURM tasks per node: one process per GPU, one on a CPU-only node (--gpus 0).
OmegaConf.register_new_resolver("egolab.tasks_per_node", lambda gpus: max(1, int(gpus)), replace=True)


def _instantiate_all(group: DictConfig | None) -> list:
    from hydra.utils import instantiate

    if not group:
        return []
    return [instantiate(node) for node in group.values() if node is not None and "_target_" in node]


def _plugins() -> list:
    """Under SLURM, submitit owns requeueing: switch Lightning's own auto-requeue off."""
    from lightning.pytorch.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def print_metrics(metrics: dict[str, float], title: str = "test metrics") -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=title)
    table.add_column("metric")
    table.add_column("value", justify="right")
    for key, value in metrics.items():
        table.add_row(key, f"{value:.4f}")
    Console().print(table)


def config_problems(cfg: DictConfig) -> list[str]:
    """What the task's ``config_check`` (a function path set by its config group) finds wrong."""
    path = cfg.get("config_check")
    if not path:
        return []
    from hydra.utils import get_method

    return list(get_method(path)(cfg))


def override_lines(cfg: DictConfig, overrides: list[str]) -> list:
    """The overrides a run was composed with, as lines of its experiment file where they come from it."""
    from egolab.launch.txtfile import OverrideLine, read_experiment

    path = cfg.get("experiment_file")
    lines = read_experiment(path) if path and Path(path).is_file() else []
    from_file = {line.text for line in lines}
    return lines + [OverrideLine(text, "command line", 0) for text in overrides if text not in from_file]


def check_config(cfg: DictConfig, overrides: list[str] | None = None) -> None:
    """Raise one error listing every value of a wrong type (with the experiment-file line that set it)
    and every problem :func:`config_problems` finds."""
    from egolab.errors import BadValue
    from egolab.launch.config_types import type_errors

    problems = type_errors(cfg, override_lines(cfg, overrides or [])) or config_problems(cfg)
    if problems:
        raise BadValue("bad configuration:\n  - " + "\n  - ".join(problems))


def check_data(datamodule: object) -> None:
    """Before fitting, check every split's files (``data.validate``: headers | full | none) and raise one
    error listing every problem, instead of failing on the first bad file hours into the run.

    The first process does it, after ``prepare_data`` (a demo generates its files there first).
    """
    from egolab.loggers import is_global_zero_process

    if getattr(datamodule, "validate", "none") == "none" or not is_global_zero_process():
        return
    datamodule.prepare_data()
    problems = datamodule.check_files()
    if problems:
        from egolab.errors import BadValue

        listed = "\n  - ".join(problems)
        raise BadValue(
            f"data check (data.validate={datamodule.validate}) found {len(problems)} problem(s):\n"
            f"  - {listed}\nFix or remove these files, or set data.validate=none to skip the check."
        )


def _message(error: BaseException) -> str:
    """An error's message; for one re-raised from a DataLoader worker, the worker's last line only."""
    text = str(error)
    if "Original Traceback" in text:
        text = [line for line in text.splitlines() if line.strip()][-1]
    return text


@contextmanager
def reported_errors() -> Iterator[None]:
    """Report bad input (:class:`egolab.errors.UserError`) as its message alone, and an interrupted run
    as one line; exit 1, or 128 + the signal number.

    :class:`egolab.callbacks.SignalCheckpoint` stops training with ``last.ckpt`` saved; Lightning stops
    testing on SIGTERM with a ``SystemExit`` whose code is 0, which would look like success; Ctrl-C before
    or after training would print a traceback.
    """
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from egolab.callbacks import Interrupted
    from egolab.errors import UserError

    try:
        yield
    except UserError as err:
        log.error("%s", _message(err))
        raise SystemExit(1) from None
    except Interrupted as err:
        log.error("%s", err)
        raise SystemExit(128 + err.signum) from None
    except SIGTERMException:
        log.error("interrupted by SIGTERM outside training; relaunch the same command to finish the run")
        raise SystemExit(128 + signal.SIGTERM) from None
    except KeyboardInterrupt:
        log.error("interrupted (Ctrl-C); relaunch the same command to resume")
        raise SystemExit(128 + signal.SIGINT) from None


def remove_stale_submitit_result() -> None:
    """Under submitit, delete the half-written result file an earlier attempt of this job left.

    An attempt killed while submitit wrote its result leaves ``<job>_result.pkl.save_tmp``; the next
    attempt then fails when it saves its own result ("A temporary saved file already exists"), and a
    finished run is reported FAILED. Only this job writes that file, and not before it ends.
    """
    if "SUBMITIT_FOLDER" not in os.environ:
        return
    from submitit import JobEnvironment

    result = JobEnvironment().paths.result_pickle
    stale = result.with_suffix(result.suffix + ".save_tmp")
    if stale.exists():
        log.warning("removing %s, left by an interrupted attempt of this job", stale)
        stale.unlink()


def run(cfg: DictConfig, run_dir: Path, overrides: list[str] | None = None) -> dict[str, float]:
    """Fit (unless test_only) then test; return the test metrics. ``overrides``: what the config was
    composed with, to name the line of a bad value."""
    import lightning as L
    from hydra.utils import instantiate

    from egolab.console import quiet_lightning
    from egolab.launch.runs import check_run_folder, lock_run_folder
    from egolab.loggers import finish_wandb, is_global_zero_process
    from egolab.recipe import apply_recipe

    quiet_lightning()
    check_config(cfg, overrides)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if is_global_zero_process():
        lock_run_folder(run_dir)
        check_run_folder(run_dir, resolved)
    remove_stale_submitit_result()
    L.seed_everything(cfg.seed, workers=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    if cfg.task.get("extract"):  # task=extract: features from videos, no training (egolab.extract.run)
        from egolab.extract.run import run_extraction

        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
        metrics = run_extraction(cfg, run_dir)
        print_metrics(metrics, "extraction")
        return metrics

    datamodule = instantiate(cfg.data)
    check_data(datamodule)
    task = instantiate(cfg.task)
    callbacks = _instantiate_all(cfg.get("callbacks"))
    if not cfg.trainer.get("enable_progress_bar", True):
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.ProgressBar)]
    trainer = instantiate(
        cfg.trainer,
        callbacks=callbacks,
        logger=_instantiate_all(cfg.get("logger")) or False,
        default_root_dir=str(run_dir),
        plugins=_plugins(),
    )

    apply_recipe(cfg.get("recipe"), trainer, task, cfg.data.batch_size)
    try:  # the W&B run is closed here, not at interpreter exit, where wandb prints raw colour codes to files
        for logger in trainer.loggers:  # the seed and the whole setting as W&B config / hparams
            logger.log_hyperparams(resolved)
        metrics = _fit_and_test(cfg, trainer, task, datamodule, run_dir)
    except BaseException:
        finish_wandb(trainer.loggers, exit_code=1)
        raise
    finish_wandb(trainer.loggers, exit_code=0)
    return metrics


def _fit_and_test(cfg: DictConfig, trainer, task, datamodule, run_dir: Path) -> dict[str, float]:
    """Fit (resuming from the folder's last checkpoint) unless test_only, then test and write the results."""
    from egolab.launch.runs import last_checkpoint

    last = last_checkpoint(run_dir)
    if not cfg.test_only:  # the configuration of the run this folder holds; -t leaves it as trained
        OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    if cfg.get("zero_shot"):
        log.info("zero_shot: testing the model as built, without fitting or a checkpoint")
        test_ckpt = None
    elif cfg.test_only:
        if last is None:
            raise FileNotFoundError(f"test_only: no checkpoint at {run_dir}/checkpoints/last.ckpt")
        test_ckpt = str(last)
    else:
        if last is not None:
            log.info("resuming from %s", last)
        trainer.fit(task, datamodule=datamodule, ckpt_path=str(last) if last else None)
        last = last_checkpoint(run_dir)
        if trainer.fast_dev_run:
            test_ckpt = None
        elif cfg.test_ckpt == "last":
            test_ckpt = str(last) if last else None
        else:
            test_ckpt = cfg.test_ckpt
    results = trainer.test(task, datamodule=datamodule, ckpt_path=test_ckpt, verbose=False)
    metrics = {k: float(v) for k, v in (results[0] if results else {}).items()}
    if trainer.is_global_zero:
        (run_dir / "metrics.json").write_text(json.dumps(metrics, indent=2, sort_keys=True) + "\n")
        if hasattr(task, "write_predictions"):
            path = task.write_predictions(run_dir)
            log.info("predictions written to %s", path)
        print_metrics(metrics)
    return metrics


def run_from_overrides(overrides: list[str], run_dir: str | Path) -> dict[str, float]:
    """Compose `conf/` with overrides and run in this process (for submitit executors and notebooks)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import open_dict

    from egolab.paths import CONF_DIR

    run_dir = Path(run_dir).absolute()
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"hydra.run.dir={run_dir}"], return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.runtime.cwd = str(Path.cwd())
    HydraConfig.instance().set_config(cfg)
    with open_dict(cfg):
        del cfg["hydra"]
    with reported_errors():
        return run(cfg, run_dir, overrides)


@hydra.main(version_base="1.3", config_path="../../conf", config_name="config")
def main(cfg: DictConfig) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    run_dir = Path(HydraConfig.get().runtime.output_dir)
    with reported_errors():
        metrics = run(cfg, run_dir, list(HydraConfig.get().overrides.task))
    return metrics.get(cfg.monitor.replace("val/", "test/"))


def usage() -> str:
    """The ``--help`` text: how to run, and every config group with its options.

    Hydra's own ``--help`` composes the config first, which fails while task, model and data are unset.
    """
    from egolab.paths import CONF_DIR

    lines = [
        "usage: python -m egolab.train task=<task> model=<model> data=<data> [key=value ...]",
        "       (normally started by launch.py: python launch.py -c expts/<file>.txt -l)",
        "",
        f"config groups (in {CONF_DIR}):",
    ]
    for group in sorted(p for p in CONF_DIR.rglob("*") if p.is_dir() and any(p.glob("*.yaml"))):
        name = group.relative_to(CONF_DIR).as_posix()
        if name.startswith("hydra"):
            continue
        options = sorted(f.stem for f in group.glob("*.yaml"))
        lines.append(f"  {name}: {', '.join(options)}")
    lines.append("")
    lines.append("Print a composed config without running: add --cfg job")
    return "\n".join(lines)


if __name__ == "__main__":
    import sys

    if {"-h", "--help"} & set(sys.argv[1:]):
        print(usage())
    else:
        main()
