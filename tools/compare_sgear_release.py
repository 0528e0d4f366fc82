"""Fidelity check: egolab's S-GEAR prototype attention and head against the official release, float64 on CPU.

    python tools/compare_sgear_release.py --reference /path/to/S-GEAR

The release's classes are imported from the checkout: ``models.common.TopSimilarTokens``,
``models.attention.ProtAttn`` and ``models.base_model_ts.BaseModel`` (with ``models.future_prediction.TCD``,
a HuggingFace GPT-2, and ``models.temporal_aggregation.Identity``). The checkout's ``common/`` folder is
registered as a package without running its ``__init__``, which imports cv2 and the training loop; only
``common/cluster.py`` is needed. timm, transformers and hydra-core are egolab dependencies already.

At the released sizes (768-d, 12 heads, 15 steps, 3806 actions, batch 3; a smaller GPT-2 for speed) the
script perturbs the release's weights, copies them into ours by an explicit key mapping and prints the
largest absolute difference of:

* the prototype selection (``TopSimilarTokens``) and the fused prototype attention
  (``sigmoid(alpha) x + (1 - sigmoid(alpha)) ProtAttn(tokens, x)``, as ``BaseModel`` applies it);
* the whole feature path (``BaseModel.forward_singlecrop_features``: standardisation, prototype attention,
  decoder, head; TSN 1024-d input, prototypes frozen as the feature runs intend) and the ViT path after
  the backbone (``forward_singlecrop`` on given tokens, no TCA blocks; prototypes trainable): logits, past
  logits, similarities, z, the gated feature, the updated past, the feature loss, and the gradients of a
  random mix of them with respect to the inputs and to every parameter (relative to the release's largest
  gradient entry of that parameter).

Ours runs with ``mix_samples=True`` and ``release_layout=True`` (the release's two bugs); those rows must
agree to 1e-10 (exit status 1 otherwise). Rows marked "default" rerun ours with both flags off and show how
far the corrected behaviour is from the release (informational). The release's ``topk(sorted=False)``
returned the sorted order on CPU for these sizes; on another platform its order may differ.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
import types
import warnings
from pathlib import Path

import torch
from torch import nn

from egolab.models.avt import AnticipationModel, CausalDecoder, FeatureInput
from egolab.models.sgear import GatedPrototypeHead, PrototypeAttention, Prototypes

TOLERANCE = 1e-10
BATCH, STEPS, DIM, HEADS, ACTIONS = 3, 15, 768, 12, 3806
TSN_DIM = 1024
GPT = {"inter_dim": 256, "n_layer": 2, "n_head": 4}


class Report:
    """Collects (label, max abs difference) rows; only checked rows count towards the verdict."""

    def __init__(self) -> None:
        self.worst = 0.0
        self.rows = 0

    def add(self, label: str, ours: torch.Tensor, reference: torch.Tensor, checked: bool = True) -> None:
        if ours.shape != reference.shape:
            raise AssertionError(f"{label}: shape {tuple(ours.shape)} against {tuple(reference.shape)}")
        diff = (ours.double() - reference.double()).abs().max().item() if ours.numel() else 0.0
        if checked:
            self.worst = max(self.worst, diff)
            self.rows += 1
        flag = "" if not checked or diff <= TOLERANCE else "   <-- over tolerance"
        print(f"  {label:<58s} {diff:.3e}{flag}")


def import_reference(path: Path) -> dict:
    """The release's classes, imported from the checkout at ``path``."""
    sys.path.insert(0, str(path))
    common = types.ModuleType("common")
    common.__path__ = [str(path / "common")]  # a package without its __init__ (cv2, training loop)
    sys.modules["common"] = common
    return {
        "TopSimilarTokens": importlib.import_module("models.common").TopSimilarTokens,
        "ProtAttn": importlib.import_module("models.attention").ProtAttn,
        "BaseModel": importlib.import_module("models.base_model_ts").BaseModel,
    }


def release_config(features: bool):
    """The ``model`` config of expts/ek100_SGEAR_{tsn,vit}.txt, with an identity backbone and no TCA."""
    from omegaconf import OmegaConf

    identity = {"_target_": "models.temporal_aggregation.Identity"}
    return OmegaConf.create(
        {
            "backbone": {"_target_": "torch.nn.Identity"},
            "backbone_last_n_modules_to_drop": 0,
            "backbone_dim": TSN_DIM if features else DIM,
            "intermediate_featdim": DIM,
            "freeze_weights": features,
            "model_name": "vit",
            "tubelet_size": 1,
            "cls_token": True,
            "backbone_add_ts_blocks": 0,
            "prot_attn": True,
            "tmp_frames": STEPS,
            "mean_representation": True,
            "future_steps": 0,
            "greeze_prototypes": False,
            "reg": False,
            "temporal_aggregator": identity,
            "same_temp_agg_dim": False,
            "future_predictor": {
                "_target_": "models.future_prediction.TCD",
                "n_head": GPT["n_head"],
                "n_layer": GPT["n_layer"],
                "inter_dim": GPT["inter_dim"],
                "output_len": 1,
                "return_past_too": True,
                "future_pred_loss": {"_target_": "torch.nn.MSELoss"},
                "avg_last_n": 1,
            },
            "freeze_future_predictor": False,
            "project_dim_for_nce": None,
            "temporal_aggregator_after_future_pred": identity,
            "dropout": 0.2,
            "use_cls_mappings": False,
            "classifier": {"_target_": "torch.nn.Linear", "bias": True},
            "classifier_on_past": True,
            "add_regression_head": False,
            "multimodal": False,
            "extracted_features": features,
            "use_object": False,
            "transform_features": False,
            "feature_mixup": False,
            "bn": {"eps": 1e-3, "mom": 0.1},
        }
    )


class ClsToken(nn.Module):
    """Our stand-in for the ViT path after the backbone: (B, T, N, C) tokens -> their CLS (B, T, C)."""

    out_dim = DIM

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return tokens[:, :, 0]


def build_ours(features: bool, release_bugs: bool) -> AnticipationModel:
    in_dim = TSN_DIM if features else DIM
    return AnticipationModel(
        FeatureInput(in_dim) if features else ClsToken(),
        CausalDecoder(DIM, GPT["inter_dim"], GPT["n_layer"], GPT["n_head"], max_len=STEPS),
        GatedPrototypeHead(DIM, ACTIONS, dropout=0.2, input_dim=in_dim, detach_future=features),
        feat_dim=DIM,
        num_actions=ACTIONS,
        prototypes=Prototypes(ACTIONS, DIM, visual="from the release", freeze=features),
        prototype_attention=PrototypeAttention(
            DIM,
            HEADS,
            max_len=STEPS,
            standardize=features,
            mix_samples=release_bugs,
            release_layout=release_bugs,
        ),
    )


def release_to_ours(name: str, value: torch.Tensor) -> tuple[str, torch.Tensor] | None:
    """Release ``BaseModel`` parameter -> (our parameter name, value); None for parameters we lack."""
    fixed = {
        "mapper_to_inter.weight": "mapper.weight",
        "vis_prototypes": "prototypes.visual",
        "ProtAttn.tpl_weights": "prototype_attention.toeplitz_weights",
        "ProtAttn.proj.weight": "prototype_attention.proj.weight",
        "ProtAttn.proj.bias": "prototype_attention.proj.bias",
        "classifiers.action.weight": "head.fc.weight",
        "classifiers.action.bias": "head.fc.bias",
        "future_predictor.encoder.weight": "decoder.encoder.weight",
        "future_predictor.decoder.weight": "decoder.decoder.weight",
        "future_predictor.gpt_model.ln_f.weight": "decoder.ln_f.weight",
        "future_predictor.gpt_model.ln_f.bias": "decoder.ln_f.bias",
    }
    scalars = {"ProtAttn.gate": "prototype_attention.gate", "alpha": "prototype_attention.alpha"}
    scalars["balancer"] = "head.balance"
    if name in fixed:
        return fixed[name], value
    if name in scalars:
        return scalars[name], value.reshape(())
    if name == "future_predictor.gpt_model.wpe.weight":
        return "decoder.pos.weight", value[:STEPS]
    prefix = "future_predictor.gpt_model.h."
    if not name.startswith(prefix):
        return None
    layer, rest = name[len(prefix) :].split(".", 1)
    conv1d = {
        "attn.c_attn": "attn.qkv",
        "attn.c_proj": "attn.proj",
        "mlp.c_fc": "mlp.0",
        "mlp.c_proj": "mlp.2",
    }
    module, kind = rest.rsplit(".", 1)
    if module in conv1d:  # GPT-2's Conv1D stores (in, out)
        return f"decoder.blocks.{layer}.{conv1d[module]}.{kind}", value.T if kind == "weight" else value
    return f"decoder.blocks.{layer}.{rest}", value


def copy_weights(release: nn.Module, ours: nn.Module) -> None:
    """Load the release's parameters into ours; every parameter of ours must receive one."""
    mapped = {}
    for name, value in release.named_parameters():
        target = release_to_ours(name, value.detach())
        if target is not None:
            mapped[target[0]] = target[1]
    own = dict(ours.named_parameters())
    if set(own) != set(mapped):
        raise AssertionError(
            f"mapping: ours only {sorted(set(own) - set(mapped))}, "
            f"release only {sorted(set(mapped) - set(own))}"
        )
    with torch.no_grad():
        for name, value in mapped.items():
            own[name].copy_(value)


def worst_parameter_grad(release: nn.Module, ours: nn.Module) -> tuple[str, float]:
    """The trainable parameter of ours whose gradient differs most from the release's, relative to the
    release's largest entry of it (a missing gradient is 0)."""
    theirs = {}
    for name, param in release.named_parameters():
        grad = torch.zeros_like(param) if param.grad is None else param.grad
        target = release_to_ours(name, grad)
        if target is not None:
            theirs[target[0]] = target[1]
    diffs = {
        name: ((torch.zeros_like(p) if p.grad is None else p.grad) - theirs[name]).abs().max().item()
        / max(theirs[name].abs().max().item(), 1e-300)
        for name, p in ours.named_parameters()
        if p.requires_grad
    }
    name = max(diffs, key=diffs.get)
    return name, diffs[name]


def compare_attention(report: Report, ref: dict, g: torch.Generator) -> None:
    """TopSimilarTokens and the fused ProtAttn, as BaseModel composes them."""
    print(f"\n== prototype attention: B={BATCH} T={STEPS} C={DIM} heads={HEADS} A={ACTIONS}, float64 ==")
    protos = torch.randn(ACTIONS, DIM, generator=g, dtype=torch.float64)
    x = torch.randn(BATCH, STEPS, DIM, generator=g, dtype=torch.float64)
    release = ref["ProtAttn"](dim=DIM, num_heads=HEADS, num_tmp_tokens=STEPS).double()
    perturb(release, g)
    alpha = torch.tensor(0.3, dtype=torch.float64)
    with torch.no_grad():
        tokens = ref["TopSimilarTokens"]()(x.mean(dim=1), protos, STEPS)
        fused = torch.sigmoid(alpha) * x + (1 - torch.sigmoid(alpha)) * release(tokens, x, BATCH)
        for bugs in (True, False):
            ours = PrototypeAttention(
                DIM, HEADS, max_len=STEPS, mix_samples=bugs, release_layout=bugs
            ).double()
            ours.toeplitz_weights.copy_(release.tpl_weights)
            ours.gate.copy_(release.gate[0])
            ours.alpha.copy_(alpha)
            ours.proj.load_state_dict(release.proj.state_dict())
            tag = "release flags" if bugs else "default (informational)"
            report.add(f"selected prototypes, {tag}", ours.select(x, protos), tokens, checked=bugs)
            report.add(f"fused prototype attention, {tag}", ours(x, protos), fused, checked=bugs)


def compare_model(report: Report, ref: dict, features: bool, g: torch.Generator) -> None:
    """A whole forward and backward of the release's BaseModel path against ours."""
    path = "feature path (TSN 1024-d)" if features else "ViT path after the backbone"
    print(f"\n== {path}: GPT-2 {GPT}, float64, eval mode ==")
    protos = torch.randn(ACTIONS, DIM, generator=g)
    release = ref["BaseModel"](release_config(features), {"action": ACTIONS}, {}, protos, protos.clone())
    release.double().eval()
    release.vis_prototypes.requires_grad_(not features)  # the feature runs' freeze_prototypes=true
    perturb(release, g)
    shape = (BATCH, STEPS, TSN_DIM) if features else (BATCH, STEPS, 2, DIM)
    inputs = torch.randn(*shape, generator=g, dtype=torch.float64)
    weights = {}
    for bugs in (True, False):
        ours = build_ours(features, bugs).double().eval()
        copy_weights(release, ours)
        release.zero_grad()
        x_ref, x_ours = inputs.clone().requires_grad_(), inputs.clone().requires_grad_()
        forward = release.forward_singlecrop_features if features else release.forward_singlecrop
        out, aux = forward(x_ref, torch.Size([BATCH]))
        mine = ours(x_ours)
        pairs = {
            "logits": (mine["logits"], out["logits/action"]),
            "past logits": (mine["past_logits"], out["past_logits/action"]),
            "similarities": (mine["similarities"], out["similarities"]),
            "z (future_z)": (mine["future"], out["future_z"]),
            "gated z (future)": (mine["embedding"], out["future"]),
            "updated past": (
                torch.cat([mine["features"][:, :1], mine["decoded"][:, :-1]], dim=1),
                out["past"],
            ),
            "feature loss": (
                nn.functional.mse_loss(mine["decoded"][:, :-1], mine["features"][:, 1:]),
                aux["feat"].mean(),
            ),
        }
        for name, (a, _) in pairs.items():
            weights.setdefault(name, torch.randn(a.shape, generator=g, dtype=torch.float64))
        tag = "release flags" if bugs else "default (informational)"
        for name, (a, b) in pairs.items():
            report.add(f"{name}, {tag}", a.detach(), b.detach(), checked=bugs)
        sum(((a * weights[n]).sum() for n, (a, _) in pairs.items())).backward()
        sum(((b * weights[n]).sum() for n, (_, b) in pairs.items())).backward()
        report.add(f"grad inputs, {tag}", x_ours.grad, x_ref.grad, checked=bugs)
        name, diff = worst_parameter_grad(release, ours)
        report.add(
            f"grad parameters, relative (worst {name}), {tag}",
            torch.tensor(diff),
            torch.tensor(0.0),
            checked=bugs,
        )


@torch.no_grad()
def perturb(module: nn.Module, g: torch.Generator) -> None:
    """Add noise to every parameter so that no gate, weight or bias sits at a special value."""
    for p in module.parameters():
        p.add_(0.1 * torch.randn(p.shape, generator=g, dtype=p.dtype))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reference", type=Path, required=True, help="checkout of ADiko1997/S-GEAR")
    args = parser.parse_args()
    warnings.filterwarnings("ignore")
    logging.disable(logging.WARNING)
    ref = import_reference(args.reference.resolve())
    g = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    report = Report()
    compare_attention(report, ref, g)
    compare_model(report, ref, features=True, g=g)
    compare_model(report, ref, features=False, g=g)
    ok = report.worst <= TOLERANCE
    print(
        f"\n{'PASS' if ok else 'FAIL'}: {report.rows} checked comparisons, largest difference "
        f"{report.worst:.3e} (tolerance {TOLERANCE:g})"
    )
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
