"""Fixed locations inside a source checkout; ``${egolab.repo_root:}`` gives the first to configs."""

from pathlib import Path

from omegaconf import OmegaConf

REPO_ROOT = Path(__file__).resolve().parents[2]
CONF_DIR = REPO_ROOT / "conf"

OmegaConf.register_new_resolver("egolab.repo_root", lambda: str(REPO_ROOT), replace=True)
