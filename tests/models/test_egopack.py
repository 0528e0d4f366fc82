"""EgoPack model: parameter counts from the released layer list, hand-checkable behaviour, a short overfit.

Bit-exact agreement with the official release is checked by tools/compare_egopack.py (needs the checkout).
"""

import pytest
import torch
from torch import Tensor, nn
from torch_geometric.data import Batch, Data

import egolab.models.egopack as egopack
from egolab.models.egopack import (
    ClassificationHead,
    EgoPack,
    OSCCHead,
    PNRHead,
    TemporalGraph,
    TRNPooling,
    build_multitask_graph,
    build_prototypes,
    count_trainable,
    knn_edges,
)

TASKS = ("ar", "lta", "oscc", "pnr")


def linear(n_in: int, n_out: int, bias: bool = True) -> int:
    return n_in * n_out + (n_out if bias else 0)


def layer_norm(n: int) -> int:
    return 2 * n


def chain_graph(num_nodes: int, y: torch.Tensor, sizes=(3, 8), pos: torch.Tensor | None = None) -> Data:
    """A graph of num_nodes with (S, C) = sizes random segment features and ±1 chain edges."""
    src = torch.arange(num_nodes - 1)
    edge_index = torch.cat([torch.stack([src, src + 1]), torch.stack([src + 1, src])], dim=1)
    pos = torch.arange(num_nodes) if pos is None else pos
    return Data(x=torch.randn(num_nodes, *sizes), pos=pos, edge_index=edge_index, y=y)


# --- parameter counts ------------------------------------------------------------------------------


def test_full_size_parameter_counts_match_the_released_layer_list():
    c, s, h, f, verbs, nouns = 1536, 3, 1024, 1024, 115, 478
    trn = linear(s * c, h) + layer_norm(h) + linear(h, h) + layer_norm(h) + linear(h, h)
    sage_projected = linear(h, h) + linear(h, h) + linear(h, h, bias=False)  # project lin, lin_l, lin_r
    temporal = trn + 3 * (sage_projected + layer_norm(h)) + linear(h, h)
    projection = linear(h, f) + layer_norm(f) + linear(f, f)
    expected = {
        "ar": projection + linear(f, verbs) + linear(f, nouns),
        "lta": projection + linear(f, verbs) + linear(f, nouns),
        "oscc": projection + linear(f, 2),
        "pnr": projection + linear(f, 1),
    }
    assert temporal == 17_321_984
    assert expected == {"ar": 2_709_073, "lta": 2_709_073, "oscc": 2_103_298, "pnr": 2_102_273}
    assert temporal + sum(expected.values()) == 26_945_701

    model = build_multitask_graph(TASKS)
    assert count_trainable(model.temporal) == temporal
    assert {task: count_trainable(head) for task, head in model.heads.items()} == expected
    assert count_trainable(model) == 26_945_701

    # one EgoPack stage: SAGEConv without bias or projection (lin_l, lin_r), LayerNorm, Linear
    stage = linear(f, h, bias=False) + linear(f, h, bias=False) + layer_norm(h) + linear(h, f)
    assert stage == 3_148_800
    for depth in (1, 2):
        pack = EgoPack(("ar", "oscc", "pnr"), f, h, k=4, depth=depth)
        assert count_trainable(pack) == depth * 9_446_400
        pack.set_prototypes({task: torch.randn(7, f) for task in ("ar", "oscc", "pnr")})
        assert count_trainable(pack) == depth * 9_446_400  # prototypes are buffers, not parameters


def test_phase2_builder_adds_aux_classifiers_to_the_novel_head_only():
    model = build_multitask_graph(TASKS, novel_task="oscc", oscc_label_smoothing=0.1)
    assert set(model.heads["oscc"].aux_classifiers) == {"ar", "lta", "pnr"}
    assert all(len(model.heads[t].aux_classifiers) == 0 for t in ("ar", "lta", "pnr"))
    assert model.heads["oscc"].label_smoothing == 0.1
    assert count_trainable(model.heads["oscc"]) == 2_103_298 + 3 * linear(1024, 2)
    with pytest.raises(ValueError, match="novel_task"):
        build_multitask_graph(("ar", "lta"), novel_task="pnr")


# --- temporal model ---------------------------------------------------------------------------------


def test_trn_flattens_segments_major():
    pool = TRNPooling(input_size=2, num_segments=3, hidden_size=4, output_size=5)
    seen = {}
    pool.mlp[0].register_forward_pre_hook(lambda _module, args: seen.update(x=args[0]))
    x = torch.arange(2 * 3 * 2, dtype=torch.float32).reshape(2, 3, 2)
    assert pool(x).shape == (2, 5)
    assert torch.equal(seen["x"], torch.cat([x[:, 0], x[:, 1], x[:, 2]], dim=1))
    assert seen["x"][0].tolist() == [0, 1, 2, 3, 4, 5]
    with pytest.raises(ValueError, match=r"\(N, 3, 2\)"):
        pool(torch.zeros(2, 2, 3))


def test_depth_zero_is_the_trn_output():
    model = TemporalGraph(input_size=8, hidden_size=4, depth=0, num_segments=3, pooling_hidden_size=6).eval()
    data = chain_graph(5, torch.zeros(5))
    out = model(data.x, data.pos, data.edge_index)
    assert torch.equal(out, model.pooling(data.x))
    assert torch.equal(model(data.x, data.pos + 7, data.edge_index[:, :0]), out)
    assert count_trainable(model) == count_trainable(model.pooling)


def test_positional_encoding_residual_and_batch_wide_graph_norm():
    model = TemporalGraph(
        input_size=8, hidden_size=4, depth=1, num_segments=3, pooling_hidden_size=6, norm_scope="batch"
    ).eval()
    data = Batch.from_data_list(
        [chain_graph(3, torch.zeros(3), pos=torch.tensor([-1, 0, 1])) for _ in range(2)]
    )
    seen = {}
    model.convs[0].register_forward_pre_hook(lambda _module, args: seen.update(conv_in=args[0]))
    model.norms[0].register_forward_hook(lambda _module, _args, out: seen.update(norm_out=out))
    with torch.no_grad():
        model.norms[0].weight.fill_(1.0)
        model.norms[0].bias.zero_()
        out = model(data.x, data.pos, data.edge_index, data.batch)
    h = model.pooling(data.x)
    p = data.pos.float()[:, None]
    # PyG sinusoidal encoding, H = 4: frequencies 1 and 1e-4, sines then cosines
    pe = torch.cat([torch.sin(p), torch.sin(1e-4 * p), torch.cos(p), torch.cos(1e-4 * p)], dim=1)
    torch.testing.assert_close(seen["conv_in"], h + pe)
    # released mode: one normalisation over every node and channel of the mini-batch (all graphs)
    normed = seen["norm_out"]
    torch.testing.assert_close(normed.mean(), torch.tensor(0.0), atol=1e-6, rtol=0)
    torch.testing.assert_close(normed.std(unbiased=False), torch.tensor(1.0), atol=1e-4, rtol=0)
    assert normed[:3].mean().abs() > 1e-3 or normed[3:].mean().abs() > 1e-3
    assert not torch.allclose(out, h)
    with torch.no_grad():
        model.output.weight.zero_()
        model.output.bias.zero_()
    torch.testing.assert_close(model(data.x, data.pos, data.edge_index), h)  # residual around the GNN


# --- heads ------------------------------------------------------------------------------------------


def set_linear(layer: nn.Linear, weight: torch.Tensor | float, bias: float) -> None:
    with torch.no_grad():
        if isinstance(weight, torch.Tensor):
            layer.weight.copy_(weight)
        else:
            layer.weight.fill_(weight)
        layer.bias.fill_(bias)


def test_oscc_max_pools_each_graph():
    head = OSCCHead(input_size=2, features_size=2).eval()
    set_linear(head.classifier[1], torch.eye(2), 0.0)
    f = torch.tensor([[1.0, 5.0], [3.0, 2.0], [0.0, 0.0], [-1.0, 4.0]])
    assert head.logits(f, torch.tensor([0, 0, 1, 1])).tolist() == [[3.0, 5.0], [0.0, 4.0]]
    assert head.logits(f).tolist() == [[3.0, 5.0]]


def test_aux_fusion_sums_for_classification_and_pnr_and_averages_for_oscc():
    f, aux = torch.randn(4, 3), {"ar": torch.randn(4, 3), "lta": torch.randn(4, 3)}
    cls = ClassificationHead("ar", 3, 3, num_classes=(2, 5), aux_tasks=("ar", "lta")).eval()
    pnr = PNRHead(3, 3, aux_tasks=("ar", "lta")).eval()
    for classifiers, bias in ((cls.classifiers, 1.0), (cls.aux_classifiers["ar"], 2.0)):
        for c in classifiers:
            set_linear(c[1], 0.0, bias)
    for c in cls.aux_classifiers["lta"]:
        set_linear(c[1], 0.0, 4.0)
    verbs, nouns = cls.logits(f, aux=aux)
    assert verbs.shape == (4, 2) and nouns.shape == (4, 5)
    assert torch.all(verbs == 7.0) and torch.all(nouns == 7.0)
    assert all(torch.all(lg == 1.0) for lg in cls.logits(f))

    set_linear(pnr.classifier[1], 0.0, 1.0)
    set_linear(pnr.aux_classifiers["ar"][1], 0.0, 2.0)
    set_linear(pnr.aux_classifiers["lta"][1], 0.0, 4.0)
    assert pnr.logits(f).shape == (4,)
    assert pnr.logits(f, aux=aux).tolist() == [7.0] * 4

    oscc = OSCCHead(2, 2, aux_tasks=("ar",)).eval()
    set_linear(oscc.classifier[1], 0.0, 1.0)
    set_linear(oscc.aux_classifiers["ar"][1], torch.eye(2), 0.0)
    a = torch.tensor([[1.0, -2.0], [3.0, 0.0], [5.0, 6.0]])
    logits = oscc.logits(torch.zeros(3, 2), torch.tensor([0, 0, 1]), aux={"ar": a})
    assert logits.tolist() == [[(1 + 3) / 2, (1 + 0) / 2], [(1 + 5) / 2, (1 + 6) / 2]]
    with pytest.raises(KeyError, match="pnr"):
        oscc.logits(torch.zeros(3, 2), torch.tensor([0, 0, 1]), aux={"pnr": a})


def test_losses_per_row_ignore_unlabelled():
    cls = ClassificationHead("ar", 3, 3, num_classes=(2, 5))
    logits = (torch.randn(3, 2), torch.randn(3, 5))
    y = torch.tensor([[-1, -1], [1, 4], [0, 2]])
    loss = cls.loss(logits, y)
    expected = nn.functional.cross_entropy(logits[0][1:], y[1:, 0], reduction="none") + (
        nn.functional.cross_entropy(logits[1][1:], y[1:, 1], reduction="none")
    )
    assert loss[0] == 0.0
    torch.testing.assert_close(loss[1:], expected)

    oscc_logits, oscc_y = torch.randn(3, 2), torch.tensor([1, -1, 0])
    plain = OSCCHead(3, 3).loss(oscc_logits, oscc_y)
    smooth = OSCCHead(3, 3, label_smoothing=0.1).loss(oscc_logits, oscc_y)
    torch.testing.assert_close(
        plain[[0, 2]], nn.functional.cross_entropy(oscc_logits[[0, 2]], oscc_y[[0, 2]], reduction="none")
    )
    assert plain[1] == 0.0 and smooth[1] == 0.0 and not torch.allclose(plain, smooth)

    pnr_logits, one_hot = torch.randn(4), torch.tensor([0, 0, 1, 0])
    torch.testing.assert_close(
        PNRHead(3, 3).loss(pnr_logits, one_hot), -nn.functional.logsigmoid(pnr_logits * (2 * one_hot - 1))
    )


def test_lta_sampling_is_reproducible_and_follows_the_logits():
    logits = (torch.randn(6, 5), torch.randn(6, 7))
    first = ClassificationHead.sample(logits, k=5, generator=torch.Generator().manual_seed(3))
    again = ClassificationHead.sample(logits, k=5, generator=torch.Generator().manual_seed(3))
    assert [s.shape for s in first] == [(6, 5), (6, 5)] and all(s.dtype == torch.int64 for s in first)
    assert all(torch.equal(a, b) for a, b in zip(first, again))

    one_hot = torch.full((4, 6), float("-inf"))
    one_hot[torch.arange(4), torch.tensor([5, 0, 2, 2])] = 0.0
    (samples,) = ClassificationHead.sample((one_hot,), k=8, generator=torch.Generator().manual_seed(0))
    assert samples.tolist() == [[5] * 8, [0] * 8, [2] * 8, [2] * 8]

    (draws,) = ClassificationHead.sample(
        (torch.tensor([[0.7, 0.3]]).log(),), k=4000, generator=torch.Generator()
    )
    assert abs((draws == 0).float().mean().item() - 0.7) < 0.03


# --- EgoPack (phase 2) ------------------------------------------------------------------------------


def backpack_case() -> tuple[torch.Tensor, torch.Tensor]:
    """Four prototypes along the axes (one scaled: cosine ignores it) and two queries whose two nearest
    prototypes are {0, 1} and {2, 3}."""
    prototypes = torch.eye(4)
    prototypes[1] *= 10.0
    queries = torch.tensor([[1.0, 0.5, 0.1, 0.0], [0.0, 0.05, 1.0, 0.3]])
    return prototypes, queries


def test_knn_edges_link_the_nearest_prototypes_and_add_self_loops():
    prototypes, queries = backpack_case()
    edges = knn_edges(queries, prototypes, k=2)
    expected = {(0, 4), (1, 4), (2, 5), (3, 5)} | {(i, i) for i in range(6)}
    assert edges.shape == (2, 2 * 2 + 4 + 2)
    assert set(map(tuple, edges.T.tolist())) == expected
    assert knn_edges(queries, prototypes, k=9).shape == (2, 2 * 4 + 6)  # k is capped at P


def test_interaction_by_hand(monkeypatch):
    prototypes, queries = backpack_case()
    pack = EgoPack(("ar",), features_size=4, hidden_size=5, k=2, depth=2, residual=True).eval()
    pack.set_prototypes({"ar": prototypes})
    calls = []
    monkeypatch.setattr(egopack, "knn_edges", lambda *a: calls.append(1) or knn_edges(*a))
    out = pack.interact({"ar": queries})["ar"]
    assert len(calls) == 1  # the k-NN graph of the initial queries serves every stage

    neighbours = [[0, 1], [2, 3]]
    q = queries
    for stage in pack.stages["ar"]:
        w_l, w_r = stage.conv.lin_l.weight, stage.conv.lin_r.weight
        refined = []
        for i, nbrs in enumerate(neighbours):
            pooled = (
                torch.cat([prototypes[nbrs], q[i : i + 1]]).max(dim=0).values
            )  # max over prototypes + self
            refined.append(stage.proj(torch.relu(stage.norm(w_l @ pooled + w_r @ q[i]))))
        q = torch.stack(refined) + q
    torch.testing.assert_close(out, q)


def test_prototype_buffers_resize_when_loading_a_checkpoint():
    pack = EgoPack(("ar", "oscc"), features_size=4, hidden_size=6, k=2, depth=1).eval()
    with pytest.raises(RuntimeError, match="set_prototypes"):
        pack.interact({"ar": torch.randn(3, 4)})
    with pytest.raises(ValueError, match="oscc"):
        pack.set_prototypes({"ar": torch.randn(5, 4)})
    pack.set_prototypes({"ar": torch.randn(5, 4), "oscc": torch.randn(3, 4, dtype=torch.float64)})
    assert pack.prototypes_oscc.dtype == torch.float32
    fresh = EgoPack(("ar", "oscc"), features_size=4, hidden_size=6, k=2, depth=1).eval()
    assert fresh.prototypes_ar.shape == (0, 4) and not fresh.has_prototypes()
    fresh.load_state_dict(pack.state_dict())
    assert fresh.has_prototypes()
    assert fresh.prototypes_ar.shape == (5, 4) and fresh.prototypes_oscc.shape == (3, 4)
    assert torch.equal(fresh.prototypes_ar, pack.prototypes_ar)
    queries = {"ar": torch.randn(3, 4), "oscc": torch.randn(3, 4)}
    for task, refined in pack.interact(queries).items():
        torch.testing.assert_close(fresh.interact(queries)[task], refined)
    wider = EgoPack(("ar", "oscc"), features_size=8, hidden_size=6, k=2, depth=1)
    with pytest.raises(RuntimeError, match="prototypes_ar"):
        wider.load_state_dict(pack.state_dict())


class FirstSegment(nn.Module):
    """Temporal stand-in: a node's feature is its first segment."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))

    def forward(self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor, batch=None) -> Tensor:
        return x[:, 0] * self.scale


class Scaled(nn.Module):
    """Head stand-in: features(h) = factor * h."""

    def __init__(self, factor: float) -> None:
        super().__init__()
        self.factor = factor

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.factor * h


def test_build_prototypes_true_mean_and_release_scaling():
    def batch(features: list[list[float]], labels: list[list[int]]) -> Data:
        x = torch.tensor(features)[:, None, :]
        return Data(
            x=x,
            pos=torch.arange(len(x)),
            edge_index=torch.zeros(2, 0, dtype=torch.long),
            y=torch.tensor(labels),
        )

    # action a = (verb 1, noun 2) -> id 7 and b = (0, 3) -> id 3 with 5 nouns; the -1 node is ignored
    loader = [
        batch([[1, 1], [100, 100], [4, 0]], [[1, 2], [-1, -1], [0, 3]]),
        batch([[3, 5], [2, 2], [2, 0]], [[1, 2], [0, 3], [1, 2]]),
    ]
    temporal, heads = FirstSegment().train(), {"lta": Scaled(1.0), "pnr": Scaled(-2.0)}
    prototypes, ids = build_prototypes(temporal, heads, loader, num_nouns=5)
    assert ids.tolist() == [3, 7]
    assert prototypes["lta"].dtype == torch.float32
    assert prototypes["lta"].tolist() == [[3.0, 1.0], [2.0, 2.0]]
    assert prototypes["pnr"].tolist() == [[-6.0, -2.0], [-4.0, -4.0]]
    assert temporal.training and heads["lta"].training  # modes restored
    released, released_ids = build_prototypes(temporal, heads, loader, num_nouns=5, release_scaling=True)
    assert torch.equal(released_ids, ids)
    for task in heads:
        torch.testing.assert_close(released[task], prototypes[task] / len(heads))
    with pytest.raises(ValueError, match="labelled"):
        build_prototypes(temporal, heads, [batch([[1, 1]], [[-1, -1]])], num_nouns=5)


# --- learning ---------------------------------------------------------------------------------------


def test_tiny_multitask_graph_overfits_a_fixed_batch():
    torch.manual_seed(0)
    verbs, nouns = 5, 6
    model = build_multitask_graph(
        TASKS,
        input_size=8,
        hidden_size=16,
        depth=2,
        num_segments=3,
        pooling_hidden_size=16,
        dropout=0.0,
        features_size=16,
        num_verbs=verbs,
        num_nouns=nouns,
    )

    def ar_graph() -> Data:
        y = torch.full((9, 2), -1)
        y[4] = torch.tensor([torch.randint(verbs, ()), torch.randint(nouns, ())])
        return chain_graph(9, y, pos=torch.arange(-4, 5))

    def lta_graph() -> Data:
        y = torch.stack([torch.randint(verbs, (6,)), torch.randint(nouns, (6,))], dim=1)
        y[:2] = -1
        return chain_graph(6, y)

    def pnr_graph() -> Data:
        return chain_graph(16, (torch.arange(16) == torch.randint(16, ())).long())

    batches = {
        "ar": Batch.from_data_list([ar_graph() for _ in range(4)]),
        "lta": Batch.from_data_list([lta_graph() for _ in range(3)]),
        "oscc": Batch.from_data_list([chain_graph(4, torch.tensor([i % 2])) for i in range(4)]),
        "pnr": Batch.from_data_list([pnr_graph() for _ in range(3)]),
    }
    logits = {task: model(task, data) for task, data in batches.items()}
    assert [lg.shape for lg in logits["ar"]] == [(36, verbs), (36, nouns)]
    assert logits["oscc"].shape == (4, 2) and logits["pnr"].shape == (48,)

    def losses() -> dict[str, torch.Tensor]:
        return {
            task: model.heads[task].loss(model(task, data), data.y).mean() for task, data in batches.items()
        }

    initial = {task: loss.item() for task, loss in losses().items()}
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(50):
        optimizer.zero_grad()
        torch.stack(list(losses().values())).sum().backward()
        optimizer.step()
    final = {task: loss.item() for task, loss in losses().items()}
    assert all(final[task] < 0.5 * initial[task] for task in TASKS), (initial, final)


def test_per_graph_norm_makes_a_sample_independent_of_its_batch_mates():
    """Default norm_scope="graph": each graph is normalised on its own; "batch" mixes the graphs."""
    torch.manual_seed(0)
    graphs = [chain_graph(3, torch.randn(3), pos=torch.tensor([-1, 0, 1])) for _ in range(3)]
    for scope, independent in (("graph", True), ("batch", False)):
        torch.manual_seed(1)
        model = TemporalGraph(8, 4, depth=2, num_segments=3, pooling_hidden_size=6, norm_scope=scope).eval()
        alone = Batch.from_data_list(graphs[:1])
        together = Batch.from_data_list(graphs)
        with torch.no_grad():
            out_alone = model(alone.x, alone.pos, alone.edge_index, alone.batch)
            out_together = model(together.x, together.pos, together.edge_index, together.batch)[:3]
        assert torch.allclose(out_alone, out_together, atol=1e-6) == independent, scope
    with pytest.raises(ValueError, match="norm_scope"):
        TemporalGraph(8, 4, norm_scope="node")
