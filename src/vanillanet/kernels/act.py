"""The series-informed activation as one kernel: max-pool + ReLU + depthwise k x k conv + bias (+ global mean),
and the train form's ReLU + depthwise conv with its fused backward. References: ``references.series_act`` and
``references.dwconv_relu``.

Layout: channels_last (NHWC) throughout. A program owns a TH x TW tile of output pixels of one image and BC
channels; each channel vector is contiguous, so every load is a coalesced row of BC values. For each of the k*k
taps it loads the shifted tile (the pool's s*s inputs per pixel, max-reduced), applies ReLU and accumulates
``w[tap, c] * value`` in fp32. Neighbouring taps hit the same cache lines, so the input is read from memory about
once. Zero padding = masked loads returning 0 (ReLU(0) = 0 and max(0, ...) = ReLU(max(...))).

Backward of y = dwconv(ReLU(x), w) with upstream g:
  grad_x[q] = [x[q] > 0] * sum_tap w[tap] * g[q - tap]    (the same stencil on g, taps mirrored)
  grad_w[tap] = sum_p g[p] * ReLU(x)[p + tap]              (per program partial sums, added up in torch)
One kernel computes both from one pass over the tile.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .autotune import Config

__all__ = ["act_candidates", "bwd_candidates", "dwconv_relu_backward", "dwconv_relu_forward", "mean_fits", "series_act"]

MAX_MEAN_PIXELS = 256  # largest map whose global mean is fused into the activation (one tile per image)


@triton.jit
def _tile(TILES, TILES_W, H, W, C: tl.constexpr, TH: tl.constexpr, TW: tl.constexpr, BC: tl.constexpr):
    """The image ``n``, the channels ``c`` (mask ``cm``) and the TH x TW output positions ``h``, ``w`` (mask
    ``pm`` within the H x W map) of this program's tile; channels-last tiles of BC channels."""
    pid = tl.program_id(0)
    n = pid // TILES
    t = pid % TILES
    c = tl.program_id(1) * BC + tl.arange(0, BC)
    if C % BC == 0:
        cm = tl.full((BC,), True, tl.int1)
    else:
        cm = c < C
    p = tl.arange(0, TH * TW)
    h = (t // TILES_W) * TH + p // TW
    w = (t % TILES_W) * TW + p % TW
    pm = (h < H) & (w < W)
    return n, c, cm, h, w, pm


@triton.jit(do_not_specialize=["H", "Ho", "Wo", "TILES_W", "TILES"])
def _act_fwd_kernel(x_ptr, w_ptr, b_ptr, out_ptr, H, Ho, Wo, TILES_W, TILES, C: tl.constexpr, W: tl.constexpr,
                    K: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr, S: tl.constexpr, TH: tl.constexpr,
                    TW: tl.constexpr, BC: tl.constexpr, HAS_BIAS: tl.constexpr, MEAN: tl.constexpr,
                    RELU: tl.constexpr):
    # C and W are compile-time constants (no channel mask when BC divides C; a pool window's loads are constant
    # offsets of one address). Out-of-map taps are masked loads returning 0 (zero padding). The taps are a runtime
    # loop: unrolling them makes the compiler hoist every tap's loads, which needs 150-255 registers (spilling
    # for S = 2) and compiles for a minute; the loop keeps a tap's loads in flight and lets occupancy hide latency.
    n, c, cm, ho, wo, pm = _tile(TILES, TILES_W, Ho, Wo, C, TH, TW, BC)
    P: tl.constexpr = K // 2
    base = x_ptr + (((n * H + ho * S).to(tl.int64) * W + wo * S) * C)[:, None] + c[None, :]
    acc = tl.zeros((TH * TW, BC), dtype=tl.float32)
    for i in range(P - RH, P + RH + 1):
        hi = ho + (i - P)
        row_ok = (pm & (hi >= 0) & (hi < Ho))[:, None] & cm[None, :]
        row = base + (i - P) * (W * S * C)
        wrow = w_ptr + i * (K * C) + c
        for j in range(P - RW, P + RW + 1):
            wi = wo + (j - P)
            ok = row_ok & ((wi >= 0) & (wi < Wo))[:, None]
            ptr = row + (j - P) * S * C
            v = tl.load(ptr, mask=ok, other=0.0)
            for a in tl.static_range(S):
                for b in tl.static_range(S):
                    if a + b > 0:
                        v = tl.maximum(v, tl.load(ptr + (a * W + b) * C, mask=ok, other=0.0))
            if RELU:  # (off when the GEMM before already applied it)
                v = tl.maximum(v, 0.0)
            wt = tl.load(wrow + j * C, mask=cm, other=0.0)
            acc += v.to(tl.float32) * wt[None, :]
    if HAS_BIAS:
        acc += tl.load(b_ptr + c, mask=cm, other=0.0)[None, :]
    if MEAN:  # the tile covers the whole map (TILES == 1)
        total = tl.sum(tl.where(pm[:, None], acc, 0.0), axis=0)
        tl.store(out_ptr + n * C + c, (total / (Ho * Wo)).to(out_ptr.dtype.element_ty), mask=cm)
    else:
        optr = out_ptr + (((n * Ho + ho).to(tl.int64) * Wo + wo) * C)[:, None] + c[None, :]
        tl.store(optr, acc.to(out_ptr.dtype.element_ty), mask=pm[:, None] & cm[None, :])


@triton.jit(do_not_specialize=["H", "TILES_W", "TILES"])
def _dwconv_relu_bwd_kernel(g_ptr, x_ptr, w_ptr, gx_ptr, gw_ptr, H, TILES_W, TILES, C: tl.constexpr,
                            W: tl.constexpr, K: tl.constexpr, RH: tl.constexpr, RW: tl.constexpr,
                            TH: tl.constexpr, TW: tl.constexpr, BC: tl.constexpr):
    n, c, cm, h, w, pm = _tile(TILES, TILES_W, H, W, C, TH, TW, BC)
    pid = tl.program_id(0)  # this tile's row of partial weight gradients
    P: tl.constexpr = K // 2
    offs = (((n * H + h).to(tl.int64) * W + w) * C)[:, None] + c[None, :]
    here = pm[:, None] & cm[None, :]
    g = tl.load(g_ptr + offs, mask=here, other=0.0).to(tl.float32)
    gx = tl.zeros((TH * TW, BC), dtype=tl.float32)
    gw_base = gw_ptr + pid.to(tl.int64) * (K * K * C) + c
    for i in range(P - RH, P + RH + 1):  # runtime loop over rows of taps, as in the forward kernel
        hp = h + (i - P)
        hm = h - (i - P)
        rp = (pm & (hp >= 0) & (hp < H))[:, None] & cm[None, :]
        rm = (pm & (hm >= 0) & (hm < H))[:, None] & cm[None, :]
        x_row = x_ptr + offs + (i - P) * (W * C)
        g_row = g_ptr + offs - (i - P) * (W * C)
        w_row = w_ptr + i * (K * C) + c
        gw_row = gw_base + i * (K * C)
        for j in range(P - RW, P + RW + 1):
            wp = w + (j - P)
            wm = w - (j - P)
            xs = tl.load(x_row + (j - P) * C, mask=rp & ((wp >= 0) & (wp < W))[:, None], other=0.0)
            gs = tl.load(g_row - (j - P) * C, mask=rm & ((wm >= 0) & (wm < W))[:, None], other=0.0)
            wt = tl.load(w_row + j * C, mask=cm, other=0.0)
            gx += gs.to(tl.float32) * wt[None, :]
            tl.store(gw_row + j * C, tl.sum(g * tl.maximum(xs, 0.0).to(tl.float32), axis=0), mask=cm)
    xc = tl.load(x_ptr + offs, mask=here, other=0.0)
    gx = tl.where(xc > 0, gx, 0.0)
    tl.store(gx_ptr + offs, gx.to(gx_ptr.dtype.element_ty), mask=here)


def _pow2(n: int) -> int:
    return triton.next_power_of_2(max(1, int(n)))


def _reach(k: int, size: int) -> int:
    """Taps reach k//2 pixels each way, but on a map of ``size`` pixels only size-1 of them can land inside: the
    others only ever see zero padding and are skipped (e.g. one tap on a 1x1 map)."""
    return min(k // 2, size - 1)


def mean_fits(ho: int, wo: int) -> bool:
    """Whether the global mean of an ho x wo map can be fused into the activation kernel (one tile per image)."""
    return _pow2(ho) * _pow2(wo) <= MAX_MEAN_PIXELS


# (TH, TW, BC, warps): 4-8k fp32 accumulators per program, 32 per thread; the first is the untimed default
_CUDA_TILES = ((8, 8, 64, 4), (8, 16, 64, 8), (16, 16, 32, 8), (4, 8, 128, 4), (8, 8, 32, 4))


def act_candidates(ho: int, wo: int, c: int, mean: bool, interpreted: bool) -> list[Config]:
    """Launch configurations worth timing for an ho x wo x c output (first = default). Under the interpreter one
    large tile per image (its cost is per program, not per element)."""
    bc_max = max(16, _pow2(c))
    if mean:
        th, tw = _pow2(ho), _pow2(wo)
        # 64 channels first: 32 spilled 24 B on sm_90 for a pooled 14x14 map in fp16 (ptxas; the first is untimed)
        bcs = (min(64, bc_max),) if interpreted else tuple(dict.fromkeys(min(b, bc_max) for b in (64, 32, 16)))
        return [Config.make(num_warps=4 if th * tw * b <= 4096 else 8, TH=th, TW=tw, BC=b) for b in bcs]
    if interpreted:
        return [Config.make(TH=min(_pow2(ho), 16), TW=min(_pow2(wo), 16), BC=min(bc_max, 64))]
    out: list[Config] = []
    for th, tw, bc, warps in _CUDA_TILES:
        cfg = Config.make(num_warps=warps, TH=min(th, _pow2(ho)), TW=min(tw, _pow2(wo)), BC=min(bc, bc_max))
        if cfg not in out:
            out.append(cfg)
    return out


def bwd_candidates(h: int, w: int, c: int, interpreted: bool, half: bool) -> list[Config]:
    """The backward kernel's candidates: the forward's tiles; with ``half`` (fp16/bf16) inputs, 8 warps on the
    8x16x64 tile first: the forward's 4-warp default spills there (24-64 B on sm_80 and sm_90, ptxas), fp32 not."""
    cands = act_candidates(h, w, c, False, interpreted)
    if interpreted or not half:
        return cands
    first = Config.make(num_warps=8, TH=min(8, _pow2(h)), TW=min(16, _pow2(w)), BC=min(64, max(16, _pow2(c))))
    return [first, *(cfg for cfg in cands if cfg != first)]


def _grid(n: int, ho: int, wo: int, c: int, cfg: Config) -> tuple[tuple[int, int], int, int]:
    tiles_w = triton.cdiv(wo, cfg["TW"])
    tiles = triton.cdiv(ho, cfg["TH"]) * tiles_w
    return (n * tiles, triton.cdiv(c, cfg["BC"])), tiles_w, tiles


def series_act(x: torch.Tensor, taps: torch.Tensor, bias: torch.Tensor | None, pool: int, mean: bool,
               interpreted: bool, config: Config | None = None, relu: bool = True) -> torch.Tensor:
    """Launch the fused activation on channels_last ``x`` [N, C, H, W]; ``taps`` [k*k, C] fp32, ``bias`` [C] fp32
    or None; ``relu=False`` for inputs that are non-negative already. Returns [N, C, H//pool, W//pool]
    channels_last, or [N, C] with ``mean``, in x's dtype."""
    n, c, h, w = x.shape
    k = int(round(taps.shape[0] ** 0.5))
    ho, wo = h // pool, w // pool
    if mean:
        if not mean_fits(ho, wo):
            raise ValueError(f"a {ho}x{wo} map is too large for the fused mean; pool it separately")
        out = torch.empty((n, c), device=x.device, dtype=x.dtype)
    else:
        out = torch.empty((n, c, ho, wo), device=x.device, dtype=x.dtype, memory_format=torch.channels_last)
    if out.numel() == 0 or ho == 0 or wo == 0:
        return out.zero_()

    def launch(cfg: Config) -> None:
        grid, tiles_w, tiles = _grid(n, ho, wo, c, cfg)
        _act_fwd_kernel[grid](x, taps, taps if bias is None else bias, out, h, ho, wo, tiles_w, tiles, C=c, W=w,
                              K=k, RH=_reach(k, ho), RW=_reach(k, wo), S=pool, HAS_BIAS=bias is not None,
                              MEAN=mean, RELU=relu, **cfg.launch_kwargs())

    autotune.launch_tuned(autotune.cache_key("act", n, c, h, w, k, pool, mean, x.dtype),
                          act_candidates(ho, wo, c, mean, interpreted), launch, x.device, config)
    return out


def dwconv_relu_forward(x: torch.Tensor, taps: torch.Tensor, interpreted: bool,
                        config: Config | None = None) -> torch.Tensor:
    """y = depthwise conv (taps [k*k, C] fp32, padding k//2) of ReLU(x); channels_last, x's dtype."""
    return series_act(x, taps, None, 1, False, interpreted, config)


def dwconv_relu_backward(grad: torch.Tensor, x: torch.Tensor, taps: torch.Tensor, interpreted: bool,
                         config: Config | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(grad_x in x's dtype, channels_last; grad_taps [k*k, C] fp32) of ``dwconv_relu_forward``."""
    n, c, h, w = x.shape
    k = int(round(taps.shape[0] ** 0.5))
    gx = torch.empty_like(x, memory_format=torch.channels_last)
    if x.numel() == 0:
        return gx.zero_(), torch.zeros_like(taps)

    def launch(cfg: Config) -> torch.Tensor:
        # one row of partial weight gradients per program (deterministic, unlike atomics), summed here; larger
        # tiles mean fewer rows, which the tuning sees since the sum is part of what it times
        grid, tiles_w, tiles = _grid(n, h, w, c, cfg)
        skipped = _reach(k, h) < k // 2 or _reach(k, w) < k // 2  # those taps' partial sums stay 0
        part = (torch.zeros if skipped else torch.empty)((grid[0], k * k, c), device=x.device, dtype=torch.float32)
        _dwconv_relu_bwd_kernel[grid](grad, x, taps, gx, part, h, tiles_w, tiles, C=c, W=w, K=k,
                                      RH=_reach(k, h), RW=_reach(k, w), **cfg.launch_kwargs())
        return part.sum(0)

    return gx, autotune.launch_tuned(autotune.cache_key("dwconv_relu_bwd", n, c, h, w, k, x.dtype),
                                     bwd_candidates(h, w, c, interpreted, x.dtype != torch.float32), launch,
                                     x.device, config)
