"""Building a training run from its config: each builder takes its slice of the config (``build_data``,
``build_model``, ``prepare_model``, ``build_optimizer``, ``build_scheduler``, ``build_loss``); ``build_run``
assembles them into the ``TrainState`` and the ``Run`` whose parts the loop receives one by one.

The parts are timm's (Mixup/CutMix with label smoothing, BCE, LAMB/AdamW with layer decay, per-iteration cosine
schedule, ModelEmaV3).
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..util.devices import DistInfo
from ..util.errors import ConfigError
from .checkpointing import Checkpointing
from .config import ArchConfig, InputConfig, MixingConfig, OptimConfig, TrainConfig, config_to_dict
from .deep_training import DeepTraining
from .loop import Data, Reporter
from .run_folder import RunFolder
from .runtime import ignore_stop_signals
from .state import TrainState
from .step import BatchPrep, StepParts, build_precision

__all__ = ["Data", "Run", "build_data", "build_device_augment", "build_loss", "build_model", "build_optimizer",
           "build_run", "build_scheduler", "build_train_transform", "prepare_model", "scaled_lr"]

StepCallback = Callable[[dict[str, Any]], None]


def build_data(inputs: InputConfig, arch: ArchConfig, batch_size: int, grad_accum: int, val_batch: int | None,
               seed: int, dist: DistInfo, device: torch.device) -> Data:
    """Datasets (train with augmentation, val with the eval transform) and their deterministic loaders; with
    ``inputs.train_subset`` a fixed random subset of the training set (the same for every seed)."""
    from ..data.datasets import take_subset
    from ..data.loaders import build_loader
    from ..data.sources import build_dataset
    from ..data.transforms import resolve_preprocess

    if not inputs.data:
        raise ConfigError("no dataset: pass --data PATH|fashion-mnist|digits|synthetic (or a recipe that sets it)")
    pre = resolve_preprocess(data=inputs.data, img_size=inputs.img_size, crop_pct=inputs.crop_pct, mean=inputs.mean,
                             std=inputs.std, interpolation=inputs.interpolation)
    train_tf = build_train_transform(inputs, arch.in_chans, pre)
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
    collate = None
    if inputs.decoder == "gpu":
        from ..data.gpu_decode import check_gpu_settings, collate_encoded

        check_gpu_settings(device, inputs.augment)
        collate = functools.partial(collate_encoded, size=(pre.img_size, pre.img_size), channels=arch.in_chans,
                                    interpolation=pre.interpolation)
    train_loader = build_loader(train_ds, batch_size, is_training=True, collate_fn=collate, **workers)
    val_loader = build_loader(val_ds, val_batch or 2 * batch_size, is_training=False, **workers)
    for loader in (train_loader, val_loader):
        loader.worker_init_fn = ignore_stop_signals  # Ctrl-C reaches the whole process group
    if inputs.memory_batches and inputs.decoder == "pil":
        from ..data.memory_batches import memory_batches

        train_loader = memory_batches(train_ds, train_loader) or train_loader
        val_loader = memory_batches(val_ds, val_loader) or val_loader
    micro = train_loader.batch_sampler.batches_per_epoch() // grad_accum * grad_accum
    return Data(train_loader, val_loader, classes, pre, micro, micro // grad_accum)


def build_train_transform(inputs: InputConfig, in_chans: int, pre: Any) -> Callable:
    """The workers' training transform for ``inputs.decoder``: timm's on PIL images (pil, the reference), or the
    uint8 one whose normalisation and erasing run on the device (fast; see ``build_device_augment``)."""
    from ..data.transforms import build_fast_transform, build_transform

    common = dict(in_chans=in_chans, mean=pre.mean, crop_pct=pre.crop_pct, interpolation=pre.interpolation,
                  augment=inputs.augment, auto_augment=inputs.aa, hflip=inputs.hflip, scale=inputs.scale,
                  ratio=inputs.ratio, color_jitter=inputs.color_jitter)
    if inputs.decoder == "pil":
        return build_transform(True, pre.img_size, std=pre.std, reprob=inputs.reprob, remode=inputs.remode,
                               padding=inputs.padding, **common)
    allow_large = bool(inputs.data_options.get("allow_large", False))
    if inputs.decoder == "gpu":
        from ..data.gpu_decode import GpuCropSample
        from ..data.transforms import fit_channels
        from ..data.uint8_transforms import timm_secondary

        secondary = timm_secondary(pre.img_size, mean=fit_channels(pre.mean, in_chans, "mean"),
                                   interpolation=pre.interpolation, auto_augment=inputs.aa,
                                   color_jitter=inputs.color_jitter if not inputs.aa else 0.0)
        return GpuCropSample(pre.img_size, in_chans=in_chans, scale=inputs.scale, ratio=inputs.ratio,
                             hflip=inputs.hflip, interpolation=pre.interpolation, allow_large=allow_large,
                             secondary=secondary)
    return build_fast_transform(True, pre.img_size, allow_large=allow_large, aa_on_device=inputs.aa_on_device,
                                **common)


def build_device_augment(inputs: InputConfig, in_chans: int, pre: Any, device: torch.device) -> Any:
    """What the device does to a uint8 batch (normalise, RandomErasing) for the fast and gpu decoders; None for
    pil, whose workers do both."""
    from ..data.device_augment import DeviceAugment
    from ..data.transforms import fit_channels

    if inputs.decoder == "pil":
        return None
    reprob = inputs.reprob if inputs.augment == "timm" else 0.0
    return DeviceAugment(fit_channels(pre.mean, in_chans, "mean"), fit_channels(pre.std, in_chans, "std"), device,
                         reprob=reprob, remode=inputs.remode)


def freeze(model: nn.Module, stages: int) -> list[nn.Module]:
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
    from ..model.ablation import MODEL_OPTIONS
    from ..model.baselines import create_baseline, is_baseline
    from ..model.registry import create_model
    from ..model.weight_loading import load_weights

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
        report = load_weights(model, arch.pretrained, use_ema=arch.pretrained_ema)
        log(f"fine-tuning from {arch.pretrained} ({report.source or 'weights'}"
            f"{', new ' + str(num_classes) + '-class head' if report.head_reset else ''})")
    return model, record


def prepare_model(model: nn.Module, cfg: TrainConfig, dist: DistInfo,
                  device: torch.device) -> tuple[nn.Module, nn.Module, Any]:
    """The model as it is trained: SyncBatchNorm (``sync_bn``), on the device, channels_last, and the module the
    step calls (DDP under torchrun, ``torch.compile`` with ``compile``); returns (model, net, ddp or None)."""
    if cfg.sync_bn and dist.enabled:
        if device.type != "cuda":
            raise ConfigError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); drop --sync-bn on "
                              "the CPU (BN statistics are still averaged across processes every epoch)")
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device)
    if cfg.channels_last:
        model.to(memory_format=torch.channels_last)
    net, ddp = model, None
    if dist.enabled:
        from torch.nn.parallel import DistributedDataParallel

        net = ddp = DistributedDataParallel(model, device_ids=[dist.local_rank] if device.type == "cuda" else None)
    return model, torch.compile(net) if cfg.compile else net, ddp


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
class Run:
    """The built parts of a run, each handed to the loop on its own: the data, what a step uses, the act_learn
    schedule, the checkpoint policy and the reporting; ``arch`` is the architecture record a resume must match."""

    data: Data
    parts: StepParts
    deep: DeepTraining
    checkpoints: Checkpointing
    report: Reporter
    arch: dict[str, Any]
    eff_batch: int


def _check_model(model: nn.Module, cfg: TrainConfig, img_size: int, log: Callable[[str], None]) -> None:
    """Settings that must fit the built model (a baseline keeps timm's own layer grouping)."""
    from ..model.geometry import check_min_input_size
    from ..model.network import VanillaNet

    if not isinstance(model, VanillaNet):
        return
    check_min_input_size(model, img_size)
    blocks = len(model.stages)
    if cfg.layer_decay is not None and cfg.layer_decay_layers not in (None, blocks):
        raise ConfigError(f"layer_decay_layers is {cfg.layer_decay_layers} but {cfg.model} has {blocks} "
                          f"blocks; set it to {blocks} or null")


def build_run(cfg: TrainConfig, dist: DistInfo, device: torch.device, folder: RunFolder, log: Any,
              on_step: StepCallback | None = None) -> tuple[TrainState, Run]:
    """Seed this process, then build every part of the run from ``cfg`` (see the module docstring)."""
    from timm.utils import ModelEmaV3

    for seed_fn in (torch.manual_seed, random.seed, np.random.seed):
        seed_fn(cfg.seed + dist.rank)
    data = build_data(cfg.inputs, cfg.arch, cfg.batch_size, cfg.grad_accum_steps, cfg.validation_batch_size,
                      cfg.seed, dist, device)
    model, arch = build_model(cfg.arch, len(data.classes), log)
    _check_model(model, cfg, data.preprocess.img_size, log)
    if cfg.pretrained and cfg.decay_epochs and cfg.deep_training:
        log(f"note: deep training restarts act_learn at 0 over {cfg.decay_epochs:g} epochs; --set decay_epochs=0 "
            "keeps the pretrained network at act_learn 1")
    frozen = freeze(model, cfg.freeze_stages)
    model, net, ddp = prepare_model(model, cfg, dist, device)
    ema = ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup) if cfg.model_ema else None
    eff_batch = cfg.batch_size * cfg.grad_accum_steps * dist.world_size
    lr, note = scaled_lr(cfg.optim, eff_batch)
    if note:
        log(f"{note} ({dist.world_size} x {cfg.batch_size} x {cfg.grad_accum_steps})")
    optimizer = build_optimizer(model, cfg.optim, lr)
    scheduler = build_scheduler(optimizer, cfg.optim, data.steps_per_epoch, cfg.epochs)
    mixup, criterion = build_loss(cfg.mixing, len(data.classes), cfg.batch_size)
    precision = build_precision(cfg.amp, cfg.amp_dtype, device, log)
    deep = DeepTraining(model, ema.module if ema is not None else None, cfg.decay_epochs, cfg.act_learn_mode,
                        cfg.act_learn_update, data.steps_per_epoch)
    augment = build_device_augment(cfg.inputs, cfg.arch.in_chans, data.preprocess, device)
    prep = BatchPrep(device, cfg.channels_last, mixup, augment)
    parts = StepParts(net, criterion, precision, prep, cfg.grad_accum_steps, ddp, frozen, cfg.clip_grad,
                      cfg.clip_mode)
    meta = dict(config=config_to_dict(cfg), class_names=data.classes, arch=arch,
                preprocess=data.preprocess.as_meta())
    checkpoints = Checkpointing(folder, dist, device, log, meta, cfg.keep_last, cfg.checkpoint_every,
                                cfg.model_ema_decay)
    report = Reporter(log, folder, dist, eff_batch=eff_batch, epochs=cfg.epochs, progress=cfg.progress,
                      log_every=cfg.log_every, on_step=on_step)
    state = TrainState(model, ema, optimizer, scheduler, precision.scaler)
    return state, Run(data, parts, deep, checkpoints, report, arch, eff_batch)
