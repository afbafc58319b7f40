"""Whole-model conversion to the deploy form, how close two outputs are, and BN statistics for random weights."""

from __future__ import annotations

import copy

import torch
from torch import nn

__all__ = ["calibrate_bn", "conversion_error", "rel_err", "reparameterize_model"]


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
    """max |out - ref| / max |ref| in float64 (inf when out has NaN/inf): the one closeness measure of the package."""
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


@torch.no_grad()
def calibrate_bn(model: nn.Module, input_shape: tuple[int, ...], *, batches: int = 2, seed: int = 0,
                 randomize_affine: bool = False, generator: torch.Generator | None = None) -> nn.Module:
    """Give randomly initialised weights realistic activation scales: BN running statistics from ``batches``
    random batches of ``input_shape`` (cumulative average), optionally random BN affine parameters (so that folded
    weights are far from the identity). Without this the logits of a deep random VanillaNet are ~1e-15 and
    underflow in fp16, which would make half-precision errors meaningless. Random numbers come from ``generator``
    (advanced in place) or a fresh one seeded with ``seed``. Returns ``model`` (its mode restored)."""
    gen = generator if generator is not None else torch.Generator().manual_seed(seed)
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns:
        return model
    for bn in bns:
        if randomize_affine and bn.affine:
            bn.weight.copy_(torch.rand(bn.weight.shape, generator=gen) + 0.5)
            bn.bias.copy_(torch.rand(bn.bias.shape, generator=gen) - 0.5)
        bn.reset_running_stats()
        bn.momentum = None
    was_training = model.training
    model.train()
    p = next(model.parameters())
    for _ in range(batches):
        model(torch.randn(input_shape, generator=gen, dtype=p.dtype).to(p.device))
    for bn in bns:
        bn.momentum = 0.1
    model.train(was_training)
    return model
