"""``kernels`` (the package): the switch ``use_fused_kernels`` (setter, context managers, environment variable; off
for tracers, on for torch.compile) and the train form's hook into the fused activation op.

The kernels themselves are tested module by module (``test_kernels_act.py``, ``test_kernels_gemm.py``, ...) in
Triton's interpreter without a GPU (see ``kernel_device`` in conftest.py); ``test_kernels_gpu.py`` runs them compiled
at the real shapes.
"""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import (
    channels_last_tensor,
    kernel_device,
    rel_err,
)
from torch import nn

import vanillanet.kernels as K
from vanillanet.model.layers import SeriesActivation

DEV = kernel_device()  # skips without Triton; cpu in Triton's interpreter, else cuda


_cl = functools.partial(channels_last_tensor, device=DEV)


def test_switch_setter_context_and_reference(monkeypatch):
    x = torch.zeros(1, device=DEV)
    assert K.use_fused_kernels() and K.use_fused_kernels(x)
    with K.fused_kernels(False):
        assert not K.use_fused_kernels(x)
        with K.fused_kernels(True):
            assert K.use_fused_kernels(x)
        assert not K.use_fused_kernels(x)
    with K.reference():
        assert not K.use_fused_kernels(x)
    with K.disabled():
        assert not K.use_fused_kernels()
    assert K.use_fused_kernels(x)
    K.set_fused_kernels(False)
    try:
        assert not K.use_fused_kernels(x)
    finally:
        K.set_fused_kernels(True)
    assert not K.use_fused_kernels(torch.zeros(1, device="meta"))  # neither CUDA nor the interpreter's CPU
    if DEV == "cuda":
        assert not K.use_fused_kernels(torch.zeros(1))  # compiled kernels do not take CPU tensors
    assert K.available_on(DEV) and not K.available_on("meta")
    with K.reference():
        assert not K.available_on(DEV)
    monkeypatch.setattr(K, "_ops", None)
    assert not K.use_fused_kernels(x) and not K.available_on(DEV)


@pytest.mark.parametrize("value,expected", [("0", False), ("off", False), ("False", False), ("1", True), ("", True)])
def test_switch_environment_variable(monkeypatch, value, expected):
    monkeypatch.setenv(K.ENV_VAR, value)
    assert K._env_enabled() is expected


def test_a_switch_that_is_not_one_is_refused(monkeypatch):
    """Issue 17, finding 6: VANILLANET_FUSED_KERNELS=garbage no longer silently means on."""
    monkeypatch.setenv(K.ENV_VAR, "garbage")
    with pytest.raises(ValueError, match="VANILLANET_FUSED_KERNELS='garbage' is not a switch: set it to one of 1, "):
        K._env_enabled()


class _Probe(nn.Module):
    """Records what the switch says while its forward runs."""

    def __init__(self):
        super().__init__()
        self.seen: list[bool] = []

    def forward(self, x):
        self.seen.append(K.use_fused_kernels(x))
        return x * 2


def test_switch_off_for_tracers_on_for_compile():
    x = torch.randn(2, 3, device=DEV)
    probe = _Probe()
    torch.jit.trace(probe, x, check_trace=False)
    torch.fx.symbolic_trace(probe)
    torch.export.export(probe, (x,))
    assert probe.seen and not any(probe.seen)
    probe.seen.clear()
    torch.compile(probe, backend="eager", fullgraph=True)(x)
    assert probe.seen == [True]


def test_series_activation_uses_the_fused_op_and_matches(monkeypatch):
    """The train form's activation runs the fused op on channels_last inputs (CPU admitted for the test) and gives
    the same output and gradients as the plain path; NCHW inputs keep the plain path."""
    monkeypatch.setattr(K, "_TRAIN_DEVICES", (DEV,))
    torch.manual_seed(0)
    m = SeriesActivation(5, act_num=2).to(DEV)
    x = _cl(2, 5, 4, 6)
    calls = []
    real = K.dwconv_relu
    monkeypatch.setattr(K, "dwconv_relu", lambda *a: calls.append(1) or real(*a))
    results = []
    r = _cl(2, 5, 4, 6, seed=3)  # (a plain sum of squares has zero gradient through train-mode BN)
    for fused in (True, False):
        with K.fused_kernels(fused):
            xi, m.weight.grad = x.clone().requires_grad_(), None
            y = m(xi)
            (y * r).sum().backward()
            results.append((y, xi.grad, m.weight.grad))
    assert calls == [1]
    for a, b in zip(*results):
        assert rel_err(a, b) <= 1e-5
    m(x.contiguous())  # NCHW: plain path
    assert calls == [1]
