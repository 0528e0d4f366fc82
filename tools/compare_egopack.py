"""Fidelity check: egolab.models.egopack against the official EgoPack release, in float64 on CPU.

    python tools/compare_egopack.py --reference /path/to/EgoPack [--no-full]

The release's modules (models/graph.py, models/tasks/*.py, models/graphONE/graphONE.py, graphone.py) are
imported from the checkout. They need ``einops`` (and hydra-core, already an egolab dependency):
``pip install einops`` into the environment first. einops is NOT an egolab dependency; only this script
needs it, which is also why no test imports this file.

With the released sweep settings (TRN pooling, depth-3 GraphSAGE, heads with task_head_dropout 0.5,
GraphONE k=4 with residual, OSCC fused by the mean) at small sizes, and once at full size (1536 -> 1024,
115 verbs / 478 nouns), the script perturbs the release's weights, copies them into ours by an explicit
key mapping, feeds both identical random graph batches of the four tasks and prints the largest absolute
difference of: temporal features, each head's features, logits and per-row losses (phase 1, also in
train mode with the same dropout draws), the prototypes (release ``build_graphone`` against our
``build_prototypes(release_scaling=True)``), GraphONE's interaction outputs, and the phase-2 fused
logits and losses for every novel task. Exit status 1 if any difference exceeds 1e-10.
LTA sampling is not compared (the release draws from ``Categorical``, we from ``torch.multinomial``).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import re
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from torch_geometric.data import Batch, Data

from egolab.models.egopack import (
    EgoPack,
    MultiTaskGraph,
    build_multitask_graph,
    build_prototypes,
    count_trainable,
)

TASKS = ("ar", "lta", "oscc", "pnr")
TOLERANCE = 1e-10


@dataclass
class Sizes:
    name: str
    input_size: int
    num_segments: int
    hidden_size: int
    pooling_hidden_size: int
    graphone_hidden_size: int
    num_verbs: int
    num_nouns: int
    depth: int = 3
    graphone_k: int = 4
    graphone_depths: tuple[int, ...] = (1, 3)


SMALL = Sizes("small", 12, 3, 16, 20, 24, 7, 11)
FULL = Sizes("full", 1536, 3, 1024, 1024, 1024, 115, 478, graphone_depths=(3,))


class Report:
    """Collects (label, max abs difference) rows and prints them as they come."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.rows = 0

    def add(self, label: str, ours: torch.Tensor | tuple, reference: torch.Tensor | tuple) -> None:
        ours_t = ours if isinstance(ours, tuple | list) else (ours,)
        ref_t = reference if isinstance(reference, tuple | list) else (reference,)
        if len(ours_t) != len(ref_t):
            raise AssertionError(f"{label}: {len(ours_t)} tensors against {len(ref_t)}")
        diff = 0.0
        for a, b in zip(ours_t, ref_t, strict=True):
            if a.shape != b.shape:
                raise AssertionError(f"{label}: shape {tuple(a.shape)} against {tuple(b.shape)}")
            if a.numel():
                diff = max(diff, (a.double() - b.double()).abs().max().item())
        self.worst = max(self.worst, diff)
        self.rows += 1
        flag = "" if diff <= TOLERANCE else "   <-- over tolerance"
        print(f"  {label:<52s} {diff:.3e}{flag}")


def import_reference(path: Path) -> dict:
    """The release's classes and functions, imported from the checkout at ``path``."""
    sys.path.insert(0, str(path))
    graph = importlib.import_module("models.graph")
    tasks = importlib.import_module("models.tasks")
    graphone_module = importlib.import_module("models.graphONE.graphONE")
    build = importlib.import_module("graphone")
    build.tqdm = iter  # build_graphone wraps the loader in a progress bar; keep the report readable
    return {
        "Graph": graph.Graph,
        "RecognitionTask": tasks.RecognitionTask,
        "LTATask": tasks.LTATask,
        "OSCCTask": tasks.OSCCTask,
        "PNRTask": tasks.PNRTask,
        "GraphONE": graphone_module.GraphONE,
        "build_graphone": build.build_graphone,
    }


def temporal_key(key: str, depth: int) -> str:
    """Release ``Graph`` state-dict key -> our ``TemporalGraph`` key."""
    if key.startswith("temporal_pooling.proj."):
        return key.replace("temporal_pooling.proj.", "pooling.mlp.", 1)
    if key.startswith("positional_encoding."):
        return key
    match = re.fullmatch(r"net\.module_(\d+)\.(.+)", key)
    if match is None:
        raise KeyError(f"unmapped release temporal key {key}")
    index, rest = int(match.group(1)), match.group(2)
    if index == 3 * depth:
        return f"output.{rest}"
    layer, role = divmod(index, 3)
    if role == 0:
        return f"convs.{layer}.{rest}"
    if role == 1:
        return f"norms.{layer}.{rest}"
    raise KeyError(f"unmapped release temporal key {key}")


def head_key(key: str) -> str:
    """Release task head key -> our head key (only the projection is renamed)."""
    return key.replace("net.", "projection.", 1) if key.startswith("net.") else key


def graphone_key(key: str) -> str:
    """Release ``GraphONE`` key -> our ``EgoPack`` key."""
    match = re.fullmatch(r"embeddings\.(\w+)\.weight", key)
    if match:
        return f"prototypes_{match.group(1)}"
    match = re.fullmatch(r"conv_stages\.(\w+)\.(\d+)\.module_(\d)\.(.+)", key)
    if match is None:
        raise KeyError(f"unmapped release GraphONE key {key}")
    task, stage, index, rest = match.groups()
    role = {"0": "conv", "1": "norm", "3": "proj"}[index]
    return f"stages.{task}.{stage}.{role}.{rest}"


def copy_weights(reference: nn.Module, ours: nn.Module, mapping) -> None:
    """Load the release's state dict into ours through ``mapping``; both key sets must match exactly."""
    mapped = {mapping(key): value for key, value in reference.state_dict().items()}
    missing, extra = set(ours.state_dict()) - set(mapped), set(mapped) - set(ours.state_dict())
    if missing or extra:
        raise AssertionError(
            f"key mapping mismatch: ours only {sorted(missing)}, release only {sorted(extra)}"
        )
    ours.load_state_dict(mapped, strict=True)


@torch.no_grad()
def perturb(module: nn.Module, generator: torch.Generator) -> None:
    """Add noise to every trainable parameter (LayerNorm weights and biases included)."""
    for p in module.parameters():
        if p.requires_grad:
            p.add_(0.1 * torch.randn(p.shape, generator=generator, dtype=p.dtype))


def chain_edges(num_nodes: int) -> list[tuple[int, int]]:
    return [(i, i + 1) for i in range(num_nodes - 1)] + [(i + 1, i) for i in range(num_nodes - 1)]


def lta_edges(num_observed: int, num_forecast: int) -> list[tuple[int, int]]:
    """Chain, plus the last observed node to every forecast node (radius 1.5: floor(r) = 1 node)."""
    edges = set(chain_edges(num_observed + num_forecast))
    edges.update((num_observed - 1, j) for j in range(num_observed, num_observed + num_forecast))
    return sorted(edges)


def make_graph(sizes: Sizes, num_nodes: int, pos: torch.Tensor, edges, y: torch.Tensor, g) -> Data:
    x = torch.randn(num_nodes, sizes.num_segments, sizes.input_size, generator=g, dtype=torch.float64)
    return Data(x=x, pos=pos, edge_index=torch.tensor(edges, dtype=torch.long).T.contiguous(), y=y)


def action_labels(num_nodes: int, sizes: Sizes, g: torch.Generator, actions: torch.Tensor) -> torch.Tensor:
    pick = actions[torch.randint(len(actions), (num_nodes,), generator=g)]
    return torch.stack([pick // sizes.num_nouns, pick % sizes.num_nouns], dim=1)


def make_batches(sizes: Sizes, g: torch.Generator) -> tuple[dict[str, Batch], list[Batch]]:
    """One batch per task and three AR batches for the prototypes (a few repeated actions)."""
    actions = torch.randperm(sizes.num_verbs * sizes.num_nouns, generator=g)[:12]

    def ar_graph() -> Data:
        y = torch.full((9, 2), -1, dtype=torch.long)
        y[4] = action_labels(1, sizes, g, actions)[0]
        return make_graph(sizes, 9, torch.arange(-4, 5), chain_edges(9), y, g)

    def lta_graph() -> Data:
        y = action_labels(22, sizes, g, actions)
        y[:2] = -1
        return make_graph(sizes, 22, torch.arange(22), lta_edges(2, 20), y, g)

    def oscc_graph(label: int) -> Data:
        return make_graph(sizes, 4, torch.arange(4), chain_edges(4), torch.tensor([label]), g)

    def pnr_graph() -> Data:
        y = torch.zeros(16, dtype=torch.long)
        y[torch.randint(16, (1,), generator=g)] = 1
        return make_graph(sizes, 16, torch.arange(16), chain_edges(16), y, g)

    batches = {
        "ar": Batch.from_data_list([ar_graph() for _ in range(5)]),
        "lta": Batch.from_data_list([lta_graph() for _ in range(3)]),
        "oscc": Batch.from_data_list([oscc_graph(label) for label in (0, 1, 1, -1, 0, 1)]),
        "pnr": Batch.from_data_list([pnr_graph() for _ in range(4)]),
    }
    prototype_loader = [Batch.from_data_list([ar_graph() for _ in range(6)]) for _ in range(3)]
    return batches, prototype_loader


def build_reference(ref: dict, sizes: Sizes) -> tuple[nn.Module, dict[str, nn.Module]]:
    """Release temporal graph and the four heads as main_egopack.py builds them (aux classifiers included)."""
    pooling = {
        "_target_": "models.temporal_pooling.trn_pooling.TRNPooling",
        "hidden_size": sizes.pooling_hidden_size,
        "dropout": 0.5,
    }
    temporal = ref["Graph"](
        sizes.input_size, sizes.hidden_size, sizes.depth, 0.0, pooling, sizes.num_segments
    )
    h, heads = sizes.hidden_size, (sizes.num_verbs, sizes.num_nouns)
    common = {"dropout": 0.0, "head_dropout": 0.5}
    tasks = {
        "ar": ref["RecognitionTask"](h, h, heads=heads, aux_tasks=("oscc", "lta", "pnr"), **common),
        "oscc": ref["OSCCTask"](h, h, aux_tasks=("ar", "lta", "pnr"), average_logits=True, **common),
        "lta": ref["LTATask"](h, h, heads=heads, aux_tasks=("ar", "oscc", "pnr"), **common),
        "pnr": ref["PNRTask"](h, h, aux_tasks=("ar", "oscc", "lta"), **common),
    }
    return temporal, tasks


def build_ours(sizes: Sizes) -> MultiTaskGraph:
    model = build_multitask_graph(
        TASKS,
        input_size=sizes.input_size,
        hidden_size=sizes.hidden_size,
        depth=sizes.depth,
        num_segments=sizes.num_segments,
        pooling_hidden_size=sizes.pooling_hidden_size,
        dropout=0.5,
        features_size=sizes.hidden_size,
        num_verbs=sizes.num_verbs,
        num_nouns=sizes.num_nouns,
        task_dropout=0.0,
        head_dropout=0.5,
        norm_scope="batch",  # the release normalises over the whole mini-batch
    )
    for task, head in model.heads.items():
        head.add_aux_classifiers([t for t in TASKS if t != task])
    return model


def reference_logits(task: str, head: nn.Module, f: torch.Tensor, batch: torch.Tensor, aux=None):
    if task == "pnr":
        return head.forward_logits(f, aux_features=aux)
    return head.forward_logits(features=f, batch=batch, aux_features=aux)


def reference_phase1_loss(task: str, head: nn.Module, logits, y: torch.Tensor) -> torch.Tensor:
    """The per-row losses of main_temporal.py (plain CE for OSCC, no label smoothing)."""
    if task == "oscc":
        return nn.functional.cross_entropy(logits, y, ignore_index=-1, reduction="none")
    return reference_loss(task, head, logits, y)


def reference_loss(task: str, head: nn.Module, logits, y: torch.Tensor) -> torch.Tensor:
    """The release head's ``compute_loss``, except PNR: it casts the target with ``.float()``, which makes
    BCE return float32 in this float64 harness, so its ``loss_fn`` gets the target in the logits' dtype."""
    if task == "pnr":
        return head.loss_fn(logits, y.to(logits.dtype))
    return head.compute_loss(logits, y)


def compare_phase1(
    report: Report, ref_temporal, ref_heads, ours: MultiTaskGraph, batches, train: bool
) -> None:
    mode = "train" if train else "eval"
    ref_temporal.train(train)
    ours.train(train)
    for head in ref_heads.values():
        head.train(train)
    for task, data in batches.items():
        seed = 1234 + TASKS.index(task)
        torch.manual_seed(seed)
        h_ref = ref_temporal(data)
        f_ref = ref_heads[task].forward_features(h_ref)
        logits_ref = reference_logits(task, ref_heads[task], f_ref, data.batch)
        torch.manual_seed(seed)
        h = ours.temporal(data.x, data.pos, data.edge_index)
        head = ours.heads[task]
        f = head.features(h)
        logits = head.logits(f, data.batch)
        report.add(f"[{mode}] temporal features ({task} batch)", h, h_ref)
        report.add(f"[{mode}] {task} features", f, f_ref)
        report.add(f"[{mode}] {task} logits", logits, logits_ref)
        if not train:
            ref_loss = reference_phase1_loss(task, ref_heads[task], logits_ref, data.y)
            report.add(f"[{mode}] {task} loss per row (phase 1)", head.loss(logits, data.y), ref_loss)


@torch.no_grad()
def compare_phase2(
    report: Report, ref: dict, sizes: Sizes, ref_temporal, ref_heads, ours, batches, loader, g
):
    ref_temporal.eval()
    ours.eval()
    for head in ref_heads.values():
        head.eval()
    ours.heads["oscc"].label_smoothing = 0.1  # phase 2: the release's OSCCTask.compute_loss
    for novel in TASKS:
        support = [t for t in TASKS if t != novel]
        ref_protos = ref["build_graphone"](
            ref_temporal, ref_heads["ar"], [ref_heads[t] for t in support], dataloader=loader, device="cpu"
        )
        protos, ids = build_prototypes(
            ours.temporal, {t: ours.heads[t] for t in support}, loader, sizes.num_nouns, release_scaling=True
        )
        report.add(
            f"prototypes, support of {novel} ({len(ids)} actions)",
            tuple(protos.values()),
            tuple(ref_protos[t] for t in protos),
        )
        data = batches[novel]
        h_ref, h = ref_temporal(data), ours.temporal(data.x, data.pos, data.edge_index)
        for depth in sizes.graphone_depths:
            ref_graphone = ref["GraphONE"](
                ref_protos,
                features_size=sizes.hidden_size,
                hidden_size=sizes.graphone_hidden_size,
                k=sizes.graphone_k,
                depth=depth,
                residual=True,
            ).double()
            perturb(ref_graphone, g)
            egopack = EgoPack(support, sizes.hidden_size, sizes.graphone_hidden_size, sizes.graphone_k, depth)
            egopack.double()
            copy_weights(ref_graphone, egopack, graphone_key)  # also resizes the empty prototype buffers
            ref_graphone.eval()
            egopack.eval()
            ref_refined, _ = ref_graphone.interact({t: ref_heads[t].forward_features(h_ref) for t in support})
            refined = egopack.interact({t: ours.heads[t].features(h) for t in support})
            label = f"{novel} novel, depth {depth}"
            report.add(
                f"GraphONE interact ({label})",
                tuple(refined[t] for t in support),
                tuple(ref_refined[t] for t in support),
            )
            f_ref = ref_heads[novel].forward_features(h_ref)
            logits_ref = reference_logits(novel, ref_heads[novel], f_ref, data.batch, ref_refined)
            head = ours.heads[novel]
            logits = head.logits(head.features(h), data.batch, aux=refined)
            report.add(f"fused logits ({label})", logits, logits_ref)
            report.add(
                f"phase-2 loss per row ({label})",
                head.loss(logits, data.y),
                reference_loss(novel, ref_heads[novel], logits_ref, data.y),
            )


def compare_counts(report_counts: list[str], ref: dict, sizes: Sizes) -> bool:
    """Trainable parameters of the full phase-1 model and one GraphONE depth, release against ours."""
    ref_temporal, ref_heads = build_reference(ref, sizes)
    for head in ref_heads.values():
        if hasattr(head, "aux_classifiers"):
            del head.aux_classifiers
    ours = build_multitask_graph(TASKS, norm_scope="batch")
    ref_total = count_trainable(ref_temporal) + sum(count_trainable(h) for h in ref_heads.values())
    rows = [("phase 1, temporal", count_trainable(ref_temporal), count_trainable(ours.temporal))]
    rows += [
        (f"phase 1, {t} head", count_trainable(ref_heads[t]), count_trainable(ours.heads[t])) for t in TASKS
    ]
    rows.append(("phase 1, total", ref_total, count_trainable(ours)))
    protos = {t: torch.zeros(3, sizes.hidden_size) for t in ("lta", "oscc", "pnr")}
    ref_graphone = ref["GraphONE"](protos, sizes.hidden_size, sizes.graphone_hidden_size, k=4, depth=1)
    rows.append(
        (
            "GraphONE depth 1, 3 tasks",
            count_trainable(ref_graphone),
            count_trainable(EgoPack(tuple(protos), depth=1)),
        )
    )
    ok = True
    for label, ref_count, our_count in rows:
        ok &= ref_count == our_count
        report_counts.append(f"  {label:<30s} release {ref_count:>12,d}   ours {our_count:>12,d}")
    return ok


def run(ref: dict, sizes: Sizes) -> float:
    print(
        f"\n== {sizes.name}: C={sizes.input_size} S={sizes.num_segments} H=F={sizes.hidden_size} "
        f"TRN hidden {sizes.pooling_hidden_size}, GraphONE hidden {sizes.graphone_hidden_size}, "
        f"{sizes.num_verbs} verbs / {sizes.num_nouns} nouns, float64 =="
    )
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    ref_temporal, ref_heads = build_reference(ref, sizes)
    ref_temporal.double()
    for head in ref_heads.values():
        head.double()
        perturb(head, g)
    perturb(ref_temporal, g)
    ours = build_ours(sizes).double()
    copy_weights(ref_temporal, ours.temporal, lambda k: temporal_key(k, sizes.depth))
    for task in TASKS:
        copy_weights(ref_heads[task], ours.heads[task], head_key)
    batches, loader = make_batches(sizes, g)
    report = Report()
    with torch.no_grad():
        compare_phase1(report, ref_temporal, ref_heads, ours, batches, train=False)
        compare_phase1(report, ref_temporal, ref_heads, ours, batches, train=True)
    compare_phase2(report, ref, sizes, ref_temporal, ref_heads, ours, batches, loader, g)
    print(f"  -> {report.rows} comparisons, max abs difference {report.worst:.3e}")
    return report.worst


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of sapeirone/EgoPack")
    parser.add_argument("--no-full", action="store_true", help="skip the full-size run")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    torch.set_default_dtype(torch.float32)
    ref = import_reference(args.reference.resolve())

    counts: list[str] = []
    counts_ok = compare_counts(counts, ref, FULL)
    print("== trainable parameters, full size (sweep settings) ==")
    print("\n".join(counts))
    worst = max(run(ref, sizes) for sizes in ([SMALL] if args.no_full else [SMALL, FULL]))
    ok = counts_ok and worst <= TOLERANCE
    print(
        f"\n{'PASS' if ok else 'FAIL'}: max abs difference {worst:.3e} (tolerance {TOLERANCE:g}); "
        f"parameter counts {'equal' if counts_ok else 'DIFFER'}"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
