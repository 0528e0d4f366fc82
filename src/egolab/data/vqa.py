"""EgoCross cross-domain egocentric video QA data: ShareGPT / support / testbed readers, prompt, frames.

* Training data is the challenge's ShareGPT json (LLaMA-Factory ``formatting: sharegpt``), a list of::

      {"messages": [{"role": "user", "content": "<image>...<image>Question?\\nA) ...\\nD) ..."},
                    {"role": "assistant", "content": "A"}],
       "images": ["/abs/frame1.jpg", ...], "domain": "surgery"}

  :func:`read_sharegpt` also takes LLaMA-Factory's default spelling (``conversations`` with
  ``from``/``value`` and ``human``/``gpt``), or the column and tag names of a ``dataset_info.json`` entry.
  :func:`read_support_flattened` turns a participant's flattened support set (``question`` with its
  options, ``answer`` letter, ``images``) into the same :class:`ShareGPTSample`.
* The testbed (``egocross_testbed_imgs.json``, 957 questions without answers) is read by
  :func:`read_testbed`; :func:`closeqa_prompt` builds the official CloseQA prompt of an item.
* Frames are read by :func:`load_frames`, rescaled like LLaMA-Factory's Qwen2-VL/Qwen3-VL plugin does
  before the HF processor (:func:`rescaled_size`).

Re-rooting frame paths (:func:`reroot`), applied by every reader when ``image_root`` is given:

* a relative path is joined onto ``image_root`` (onto the json's folder when ``image_root`` is ``None``,
  as LLaMA-Factory's ``media_dir`` defaults to the dataset folder);
* an absolute path that exists is kept, and so is any absolute path when ``image_root`` is ``None``;
* a missing absolute path is moved under ``image_root``: with ``strip_prefix`` (e.g. ``/egocross_testbed``)
  the part after that prefix is kept; without it, the part from the first folder named after a source
  dataset (:data:`DATASET_DOMAINS`, e.g. ``EgoPet/022/frames/...``) is kept. So both the testbed
  (``/egocross_testbed/<Dataset>/...``) and the support set (``/mnt/.../frames/<Dataset>/...``) land at
  ``<image_root>/<Dataset>/...``. A path matching neither rule is an error naming the file and the item.

Readers check structure and raise errors naming the file and the item (index or id). Whether the frames
are there is checked separately by :func:`drop_bad_items` (``bad_items="error"`` raises, ``"skip"``
leaves the whole item out and counts it), and :func:`load_item_frames` names the item when a frame fails.
:meth:`VQADataModule.check_files` reports every bad frame of every split before fitting.
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import lightning as L
import torch
from PIL import Image, UnidentifiedImageError

from egolab.data.checks import checked_validate
from egolab.metrics.vqa import DOMAIN_ORDER
from egolab.metrics.vqa import DOMAINS as SOURCE_DOMAINS
from egolab.metrics.vqa import read_testbed as read_testbed_records

log = logging.getLogger(__name__)

PathLike = str | os.PathLike

DOMAINS = DOMAIN_ORDER
"""The four EgoCross domains, in the leaderboard's order."""

DATASET_DOMAINS = SOURCE_DOMAINS
"""Source dataset -> domain (one table, :data:`egolab.metrics.vqa.DOMAINS`)."""

IMAGE_PLACEHOLDER = "<image>"
"""LLaMA-Factory's image placeholder; one per entry of ``images``."""

SHAREGPT_COLUMNS = {"messages": "messages", "images": "images"}
"""Column names of the challenge's ``dataset_info.json`` entries (what :func:`read_sharegpt` reads first)."""

SHAREGPT_TAGS = {
    "role_tag": "role",
    "content_tag": "content",
    "user_tag": "user",
    "assistant_tag": "assistant",
}
"""Tag names of the challenge's files; LLaMA-Factory's defaults (``from``/``value``, ``human``/``gpt``)
are recognised too."""

_LLAMAFACTORY_TAGS = {"role_tag": "from", "content_tag": "value", "user_tag": "human", "assistant_tag": "gpt"}
_SYSTEM_ROLES = ("system",)

OPTION_LETTERS = ("A", "B", "C", "D")

CLOSEQA_TEMPLATE = (
    "Please carefully read the question and its options, then select the most appropriate answer. "
    "Question: {question}\n\nOptions:\n{options}"
    "The original FPS of the video is {original_fps}. "
    "This image set is obtained by sampling at {sampling_fps} fps."
    "Respond in JSON format with two fields: 'prediction' (the correct option letter: A, B, C, or D) "
    "and 'reason' (a short justification of the choice). Do not include any other content.\n\n"
    "Example response:\n"
    "{{\n"
    '    "prediction": "B",\n'
    '    "reason": "The tool held in the right hand in the last frames is the grasper."\n'
    "}}\n"
)
"""CloseQA prompt in the structure of EgoCross's ``eval_os_closedset.py`` (spec 2.2), including its
missing separators: the options run straight into "The original FPS", the fps sentence into "Respond"."""

BadItems = Literal["error", "skip"]
SPLITS_ALL = ("train", "val", "test")

# ----------------------------------------------------------------------------------------------------
# Shared helpers


def canonical_domain(name: str, where: str = "") -> str:
    """The :data:`DOMAINS` spelling of a domain name given in any case (``surgery`` -> ``Surgery``)."""
    for domain in DOMAINS:
        if isinstance(name, str) and name.strip().lower() == domain.lower():
            return domain
    raise ValueError(f"{where}: unknown domain {name!r} (expected one of {list(DOMAINS)})")


def reroot(
    path: str, image_root: PathLike | None, base: Path, strip_prefix: str | None = None, where: str = ""
) -> Path:
    """Where a frame path of a json lives on this machine (rule in the module docstring)."""
    if not isinstance(path, str) or not path:
        raise ValueError(f"{where}: frame paths must be non-empty strings, got {path!r}")
    posix = PurePosixPath(path)
    if not posix.is_absolute():
        return (Path(image_root) if image_root is not None else base) / posix
    if image_root is None or Path(path).exists():
        return Path(path)
    if strip_prefix is not None:
        prefix = PurePosixPath(strip_prefix)
        if not posix.is_relative_to(prefix):
            raise ValueError(f"{where}: frame path {path} is not under strip_prefix {strip_prefix}")
        return Path(image_root) / posix.relative_to(prefix)
    parts = posix.parts
    for k, part in enumerate(parts):
        if part in DATASET_DOMAINS:
            return Path(image_root).joinpath(*parts[k:])
    raise ValueError(
        f"{where}: cannot re-root {path} onto {image_root}: no source dataset folder "
        f"({sorted(DATASET_DOMAINS)}) in it; pass strip_prefix"
    )


def _read_json_list(path: Path, what: str) -> list:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ValueError(f"{path}: not valid json ({err})") from err
    if not isinstance(data, list):
        raise ValueError(f"{path}: expected a list of items, got {type(data).__name__}")
    return data


# ----------------------------------------------------------------------------------------------------
# ShareGPT (training / support set)


@dataclass(frozen=True)
class ShareGPTSample:
    """One conversation: ``messages`` as ``{"role": user|assistant|system, "content"}``, frames, domain."""

    id: str
    index: int
    messages: list[dict[str, str]]
    images: list[Path]
    domain: str | None

    @property
    def answer(self) -> str:
        """The last assistant reply (the option letter in EgoCross)."""
        return self.messages[-1]["content"]


def _normalise_messages(
    messages: Any, key: str, tags: Mapping[str, str] | None, where: str
) -> list[dict[str, str]]:
    if not isinstance(messages, list) or not messages:
        raise ValueError(f"{where}: {key!r} must be a non-empty list of messages")
    first = messages[0]
    if tags is None:
        tags = _LLAMAFACTORY_TAGS if isinstance(first, Mapping) and "from" in first else SHAREGPT_TAGS
    roles = {tags["user_tag"]: "user", tags["assistant_tag"]: "assistant", **{r: r for r in _SYSTEM_ROLES}}
    out: list[dict[str, str]] = []
    for k, message in enumerate(messages):
        if not isinstance(message, Mapping):
            raise ValueError(f"{where}: message {k} is not an object")
        role = roles.get(message.get(tags["role_tag"]))
        if role is None:
            raise ValueError(
                f"{where}: message {k} has role {message.get(tags['role_tag'])!r} under key "
                f"{tags['role_tag']!r} (expected {tags['user_tag']!r} or {tags['assistant_tag']!r})"
            )
        content = message.get(tags["content_tag"])
        if not isinstance(content, str) or not content.strip():
            raise ValueError(f"{where}: message {k} has empty or missing {tags['content_tag']!r}")
        out.append({"role": role, "content": content})
    turns = out[1:] if out[0]["role"] == "system" else out
    expected = ["user", "assistant"] * (len(turns) // 2 + 1)
    if not turns or len(turns) % 2 or [m["role"] for m in turns] != expected[: len(turns)]:
        raise ValueError(
            f"{where}: roles must alternate user/assistant and end with assistant "
            f"(an optional system message first), got {[m['role'] for m in out]}"
        )
    return out


def read_sharegpt(
    path: PathLike,
    image_root: PathLike | None = None,
    domain: str | None = None,
    strip_prefix: str | None = None,
    columns: Mapping[str, str] | None = None,
    tags: Mapping[str, str] | None = None,
) -> list[ShareGPTSample]:
    """Samples of a ShareGPT json; errors name the file and the item index.

    ``columns``/``tags`` are a ``dataset_info.json`` entry's (default: ``messages``/``images`` with
    ``role``/``content``, or ``conversations`` with ``from``/``value``). ``domain`` is for per-domain files:
    items whose own ``domain`` differs are left out (counted in the log), the others get ``domain``.
    """
    path = Path(path)
    data = _read_json_list(path, "ShareGPT json")
    want = None if domain is None else canonical_domain(domain, str(path))
    samples: list[ShareGPTSample] = []
    other = 0
    for index, item in enumerate(data):
        where = f"{path}: item {index}"
        if not isinstance(item, Mapping):
            raise ValueError(f"{where}: expected an object, got {type(item).__name__}")
        if columns is not None:
            messages_key, images_key = (
                columns.get("messages", "conversations"),
                columns.get("images", "images"),
            )
        else:
            messages_key = "messages" if "messages" in item else "conversations"
            images_key = "images"
        messages = _normalise_messages(item.get(messages_key), messages_key, tags, where)
        images = item.get(images_key, [])
        if not isinstance(images, list):
            raise ValueError(f"{where}: {images_key!r} must be a list of paths")
        placeholders = sum(m["content"].count(IMAGE_PLACEHOLDER) for m in messages)
        if placeholders != len(images):
            raise ValueError(
                f"{where}: {placeholders} {IMAGE_PLACEHOLDER} placeholders but {len(images)} images "
                "(LLaMA-Factory needs them equal)"
            )
        own = item.get("domain")
        own = None if own is None else canonical_domain(own, where)
        if want is not None and own is not None and own != want:
            other += 1
            continue
        samples.append(
            ShareGPTSample(
                id=str(item.get("id", f"{path.name}#{index}")),
                index=index,
                messages=messages,
                images=[reroot(p, image_root, path.parent, strip_prefix, where) for p in images],
                domain=want or own,
            )
        )
    if other:
        log.info("%s: left out %d items of domains other than %s", path, other, want)
    return samples


_SUPPORT_KEYS = ("domain", "question", "answer", "images")


def read_support_flattened(
    path: PathLike, image_root: PathLike | None = None, strip_prefix: str | None = None
) -> list[ShareGPTSample]:
    """Samples of a participant's flattened support set ({domain, question, answer, images} per item).

    The user turn is ``<image>`` once per frame followed by the question (options included, as written);
    the assistant turn is the answer letter.
    """
    path = Path(path)
    samples: list[ShareGPTSample] = []
    for index, item in enumerate(_read_json_list(path, "support set json")):
        where = f"{path}: item {index}"
        if not isinstance(item, Mapping) or any(key not in item for key in _SUPPORT_KEYS):
            raise ValueError(f"{where}: expected an object with keys {list(_SUPPORT_KEYS)}")
        question, answer, images = item["question"], item["answer"], item["images"]
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: empty question")
        if IMAGE_PLACEHOLDER in question:
            raise ValueError(
                f"{where}: question already holds {IMAGE_PLACEHOLDER}; read it with read_sharegpt"
            )
        if answer not in OPTION_LETTERS:
            raise ValueError(f"{where}: answer must be one of {list(OPTION_LETTERS)}, got {answer!r}")
        if not isinstance(images, list) or not images:
            raise ValueError(f"{where}: images must be a non-empty list of paths")
        item_id = item.get("id")
        samples.append(
            ShareGPTSample(
                id=str(item_id) if item_id not in (None, "", "unknown") else f"{path.name}#{index}",
                index=index,
                messages=[
                    {"role": "user", "content": IMAGE_PLACEHOLDER * len(images) + question},
                    {"role": "assistant", "content": answer},
                ],
                images=[reroot(p, image_root, path.parent, strip_prefix, where) for p in images],
                domain=canonical_domain(item["domain"], where),
            )
        )
    return samples


# ----------------------------------------------------------------------------------------------------
# Testbed and CloseQA prompt


@dataclass(frozen=True)
class TestbedItem:
    """One testbed question: options as ``"A: text"`` .. ``"D: text"``, frames re-rooted, fps of the video."""

    __test__ = False  # not a pytest test class despite the name

    id: int
    dataset: str
    domain: str
    primary_category: str
    question_type: str
    question: str
    options: tuple[str, ...]
    original_fps: float
    frames: tuple[Path, ...]


_OPTION = re.compile(r"^([A-D]): \S")


def read_testbed(
    path: PathLike, image_root: PathLike | None = None, strip_prefix: str | None = None
) -> list[TestbedItem]:
    """Items of ``egocross_testbed_imgs.json``; errors name the file and the item id."""
    path = Path(path)
    items: list[TestbedItem] = []
    for rec in read_testbed_records(path):  # fields, dataset, options A-D in order, frames, unique ids
        where = f"{path}: item id {rec['id']}"
        dataset, options = rec["dataset"], rec["options"]
        question = rec.get("question_text")
        if not isinstance(question, str) or not question.strip():
            raise ValueError(f"{where}: empty question_text")
        fps = rec.get("original_video_fps")
        if isinstance(fps, bool) or not isinstance(fps, (int, float)) or not math.isfinite(fps) or fps <= 0:
            raise ValueError(f"{where}: original_video_fps must be a positive number, got {fps!r}")
        frames = rec["video_path"]
        items.append(
            TestbedItem(
                id=rec["id"],
                dataset=dataset,
                domain=DATASET_DOMAINS[dataset],
                primary_category=str(rec["primary_category"]),
                question_type=str(rec["question_type"]),
                question=question,
                options=tuple(options),
                original_fps=float(fps),
                frames=tuple(reroot(p, image_root, path.parent, strip_prefix, where) for p in frames),
            )
        )
    return items


def sampling_fps(item: TestbedItem, rule: Literal["frames", "official"] = "frames") -> float:
    """Frame rate of an item's frames: 1.0 for CholecTrack20 ``.png`` items and EgoSurgery, else 0.5.

    ``rule="official"`` reproduces ``eval_os_closedset.py``, which says 1.0 only for CholecTrack20 ``.png``
    items (its comment notes EgoSurgery is 1.0 too, but its code writes 0.5 for it).
    """
    png = item.frames[0].suffix.lower() == ".png"
    if item.dataset == "CholecTrack20" and png:
        return 1.0
    if item.dataset == "EgoSurgery" and rule == "frames":
        return 1.0
    return 0.5


def closeqa_prompt(item: TestbedItem, rule: Literal["frames", "official"] = "frames") -> str:
    """The CloseQA prompt of an item (:data:`CLOSEQA_TEMPLATE`; ``rule`` as in :func:`sampling_fps`)."""
    return CLOSEQA_TEMPLATE.format(
        question=item.question,
        options="\n".join(item.options),
        original_fps=item.original_fps,
        sampling_fps=sampling_fps(item, rule),
    )


# ----------------------------------------------------------------------------------------------------
# Frames


def _scaled(width: int, height: int, pixels: int) -> tuple[int, int]:
    factor = math.sqrt(pixels / (width * height))
    return max(1, int(width * factor)), max(1, int(height * factor))


def _qwen_fixes(width: int, height: int) -> list[tuple[int, int]]:
    """Sizes the Qwen2-VL plugin's fixes pass through: 28-px min side, then sides over 200x cut to 180x."""
    sizes = []
    if min(width, height) < 28:
        width, height = max(width, 28), max(height, 28)
        sizes.append((width, height))
    if width / height > 200:
        width = height * 180
        sizes.append((width, height))
    if height / width > 200:
        height = width * 180
        sizes.append((width, height))
    return sizes


def rescaled_size(width: int, height: int, max_pixels: int, min_pixels: int) -> tuple[int, int]:
    """Size LLaMA-Factory's Qwen2-VL plugin gives a ``width`` x ``height`` image (spec 2.5).

    Scaled down by sqrt(max/(w*h)) above ``max_pixels``, up by sqrt(min/(w*h)) below ``min_pixels`` (sizes
    truncated to integers, at least 1 px), then each side raised to at least 28 px, and a side longer than
    200x the other cut to 180x it.
    """
    if width * height > max_pixels:
        width, height = _scaled(width, height, max_pixels)
    if width * height < min_pixels:
        width, height = _scaled(width, height, min_pixels)
    fixes = _qwen_fixes(width, height)
    return fixes[-1] if fixes else (width, height)


def load_frame(path: PathLike, max_pixels: int, min_pixels: int) -> Image.Image:
    """One RGB frame resized in LLaMA-Factory's steps (:func:`rescaled_size`); errors name the file."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"frame not found: {path}")
    try:
        with Image.open(path) as opened:
            image = opened.copy()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        raise ValueError(f"cannot read frame {path} ({err})") from err
    if image.width * image.height > max_pixels:
        image = image.resize(_scaled(image.width, image.height, max_pixels))
    if image.width * image.height < min_pixels:
        image = image.resize(_scaled(image.width, image.height, min_pixels))
    if image.mode != "RGB":
        image = image.convert("RGB")
    for size in _qwen_fixes(image.width, image.height):
        image = image.resize(size)
    return image


def load_frames(paths: Sequence[PathLike], max_pixels: int, min_pixels: int) -> list[Image.Image]:
    """RGB frames of ``paths`` for the processor (:func:`load_frame` on each)."""
    if min_pixels > max_pixels:
        raise ValueError(f"min_pixels {min_pixels} exceeds max_pixels {max_pixels}")
    return [load_frame(p, max_pixels, min_pixels) for p in paths]


def _frames_of(item: ShareGPTSample | TestbedItem) -> Sequence[Path]:
    return item.images if isinstance(item, ShareGPTSample) else item.frames


def _item_name(item: ShareGPTSample | TestbedItem) -> str:
    return f"sample {item.id}" if isinstance(item, ShareGPTSample) else f"testbed item {item.id}"


def load_item_frames(
    item: ShareGPTSample | TestbedItem, max_pixels: int, min_pixels: int
) -> list[Image.Image]:
    """Frames of a sample or testbed item; a failing frame raises an error naming the file and the item."""
    try:
        return load_frames(_frames_of(item), max_pixels, min_pixels)
    except FileNotFoundError as err:
        raise FileNotFoundError(f"{_item_name(item)}: {err}") from err
    except ValueError as err:
        raise ValueError(f"{_item_name(item)}: {err}") from err


def _frame_problem(path: Path, verify: bool, decode: bool = False) -> str | None:
    """Why a frame cannot be used, or None: no file; with ``verify`` a file PIL cannot parse (its header and
    chunks, pixels not decoded); with ``decode`` pixels that do not decode."""
    if not path.is_file():
        return f"frame not found: {path}"
    try:
        if verify:
            with Image.open(path) as image:
                image.verify()
        if decode:
            with Image.open(path) as image:
                image.load()
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        return f"cannot read frame {path} ({err})"
    return None


def drop_bad_items(
    items: Sequence[ShareGPTSample | TestbedItem], bad_items: BadItems = "error", verify: bool = False
) -> tuple[list[ShareGPTSample | TestbedItem], list[str]]:
    """Items whose frames are all present (and, with ``verify``, decodable as images), and the ids left out.

    ``bad_items="error"`` raises at the first bad frame, naming the file and the item; ``"skip"`` leaves
    the whole item out (never a single frame, which would break the placeholder count) and logs the count.
    """
    if bad_items not in ("error", "skip"):
        raise ValueError(f"bad_items must be 'error' or 'skip', got {bad_items!r}")
    kept: list[ShareGPTSample | TestbedItem] = []
    skipped: list[str] = []
    for item in items:
        problem = next((p for f in _frames_of(item) if (p := _frame_problem(f, verify))), None)
        if problem is None:
            kept.append(item)
        elif bad_items == "error":
            error = FileNotFoundError if problem.startswith("frame not found") else ValueError
            raise error(f"{_item_name(item)}: {problem}")
        else:
            skipped.append(str(item.id))
    if skipped:
        log.warning(
            "left out %d of %d items with missing or unreadable frames: %s",
            len(skipped),
            len(items),
            ", ".join(skipped[:5]) + (" ..." if len(skipped) > 5 else ""),
        )
    return kept, skipped


# ----------------------------------------------------------------------------------------------------
# Prompts of the testbed, datasets


PROMPT_STYLES = ("closeqa", "letter")
"""``closeqa``: the official prompt (json reply); ``letter``: the challenge baseline's question followed by
``A) text`` lines, as in its ShareGPT training files and vLLM inference (a bare letter reply)."""

VIDEO_PLACEHOLDER = "<video>"


def letter_prompt(item: TestbedItem) -> str:
    """The question with one ``A) text`` line per option (the challenge baseline's format)."""
    lines = [f"{option[0]}) {option[2:].strip()}" for option in item.options]
    return item.question.rstrip() + "\n" + "\n".join(lines)


class ConversationDataset:
    """ShareGPT samples for training: messages, the frames (rescaled as LLaMA-Factory does) and the domain."""

    def __init__(self, samples: Sequence[ShareGPTSample], max_pixels: int, min_pixels: int) -> None:
        self.samples = list(samples)
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> dict[str, Any]:
        sample = self.samples[index]
        return {
            "id": sample.id,
            "messages": sample.messages,
            "images": load_item_frames(sample, self.max_pixels, self.min_pixels),
            "video": None,
            "meta": {"id": sample.id, "domain": sample.domain},
        }


class TestbedDataset:
    """Testbed items as one user turn: the frames (as images, or as one video at the sampling fps) before
    the prompt; ``meta`` carries what a prediction record needs, with the answer when ``answers`` has it."""

    __test__ = False

    def __init__(
        self,
        items: Sequence[TestbedItem],
        answers: Mapping[Any, Mapping[str, Any]] | None,
        max_pixels: int,
        min_pixels: int,
        prompt_style: str = "closeqa",
        frames_as: Literal["images", "video"] = "images",
        fps_rule: Literal["frames", "official"] = "frames",
    ) -> None:
        if prompt_style not in PROMPT_STYLES:
            raise ValueError(f"prompt_style must be one of {PROMPT_STYLES}, got {prompt_style!r}")
        if frames_as not in ("images", "video"):
            raise ValueError(f"frames_as must be 'images' or 'video', got {frames_as!r}")
        self.items = list(items)
        self.answers = {str(k): v for k, v in (answers or {}).items()}
        if answers is not None:
            missing = [item.id for item in self.items if str(item.id) not in self.answers]
            if missing:
                raise ValueError(f"{len(missing)} testbed items have no answer, e.g. ids {missing[:5]}")
        self.max_pixels = max_pixels
        self.min_pixels = min_pixels
        self.prompt_style = prompt_style
        self.frames_as = frames_as
        self.fps_rule = fps_rule

    def __len__(self) -> int:
        return len(self.items)

    def prompt(self, item: TestbedItem) -> str:
        return closeqa_prompt(item, self.fps_rule) if self.prompt_style == "closeqa" else letter_prompt(item)

    def __getitem__(self, index: int) -> dict[str, Any]:
        item = self.items[index]
        frames = load_item_frames(item, self.max_pixels, self.min_pixels)
        as_video = self.frames_as == "video"
        media = VIDEO_PLACEHOLDER if as_video else IMAGE_PLACEHOLDER * len(frames)
        answer = self.answers.get(str(item.id), {})
        return {
            "id": item.id,
            "messages": [{"role": "user", "content": media + self.prompt(item)}],
            "images": [] if as_video else frames,
            "video": (frames, sampling_fps(item, self.fps_rule)) if as_video else None,
            "meta": {
                "id": item.id,
                "dataset": item.dataset,
                "primary_category": item.primary_category,
                "question_type": item.question_type,
                "answer": answer.get("correct_option_letter"),
                "question_id": answer.get("question_id"),
            },
        }


# ----------------------------------------------------------------------------------------------------
# Encoding for Qwen-VL: LLaMA-Factory's qwen3_vl(_nothink) ChatML, labels on the assistant turns only


TEMPLATES = ("nothink", "think")
THINK_PREFIX = "<think>\n\n</think>\n\n"
"""What LLaMA-Factory's ``qwen3_vl`` (reasoning) template puts before a response without thoughts."""

IGNORE_INDEX = -100


def chatml_pieces(messages: Sequence[Mapping[str, str]], template: str = "nothink") -> list[tuple[str, bool]]:
    """``(text, trained)`` pieces of a conversation in LLaMA-Factory's ``qwen3_vl_nothink`` ChatML format.

    ``template="think"`` is ``qwen3_vl`` as the challenge baseline ran it: each response gets an empty
    ``<think>`` block first (its own trained piece). No system turn is added (the templates have no
    default system prompt).
    """
    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
    pieces = []
    for message in messages:
        role, content = message["role"], message["content"]
        if role == "system":
            pieces.append((f"<|im_start|>system\n{content}<|im_end|>\n", False))
        elif role == "user":
            pieces.append((f"<|im_start|>user\n{content}<|im_end|>\n<|im_start|>assistant\n", False))
        else:
            if template == "think" and "<think>" not in content:
                pieces.append((THINK_PREFIX, True))  # tokenised on its own, as LLaMA-Factory does
            pieces.append((f"{content}<|im_end|>\n", True))
    return pieces


def letter_candidates(
    tokenizer: Any, prefix: str, letters: Sequence[str] = OPTION_LETTERS
) -> tuple[list, list]:
    """(context ids, one token id per letter): the common tokens of ``prefix + letter`` for every letter, and
    the first token where each letter's tokenisation departs from it (e.g. ``"B`` in a json answer)."""
    seqs = [tokenizer(prefix + letter, add_special_tokens=False)["input_ids"] for letter in letters]
    common = 0
    while all(len(s) > common for s in seqs) and len({s[common] for s in seqs}) == 1:
        common += 1
    if any(len(s) <= common for s in seqs):
        raise ValueError(f"answer prefix {prefix!r}: a letter adds no token of its own")
    firsts = [s[common] for s in seqs]
    if len(set(firsts)) != len(firsts):
        raise ValueError(f"answer prefix {prefix!r}: letters share a first token ({firsts})")
    return seqs[0][:common], firsts


class QwenVLCollator:
    """Batches of examples (from :class:`ConversationDataset` or :class:`TestbedDataset`) for Qwen-VL.

    Each text piece of :func:`chatml_pieces` is encoded on its own, like LLaMA-Factory's
    ``encode_multiturn``: user pieces through the HF processor, which expands every ``<image>`` (written as
    ``<|vision_start|><|image_pad|><|vision_end|>``) into its patch tokens and a ``<video>`` into per-group
    timestamps and patch tokens; responses through the tokenizer, as labels. Training batches are right
    padded and carry ``labels`` (-100 on prompts and padding); evaluation batches (``training=False``, the
    last turn is the user's) are left padded for generation and also carry ``score_*`` inputs: the prompt
    followed by the common prefix of the answer (``answer_prefix``, after the empty think block with
    ``template="think"``), where :meth:`egolab.models.qwen_vl.QwenVL.letter_probs` reads the letters.
    A sequence longer than ``cutoff_len`` is an error naming the item (cutting it would cut image tokens).
    """

    def __init__(
        self,
        processor: Any,
        training: bool,
        template: str = "nothink",
        answer_prefix: str = "",
        cutoff_len: int = 32768,
        system_prompt: str | None = None,
    ) -> None:
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.training = training
        self.template = template
        self.cutoff_len = cutoff_len
        self.system_prompt = system_prompt
        self.pad_id = self.tokenizer.pad_token_id
        if self.pad_id is None:
            raise ValueError("the processor's tokenizer has no pad token")
        self.image_token_id = self.tokenizer.convert_tokens_to_ids(processor.image_token)
        self.video_token_id = self.tokenizer.convert_tokens_to_ids(processor.video_token)
        think = THINK_PREFIX if template == "think" else ""
        self.score_context, self.letter_token_ids = letter_candidates(self.tokenizer, think + answer_prefix)

    def _encode_prompt(self, text: str, images: list, video: tuple | None, where: str) -> dict[str, Any]:
        text = text.replace(IMAGE_PLACEHOLDER, "<|vision_start|><|image_pad|><|vision_end|>")
        kwargs: dict[str, Any] = {}
        if VIDEO_PLACEHOLDER in text:
            if video is None or text.count(VIDEO_PLACEHOLDER) != 1:
                raise ValueError(f"{where}: a {VIDEO_PLACEHOLDER} placeholder needs exactly one video")
            frames, fps = video
            text = text.replace(VIDEO_PLACEHOLDER, self.processor.video_token)
            kwargs["videos"] = [frames]
            kwargs["videos_kwargs"] = {
                "do_sample_frames": False,
                "video_metadata": [
                    {"fps": fps, "total_num_frames": len(frames), "frames_indices": list(range(len(frames)))}
                ],
            }
        out = self.processor(text=[text], images=images or None, return_tensors="pt", **kwargs)
        return out

    def encode(self, example: Mapping[str, Any]) -> dict[str, Any]:
        """Token ids, labels and vision tensors of one example."""
        where = f"item {example['id']}"
        images = list(example["images"])
        ids: list[int] = []
        labels: list[int] = []
        vision: dict[str, list[torch.Tensor]] = {}
        messages = list(example["messages"])
        if self.system_prompt and messages[0]["role"] != "system":
            messages.insert(0, {"role": "system", "content": self.system_prompt})
        for text, trained in chatml_pieces(messages, self.template):
            if trained:
                tokens = self.tokenizer(text, add_special_tokens=False)["input_ids"]
                ids += tokens
                labels += tokens
                continue
            count = text.count(IMAGE_PLACEHOLDER)
            piece_images, images = images[:count], images[count:]
            out = self._encode_prompt(text, piece_images, example.get("video"), where)
            tokens = out["input_ids"][0].tolist()
            ids += tokens
            labels += [IGNORE_INDEX] * len(tokens)
            for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
                if key in out:
                    vision.setdefault(key, []).append(out[key])
        if images:
            raise ValueError(
                f"{where}: {len(images)} images left over after the {IMAGE_PLACEHOLDER} placeholders"
            )
        if len(ids) > self.cutoff_len:
            raise ValueError(f"{where}: {len(ids)} tokens exceed cutoff_len {self.cutoff_len}")
        return {"ids": ids, "labels": labels, "vision": vision}

    def _mm_types(self, ids: torch.Tensor) -> torch.Tensor:
        types = torch.zeros_like(ids)
        types[ids == self.image_token_id] = 1
        types[ids == self.video_token_id] = 2
        return types

    def _pad(self, rows: list[list[int]], value: int, left: bool) -> torch.Tensor:
        width = max(len(r) for r in rows)
        out = torch.full((len(rows), width), value, dtype=torch.long)
        for i, row in enumerate(rows):
            if left:
                out[i, width - len(row) :] = torch.tensor(row, dtype=torch.long)
            else:
                out[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        return out

    def _inputs(self, rows: list[list[int]], left: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        ids = self._pad(rows, self.pad_id, left)
        mask = self._pad([[1] * len(r) for r in rows], 0, left)
        return ids, mask, self._mm_types(ids) * mask

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
        encoded = [self.encode(example) for example in examples]
        batch: dict[str, Any] = {"meta": [example["meta"] for example in examples]}
        for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"):
            parts = [t for e in encoded for t in e["vision"].get(key, [])]
            if parts:
                batch[key] = torch.cat(parts)
        rows = [e["ids"] for e in encoded]
        if self.training:
            if all(label == IGNORE_INDEX for e in encoded for label in e["labels"]):
                raise ValueError(f"items {[e['id'] for e in examples]}: no assistant tokens to train on")
            batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"] = self._inputs(
                rows, False
            )
            batch["labels"] = self._pad([e["labels"] for e in encoded], IGNORE_INDEX, left=False)
            return batch
        if any(t for e in encoded for t in e["labels"] if t != IGNORE_INDEX):
            raise ValueError("evaluation examples must end with the user's turn")
        batch["input_ids"], batch["attention_mask"], batch["mm_token_type_ids"] = self._inputs(rows, True)
        scored = [r + self.score_context for r in rows]
        batch["score_input_ids"], batch["score_attention_mask"], batch["score_mm_token_type_ids"] = (
            self._inputs(scored, True)
        )
        batch["letter_token_ids"] = torch.tensor(self.letter_token_ids, dtype=torch.long)
        return batch


# ----------------------------------------------------------------------------------------------------
# Data module


class VQADataModule(L.LightningDataModule):
    """ShareGPT training files and testbed-format val/test files, encoded for Qwen-VL.

    Files are relative to ``root``; frames are re-rooted onto ``image_root`` (rule in the module docstring).
    ``train_files`` are ShareGPT json (``train_format="sharegpt"``) or participants' flattened support sets
    (``"support_flattened"``); ``domain`` keeps one domain of the training files and of the val/test items.
    ``val_answers``/``test_answers`` (the official answers format) join the letters by id; without them the
    run writes predictions and a submission but no accuracy. ``processor`` is the HF processor (hub name or
    folder) that encodes batches; ``demo`` (optional callable) makes the demo data in :meth:`prepare_data`.
    ``bad_items="skip"`` leaves out (and counts) items with a missing or unreadable frame. ``validate`` is
    how much of every split's frames :meth:`check_files` reads before fitting.
    """

    def __init__(
        self,
        processor: str,
        root: str | os.PathLike = ".",
        train_files: Sequence[str] | None = None,
        train_format: Literal["sharegpt", "support_flattened"] = "sharegpt",
        val_file: str | None = None,
        val_answers: str | None = None,
        test_file: str | None = None,
        test_answers: str | None = None,
        domain: str | None = None,
        image_root: str | os.PathLike | None = None,
        strip_prefix: str | None = None,
        frames_as: Literal["images", "video"] = "images",
        prompt_style: str = "closeqa",
        fps_rule: Literal["frames", "official"] = "frames",
        template: str = "nothink",
        answer_prefix: str = "",
        system_prompt: str | None = None,
        image_max_pixels: int = 360000,
        image_min_pixels: int = 50176,
        video_max_pixels: int = 360000,
        cutoff_len: int = 32768,
        bad_items: BadItems = "error",
        demo: Any = None,
        batch_size: int = 1,
        eval_batch_size: int = 4,
        num_workers: int = 0,
        pin_memory: bool = False,
        validate: str = "headers",
    ) -> None:
        super().__init__()
        self.validate = checked_validate(validate)
        if train_format not in ("sharegpt", "support_flattened"):
            raise ValueError(f"train_format must be 'sharegpt' or 'support_flattened', got {train_format!r}")
        if template not in TEMPLATES:
            raise ValueError(f"template must be one of {TEMPLATES}, got {template!r}")
        self.processor_name = processor
        self.root = Path(root)
        self.train_files = [self.root / f for f in train_files or []]
        self.train_format = train_format
        self.eval_files = {
            "val": (val_file, val_answers),
            "test": (test_file, test_answers),
        }
        self.domain = None if domain is None else canonical_domain(domain, "data.domain")
        self.image_root = image_root
        self.strip_prefix = strip_prefix
        self.frames_as = frames_as
        self.prompt_style = prompt_style
        self.fps_rule = fps_rule
        self.template = template
        self.answer_prefix = answer_prefix
        self.system_prompt = system_prompt
        self.pixels = {
            "images": (image_max_pixels, image_min_pixels),
            "video": (video_max_pixels, image_min_pixels),
        }
        self.cutoff_len = cutoff_len
        self.bad_items = bad_items
        self.demo = demo
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.pin_memory = pin_memory
        self.processor: Any = None
        self.datasets: dict[str, ConversationDataset | TestbedDataset] = {}
        self.skipped: dict[str, list[str]] = {}

    def prepare_data(self) -> None:
        """Generate the demo data if configured (Lightning runs this once per node)."""
        if self.demo is not None:
            self.demo()

    def _train_samples(self) -> list[ShareGPTSample]:
        if not self.train_files:
            raise ValueError("fitting needs data.train_files (ShareGPT json files)")
        samples: list[ShareGPTSample] = []
        for path in self.train_files:
            if self.train_format == "sharegpt":
                samples += read_sharegpt(path, self.image_root, self.domain, self.strip_prefix)
            else:
                own = read_support_flattened(path, self.image_root, self.strip_prefix)
                samples += [s for s in own if self.domain is None or s.domain == self.domain]
        if not samples:
            raise ValueError(f"no training samples in {self.train_files} (domain {self.domain})")
        return samples

    def _train_dataset(self) -> ConversationDataset:
        samples = self._train_samples()
        kept, self.skipped["train"] = drop_bad_items(samples, self.bad_items, verify=self.bad_items == "skip")
        return ConversationDataset(kept, *self.pixels["images"])

    def _eval_items(self, split: str) -> tuple[list[TestbedItem], dict | None]:
        """The split's testbed items (of ``domain``) and its answers (None without an answers file)."""
        file, answers_file = self.eval_files[split]
        items = read_testbed(self.root / file, self.image_root, self.strip_prefix)
        if self.domain is not None:
            items = [item for item in items if item.domain == self.domain]
        answers = None
        if answers_file is not None:
            from egolab.metrics.vqa import read_answers

            answers = read_answers(self.root / answers_file)
        return items, answers

    def _testbed(self, items: Sequence[TestbedItem], answers: dict | None) -> TestbedDataset:
        max_pixels, min_pixels = self.pixels[self.frames_as]
        return TestbedDataset(
            items, answers, max_pixels, min_pixels, self.prompt_style, self.frames_as, self.fps_rule
        )

    def _eval_dataset(self, split: str) -> TestbedDataset | None:
        if self.eval_files[split][0] is None:
            return None
        items, answers = self._eval_items(split)
        kept, self.skipped[split] = drop_bad_items(items, self.bad_items, verify=self.bad_items == "skip")
        return self._testbed(kept, answers)

    def _split_files(self, split: str) -> list[Path]:
        """The json files a split reads (none when it is not configured)."""
        if split == "train":
            return self.train_files
        file, answers = self.eval_files[split]
        return [] if file is None else [self.root / f for f in (file, answers) if f is not None]

    def check_files(self) -> list[str]:
        """Every unusable file of the configured splits, one message each: a json that does not read (or
        val/test items without answers), and each bad frame, named with the items that show it.

        ``validate="headers"`` looks for every frame and parses it with PIL (``verify``: headers and chunks,
        no pixels), ``"full"`` decodes every frame, ``"none"`` checks nothing; no processor or model is
        loaded. Works before :meth:`prepare_data`: a split whose files a configured demo has not made yet is
        left to the generator. Under ``bad_items="skip"`` bad frames leave their items out, so they are
        logged, not returned.
        """
        if self.validate == "none":
            return []
        problems: list[str] = []
        skipped: list[str] = []
        for split in SPLITS_ALL:
            files = self._split_files(split)
            if not files or (self.demo is not None and not all(f.is_file() for f in files)):
                continue
            try:
                if split == "train":
                    items: Sequence[ShareGPTSample | TestbedItem] = self._train_samples()
                else:
                    items, answers = self._eval_items(split)
                    self._testbed(items, answers)  # every item must have its answer
            except (OSError, ValueError) as err:
                problems.append(f"{split} split: {err}")
                continue
            checked: dict[Path, str | None] = {}
            users: dict[Path, list[str]] = {}
            for item in items:
                for frame in _frames_of(item):
                    if frame not in checked:
                        checked[frame] = _frame_problem(frame, True, decode=self.validate == "full")
                    if checked[frame] is not None:
                        users.setdefault(frame, []).append(_item_name(item))
            for frame, names in users.items():
                more = f" (and {len(names) - 1} more)" if len(names) > 1 else ""
                message = f"{split} split: {names[0]}{more}: {checked[frame]}"
                (skipped if self.bad_items == "skip" else problems).append(message)
        if skipped:
            log.warning(
                "%d missing or unreadable frames (bad_items=skip leaves their items out), e.g. %s",
                len(skipped), skipped[:3],
            )  # fmt: skip
        return problems

    def setup(self, stage: str | None = None) -> None:
        """Load the processor and build the datasets the stage needs (fit: train + val; test: test)."""
        if self.processor is None:
            from transformers import AutoProcessor

            self.processor = AutoProcessor.from_pretrained(self.processor_name)
        splits = {"fit": ("train", "val"), "validate": ("val",), "test": ("test",)}.get(
            stage or "", SPLITS_ALL
        )
        for split in splits:
            if split not in self.datasets:
                dataset = self._train_dataset() if split == "train" else self._eval_dataset(split)
                if dataset is not None:
                    self.datasets[split] = dataset

    def _collator(self, training: bool) -> QwenVLCollator:
        return QwenVLCollator(
            self.processor, training, self.template, self.answer_prefix, self.cutoff_len, self.system_prompt
        )

    def _loader(self, split: str) -> Any:
        from egolab.data.loaders import make_loader

        training = split == "train"
        return make_loader(
            self.datasets[split],
            self.batch_size if training else self.eval_batch_size,
            training,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            collate_fn=self._collator(training),
        )

    def train_dataloader(self) -> Any:
        return self._loader("train")

    def val_dataloader(self) -> Any:
        return self._loader("val") if "val" in self.datasets else []

    def test_dataloader(self) -> Any:
        if "test" not in self.datasets:
            raise ValueError("testing needs data.test_file (a testbed-format json)")
        return self._loader("test")
