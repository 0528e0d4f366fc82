"""Ego-Exo4D proficiency annotations without torch: level names, take folders, the release jsonl.

Shared by the dataset (:mod:`egolab.data.skill`) and the metric command line (:mod:`egolab.metrics.skill`),
which must start without torch.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LABEL_NAMES = ("Novice", "Early Expert", "Intermediate Expert", "Late Expert")


def label_of(level: Any, where: str) -> int | None:
    """The class id of a proficiency level name (case-insensitive), None for None; errors name ``where``."""
    if level is None:
        return None
    if not isinstance(level, str) or level.strip().title() not in LABEL_NAMES:
        raise ValueError(
            f"{where}: unknown proficiency_score {level!r} (expected one of {list(LABEL_NAMES)})"
        )
    return LABEL_NAMES.index(level.strip().title())


def take_name(paths: Sequence[str | None]) -> str:
    """``takes/<take_name>/...`` -> ``<take_name>`` (the folder of the take's videos)."""
    for path in paths:
        if path:
            parts = Path(path).parts
            if len(parts) > 1 and parts[0] == "takes":
                return parts[1]
    return ""


def jsonl_records(path: Path) -> Iterator[tuple[int, str, Any]]:
    """``(line number, "file:line", record)`` of each non-blank line of a jsonl; bad json names the line."""
    for n, text in enumerate(path.read_text().splitlines(), start=1):
        if not text.strip():
            continue
        where = f"{path}:{n}"
        try:
            yield n, where, json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"{where}: not valid json ({err})") from err


@dataclass(frozen=True)
class ReleaseRow:
    """One row of a SkillFormer-release jsonl: its line number, take folder, label id, first video path."""

    line: int
    take_name: str
    label: int
    first_path: str


def read_release_jsonl(path: str | os.PathLike) -> list[ReleaseRow]:
    """Rows of a jsonl in the SkillFormer release's format, in file order, repeated takes kept.

    Each row holds ``video_paths`` (a list whose first entry is ``takes/<take>/...``) and
    ``proficiency_level``; errors name the file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"SkillFormer-release jsonl not found: {path}")
    rows: list[ReleaseRow] = []
    for n, where, rec in jsonl_records(path):
        paths = rec.get("video_paths") if isinstance(rec, dict) else None
        if not isinstance(paths, list) or not paths or not isinstance(paths[0], str):
            raise ValueError(f"{where}: expected 'video_paths', a list of paths")
        name = take_name(paths[:1])
        if not name:
            raise ValueError(f"{where}: video path {paths[0]!r} is not takes/<take>/...")
        label = label_of(rec.get("proficiency_level"), f"{where}: take {name}")
        if label is None:
            raise ValueError(f"{where}: take {name} has no proficiency_level")
        rows.append(ReleaseRow(n, name, label, paths[0]))
    if not rows:
        raise ValueError(f"{path}: no rows")
    return rows
