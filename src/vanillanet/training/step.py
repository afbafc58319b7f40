"""One training step, in the parts a reader looks for: where a batch reaches the device (``to_device``), the
numeric precision (``Precision``), the forward and backward pass of one micro-batch (``forward_backward``) and the
optimiser update that ends a step (``optimizer_step``).

A step is ``grad_accum_steps`` micro-batches: each one is moved and prepared by ``to_device``, its loss scaled by
1/accum and back-propagated (without the DDP all-reduce except on the last micro-batch); then the gradients are
unscaled and clipped, the optimiser and the scaler step, and the EMA follows the weights.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from .state import TrainState

if TYPE_CHECKING:
    from ..data.device_augment import DeviceAugment

__all__ = ["BatchPrep", "DeviceBatch", "Precision", "StepParts", "build_precision", "forward_backward",
           "optimizer_step", "to_device"]


@dataclass(frozen=True)
class DeviceBatch:
    """A training batch on the device, ready for the model: images and (soft, with Mixup/CutMix) targets."""

    images: torch.Tensor
    targets: torch.Tensor


@dataclass(frozen=True)
class BatchPrep:
    """How a batch is placed and prepared: the device, the memory format, the augmentation on the device
    (``data.device_augment.DeviceAugment``: normalising uint8 batches and RandomErasing, for ``--decoder fast`` and
    ``gpu``; None for the reference path, whose workers do both) and the batch-level mixing (timm's ``Mixup`` or
    None). ``images`` places and normalises images only (what validation needs)."""

    device: torch.device
    channels_last: bool = False
    mixup: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None
    augment: DeviceAugment | None = None

    def images(self, x: Any) -> torch.Tensor:
        layout = torch.channels_last if self.channels_last else torch.contiguous_format
        if self.augment is not None:
            return self.augment.place(x, layout)
        return x.to(self.device, non_blocking=True).contiguous(memory_format=layout)


def to_device(images: Any, targets: torch.Tensor, prep: BatchPrep) -> DeviceBatch:
    """The one place a loader batch becomes a device batch: moved (and laid out) as ``prep`` says, normalised and
    erased on the device when the loader sends uint8 (``prep.augment``), then mixed."""
    x, y = prep.images(images), targets.to(prep.device, non_blocking=True)
    if prep.augment is not None:
        x = prep.augment.erase(x)
    if prep.mixup is not None:
        x, y = prep.mixup(x, y)
    return DeviceBatch(x, y)


@dataclass
class Precision:
    """``torch.autocast`` keyword arguments and the gradient scaler (active for float16 only)."""

    autocast: dict[str, Any]
    scaler: torch.amp.GradScaler


def build_precision(amp: bool, amp_dtype: str, device: torch.device, log: Callable[[str], None]) -> Precision:
    """Autocast settings and the gradient scaler (fp16 only); fp16 autocast on the CPU falls back to fp32."""
    dtype = torch.float16 if amp_dtype == "float16" else torch.bfloat16
    if amp and dtype == torch.float16 and device.type == "cpu":
        log("fp16 autocast needs a GPU: training in float32 on the CPU (--amp-dtype bfloat16 for CPU mixed precision)")
        amp = False
    return Precision(dict(device_type=device.type, dtype=dtype, enabled=amp),
                     torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16))


@dataclass
class StepParts:
    """What a step uses besides the ``TrainState``: ``net`` (the model, or its DDP / compiled wrapper; ``ddp`` is
    the DDP module or None), the loss, the precision, how batches are prepared, the accumulation, the modules kept
    frozen (in eval mode) and the gradient clipping (``clip_grad`` None: off; timm's norm/value/agc modes)."""

    net: nn.Module
    criterion: nn.Module
    precision: Precision
    prep: BatchPrep
    accum: int = 1
    ddp: Any = None
    frozen: Sequence[nn.Module] = ()
    clip_grad: float | None = None
    clip_mode: str = "norm"

    def train(self) -> None:
        """Training mode, except for the frozen stages (their BN statistics stay as loaded)."""
        self.net.train()
        for m in self.frozen:
            m.eval()


def forward_backward(parts: StepParts, batch: DeviceBatch, sync: bool) -> float:
    """Loss of one micro-batch, back-propagated at 1/accum scale; ``sync``: the last micro-batch of the step (only
    then do DDP processes all-reduce the gradients). Returns the unscaled loss."""
    no_sync = parts.ddp.no_sync() if parts.ddp is not None and not sync else contextlib.nullcontext()
    with no_sync:
        with torch.autocast(**parts.precision.autocast):
            loss = parts.criterion(parts.net(batch.images), batch.targets)
        parts.precision.scaler.scale(loss / parts.accum).backward()
    return float(loss.detach())


def optimizer_step(state: TrainState, parts: StepParts, params: Sequence[torch.Tensor]) -> None:
    """End the step: unscale and clip the gradients of ``params``, step the optimiser and the scaler, clear the
    gradients, count the step and update the EMA."""
    from timm.utils import dispatch_clip_grad

    scaler = parts.precision.scaler
    if parts.clip_grad is not None:
        scaler.unscale_(state.optimizer)
        dispatch_clip_grad(params, parts.clip_grad, mode=parts.clip_mode)
    scaler.step(state.optimizer)
    scaler.update()
    state.optimizer.zero_grad(set_to_none=True)
    state.step += 1
    if state.ema is not None:
        state.ema.update(state.model, step=state.step)
