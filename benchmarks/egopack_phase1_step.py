"""Seconds per training step of the full-size EgoPack phase-1 model on Ego4D-shaped synthetic batches.

One step = one batch of every enabled task (AR 9 nodes, LTA 2 + 20, OSCC 4, PNR 16 per graph; 3 segments
of 1536-d Omnivore features per node; batch 16), forward + backward + Adam, as the release trains. With
``--reference PATH`` (a checkout of sapeirone/EgoPack; needs ``pip install einops``) the release's own
modules with the same weights are timed in the same process and the ratio is printed.

    python benchmarks/egopack_phase1_step.py [--steps 10] [--threads 2] [--reference /path/to/EgoPack]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from torch_geometric.data import Batch, Data

from egolab.data.backpack import lta_edges, radius_edges
from egolab.models.egopack import build_multitask_graph, count_trainable

TASKS = ("ar", "lta", "oscc", "pnr")
NODES = {"ar": 9, "lta": 22, "oscc": 4, "pnr": 16}
OSCC_TRAIN_CLIPS = 41_085  # Ego4D v1 OSCC train (spec 1.2): the epoch is at least this long / batch


def synthetic_batch(task: str, batch_size: int, generator: torch.Generator) -> Batch:
    """Random features and labels with the real node counts, positions and edges of each task."""
    nodes = NODES[task]
    if task == "ar":
        pos, edges = torch.arange(nodes) - 4, radius_edges(torch.arange(nodes) - 4, 1.5)
    elif task == "lta":
        pos, edges = torch.arange(nodes), lta_edges(2, 20, 1.5)
    else:
        pos, edges = torch.arange(nodes), radius_edges(torch.arange(nodes), 1.5)
    graphs = []
    for _ in range(batch_size):
        x = torch.randn(nodes, 3, 1536, generator=generator)
        if task == "ar":
            y = torch.full((nodes, 2), -1)
            y[4] = torch.tensor([3, 7])
        elif task == "lta":
            y = torch.randint(0, 115, (nodes, 2), generator=generator)
            y[:2] = -1
        elif task == "oscc":
            y = torch.randint(0, 2, (1,), generator=generator)
        else:
            y = torch.zeros(nodes, dtype=torch.long)
            y[5] = 1
        graphs.append(Data(x=x, y=y, pos=pos, edge_index=edges))
    return Batch.from_data_list(graphs)


def time_steps(step: Callable[[], None], steps: int) -> list[float]:
    step()  # warm-up
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return times


def ours_step(batches: dict[str, Batch]) -> Callable[[], None]:
    model = build_multitask_graph(TASKS).train()
    print(f"ours: {count_trainable(model):,} trainable parameters")
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-5, weight_decay=1e-5)

    def step() -> None:
        optimizer.zero_grad()
        total = 0.0
        for task, data in batches.items():
            h = model.temporal(data.x, data.pos, data.edge_index, data.batch)
            head = model.heads[task]
            logits = head.logits(head.features(h), data.batch)
            total = total + head.loss(logits, data.y).mean()
        total.backward()
        optimizer.step()

    return step


def reference_step(batches: dict[str, Batch], checkout: Path) -> Callable[[], None]:
    sys.path.insert(0, str(checkout))
    from models.graph import Graph
    from models.tasks import LTATask, OSCCTask, PNRTask, RecognitionTask

    temporal = Graph(
        1536,
        1024,
        3,
        temporal_pooling={
            "_target_": "models.temporal_pooling.trn_pooling.TRNPooling",
            "dropout": 0.5,
            "hidden_size": 1024,
        },
        num_segments=3,
    ).train()
    heads = {
        "ar": RecognitionTask(1024, 1024, heads=(115, 478)),
        "lta": LTATask(1024, 1024, heads=(115, 478)),
        "oscc": OSCCTask(1024, 1024),
        "pnr": PNRTask(1024, 1024),
    }
    params = [*temporal.parameters(), *(p for h in heads.values() for p in h.parameters())]
    optimizer = torch.optim.Adam(params, lr=1e-5, weight_decay=1e-5)

    def step() -> None:
        optimizer.zero_grad()
        total = 0.0
        for task, data in batches.items():
            features = heads[task].forward_features(temporal(data))
            if task == "oscc":
                logits = heads[task].forward_logits(features, data.batch)
                loss = torch.nn.functional.cross_entropy(logits, data.y, reduction="none")
            else:
                loss = heads[task].compute_loss(heads[task].forward_logits(features), data.y)
            total = total + loss.mean()
        total.backward()
        optimizer.step()

    return step


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--reference", type=Path, help="a checkout of sapeirone/EgoPack")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    generator = torch.Generator().manual_seed(0)
    batches = {task: synthetic_batch(task, args.batch_size, generator) for task in TASKS}
    steps_per_epoch = -(-OSCC_TRAIN_CLIPS // args.batch_size)
    results = {"ours": statistics.median(time_steps(ours_step(batches), args.steps))}
    if args.reference is not None:
        release = reference_step(batches, args.reference)
        results["release"] = statistics.median(time_steps(release, args.steps))
    print(f"threads {args.threads}, batch {args.batch_size} per task, {len(TASKS)} tasks per step")
    for name, seconds in results.items():
        print(
            f"{name}: {seconds:.3f} s per step; an epoch of >= {steps_per_epoch} steps (OSCC train "
            f"{OSCC_TRAIN_CLIPS} clips) >= {seconds * steps_per_epoch / 60:.1f} min"
        )
    if "release" in results:
        print(f"release / ours: {results['release'] / results['ours']:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
