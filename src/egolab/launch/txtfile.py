"""Experiment TXT files: one Hydra override per line, `#` comments, blank lines; comma lists sweep."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from egolab.errors import UserError

if TYPE_CHECKING:
    from omegaconf import DictConfig


class ExperimentFileError(UserError, ValueError):
    """A problem in an experiment TXT file, always naming the file and, where known, the line."""


@dataclass(frozen=True)
class OverrideLine:
    """One override with where it came from, so later errors can point back to the line."""

    text: str
    source: str
    lineno: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.lineno}" if self.lineno else self.source


def strip_comment(line: str) -> str:
    """Drop a `#` comment that is not inside single or double quotes."""
    quote = None
    for i, char in enumerate(line):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"":
            quote = char
        elif char == "#":
            return line[:i]
    return line


def parse_overrides(lines: list[OverrideLine]) -> list:
    """Parse with Hydra's own grammar; a bad line raises ExperimentFileError naming file and line."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException

    parser = OverridesParser.create()
    parsed = []
    for line in lines:
        try:
            override = parser.parse_override(line.text)
        except HydraException as err:
            message = str(err).strip().splitlines()[0]
            raise ExperimentFileError(f"{line.where}: bad override {line.text!r}: {message}") from None
        if not override.key_or_group:
            raise ExperimentFileError(f"{line.where}: bad override {line.text!r}: empty key")
        parsed.append(override)
    return parsed


def read_experiment(path: str | Path) -> list[OverrideLine]:
    """Read and validate the override lines of an experiment TXT file."""
    path = Path(path)
    if not path.is_file():
        raise ExperimentFileError(f"{path}: experiment file not found")
    try:
        raw_lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError as err:
        raise ExperimentFileError(f"{path}: not a UTF-8 text file ({err})") from None
    lines = []
    for lineno, raw in enumerate(raw_lines, start=1):
        text = strip_comment(raw).strip()
        if text:
            if text.startswith("-"):
                raise ExperimentFileError(
                    f"{path}:{lineno}: {text!r} is a command-line flag; a TXT file holds only overrides"
                )
            lines.append(OverrideLine(text, str(path), lineno))
    parse_overrides(lines)
    return lines


def expand_sweep(lines: list[OverrideLine]) -> list[list[str]]:
    """All combinations of the sweep overrides, in the order Hydra's basic sweeper numbers its jobs."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper

    parsed = parse_overrides(lines)
    return BasicSweeper.split_arguments(parsed, max_batch_size=None)[0]


def is_sweep(lines: list[OverrideLine]) -> bool:
    """Whether any override is a sweep (comma list, range, glob)."""
    return any(override.is_sweep_override() for override in parse_overrides(lines))


def compose_experiment(path: str | Path, extra: list[str] | tuple[str, ...] = ()) -> DictConfig:
    """The composed root config of a one-run experiment file plus ``extra`` overrides, without the
    launcher's ``hydra.*`` lines (for tests, benchmarks and notebooks that build a run's objects)."""
    from hydra import compose, initialize_config_dir

    from egolab.paths import CONF_DIR

    combos = expand_sweep(read_experiment(path))
    if len(combos) != 1:
        raise ValueError(f"{path}: a sweep of {len(combos)} runs; compose one combination at a time")
    overrides = [o for o in combos[0] if not o.lstrip("+~").startswith("hydra")]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose("config", overrides=[*overrides, *extra])
