"""Check egolab's vqa encoding against LLaMA-Factory's on the same samples and processor.

For each ShareGPT sample of the generated vqa demo (or of ``--train``), LLaMA-Factory's own code encodes it
as its supervised-SFT preprocessing does: ``mm_plugin.process_messages`` (the Qwen3-VL plugin expands each
``<image>``), ``template.encode_multiturn`` (``qwen3_vl_nothink``, or ``qwen3_vl`` with thinking on, which
prepends the empty think block to the trained response) and ``mm_plugin.get_mm_inputs`` with the
recipe's ``image_max_pixels`` / ``image_min_pixels``. egolab's :class:`egolab.data.vqa.QwenVLCollator`
encodes the same sample read by :func:`egolab.data.vqa.read_sharegpt` and rescaled by
:func:`egolab.data.vqa.load_frames`. Input ids, labels, pixel values and grids must be equal.

LLaMA-Factory is imported from a checkout (``--reference``, the folder holding ``src/llamafactory``)
without its package ``__init__`` (which pulls in training dependencies); ``datasets`` and ``torchaudio``,
which the data modules import but these functions do not use, are stubbed when absent.

    python tools/compare_llamafactory_vqa.py --reference /path/to/LLaMA-Factory [--samples 32]
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
import tempfile
import types
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import AutoProcessor

from egolab.data.demo_vqa import make_demo_vqa
from egolab.data.vqa import IGNORE_INDEX, ConversationDataset, QwenVLCollator, read_sharegpt


def import_llamafactory(checkout: Path) -> tuple[types.ModuleType, types.ModuleType]:
    """LLaMA-Factory's ``data.template`` and ``data.mm_plugin`` modules, imported from ``checkout``."""
    source = checkout / "src" / "llamafactory"
    if not (source / "data" / "template.py").is_file():
        raise SystemExit(f"{checkout}: no src/llamafactory/data/template.py (not a LLaMA-Factory checkout)")
    for name in ("datasets", "torchaudio"):
        if importlib.util.find_spec(name) is None:
            stub = types.ModuleType(name)
            for attr in (
                "Dataset",
                "DatasetDict",
                "IterableDataset",
                "concatenate_datasets",
                "interleave_datasets",
            ):
                setattr(stub, attr, object)
            sys.modules[name] = stub
    for package, folder in (("llamafactory", source), ("llamafactory.data", source / "data")):
        module = types.ModuleType(package)
        module.__path__ = [str(folder)]
        sys.modules[package] = module
    import llamafactory.data.mm_plugin as mm_plugin
    import llamafactory.data.template as template

    return template, mm_plugin


def llamafactory_encode(template, plugin, tokenizer, processor, messages, images) -> dict:
    """input_ids, labels and vision tensors of one sample, as LLaMA-Factory's SFT preprocessing makes them."""
    messages = plugin.process_messages(messages, images, [], [], processor)
    input_ids, labels = plugin.process_token_ids([], [], images, [], [], tokenizer, processor)
    for source, target in template.encode_multiturn(tokenizer, messages, None, None):
        input_ids += source + target
        labels += [IGNORE_INDEX] * len(source) + target
    vision = plugin.get_mm_inputs(images, [], [], [len(images)], [0], [0], [input_ids], processor)
    return {"ids": input_ids, "labels": labels, "vision": vision}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="LLaMA-Factory checkout")
    parser.add_argument("--train", type=Path, help="a ShareGPT json (default: the generated demo's)")
    parser.add_argument("--processor", help="HF processor (default: the demo's tiny Qwen3-VL processor)")
    parser.add_argument("--samples", type=int, default=32)
    parser.add_argument("--max-pixels", type=int, default=4096)
    parser.add_argument("--min-pixels", type=int, default=1024)
    args = parser.parse_args()
    lf_template, lf_plugin = import_llamafactory(args.reference)
    with tempfile.TemporaryDirectory() as tmp:
        if args.train is None or args.processor is None:
            demo = make_demo_vqa(Path(tmp) / "vqa")
        train = args.train or demo / "train.json"
        processor_name = args.processor or str(demo / "processor")
        samples = read_sharegpt(train)[: args.samples]
        dataset = ConversationDataset(samples, args.max_pixels, args.min_pixels)
        failures = 0
        for ours_name, lf_name, thinking in (
            ("nothink", "qwen3_vl_nothink", False),
            ("think", "qwen3_vl", True),
        ):
            processor = AutoProcessor.from_pretrained(processor_name)
            processor.image_max_pixels, processor.image_min_pixels = args.max_pixels, args.min_pixels
            data_args = SimpleNamespace(
                template=lf_name,
                train_on_prompt=False,
                tool_format=None,
                default_system=None,
                enable_thinking=thinking,
                preserve_thinking=False,
            )
            template = lf_template.get_template_and_fix_tokenizer(processor.tokenizer, data_args)
            collator = QwenVLCollator(processor, training=True, template=ours_name)
            for index, sample in enumerate(samples):
                ours = collator.encode(dataset[index])
                theirs = llamafactory_encode(
                    template,
                    template.mm_plugin,
                    processor.tokenizer,
                    processor,
                    [dict(m) for m in sample.messages],
                    [str(p) for p in sample.images],
                )
                problems = []
                if ours["ids"] != theirs["ids"]:
                    problems.append("input_ids")
                if ours["labels"] != theirs["labels"]:
                    problems.append("labels")
                for key in ("pixel_values", "image_grid_thw"):
                    mine = torch.cat(ours["vision"][key])
                    if mine.shape != theirs["vision"][key].shape or not torch.equal(
                        mine, theirs["vision"][key]
                    ):
                        problems.append(key)
                if problems:
                    failures += 1
                    print(f"[{ours_name}] sample {sample.id}: differs in {problems}")
            print(f"[{ours_name} vs {lf_name}] {len(samples)} samples compared")
        if failures:
            raise SystemExit(f"{failures} samples differ")
        print("identical input_ids, labels, pixel_values and image_grid_thw on every sample")


if __name__ == "__main__":
    main()
