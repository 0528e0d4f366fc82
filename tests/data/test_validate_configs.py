"""Every task's data configs check headers by default; check_files runs on them before any data exists:
the real datasets' absent files are problems, a demo not yet made is not (and is not generated)."""

import pytest
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate

from egolab.launch.txtfile import expand_sweep, read_experiment
from egolab.paths import CONF_DIR, REPO_ROOT

EXPERIMENTS = [
    "demo/localization.txt",
    "localization/thumos_i3d.txt",
    "localization/anet_tsp_hdf5.txt",
    "demo/anticipation.txt",
    "anticipation/ek100_sgear_tsn.txt",
    "anticipation/ek100_sgear_vit.txt",
    "demo/skill.txt",
    "skill/ego.txt",
    "demo/backpack_mtl.txt",
    "backpack/single_ar.txt",
    "demo/vqa.txt",
    "vqa/lora_all.txt",
]


@pytest.mark.parametrize("experiment", EXPERIMENTS)
def test_configs_validate_headers_before_any_data_exists(experiment, tmp_path, monkeypatch):
    monkeypatch.delenv("EGOLAB_DATA", raising=False)
    monkeypatch.delenv("EGOLAB_DEMO_DATA", raising=False)
    (combo, *_) = expand_sweep(read_experiment(REPO_ROOT / "expts" / experiment))
    overrides = [o for o in combo if not o.lstrip("+~").startswith("hydra")]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, f"paths.root={tmp_path}"], return_hydra_config=False)
    datamodule = instantiate(cfg.data)
    assert datamodule.validate == "headers"
    problems = datamodule.check_files()
    if experiment.startswith("demo/"):
        assert problems == [] and not any(tmp_path.iterdir())  # nothing generated
    else:
        assert problems and all(" split: " in p for p in problems), problems
        assert all("not found" in p or "FileNotFoundError" in p for p in problems), problems
