"""VQATask: LoRA fine-tuning through Lightning, checkpoints holding only the adapters, `-t`-style reload of
base + adapters giving the same evaluation, records parsed by the configured rule."""

from functools import partial

import lightning as L
import pytest
import torch
from tiny_qwen import TINY_CONFIG, tiny_qwen

from egolab.checkpoints import TRAINED_KEYS
from egolab.data.vqa import VQADataModule
from egolab.metrics.vqa import read_predictions
from egolab.models.qwen_vl import QwenVL
from egolab.tasks.vqa import VQATask

LORA = {"r": 4, "alpha": 8, "dropout": 0.0}


@pytest.fixture(scope="module")
def base(tmp_path_factory):
    """A tiny Qwen3-VL saved as a HF folder: the 'pretrained' base every task below loads."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("tiny_base")
    tiny_qwen().net.save_pretrained(folder)
    return str(folder)


def _datamodule(vqa_demo) -> VQADataModule:
    return VQADataModule(
        processor=str(vqa_demo / "processor"),
        root=vqa_demo,
        train_files=["train.json"],
        test_file="test_testbed.json",
        test_answers="test_answers.json",
        domain="surgery",
        image_max_pixels=4096,
        image_min_pixels=1024,
        batch_size=8,
        eval_batch_size=16,
        answer_prefix='{"prediction": "',
    )


def _task(vqa_demo, base, lora=LORA, parse="official") -> VQATask:
    model = QwenVL(pretrained=base, dtype="float32", lora=lora, gradient_checkpointing=False)
    optimizer = partial(torch.optim.AdamW, lr=1e-2)
    return VQATask(model, optimizer, str(vqa_demo / "processor"), max_new_tokens=8, parse=parse)


def _trainer(tmp_path, **kwargs) -> L.Trainer:
    options = dict(
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    return L.Trainer(**{**options, **kwargs})


def test_lora_checkpoint_holds_the_adapters_and_reloads_onto_the_base(
    vqa_demo, base, tmp_path, single_thread
):
    task = _task(vqa_demo, base)
    trainer = _trainer(tmp_path, max_steps=3, limit_val_batches=0)
    datamodule = _datamodule(vqa_demo)
    trainer.fit(task, datamodule=datamodule)
    path = tmp_path / "adapters.ckpt"
    trainer.save_checkpoint(path)
    saved = torch.load(path, weights_only=False)
    assert saved["state_dict"] and all("lora_" in key for key in saved["state_dict"])
    assert sorted(saved["state_dict"]) == saved[TRAINED_KEYS] == task.trained_keys()
    adapters = sum(v.numel() for v in saved["state_dict"].values())
    assert adapters < sum(p.numel() for p in task.parameters()) / 2

    trainer.test(task, datamodule=datamodule)
    first = {r["id"]: r for r in task.test_records}
    assert len(first) == 32 and {r["domain"] for r in first.values()} == {"Surgery"}

    fresh = _task(vqa_demo, base)
    _trainer(tmp_path).test(fresh, datamodule=_datamodule(vqa_demo), ckpt_path=str(path))
    again = {r["id"]: r for r in fresh.test_records}
    assert again.keys() == first.keys()
    for key, record in first.items():
        assert again[key]["reply"] == record["reply"]
        torch.testing.assert_close(
            torch.tensor(again[key]["option_probs"]), torch.tensor(record["option_probs"])
        )
    untrained = _task(vqa_demo, base)
    _trainer(tmp_path).test(untrained, datamodule=_datamodule(vqa_demo))
    assert any(
        untrained.test_records[i]["option_probs"] != fresh.test_records[i]["option_probs"] for i in range(32)
    )

    mismatched = _task(vqa_demo, base, lora=None)
    with pytest.raises(ValueError, match="does not fit this model"):
        _trainer(tmp_path).test(mismatched, datamodule=_datamodule(vqa_demo), ckpt_path=str(path))


def test_records_carry_reply_prediction_probs_and_write_a_submission(vqa_demo, base, tmp_path, single_thread):
    task = _task(vqa_demo, base, parse="first_letter")
    _trainer(tmp_path).test(task, datamodule=_datamodule(vqa_demo))
    for record in task.test_records:
        probs = record["option_probs"]
        assert len(probs) == 4 and sum(probs) == pytest.approx(1.0, abs=1e-5)
        reply = record["reply"].strip()
        expected = reply[:1].upper() if reply[:1].upper() in "ABCD" and reply else None
        assert record["prediction"] == expected
        assert record["answer"] in "ABCD" and record["question_id"].startswith("CholecTrack20_")
    task.write_predictions(tmp_path)
    assert len(read_predictions(tmp_path / "predictions.json")) == 32
    assert (tmp_path / "submission.json").is_file()


def test_nothing_to_train_is_an_error(vqa_demo, tmp_path):
    model = QwenVL(pretrained=None, config=TINY_CONFIG, dtype="float32", gradient_checkpointing=False)
    task = VQATask(model, partial(torch.optim.AdamW, lr=1e-3), str(vqa_demo / "processor"))
    task.configure_model()
    for param in task.parameters():
        param.requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        task.configure_optimizers()


def test_unknown_parse_rule_fails_early(vqa_demo):
    with pytest.raises(ValueError, match="task.parse"):
        VQATask(QwenVL(), partial(torch.optim.AdamW), "p", parse="regex")
