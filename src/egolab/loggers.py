"""Logger factories that need more than a plain `_target_`.

Lightning and wandb are imported inside the functions that use them, so that the launcher (which checks
for a W&B key) imports this module cheaply.
"""

from __future__ import annotations

import csv
import http.client
import io
import logging
import netrc
import os
import ssl
import threading
import urllib.error
import urllib.request
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from lightning.pytorch.loggers import CSVLogger, WandbLogger

log = logging.getLogger(__name__)


def is_global_zero_process() -> bool:
    """Whether this process is global rank 0, by the launchers' variables (no Trainer exists yet)."""
    return all(
        int(os.environ.get(var, "0")) == 0 for var in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID")
    )


class AppendingCSVWriter:
    """The experiment of :func:`csv_logger`: appends to `metrics.csv`, keeping the rows of earlier launches.

    Rows are buffered until `save()`. Rows with a column the file lacks make it rewrite the file once,
    atomically, with the union of the columns; a last row cut short by a killed process is dropped then.
    `hparams.yaml` holds the hyperparameters of the latest launch, as with Lightning's writer.
    """

    def __init__(self, log_dir: str) -> None:
        self.log_dir = log_dir
        self.metrics_file_path = os.path.join(log_dir, "metrics.csv")
        self.metrics: list[dict[str, Any]] = []
        self.hparams: dict[str, Any] = {}

    def log_metrics(self, metrics_dict: dict[str, Any], step: int | None = None) -> None:
        """Buffer one row (tensors as numbers) until the next `save()`."""
        row = {key: value.item() if hasattr(value, "item") else value for key, value in metrics_dict.items()}
        row["step"] = len(self.metrics) if step is None else step
        self.metrics.append(row)

    def log_hparams(self, params: dict[str, Any]) -> None:
        """Write this launch's hyperparameters to `hparams.yaml` (the latest launch's configuration wins)."""
        from lightning.pytorch.core.saving import save_hparams_to_yaml

        self.hparams.update(params)
        Path(self.log_dir).mkdir(parents=True, exist_ok=True)
        save_hparams_to_yaml(os.path.join(self.log_dir, "hparams.yaml"), self.hparams)

    def save(self) -> None:
        """Append the buffered rows; rewrite the file when they add columns or its end was cut short."""
        if not self.metrics:
            return
        path = Path(self.metrics_file_path)
        path.parent.mkdir(parents=True, exist_ok=True)
        header, complete = _csv_header(path)
        keys = set().union(*self.metrics)
        if header and complete and keys <= set(header):
            with path.open("a", newline="") as file:
                csv.DictWriter(file, fieldnames=header).writerows(self.metrics)
        else:
            old_rows = _complete_rows(path)
            tmp = path.with_name(path.name + ".tmp")
            with tmp.open("w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=sorted(keys.union(header)), extrasaction="ignore")
                writer.writeheader()
                writer.writerows(old_rows + self.metrics)
            tmp.replace(path)
        self.metrics = []


def _csv_header(path: Path) -> tuple[list[str], bool]:
    """The columns of a CSV file ([] when absent or empty) and whether it ends with a complete line."""
    if not path.is_file() or path.stat().st_size == 0:
        return [], True
    with path.open("rb") as file:
        header = next(csv.reader([file.readline().decode()]), [])
        file.seek(-1, os.SEEK_END)
        return header, file.read(1) == b"\n"


def _complete_rows(path: Path) -> list[dict[str, str]]:
    """The rows of a CSV file, without a last line that a killed writer left unfinished."""
    if not path.is_file():
        return []
    text = path.read_text()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    return list(csv.DictReader(io.StringIO(text)))


def csv_logger(save_dir: str, name: str = "csv", version: str = "", **kwargs: Any) -> CSVLogger:
    """Lightning's CSVLogger (same folders) whose `metrics.csv` keeps the rows of every launch into it.

    Lightning's own writer deletes `metrics.csv` when a new process opens a fixed folder, so a resume, a `-t`
    relaunch or a requeue would wipe the history; :class:`AppendingCSVWriter` appends instead. Only global
    rank 0 writes: Lightning's rank-zero guards on the logger still apply.
    """
    from lightning.pytorch.loggers import CSVLogger

    logger = CSVLogger(save_dir, name=name, version=version, **kwargs)
    logger._experiment = AppendingCSVWriter(logger.log_dir)  # used instead of the writer that wipes the file
    return logger


def wandb_has_key(base_url: str | None = None) -> bool:
    """Whether a W&B API key is configured, i.e. online logging can work.

    `$WANDB_API_KEY`, or a ~/.netrc entry for a W&B host or for the host of `base_url`: `wandb login` writes
    the server's host, which for wandb 0.31's default server (api.forge.coreweave.com) does not say "wandb".
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError):
        return False
    server = urlsplit(base_url).netloc if base_url else None
    return any("wandb" in host or host == server for host in hosts)


def _server_reachable(url: str, timeout_s: float, proxy: str | None = None) -> bool:
    """Whether the server at `url` answers a HEAD request (any status) within `timeout_s` in all, through
    `proxy` or the environment's proxies. Certificates are not checked: nothing but the HEAD is sent."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    handlers: list[urllib.request.BaseHandler] = [urllib.request.HTTPSHandler(context=context)]
    if proxy:
        handlers.append(urllib.request.ProxyHandler({urlsplit(url).scheme: proxy}))
    opener = urllib.request.build_opener(*handlers)
    answered = threading.Event()

    def request() -> None:
        try:
            opener.open(urllib.request.Request(url, method="HEAD"), timeout=timeout_s).close()
        except urllib.error.HTTPError:
            pass  # an error status is an answer too
        except (OSError, http.client.HTTPException):
            return
        answered.set()

    threading.Thread(target=request, daemon=True).start()  # bounds the whole probe, name resolution included
    return answered.wait(timeout_s)


def wandb_mode(run_dir: str | Path, online_timeout_s: float = 5.0) -> str:
    """The W&B mode when none is configured: wandb's own precedence, offline if the server is unreachable.

    `$WANDB_MODE` first; then the mode in wandb's settings files (`./wandb/settings`, then
    `$WANDB_CONFIG_DIR/settings` or `~/.config/wandb/settings`: what `wandb offline` / `wandb online`
    change); else online when a key is configured, else offline. Online is kept only if global rank 0
    reaches the server within `online_timeout_s`: otherwise one warning and offline, instead of wandb's long
    hang on a node without network (other ranks never open the run, so they do not probe).
    """
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    from wandb.sdk.wandb_setup import singleton

    # wandb's own resolution (settings files, then WANDB_* variables), which starts no service process
    settings = singleton().settings
    if settings.mode in ("offline", "dryrun", "disabled"):
        return settings.mode
    if not wandb_has_key(settings.base_url):
        return "offline"
    proxy = settings.https_proxy if settings.base_url.startswith("https") else settings.http_proxy
    if not is_global_zero_process() or _server_reachable(settings.base_url, online_timeout_s, proxy):
        return "online"
    wandb_dir = Path(run_dir) / "wandb"
    log.warning(
        "W&B server %s unreachable within %g s; logging offline to %s, sync later with `wandb sync %s`",
        settings.base_url,
        online_timeout_s,
        wandb_dir,
        wandb_dir,
    )
    return "offline"


def wandb_logger(
    run_dir: str,
    project: str = "egolab",
    group: str | None = None,
    name: str | None = None,
    mode: str | None = None,
    tags: list[str] | None = None,
    online_timeout_s: float = 5.0,
    **kwargs: Any,
) -> WandbLogger:
    """A WandbLogger whose run id lives in the run dir, so a relaunched or requeued run continues it.

    `mode=None` picks the mode with :func:`wandb_mode` (`$WANDB_MODE`, wandb's settings, online with a key if
    the server answers within `online_timeout_s`, else offline). Under a W&B sweep agent, the run takes the id
    the agent assigned (`$WANDB_RUN_ID`).
    """
    from lightning.pytorch.loggers import WandbLogger

    if mode is None:
        mode = wandb_mode(run_dir, online_timeout_s)
    id_file = Path(run_dir) / "wandb_id.txt"
    if id_file.is_file():
        run_id = id_file.read_text().strip()
    else:
        run_id = os.environ.get("WANDB_RUN_ID") or uuid.uuid4().hex[:12]
        if is_global_zero_process():
            id_file.parent.mkdir(parents=True, exist_ok=True)
            id_file.write_text(run_id + "\n")
    logger = WandbLogger(
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
    # Lightning always passes anonymous=None, for which wandb prints "The anonymous setting has no
    # effect" on every run; wandb has dropped the setting, so it is left out.
    if logger._wandb_init.get("anonymous") is None:
        logger._wandb_init.pop("anonymous", None)
    return logger


def finish_wandb(loggers: list[Any], exit_code: int) -> None:
    """Close the W&B run of any WandbLogger that opened one, marking it failed for a non-zero exit code.

    Left to wandb's exit hook, the closing lines ("sync this run with ...") keep their ANSI colour codes even
    when stderr is a file (a SLURM .out, a redirected log).
    """
    from lightning.pytorch.loggers import WandbLogger

    for logger in loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            try:
                logger._experiment.finish(exit_code=exit_code)
            except Exception as err:  # closing the log must not hide why the run stopped
                if exit_code == 0:
                    raise
                log.warning("could not close the W&B run: %s", err)
