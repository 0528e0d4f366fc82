"""S-GEAR parts: losses on hand cases, the gated prototype head, prototype attention, prototype files."""

import math

import pytest
import torch

from egolab.models.sgear import (
    AnticipationLoss,
    GatedPrototypeHead,
    PrototypeAttention,
    Prototypes,
    normalized_l1,
    normed_mse,
    resize_channels,
)


def test_semantic_loss_by_hand():
    # s = [1, -1, 2] -> s / |s|_1 = [0.25, -0.25, 0.5]; r = [2, 1, 1] -> [0.5, 0.25, 0.25]
    # sum |diff| = 0.25 + 0.5 + 0.25 = 1.0
    s = torch.tensor([[1.0, -1.0, 2.0]])
    r = torch.tensor([[2.0, 1.0, 1.0]])
    torch.testing.assert_close(normalized_l1(s, r), torch.tensor([1.0]))
    torch.testing.assert_close(normalized_l1(r, 3 * r), torch.tensor([0.0]))  # scale-free


def test_regularisation_loss_by_hand():
    # z = [3, 4] -> [0.6, 0.8]; p = [0, 2] -> [0, 1]; squared distance 0.36 + 0.04 = 0.4
    torch.testing.assert_close(
        normed_mse(torch.tensor([[3.0, 4.0]]), torch.tensor([[0.0, 2.0]])), torch.tensor([0.4])
    )


def test_gated_head_by_hand():
    head = GatedPrototypeHead(dim=2, num_actions=2, dropout=0.0, temperature=1.0)
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[2.0, 0.0]])
    out = head(x, protos)
    torch.testing.assert_close(out["similarities"], torch.tensor([[1.0, 0.0]]))
    w = torch.softmax(torch.tensor([1.0, 0.0]), 0)
    attended = w[0] * protos[0] + w[1] * protos[1]
    gate = torch.sigmoid(torch.tensor(0.5))
    torch.testing.assert_close(out["embedding"], (gate * x + (1 - gate) * attended))
    torch.testing.assert_close(out["logits"], head.fc(out["embedding"]))
    assert GatedPrototypeHead(dim=16, num_actions=2).temperature == 4.0  # released: sqrt(C)


def test_prototype_attention_selects_similar_prototypes_and_mixes():
    torch.manual_seed(0)
    attention = PrototypeAttention(dim=4, num_heads=2, max_len=8)
    protos = torch.eye(4)[[0, 1, 2, 3, 0]] * torch.tensor([1, 1, 1, 1, 2.0])[:, None]
    x = torch.zeros(1, 2, 4)
    x[0, :, 2] = 1.0  # time-averaged feature along axis 2: prototype 2 first
    selected = attention.select(x, protos)
    assert selected.shape == (1, 2, 4) and torch.equal(selected[0, 0], protos[2])
    rows = attention.toeplitz(3)
    assert rows.shape == (2, 3, 3)
    torch.testing.assert_close(rows.sum(-1), torch.ones(2, 3))
    with torch.no_grad():
        attention.toeplitz_weights[:, 1] = 5.0  # favours offset i - j = 1 (mod 3): row 0 -> column 2
    assert attention.toeplitz(3)[0, 0].argmax() == 2 and attention.toeplitz(3)[0, 1].argmax() == 0
    out = attention(torch.randn(3, 5, 4), protos)
    assert out.shape == (3, 5, 4)


def test_prototypes_from_files(tmp_path):
    enc = torch.randn(3, 6)
    torch.save({"encodings": enc}, tmp_path / "enc.pt")
    sims = torch.nn.functional.normalize(enc, dim=1) @ torch.nn.functional.normalize(enc, dim=1).T
    torch.save({"similarities": sims}, tmp_path / "sim.pt")
    protos = Prototypes(3, 4, str(tmp_path / "enc.pt"), str(tmp_path / "sim.pt"))
    protos.load_pretrained()
    torch.testing.assert_close(protos.visual.data, resize_channels(enc, 4))
    torch.testing.assert_close(protos.language_rows(torch.tensor([2, 0])), sims[[2, 0]])
    assert "language_similarity" not in protos.state_dict()  # re-read from its file, not checkpointed
    torch.save({"prototypes": torch.ones(3, 4)}, tmp_path / "visual.pt")
    visual = Prototypes(3, 4, visual=str(tmp_path / "visual.pt"), freeze=True)
    visual.load_pretrained()
    assert torch.equal(visual.visual.data, torch.ones(3, 4)) and not visual.visual.requires_grad
    wrong = Prototypes(5, 4, str(tmp_path / "enc.pt"))
    with pytest.raises(ValueError, match=r"enc.pt: shape \(3, 6\), expected \(5, C\)"):
        wrong.load_pretrained()
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        Prototypes(3, 4, str(tmp_path / "missing.pt")).load_pretrained()


def test_resize_channels_is_linear_interpolation():
    x = torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(resize_channels(x, 4), torch.tensor([[0.0, 0.25, 0.75, 1.0]]))
    assert resize_channels(x, 2) is x


def test_loss_weights_and_ignored_labels(tmp_path):
    torch.manual_seed(0)
    enc = torch.randn(3, 4)
    torch.save({"encodings": enc}, tmp_path / "enc.pt")
    torch.save({"similarities": torch.rand(3, 3)}, tmp_path / "sim.pt")
    protos = Prototypes(3, 4, str(tmp_path / "enc.pt"), str(tmp_path / "sim.pt"))
    protos.load_pretrained()
    future = torch.randn(2, 4)
    outputs = {
        "logits": torch.randn(2, 3),
        "past_logits": torch.randn(2, 3, 3),
        "features": torch.randn(2, 3, 4),
        "decoded": torch.randn(2, 3, 4),
        "future": future,
        "similarities": torch.nn.functional.normalize(future, dim=1)
        @ torch.nn.functional.normalize(protos.visual.data, dim=1).T,
    }
    batch = {"action": torch.tensor([1, -1]), "past_actions": torch.tensor([[0, -1, 2], [-1, -1, 1]])}
    loss = AnticipationLoss(cls_action=1.0, past_cls_action=0.5, feat=2.0, semantic=4.0, regularization=1.0)
    terms = loss(outputs, batch, protos)
    ce = torch.nn.functional.cross_entropy
    torch.testing.assert_close(terms["cls_action"], ce(outputs["logits"][:1], torch.tensor([1])))
    past = outputs["past_logits"].flatten(0, 1)[[0, 2, 5]]
    torch.testing.assert_close(terms["past_cls_action"], ce(past, torch.tensor([0, 2, 1])))
    feat = (outputs["decoded"][:, :2] - outputs["features"][:, 1:]).pow(2).mean()
    torch.testing.assert_close(terms["feat"], feat)
    sem = normalized_l1(outputs["similarities"][:1], protos.language_similarity[[1]]).mean()
    torch.testing.assert_close(terms["semantic"], sem)
    torch.testing.assert_close(
        terms["regularization"], normed_mse(future[:1], protos.visual.data[[1]]).mean()
    )
    total = (
        terms["cls_action"] + 0.5 * terms["past_cls_action"] + 2 * feat + 4 * sem + terms["regularization"]
    )
    torch.testing.assert_close(terms["loss"], total)
    unlabeled = {"action": torch.tensor([-1, -1]), "past_actions": torch.full((2, 3), -1)}
    assert all(math.isfinite(float(v)) for v in loss(outputs, unlabeled, protos).values())
    assert set(AnticipationLoss(past_cls_action=0.0)(outputs, batch)) == {"cls_action", "feat", "loss"}
    with pytest.raises(ValueError, match="prototypes"):
        AnticipationLoss(semantic=1.0)(outputs, batch, None)
