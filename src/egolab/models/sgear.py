"""S-GEAR on top of AVT: prototypes, prototype attention, the gated prototype head and the losses.

Released-code behaviour (spec section 3) with these gap fills, all in the spirit of the paper:

* :class:`Prototypes` holds the visual prototypes (A, C), a parameter initialised from a visual
  prototypes file (``python -m egolab.prototypes visual``) or, without one, from the language encodings
  (the paper's "language prototypes used directly" ablation); a width mismatch is resized by linear
  interpolation along channels, as the release does. The (A, A) language similarity matrix is a
  non-persistent buffer. Both are read by :meth:`Prototypes.load_pretrained`, which the task calls
  before fitting (a restored checkpoint then overrides the visual prototypes).
* :class:`PrototypeAttention`: the T prototypes most similar to the time-averaged features are the
  queries and values, the features the keys (as released); the attention map is mixed through a gate
  with a learnable cyclic Toeplitz (relative-position) map. The release builds that map through cos/sin
  transforms over head groups; here each head's relative weights are softmax-normalised directly.
* :class:`GatedPrototypeHead`: ``s = cos(z, P)``, ``z_bar = softmax(s / temperature) @ P.detach()``,
  ``z_hat = sigmoid(b) z + (1 - sigmoid(b)) z_bar`` (b initialised to 0.5), then dropout + linear.
  The released temperature is sqrt(C).
* :class:`AnticipationLoss`: the release passes an undefined ``org_gamma`` as the prototypes of the
  regularisation loss; the current (detached) visual prototypes are used.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn


def _load_tensor(path: str | os.PathLike, key: str) -> torch.Tensor:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"prototype file not found: {path}")
    data = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(data, dict) or key not in data:
        raise ValueError(f"{path}: expected a dict with {key!r} (see python -m egolab.prototypes)")
    return data[key].float()


def resize_channels(x: torch.Tensor, dim: int) -> torch.Tensor:
    """(N, D) -> (N, dim) by linear interpolation along channels (identity when D == dim)."""
    if x.shape[1] == dim:
        return x
    return F.interpolate(x[:, None, :], size=dim, mode="linear", align_corners=False)[:, 0]


class Prototypes(nn.Module):
    """Visual prototypes (A, C) and the language similarity matrix (A, A) of the action classes."""

    def __init__(
        self,
        num_actions: int,
        dim: int,
        language_encodings: str | None = None,
        language_similarities: str | None = None,
        visual: str | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        self.num_actions, self.dim = num_actions, dim
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
            init = self._check(_load_tensor(self.files["encodings"], "encodings"), self.files["encodings"], a)
        self.visual.copy_(resize_channels(init, self.dim))
        if self.files["similarities"] is not None:
            sims = _load_tensor(self.files["similarities"], "similarities")
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
    """S-GEAR PA: enrich the T input features with the T prototypes most similar to their mean.

    ``fused = sigmoid(a) * x + (1 - sigmoid(a)) * proj(A @ v)``, with queries and values from the
    selected prototypes, keys from x, and ``A = sigmoid(g) softmax(q k^T / sqrt(d)) + (1 - sigmoid(g))
    Toeplitz``. ``a`` starts at 0.5, ``g`` at 0 (an even mix).
    """

    def __init__(self, dim: int, num_heads: int = 12, max_len: int = 64, dropout: float = 0.0) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.q = nn.Linear(dim, dim)
        self.k = nn.Linear(dim, dim)
        self.v = nn.Linear(dim, dim)
        self.proj = nn.Linear(dim, dim)
        self.drop = nn.Dropout(dropout)
        self.toeplitz_weights = nn.Parameter(torch.zeros(num_heads, max_len))
        self.gate = nn.Parameter(torch.zeros(()))
        self.alpha = nn.Parameter(torch.tensor(0.5))

    def toeplitz(self, t: int) -> torch.Tensor:
        """(heads, t, t) cyclic relative-position attention, row i weighting step j by w[(i - j) mod t]."""
        offsets = (torch.arange(t)[:, None] - torch.arange(t)[None, :]) % t
        return self.toeplitz_weights[:, :t][:, offsets].softmax(dim=-1)

    def select(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        """The T (= x's length) prototypes most similar to the time-averaged features, (B, T, C), detached."""
        sims = cosine_matrix(x.mean(dim=1), prototypes)
        top = sims.topk(min(x.shape[1], prototypes.shape[0]), dim=-1).indices
        return prototypes.detach()[top]

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        if t > self.toeplitz_weights.shape[1]:
            raise ValueError(f"{t} steps exceed max_len={self.toeplitz_weights.shape[1]}")
        tokens = self.select(x, prototypes)
        heads, hd = self.num_heads, c // self.num_heads

        def split(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, -1, heads, hd).transpose(1, 2)

        q, k, v = split(self.q(tokens)), split(self.k(x)), split(self.v(tokens))
        attn = (q @ k.transpose(-2, -1) / math.sqrt(hd)).softmax(dim=-1)
        gate = torch.sigmoid(self.gate)
        attn = gate * attn + (1 - gate) * self.toeplitz(t).to(attn)
        out = self.proj(self.drop(attn @ v).transpose(1, 2).reshape(b, -1, c))
        alpha = torch.sigmoid(self.alpha)
        return alpha * x + (1 - alpha) * out


class GatedPrototypeHead(nn.Module):
    """S-GEAR classification head: cosine attention over the visual prototypes, gated, then linear."""

    def __init__(
        self, dim: int, num_actions: int, dropout: float = 0.2, temperature: float | None = None
    ) -> None:
        super().__init__()
        self.temperature = math.sqrt(dim) if temperature is None else float(temperature)
        self.balance = nn.Parameter(torch.tensor(0.5))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(dim, num_actions)

    def forward(self, x: torch.Tensor, prototypes: torch.Tensor) -> dict[str, torch.Tensor]:
        sims = cosine_matrix(x, prototypes)
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
