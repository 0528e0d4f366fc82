"""What every datamodule's ``check_files`` shares: the ``validate`` levels, and the grouping of splits that
read the same files (checked once, reported under one label such as ``val/test split``)."""

from __future__ import annotations

from collections.abc import Hashable, Mapping

VALIDATE_MODES = ("headers", "full", "none")
"""``validate`` values: check file headers and keys (cheap), read everything, or check nothing."""


def checked_validate(validate: str) -> str:
    """``validate`` itself, or a ValueError naming the allowed values."""
    if validate not in VALIDATE_MODES:
        raise ValueError(f"validate must be one of {VALIDATE_MODES}, got {validate!r}")
    return validate


def shared_splits(files: Mapping[str, Hashable | None]) -> list[tuple[str, list[str], Hashable]]:
    """(label, stages, key) for each distinct key of ``files`` (stage -> what identifies the files it reads;
    None: it reads none), in stage order; the label joins the stages: ``"val/test split"``."""
    groups: dict[Hashable, list[str]] = {}
    for stage, key in files.items():
        if key is not None:
            groups.setdefault(key, []).append(stage)
    return [("/".join(stages) + " split", stages, key) for key, stages in groups.items()]
