"""S-GEAR on top of AVT: prototypes, prototype attention, the gated prototype head and the losses.

Released-code behaviour (spec section 3) with these gap fills, all in the spirit of the paper:

* :class:`Prototypes` holds the visual prototypes (A, C), a parameter initialised from a visual
  prototypes file (``python -m egolab.prototypes visual``) or, without one, from the language encodings
  (the paper's "language prototypes used directly" ablation); a width mismatch is resized by linear
  interpolation along channels, as the release does. The (A, A) language similarity matrix is a
  non-persistent buffer. Both are read by :meth:`Prototypes.load_pretrained`, which the task calls
  before fitting (a restored checkpoint then overrides the visual prototypes).
* :class:`PrototypeAttention` (release ``ProtAttn`` + ``TopSimilarTokens``): the T prototypes most
  similar to the time-averaged features are the queries and values, the features the keys, without
  projections; the attention map is gated with an unnormalised relative-position map (cos/sin per head
  group). The feature configs standardise the features against the prototypes first, as released.
  Release bugs (cross-sample token mixing, scrambled head merge) are reproducible by flags.
* :class:`GatedPrototypeHead`: ``s = cos(z, P)``, ``z_bar = softmax(s / sqrt(input width)) @ P.detach()``,
  ``z_hat = sigmoid(b) z + (1 - sigmoid(b)) z_bar``, then dropout + linear; the feature configs detach z
  inside the similarity, as released.
* :func:`init_from_run` copies named blocks of an earlier run (the released feature runs start from the
  ViT run's decoder, prototype attention, classifier and prototypes).
* :class:`AnticipationLoss`: the release passes an undefined ``org_gamma`` as the prototypes of the
  regularisation loss; the current (detached) visual prototypes are used.
"""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)


def _load_tensor(path: str | os.PathLike, key: str, language_model: str | None = None) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prototype file not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: expected a dict with {key!r} (see python -m egolab.prototypes)")
    made_by = data.get("model")
    if language_model is not None and made_by is not None and _model_id(made_by) != _model_id(language_model):
        raise ValueError(
            f"{path} was encoded by {made_by!r}, the experiment names {language_model!r}: run "
            f"python -m egolab.prototypes language --model {language_model} --actions <actions.csv> "
            f"--out {path.parent}, or set model.prototypes.language_model={made_by}"
        )
    return data[key].float()


def _model_id(name: str) -> str:
    """A sentence-transformers model name without its hub organisation (the library's own shorthand)."""
    return name.removeprefix("sentence-transformers/")


def resize_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, D) -> (N, dim) by linear interpolation along channels (identity when D == dim)."""
    if x.shape[1] == dim:
        return x
    return F.interpolate(x[:, None, :], size=dim, mode="linear", align_corners=False)[:, 0]


class Prototypes(nn.Module):
    """Visual prototypes (A, C) and the language similarity matrix (A, A) of the action classes.

    ``language_model`` names the sentence model the language files must come from (their recorded
    ``model``); a file made by another model is an error. The S-GEAR experiments name the paper's
    ``sentence-transformers/all-mpnet-base-v2``, the configs the offline MiniLM default.
    """

    def __init__(
        self,
        num_actions: int,
        dim: int,
        language_encodings: str | None = None,
        language_similarities: str | None = None,
        visual: str | None = None,
        freeze: bool = False,
        language_model: str | None = None,
    ) -> None:
        super().__init__()
        self.num_actions, self.dim = num_actions, dim
        self.language_model = language_model
        self.files = {
            "encodings": language_encodings,
            "similarities": language_similarities,
            "visual": visual,
        }
        if visual is None and language_encodings is None:
            raise ValueError("visual prototypes need a visual prototypes file or language encodings")
        self.visual = nn.Parameter(torch.randn(num_actions, dim) * 0.02, requires_grad=not freeze)
        self.register_buffer("language_similarity", torch.zeros(0, num_actions), persistent=False)

    def _check(self, x: torch.Tensor, path: str, rows: int, cols: int | None = None) -> torch.Tensor:
        if x.ndim != 2 or x.shape[0] != rows or (cols is not None and x.shape[1] != cols):
            raise ValueError(
                f"{path}: shape {tuple(x.shape)}, expected ({rows}, {cols or 'C'}) for this model"
            )
        return x

    @torch.no_grad()
    def load_pretrained(self) -> None:
        """Read the prototype files (visual init and language similarities)."""
        a = self.num_actions
        if self.files["visual"] is not None:
            init = self._check(_load_tensor(self.files["visual"], "prototypes"), self.files["visual"], a)
        else:
            path = self.files["encodings"]
            init = self._check(_load_tensor(path, "encodings", self.language_model), path, a)
        self.visual.copy_(resize_channels(init, self.dim))
        if self.files["similarities"] is not None:
            sims = _load_tensor(self.files["similarities"], "similarities", self.language_model)
            self.language_similarity = self._check(sims, self.files["similarities"], a, a).to(
                self.visual.device
            )

    def language_rows(self, labels: torch.Tensor) -> torch.Tensor:
        """Language similarity rows (B, A) of the given action labels (all >= 0)."""
        if self.language_similarity.shape[0] != self.num_actions:
            raise RuntimeError(
                "language similarities not loaded (set language_similarities; load_pretrained)"
            )
        return self.language_similarity[labels]


def cosine_matrix(x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every vector of x (..., C) to every prototype (A, C): (..., A)."""
    return F.normalize(x, dim=-1) @ F.normalize(prototypes, dim=-1).T


class PrototypeAttention(nn.Module):
    """S-GEAR PA (release ``ProtAttn``): enrich the T input features with the T prototypes nearest their mean.

    The prototypes most similar (cosine) to the time-averaged features, in descending order, are both the
    queries and the values and the features are the keys, all without projections (as released):
    ``A = sigmoid(g) softmax(q k^T / sqrt(d)) + (1 - sigmoid(g)) R`` per head, ``out = proj(A v)``, and
    ``fused = sigmoid(a) x + (1 - sigmoid(a)) out``. ``R`` is the relative-position map: head h's weight
    of step |i - j|, unnormalised, through cos or sin by head group (heads 0-2 cos, 3-5 sin, 6-8 cos,
    9 and up sin). The weights start at 0.5, ``g`` and ``a`` at 0.5 (all as released).

    ``standardize``: first shift and scale x by the prototypes' global mean and std (the release's feature
    runs). Two release bugs, each behind a flag that reproduces it (the release's reported numbers were
    produced with both on):

    * ``mix_samples``: the release's ``TopSimilarTokens`` lays the (B, T) selection out sample-major but
      reads it back step-major, so with B > 1 sample b receives the prototypes of flat positions
      ``b, B + b, 2B + b, ...`` of the selection, mostly other samples' (B = 2, T = 2: sample 0 gets its
      own first and sample 1's first prototype). Default: each sample gets its own.
    * ``release_layout``: the release merges the heads of ``A v`` (B, heads, T, d) by a plain reshape to
      (B, T, heads * d), so step t's channels hold slices of several heads and steps. Default: step t
      concatenates its own heads.
    """

    def __init__(
        self,
        dim: int,
        num_heads: int = 12,
        max_len: int = 64,
        dropout: float = 0.0,
        standardize: bool = False,
        mix_samples: bool = False,
        release_layout: bool = False,
    ) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.standardize = standardize
        self.mix_samples = mix_samples
        self.release_layout = release_layout
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.toeplitz_weights = nn.Parameter(torch.full((num_heads, max_len), 0.5))
        self.gate = nn.Parameter(torch.tensor(0.5))
        self.alpha = nn.Parameter(torch.tensor(0.5))
        group = (torch.arange(num_heads) // 3).clamp(max=3)
        self.register_buffer("use_sin", group % 2 == 1, persistent=False)

    def toeplitz(self, t: int) -> torch.Tensor:
        """(heads, t, t) relative-position map: entry (h, i, j) is cos or sin of weight (h, |i - j|)."""
        steps = torch.arange(t, device=self.toeplitz_weights.device)
        raw = self.toeplitz_weights[:, (steps[:, None] - steps[None, :]).abs()]
        return torch.where(self.use_sin[:, None, None], raw.sin(), raw.cos())

    def select(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """The T (= x's length) prototypes most similar to the time-averaged x, (B, T, C), detached."""
        b, t, c = x.shape
        if t > prototypes.shape[0]:
            raise ValueError(f"{t} steps need as many prototypes, there are {prototypes.shape[0]}")
        top = cosine_matrix(x.mean(dim=1), prototypes).topk(t, dim=-1).indices
        tokens = prototypes.detach()[top]
        if self.mix_samples:
            tokens = tokens.reshape(t, b, c).transpose(0, 1)
        return tokens

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        if t > self.toeplitz_weights.shape[1]:
            raise ValueError(f"{t} steps exceed max_len={self.toeplitz_weights.shape[1]}")
        if self.standardize:
            reference = prototypes.detach()
            x = (x - reference.mean()) / reference.std()
        heads = self.num_heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.reshape(b, t, heads, c // heads).transpose(1, 2)

        tokens = split(self.select(x, prototypes))
        attn = (tokens @ split(x).transpose(-2, -1) / math.sqrt(c // heads)).softmax(dim=-1)
        gate = torch.sigmoid(self.gate)
        attn = self.drop(gate * attn + (1 - gate) * self.toeplitz(t).to(attn))
        out = attn @ tokens
        out = out.reshape(b, t, c) if self.release_layout else out.transpose(1, 2).reshape(b, t, c)
        alpha = torch.sigmoid(self.alpha)
        return alpha * x + (1 - alpha) * self.proj(out)


class GatedPrototypeHead(nn.Module):
    """S-GEAR classification head: cosine attention over the visual prototypes, gated, then linear.

    ``s = cos(z, P)``, ``z_bar = softmax(s / temperature) @ P.detach()``, ``z_hat = sigmoid(b) z +
    (1 - sigmoid(b)) z_bar`` (b starts at 0.5), then dropout + linear. The temperature is
    ``sqrt(input_dim)``, the width of the model's input features (the release's ``sqrt(backbone_dim)``:
    1024 for TSN, 352 for object features), or ``sqrt(dim)`` without one. ``detach_future`` computes the
    similarities of the predicted feature from ``z.detach()`` (the release's feature runs: the semantic
    loss and the prototype attention then reach z only through the prototypes); past steps
    (``past=True``) never are, as released.
    """

    def __init__(
        self,
        dim: int,
        num_actions: int,
        dropout: float = 0.2,
        temperature: float | None = None,
        input_dim: int | None = None,
        detach_future: bool = False,
    ) -> None:
        super().__init__()
        width = dim if input_dim is None else input_dim
        self.temperature = math.sqrt(width) if temperature is None else float(temperature)
        self.detach_future = detach_future
        self.balance = nn.Parameter(torch.tensor(0.5))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_actions)

    def forward(
        self, x: torch.Tensor, prototypes: torch.Tensor, past: bool = False
    ) -> dict[str, torch.Tensor]:
        sims = cosine_matrix(x.detach() if self.detach_future and not past else x, prototypes)
        attended = (sims / self.temperature).softmax(dim=-1) @ prototypes.detach()
        gate = torch.sigmoid(self.balance)
        mixed = gate * x + (1 - gate) * attended
        return {"logits": self.fc(self.dropout(mixed)), "similarities": sims, "embedding": mixed}


def normalized_l1(similarities: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """S-GEAR semantic loss per sample: sum_k |s_k / ||s||_1 - r_k / ||r||_1| (rows of (B, A))."""
    s = similarities / similarities.abs().sum(dim=-1, keepdim=True).clamp_min(1e-12)
    r = targets / targets.abs().sum(dim=-1, keepdim=True).clamp_min(1e-12)
    return (s - r).abs().sum(dim=-1)


def normed_mse(z: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
    """S-GEAR regularisation per sample: sum_c (z / ||z|| - p / ||p||)^2."""
    return (F.normalize(z, dim=-1) - F.normalize(prototypes, dim=-1)).pow(2).sum(dim=-1)


class AnticipationLoss(nn.Module):
    """Weighted AVT + S-GEAR losses; a weight of 0 skips its term.

    ``cls_action``: cross-entropy of the future logits (labels -1 ignored); ``past_cls_action``:
    cross-entropy of the past logits against the action under each observed frame; ``feat``: MSE of the
    decoder's next-step predictions against the next inputs; ``semantic``: normalised L1 between the
    prototype similarities of z and the language similarity row of the label; ``regularization``:
    normalised MSE between z and the label's (detached) visual prototype.
    """

    def __init__(
        self,
        cls_action: float = 1.0,
        past_cls_action: float = 0.0,
        feat: float = 1.0,
        semantic: float = 0.0,
        regularization: float = 0.0,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.weights = {
            "cls_action": cls_action,
            "past_cls_action": past_cls_action,
            "feat": feat,
            "semantic": semantic,
            "regularization": regularization,
        }
        self.label_smoothing = label_smoothing

    def _ce(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        keep = labels >= 0
        if not keep.any():
            return logits.sum() * 0.0
        return F.cross_entropy(logits[keep], labels[keep], label_smoothing=self.label_smoothing)

    def forward(
        self, outputs: dict, batch: dict, prototypes: Prototypes | None = None
    ) -> dict[str, torch.Tensor]:
        labels = batch["action"]
        keep = labels >= 0
        terms: dict[str, torch.Tensor] = {}
        w = self.weights
        if w["cls_action"]:
            terms["cls_action"] = self._ce(outputs["logits"], labels)
        if w["past_cls_action"]:
            past = outputs["past_logits"]
            terms["past_cls_action"] = self._ce(past.flatten(0, 1), batch["past_actions"].flatten())
        if w["feat"]:
            terms["feat"] = F.mse_loss(outputs["decoded"][:, :-1], outputs["features"][:, 1:])
        if w["semantic"] or w["regularization"]:
            if prototypes is None:
                raise ValueError("the semantic and regularisation losses need a model with prototypes")
            zero = outputs["future"].sum() * 0.0
            if w["semantic"]:
                rows = prototypes.language_rows(labels[keep])
                sem = normalized_l1(outputs["similarities"][keep], rows)
                terms["semantic"] = sem.mean() if keep.any() else zero
            if w["regularization"]:
                reg = normed_mse(outputs["future"][keep], prototypes.visual.detach()[labels[keep]])
                terms["regularization"] = reg.mean() if keep.any() else zero
        terms["loss"] = sum(w[name] * value for name, value in terms.items())
        return terms


RELEASE_INIT_BLOCKS = (
    "prototype_attention.toeplitz_weights",
    "prototype_attention.gate",
    "prototype_attention.proj",
    "decoder",
    "head.fc",
    "prototypes",
)
"""What the released feature runs copy from the ViT run (``pretrain_blocks=[ProtAttn, future_predictor,
classifier, vis_prototypes]``) in our names; the release's fusion gate ``alpha`` and head ``balancer`` sit
outside those blocks and keep their initial values."""


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A ``.ckpt`` file as given, or the ``checkpoints/last.ckpt`` of a run folder."""
    from egolab.launch.runs import last_checkpoint

    path = Path(os.path.expanduser(str(path)))
    if path.is_file():
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"init_from: no checkpoint file or run folder at {path}")
    last = last_checkpoint(path)
    if last is None:
        raise FileNotFoundError(
            f"init_from: run folder {path} has no checkpoints/last.ckpt (train that run first)"
        )
    return last


def init_from_run(
    model: nn.Module, path: str | os.PathLike, blocks: Sequence[str] = RELEASE_INIT_BLOCKS
) -> tuple[list[str], dict[str, str]]:
    """Copy the tensors of ``blocks`` (state-dict key prefixes) from a run's checkpoint into ``model``.

    ``path`` is a Lightning checkpoint of an anticipation run (or a run folder: its last checkpoint) or a
    plain ``model.state_dict()`` file. A tensor is copied when the checkpoint has the same key with the
    same shape, and skipped otherwise (the reason is reported); a block matching no key of ``model`` is
    an error. Returns the copied keys and ``{skipped key: reason}``, both also logged.
    """
    source = resolve_checkpoint(path)
    state = torch.load(source, map_location="cpu", weights_only=False)
    if isinstance(state, dict) and "state_dict" in state:
        state = {k[len("model.") :]: v for k, v in state["state_dict"].items() if k.startswith("model.")}
    own = model.state_dict()
    loaded, skipped = {}, {}
    for block in blocks:
        keys = [k for k in own if k == block or k.startswith(block + ".")]
        if not keys:
            raise ValueError(f"init_from: block {block!r} matches no parameter of this model")
        for key in keys:
            theirs = state.get(key)
            if theirs is None:
                skipped[key] = "not in the checkpoint"
            elif theirs.shape != own[key].shape:
                skipped[key] = f"shape {tuple(theirs.shape)} there, {tuple(own[key].shape)} here"
            else:
                loaded[key] = theirs
    model.load_state_dict(loaded, strict=False)
    log.info("init_from %s: copied %d tensors: %s", source, len(loaded), ", ".join(loaded) or "none")
    for key, reason in skipped.items():
        log.warning("init_from %s: skipped %s (%s)", source, key, reason)
    return list(loaded), skipped
