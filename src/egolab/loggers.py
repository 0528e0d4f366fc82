"""Logger factories that need more than a plain `_target_`."""

from __future__ import annotations

import netrc
import os
import uuid
from pathlib import Path


def wandb_has_key() -> bool:
    """Whether a W&B API key is configured (environment or ~/.netrc), i.e. online logging can work."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    return any("wandb" in host for host in hosts)


def wandb_logger(
    run_dir: str,
    project: str = "egolab",
    group: str | None = None,
    name: str | None = None,
    mode: str | None = None,
    tags: list[str] | None = None,
    **kwargs,
):
    """A WandbLogger whose run id lives in the run dir, so a relaunched or requeued run continues it.

    `mode=None` means: `$WANDB_MODE` if set, else online when a key is configured, else offline.
    Under a W&B sweep agent, the run takes the id the agent assigned (`$WANDB_RUN_ID`).
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode is None:
        mode = os.environ.get("WANDB_MODE") or ("online" if wandb_has_key() else "offline")
    id_file = Path(run_dir) / "wandb_id.txt"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:12]
        if int(os.environ.get("LOCAL_RANK", "0")) == 0 and int(os.environ.get("NODE_RANK", "0")) == 0:
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
    return WandbLogger(
        save_dir=run_dir,
        project=project,
        group=group,
        name=name,
        id=run_id,
        resume="allow",
        mode=mode,
        tags=list(tags or []),
        **kwargs,
    )
