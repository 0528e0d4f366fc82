"""The anticipation task in process: fit + test on a small demo, the predictions file contract, embeddings."""

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from shared_data import SHARED_DATA, require_shared

from egolab.launch.txtfile import compose_experiment
from egolab.metrics.anticipation import marginalize, score_predictions_file
from egolab.paths import CONF_DIR
from egolab.prototypes import generate_visual_prototypes

EXPTS = CONF_DIR.parent / "expts" / "anticipation"
# RULSTM's EK100 validation segments with no past frame (main.py --ek100 scores them zero): those at frame 1
RULSTM_DISCARDED = {
    "P01_11_0", "P03_26_0", "P08_10_0", "P08_16_0", "P08_17_0", "P17_02_0", "P18_04_0", "P26_33_0",
    "P26_38_0", "P32_02_0",
}  # fmt: skip

CONTRACT = {
    "uid", "action_logits", "verb_scores", "noun_scores", "verb_label", "noun_label", "action_label",
    "unseen", "action_to_verb", "action_to_noun", "tail_verbs", "tail_nouns", "tail_actions", "task",
    "version",
}  # fmt: skip


pytestmark = pytest.mark.usefixtures("single_thread")


def compose_demo(tmp_path, *overrides):
    """The demo S-GEAR config on a smaller demo, with random language prototype files (no MiniLM)."""
    protos = tmp_path / "protos"
    protos.mkdir(exist_ok=True)
    torch.manual_seed(0)
    encodings = torch.randn(40, 16)
    unit = torch.nn.functional.normalize(encodings, dim=1)
    torch.save({"encodings": encodings}, protos / "enc.pt")
    torch.save({"similarities": unit @ unit.T}, protos / "sim.pt")
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        return compose(
            "config",
            overrides=[
                "task=anticipation",
                "model=sgear/demo",
                "data=anticipation/demo",
                f"paths.demo_root={tmp_path / 'demo'}",
                "paths.root=/nonexistent",
                "+data.demo.segments_per_video=8",
                "+data.demo.language_prototypes=false",
                f"model.prototypes.language_encodings={protos / 'enc.pt'}",
                f"model.prototypes.language_similarities={protos / 'sim.pt'}",
                "task.criterion.past_cls_action=1.0",
                "task.criterion.semantic=1.0",
                "task.criterion.regularization=1.0",
                *overrides,
            ],
        )


def test_fit_test_and_predictions_contract(tmp_path):
    import lightning as L

    cfg = compose_demo(tmp_path, "task.store_embeddings=2")
    datamodule, task = instantiate(cfg.data), instantiate(cfg.task)
    trainer = L.Trainer(
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule)
    assert "val/action_recall5" in trainer.callback_metrics
    results = trainer.test(task, datamodule=datamodule, verbose=False)[0]
    path = task.write_predictions(tmp_path)
    with np.load(path, allow_pickle=False) as data:
        arrays = {k: data[k] for k in data.files}
    assert set(arrays) == CONTRACT
    test = datamodule.test_dataset
    n, a = len(test), 40
    assert arrays["action_logits"].shape == (n, a) and arrays["action_logits"].dtype == np.float32
    assert arrays["verb_scores"].shape == (n, 12) and arrays["noun_scores"].shape == (n, 16)
    np.testing.assert_allclose(arrays["verb_scores"].sum(1), 1.0, atol=1e-5)
    np.testing.assert_allclose(
        arrays["noun_scores"], marginalize(arrays["action_logits"], arrays["action_to_noun"], 16), atol=1e-6
    )
    assert arrays["uid"].tolist() == [s.uid for s in test.segments]
    assert arrays["action_label"].tolist() == [s.action for s in test.segments]
    for name in ("verb_label", "noun_label", "action_label", "action_to_verb", "tail_actions"):
        assert arrays[name].dtype == np.int64, name
    assert arrays["unseen"].dtype == bool
    assert arrays["unseen"].tolist() == [s.participant_id == "P04" for s in test.segments]
    assert str(arrays["task"]) == "anticipation" and str(arrays["version"]) == "egolab-anticipation-1"
    assert arrays["task"].shape == ()
    recomputed = score_predictions_file(path)
    assert set(results) == {f"test/{k}" for k in recomputed}
    for key, value in recomputed.items():
        assert results[f"test/{key}"] == pytest.approx(value, abs=1e-6, nan_ok=True), key

    embeddings = torch.load(tmp_path / "embeddings.pt", weights_only=True)["embeddings"]
    assert embeddings and all(v.shape[0] <= 2 and v.shape[1] == 64 for v in embeddings.values())
    actions = tmp_path / "demo" / "anticipation" / "annotations" / "actions.csv"
    visual = torch.load(generate_visual_prototypes(tmp_path / "embeddings.pt", actions, tmp_path / "v.pt"))
    assert visual["prototypes"].shape == (40, 64)


def test_class_count_mismatch_is_reported(tmp_path):
    import lightning as L

    cfg = compose_demo(tmp_path, "model.num_actions=41", "model.prototypes.language_encodings=null")
    cfg.model.prototypes.visual = str(tmp_path / "unused.pt")
    datamodule, task = instantiate(cfg.data), instantiate(cfg.task)
    trainer = L.Trainer(max_epochs=1, logger=False, enable_checkpointing=False, enable_progress_bar=False)
    with pytest.raises(ValueError, match="40 actions, but the model classifies 41"):
        trainer.fit(task, datamodule=datamodule)


def test_official_protocol_counts_discarded_segments_with_zero_scores():
    """RULSTM's EK100 evaluation: a segment with no observed frame scores 0 everywhere and still counts."""
    from types import SimpleNamespace

    from egolab.data.anticipation import Segment
    from egolab.metrics.anticipation import metrics_from_arrays
    from egolab.tasks.anticipation import prediction_arrays

    actions = SimpleNamespace(
        verb=np.array([0, 0, 1, 1, 2, 2, 3]), noun=np.array([0, 1, 0, 1, 0, 1, 0]), num_verbs=4, num_nouns=2
    )
    kept = [
        Segment("a", "P01_01", "P01", 5.0, 6.0, 0, 0, 0),
        Segment("b", "P02_01", "P02", 5.0, 6.0, 3, 0, 6),
    ]
    dropped = Segment("c", "P02_01", "P02", 0.5, 1.0, 0, 0, 0)
    dataset = SimpleNamespace(
        actions=actions,
        segments=kept,
        discarded=[dropped],
        unseen=np.array([False, True]),
        discarded_unseen=np.array([True]),
        tail_verbs=np.array([3]),
        tail_nouns=np.array([1]),
    )
    logits = np.zeros((2, 7), np.float32)
    logits[0, 0] = logits[1, 6] = 5.0  # both kept segments right at top-1
    ours = prediction_arrays(dataset, [0, 1], logits)
    official = prediction_arrays(dataset, [0, 1], logits, include_discarded=True)
    assert ours["uid"].tolist() == ["a", "b"] and official["uid"].tolist() == ["a", "b", "c"]
    assert not official["action_logits"][2].any() and not official["verb_scores"][2].any()
    assert official["unseen"].tolist() == [False, True, True]
    assert metrics_from_arrays(ours)["action_recall5"] == 1.0
    # zero scores rank actions 6, 5, 4, 3, 2 first (RULSTM's reversed argsort): "c" (action 0) is missed,
    # so action 0 has recall 1/2 and the class mean over actions {0, 6} is 0.75
    assert metrics_from_arrays(official)["action_recall5"] == pytest.approx(0.75)
    assert metrics_from_arrays(official)["action_top1"] == pytest.approx(2 / 3)


def test_include_discarded_zero_scores_exactly_rulstm_discarded_segments():
    """RULSTM's official EK100 validation: 10 zero-scored segments, the 20 more AVT drops are predicted."""
    from egolab.data.anticipation import AnticipationDataset
    from egolab.tasks.anticipation import prediction_arrays

    root = require_shared(SHARED_DATA / "epic_kitchens_100") / "rulstm_ek100"
    overrides = ["task=anticipation", "model=avt/features", "data=anticipation/ek100_rulstm"]
    with initialize_config_dir(str(CONF_DIR), version_base="1.3"):
        cfg = compose("config", overrides=[*overrides, "task.include_discarded=true"])
    assert cfg.data.dataset.rulstm_discard is True  # the one switch sets the dataset's discarding too
    dataset = AnticipationDataset(
        root / "validation.csv", root / "actions.csv", lambda *a: None, 1.0, 10.0, 10, 1.0,
        check_first=False, rulstm_discard=True,
    )  # fmt: skip
    logits = np.random.default_rng(0).normal(size=(len(dataset), 3806)).astype(np.float32)
    arrays = prediction_arrays(dataset, list(range(len(dataset))), logits, include_discarded=True)
    assert len(arrays["uid"]) == 9668
    zero = ~arrays["action_logits"].any(axis=1)
    assert set(arrays["uid"][zero].tolist()) == RULSTM_DISCARDED
    assert not arrays["verb_scores"][zero].any()
    np.testing.assert_allclose(arrays["verb_scores"][~zero].sum(1), 1.0, atol=1e-4)


def compose_anticipation(name: str):
    return compose_experiment(EXPTS / name, ["paths.root=/nonexistent"])


@pytest.mark.parametrize("name", ["ek100_avt_tsn.txt", "ek100_avt_ircsn.txt", "ek100_avt_vit.txt"])
def test_avt_ek100_experiments_follow_the_release(name):
    """AVT expts/0{1,2,4}_ek100_*.txt: classifier dropout 0.2, SGD with Nesterov momentum 0.9."""
    cfg = compose_anticipation(name)
    assert cfg.model.head.dropout == 0.2
    optimizer = cfg.task.optimizer
    assert (optimizer._target_, optimizer.momentum, optimizer.nesterov) == ("torch.optim.SGD", 0.9, True)
    decoder, reader = cfg.model.decoder, cfg.data.dataset.reader
    if name == "ek100_avt_ircsn.txt":  # 04_ek100_avt_ig65m.txt
        assert (decoder.n_layer, decoder.n_head, cfg.task.warmup_epochs) == (8, 2, 5)
        assert (reader.dims, reader.max_backtrack, cfg.model.feat_dim) == ([2048], 9, 2048)
    else:
        assert (decoder.n_layer, decoder.n_head, cfg.task.warmup_epochs) == (6, 4, 20)
    # the effective batch and LR as released: per-GPU batch x GPUs, AVT's LR x its world size
    released = {"ek100_avt_vit.txt": (3, 32, 3.2e-3)}.get(name, (64, 2, 2e-3))
    assert (cfg.data.batch_size, cfg.recipe.world_size, cfg.recipe.batch_size, optimizer.lr) == (
        released[0],
        released[1],
        released[0],
        released[2],
    )
    if name == "ek100_avt_vit.txt":  # the release's backbone: the checkpoint's pre-logits keys named unused
        backbone = cfg.model.backbone
        assert backbone.pre_logits is False and list(backbone.ignore_keys) == ["head.", "pre_logits."]


def test_init_from_copies_the_named_blocks_before_fitting(tmp_path):
    """`task.init_from=<run dir>`: a fresh fit starts from the earlier run's blocks (lr 0 keeps them)."""
    import lightning as L

    run = tmp_path / "vit_run"
    (run / "checkpoints").mkdir(parents=True)
    cfg = compose_demo(tmp_path, f"task.init_from={run}", "task.optimizer.lr=0.0")
    torch.manual_seed(1)
    source = instantiate(cfg.model).state_dict()
    torch.save(
        {"state_dict": {f"model.{k}": v for k, v in source.items()}}, run / "checkpoints" / "last.ckpt"
    )
    datamodule, task = instantiate(cfg.data), instantiate(cfg.task)
    mapper = task.model.mapper.weight.detach().clone()
    trainer = L.Trainer(
        max_epochs=1,
        limit_train_batches=1,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(task, datamodule=datamodule)
    state = task.model.state_dict()
    for block in ("decoder.", "head.fc.", "prototypes.visual", "prototype_attention.proj."):
        keys = [k for k in state if k.startswith(block)]
        assert keys and all(torch.equal(state[k], source[k]) for k in keys), block
    assert torch.equal(state["mapper.weight"], mapper)  # not a released init block: its own init
    assert not torch.equal(state["mapper.weight"], source["mapper.weight"])
