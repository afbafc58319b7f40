"""training/builders.py: every part of a run built from the config, each on its own (data, model, optimiser with
its parameter groups, schedule, loss, the parts of a step), and the settings that must fit the built model."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build_variant, built_run, tiny_config

from vanillanet.training.builders import build_loss, build_optimizer, build_scheduler, freeze, scaled_lr
from vanillanet.training.config import MixingConfig, OptimConfig
from vanillanet.util.errors import ConfigError

pytestmark = pytest.mark.usefixtures("one_thread")


def test_build_run_wires_the_tiny_config(tmp_path):
    state, run, said = built_run(tmp_path)
    data = run.data
    assert (data.micro_per_epoch, data.steps_per_epoch, run.eff_batch) == (4, 4, 4)
    assert len(data.classes) == 10 and data.preprocess.img_size == 32
    assert run.arch["name"] == "vanillanet_5" and run.arch["kwargs"]["width_mult"] == 0.0625
    assert state.ema is not None and state.step == 0 and run.parts.accum == 1
    assert run.parts.prep.mixup is not None  # the recipe's mixup/cutmix
    assert type(state.optimizer).__name__ == "Lamb"
    assert run.deep.enabled and run.checkpoints.meta["class_names"] == data.classes
    assert any("lr" in line for line in said)  # the lr scaled to the effective batch is reported


def test_accumulation_and_frozen_stages(tmp_path):
    state, run, _ = built_run(tmp_path, "grad_accum_steps=2", "freeze_stages=1", batch_size=2)
    assert (run.data.micro_per_epoch, run.data.steps_per_epoch, run.eff_batch) == (8, 4, 4)
    assert run.parts.frozen and all(not p.requires_grad for m in run.parts.frozen for p in m.parameters())


def test_lr_follows_the_effective_batch():
    optim = OptimConfig(lr=4e-3, lr_base_size=1024)
    assert scaled_lr(optim, 256)[0] == pytest.approx(2e-3)  # sqrt rule
    assert scaled_lr(OptimConfig(lr=4e-3, lr_base_scale="linear"), 256)[0] == pytest.approx(1e-3)
    assert scaled_lr(OptimConfig(lr=4e-3, lr_base_scale="none"), 256)[0] == pytest.approx(4e-3)


def test_no_weight_decay_on_biases_and_norms():
    model = build_variant("vanillanet_5", num_classes=4)
    opt = build_optimizer(model, OptimConfig(opt="adamw", weight_decay=0.1), 1e-3)
    by_decay = {g["weight_decay"]: g["params"] for g in opt.param_groups}
    assert set(by_decay) == {0.0, 0.1}
    assert all(p.ndim <= 1 for p in by_decay[0.0]) and all(p.ndim > 1 for p in by_decay[0.1])


def test_schedule_warms_up_then_follows_the_cosine():
    model = torch.nn.Linear(2, 2)
    optim = OptimConfig(opt="sgd", lr=1.0, warmup_epochs=1, min_lr=0.0, warmup_lr=0.0)
    opt = build_optimizer(model, optim, 1.0)
    sched = build_scheduler(opt, optim, steps_per_epoch=10, epochs=3)
    lrs = []
    for step in range(31):
        sched.step_update(step)
        lrs.append(opt.param_groups[0]["lr"])
    assert lrs[0] == 0.0 and lrs[5] == pytest.approx(0.5) and lrs[10] == pytest.approx(1.0)
    assert lrs[20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 20)), abs=1e-6)
    assert lrs[30] == pytest.approx(0.0, abs=1e-6)


def test_loss_choice():
    mixup, bce = build_loss(MixingConfig(mixup=0.8, cutmix=1.0, bce_loss=True), 10, 8)
    assert mixup is not None and type(bce).__name__ == "BinaryCrossEntropy"
    none, ce = build_loss(MixingConfig(mixup=0.0, cutmix=0.0, bce_loss=False, smoothing=0.0), 10, 8)
    assert none is None and isinstance(ce, torch.nn.CrossEntropyLoss)
    with pytest.raises(ConfigError, match="mixup/cutmix need an even batch size, got 7"):
        build_loss(MixingConfig(mixup=0.8), 10, 7)


def test_freeze_keeps_the_stem_fixed():
    model = build_variant("vanillanet_5")
    frozen = freeze(model, 1)
    assert frozen and all(not p.requires_grad for m in frozen for p in m.parameters())
    assert all(p.requires_grad for p in model.cls2.parameters())
    assert freeze(build_variant("vanillanet_5"), 0) == []


def test_layer_decay_layers_must_match_the_blocks(tmp_path):
    with pytest.raises(ConfigError, match="layer_decay_layers is 7 but vanillanet_5 has 3 blocks; set it to 3"):
        built_run(tmp_path, "layer_decay=0.8", "layer_decay_layers=7")
    assert tiny_config(tmp_path).optim.layer_decay is None
