"""``kernels.ops``: the kernels as custom ops: forward and gradients, opcheck, torch.compile fullgraph."""

from __future__ import annotations

import functools

import pytest
import torch
from conftest import (
    BF16,
    F16,
    F32,
    KERNEL_TOL,
    channels_last_tensor,
    depthwise_taps,
    kernel_device,
    rel_err,
)

import vanillanet.kernels as K

DEV = kernel_device()  # skips without Triton; cpu in Triton's interpreter, else cuda

from vanillanet.kernels import act, ops  # noqa: E402
from vanillanet.kernels import references as ref  # noqa: E402
from vanillanet.kernels.autotune import Config  # noqa: E402

_cl = functools.partial(channels_last_tensor, device=DEV)
_taps = functools.partial(depthwise_taps, device=DEV)


def _grads(fn, x, w, g):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = fn(x, w)
    y.backward(g)
    return y, x.grad, w.grad


@pytest.mark.parametrize("dtype,act_num,shape", [
    (F32, 3, (2, 5, 3, 6)),
    (BF16, 2, (1, 16, 5, 5)),
    (F16, 4, (1, 24, 3, 3)),   # 9x9 taps on a 3x3 map: the skipped taps get zero gradient
    (F32, 2, (1, 5, 1, 1)),
])
def test_dwconv_relu_forward_and_gradients(dtype, act_num, shape):
    x = _cl(*shape, dtype=dtype)
    w, _ = _taps(shape[1], act_num)
    g = _cl(*shape, dtype=dtype, seed=5)
    out, gx, gw = _grads(ops.dwconv_relu, x, w, g)
    want, wgx, wgw = _grads(ref.dwconv_relu, x, w, g)
    assert out.dtype == gx.dtype == dtype and gw.dtype == w.dtype
    for a, b in ((out, want), (gx, wgx), (gw, wgw)):
        assert rel_err(a.float(), b.float()) <= KERNEL_TOL[dtype]


def test_dwconv_relu_backward_several_tiles():
    x = _cl(1, 20, 3, 5)
    w, _ = _taps(20, 2)
    g = _cl(1, 20, 3, 5, seed=5)
    gx, gtaps = act.dwconv_relu_backward(g, x, ref.pack_taps(w), K.interpreted(),
                                         config=Config.make(TH=2, TW=4, BC=16))
    _, wgx, wgw = _grads(ref.dwconv_relu, x, w, g)
    assert rel_err(gx, wgx) <= 1e-5
    assert rel_err(ref.unpack_taps(gtaps, 5), wgw) <= 1e-5


def test_custom_ops_pass_opcheck():
    """Schemas, fake (meta) implementations and the autograd registration as torch.library checks them (the
    compiled-autograd check is the next test, cheaper)."""
    x = _cl(1, 5, 1, 1)
    w, b = _taps(5, 2)
    checks = ("test_schema", "test_autograd_registration", "test_faketensor")
    torch.library.opcheck(torch.ops.vanillanet.series_act.default, (x, ref.pack_taps(w), b, 1, False),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.vanillanet.conv_gemm.default, (_cl(1, 3, 4, 4), torch.randn(6, 48, device=DEV),
                                                                   torch.zeros(6, device=DEV), 4, 1),
                          test_utils=checks)
    torch.library.opcheck(torch.ops.vanillanet.dwconv_relu.default, (x.requires_grad_(), w.requires_grad_()),
                          test_utils=checks)


def test_compile_fullgraph_through_the_custom_ops():
    """torch.compile traces the ops (fake implementations) and the autograd into one graph without breaks."""
    x = _cl(1, 5, 3, 3)
    w, b = _taps(5, 2)
    taps = ref.pack_taps(w)

    def fn(x, w):
        y = torch.ops.vanillanet.dwconv_relu(x, w) * 2
        z = torch.ops.vanillanet.series_act(x, taps, b, 1, True)
        return y.square().sum() + z.sum()

    compiled = torch.compile(fn, backend="aot_eager", fullgraph=True)
    wc, we = w.clone().requires_grad_(), w.clone().requires_grad_()
    out_c, out_e = compiled(x, wc), fn(x, we)
    out_c.backward()
    out_e.backward()
    assert rel_err(out_c, out_e) < 1e-6 and rel_err(wc.grad, we.grad) < 1e-6
