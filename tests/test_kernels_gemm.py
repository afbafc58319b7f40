"""``kernels.gemm``: the 1x1 conv / patchify-stem GEMM with bias, pool and ReLU epilogues against its reference."""

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

from vanillanet.kernels import gemm, ops  # noqa: E402
from vanillanet.kernels import references as ref  # noqa: E402
from vanillanet.kernels.autotune import Config  # noqa: E402

_cl = functools.partial(channels_last_tensor, device=DEV)
_taps = functools.partial(depthwise_taps, device=DEV)


def test_relu_moves_from_the_activation_into_the_gemm_epilogue():
    """GEMM with ReLU, then the activation without it == GEMM, then the activation with it (ReLU commutes with the
    max-pool); the non-negative input makes the activation's own ReLU a no-op."""
    x = _cl(1, 16, 6, 6)
    gen = torch.Generator().manual_seed(6)
    w2d, bias = (torch.randn(20, 16, generator=gen) / 4).to(DEV), torch.randn(20, generator=gen).to(DEV)
    w, b = _taps(20, 2)
    taps = ref.pack_taps(w)
    z = ops.conv_gemm(x, w2d, bias, 1, 2, True)
    assert rel_err(z, ref.conv_gemm(x, w2d, bias, 1, 2, relu=True)) <= 1e-5 and z.min() >= 0
    out = ops.series_act(z, taps, b, 1, False, False)
    assert rel_err(out, ref.series_act(ops.conv_gemm(x, w2d, bias, 1, 2), taps, b, 1)) <= 1e-5


@pytest.mark.parametrize("dtype,patch,pool,shape,cout", [
    (F32, 1, 1, (1, 5, 7, 9), 24),
    (F16, 1, 2, (2, 16, 9, 7), 20),   # pool epilogue on odd sizes
    (BF16, 4, 1, (2, 3, 9, 13), 16),  # patchify stem, ragged border dropped
    (F32, 4, 1, (1, 3, 8, 8), 5),
    (BF16, 1, 2, (1, 24, 3, 3), 5),
    (F16, 1, 1, (1, 5, 1, 1), 7),     # 1x1 map
    (F32, 4, 2, (1, 3, 17, 16), 8),   # patch and pool together
])
def test_conv_gemm_matches_reference(dtype, patch, pool, shape, cout):
    x = _cl(*shape, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    w2d = (torch.randn(cout, patch * patch * shape[1], generator=gen) / 4).to(DEV, dtype)
    bias = torch.randn(cout, generator=gen).to(DEV)
    out = ops.conv_gemm(x, w2d, bias, patch, pool)
    want = ref.conv_gemm(x, w2d, bias, patch, pool)
    assert out.dtype == dtype and out.shape == want.shape and out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out.float(), want.float()) <= KERNEL_TOL[dtype]


def test_conv_gemm_many_blocks():
    """Small blocks: several row, column and K blocks, grouped launch order, ragged edges everywhere."""
    x = _cl(2, 20, 9, 7)
    gen = torch.Generator().manual_seed(4)
    w2d, bias = (torch.randn(40, 20, generator=gen) / 4).to(DEV), torch.randn(40, generator=gen).to(DEV)
    cfg = Config.make(BQ=16, BN=16, BK=16, GROUP=2)
    for pool in (1, 2):
        out = gemm.conv_gemm(x, w2d, bias, 1, pool, K.interpreted(), config=cfg)
        assert rel_err(out, ref.conv_gemm(x, w2d, bias, 1, pool)) <= 1e-5


def test_conv_gemm_rejects_other_pools_and_mismatched_weights():
    x = _cl(1, 4, 4, 4)
    with pytest.raises(ValueError, match="2x2"):
        gemm.conv_gemm(x, torch.zeros(4, 4, device=DEV), torch.zeros(4, device=DEV), 1, 3, K.interpreted())
    with pytest.raises(ValueError, match="does not match"):
        gemm.conv_gemm(x, torch.zeros(4, 5, device=DEV), torch.zeros(4, device=DEV), 1, 1, K.interpreted())
