"""egolab.loggers: the CSV history survives relaunches into the same run dir, and W&B picks its mode as wandb
does, falling back to offline (one warning, no hang) when the server cannot be reached."""

import csv
import http.server
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import lightning as L
import pytest
import torch
from hydra.utils import instantiate
from omegaconf import OmegaConf

from egolab import loggers
from egolab.loggers import csv_logger, wandb_logger

ROOT = Path(__file__).resolve().parents[1]
DUMMY_KEY = "0123456789abcdef0123456789abcdef01234567"


def read_rows(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "csv" / "metrics.csv").open(newline="") as file:
        return list(csv.DictReader(file))


def test_csv_logger_keeps_rows_of_earlier_attempts_and_adds_new_columns(tmp_path):
    first = csv_logger(str(tmp_path))
    first.log_hyperparams({"attempt": 1})
    first.log_metrics({"train/loss": torch.tensor(1.0)}, step=0)
    first.log_metrics({"train/loss": 0.5}, step=1)
    first.finalize("success")

    second = csv_logger(str(tmp_path))  # a relaunch: new process, same folder
    second.log_hyperparams({"attempt": 2})
    second.log_metrics({"train/loss": 0.25}, step=2)
    second.save()
    second.log_metrics({"test/acc": 0.9}, step=2)  # a key the file does not have yet
    second.finalize("success")

    rows = read_rows(tmp_path)
    assert [(r["step"], r["train/loss"], r["test/acc"]) for r in rows] == [
        ("0", "1.0", ""),
        ("1", "0.5", ""),
        ("2", "0.25", ""),
        ("2", "", "0.9"),
    ]
    assert (tmp_path / "csv" / "hparams.yaml").read_text().strip() == "attempt: 2"


def test_csv_logger_drops_a_row_cut_short_by_a_killed_process(tmp_path):
    (tmp_path / "csv").mkdir()
    (tmp_path / "csv" / "metrics.csv").write_text("step,train/loss\r\n0,1.0\r\n1,0.")
    logger = csv_logger(str(tmp_path))
    logger.log_metrics({"train/loss": 0.25}, step=1)
    logger.finalize("success")
    assert [(r["step"], r["train/loss"]) for r in read_rows(tmp_path)] == [("0", "1.0"), ("1", "0.25")]


class Tiny(L.LightningModule):
    """A 2-parameter regression model."""

    def __init__(self):
        super().__init__()
        self.layer = torch.nn.Linear(1, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        loss = torch.nn.functional.mse_loss(self.layer(x), y)
        self.log("train/loss", loss)
        return loss

    def test_step(self, batch, batch_idx):
        x, y = batch
        self.log("test/loss", torch.nn.functional.mse_loss(self.layer(x), y))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


def config_csv_logger(run_dir: Path):
    """The `csv` logger as conf/logger/csv.yaml builds it for `run_dir`."""
    cfg = OmegaConf.create(
        {"paths": {"run_dir": str(run_dir)}, "logger": OmegaConf.load(ROOT / "conf/logger/csv.yaml")}
    )
    return instantiate(cfg.logger.csv)


def test_configured_csv_logger_keeps_history_across_resume_and_test_relaunch(tmp_path, single_thread):
    torch.manual_seed(0)
    data = torch.utils.data.TensorDataset(torch.randn(8, 1), torch.randn(8, 1))

    def trainer(max_epochs: int) -> L.Trainer:
        return L.Trainer(
            accelerator="cpu",
            max_epochs=max_epochs,
            logger=config_csv_logger(tmp_path),
            log_every_n_steps=1,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
        )

    loader = torch.utils.data.DataLoader(data, batch_size=4)
    first = trainer(1)
    first.fit(Tiny(), loader)
    first.save_checkpoint(tmp_path / "last.ckpt")
    trainer(2).fit(Tiny(), loader, ckpt_path=tmp_path / "last.ckpt")  # relaunch: resume
    trainer(2).test(Tiny(), loader, ckpt_path=tmp_path / "last.ckpt", verbose=False)  # relaunch: -t

    rows = read_rows(tmp_path)
    train = [(r["epoch"], r["step"]) for r in rows if r.get("train/loss")]
    assert train == [("0", "0"), ("0", "1"), ("1", "2"), ("1", "3")]
    assert [r["test/loss"] for r in rows if r.get("test/loss")] != []


def test_default_logger_group_uses_the_same_csv_logger():
    default = OmegaConf.load(ROOT / "conf/logger/default.yaml")
    assert default.csv == OmegaConf.load(ROOT / "conf/logger/csv.yaml").csv


@pytest.fixture
def wandb_home(tmp_path, monkeypatch):
    """W&B confined to tmp_path (working dir, settings dirs, ~/.netrc), no inherited WANDB_* variables, and a
    fresh wandb singleton, which caches the settings it read."""
    import wandb

    for var in [var for var in os.environ if var.startswith("WANDB_")]:
        monkeypatch.delenv(var)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("WANDB_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("WANDB_API_KEY", DUMMY_KEY)
    monkeypatch.chdir(tmp_path)
    wandb.teardown()
    yield tmp_path
    wandb.teardown()


@pytest.fixture
def no_probe(monkeypatch):
    def probe(*args):
        raise AssertionError("the W&B server was probed")

    monkeypatch.setattr(loggers, "_server_reachable", probe)


def routes_nowhere(host: str) -> bool:
    try:
        socket.create_connection((host, 80), timeout=1).close()
    except OSError:
        return True
    return False


@pytest.fixture(params=["refused", "tarpit", "non-routable"])
def unreachable(request) -> Iterator[tuple[str, float]]:
    """A W&B base URL that cannot answer, and the probe timeout to use with it."""
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{server.getsockname()[1]}"
        if request.param == "refused":
            yield url, 5.0
        elif request.param == "tarpit":  # accepts connections, never answers: a firewall or a hung proxy
            server.listen()
            yield url, 1.0
        elif routes_nowhere("10.255.255.1"):
            yield "http://10.255.255.1", 1.0
        else:
            pytest.skip("this host's network answers for 10.255.255.1 (an intercepting proxy)")


def test_wandb_falls_back_offline_with_one_warning_when_server_unreachable(
    wandb_home, monkeypatch, caplog, unreachable
):
    base_url, timeout_s = unreachable
    monkeypatch.setenv("WANDB_BASE_URL", base_url)
    run_dir = wandb_home / "run"
    start = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="egolab"):
        logger = wandb_logger(str(run_dir), online_timeout_s=timeout_s)
    assert time.monotonic() - start < timeout_s + 2
    assert logger._wandb_init["mode"] == "offline"
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1
    assert f"{base_url} unreachable within {timeout_s:g} s" in warnings[0]
    assert f"wandb sync {run_dir / 'wandb'}" in warnings[0]


@pytest.fixture
def answering_server(monkeypatch) -> Iterator[str]:
    """An HTTP server that answers every request (with an error status), as W&B's base URL."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), http.server.BaseHTTPRequestHandler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("WANDB_BASE_URL", url)
    yield url
    server.shutdown()
    server.server_close()


def test_wandb_online_when_server_answers(wandb_home, answering_server, caplog):
    with caplog.at_level(logging.WARNING, logger="egolab"):
        logger = wandb_logger(str(wandb_home / "run"))
    assert logger._wandb_init["mode"] == "online"
    assert not [r for r in caplog.records if r.name.startswith("egolab")]


def test_wandb_key_in_netrc_for_the_configured_server(wandb_home, answering_server, monkeypatch):
    monkeypatch.delenv("WANDB_API_KEY")
    netrc_file = wandb_home / ".netrc"
    netrc_file.write_text(
        f"machine {answering_server.split('//')[1]}\n  login user\n  password {DUMMY_KEY}\n"
    )
    netrc_file.chmod(0o600)
    assert wandb_logger(str(wandb_home / "run"))._wandb_init["mode"] == "online"


def test_wandb_respects_wandb_offline_command(wandb_home, no_probe):
    env = dict(os.environ, TMPDIR=str(wandb_home))
    subprocess.run([sys.executable, "-m", "wandb", "offline"], env=env, check=True, capture_output=True)
    assert (wandb_home / "wandb" / "settings").is_file()
    assert wandb_logger(str(wandb_home / "run"))._wandb_init["mode"] == "offline"


def test_wandb_respects_global_settings_file(wandb_home, no_probe):
    (wandb_home / "config").mkdir()
    (wandb_home / "config" / "settings").write_text("[default]\nmode = disabled\n")
    assert wandb_logger(str(wandb_home / "run"))._wandb_init["mode"] == "disabled"


@pytest.mark.parametrize("env_mode", ["disabled", "offline", "online"])
def test_wandb_mode_variable_wins(wandb_home, monkeypatch, no_probe, env_mode):
    (wandb_home / "wandb").mkdir()
    (wandb_home / "wandb" / "settings").write_text("[default]\nmode = offline\n")
    monkeypatch.setenv("WANDB_MODE", env_mode)
    assert wandb_logger(str(wandb_home / "run"))._wandb_init["mode"] == env_mode


def test_wandb_without_key_is_offline(wandb_home, monkeypatch, no_probe):
    monkeypatch.delenv("WANDB_API_KEY")
    assert wandb_logger(str(wandb_home / "run"))._wandb_init["mode"] == "offline"


def test_wandb_run_id_lives_in_run_dir(wandb_home):
    run_dir = wandb_home / "run"
    first = wandb_logger(str(run_dir), mode="offline")
    assert (run_dir / "wandb_id.txt").read_text().strip() == first._wandb_init["id"]
    assert wandb_logger(str(run_dir), mode="offline")._wandb_init["id"] == first._wandb_init["id"]


def test_an_offline_wandb_run_starts_without_the_anonymous_setting_warning(wandb_home, capfd):
    """Lightning passes anonymous=None, which wandb 0.31 warns about on every run; egolab leaves it out."""
    logger = wandb_logger(str(wandb_home / "run"), mode="offline")
    assert "anonymous" not in logger._wandb_init
    logger.experiment.finish()
    assert "anonymous" not in capfd.readouterr().err


def test_the_run_closes_its_wandb_run_and_a_failure_to_close_does_not_hide_why_it_stopped(wandb_home, caplog):
    import wandb

    logger = wandb_logger(str(wandb_home / "run"), mode="offline")
    logger.log_hyperparams({"seed": 0})
    assert wandb.run is not None
    loggers.finish_wandb([logger, csv_logger(str(wandb_home / "run"))], exit_code=0)
    assert wandb.run is None

    class Unclosable:
        def finish(self, exit_code: int) -> None:
            raise OSError("disk full")

    logger._experiment = Unclosable()
    loggers.finish_wandb([logger], exit_code=1)  # the run failed already: its error is the one to report
    assert "could not close the W&B run: disk full" in caplog.text
    with pytest.raises(OSError, match="disk full"):
        loggers.finish_wandb([logger], exit_code=0)
