"""Packaging: the conda environment and pyproject pin the same requirements; imports stay lazy."""

import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def _pins(lines: list[str]) -> dict[str, str]:
    pins = {}
    for line in lines:
        name, _, version = line.partition("==")
        assert version, f"unpinned requirement {line!r}"
        pins[name.strip().lower().replace("_", "-")] = version.strip()
    return pins


def test_environment_yaml_matches_pyproject():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    declared = _pins(project["dependencies"] + project["optional-dependencies"]["dev"])
    env = yaml.safe_load((ROOT / "environment.yaml").read_text())
    pip_block = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict))
    assert _pins(pip_block) == declared
    assert "python=3.11" in env["dependencies"]


def test_torch_pin_respects_the_machine_cap():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pins = _pins(project["dependencies"])
    assert tuple(int(x) for x in pins["torch"].split(".")) <= (2, 14, 1)
    assert tuple(int(x) for x in pins["torchvision"].split(".")) <= (0, 29, 1)


def test_package_import_is_light():
    code = "import sys, egolab, egolab.launch.txtfile, egolab.launch.cli; print(sorted(sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    for heavy in ("torch", "lightning", "transformers", "timm", "decord", "torch_geometric", "wandb"):
        assert f"'{heavy}'" not in out, f"{heavy} imported by the package or the launcher"


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme
    assert "make test" in ci
