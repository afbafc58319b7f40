"""``kernels.references``: the references the kernels are tested against are the model's own layers."""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from conftest import (
    channels_last_tensor,
    kernel_device,
    rel_err,
)

from vanillanet.model.layers import SeriesActivation

DEV = kernel_device()  # skips without Triton; cpu in Triton's interpreter, else cuda

from vanillanet.kernels import references as ref  # noqa: E402

_cl = functools.partial(channels_last_tensor, device=DEV)


def test_series_act_reference_is_the_deploy_activation():
    """The reference itself equals max-pool followed by the model's deploy SeriesActivation."""
    m = SeriesActivation(6, act_num=2, deploy=True).to(DEV)
    with torch.no_grad():
        m.bias.normal_()
    x = _cl(2, 6, 9, 8)
    want = m(F.max_pool2d(x, 2))
    assert rel_err(ref.series_act(x, ref.pack_taps(m.weight), m.bias, 2), want) < 1e-6
