"""Training: ``vanillanet train`` / ``train(cfg)``, one process or DDP under torchrun, with deep training.

The run is split by phase: builder functions that each take their slice of the config (``build_data``,
``build_model``, ``build_optimizer``, ``build_scheduler``, ``build_loss``, ``build_precision``), a ``TrainState``
(``training/state.py``), ``train_one_epoch``, the same ``evaluate()`` that ``vanillanet eval`` uses, the
``DeepTraining`` object that owns act_learn (``training/deep_training.py``), the ``RunFolder`` that owns what is
written (``training/run_folder.py``) and ``finish_run``, which converts the evaluated model to the deploy form, checks
that every validation prediction is unchanged and writes the outputs. ``train`` holds them together.

The parts are timm's (Mixup/CutMix with label smoothing, BCE, LAMB/AdamW with layer decay, per-iteration cosine
schedule, ModelEmaV3). Resuming is exact: batch order and augmentation depend only on (seed, epoch, batch), and
every other RNG state travels in the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import yaml
from torch import nn

from .data.transforms import Preprocess
from .training.config import (
    ArchConfig,
    InputConfig,
    MixingConfig,
    OptimConfig,
    SpeedConfig,
    TrainConfig,
    add_config_arguments,
    config_from_args,
    config_to_dict,
    list_recipes,
    validate,
)
from .training.deep_training import DeepTraining
from .training.run_folder import RunFolder
from .training.runtime import DistInfo, StopSignal, ignore_stop_signals, setup_distributed
from .training.state import TrainState, get_rng_state, set_rng_state
from .util import validation
from .util.errors import CheckpointError, ConfigError, NonFiniteLossError, OutputError
from .util.integrity import describe, nonfinite, state_hash, unsound

__all__ = ["NonFiniteLossError", "TrainConfig", "add_cli", "build_optimizer", "state_hash", "train"]

StepCallback = Callable[[dict[str, Any]], None]


# ---- builders: each takes its slice of the config -----------------------------------------------------------------
@dataclass
class Data:
    """The loaders and what they imply for the rest of the run."""

    train_loader: Any
    val_loader: Any
    classes: list[str]
    preprocess: Preprocess
    micro_per_epoch: int  # micro-batches per epoch (a multiple of the accumulation steps)
    steps_per_epoch: int  # optimiser steps per epoch


def build_data(inputs: InputConfig, arch: ArchConfig, batch_size: int, grad_accum: int, val_batch: int | None,
               seed: int, dist: DistInfo, device: torch.device) -> Data:
    """Datasets (train with augmentation, val with the eval transform) and their deterministic loaders; with
    ``inputs.train_subset`` a fixed random subset of the training set (the same for every seed)."""
    from .data.datasets import take_subset
    from .data.loaders import build_loader
    from .data.sources import build_dataset
    from .data.transforms import build_transform, resolve_preprocess

    if not inputs.data:
        raise ConfigError("no dataset: pass --data PATH|fashion-mnist|digits|synthetic (or a recipe that sets it)")
    pre = resolve_preprocess(data=inputs.data, img_size=inputs.img_size, crop_pct=inputs.crop_pct, mean=inputs.mean,
                             std=inputs.std, interpolation=inputs.interpolation)
    train_tf = build_transform(True, pre.img_size, in_chans=arch.in_chans, mean=pre.mean, std=pre.std,
                               crop_pct=pre.crop_pct, interpolation=pre.interpolation, augment=inputs.augment,
                               auto_augment=inputs.aa, reprob=inputs.reprob, remode=inputs.remode, hflip=inputs.hflip,
                               scale=inputs.scale, ratio=inputs.ratio, color_jitter=inputs.color_jitter,
                               padding=inputs.padding)
    common = dict(in_chans=arch.in_chans, img_size=pre.img_size, num_classes=arch.num_classes, **inputs.data_options)
    train_ds = build_dataset(inputs.data, "train", train_tf, **common)
    if inputs.train_subset:
        train_ds = take_subset(train_ds, inputs.train_subset)
    val_ds = build_dataset(inputs.data, "val", pre.transform(arch.in_chans), **common)
    classes = list(train_ds.classes)
    if arch.num_classes is not None and arch.num_classes != len(classes):
        raise ConfigError(f"num_classes is {arch.num_classes} but {inputs.data} has {len(classes)} classes; drop "
                          "--num-classes (the head follows the dataset) or pick the matching dataset")
    per_step = batch_size * grad_accum * dist.world_size
    if len(train_ds) < per_step:
        raise ConfigError(f"the training set has {len(train_ds)} images, fewer than one step needs ({per_step} = "
                          "batch x accumulation x processes); lower --batch-size")
    workers = dict(num_workers=inputs.workers, distributed=dist.enabled, seed=seed,
                   pin_memory=inputs.pin_mem and device.type == "cuda")
    train_loader = build_loader(train_ds, batch_size, is_training=True, **workers)
    val_loader = build_loader(val_ds, val_batch or 2 * batch_size, is_training=False, **workers)
    for loader in (train_loader, val_loader):
        loader.worker_init_fn = ignore_stop_signals  # Ctrl-C reaches the whole process group
    micro = train_loader.batch_sampler.batches_per_epoch() // grad_accum * grad_accum
    return Data(train_loader, val_loader, classes, pre, micro, micro // grad_accum)


def _freeze(model: nn.Module, stages: int) -> list[nn.Module]:
    """Freeze the first ``stages`` stages (the stem counts as the first); returns the frozen modules."""
    if stages <= 0:
        return []
    stem = [model.stem1, model.stem2] if model.deep_training else [model.stem]  # deep_training=False: one module
    units: list[list[nn.Module]] = [stem, *[[b] for b in model.stages]]
    if stages > len(units):
        raise ConfigError(f"freeze_stages is {stages} but the model has {len(units)} stages (stem + "
                          f"{len(units) - 1} blocks); use at most {len(units) - 1} to leave something to train")
    frozen = [m for unit in units[:stages] for m in unit]
    for m in frozen:
        m.requires_grad_(False)
    return frozen


def build_model(arch: ArchConfig, num_classes: int, log: Callable[[str], None]) -> tuple[nn.Module, dict[str, Any]]:
    """The train-form model (fine-tuned from ``arch.pretrained`` if given) and its architecture record, which a
    resumed run must match. An ablation baseline (``baselines.BASELINES``) trains alike, without deep training."""
    from .model.ablation import MODEL_OPTIONS
    from .model.baselines import create_baseline, is_baseline
    from .model.registry import create_model
    from .model.weight_loading import load_weights

    # the ablation options enter the record only when set, so that runs from before them still resume
    options = {k: getattr(arch, k) for k, default in MODEL_OPTIONS.items() if getattr(arch, k) != default}
    if is_baseline(arch.model):
        given = [*options, *(["pretrained"] if arch.pretrained else []),
                 *(["freeze_stages"] if arch.freeze_stages else [])]
        if given:
            raise ConfigError(f"{arch.model} is a baseline: the setting(s) {', '.join(given)} apply to VanillaNet "
                              "models only; drop them for this model")
        model, kwargs = create_baseline(arch.model, num_classes=num_classes, in_chans=arch.in_chans,
                                        drop_rate=arch.drop_rate, width_mult=arch.width_mult)
        return model, dict(name=arch.model, kwargs=kwargs)
    record = dict(name=arch.model, kwargs=dict(num_classes=num_classes, in_chans=arch.in_chans,
                                               drop_rate=arch.drop_rate, act_num=arch.act_num,
                                               width_mult=arch.width_mult, **options))
    model = create_model(arch.model, allow_large=arch.allow_large, **record["kwargs"])
    if arch.pretrained:
        report = load_weights(model, arch.pretrained, use_ema=True)
        log(f"fine-tuning from {arch.pretrained} ({report.source or 'weights'}"
            f"{', new ' + str(num_classes) + '-class head' if report.head_reset else ''})")
    return model, record


def build_optimizer(model: nn.Module, optim: OptimConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimiser with the recipe's parameter groups: no weight decay on 1-D parameters (biases, BN) while
    the activations' depthwise weights are decayed; with ``layer_decay`` r and L blocks, lr scales r^(L+1) for the
    stem, r^(L-i) for block i and 1 for the head (timm's grouping through ``model.group_matcher``)."""
    from timm.optim import create_optimizer_v2, list_optimizers

    name = optim.opt.lower()
    if name not in list_optimizers() and name.split("_")[-1] not in list_optimizers():
        raise ConfigError(f"unknown optimiser {optim.opt!r}; use lamb, adamw, sgd or another timm optimiser name")
    extra: dict[str, Any] = {}
    if name not in ("sgd", "momentum", "nesterov"):
        extra = dict(eps=optim.opt_eps, betas=tuple(optim.opt_betas))
    return create_optimizer_v2(model, opt=optim.opt, lr=lr, weight_decay=optim.weight_decay,
                               momentum=optim.momentum, layer_decay=optim.layer_decay, **extra)


def scaled_lr(optim: OptimConfig, eff_batch: int) -> tuple[float, str | None]:
    """The peak lr for an effective batch (the authors' sqrt rule by default) and a line announcing a change."""
    if optim.lr_base_scale == "none" or eff_batch == optim.lr_base_size:
        return optim.lr, None
    factor = eff_batch / optim.lr_base_size
    factor = math.sqrt(factor) if optim.lr_base_scale == "sqrt" else factor
    return optim.lr * factor, (f"lr {optim.lr:g} is for a batch of {optim.lr_base_size}; effective batch {eff_batch} "
                               f"-> lr {optim.lr * factor:.4g} ({optim.lr_base_scale} scaling; --set "
                               "lr_base_scale=none to disable)")


def build_scheduler(optimizer: torch.optim.Optimizer, optim: OptimConfig, steps_per_epoch: int, epochs: int) -> Any:
    """Per-iteration cosine schedule with a linear warm-up (timm's CosineLRScheduler)."""
    from timm.scheduler import CosineLRScheduler

    warmup = round(optim.warmup_epochs * steps_per_epoch)
    return CosineLRScheduler(optimizer, t_initial=max(1, steps_per_epoch * epochs - warmup), lr_min=optim.min_lr,
                             warmup_t=warmup, warmup_lr_init=optim.warmup_lr, warmup_prefix=True, t_in_epochs=False)


def build_loss(mixing: MixingConfig, num_classes: int, batch_size: int) -> tuple[Any, nn.Module]:
    """(Mixup/CutMix or None, criterion): BCE or soft-target CE with mixing, label smoothing inside the targets."""
    from timm.data import Mixup
    from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy

    if mixing.mixup > 0 or mixing.cutmix > 0 or mixing.cutmix_minmax is not None:
        if batch_size % 2:
            raise ConfigError(f"mixup/cutmix need an even batch size, got {batch_size}")
        mixup = Mixup(mixup_alpha=mixing.mixup, cutmix_alpha=mixing.cutmix, cutmix_minmax=mixing.cutmix_minmax,
                      prob=mixing.mixup_prob, switch_prob=mixing.mixup_switch_prob, mode=mixing.mixup_mode,
                      label_smoothing=mixing.smoothing, num_classes=num_classes)
        return mixup, (BinaryCrossEntropy(target_threshold=mixing.bce_target_thresh) if mixing.bce_loss
                       else SoftTargetCrossEntropy())
    if mixing.bce_loss:
        return None, BinaryCrossEntropy(smoothing=mixing.smoothing, target_threshold=mixing.bce_target_thresh)
    return None, LabelSmoothingCrossEntropy(mixing.smoothing) if mixing.smoothing else nn.CrossEntropyLoss()


@dataclass
class Precision:
    autocast: dict[str, Any]
    scaler: torch.amp.GradScaler


def build_precision(speed: SpeedConfig, device: torch.device, log: Callable[[str], None]) -> Precision:
    """Autocast settings and the gradient scaler (fp16 only); fp16 autocast on the CPU falls back to fp32."""
    dtype = torch.float16 if speed.amp_dtype == "float16" else torch.bfloat16
    amp = speed.amp
    if amp and dtype == torch.float16 and device.type == "cpu":
        log("fp16 autocast needs a GPU: training in float32 on the CPU (--amp-dtype bfloat16 for CPU mixed precision)")
        amp = False
    return Precision(dict(device_type=device.type, dtype=dtype, enabled=amp),
                     torch.amp.GradScaler(device.type, enabled=amp and dtype == torch.float16))


# ---- one epoch ---------------------------------------------------------------------------------------------------
class Log:
    """Lines for the main process: through the progress bar while one is shown, else printed."""

    def __init__(self, enabled: bool):
        self.enabled, self.bar = enabled, None

    def __call__(self, msg: str) -> None:
        if not self.enabled:
            return
        if self.bar is not None:
            self.bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)


@dataclass
class Loop:
    """What the loop needs besides the ``TrainState``: the built parts and the run's settings."""

    cfg: TrainConfig
    dist: DistInfo
    device: torch.device
    folder: RunFolder
    log: Log
    data: Data
    net: nn.Module  # the model as called (DDP / compiled wrapper)
    ddp: Any
    mixup: Any
    criterion: nn.Module
    precision: Precision
    deep: DeepTraining
    frozen: list[nn.Module]
    eff_batch: int
    arch: dict[str, Any]
    t0: float
    on_step: StepCallback | None = None

    def to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def agree(self, *flags: bool) -> tuple[bool, ...]:
        """Every process stops at the same step: the flags are OR-ed across processes."""
        if not self.dist.enabled:
            return flags
        t = torch.tensor([float(f) for f in flags], device=self.device)
        tdist.all_reduce(t, op=tdist.ReduceOp.MAX)
        return tuple(bool(v) for v in t)

    def metrics(self, row: dict[str, Any]) -> None:
        if self.dist.main:
            self.folder.append_metrics(row)

    def seconds(self, state: TrainState) -> float:
        return state.seconds + time.perf_counter() - self.t0


def save_checkpoint(state: TrainState, loop: Loop, epoch: int, batch: int, epoch_done: bool = False) -> Path | None:
    """Checkpoint after ``batch`` micro-batches of ``epoch`` (rank 0 writes; every rank gives its RNG state);
    ``epoch_done``: the epoch's evaluation is included (a resume starts the next epoch, else it evaluates first). An
    unsound state (``integrity.unsound`` weights or EMA, a non-finite optimizer state) is never written: training
    stops naming the cause and the last good checkpoint. A failed write (disk full) stops it the same way."""
    rng = get_rng_state()
    rngs = [rng]
    if loop.dist.enabled:
        rngs = [None] * loop.dist.world_size
        tdist.all_gather_object(rngs, rng)
    if not loop.dist.main:
        return None
    ckpt = state.to_checkpoint(epoch, batch, rngs, loop.seconds(state), epoch_done=epoch_done,
                               config=config_to_dict(loop.cfg), class_names=loop.data.classes, arch=loop.arch,
                               preprocess=loop.data.preprocess.as_meta())
    check_sound(state, loop, f"by step {state.step}", ckpt)
    try:
        state.last_checkpoint = loop.folder.save_checkpoint(ckpt, state.step, loop.cfg.keep_last,
                                                            protect=state.good_checkpoint)
    except OutputError as err:
        last = state.good_checkpoint or state.last_checkpoint
        how = (f"continue from {Path(last).name} with --resume auto" if last
               else "no checkpoint was written yet: start again with another --output (or after deleting this one)")
        raise OutputError(f"{err}; training stopped at step {state.step}: {how}") from err
    return state.last_checkpoint


def check_sound(state: TrainState, loop: Loop, when: str, ckpt: dict[str, Any] | None = None) -> None:
    """NonFiniteLossError naming what became unusable (the weights, the EMA, whose decay is then the likely cause,
    or the optimizer state) and the last good checkpoint."""
    model_sd = ckpt["model"] if ckpt else state.model.state_dict()
    ema_sd = (ckpt.get("model_ema") if ckpt else state.ema.module.state_dict() if state.ema is not None else None)
    good = f"last good checkpoint: {state.good_checkpoint or 'none'}"
    bad = unsound(("model", model_sd))
    if bad:
        raise NonFiniteLossError(
            f"the weights became unusable {when} ({describe(bad)}); not saved ({good}); lower the lr (now "
            f"{state.lr():.3g}) and continue with --resume auto, or lengthen the warm-up")
    bad = unsound(("model_ema", ema_sd or {}))
    if bad:
        raise NonFiniteLossError(
            f"the EMA weights became unusable {when} ({describe(bad)}) while the model's are fine: check "
            f"model_ema_decay ({loop.cfg.model_ema_decay:g}); not saved ({good}); continue with --resume auto and "
            "another --model-ema-decay, or --no-model-ema")
    bad = nonfinite(("optimizer", ckpt["optimizer"]["state"] if ckpt else state.optimizer.state_dict()["state"]))
    if bad:
        raise NonFiniteLossError(
            f"the optimizer state became non-finite {when} ({describe(bad)}); not saved ({good}); lower the lr "
            f"(now {state.lr():.3g}) and continue with --resume auto")


def train_one_epoch(state: TrainState, loop: Loop, epoch: int, start_batch: int,
                    stop: StopSignal) -> dict[str, float] | None:
    """Run one epoch from micro-batch ``start_batch``; the epoch's mean loss (the part before a resume included)
    and img/s, or None when stopped by a signal (checkpoint written)."""
    from timm.utils import dispatch_clip_grad
    from tqdm import tqdm

    from .data.loaders import set_epoch

    cfg, accum, data = loop.cfg, loop.cfg.grad_accum_steps, loop.data
    set_epoch(data.train_loader, epoch, start_batch)
    loop.deep.start_epoch(epoch)
    loop.net.train()
    for m in loop.frozen:
        m.eval()
    params = [p for p in state.model.parameters() if p.requires_grad]
    show = loop.dist.main and cfg.progress
    loop.log.bar = tqdm(total=data.steps_per_epoch, initial=start_batch // accum, leave=False, dynamic_ncols=True,
                        desc=f"epoch {epoch + 1}/{cfg.epochs}", disable=None if show else True)
    steps, t_start = 0, time.perf_counter()
    micro_loss: list[float] = []
    try:
        for i, (x, y) in enumerate(data.train_loader, start=start_batch):
            if i >= data.micro_per_epoch:
                break
            loop.deep.before_step(state.step)
            x, y = loop.to_device(x), y.to(loop.device, non_blocking=True)
            if loop.mixup is not None:
                x, y = loop.mixup(x, y)
            boundary = (i + 1) % accum == 0
            no_sync = loop.ddp.no_sync() if loop.ddp is not None and not boundary else contextlib.nullcontext()
            with no_sync:
                with torch.autocast(**loop.precision.autocast):
                    loss = loop.criterion(loop.net(x), y)
                loop.precision.scaler.scale(loss / accum).backward()
            micro_loss.append(float(loss.detach()))
            if not boundary:
                continue
            bad_loss, stop_now = loop.agree(not all(map(math.isfinite, micro_loss)), stop.requested)
            if bad_loss:
                value = next((v for v in micro_loss if not math.isfinite(v)), float("nan"))
                raise NonFiniteLossError(
                    f"loss is {value} at step {state.step + 1} (epoch {epoch + 1}, batch {i + 1}); stopped without "
                    f"saving{_set_aside_unverified(state, loop)} (last good checkpoint: "
                    f"{state.good_checkpoint or 'none'}); lower the lr (now {state.lr():.3g}) and continue with "
                    "--resume auto, lengthen the warm-up or use --amp-dtype bfloat16")
            state.good_checkpoint = state.last_checkpoint  # its weights just gave a finite loss
            if cfg.clip_grad is not None:
                loop.precision.scaler.unscale_(state.optimizer)
                dispatch_clip_grad(params, cfg.clip_grad, mode=cfg.clip_mode)
            loop.precision.scaler.step(state.optimizer)
            loop.precision.scaler.update()
            state.optimizer.zero_grad(set_to_none=True)
            state.step += 1
            if state.ema is not None:
                state.ema.update(state.model, step=state.step)
                loop.deep.sync_ema()
            state.scheduler.step_update(state.step)
            step_loss = sum(micro_loss) / accum
            micro_loss.clear()
            steps += 1
            state.epoch_loss = (state.epoch_loss[0] + step_loss, state.epoch_loss[1] + 1)
            ips = steps * loop.eff_batch / max(time.perf_counter() - t_start, 1e-9)
            loop.log.bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{state.lr():.2e}", act=f"{loop.deep.value:.3f}",
                                     img_s=f"{ips:.0f}", refresh=False)
            loop.log.bar.update()
            info = dict(step=state.step, epoch=epoch + (i + 1) / data.micro_per_epoch, loss=step_loss, lr=state.lr(),
                        act_learn=loop.deep.value, img_per_s=ips)
            if state.ema is not None:
                info["ema_act_learn"] = float(getattr(state.ema.module, "act_learn", 1.0))
            if state.step % cfg.log_every == 0:
                loop.metrics({"type": "step", **info})
            if loop.on_step is not None:
                loop.on_step(info)
            if stop_now:
                save_checkpoint(state, loop, epoch, i + 1)
                return None
            if cfg.checkpoint_every and state.step % cfg.checkpoint_every == 0:
                save_checkpoint(state, loop, epoch, i + 1)
    finally:
        loop.log.bar.close()
        loop.log.bar = None
    loss_sum, seen = state.epoch_loss
    state.epoch_loss = (0.0, 0)
    return dict(train_loss=loss_sum / max(seen, 1),
                img_per_s=steps * loop.eff_batch / max(time.perf_counter() - t_start, 1e-9))


def _set_aside_unverified(state: TrainState, loop: Loop) -> str:
    """The newest checkpoint, when no step has verified it, holds the weights that just gave a non-finite loss:
    rename it out of ``--resume auto``'s way; returns a clause for the error message."""
    bad = state.last_checkpoint
    if bad is None or bad == state.good_checkpoint:
        return ""
    if not loop.dist.main:
        return f"; {Path(bad).name} gave it and was set aside"
    aside = loop.folder.set_aside(Path(bad))
    state.last_checkpoint = state.good_checkpoint
    return f"; the weights of {Path(bad).name} gave it, so it was renamed {aside.name}"


def validate_model(loop: Loop, model: nn.Module, deploy: nn.Module | None = None, amp: bool = True) -> dict:
    """``evaluate()`` (the one ``vanillanet eval`` uses) on the validation set, sharded across processes."""
    from .data.loaders import set_epoch
    from .evaluate import evaluate

    model.eval()
    autocast = {**loop.precision.autocast, "enabled": loop.precision.autocast["enabled"] and amp}

    def predict(x: torch.Tensor) -> torch.Tensor:
        with torch.autocast(**autocast):
            return model(loop.to_device(x))

    set_epoch(loop.data.val_loader, 0)
    return evaluate(predict, loop.data.val_loader, device=loop.device, rank=loop.dist.rank,
                    world_size=loop.dist.world_size, progress=False,
                    deploy=None if deploy is None else lambda x: deploy(loop.to_device(x)))


def end_epoch(state: TrainState, loop: Loop, epoch: int, stats: dict[str, float]) -> None:
    """Average BN statistics across processes, evaluate, log, checkpoint and keep the best."""
    from timm.utils import distribute_bn

    if loop.dist.enabled:
        distribute_bn(state.model, loop.dist.world_size, reduce=True)
        if state.ema is not None:
            distribute_bn(state.ema.module, loop.dist.world_size, reduce=True)
    ev = validate_model(loop, state.eval_model)
    improved = ev["top1"] > state.best_top1
    if improved:
        state.best_top1, state.best_epoch = ev["top1"], epoch + 1
    row = dict(type="epoch", epoch=epoch + 1, step=state.step, **stats, val_loss=ev["loss"], top1=ev["top1"],
               top5=ev["top5"], lr=state.lr(), act_learn=loop.deep.value, ema=state.ema is not None,
               seconds=loop.seconds(state))
    loop.metrics(row)
    loop.log(f"epoch {epoch + 1}/{loop.cfg.epochs}  loss {row['train_loss']:.4f}  val top-1 {100 * ev['top1']:.2f}%"
             f"{' (EMA)' if state.ema is not None else ''}  top-5 {100 * ev['top5']:.2f}%  lr {row['lr']:.3g}  "
             f"{'act_learn ' + format(row['act_learn'], '.3f') + '  ' if loop.deep.enabled else ''}"
             f"{row['img_per_s']:.0f} img/s  {row['seconds']:.0f} s")
    path = save_checkpoint(state, loop, epoch, loop.data.micro_per_epoch, epoch_done=True)
    if improved and path is not None:
        loop.folder.mark_best(path)


# ---- start and finish ------------------------------------------------------------------------------------------
def _start_point(folder: RunFolder, resume: str | None, dist: DistInfo) -> str | None:
    """Rank 0 decides where the run starts (or that it must not) and tells every process."""
    decision: list[Any] = [None, None]  # [checkpoint path, error]
    if dist.main:
        try:
            start = folder.start(resume)
            decision[0] = str(start) if start else None
        except ConfigError as err:
            decision[1] = str(err)
    if dist.enabled:
        tdist.broadcast_object_list(decision, src=0)
    if decision[1]:
        raise ConfigError(decision[1])
    return decision[0]


# Settings that decide which images each step sees: changing them on resume continues, but not exactly.
_POSITION_KEYS = ("data", "data_options", "batch_size", "grad_accum_steps", "seed", "augment", "img_size")


def resume_from(state: TrainState, loop: Loop, path: Path) -> None:
    """Restore a checkpoint into ``state`` (exactly: RNG states too), and drop metrics logged after it."""
    from .model.checkpoint_files import read_training_checkpoint

    ckpt = read_training_checkpoint(path)
    if ckpt.get("arch") != loop.arch:
        raise CheckpointError(f"{path} was trained as {ckpt.get('arch')}, not {loop.arch}; resume with the same "
                              "model settings or start a new run with --pretrained")
    state.restore(ckpt, loop.data.micro_per_epoch)
    loop.deep.set(float(ckpt["act_learn"]))  # exactly the slope in effect when it was saved
    state.last_checkpoint = Path(path)
    rngs = ckpt.get("rng") or []
    if len(rngs) == loop.dist.world_size:
        set_rng_state(rngs[loop.dist.rank])
    else:
        loop.log(f"the checkpoint holds RNG states for {len(rngs)} processes, this run has {loop.dist.world_size}: "
                 "continuing with fresh random streams (not bit-exact)")
    now = config_to_dict(loop.cfg)
    changed = {k: (v, now.get(k)) for k, v in ckpt["config"].items()
               if k not in ("resume", "output", "workers", "progress") and now.get(k) != v}
    if changed:
        moved = [k for k in changed if k in _POSITION_KEYS]
        loop.log(f"resuming with changed settings, in effect from step {state.step + 1}: "
                 + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items())
                 + (f" (with another {', '.join(moved)} the run does not continue exactly as it would have)"
                    if moved else ""))
    if loop.dist.main:
        loop.folder.truncate_metrics(state.step, epoch_done=bool(ckpt.get("epoch_done", True)))
        if ckpt.get("epoch_done") and state.best_epoch == int(ckpt["epoch"]) + 1:
            loop.folder.mark_best(Path(path))  # a stop between this epoch-end checkpoint and its best.pth link
    loop.log(f"resumed from {path}: epoch {state.start_epoch}, batch {state.start_batch}, step {state.step}")


def deploy_form(model: nn.Module, log: Callable[[str], None]) -> nn.Module | None:
    """The deploy form of the evaluated model, or None for a model that has none: an ablation baseline (nothing to
    re-parameterize) or a VanillaNet with shortcuts (not a plain network)."""
    from .model.reparam import reparameterize_model

    if not hasattr(model, "reparameterize") or getattr(model, "shortcut", False):
        why = "has shortcuts (not a plain network)" if hasattr(model, "reparameterize") else "is an ablation baseline"
        log(f"this model {why} and has no deploy form: only its train form is evaluated")
        return None
    return reparameterize_model(model)


def finish_run(state: TrainState, loop: Loop) -> dict[str, Any]:
    """Convert the evaluated model to the deploy form, check it on the validation set in fp32, write the deploy
    weights, the plot and ``summary.json``; returns the summary. A model without a deploy form (``deploy_form``)
    gets null deploy fields in the summary and n/a in the table."""
    from .complexity import count_macs, count_params
    from .model.checkpoint_files import save_weights

    cfg, final, folder = loop.cfg, state.eval_model, loop.folder
    check_sound(state, loop, "by the end of training")
    deploy = deploy_form(final, loop.log)
    ev = validate_model(loop, final, deploy=deploy, amp=False)  # fp32: the agreement is about the conversion only
    if not all(math.isfinite(ev[k]) for k in ("loss", "top1", "deploy_top1") if ev.get(k) is not None):
        raise NonFiniteLossError(
            f"the final {'EMA ' if state.ema is not None else ''}model gives non-finite outputs on the validation "
            f"set (loss {ev['loss']}): the training diverged; nothing was written (the checkpoints are kept): lower "
            "the lr and continue from an earlier checkpoint"
            + (" (or check model_ema_decay)" if state.ema is not None else ""))
    state.good_checkpoint = state.last_checkpoint
    if deploy is not None and ev["deploy_agreement"] < 1.0:
        loop.log(f"warning: the deploy model changes {100 * (1 - ev['deploy_agreement']):.3f}% of predictions")
    hashes = None
    if loop.dist.enabled:
        hashes = [None] * loop.dist.world_size
        models = [state.model] + ([state.ema.module] if state.ema is not None else [])
        tdist.all_gather_object(hashes, state_hash(*(m.state_dict() for m in models)))
    if not loop.dist.main:
        return dict(status="completed", rank=loop.dist.rank)
    deploy_path = folder.path / "model_deploy.safetensors" if deploy is not None else None
    if deploy is not None:
        save_weights(deploy.cpu(), deploy_path, class_names=loop.data.classes,
                     extra_meta=dict(top1=ev["deploy_top1"], dataset=cfg.data, trained_by="vanillanet train",
                                     **loop.data.preprocess.as_meta()))
    size = (cfg.in_chans, loop.data.preprocess.img_size, loop.data.preprocess.img_size)
    cx = dict(params_train=count_params(final), params_deploy=count_params(deploy) if deploy else None,
              macs_train=count_macs(final, size), macs_deploy=count_macs(deploy, size) if deploy else None)
    plot = folder.path / "training.png"
    try:
        from .training.plots import plot_training

        plot_training(folder.metrics_path, plot)
    except ImportError as err:
        loop.log(f"no plot ({err}); pip install matplotlib")
        plot = None
    best = folder.path / "best.pth"
    summary = dict(
        status="completed", model=cfg.model, data=cfg.data, num_classes=len(loop.data.classes),
        img_size=loop.data.preprocess.img_size, epochs=cfg.epochs, steps=state.step,
        world_size=loop.dist.world_size, evaluated="ema" if state.ema else "model",
        test_top1=ev["top1"], test_top5=ev["top5"], test_loss=ev["loss"], test_images=ev["images"],
        deploy_test_top1=ev.get("deploy_top1"), deploy_agreement=ev.get("deploy_agreement"),
        best_top1=state.best_top1, best_epoch=state.best_epoch, act_learn=loop.deep.value,
        seconds=loop.seconds(state), **cx,
        checkpoint=str(state.last_checkpoint) if state.last_checkpoint else None,
        best_checkpoint=str(best) if best.is_file() else None,
        deploy_weights=str(deploy_path) if deploy_path else None,
        plot=str(plot) if plot else None, metrics=str(folder.metrics_path), config=str(folder.path / "config.yaml"),
    )
    if hashes is not None:
        summary.update(rank_weight_hashes=hashes, ranks_in_sync=len(set(hashes)) == 1)
    folder.write_summary(summary)
    loop.log(_summary_table(summary))
    return summary


def _scaled(value: float | None, scale: float, spec: str) -> str:
    """``value * scale`` formatted, or n/a (no deploy form)."""
    return "n/a" if value is None else format(value * scale, spec)


def _summary_table(s: dict[str, Any]) -> str:
    rows = [
        ("best top-1 (epoch)", f"{100 * s['best_top1']:.2f}% ({s['best_epoch']})"),
        ("final top-1, train form", f"{100 * s['test_top1']:.2f}%"),
        ("final top-1, deploy form", f"{_scaled(s['deploy_test_top1'], 100, '.2f')}%"),
        ("identical predictions", f"{_scaled(s['deploy_agreement'], 100, '.2f')}% of {s['test_images']}"),
        ("params train / deploy", f"{s['params_train'] / 1e6:.3f} M / {_scaled(s['params_deploy'], 1e-6, '.3f')} M"),
        ("MACs train / deploy", f"{s['macs_train'] / 1e6:.2f} M / {_scaled(s['macs_deploy'], 1e-6, '.2f')} M "
                                f"({s['img_size']} px)"),
        ("time", f"{s['seconds']:.0f} s"),
        ("deploy weights", s["deploy_weights"] or "-"),
        ("plot", s["plot"] or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# ---- the run ----------------------------------------------------------------------------------------------------
def _build(cfg: TrainConfig, dist: DistInfo, device: torch.device, folder: RunFolder, log: Log,
           on_step: StepCallback | None) -> tuple[TrainState, Loop]:
    from timm.utils import ModelEmaV3

    from .model.geometry import check_input_size
    from .model.network import VanillaNet

    for seed_fn in (torch.manual_seed, random.seed, np.random.seed):
        seed_fn(cfg.seed + dist.rank)
    data = build_data(cfg.inputs, cfg.arch, cfg.batch_size, cfg.grad_accum_steps, cfg.validation_batch_size,
                      cfg.seed, dist, device)
    model, arch = build_model(cfg.arch, len(data.classes), log)
    blocks = len(model.stages) if isinstance(model, VanillaNet) else None  # baselines: timm's own grouping
    if blocks is not None:
        check_input_size(model, data.preprocess.img_size)
    if cfg.layer_decay is not None and blocks is not None and cfg.layer_decay_layers not in (None, blocks):
        raise ConfigError(f"layer_decay_layers is {cfg.layer_decay_layers} but {cfg.model} has {len(model.stages)} "
                          f"blocks; set it to {len(model.stages)} or null")
    if cfg.pretrained and cfg.decay_epochs and cfg.deep_training:
        log(f"note: deep training restarts act_learn at 0 over {cfg.decay_epochs:g} epochs; --set decay_epochs=0 "
            "keeps the pretrained network at act_learn 1")
    frozen = _freeze(model, cfg.freeze_stages)
    if cfg.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); drop --sync-bn on "
                              "the CPU (BN statistics are still averaged across processes every epoch)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
    net, ddp = model, None
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = ddp = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    net = torch.compile(net) if cfg.compile else net
    eff_batch = cfg.batch_size * cfg.grad_accum_steps * dist.world_size
    lr, note = scaled_lr(cfg.optim, eff_batch)
    if note:
        log(f"{note} ({dist.world_size} x {cfg.batch_size} x {cfg.grad_accum_steps})")
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = build_scheduler(optimizer, cfg.optim, data.steps_per_epoch, cfg.epochs)
    mixup, criterion = build_loss(cfg.mixing, len(data.classes), cfg.batch_size)
    precision = build_precision(cfg.speed, device, log)
    deep = DeepTraining(model, ema.module if ema is not None else None, cfg.decay_epochs, cfg.act_learn_mode,
                        cfg.act_learn_update, data.steps_per_epoch)
    state = TrainState(model, ema, optimizer, scheduler, precision.scaler)
    loop = Loop(cfg, dist, device, folder, log, data, net, ddp, mixup, criterion, precision, deep, frozen, eff_batch,
                arch, time.perf_counter(), on_step)
    return state, loop


def _run(cfg: TrainConfig, dist: DistInfo, device: torch.device, on_step: StepCallback | None) -> dict[str, Any]:
    log = Log(dist.main)
    folder = RunFolder(cfg.output, log)
    with folder.lock() if dist.main else contextlib.nullcontext():
        start = _start_point(folder, cfg.resume, dist)
        state, loop = _build(cfg, dist, device, folder, log, on_step)
        if start:
            resume_from(state, loop, Path(start))
        elif dist.main:
            folder.reset_metrics()
        if dist.main:
            folder.write_config(config_to_dict(cfg))
        log(f"training {cfg.model} (width x{cfg.width_mult:g}, {len(loop.data.classes)} classes, "
            f"{loop.data.preprocess.img_size} px) on {cfg.data}: {cfg.epochs} epochs x {loop.data.steps_per_epoch} "
            f"steps, effective batch {loop.eff_batch}, {dist.world_size} process(es) on {device.type}")
        if not start:
            loop.deep.start(0)
        try:
            with StopSignal() as stop:
                for epoch in range(state.start_epoch, cfg.epochs):
                    start_batch = state.start_batch if epoch == state.start_epoch else 0
                    stats = train_one_epoch(state, loop, epoch, start_batch, stop)
                    if stats is None:
                        name = "SIGTERM" if stop.exit_code == 143 else "SIGINT"
                        log(f"{name}: saved {state.last_checkpoint} at step {state.step}; continue with --resume "
                            f"{state.last_checkpoint} (or --resume auto)")
                        return dict(status="interrupted", signal=name, exit_code=stop.exit_code, step=state.step,
                                    checkpoint=str(state.last_checkpoint) if state.last_checkpoint else None)
                    end_epoch(state, loop, epoch, stats)
            return finish_run(state, loop)
        finally:
            _shutdown_workers(loop.data)


def _shutdown_workers(data: Data) -> None:
    """Stop the DataLoader worker processes now, also when the loop raised: persistent workers ignore SIGINT and
    SIGTERM (the main process handles them), so nothing else would end them before the interpreter exits."""
    for loader in (data.train_loader, data.val_loader):
        iterator = getattr(loader, "_iterator", None)
        if iterator is not None and hasattr(iterator, "_shutdown_workers"):
            iterator._shutdown_workers()
        loader._iterator = None


def train(cfg: TrainConfig, *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary (also written to ``OUT/summary.json``), or on SIGTERM/SIGINT
    ``{"status": "interrupted", "exit_code": 143|130, "checkpoint": ...}`` after saving a checkpoint.

    ``on_step`` is called after every optimiser step with ``{step, epoch, loss, lr, act_learn, img_per_s}``.
    Under torchrun (WORLD_SIZE > 1) each process calls this; it sets up and tears down the process group.
    """
    validate(validation.check_instance(cfg))  # a config built in Python skipped resolve_config's checks
    if not cfg.output:
        raise ConfigError("no output folder: pass --output DIR")
    dist, device = setup_distributed(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _run(cfg, dist, device, on_step)
    finally:
        torch.set_num_threads(threads)
        if dist.owns_group and tdist.is_initialized():
            tdist.destroy_process_group()


# ---- command line -----------------------------------------------------------------------------------------------
def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    """Options of ``vanillanet train``: every TrainConfig key as a timm-style flag, plus --recipe and --set."""
    parser.epilog = ("Settings are layered: the paper's defaults <- --recipe <- flags <- --set key=value. "
                     "Exit status: 0 done, 2 bad input or non-finite loss, 143/130 stopped by SIGTERM/SIGINT "
                     "after saving a checkpoint (continue with --resume auto).")
    add_config_arguments(parser)
    parser.set_defaults(func=_train_command)


def _train_command(args: argparse.Namespace) -> int:
    if args.list_recipes:
        for name, content in list_recipes().items():
            tag = " (derived)" if content.get("derived") else ""
            aliases = ", ".join(content.get("aliases") or [])
            print(f"{name}{tag}" + (f"  [{aliases}]" if aliases else ""))
        return 0
    cfg = config_from_args(args)
    if args.print_config:
        print(yaml.safe_dump(config_to_dict(cfg), sort_keys=False), end="")
        return 0
    args.log_dir = cfg.output  # where the CLI guard writes a traceback log
    return int(train(cfg).get("exit_code", 0))
