"""The deploy form's convolutions as one GEMM kernel with bias and max-pool in the epilogue. Reference:
``references.conv_gemm``.

A 1x1 conv on an NHWC map is a GEMM: out[pixel, cout] = sum_cin x[pixel, cin] * W[cout, cin] + b[cout]. The stem's
4x4 stride-4 conv without padding is the same GEMM over non-overlapping patches (PATCH = 4): the K axis runs over
(kh, kw, cin), and A's rows are read straight from the image (no im2col buffer). With POOL = 2 each program
computes the four GEMM rows of every 2x2 window as four accumulators sharing the weight tile and writes only
their maximum plus the bias (max commutes with adding a per-channel constant), i.e. a quarter of the output.

Accumulation is fp32 on tensor cores for fp16/bf16; fp32 inputs use IEEE fp32 products (no TF32), so the fp32
path matches the reference to rounding. Under the interpreter the operands are widened to fp32 first (its bf16
dot is wrong), which changes nothing for fp16/bf16 values.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .autotune import Config

__all__ = ["conv_gemm", "gemm_candidates"]


@triton.jit
def _mma(a, b, acc, PREC: tl.constexpr):
    if PREC == 1:
        acc = tl.dot(a, b, acc, input_precision="ieee")
    elif PREC == 2:
        acc = tl.dot(a.to(tl.float32), b.to(tl.float32), acc)
    else:
        acc = tl.dot(a, b, acc)
    return acc


@triton.jit(do_not_specialize=["M", "H", "W", "HO", "WO"])
def _conv_gemm_kernel(a_ptr, w_ptr, b_ptr, out_ptr, M, H, W, HO, WO, CIN, K, COUT,
                      PATCH: tl.constexpr, POOL: tl.constexpr, BQ: tl.constexpr, BN: tl.constexpr,
                      BK: tl.constexpr, GROUP: tl.constexpr, PREC: tl.constexpr, RELU: tl.constexpr):
    # grouped launch order: GROUP row blocks sweep all column blocks together (A and W tiles stay in L2)
    pid = tl.program_id(0)
    num_m = (M + BQ - 1) // BQ
    num_n = (COUT + BN - 1) // BN
    per_group = GROUP * num_n
    first_m = (pid // per_group) * GROUP
    size_m = tl.minimum(num_m - first_m, GROUP)
    pid_m = first_m + (pid % per_group) % size_m
    pid_n = (pid % per_group) // size_m

    q = pid_m * BQ + tl.arange(0, BQ)  # output pixels (n, ho, wo), after the pool
    qm = q < M
    img = q // (HO * WO)
    r = q % (HO * WO)
    STEP: tl.constexpr = POOL * PATCH
    row = (((img * H + (r // WO) * STEP).to(tl.int64) * W + (r % WO) * STEP) * CIN)[:, None]
    cols = pid_n * BN + tl.arange(0, BN)
    nm = cols < COUT
    acc0 = tl.zeros((BQ, BN), dtype=tl.float32)
    if POOL == 2:
        acc1 = tl.zeros((BQ, BN), dtype=tl.float32)
        acc2 = tl.zeros((BQ, BN), dtype=tl.float32)
        acc3 = tl.zeros((BQ, BN), dtype=tl.float32)
    right = PATCH * CIN  # from a window's left pixel to its right one, and to the row below
    down = PATCH * W * CIN
    for k0 in range(0, K, BK):
        kk = k0 + tl.arange(0, BK)
        km = kk < K
        if PATCH == 1:
            koff = kk
        else:
            koff = ((kk // (CIN * PATCH)) * W + (kk // CIN) % PATCH) * CIN + kk % CIN
        bt = tl.load(w_ptr + cols[None, :] * K + kk[:, None], mask=km[:, None] & nm[None, :], other=0.0)
        amask = qm[:, None] & km[None, :]
        aptr = a_ptr + row + koff[None, :]
        acc0 = _mma(tl.load(aptr, mask=amask, other=0.0), bt, acc0, PREC)
        if POOL == 2:
            acc1 = _mma(tl.load(aptr + right, mask=amask, other=0.0), bt, acc1, PREC)
            acc2 = _mma(tl.load(aptr + down, mask=amask, other=0.0), bt, acc2, PREC)
            acc3 = _mma(tl.load(aptr + down + right, mask=amask, other=0.0), bt, acc3, PREC)
    if POOL == 2:
        acc0 = tl.maximum(tl.maximum(acc0, acc1), tl.maximum(acc2, acc3))
    acc0 += tl.load(b_ptr + cols, mask=nm, other=0.0)[None, :]
    if RELU:  # the activation's ReLU, done here once instead of per tap there
        acc0 = tl.maximum(acc0, 0.0)
    optr = out_ptr + (q.to(tl.int64) * COUT)[:, None] + cols[None, :]
    tl.store(optr, acc0.to(out_ptr.dtype.element_ty), mask=qm[:, None] & nm[None, :])


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


# (BQ, BN, BK, warps, stages): BQ counts output rows, so a POOL=2 program holds 4 accumulators of BQ x BN (at most
# 128 fp32 registers per thread); BQ = 64 per 4 warps suits Hopper's warpgroup MMA, 16/32 the small maps of batch 1
_CUDA_POOL1 = ((128, 128, 64, 8, 3), (128, 256, 64, 8, 3), (64, 128, 64, 4, 4), (64, 64, 64, 4, 4),
               (32, 64, 128, 4, 4), (16, 64, 128, 4, 4))
# the first entry of each table is the default used untimed (tuning off): it must not spill registers on sm_80 or
# sm_90 (tests/test_kernels_aot_compile.py compiles every entry with Triton's ptxas; 64x64x64 with 4 accumulators
# spilled 52 B on sm_80, so POOL=2 starts with 32x64x64)
_CUDA_POOL2 = ((32, 64, 64, 4, 4), (64, 64, 64, 4, 3), (64, 128, 64, 8, 3), (16, 64, 128, 4, 4))
# fp32 (IEEE products, no tensor cores) holds its operands in registers and needs twice the shared memory per tile:
# the tables above spill there (up to 29 KB for POOL=1 and 53 KB for POOL=2) and their largest tiles need 192 KB
# of shared memory, over sm_80's 163 KB. fp32 starts with a tile that does not spill and takes the tables' tiles
# at half their K depth (the shared memory of the fp16 tile)
_FP32_FIRST = {1: (64, 64, 32, 4, 3), 2: (32, 32, 32, 4, 2)}


def gemm_candidates(m: int, k: int, cout: int, pool: int, interpreted: bool, fp32: bool = False) -> list[Config]:
    """Launch configurations worth timing for an m x cout output with reduction length k (first = default, the
    one used untimed, which does not spill registers; ``fp32`` inputs have their own)."""
    cap_q, cap_n, cap_k = max(16, _pow2(m)), max(16, _pow2(cout)), max(16, _pow2(k))
    if interpreted:
        return [Config.make(BQ=min(cap_q, 64), BN=min(cap_n, 64), BK=min(cap_k, 64), GROUP=8)]
    table = _CUDA_POOL2 if pool == 2 else _CUDA_POOL1
    if fp32:
        table = (_FP32_FIRST[pool], *((bq, bn, bk // 2, warps, stages) for bq, bn, bk, warps, stages in table))
    out: list[Config] = []
    for bq, bn, bk, warps, stages in table:
        cfg = Config.make(num_warps=warps, num_stages=stages, BQ=min(bq, cap_q), BN=min(bn, cap_n),
                          BK=min(bk, cap_k), GROUP=8)
        if cfg not in out:
            out.append(cfg)
    return out


def conv_gemm(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor, patch: int, pool: int, interpreted: bool,
              config: Config | None = None, relu: bool = False) -> torch.Tensor:
    """Launch the GEMM on channels_last ``x`` [N, Cin, H, W]; ``w2d`` [Cout, patch*patch*Cin] in x's dtype (K
    ordered (kh, kw, cin)), ``bias`` [Cout] fp32; ReLU at the end with ``relu``. Returns [N, Cout,
    H//(patch*pool), W//(patch*pool)] channels_last in x's dtype."""
    if pool not in (1, 2):
        raise ValueError(f"the GEMM epilogue pools 2x2 or not at all, got pool={pool}")
    n, cin, h, w = x.shape
    cout, k = w2d.shape
    if k != patch * patch * cin:
        raise ValueError(f"weight K={k} does not match patch {patch} x {patch} x {cin} channels")
    ho, wo = h // (patch * pool), w // (patch * pool)
    out = torch.empty((n, cout, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    m = n * ho * wo
    if m == 0:
        return out
    prec = 2 if interpreted else (1 if x.dtype == torch.float32 else 0)

    def launch(cfg: Config) -> None:
        grid = (triton.cdiv(m, cfg["BQ"]) * triton.cdiv(cout, cfg["BN"]),)
        _conv_gemm_kernel[grid](x, w2d, bias, out, m, h, w, ho, wo, cin, k, cout, PATCH=patch, POOL=pool,
                                PREC=prec, RELU=relu, **cfg.launch_kwargs())

    autotune.launch_tuned(autotune.cache_key("gemm", n, cin, h, w, cout, patch, pool, x.dtype),
                          gemm_candidates(m, k, cout, pool, interpreted, x.dtype == torch.float32), launch,
                          x.device, config)
    return out
