"""Whole-model conversion and the deep-training schedule of act_learn."""

from __future__ import annotations

import copy
import math

import torch
from torch import nn


def reparameterize_model(model: nn.Module, inplace: bool = False) -> nn.Module:
    """Return the deploy form of ``model`` (a converted copy in eval mode unless ``inplace``).

    Every submodule with a ``reparameterize()`` method is converted, parents first; the original is untouched
    unless ``inplace``. Raises ``ConversionError`` when act_learn != 1.
    """
    if not inplace:
        model = copy.deepcopy(model)
    model.eval()
    for m in list(model.modules()):
        if hasattr(m, "reparameterize"):
            m.reparameterize()
    return model


def rel_err(out: torch.Tensor, ref: torch.Tensor) -> float:
    """max |out - ref| / max |ref| in float64 (inf when out has NaN/inf)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    err = float((out - ref).abs().max() / ref.abs().max().clamp_min(1e-30))
    return err if err == err else float("inf")


@torch.no_grad()
def conversion_error(model: nn.Module, x: torch.Tensor, deploy: nn.Module | None = None) -> float:
    """max |deploy(x) - model(x)| / max |model(x)| in eval mode (the deploy copy is made when not given)."""
    was_training = model.training
    model.eval()
    try:
        deploy = reparameterize_model(model) if deploy is None else deploy.eval()
        return rel_err(deploy(x), model(x))
    finally:
        model.train(was_training)


def act_learn_schedule(
    epoch: float, decay_epochs: float, mode: str = "linear"
) -> float:
    """act_learn at (possibly fractional) ``epoch``: 0 at the start, exactly 1.0 from ``decay_epochs`` on.

    ``linear``: e / decay_epochs (the original); ``cosine``: (1 - cos(pi e / decay_epochs)) / 2. For a
    per-iteration schedule pass ``epoch = step / steps_per_epoch``.
    """
    if mode not in ("linear", "cosine"):
        raise ValueError(f"act_learn schedule must be 'linear' or 'cosine', got {mode!r}")
    if decay_epochs <= 0 or epoch >= decay_epochs:
        return 1.0
    t = max(0.0, float(epoch)) / float(decay_epochs)
    return t if mode == "linear" else (1.0 - math.cos(math.pi * t)) / 2.0
