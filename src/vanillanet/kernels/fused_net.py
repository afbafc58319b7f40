"""``build_fused``: a deploy-form VanillaNet run by the fused kernels.

``FusedDeployNet`` walks the deploy model (stem, stages, cls), repacks its weights once for the kernels and runs:

- stem: the 4x4 stride-4 conv as a patchify GEMM (``conv_gemm`` with PATCH = 4) or, for the ada_pool variant's
  overlapping stride-3 padded stem (and whenever it measures faster), cuDNN's conv; then the fused activation;
- each block, by one of three plans, chosen per block shape by timing all of them on the spot (CUDA):
  ``fused-pool`` = GEMM with bias and the 2x2 max-pool in its epilogue (a quarter of the output written), then the
  activation kernel; ``gemm`` = Triton GEMM + bias, then the activation kernel doing pool + ReLU + conv + bias;
  ``linear`` = cuBLAS(Lt) GEMM with bias (``F.linear`` on the NHWC view), then the same activation kernel;
  adaptive max-pools (ada_pool variant) run as torch ops between the GEMM and the activation;
- head: the last activation also averages its map (one tile per image) and the classifier is ``F.linear``.

On CUDA the whole forward is then captured in a CUDA graph for the example's shape. Under Triton's interpreter
(CPU tensors) the first plan is used and nothing is captured: that is how the tests check it without a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..util.cudagraph import capture
from ..util.errors import ConversionError, first_line
from . import act, autotune, ops
from .references import pack_taps

__all__ = ["BLOCK_PLANS", "STEM_PLANS", "FusedDeployNet", "build_fused"]

BLOCK_PLANS = ("fused-pool", "gemm", "linear")
STEM_PLANS = ("patch", "conv")
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


@dataclass
class _Act:
    """A deploy SeriesActivation: taps [k*k, C] fp32 and bias fp32."""

    taps: torch.Tensor
    bias: torch.Tensor

    @classmethod
    def of(cls, module: nn.Module, where: str) -> _Act:
        weight, bias = getattr(module, "weight", None), getattr(module, "bias", None)
        if not getattr(module, "deploy", False) or weight is None or bias is None or weight.dim() != 4:
            raise ConversionError(f"{where} is not a deploy-form series activation; convert the model with "
                                  "reparameterize_model(model) first")
        return cls(pack_taps(weight), bias.detach().float().contiguous())

    def __call__(self, z: torch.Tensor, pool: int = 1, mean: bool = False, relu: bool = True) -> torch.Tensor:
        return ops.series_act(z, self.taps, self.bias, pool, mean, relu)


@dataclass
class _Block:
    """A deploy Block: 1x1 conv as [Cout, Cin] weights (dtype) + bias (fp32 and dtype), its pool, its act."""

    w2d: torch.Tensor
    bias32: torch.Tensor
    bias: torch.Tensor
    pool: int  # max-pool kernel = stride (1 = none); 0 = run ``pool_module`` (adaptive or unusual pools)
    pool_module: nn.Module | None
    act: _Act

    @classmethod
    def of(cls, block: nn.Module, i: int, dtype: torch.dtype) -> _Block:
        conv = getattr(block, "conv", None)
        if not getattr(block, "deploy", False) or not isinstance(conv, nn.Conv2d) or conv.kernel_size != (1, 1):
            raise ConversionError(f"stages.{i} is not a deploy-form block (one 1x1 conv); convert the model with "
                                  "reparameterize_model(model) first")
        w = conv.weight.detach()
        b = conv.bias.detach() if conv.bias is not None else torch.zeros(w.shape[0], device=w.device)
        pool, module = _pool_kind(block.pool)
        return cls(w.reshape(w.shape[0], w.shape[1]).to(dtype).contiguous(), b.float().contiguous(),
                   b.to(dtype).contiguous(), pool, module, _Act.of(block.act, f"stages.{i}.act"))

    def plans(self) -> tuple[str, ...]:
        """Plans that apply, the default (used untimed) first."""
        return BLOCK_PLANS if self.pool == 2 else BLOCK_PLANS[1:]

    def __call__(self, x: torch.Tensor, plan: str, last: bool) -> torch.Tensor:
        # The Triton GEMMs apply the activation's ReLU in their epilogue (it commutes with max-pooling), so the
        # activation kernel skips it; cuBLAS's output still needs it.
        if plan == "fused-pool":
            z, pool = ops.conv_gemm(x, self.w2d, self.bias32, 1, 2, True), 1
        elif plan == "gemm":
            z, pool = ops.conv_gemm(x, self.w2d, self.bias32, 1, 1, True), self.pool
        else:
            z, pool = _linear_nhwc(x, self.w2d, self.bias), self.pool
        if pool == 0:
            z, pool = self.pool_module(z).contiguous(memory_format=torch.channels_last), 1
        h, w = z.shape[2] // pool, z.shape[3] // pool
        return self.act(z, pool, mean=last and act.mean_fits(h, w), relu=plan == "linear")


def _pool_kind(pool: nn.Module) -> tuple[int, nn.Module | None]:
    """(s, None) for no pool (s = 1) or a plain s x s max-pool; (0, module) for anything else (run by torch)."""
    if isinstance(pool, nn.Identity):
        return 1, None
    if isinstance(pool, nn.MaxPool2d) and not isinstance(pool, nn.AdaptiveMaxPool2d):
        k, s = pool.kernel_size, pool.stride
        if (isinstance(k, int) and k == s and pool.padding == 0 and pool.dilation == 1 and not pool.ceil_mode
                and not pool.return_indices):
            return k, None
    return 0, pool


def _linear_nhwc(x: torch.Tensor, w2d: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """1x1 conv of a channels_last map through ``F.linear`` (cuBLASLt with the bias in its epilogue)."""
    n, c, h, w = x.shape
    rows = x.permute(0, 2, 3, 1).reshape(n * h * w, c)
    return F.linear(rows, w2d, bias).view(n, h, w, -1).permute(0, 3, 1, 2)


class FusedDeployNet:
    """A deploy-form VanillaNet repacked for the fused kernels (for one dtype and device). Call it on a
    channels_last batch; ``plans`` holds the plan used per stage (``stem`` and ``stages.{i}``) after ``tune``."""

    def __init__(self, model: nn.Module, dtype: torch.dtype, plan: str | None = None, stem_plan: str | None = None):
        _check_deploy(model)
        if plan is not None and plan not in BLOCK_PLANS:
            raise ValueError(f"plan must be one of {BLOCK_PLANS}, got {plan!r}")
        if stem_plan is not None and stem_plan not in STEM_PLANS:
            raise ValueError(f"stem_plan must be one of {STEM_PLANS}, got {stem_plan!r}")
        self.dtype = dtype
        conv = model.stem[0]
        self.stem_w = conv.weight.detach().to(dtype).contiguous(memory_format=torch.channels_last)
        self.stem_b = conv.bias.detach().to(dtype).contiguous()
        self.stem_b32 = conv.bias.detach().float().contiguous()
        self.stem_stride, self.stem_padding = conv.stride, conv.padding
        k = conv.kernel_size
        self.patch = k[0] if (k[0] == k[1] and conv.stride == k and conv.padding == (0, 0) and conv.groups == 1
                              and conv.dilation == (1, 1)) else 0
        self.stem_w2d = conv.weight.detach().permute(0, 2, 3, 1).reshape(conv.out_channels, -1).to(dtype).contiguous()
        self.stem_act = _Act.of(model.stem[1], "stem.1")
        self.blocks = [_Block.of(b, i, dtype) for i, b in enumerate(model.stages)]
        head = model.cls[2]
        self.head_w = self.head_b = None
        if isinstance(head, nn.Conv2d):
            self.head_w = head.weight.detach().reshape(head.out_channels, -1).to(dtype).contiguous()
            self.head_b = head.bias.detach().to(dtype).contiguous()
        self._forced = plan, stem_plan
        self.plans: dict[str, str] = {}

    # ---- stages ---------------------------------------------------------------------------------------------
    def _stem_plans(self) -> tuple[str, ...]:
        forced = self._forced[1]
        if not self.patch:
            return ("conv",)
        return (forced,) if forced else STEM_PLANS

    def _block_plans(self, block: _Block) -> tuple[str, ...]:
        forced = self._forced[0]
        if forced is None:
            return block.plans()
        return (forced,) if forced in block.plans() else ("gemm",)

    def _stem(self, x: torch.Tensor, plan: str, last: bool) -> torch.Tensor:
        if plan == "patch":
            z = ops.conv_gemm(x, self.stem_w2d, self.stem_b32, self.patch, 1, True)
        else:
            z = F.conv2d(x, self.stem_w, self.stem_b, self.stem_stride, self.stem_padding)
            z = z.contiguous(memory_format=torch.channels_last)
        return self.stem_act(z, 1, mean=last and act.mean_fits(z.shape[2], z.shape[3]), relu=plan != "patch")

    def _choose(self, name: str, key: tuple, plans: tuple[str, ...], run: Callable[[str], torch.Tensor],
                device: torch.device) -> str:
        if name not in self.plans:
            self.plans[name] = autotune.pick(autotune.cache_key("plan", *key), list(plans), run, device)
        return self.plans[name]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        n, c, h, w = x.shape
        last = not self.blocks
        plan = self._choose("stem", (n, c, h, w, self.stem_w.shape[0], self.patch, last, self.dtype),
                            self._stem_plans(), lambda p: self._stem(x, p, last), x.device)
        y = self._stem(x, plan, last)
        _check_not_empty(y, x, "the stem")
        for i, block in enumerate(self.blocks):
            last = i == len(self.blocks) - 1
            key = (n, *y.shape[1:], block.w2d.shape[0], block.pool, block.act.taps.shape[0], last, self.dtype)
            plan = self._choose(f"stages.{i}", key, self._block_plans(block),
                                lambda p, b=block, inp=y, la=last: b(inp, p, la), x.device)
            y = block(y, plan, last)
            _check_not_empty(y, x, f"stages.{i}")
        if y.dim() == 4:  # the last map was too large for the fused mean
            y = y.mean((2, 3))
        return F.linear(y, self.head_w, self.head_b) if self.head_w is not None else y


def _check_not_empty(y: torch.Tensor, x: torch.Tensor, where: str) -> None:
    if y.numel() == 0:
        raise ValueError(f"a {x.shape[2]}x{x.shape[3]} input is too small: the map after {where} is empty")


def _check_deploy(model: nn.Module) -> None:
    if not getattr(model, "deploy", False) or not all(hasattr(model, a) for a in ("stem", "stages", "cls")):
        raise ConversionError(f"the fused kernels run the deploy form of a VanillaNet, got a {type(model).__name__} "
                              "in train form (or another model); convert it with reparameterize_model(model) first")
    if model.training:
        raise ConversionError("the fused kernels run inference only; call model.eval() first")
    if not getattr(model, "series_act", True):
        raise ConversionError("the fused kernels run the series activation, and this model has plain ReLUs "
                              "(series_act=False, an ablation): use another backend")


def build_fused(model: nn.Module, example: torch.Tensor, plan: str | None = None,
                stem_plan: str | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
    """See ``vanillanet.kernels.build_fused``. ``plan`` / ``stem_plan`` force one plan (tests); by default each
    stage's plan is timed on CUDA, the first applicable one used under the interpreter."""
    from . import available, interpreted, unavailable_reason

    if not available():
        raise ConversionError(f"{unavailable_reason()}; use another backend")
    _check_deploy(model)
    if example.dim() != 4 or example.dtype not in _DTYPES:
        raise ConversionError(f"the fused kernels take an image batch (N, C, H, W) in float32/16 or bfloat16, got "
                              f"shape {tuple(example.shape)} and {example.dtype}")
    want = "cpu" if interpreted() else "cuda"
    if example.device.type != want:
        raise ConversionError("the fused kernels run on CUDA devices (or on the CPU under TRITON_INTERPRET=1, set "
                              f"before triton is imported); got a {example.device.type} input here")
    with torch.no_grad():
        net = FusedDeployNet(model, example.dtype, plan, stem_plan)
        try:
            net(example)  # tunes on CUDA, checks every stage runs on this shape
        except Exception as err:
            first = first_line(err)
            raise ConversionError(f"the fused kernels cannot run this model on input {tuple(example.shape)} "
                                  f"({first}); use another backend") from err
    if example.device.type != "cuda":
        return torch.no_grad()(net)
    return capture(net, example, warmup=2)
