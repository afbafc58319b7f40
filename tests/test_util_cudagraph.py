"""util/cudagraph.py: ``capture`` replays a fixed-shape forward pass from a CUDA graph (GPU only)."""

from __future__ import annotations

import pytest
import torch
from conftest import build_variant

from vanillanet.util.cudagraph import capture

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]


def test_replay_matches_the_eager_forward_and_reuses_the_output_buffer():
    torch.manual_seed(0)
    model = build_variant("vanillanet_5", num_classes=10).cuda().eval()
    x = torch.randn(2, 3, 32, 32, device="cuda")
    y = torch.randn(2, 3, 32, 32, device="cuda")
    run = capture(model, x)
    with torch.no_grad():
        want_x, want_y = model(x), model(y)
    out_x = run(x).clone()
    out_y = run(y)
    torch.testing.assert_close(out_x, want_x, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(out_y, want_y, rtol=1e-4, atol=1e-4)
    assert run(x) is out_y  # the static buffer, overwritten by every call


def test_the_input_is_copied_not_aliased():
    x = torch.ones(4, device="cuda")
    run = capture(lambda t: t * 2, x)
    x.fill_(3)
    assert torch.equal(run(torch.full((4,), 5.0, device="cuda")), torch.full((4,), 10.0, device="cuda"))
