"""What a run prints: each log line once, and no warnings a user cannot act on.

Lightning gives its loggers a console handler of its own when it is imported before logging is set up,
so under Hydra every Lightning INFO line came out twice (Lightning's ``INFO: ...`` and Hydra's
timestamped copy, which also goes to the run's log file): the copy Hydra prints is kept. The warnings
silenced here are about Lightning or library internals, or are advertisements, and appear on every run.
"""

from __future__ import annotations

import logging
import warnings

NOT_ACTIONABLE = (
    r".*isinstance\(treespec, LeafSpec\)",  # Lightning's own use of a deprecated torch API
    r"The `srun` command is available on your system but is not used",  # outside SLURM jobs
    r"Found \d+ module\(s\) in eval mode at the start of training",  # EMA copies are eval by design
    r".*does not have many workers which may be a bottleneck",  # the CPU demos run with few workers
    r"`torch.jit.script` is deprecated",  # torch_geometric scripts some of its functions when imported
    r"`is_gradient_checkpointing` is deprecated",  # peft reads the old transformers attribute
)
NOT_ACTIONABLE_LOGS = ("Tip: For seamless cloud logging",)  # the litlogger advertisement


class _DropMessages(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        return not any(text in message for text in NOT_ACTIONABLE_LOGS)


def quiet_lightning() -> None:
    """Drop Lightning's own console handlers (Hydra's handlers print each line once) and the messages
    above. Call after logging is configured and Lightning is imported."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "pytorch_lightning"):
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            if type(handler) is logging.StreamHandler:
                logger.removeHandler(handler)
        logger.propagate = True
    drop = _DropMessages()
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero"):
        logging.getLogger(name).addFilter(drop)
    for pattern in NOT_ACTIONABLE:
        warnings.filterwarnings("ignore", message=pattern)
