"""The pure re-parameterisation maths and the series-informed activation."""

import pytest
import torch
import torch.nn.functional as F
from conftest import rel_err
from torch import nn

from vanillanet.model.layers import SeriesActivation, StridedAdaptiveMaxPool2d, fold_bn_module, merge_convs, series_taps


def _random_bn(c: int, gen: torch.Generator) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-6).double().eval()
    with torch.no_grad():
        bn.weight.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.5)
        bn.bias.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=torch.float64))
        bn.running_var.copy_(torch.rand(c, generator=gen, dtype=torch.float64) + 0.1)
    return bn


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (4, 4, 0), (4, 3, 1), (7, 1, 3)])
def test_fold_bn_equals_conv_then_bn(kernel, stride, padding):
    gen = torch.Generator().manual_seed(kernel)
    conv = nn.Conv2d(5, 6, kernel, stride=stride, padding=padding).double()
    bn = _random_bn(6, gen)
    x = torch.randn(2, 5, 17, 17, generator=gen, dtype=torch.float64)
    w, b = fold_bn_module(conv.weight, conv.bias, bn)
    assert rel_err(F.conv2d(x, w, b, stride=stride, padding=padding), bn(conv(x))) < 1e-13


def test_merge_convs_equals_sequence_and_is_plain_layout():
    gen = torch.Generator().manual_seed(1)
    c1 = nn.Conv2d(3, 8, 4, stride=4).double()
    c2 = nn.Conv2d(8, 5, 1).double()
    x = torch.randn(2, 3, 16, 16, generator=gen, dtype=torch.float64)
    w, b = merge_convs(c1.weight, c1.bias, c2.weight, c2.bias)
    assert w.shape == (5, 3, 4, 4) and b.shape == (5,)
    assert rel_err(F.conv2d(x, w, b, stride=4), c2(c1(x))) < 1e-13
    assert w.stride() == torch.empty(w.shape).stride()


def test_merge_convs_rejects_non_pointwise_second_conv():
    w = torch.randn(4, 4, 3, 3)
    with pytest.raises(ValueError, match="1x1"):
        merge_convs(w, torch.zeros(4), w, torch.zeros(4))


def test_merge_keeps_fp32_exact_to_rounding():
    gen = torch.Generator().manual_seed(2)
    w1, b1 = torch.randn(64, 64, 1, 1, generator=gen), torch.randn(64, generator=gen)
    w2, b2 = torch.randn(32, 64, 1, 1, generator=gen), torch.randn(32, generator=gen)
    w, b = merge_convs(w1, b1, w2, b2)
    w_ref, b_ref = merge_convs(w1.double(), b1.double(), w2.double(), b2.double())
    assert w.dtype == torch.float32
    assert rel_err(w.double(), w_ref) < 1e-7 and rel_err(b.double(), b_ref) < 1e-7


@pytest.mark.parametrize("act_num", [1, 3, 4])
def test_series_activation_matches_its_formula(act_num):
    """out[c,h,w] = BN_c(sum_{i,j in [-n,n]} a[c,i,j] * ReLU(x[c,h+i,w+j])), zero padding."""
    gen = torch.Generator().manual_seed(act_num)
    c, n, hw = 3, act_num, 6
    act = SeriesActivation(c, act_num).double()
    act.bn = _random_bn(c, gen)
    x = torch.randn(1, c, hw, hw, generator=gen, dtype=torch.float64)
    padded = F.pad(F.relu(x), (n, n, n, n))
    expected = torch.zeros_like(x)
    for i in range(-n, n + 1):
        for j in range(-n, n + 1):
            shifted = padded[:, :, n + i : n + i + hw, n + j : n + j + hw]
            expected += act.weight[:, 0, i + n, j + n].view(1, c, 1, 1) * shifted
    assert rel_err(act(x), act.bn(expected)) < 1e-13


def test_series_activation_reparameterize_exact_and_idempotent():
    gen = torch.Generator().manual_seed(3)
    act = SeriesActivation(4, 3).double()
    act.bn = _random_bn(4, gen)
    x = torch.randn(2, 4, 9, 9, generator=gen, dtype=torch.float64)
    y = act(x)
    act.reparameterize()
    act.reparameterize()
    assert act.deploy and not hasattr(act, "bn")
    assert set(dict(act.named_parameters())) == {"weight", "bias"}
    assert rel_err(act(x), y) < 1e-13
    fresh = SeriesActivation(4, 3, deploy=True)
    assert list(fresh.state_dict()) == list(act.state_dict())


@pytest.mark.parametrize("hw", [(1, 1), (2, 3), (3, 3), (7, 1)])
def test_series_activation_on_maps_smaller_than_the_kernel_is_exact(hw):
    """Taps that only see zero padding are skipped on tiny maps: same output and same gradients as the full kernel."""
    gen = torch.Generator().manual_seed(sum(hw))
    act = SeriesActivation(4, 3).double().eval()
    act.bn = _random_bn(4, gen)
    x = torch.randn(2, 4, *hw, generator=gen, dtype=torch.float64, requires_grad=True)
    out = act(x)
    ref = act.bn(F.conv2d(F.relu(x), act.weight, None, padding=3, groups=4))
    assert out.shape == ref.shape and rel_err(out, ref) < 1e-14
    g_out = torch.autograd.grad(out.sum(), (x, act.weight))
    g_ref = torch.autograd.grad(ref.sum(), (x, act.weight))
    assert all(torch.allclose(a, b, rtol=0, atol=1e-12) for a, b in zip(g_out, g_ref))


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
def test_series_taps_under_each_graph_capture():
    """Eager and TorchScript trim; FX records the trimming as one call (its graph trims at run time, bitwise like
    eager); torch.jit.trace (the legacy ONNX exporter) gets the full kernel."""
    weight = torch.randn(4, 1, 7, 7)
    tiny = torch.randn(1, 4, 2, 1)
    trimmed, padding = series_taps(weight, 3, tiny)
    assert trimmed.shape[-2:] == (3, 1) and padding == [1, 0]
    assert torch.equal(trimmed, weight[:, :, 2:5, 3:4])
    assert torch.jit.script(series_taps)(weight, 3, tiny)[0].shape[-2:] == (3, 1)
    assert series_taps(weight, 3, torch.randn(1, 4, 4, 9))[0] is weight  # no outer tap is dead

    act = SeriesActivation(4, 3).eval()
    graph = torch.fx.symbolic_trace(act)
    assert [n.target for n in graph.graph.nodes].count(series_taps) == 1
    traced = torch.jit.trace(act, tiny)
    assert "slice" not in str(traced.inlined_graph)
    with torch.no_grad():
        for x in (tiny, torch.randn(2, 4, 9, 3)):
            assert torch.equal(graph(x), act(x))
        assert rel_err(traced(tiny), act(tiny)) < 1e-6


@pytest.mark.filterwarnings("ignore::FutureWarning")  # torch.jit is deprecated
@pytest.mark.parametrize("hw", [(75, 75), (38, 19), (19, 7), (1, 2)])
def test_strided_adaptive_max_pool_halves_with_ceil(hw):
    """ceil(side / 2) outputs with AdaptiveMaxPool2d's windows: at 75 -> 38 it is the original's fixed pool."""
    x = torch.randn(2, 3, *hw)
    out_hw = tuple(-(-s // 2) for s in hw)
    pool = StridedAdaptiveMaxPool2d(2)
    assert torch.equal(pool(x), nn.AdaptiveMaxPool2d(out_hw)(x))
    assert torch.equal(torch.jit.script(pool)(x), pool(x))
