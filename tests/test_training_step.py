"""training/step.py: a batch reaches the device (``to_device``), the precision choice (``build_precision``), one
micro-batch's forward and backward (``forward_backward``) and the optimiser update (``optimizer_step``):
accumulating k micro-batches at 1/k equals one step on the whole batch; with the fast decoders' device augmentation,
uint8 loader batches arrive normalised, erased and then mixed, and float batches of the reference path pass as
before."""

from __future__ import annotations

import random

import pytest
import torch
from conftest import make_state
from timm.data import Mixup

from vanillanet.data.device_augment import DeviceAugment
from vanillanet.training.step import (
    BatchPrep,
    DeviceBatch,
    StepParts,
    build_precision,
    forward_backward,
    optimizer_step,
    to_device,
)

CPU = torch.device("cpu")
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def parts_for(state, accum: int = 1, clip_grad: float | None = None, amp: bool = False, lr: float = 0.1) -> StepParts:
    """The step's parts for ``state``, its optimiser at ``lr`` (the schedule starts its warm-up at 0)."""
    for group in state.optimizer.param_groups:
        group["lr"] = lr
    precision = build_precision(amp, "bfloat16", CPU, log=lambda s: None)
    return StepParts(net=state.model, criterion=torch.nn.CrossEntropyLoss(), precision=precision,
                     prep=BatchPrep(CPU), accum=accum, clip_grad=clip_grad)


def batch(n: int = 4, seed: int = 0) -> DeviceBatch:
    gen = torch.Generator().manual_seed(seed)
    return DeviceBatch(torch.randn(n, 3, 32, 32, generator=gen), torch.randint(0, 4, (n,), generator=gen))


def test_to_device_lays_out_and_mixes():
    x, y = torch.randn(2, 3, 8, 8), torch.tensor([0, 1])
    plain = to_device(x, y, BatchPrep(CPU))
    assert torch.equal(plain.images, x) and torch.equal(plain.targets, y)
    mixed = to_device(x, y, BatchPrep(CPU, channels_last=True, mixup=lambda a, b: (a.flip(0), b.float() + 0.5)))
    assert mixed.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(mixed.images, x.flip(0)) and mixed.targets.tolist() == [0.5, 1.5]


def test_fp16_on_the_cpu_falls_back_to_fp32_and_says_so():
    said = []
    p = build_precision(True, "float16", CPU, said.append)
    assert p.autocast == dict(device_type="cpu", dtype=torch.float16, enabled=False) and not p.scaler.is_enabled()
    assert said and "fp16 autocast needs a GPU" in said[0]
    bf16 = build_precision(True, "bfloat16", CPU, said.append)
    assert bf16.autocast["enabled"] and bf16.autocast["dtype"] == torch.bfloat16 and not bf16.scaler.is_enabled()
    assert len(said) == 1


def test_accumulated_micro_batches_equal_one_whole_batch():
    whole, split = make_state(ema=False), make_state(ema=False)
    whole.model.eval(), split.model.eval()  # BN on its running statistics: the batch split changes nothing else
    b = batch(4)
    loss = forward_backward(parts_for(whole), b, sync=True)
    optimizer_step(whole, parts_for(whole), list(whole.model.parameters()))
    parts = parts_for(split, accum=2)
    losses = [forward_backward(parts, DeviceBatch(b.images[i:i + 2], b.targets[i:i + 2]), sync=i == 2)
              for i in (0, 2)]
    optimizer_step(split, parts, list(split.model.parameters()))
    assert loss == pytest.approx(sum(losses) / 2, rel=1e-5)
    assert whole.step == split.step == 1
    for a, b_ in zip(whole.model.parameters(), split.model.parameters()):
        torch.testing.assert_close(a, b_, rtol=1e-4, atol=1e-6)
    assert all(p.grad is None for p in split.model.parameters())  # cleared after the step


def test_clipping_bounds_the_gradient_norm_and_the_ema_follows():
    state = make_state(opt="sgd", lr=1.0, momentum=0.5, weight_decay=0.0)
    parts = parts_for(state, clip_grad=1e-3, lr=1.0)
    before = [p.detach().clone() for p in state.model.parameters()]
    ema_before = [p.detach().clone() for p in state.ema.module.parameters()]
    forward_backward(parts, batch(), sync=True)
    grads = [p.grad.detach().clone() for p in state.model.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert total > 1e-3  # clipping has something to do
    optimizer_step(state, parts, list(state.model.parameters()))
    moved = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.detach() - b)
                                                  for p, b in zip(state.model.parameters(), before)]))
    assert moved == pytest.approx(1.5e-3, rel=1e-3)  # lr 1 x the clipped gradient of norm 1e-3, Nesterov (1 + 0.5)
    assert any(not torch.equal(a, b) for a, b in zip(state.ema.module.parameters(), ema_before))


def test_frozen_modules_stay_in_eval_mode():
    state = make_state(ema=False)
    parts = parts_for(state)
    parts.frozen = (state.model.stem1,)
    parts.train()
    assert state.model.training and not state.model.stem1.training


def test_uint8_batches_are_normalised_erased_then_mixed():
    random.seed(0)
    torch.manual_seed(0)
    x = torch.full((8, 3, 16, 16), 200, dtype=torch.uint8)
    y = torch.arange(8) % 4
    plain = to_device(x, y, BatchPrep(torch.device("cpu"), augment=DeviceAugment(MEAN, STD)))
    expected = (200 / 255 - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)
    assert plain.images.dtype == torch.float32 and torch.allclose(plain.images, expected.expand(8, 3, 16, 16))
    erased = to_device(x, y, BatchPrep(torch.device("cpu"), augment=DeviceAugment(MEAN, STD, reprob=1.0)))
    assert all(not torch.allclose(erased.images[i], plain.images[i]) for i in range(8))  # every sample erased
    mixup = Mixup(mixup_alpha=0.8, cutmix_alpha=0.0, num_classes=4, label_smoothing=0.0)
    mixed = to_device(x, y, BatchPrep(torch.device("cpu"), True, mixup, DeviceAugment(MEAN, STD)))
    assert mixed.targets.shape == (8, 4) and mixed.images.is_contiguous(memory_format=torch.channels_last)


def test_reference_batches_pass_unchanged():
    x, y = torch.randn(4, 3, 8, 8), torch.arange(4)
    for augment in (None, DeviceAugment(MEAN, STD)):
        batch = to_device(x, y, BatchPrep(torch.device("cpu"), augment=augment))
        assert torch.equal(batch.images, x) and torch.equal(batch.targets, y)
