"""Every Triton kernel against its PyTorch reference, the custom ops, the switch and the fused deploy network.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (conftest.py sets TRITON_INTERPRET=1 before
triton is imported); with one they run compiled on CUDA. The interpreter's cost is per program and per op, not per
element, so the shapes are tiny: channels 5/16/20/24 (not multiples of the block), odd maps, maps smaller than the
kernel, 1x1 maps, batch 1 and 2, every act_num the variants use (2, 3, 4), fp32/fp16/bf16.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from conftest import build_variant, give_realistic_bn_stats, rel_err
from torch import nn

import vanillanet.kernels as K
from vanillanet.model.layers import SeriesActivation
from vanillanet.model.network import VanillaNet
from vanillanet.model.reparam import reparameterize_model
from vanillanet.util.errors import ConversionError

pytest.importorskip("triton", reason="the kernels need Triton (CUDA builds of torch ship it)")
if not K.available():
    pytest.fail(f"Triton is installed but the kernels could not be defined: {K.unavailable_reason()}", pytrace=False)

from vanillanet.kernels import act, autotune, gemm, ops  # noqa: E402
from vanillanet.kernels import references as ref  # noqa: E402
from vanillanet.kernels.autotune import Config  # noqa: E402
from vanillanet.kernels.fused_net import FusedDeployNet, build_fused  # noqa: E402

DEV = "cpu" if K.interpreted() else "cuda"
if DEV == "cuda" and not torch.cuda.is_available():
    pytest.fail("triton runs compiled here but there is no GPU: set TRITON_INTERPRET=1 before triton is imported "
                "(tests/conftest.py does this)", pytrace=False)
F32, F16, BF16 = torch.float32, torch.float16, torch.bfloat16
TOL = {F32: 1e-5, F16: 1e-2, BF16: 1e-2}


def _cl(*shape: int, dtype=F32, seed: int = 0, scale: float = 1.0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen) * scale
    return x.to(DEV, dtype).contiguous(memory_format=torch.channels_last)


def _taps(c: int, act_num: int, seed: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    k = 2 * act_num + 1
    w = torch.randn(c, 1, k, k, generator=gen) / k
    return w.to(DEV), torch.randn(c, generator=gen).to(DEV)


# ---------------------------------------------------------------------------------------------- activation kernel
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
    assert rel_err(out.float(), want.float()) <= TOL[dtype]


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


def test_series_act_reference_is_the_deploy_activation():
    """The reference itself equals max-pool followed by the model's deploy SeriesActivation."""
    m = SeriesActivation(6, act_num=2, deploy=True).to(DEV)
    with torch.no_grad():
        m.bias.normal_()
    x = _cl(2, 6, 9, 8)
    want = m(F.max_pool2d(x, 2))
    assert rel_err(ref.series_act(x, ref.pack_taps(m.weight), m.bias, 2), want) < 1e-6


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


# ---------------------------------------------------------------------------------------------- GEMM kernel
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
    assert rel_err(out.float(), want.float()) <= TOL[dtype]


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


# ---------------------------------------------------------------------------------------------- training op
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
        assert rel_err(a.float(), b.float()) <= TOL[dtype]


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


# ---------------------------------------------------------------------------------------------- tuning cache
def test_config_round_trip_and_cached_choices(monkeypatch):
    cfg = Config.make(num_warps=8, num_stages=3, TH=4, TW=8, BC=64)
    assert Config.from_json(cfg.to_json()) == cfg and cfg["BC"] == 64
    assert cfg.launch_kwargs() == {"TH": 4, "TW": 8, "BC": 64, "num_warps": 8, "num_stages": 3}
    runs = []
    cands = [Config.make(BC=16), Config.make(BC=32)]
    # off CUDA nothing is timed: the first candidate, not remembered
    assert autotune.pick("test-key", cands, runs.append, torch.device("cpu")) == cands[0] and not runs
    monkeypatch.setitem(autotune._CHOICES, "test-key", cands[1])
    assert autotune.pick("test-key", cands, runs.append, torch.device("cpu")) == cands[1]
    # a remembered choice that is not among the candidates (e.g. a forced plan) is ignored
    assert autotune.pick("test-key", ["gemm"], runs.append, torch.device("cpu")) == "gemm" and not runs
    assert autotune.cache_key("act", 2, torch.float16, True) == "act|2|float16|True"


# ---------------------------------------------------------------------------------------------- the switch
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


# ---------------------------------------------------------------------------------------------- train-form hook
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


# ---------------------------------------------------------------------------------------------- fused deploy net
def _deploy(model: VanillaNet, img: int) -> nn.Module:
    give_realistic_bn_stats(model, (2, model.in_chans, img, img))
    return reparameterize_model(model).to(DEV)


def _check_net(deploy: nn.Module, img: int, batch: int, dtype=F32, **plans) -> FusedDeployNet:
    x = _cl(batch, deploy.in_chans, img, img, seed=7)
    with torch.no_grad():
        want = deploy(x.float().contiguous())
        net = FusedDeployNet(deploy.to(dtype).eval(), dtype, **plans)
        out = net(x.to(dtype))
        deploy.float()
    assert out.shape == want.shape
    assert rel_err(out.float(), want) <= (1e-5 if dtype == F32 else 1e-2), plans
    return net


def test_fused_vanillanet_5_equals_eager_deploy():
    deploy = _deploy(build_variant("vanillanet_5", width_mult=1 / 32, num_classes=10), 32)
    net = _check_net(deploy, 32, batch=2)
    assert net.plans == {"stem": "patch", "stages.0": "fused-pool", "stages.1": "fused-pool",
                         "stages.2": "fused-pool"}


@pytest.mark.parametrize("plan,stem_plan,dtype", [("gemm", "conv", F32), ("linear", "patch", F32),
                                                  ("fused-pool", "patch", F16)])
def test_fused_plans_equal_eager_deploy(plan, stem_plan, dtype):
    model = VanillaNet(dims=(16, 24, 20), strides=(2, 1), act_num=2, num_classes=7)
    net = _check_net(_deploy(model, 16), 16, batch=1, dtype=dtype, plan=plan, stem_plan=stem_plan)
    assert net.plans["stages.0"] == plan and net.plans["stages.1"] in ("gemm", "linear")


def test_fused_ada_pool_and_headless_fall_back_cleanly():
    """Overlapping stride-3 stem -> cuDNN/torch conv; adaptive max-pool -> torch op between GEMM and activation;
    num_classes=0 -> pooled features."""
    model = VanillaNet(dims=(16, 24, 20), strides=(2, 2), ada_pool=(38, 0), act_num=4, num_classes=0)
    net = _check_net(_deploy(model, 24), 24, batch=1)
    assert net.plans["stem"] == "conv" and net.blocks[0].pool == 0


def test_build_fused_and_fast_inference_backend():
    from vanillanet.deploy.inference import fast_inference

    model = VanillaNet(dims=(16, 24), strides=(2,), act_num=2, num_classes=5)
    deploy = _deploy(model, 16)
    fn = K.build_fused(deploy, torch.zeros(1, 3, 16, 16, device=DEV).contiguous(memory_format=torch.channels_last))
    x = _cl(1, 3, 16, 16, seed=9)
    with torch.no_grad():
        assert rel_err(fn(x), deploy(x)) <= 1e-5
    clf = fast_inference(deploy, DEV, batch_size=1, image_size=16, backend="fused")
    assert clf.backend == "fused" and clf.max_rel_err <= 1e-5


def test_build_fused_refuses_what_it_cannot_run():
    model = VanillaNet(dims=(16, 24), strides=(2,), act_num=2, num_classes=5).to(DEV).eval()
    example = torch.zeros(1, 3, 16, 16, device=DEV)
    with pytest.raises(ConversionError, match="reparameterize_model"):
        build_fused(model, example)
    deploy = reparameterize_model(model)
    with pytest.raises(ConversionError, match="eval"):
        build_fused(deploy.train(), example)
    deploy.eval()
    with pytest.raises(ConversionError, match="run on"):
        build_fused(deploy, torch.zeros(1, 3, 16, 16, device="meta"))
    with pytest.raises(ConversionError, match="cannot run this model"):
        build_fused(deploy, torch.zeros(1, 3, 3, 3, device=DEV))  # too small: the stem gives no pixels
    relu = reparameterize_model(VanillaNet(dims=(16, 24), strides=(2,), num_classes=5, series_act=False).to(DEV))
    with pytest.raises(ConversionError, match="series_act=False"):
        build_fused(relu.eval(), example)
