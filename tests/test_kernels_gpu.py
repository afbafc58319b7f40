"""GPU checks of the fused kernels (marker ``gpu``; skipped without CUDA): every kernel and every tuning candidate at
the real layer shapes of vanillanet_5 in fp16/bf16/fp32 against its reference, CUDA-graph capture of
``build_fused``, torch.compile (fullgraph) over the custom ops, the fused training op's gradients, a bf16 +
channels_last + compile training step, the fp16 GradScaler recipe and a DDP step over NCCL (world size 1).

Run: ``PYTHONPATH=src python -m pytest -m gpu -q tests/test_kernels_gpu.py`` (a few minutes on an H100, most of it
Triton and inductor compiling). Tuning is off (default configurations) except where ``fast_inference`` builds the
fused backend; the shapes are vanillanet_5's, so the benchmark that follows finds them compiled (Triton's cache)
and, for batch 1 fp16, tuned (the tuning cache file).
"""

from __future__ import annotations

import copy
import functools

import pytest
import torch
import torch.nn.functional as F
from conftest import (
    BF16,
    F16,
    F32,
    KERNEL_TOL,
    build_variant,
    channels_last_tensor,
    depthwise_taps,
    give_realistic_bn_stats,
    rel_err,
)
from torch import nn

import vanillanet.kernels as K
from vanillanet.model.layers import SeriesActivation
from vanillanet.model.network import VanillaNet
from vanillanet.model.reparam import reparameterize_model

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    pytest.mark.skipif(not K.available() or K.interpreted(), reason="needs compiled Triton kernels"),
]

TOL = KERNEL_TOL
DEV = "cuda"


@pytest.fixture(autouse=True)
def _exact_fp32_untuned(monkeypatch):
    """References in true fp32 (no TF32); kernels in their default configuration (each compile costs seconds)."""
    monkeypatch.setenv("VANILLANET_KERNEL_TUNING", "0")
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


_cl = functools.partial(channels_last_tensor, device=DEV)
_taps = functools.partial(depthwise_taps, device=DEV)


def _ops():
    from vanillanet.kernels import act, gemm, ops
    from vanillanet.kernels import references as ref

    return act, gemm, ops, ref


# ---------------------------------------------------------------------------------------------- kernels
# vanillanet_5's activations at 224 px after the fused-pool GEMMs: stem 56x56x512, blocks 28x28x1024, 14x14x2048 and
# 7x7x4096 with the head's mean; the other plans pool in the activation (56x56x1024, stride 2); act_num 4 (k=9, the
# detection configs) and act_num 2 on an odd map with channels not a multiple of the block.
ACT_CASES = [(F16, 512, 56, 1, False, 3), (F16, 1024, 28, 1, False, 3), (F16, 2048, 14, 1, False, 3),
             (F16, 4096, 7, 1, True, 3), (F16, 1024, 56, 2, False, 3), (BF16, 1024, 28, 1, False, 3),
             (BF16, 4096, 14, 2, True, 3), (F32, 512, 56, 1, False, 3), (F32, 2048, 14, 1, False, 4),
             (BF16, 200, 9, 1, False, 2)]


@pytest.mark.parametrize("dtype,c,hw,pool,mean,act_num", ACT_CASES)
def test_series_act_real_shapes(dtype, c, hw, pool, mean, act_num):
    act, _, ops, ref = _ops()
    x = _cl(2, c, hw, hw, dtype=dtype)
    w, b = _taps(c, act_num)
    taps = ref.pack_taps(w)
    out = ops.series_act(x, taps, b, pool, mean)
    assert rel_err(out.float(), ref.series_act(x, taps, b, pool, mean).float()) <= TOL[dtype]


GEMM_CASES = [(F16, 3, 224, 512, 4, 1), (F16, 512, 56, 1024, 1, 2), (F16, 1024, 28, 2048, 1, 2),
              (F16, 2048, 14, 4096, 1, 2), (F16, 1024, 28, 2048, 1, 1), (BF16, 3, 224, 512, 4, 1),
              (BF16, 512, 56, 1024, 1, 2), (F32, 512, 56, 1024, 1, 2), (F32, 1024, 28, 2048, 1, 1),
              (BF16, 24, 9, 40, 1, 2)]


@pytest.mark.parametrize("dtype,cin,hw,cout,patch,pool", GEMM_CASES)
def test_conv_gemm_real_shapes(dtype, cin, hw, cout, patch, pool):
    _, _, ops, ref = _ops()
    batch = 2 if hw < 224 else 1
    x = _cl(batch, cin, hw, hw, dtype=dtype)
    gen = torch.Generator().manual_seed(3)
    w2d = (torch.randn(cout, patch * patch * cin, generator=gen) / (patch * patch * cin) ** 0.5).to(DEV, dtype)
    bias = torch.randn(cout, generator=gen).to(DEV)
    out = ops.conv_gemm(x, w2d, bias, patch, pool)
    assert rel_err(out.float(), ref.conv_gemm(x, w2d, bias, patch, pool).float()) <= TOL[dtype]


# ---------------------------------------------------------------------------------------------- training op
def _grads(fn, x, w, g):
    x, w = x.detach().clone().requires_grad_(), w.detach().clone().requires_grad_()
    y = fn(x, w)
    y.backward(g)
    return y, x.grad, w.grad


@pytest.mark.parametrize("dtype,c,hw,act_num", [(BF16, 512, 56, 3), (BF16, 2048, 14, 3), (BF16, 4096, 7, 4),
                                                (F16, 1024, 28, 3), (F32, 200, 9, 2)])
def test_dwconv_relu_gradients_real_shapes(dtype, c, hw, act_num):
    _, _, ops, ref = _ops()
    x = _cl(4, c, hw, hw, dtype=dtype)
    w, _ = _taps(c, act_num)
    g = _cl(4, c, hw, hw, dtype=dtype, seed=5)
    got, want = _grads(ops.dwconv_relu, x, w, g), _grads(ref.dwconv_relu, x, w, g)
    for a, b in zip(got, want):
        assert rel_err(a.float(), b.float()) <= TOL[dtype]


# ---------------------------------------------------------------------------------------------- fused inference
def _calibrated(name: str, width_mult: float = 1.0) -> nn.Module:
    """The deploy form of ``name`` with realistic BN statistics (gathered on the CPU), on the GPU, fp32."""
    model = build_variant(name, width_mult=width_mult)
    give_realistic_bn_stats(model, (2, 3, 224, 224))
    return reparameterize_model(model).to(DEV)


@pytest.fixture(scope="module")
def v5_deploy() -> nn.Module:
    return _calibrated("vanillanet_5")


@pytest.mark.parametrize("dtype", [F16])
def test_build_fused_cuda_graph_vanillanet_5(v5_deploy, dtype):
    deploy = v5_deploy
    x = torch.randn(2, 3, 224, 224, device=DEV)
    with torch.no_grad(), K.reference():
        want = deploy(x)
    half = copy.deepcopy(deploy).to(dtype=dtype, memory_format=torch.channels_last)
    example = torch.zeros_like(x, dtype=dtype).contiguous(memory_format=torch.channels_last)
    fn = K.build_fused(half, example)
    out = fn(x.to(dtype).contiguous(memory_format=torch.channels_last)).float().clone()
    assert rel_err(out, want) <= 1e-2
    x2 = torch.randn_like(x)  # a second call replays the graph on new data
    with torch.no_grad(), K.reference():
        want2 = deploy(x2)
    assert rel_err(fn(x2.to(dtype).contiguous(memory_format=torch.channels_last)).float(), want2) <= 1e-2


# ---------------------------------------------------------------------------------------------- training
def _tiny_train_model() -> VanillaNet:
    model = build_variant("vanillanet_5", width_mult=1 / 8, num_classes=10).to(DEV)
    model.act_learn = 0.5
    return model


def _step(model, x, y, opt, dtype, scaler=None) -> float:
    with torch.autocast("cuda", dtype=dtype):
        loss = F.cross_entropy(model(x), y)
    opt.zero_grad(set_to_none=True)
    if scaler is None:
        loss.backward()
        opt.step()
    else:
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
    return float(loss)


def test_original_recipe_fp16_grad_scaler_step():
    """fp16 autocast + GradScaler (the original recipe), NCHW and channels_last (where the fused op runs)."""
    torch.manual_seed(0)
    for layout in (torch.contiguous_format, torch.channels_last):
        model = _tiny_train_model().to(memory_format=layout)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        scaler = torch.amp.GradScaler("cuda")
        x = torch.randn(8, 3, 64, 64, device=DEV).contiguous(memory_format=layout)
        y = torch.randint(0, 10, (8,), device=DEV)
        losses = [_step(model, x, y, opt, torch.float16, scaler) for _ in range(3)]
        assert all(torch.isfinite(torch.tensor(losses))) and scaler.get_scale() > 0


def test_compile_fullgraph_over_the_custom_ops():
    """inductor compiles a train-form activation with the fused op (fullgraph: no graph breaks) and matches."""
    torch.manual_seed(0)
    m = SeriesActivation(256, 3).to(DEV).to(memory_format=torch.channels_last)
    x = _cl(8, 256, 28, 28, dtype=BF16)
    r = _cl(8, 256, 28, 28, dtype=F32, seed=2)
    compiled = torch.compile(m, fullgraph=True)
    outs = []
    for fn in (compiled, m):
        m.weight.grad = None
        with torch.autocast("cuda", torch.bfloat16):
            y = fn(x)
        (y.float() * r).sum().backward()
        outs.append((y.float(), m.weight.grad.clone()))
    assert rel_err(outs[0][0], outs[1][0]) <= 1e-2 and rel_err(outs[0][1], outs[1][1]) <= 2e-2


def test_bf16_channels_last_compile_training_step_matches_eager():
    """bf16 autocast + channels_last + torch.compile with the fused op vs the plain eager step (one compile)."""
    torch.manual_seed(0)
    base = _tiny_train_model().to(memory_format=torch.channels_last)
    x = torch.randn(16, 3, 64, 64, device=DEV).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,), device=DEV)
    grads = []
    for fused in (True, False):
        model = copy.deepcopy(base)
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        with K.fused_kernels(fused):
            run = torch.compile(model) if fused else model
            losses = [_step(run, x, y, opt, torch.bfloat16)]
            grads.append(torch.cat([p.grad.flatten().float() for p in model.parameters() if p.grad is not None]))
            losses += [_step(run, x, y, opt, torch.bfloat16) for _ in range(2)]
        assert all(torch.isfinite(torch.tensor(losses)))
    assert rel_err(grads[0], grads[1]) <= 5e-2  # bf16 rounding differs between the two paths


# ---------------------------------------------------------------------------------------------- tuned paths
def test_fast_inference_fused_and_auto(v5_deploy, monkeypatch):
    """With tuning on, as in use (batch 1 fp16: the benchmark then finds these choices in the tuning cache)."""
    from vanillanet.deploy.inference import fast_inference

    monkeypatch.setenv("VANILLANET_KERNEL_TUNING", "1")
    deploy = v5_deploy
    clf = fast_inference(deploy, "cuda", torch.float16, batch_size=1, backend="fused")
    assert clf.backend == "fused" and clf.max_rel_err <= 1e-2
    auto = fast_inference(deploy, "cuda", torch.float16, batch_size=1, backend="auto")
    assert set(auto.timings_ms) == {"cudagraph", "fused"} and auto.max_rel_err <= 1e-2


def test_fused_ada_pool_variant_falls_back_cleanly():
    deploy = _calibrated("vanillanet_13_x1_5_ada_pool", width_mult=1 / 8)
    x = torch.randn(1, 3, 224, 224, device=DEV)
    with torch.no_grad(), K.reference():
        want = deploy(x)
    half = copy.deepcopy(deploy).to(dtype=F16, memory_format=torch.channels_last)
    fn = K.build_fused(half, torch.zeros_like(x, dtype=F16).contiguous(memory_format=torch.channels_last))
    assert rel_err(fn(x.half().contiguous(memory_format=torch.channels_last)).float(), want) <= 1e-2


# ---------------------------------------------------------------------------------------------- candidates
def test_every_activation_candidate_is_correct():
    """Tuning picks by speed only, so every candidate configuration must be right (fp16, the pooled layer)."""
    act, _, _, ref = _ops()
    for c, hw, mean in ((1024, 56, False), (4096, 14, True)):
        x = _cl(2, c, hw, hw, dtype=F16)
        w, b = _taps(c)
        taps = ref.pack_taps(w)
        want = ref.series_act(x, taps, b, 2, mean).float()
        for cfg in act.act_candidates(hw // 2, hw // 2, c, mean, interpreted=False):
            out = act.series_act(x, taps, b, 2, mean, interpreted=False, config=cfg)
            assert rel_err(out.float(), want) <= 1e-2, cfg


@pytest.mark.parametrize("pool", [1, 2])
def test_every_gemm_candidate_is_correct(pool):
    _, gemm, _, ref = _ops()
    for dtype, tol in ((F16, 1e-2), (torch.float32, 1e-5)):  # fp32 has its own (non-spilling) first candidate
        x = _cl(2, 512, 28, 28, dtype=dtype)
        gen = torch.Generator().manual_seed(4)
        w2d = (torch.randn(1024, 512, generator=gen) / 512 ** 0.5).to(DEV, dtype)
        bias = torch.randn(1024, generator=gen).to(DEV)
        want = ref.conv_gemm(x, w2d, bias, 1, pool).float()
        m = 2 * (28 // pool) ** 2
        for cfg in gemm.gemm_candidates(m, 512, 1024, pool, interpreted=False, fp32=dtype == torch.float32):
            out = gemm.conv_gemm(x, w2d, bias, 1, pool, interpreted=False, config=cfg)
            assert rel_err(out.float(), want) <= tol, (dtype, cfg)


def test_every_backward_candidate_is_correct():
    act, _, _, ref = _ops()
    x, g = _cl(2, 512, 56, 56, dtype=BF16), _cl(2, 512, 56, 56, dtype=BF16, seed=5)
    w, _ = _taps(512)
    _, wgx, wgw = _grads(ref.dwconv_relu, x, w, g)
    for cfg in act.bwd_candidates(56, 56, 512, interpreted=False, half=True):
        gx, gtaps = act.dwconv_relu_backward(g, x, ref.pack_taps(w), interpreted=False, config=cfg)
        assert rel_err(gx.float(), wgx.float()) <= 1e-2 and rel_err(ref.unpack_taps(gtaps, 7), wgw) <= 1e-2, cfg


# ---------------------------------------------------------------------------------------------- distributed
# (last: NCCL may be unavailable in a sandboxed runtime, and -x would then stop the run there)
def test_ddp_world_size_one_over_nccl(tmp_path):
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    if not dist.is_nccl_available():
        pytest.skip("NCCL is not available in this build")
    store = dist.FileStore(str(tmp_path / "store"), 1)
    dist.init_process_group("nccl", store=store, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = _tiny_train_model().to(memory_format=torch.channels_last)
        ddp = DistributedDataParallel(model, device_ids=[torch.cuda.current_device()])
        opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
        x = torch.randn(8, 3, 64, 64, device=DEV).contiguous(memory_format=torch.channels_last)
        y = torch.randint(0, 10, (8,), device=DEV)
        before = model.stem1[0].weight.detach().clone()
        loss = _step(ddp, x, y, opt, torch.bfloat16)
        assert torch.isfinite(torch.tensor(loss)) and not torch.equal(before, model.stem1[0].weight)
    finally:
        dist.destroy_process_group()
