"""Tokens per second of the tiny demo Qwen3-VL on this machine (training and greedy generation), and the
checkpoint size of LoRA against full fine-tuning.

Training throughput counts the non-padding tokens of each batch (prompt, image and answer tokens) per
second of forward + backward + AdamW step; generation counts the new tokens per second of greedy decoding
(prefill included). Batches come from the generated vqa demo through the real processor and collator.
Checkpoints are Lightning's (trained parameters and their optimizer states only, as egolab writes them).

    python benchmarks/vqa_tiny_throughput.py [--steps 20] [--threads 2] [--batch 16]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from functools import partial
from pathlib import Path

import lightning as L
import torch

from egolab.data.demo_vqa import make_demo_vqa
from egolab.data.vqa import VQADataModule
from egolab.models.qwen_vl import QwenVL
from egolab.paths import CONF_DIR
from egolab.tasks.vqa import VQATask


def tiny_config() -> dict:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(OmegaConf.load(CONF_DIR / "model/qwen_vl/demo.yaml").config)


def datamodule(root: Path, batch: int) -> VQADataModule:
    module = VQADataModule(
        processor=str(root / "processor"),
        root=root,
        train_files=["train.json"],
        test_file="test_testbed.json",
        test_answers="test_answers.json",
        image_max_pixels=4096,
        image_min_pixels=1024,
        batch_size=batch,
        eval_batch_size=batch,
        answer_prefix='{"prediction": "',
    )
    module.setup("fit")
    module.setup("test")
    return module


def train_tokens_per_s(model: QwenVL, batches: list[dict]) -> float:
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    model.train()
    model(batches[0]).backward()  # warm-up
    optimizer.zero_grad()
    tokens, start = 0, time.perf_counter()
    for batch in batches:
        model(batch).backward()
        optimizer.step()
        optimizer.zero_grad()
        tokens += int(batch["attention_mask"].sum())
    return tokens / (time.perf_counter() - start)


def generate_tokens_per_s(model: QwenVL, batches: list[dict], tokenizer, new_tokens: int) -> float:
    model.eval()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    generated, start = 0, time.perf_counter()
    for batch in batches:
        rows = model.generate(batch, new_tokens, eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
        generated += sum(len(row) for row in rows)
    return generated / (time.perf_counter() - start)


def checkpoint_mb(model: QwenVL, root: Path, module: VQADataModule, folder: Path) -> float:
    task = VQATask(model, partial(torch.optim.AdamW, lr=1e-3), str(root / "processor"))
    trainer = L.Trainer(
        accelerator="cpu",
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=folder,
    )
    trainer.fit(task, datamodule=module)
    path = folder / "model.ckpt"
    trainer.save_checkpoint(path)
    return path.stat().st_size / 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        root = make_demo_vqa(Path(tmp) / "vqa")
        module = datamodule(root, args.batch)
        loader = iter(module.train_dataloader())
        train_batches = [next(loader) for _ in range(args.steps)]
        test_batches = list(module.test_dataloader())
        tokenizer = module.processor.tokenizer
        options = {"pretrained": None, "config": tiny_config(), "dtype": "float32"}
        print(f"tiny Qwen3-VL, {args.threads} threads, batch {args.batch}")
        for name, extra in (("full", {"train_vision": True}), ("lora r8", {"lora": {"r": 8, "alpha": 16}})):
            model = QwenVL(**options, **extra, gradient_checkpointing=False)
            model.build()
            trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
            train = train_tokens_per_s(model, train_batches)
            generate = generate_tokens_per_s(model, test_batches, tokenizer, args.new_tokens)
            size = checkpoint_mb(model, root, module, Path(tmp) / name.replace(" ", "_"))
            print(
                f"{name:8s} trained params {trained:>8d}  train {train:8.0f} tokens/s  "
                f"generate {generate:6.0f} new tokens/s  checkpoint {size:.2f} MiB"
            )


if __name__ == "__main__":
    main()
