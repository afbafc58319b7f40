"""``kernels.act``: the activation kernel (max-pool + ReLU + depthwise conv + bias, optional global mean) against
its reference: odd maps, maps smaller than the kernel, 1x1 maps, several tiles and channel blocks."""

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


@pytest.mark.parametrize("dtype,pool,act_num,shape,mean", [
    (F32, 1, 3, (1, 5, 7, 9), False),    # odd map, channels not a multiple of 16
    (F16, 2, 2, (2, 16, 9, 7), False),   # stride-2 pool of odd sizes (floor), batch 2
    (BF16, 2, 4, (1, 24, 9, 9), False),  # 9x9 taps on a 4x4 pooled map
    (F32, 1, 4, (2, 5, 3, 3), False),    # map smaller than the kernel
    (F16, 1, 3, (1, 24, 1, 1), False),   # 1x1 map
    (F32, 2, 3, (2, 20, 7, 7), True),    # pool + global mean (the last layer before the head)
    (BF16, 1, 2, (1, 5, 3, 5), True),
])
def test_series_act_matches_reference(dtype, pool, act_num, shape, mean):
    x = _cl(*shape, dtype=dtype)
    w, b = _taps(shape[1], act_num)
    taps = ref.pack_taps(w)
    out = ops.series_act(x, taps, b, pool, mean)
    want = ref.series_act(x, taps, b, pool, mean)
    assert out.dtype == dtype and out.shape == want.shape
    assert mean or out.is_contiguous(memory_format=torch.channels_last)
    assert rel_err(out.float(), want.float()) <= KERNEL_TOL[dtype]


def test_series_act_several_tiles_and_channel_blocks():
    """Small tiles and channel blocks: tile edges, halo loads across tiles, a partial last channel block."""
    x = _cl(1, 20, 6, 10)
    w, b = _taps(20, 2)
    taps = ref.pack_taps(w)
    out = act.series_act(x, taps, b, 2, False, K.interpreted(), config=Config.make(TH=2, TW=4, BC=16))
    assert rel_err(out, ref.series_act(x, taps, b, 2)) <= 1e-5


def test_mean_only_for_maps_one_tile_covers():
    assert act.mean_fits(7, 7) and act.mean_fits(16, 16) and not act.mean_fits(17, 16)
    with pytest.raises(ValueError, match="too large"):
        act.series_act(_cl(1, 5, 40, 40), *_taps(5, 2), pool=1, mean=True, interpreted=K.interpreted())
