"""EgoPack (Peirone et al., CVPR 2024): a multi-task temporal graph, then a backpack of task prototypes.

Phase 1 (:class:`MultiTaskGraph`): every sample is a small temporal graph whose nodes carry S segment
features. :class:`TemporalGraph` collapses the segments with a TRN-style MLP and refines the nodes with
a residual GraphSAGE stack; one head per task (AR, LTA, OSCC, PNR) projects the node features to a task
feature ``f = features(h)`` and classifies it.

Phase 2 (:class:`EgoPack`, "GraphONE" in the release): the support tasks' features of the AR training
actions are averaged into one frozen prototype per seen (verb, noun) action (:func:`build_prototypes`).
For a novel task, each support task's features of a node are refined by message passing from their k
nearest prototypes, and per-task auxiliary classifiers on the refined features are fused with the novel
head's logits (sum; mean for OSCC).

Released behaviour kept on purpose (spec sections 1.3, 1.4, 2):

* ``norm_scope="batch"``: the release's GNN ``torch_geometric.nn.LayerNorm`` runs in 'graph' mode
  without a batch vector, so it normalises over every node and channel of the whole mini-batch (all
  graphs together): a node's features depend on the other graphs of its batch, and the prototypes on
  the batch size they were built with (256 against 16 in training). The default, ``"graph"``,
  normalises each sample's graph on its own (the batch vector is passed), so a sample's output does not
  depend on what it is batched with; the reported numbers come from ``"batch"``.
* The k-NN edges of the interaction are computed once from the initial queries and reused at every
  stage; the prototype rows are the frozen prototypes at every stage.
* ``build_prototypes(release_scaling=True)`` reproduces the release's prototypes, mean / K for K
  support tasks (labels counted once per task); the default is the true mean.

Cosine dissimilarity normalises with ``F.normalize`` (a zero vector has dissimilarity 1 to everything
instead of NaN); otherwise identical to the release.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch
import torch.nn.functional as F
import torch_geometric.nn as gnn
from torch import nn
from torch_geometric.data import Data
from torch_geometric.utils import add_remaining_self_loops

Logits = torch.Tensor | tuple[torch.Tensor, ...]


def count_trainable(module: nn.Module) -> int:
    """Number of trainable parameters (``requires_grad``) of a module."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad)


class TRNPooling(nn.Module):
    """TRN-style segment pooling: (N, S, C) flattened segment-major to (N, S*C), then a 3-layer MLP."""

    def __init__(
        self, input_size: int, num_segments: int, hidden_size: int, output_size: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.input_size = input_size
        self.num_segments = num_segments
        self.mlp = nn.Sequential(
            nn.Linear(num_segments * input_size, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, hidden_size),
            nn.LayerNorm(hidden_size),
            nn.ReLU(),
            nn.Dropout(dropout),
            nn.Linear(hidden_size, output_size),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 3 or x.shape[1:] != (self.num_segments, self.input_size):
            raise ValueError(
                f"expected node features (N, {self.num_segments}, {self.input_size}), got {tuple(x.shape)}"
            )
        return self.mlp(x.reshape(x.shape[0], -1))


class TemporalGraph(nn.Module):
    """EgoPack's temporal model: ``h = TRN(x)``, then ``h + GNN(h + PE(pos), edge_index)``.

    GNN = ``depth`` x [SAGEConv(H, H, project=True) (mean aggregation), graph-mode LayerNorm per graph
    (``norm_scope="graph"``) or over the whole mini-batch (``"batch"``, as released), LeakyReLU(0.2)],
    then Linear(H, H); ``depth=0`` leaves the TRN output unchanged.
    """

    def __init__(
        self,
        input_size: int = 1536,
        hidden_size: int = 1024,
        depth: int = 3,
        num_segments: int = 3,
        pooling_hidden_size: int = 1024,
        dropout: float = 0.5,
        pre_dropout: float = 0.0,
        norm_scope: str = "graph",
    ) -> None:
        super().__init__()
        if norm_scope not in ("graph", "batch"):
            raise ValueError(f"norm_scope must be 'graph' or 'batch', got {norm_scope!r}")
        self.hidden_size = hidden_size
        self.norm_scope = norm_scope
        self.pre_dropout = nn.Dropout(pre_dropout)
        self.pooling = TRNPooling(input_size, num_segments, pooling_hidden_size, hidden_size, dropout)
        self.positional_encoding = gnn.PositionalEncoding(hidden_size)
        self.convs = nn.ModuleList(gnn.SAGEConv(hidden_size, hidden_size, project=True) for _ in range(depth))
        self.norms = nn.ModuleList(gnn.LayerNorm(hidden_size) for _ in range(depth))
        self.output = nn.Linear(hidden_size, hidden_size) if depth > 0 else None

    def forward(
        self, x: torch.Tensor, pos: torch.Tensor, edge_index: torch.Tensor, batch: torch.Tensor | None = None
    ) -> torch.Tensor:
        """(N, S, C) segment features, (N,) positions, (2, E) edges, (N,) graph of each node -> (N, H)."""
        h = self.pooling(self.pre_dropout(x))
        if self.output is None:
            return h
        groups = batch if self.norm_scope == "graph" else None
        z = h + self.positional_encoding(pos)
        for conv, norm in zip(self.convs, self.norms):
            z = F.leaky_relu(norm(conv(z, edge_index), groups), negative_slope=0.2)
        return h + self.output(z)


def projection(input_size: int, features_size: int, dropout: float = 0.0) -> nn.Sequential:
    """A head's task projection: Dropout -> Linear -> LayerNorm -> ReLU -> Linear."""
    return nn.Sequential(
        nn.Dropout(dropout),
        nn.Linear(input_size, features_size),
        nn.LayerNorm(features_size),
        nn.ReLU(),
        nn.Linear(features_size, features_size),
    )


def classifier(features_size: int, num_classes: int, dropout: float = 0.0) -> nn.Sequential:
    """Dropout -> Linear(features_size, num_classes)."""
    return nn.Sequential(nn.Dropout(dropout), nn.Linear(features_size, num_classes))


def _fuse(logits: Sequence[torch.Tensor], average: bool) -> torch.Tensor:
    """Main logits fused with the auxiliary ones: their sum, or their mean with ``average``."""
    stacked = torch.stack(list(logits))
    return stacked.mean(0) if average else stacked.sum(0)


def _aux_classifier(aux_classifiers: nn.ModuleDict, task: str, head: str) -> nn.Module:
    if task not in aux_classifiers:
        raise KeyError(f"the {head} head has no auxiliary classifier for {task!r} (add_aux_classifiers)")
    return aux_classifiers[task]


class ClassificationHead(nn.Module):
    """AR / LTA head: per-node verb and noun classifiers on the task feature.

    With ``aux`` (phase 2) each head's logits are the main logits plus those of one auxiliary classifier
    per support task on that task's refined features (their mean with ``average_logits``).
    """

    def __init__(
        self,
        name: str,
        input_size: int = 1024,
        features_size: int = 1024,
        num_classes: Sequence[int] = (115, 478),
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        aux_tasks: Sequence[str] = (),
        average_logits: bool = False,
    ) -> None:
        super().__init__()
        self.name = name
        self.num_classes = tuple(num_classes)
        self.head_dropout = head_dropout
        self.average_logits = average_logits
        self.projection = projection(input_size, features_size, dropout)
        self.classifiers = self._classifiers(features_size)
        self.aux_classifiers = nn.ModuleDict()
        self.add_aux_classifiers(aux_tasks)

    def _classifiers(self, features_size: int) -> nn.ModuleList:
        return nn.ModuleList(classifier(features_size, n, self.head_dropout) for n in self.num_classes)

    def add_aux_classifiers(self, tasks: Iterable[str]) -> None:
        """A fresh classifier set, shaped like the main one, for each support task."""
        features_size = self.classifiers[0][1].in_features
        for task in tasks:
            self.aux_classifiers[task] = self._classifiers(features_size)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h)

    def logits(
        self,
        f: torch.Tensor,
        batch: torch.Tensor | None = None,
        aux: Mapping[str, torch.Tensor] | None = None,
    ) -> tuple[torch.Tensor, ...]:
        """(N, F) -> one (N, n_i) tensor per classifier (verbs, nouns)."""
        main = [cls(f) for cls in self.classifiers]
        if aux is None:
            return tuple(main)
        per_task = [
            [cls(a) for cls in _aux_classifier(self.aux_classifiers, task, self.name)]
            for task, a in aux.items()
        ]
        return tuple(
            _fuse([m, *(task_logits[i] for task_logits in per_task)], self.average_logits)
            for i, m in enumerate(main)
        )

    def loss(self, logits: Sequence[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Per-node sum of the classifiers' cross-entropies; y (N, 2) with -1 = unlabelled (loss 0)."""
        losses = [
            F.cross_entropy(lg, target, ignore_index=-1, reduction="none")
            for lg, target in zip(logits, y.unbind(1), strict=True)
        ]
        return torch.stack(losses).sum(0)

    @staticmethod
    def sample(
        logits: Sequence[torch.Tensor], k: int = 5, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, ...]:
        """k independent draws per node from softmax(logits), per classifier: (N, k) int64 each (LTA)."""
        return tuple(
            torch.multinomial(lg.float().softmax(-1), k, replacement=True, generator=generator)
            for lg in logits
        )


class OSCCHead(nn.Module):
    """OSCC head: per-graph max pool of the task features, then a 2-way classifier.

    Auxiliary features are max-pooled per graph too; fusion is the mean by default (as released).
    """

    def __init__(
        self,
        input_size: int = 1024,
        features_size: int = 1024,
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        label_smoothing: float = 0.0,
        aux_tasks: Sequence[str] = (),
        average_logits: bool = True,
    ) -> None:
        super().__init__()
        self.head_dropout = head_dropout
        self.label_smoothing = label_smoothing
        self.average_logits = average_logits
        self.projection = projection(input_size, features_size, dropout)
        self.classifier = classifier(features_size, 2, head_dropout)
        self.aux_classifiers = nn.ModuleDict()
        self.add_aux_classifiers(aux_tasks)

    def add_aux_classifiers(self, tasks: Iterable[str]) -> None:
        """A fresh 2-way classifier for each support task."""
        for task in tasks:
            self.aux_classifiers[task] = classifier(self.classifier[1].in_features, 2, self.head_dropout)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h)

    def logits(
        self,
        f: torch.Tensor,
        batch: torch.Tensor | None = None,
        aux: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(N, F) node features, (N,) graph index -> (B, 2); ``batch=None`` is one graph."""
        main = self.classifier(gnn.global_max_pool(f, batch))
        if aux is None:
            return main
        aux_logits = [
            _aux_classifier(self.aux_classifiers, task, "oscc")(gnn.global_max_pool(a, batch))
            for task, a in aux.items()
        ]
        return _fuse([main, *aux_logits], self.average_logits)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-graph cross-entropy (label smoothing from the constructor); y (B,) with -1 ignored."""
        return F.cross_entropy(
            logits, y, ignore_index=-1, reduction="none", label_smoothing=self.label_smoothing
        )


class PNRHead(nn.Module):
    """PNR head: one logit per node (is this the point of no return?)."""

    def __init__(
        self,
        input_size: int = 1024,
        features_size: int = 1024,
        dropout: float = 0.0,
        head_dropout: float = 0.0,
        aux_tasks: Sequence[str] = (),
        average_logits: bool = False,
    ) -> None:
        super().__init__()
        self.head_dropout = head_dropout
        self.average_logits = average_logits
        self.projection = projection(input_size, features_size, dropout)
        self.classifier = classifier(features_size, 1, head_dropout)
        self.aux_classifiers = nn.ModuleDict()
        self.add_aux_classifiers(aux_tasks)

    def add_aux_classifiers(self, tasks: Iterable[str]) -> None:
        """A fresh 1-logit classifier for each support task."""
        for task in tasks:
            self.aux_classifiers[task] = classifier(self.classifier[1].in_features, 1, self.head_dropout)

    def features(self, h: torch.Tensor) -> torch.Tensor:
        return self.projection(h)

    def logits(
        self,
        f: torch.Tensor,
        batch: torch.Tensor | None = None,
        aux: Mapping[str, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """(N, F) -> (N,)."""
        main = self.classifier(f).squeeze(-1)
        if aux is None:
            return main
        aux_logits = [
            _aux_classifier(self.aux_classifiers, task, "pnr")(a).squeeze(-1) for task, a in aux.items()
        ]
        return _fuse([main, *aux_logits], self.average_logits)

    def loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Per-node binary cross-entropy with logits against the one-hot target y (N,)."""
        return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")


def build_head(
    task: str,
    hidden_size: int = 1024,
    features_size: int = 1024,
    num_verbs: int = 115,
    num_nouns: int = 478,
    task_dropout: float = 0.0,
    head_dropout: float = 0.0,
    oscc_label_smoothing: float = 0.0,
    aux_tasks: Sequence[str] = (),
) -> nn.Module:
    """The head of one task ('ar', 'lta', 'oscc' or 'pnr') with the released fusion for its kind."""
    sizes = {"input_size": hidden_size, "features_size": features_size}
    dropouts = {"dropout": task_dropout, "head_dropout": head_dropout}
    if task in ("ar", "lta"):
        return ClassificationHead(
            task, num_classes=(num_verbs, num_nouns), aux_tasks=aux_tasks, **sizes, **dropouts
        )
    if task == "oscc":
        return OSCCHead(label_smoothing=oscc_label_smoothing, aux_tasks=aux_tasks, **sizes, **dropouts)
    if task == "pnr":
        return PNRHead(aux_tasks=aux_tasks, **sizes, **dropouts)
    raise ValueError(f"unknown backpack task {task!r} (expected ar, lta, oscc or pnr)")


class MultiTaskGraph(nn.Module):
    """The phase-1 model: one shared :class:`TemporalGraph` and a head per enabled task."""

    def __init__(self, temporal: TemporalGraph, heads: Mapping[str, nn.Module]) -> None:
        super().__init__()
        self.temporal = temporal
        self.heads = nn.ModuleDict(dict(heads))

    def forward(self, task: str, data: Data) -> Logits:
        """Logits of ``task`` for a PyG batch (``x``, ``pos``, ``edge_index``, ``batch``)."""
        head = self.heads[task]
        h = self.temporal(data.x, data.pos, data.edge_index, data.batch)
        return head.logits(head.features(h), getattr(data, "batch", None))


def build_multitask_graph(
    tasks: Sequence[str],
    input_size: int = 1536,
    hidden_size: int = 1024,
    depth: int = 3,
    num_segments: int = 3,
    pooling_hidden_size: int = 1024,
    dropout: float = 0.5,
    pre_dropout: float = 0.0,
    features_size: int = 1024,
    num_verbs: int = 115,
    num_nouns: int = 478,
    task_dropout: float = 0.0,
    head_dropout: float = 0.0,
    oscc_label_smoothing: float = 0.0,
    novel_task: str | None = None,
    norm_scope: str = "graph",
) -> MultiTaskGraph:
    """Temporal graph + heads for ``tasks`` from plain values (the released sweep values are the defaults).

    With ``novel_task`` (phase 2) that task's head gets an auxiliary classifier per other task.
    """
    tasks = list(tasks)
    if novel_task is not None and novel_task not in tasks:
        raise ValueError(f"novel_task {novel_task!r} is not one of the tasks {tasks}")
    temporal = TemporalGraph(
        input_size, hidden_size, depth, num_segments, pooling_hidden_size, dropout, pre_dropout, norm_scope
    )
    heads = {
        task: build_head(
            task,
            hidden_size=hidden_size,
            features_size=features_size,
            num_verbs=num_verbs,
            num_nouns=num_nouns,
            task_dropout=task_dropout,
            head_dropout=head_dropout,
            oscc_label_smoothing=oscc_label_smoothing,
            aux_tasks=[t for t in tasks if t != task] if task == novel_task else (),
        )
        for task in tasks
    }
    return MultiTaskGraph(temporal, heads)


def cosine_dissimilarity(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """1 - cos between the rows of a (M, F) and b (P, F): (M, P)."""
    return 1 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T


@torch.no_grad()
def knn_edges(queries: torch.Tensor, prototypes: torch.Tensor, k: int) -> torch.Tensor:
    """Edges prototype -> query on the graph [prototypes; queries], plus a self loop on every node.

    Each query (node P + i) receives its k most similar prototypes (smallest 1 - cos; ties in argsort
    order). Returns (2, Q*k + P + Q).
    """
    num_prototypes, num_queries = prototypes.shape[0], queries.shape[0]
    k = min(k, num_prototypes)
    nearest = cosine_dissimilarity(queries, prototypes.to(queries.dtype)).argsort(dim=1)[:, :k]
    targets = torch.arange(num_prototypes, num_prototypes + num_queries, device=queries.device)
    edges = torch.stack([nearest.flatten(), targets.repeat_interleave(k)])
    return add_remaining_self_loops(edges, num_nodes=num_prototypes + num_queries)[0]


class InteractionStage(nn.Module):
    """One EgoPack stage: SAGEConv(F, H, max aggregation, no bias, no projection) -> LayerNorm -> ReLU
    -> Linear(H, F)."""

    def __init__(self, features_size: int, hidden_size: int) -> None:
        super().__init__()
        self.conv = gnn.SAGEConv(features_size, hidden_size, aggr="max", bias=False, project=False)
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Linear(hidden_size, features_size)

    def forward(self, x: torch.Tensor, edge_index: torch.Tensor) -> torch.Tensor:
        return self.proj(F.relu(self.norm(self.conv(x, edge_index))))


class EgoPack(nn.Module):
    """Phase 2: refine each support task's node features with its frozen task prototypes.

    Prototypes live in buffers ``prototypes_<task>`` (P, F), empty until :meth:`set_prototypes` or a
    loaded state dict (which resizes them). Each support task has its own ``depth`` stages.
    """

    def __init__(
        self,
        support_tasks: Sequence[str],
        features_size: int = 1024,
        hidden_size: int = 1024,
        k: int = 4,
        depth: int = 3,
        residual: bool = True,
    ) -> None:
        super().__init__()
        self.support_tasks = tuple(support_tasks)
        self.features_size = features_size
        self.k = k
        self.residual = residual
        for task in self.support_tasks:
            self.register_buffer(self._buffer_name(task), torch.zeros(0, features_size))
        self.stages = nn.ModuleDict(
            {
                task: nn.ModuleList(InteractionStage(features_size, hidden_size) for _ in range(depth))
                for task in self.support_tasks
            }
        )

    @staticmethod
    def _buffer_name(task: str) -> str:
        return f"prototypes_{task}"

    def prototypes(self, task: str) -> torch.Tensor:
        """The (P, F) prototypes of a support task."""
        if task not in self.support_tasks:
            raise KeyError(f"{task!r} is not a support task of this EgoPack {self.support_tasks}")
        return getattr(self, self._buffer_name(task))

    def has_prototypes(self) -> bool:
        """Whether every support task has prototypes (set, or loaded from a checkpoint)."""
        return all(self.prototypes(task).shape[0] > 0 for task in self.support_tasks)

    def set_prototypes(self, prototypes: Mapping[str, torch.Tensor]) -> None:
        """Store the prototypes of every support task (copied to the buffers' device and dtype)."""
        missing = set(self.support_tasks) - set(prototypes)
        if missing:
            raise ValueError(f"no prototypes given for the support tasks {sorted(missing)}")
        for task in self.support_tasks:
            current, new = self.prototypes(task), prototypes[task]
            if new.dim() != 2 or new.shape[1] != self.features_size:
                raise ValueError(
                    f"prototypes of {task!r}: expected (P, {self.features_size}), got {tuple(new.shape)}"
                )
            # in place: the buffer object stays the one DDP (wrapped before fitting starts) knows
            current.set_(new.detach().to(current.device, current.dtype).clone())

    def _load_from_state_dict(
        self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
    ):
        # P is known only once the backpack is built: take the checkpoint's (a wrong F is reported as usual)
        for task in self.support_tasks:
            saved = state_dict.get(prefix + self._buffer_name(task))
            if saved is not None and saved.dim() == 2 and saved.shape[1] == self.features_size:
                self.prototypes(task).resize_(saved.shape)
        super()._load_from_state_dict(
            state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys, error_msgs
        )

    def interact(self, features: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """{support task: (N, F) features} -> {task: (N, F) refined features}.

        The release detaches the support features before this call (no gradient into the support heads).
        """
        out = {}
        for task, queries in features.items():
            prototypes = self.prototypes(task).to(queries.dtype)
            if prototypes.shape[0] == 0:
                raise RuntimeError(f"EgoPack has no prototypes for {task!r}: call set_prototypes first")
            edges = knn_edges(queries, prototypes, self.k)
            num_prototypes = prototypes.shape[0]
            q = queries
            for stage in self.stages[task]:
                refined = stage(torch.cat([prototypes, q]), edges)[num_prototypes:]
                q = refined + q if self.residual else refined
            out[task] = q
        return out


def _device_of(module: nn.Module) -> torch.device:
    tensor = next(iter(module.parameters()), None)
    if tensor is None:
        tensor = next(iter(module.buffers()), None)
    return torch.device("cpu") if tensor is None else tensor.device


@torch.no_grad()
def build_prototypes(
    temporal: nn.Module,
    heads: Mapping[str, nn.Module],
    loader: Iterable,
    num_nouns: int = 478,
    release_scaling: bool = False,
) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Per support task, the mean task feature of every (verb, noun) action seen in ``loader``.

    ``loader`` yields PyG AR batches (``x``, ``pos``, ``edge_index``, ``y`` (N, 2), -1 on unlabelled
    nodes). The temporal model and heads run in eval mode (restored afterwards) on their device; sums
    are accumulated in float64. Returns ({task: (P, F) float32}, the P kept action ids
    ``verb * num_nouns + noun``, ascending). ``release_scaling`` divides every prototype by the number
    of tasks, as the release does.
    """
    if not heads:
        raise ValueError("build_prototypes needs at least one support head")
    modules = [temporal, *heads.values()]
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    device = _device_of(temporal)
    ids = torch.zeros(0, dtype=torch.long, device=device)
    counts = torch.zeros(0, dtype=torch.float64, device=device)
    sums: dict[str, torch.Tensor] = {}
    try:
        for data in loader:
            data = data.to(device)
            labelled = data.y[:, 0] != -1
            if not labelled.any():
                continue
            h = temporal(data.x, data.pos, data.edge_index, data.batch)[labelled]
            y = data.y[labelled]
            labels = y[:, 0] * num_nouns + y[:, 1]
            merged = torch.unique(torch.cat([ids, labels]))
            old_rows, new_rows = torch.searchsorted(merged, ids), torch.searchsorted(merged, labels)
            counts = (
                counts.new_zeros(len(merged))
                .index_add_(0, old_rows, counts)
                .index_add_(0, new_rows, torch.ones_like(labels, dtype=torch.float64))
            )
            for task, head in heads.items():
                f = head.features(h).double()
                previous = sums.get(task, f.new_zeros(0, f.shape[1]))
                batch_sums = f.new_zeros(len(merged), f.shape[1]).index_add_(0, new_rows, f)
                sums[task] = (
                    f.new_zeros(len(merged), f.shape[1]).index_add_(0, old_rows, previous) + batch_sums
                )
            ids = merged
    finally:
        for m, mode in zip(modules, modes):
            m.train(mode)
    if not sums:
        raise ValueError("build_prototypes: the loader gave no labelled nodes (y[:, 0] != -1)")
    divisor = counts * (len(heads) if release_scaling else 1)
    return {task: (s / divisor[:, None]).float() for task, s in sums.items()}, ids
