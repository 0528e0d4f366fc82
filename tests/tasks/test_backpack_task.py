"""BackpackTask: trainable parameters of phase 1 and phase 2 at the released size (derived from the spec's
layer list), the released loss averaging, support-run resolution and loading, frozen parts in phase 2, and
the predictions arrays of evaluation records."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch_geometric.data import Batch, Data

from egolab.metrics.backpack import metrics_from_arrays
from egolab.models.egopack import EgoPack, build_multitask_graph, count_trainable
from egolab.tasks.backpack import BackpackTask, prediction_arrays, resolve_support_checkpoint

TASKS = ("ar", "lta", "oscc", "pnr")
C, S, H, F, VERBS, NOUNS = 1536, 3, 1024, 1024, 115, 478


def linear(i: int, o: int, bias: bool = True) -> int:
    return i * o + (o if bias else 0)


def norm(d: int) -> int:
    return 2 * d


def spec_counts() -> dict[str, int]:
    """Trainable parameters per part, from the layer list of spec sections 1.3, 1.4 and 2.2."""
    trn = linear(S * C, H) + norm(H) + linear(H, H) + norm(H) + linear(H, H)
    sage_projected = linear(H, H) + linear(H, H, bias=False) + linear(H, H)  # lin_l, lin_r, project
    temporal = trn + 3 * (sage_projected + norm(H)) + linear(H, H)
    projection = linear(H, F) + norm(F) + linear(F, F)
    classifiers = {"ar": linear(F, VERBS) + linear(F, NOUNS), "oscc": linear(F, 2), "pnr": linear(F, 1)}
    classifiers["lta"] = classifiers["ar"]
    stage = 2 * linear(F, H, bias=False) + norm(H) + linear(H, F)  # max-SAGEConv, LayerNorm, Linear
    return {"temporal": temporal, "projection": projection, "stage": stage, **classifiers}


def phase2(novel: str, depth: int = 3, **task_options) -> BackpackTask:
    support = [t for t in TASKS if t != novel]
    model = build_multitask_graph(TASKS, novel_task=novel, head_dropout=0.5, oscc_label_smoothing=0.1)
    egopack = EgoPack(support, features_size=F, hidden_size=H, k=4, depth=depth)
    return BackpackTask(
        model, torch.optim.Adam, [novel], egopack=egopack, support_run="unused.ckpt", **task_options
    )


def test_phase1_trainable_parameters_equal_the_spec_layer_list():
    counts = spec_counts()
    model = build_multitask_graph(TASKS)
    expected = counts["temporal"] + sum(counts["projection"] + counts[t] for t in TASKS)
    assert count_trainable(model) == expected == 26_945_701
    task = BackpackTask(build_multitask_graph(["ar", "oscc"]), torch.optim.Adam, ["ar", "oscc"])
    assert (
        count_trainable(task) == counts["temporal"] + 2 * counts["projection"] + counts["ar"] + counts["oscc"]
    )


@pytest.mark.parametrize("novel", TASKS)
def test_phase2_trains_the_novel_head_its_aux_classifiers_the_stages_and_the_temporal_graph(novel):
    """Support heads and prototypes frozen; LTA also keeps the temporal graph frozen (as released)."""
    counts = spec_counts()
    frozen_temporal = novel == "lta"
    options = {"train_temporal": False, "temporal_train_mode": False} if frozen_temporal else {}
    task = phase2(novel, depth=3, **options)
    expected = (
        (0 if frozen_temporal else counts["temporal"])
        + counts["projection"]
        + 4 * counts[novel]  # main classifier + one auxiliary classifier per support task
        + 3 * 3 * counts["stage"]  # 3 support tasks x depth 3
    )
    assert count_trainable(task) == expected
    assert count_trainable(task.egopack) == 3 * 3 * 3_148_800


def test_released_loss_averages_over_every_node_and_phase1_sums_weighted_tasks():
    torch.manual_seed(0)
    model = build_multitask_graph(
        ["ar", "oscc"], input_size=6, hidden_size=8, pooling_hidden_size=8, features_size=8, num_verbs=3,
        num_nouns=4, dropout=0.0,
    )  # fmt: skip
    task = BackpackTask(model, torch.optim.Adam, ["ar", "oscc"], weights={"oscc": 0.5}).eval()
    y = torch.full((3, 2), -1)
    y[1] = torch.tensor([2, 3])
    pos = torch.tensor([-1, 0, 1])
    edges = torch.tensor([[0, 1, 1, 2], [1, 0, 2, 1]])
    ar = Batch.from_data_list([Data(x=torch.randn(3, 3, 6), y=y, pos=pos, edge_index=edges, uid="a")])
    oscc = Batch.from_data_list(
        [Data(x=torch.randn(3, 3, 6), y=torch.tensor([1]), pos=pos + 1, edge_index=edges, uid="o")]
    )
    verb, noun = task.forward_task("ar", ar)
    centre = (verb[1].log_softmax(0)[2] + noun[1].log_softmax(0)[3]).neg()
    torch.testing.assert_close(task.task_loss("ar", (verb, noun), ar), centre / 3)  # 3 nodes, 1 labelled
    oscc_loss = torch.nn.functional.cross_entropy(task.forward_task("oscc", oscc), torch.tensor([1]))
    task.log = lambda *args, **kwargs: None
    total = task.training_step({"ar": ar, "oscc": oscc}, 0)
    torch.testing.assert_close(total, centre / 3 + 0.5 * oscc_loss)


def test_support_run_resolution(tmp_path):
    run = tmp_path / "OUT" / "expts" / "b" / "mtl.txt" / "0" / "checkpoints"
    with pytest.raises(FileNotFoundError, match="launch.py -c expts/b/mtl.txt -l"):
        resolve_support_checkpoint("expts/b/mtl.txt", tmp_path / "OUT")
    run.mkdir(parents=True)
    (run / "best.ckpt").write_bytes(b"x")
    (run / "last.ckpt").write_bytes(b"x")
    cwd = tmp_path
    with pytest.MonkeyPatch.context() as patch:
        patch.chdir(cwd)
        assert resolve_support_checkpoint("expts/b/mtl.txt", tmp_path / "OUT") == (
            tmp_path / "OUT" / "expts" / "b" / "mtl.txt" / "0" / "checkpoints" / "best.ckpt"
        )
    assert resolve_support_checkpoint(str(run.parent), "x", which="last") == run / "last.ckpt"
    assert resolve_support_checkpoint(str(run / "best.ckpt"), "x") == run / "best.ckpt"


def small(tasks, novel=None):
    return build_multitask_graph(
        tasks, input_size=6, hidden_size=8, pooling_hidden_size=8, features_size=8, num_verbs=3,
        num_nouns=4, novel_task=novel,
    )  # fmt: skip


def test_load_support_checkpoint_copies_support_parts_and_refuses_a_run_without_them(tmp_path):
    phase1 = BackpackTask(small(["lta", "oscc", "pnr"]), torch.optim.Adam, ["lta", "oscc", "pnr"])
    path = tmp_path / "best.ckpt"
    torch.save({"state_dict": phase1.state_dict()}, path)
    egopack = EgoPack(["lta", "oscc", "pnr"], features_size=8, hidden_size=8, k=2, depth=1)
    task = BackpackTask(
        small(list(TASKS), "ar"), torch.optim.Adam, ["ar"], egopack=egopack, support_run=str(path)
    )
    novel_before = task.model.heads["ar"].state_dict()
    task.load_support_checkpoint(path)
    for key, value in phase1.model.state_dict().items():
        torch.testing.assert_close(task.model.state_dict()[key], value)
    for key, value in novel_before.items():  # not in the support run: keeps its initialisation
        torch.testing.assert_close(task.model.heads["ar"].state_dict()[key], value)

    egopack = EgoPack(["ar", "lta", "oscc"], features_size=8, hidden_size=8, k=2, depth=1)
    other = BackpackTask(
        small(list(TASKS), "pnr"), torch.optim.Adam, ["pnr"], egopack=egopack, support_run="."
    )
    with pytest.raises(ValueError, match=r"best.ckpt: not a phase-1 run of the support tasks"):
        other.load_support_checkpoint(path)


def test_phase2_keeps_frozen_parts_in_eval_mode_while_training():
    egopack = EgoPack(["ar", "oscc", "pnr"], features_size=8, hidden_size=8, k=2, depth=1)
    task = BackpackTask(
        small(list(TASKS), "lta"), torch.optim.Adam, ["lta"], egopack=egopack, support_run=".",
        train_temporal=False, temporal_train_mode=False,
    )  # fmt: skip
    task.train()
    task.on_train_epoch_start()
    assert not task.model.temporal.training and not task.model.heads["ar"].training
    assert task.model.heads["lta"].training and task.egopack.training
    assert not any(p.requires_grad for p in task.model.temporal.parameters())


def test_prediction_arrays_follow_the_contract_and_score():
    rng = np.random.default_rng(0)
    records = {
        "ar": [
            {
                "uid": f"c_{i}",
                "verb_logits": rng.normal(size=3),
                "noun_logits": rng.normal(size=4),
                "label": np.array([i % 3, i % 4]),
            }
            for i in range(6)
        ],  # fmt: skip
        "lta": [
            {
                "uid": "l",
                "verb": np.zeros((5, 2), int),
                "noun": np.ones((5, 2), int),
                "label": np.array([[0, 1], [1, 1]]),
            }
        ],  # fmt: skip
        "pnr": [{"uid": "p", "logits": np.arange(16.0), "start": 0.0, "end": 160.0, "pnr": 150.0}],
        "oscc": [{"uid": "o", "logits": np.array([0.0, 1.0]), "label": 1}],
    }
    arrays = prediction_arrays(records)
    assert arrays["ar_verb_logits"].shape == (6, 3) and arrays["ar_noun_label"].tolist() == [0, 1, 2, 3, 0, 1]
    assert arrays["lta_verb_samples"].shape == (1, 5, 2) and arrays["lta_noun_label"].tolist() == [[1, 1]]
    metrics = metrics_from_arrays(arrays)
    assert metrics["lta_verb_ed"] == 0.5 and metrics["lta_noun_ed"] == 0.0
    assert metrics["pnr_error_s"] == pytest.approx(0.0) and metrics["oscc_accuracy"] == 1.0


def test_task_and_data_must_agree_on_tasks():
    task = BackpackTask(small(["ar", "oscc"]), torch.optim.Adam, ["ar", "oscc"])
    task.trainer = SimpleNamespace(datamodule=SimpleNamespace(eval_tasks=["oscc", "ar"], taxonomy=None))
    with pytest.raises(ValueError, match="differ from task.tasks"):
        BackpackTask.setup(task, "fit")
    with pytest.raises(ValueError, match="no head"):
        BackpackTask(small(["ar"]), torch.optim.Adam, ["pnr"])


def test_phase1_logs_its_best_checkpoint_as_a_wandb_artifact_when_online(tmp_path):
    from lightning.pytorch.loggers import WandbLogger

    best = tmp_path / "best.ckpt"
    best.write_bytes(b"weights")
    logged = []

    class Run:
        def __init__(self, mode: str) -> None:
            self.settings = SimpleNamespace(mode=mode)

        def log_artifact(self, artifact) -> None:
            entries = sorted(artifact.manifest.entries)
            logged.append((self.settings.mode, artifact.name, artifact.type, entries))

    class FakeWandb(WandbLogger):
        def __init__(self, mode: str) -> None:
            self._run = Run(mode)

        @property
        def experiment(self):
            return self._run

    task = BackpackTask(small(["lta", "oscc", "pnr"]), torch.optim.Adam, ["pnr", "lta", "oscc"])
    task.trainer = SimpleNamespace(
        is_global_zero=True,
        checkpoint_callbacks=[SimpleNamespace(best_model_path=p) for p in ("", str(best))],
        loggers=[FakeWandb("offline"), FakeWandb("online")],
    )
    BackpackTask.on_fit_end(task)
    assert logged == [("online", "MTL_lta-oscc-pnr", "model", ["checkpoint.ckpt"])]
