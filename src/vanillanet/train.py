"""Training: ``vanillanet train`` / ``train(cfg)``, one process or DDP under torchrun, with deep training.

The loop is plain PyTorch around timm's parts (Mixup/CutMix with label smoothing, BCE, LAMB/AdamW with layer decay,
per-iteration cosine schedule, ModelEmaV3) and ends by converting the EMA model to the deploy form, checking that
every validation prediction is unchanged, and saving it as safetensors. See ``train_config.py`` for the settings
and ``train_state.py`` for checkpoints, RNG state and signal handling. Resuming is exact: batch order and
augmentation depend only on (seed, epoch, batch), and every other RNG state travels in the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import random
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as tdist
import torch.nn.functional as F
import yaml
from torch import nn

from .baselines import baseline_kwargs, is_baseline
from .checkpoint import check_model_name, load_weights, save_atomic, save_weights
from .errors import CheckpointError, ConfigError, VanillaNetError
from .models import MODEL_OPTIONS, VanillaNet
from .reparam import act_learn_schedule, reparameterize_model
from .train_config import TrainConfig, add_config_arguments, config_from_args, config_to_dict, list_recipes
from .train_state import (
    DistInfo,
    StopSignal,
    checkpoint_path,
    find_latest,
    get_rng_state,
    ignore_stop_signals,
    link_or_copy,
    load_train_checkpoint,
    prune_checkpoints,
    set_rng_state,
    setup_distributed,
    state_hash,
)

__all__ = ["NonFiniteLossError", "TrainConfig", "add_cli", "build_optimizer", "state_hash", "train"]

StepCallback = Callable[[dict[str, Any]], None]


class NonFiniteLossError(VanillaNetError):
    """The loss became NaN or infinite: training stopped without saving the diverged state."""


def build_optimizer(model: nn.Module, cfg: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """timm's optimiser with the recipe's parameter groups: no weight decay on 1-D parameters (biases, BN) while
    the activations' depthwise weights are decayed; with ``layer_decay`` r and L blocks, lr scales r^(L+1) for the
    stem, r^(L-i) for block i and 1 for the head (timm's grouping through ``model.group_matcher``)."""
    from timm.optim import create_optimizer_v2, list_optimizers

    name = cfg.opt.lower()
    if name not in list_optimizers() and name.split("_")[-1] not in list_optimizers():
        raise ConfigError(f"unknown optimiser {cfg.opt!r}; use lamb, adamw, sgd or another timm optimiser name")
    extra: dict[str, Any] = {}
    if name not in ("sgd", "momentum", "nesterov"):
        extra = dict(eps=cfg.opt_eps, betas=tuple(cfg.opt_betas))
    return create_optimizer_v2(model, opt=cfg.opt, lr=lr, weight_decay=cfg.weight_decay, momentum=cfg.momentum,
                               layer_decay=cfg.layer_decay, **extra)


def _freeze(model: VanillaNet, stages: int) -> list[nn.Module]:
    """Freeze the first ``stages`` stages (the stem counts as the first); returns the frozen modules."""
    if stages <= 0:
        return []
    stem = [model.stem1, model.stem2] if model.deep_training else [model.stem]  # ablation: deep_training=False
    units: list[list[nn.Module]] = [stem, *[[b] for b in model.stages]]
    if stages > len(units):
        raise ConfigError(f"freeze_stages is {stages} but the model has {len(units)} stages (stem + "
                          f"{len(units) - 1} blocks); use at most {len(units) - 1} to leave something to train")
    frozen = [m for unit in units[:stages] for m in unit]
    for m in frozen:
        m.requires_grad_(False)
    return frozen


class _Trainer:
    """One training run; every process of a DDP job holds one."""

    def __init__(self, cfg: TrainConfig, dist: DistInfo, device: torch.device, on_step: StepCallback | None):
        self.cfg, self.dist, self.device, self.on_step = cfg, dist, device, on_step
        self.out = Path(cfg.output)
        self.t0 = time.perf_counter()
        self.step = 0
        self.start_epoch, self.start_batch = 0, 0
        self.best_top1, self.best_epoch = -1.0, -1
        self.last_ckpt: Path | None = None
        self._bar = None
        torch.manual_seed(cfg.seed + dist.rank)
        random.seed(cfg.seed + dist.rank)
        np.random.seed(cfg.seed + dist.rank)
        self._build_data()
        self._build_model()
        self._build_optimisation()

    # ---- output ---------------------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not self.dist.main:
            return
        if self._bar is not None:
            self._bar.write(msg, file=sys.stdout)
        else:
            print(msg, flush=True)

    def _metrics(self, row: dict[str, Any]) -> None:
        if self.dist.main:
            with open(self.out / "metrics.jsonl", "a") as f:
                f.write(json.dumps(row) + "\n")

    # ---- building ---------------------------------------------------------------------------------------------
    def _build_data(self) -> None:
        from .data import build_dataset, build_loader, build_transform, dataset_defaults, take_subset

        cfg = self.cfg
        if not cfg.data:
            raise ConfigError("no dataset: pass --data PATH|fashion-mnist|digits|synthetic (or a recipe that sets it)")
        d = dataset_defaults(cfg.data)
        self.img_size = cfg.img_size or d.img_size
        tf = dict(in_chans=cfg.in_chans, mean=cfg.mean or d.mean, std=cfg.std or d.std,
                  crop_pct=cfg.crop_pct or d.crop_pct, interpolation=cfg.interpolation)
        self.preprocess = dict(img_size=self.img_size, **{k: v for k, v in tf.items() if k != "in_chans"})
        train_tf = build_transform(True, self.img_size, **tf, augment=cfg.augment, auto_augment=cfg.aa,
                                   reprob=cfg.reprob, remode=cfg.remode, hflip=cfg.hflip, scale=cfg.scale,
                                   ratio=cfg.ratio, color_jitter=cfg.color_jitter, padding=cfg.padding)
        ds_args = dict(in_chans=cfg.in_chans, strict=cfg.strict_data, root=cfg.data_root,
                       synthetic_size=cfg.synthetic_size, num_classes=cfg.num_classes or 10, img_size=self.img_size)
        train_ds = build_dataset(cfg.data, "train", train_tf, **ds_args)
        if cfg.train_subset:  # shorter experiments (ablation studies): a fixed subset, the same for every seed
            train_ds = take_subset(train_ds, cfg.train_subset)
        val_ds = build_dataset(cfg.data, "val", build_transform(False, self.img_size, **tf), **ds_args)
        self.classes = list(train_ds.classes)
        if cfg.num_classes is not None and cfg.num_classes != len(self.classes):
            raise ConfigError(f"num_classes is {cfg.num_classes} but {cfg.data} has {len(self.classes)} classes; drop "
                              "--num-classes (the head follows the dataset) or pick the matching dataset")
        self.num_classes = len(self.classes)
        per_step = cfg.batch_size * cfg.grad_accum_steps * self.dist.world_size
        if len(train_ds) < per_step:
            raise ConfigError(f"the training set has {len(train_ds)} images, fewer than one step needs ({per_step} = "
                              "batch x accumulation x processes); lower --batch-size")
        workers = dict(num_workers=cfg.workers, distributed=self.dist.enabled, seed=cfg.seed,
                       pin_memory=cfg.pin_mem and self.device.type == "cuda")
        self.train_loader = build_loader(train_ds, cfg.batch_size, is_training=True, **workers)
        self.val_loader = build_loader(val_ds, cfg.validation_batch_size or 2 * cfg.batch_size, is_training=False,
                                       **workers)
        for loader in (self.train_loader, self.val_loader):
            loader.worker_init_fn = ignore_stop_signals  # Ctrl-C reaches the whole process group
        self.micro_per_epoch = (self.train_loader.batch_sampler.batches_per_epoch() // cfg.grad_accum_steps
                                * cfg.grad_accum_steps)
        self.steps_per_epoch = self.micro_per_epoch // cfg.grad_accum_steps
        self.total_steps = self.steps_per_epoch * cfg.epochs

    def _build_model(self) -> None:
        import timm
        from timm.utils import ModelEmaV3

        cfg = self.cfg
        # ---- ablation: baselines (resnet18, plain_cnn_6) train alike, without deep training or a deploy form
        options = {k: getattr(cfg, k) for k, default in MODEL_OPTIONS.items() if getattr(cfg, k) != default}
        self.baseline = is_baseline(cfg.model)
        if self.baseline:
            if options or cfg.pretrained or cfg.freeze_stages:
                given = ", ".join([*options, *(["pretrained"] if cfg.pretrained else []),
                                   *(["freeze_stages"] if cfg.freeze_stages else [])])
                raise ConfigError(f"{cfg.model} is a baseline: the setting(s) {given} apply to VanillaNet models only; "
                                  "drop them for this model")
            self.arch = dict(name=cfg.model, kwargs=baseline_kwargs(cfg.model, num_classes=self.num_classes,
                                                                    in_chans=cfg.in_chans, drop_rate=cfg.drop_rate,
                                                                    width_mult=cfg.width_mult))
        else:
            check_model_name(cfg.model)
            # the options enter the record only when set, so that older checkpoints still resume
            self.arch = dict(name=cfg.model, kwargs=dict(num_classes=self.num_classes, in_chans=cfg.in_chans,
                                                         drop_rate=cfg.drop_rate, act_num=cfg.act_num,
                                                         width_mult=cfg.width_mult, **options))
        model: VanillaNet = timm.create_model(cfg.model, **self.arch["kwargs"])
        self.deep_training = not self.baseline and model.deep_training  # False: no act_learn to schedule
        blocks = None if self.baseline else len(model.stages)
        if cfg.layer_decay is not None and blocks is not None and cfg.layer_decay_layers not in (None, blocks):
            raise ConfigError(f"layer_decay_layers is {cfg.layer_decay_layers} but {cfg.model} has "
                              f"{len(model.stages)} blocks; set it to {len(model.stages)} or null")
        if cfg.pretrained:
            report = load_weights(model, cfg.pretrained, use_ema=True)
            self.log(f"fine-tuning from {cfg.pretrained} ({report.source or 'weights'}"
                     f"{', new ' + str(self.num_classes) + '-class head' if report.head_reset else ''})")
            if cfg.decay_epochs:
                self.log(f"note: deep training restarts act_learn at 0 over {cfg.decay_epochs:g} epochs; "
                         "--set decay_epochs=0 keeps the pretrained network at act_learn 1")
        self.frozen = _freeze(model, cfg.freeze_stages)
        if cfg.sync_bn and self.dist.enabled:
            if self.device.type != "cuda":
                raise ConfigError("sync_bn needs CUDA devices (PyTorch's SyncBatchNorm is GPU-only); drop --sync-bn "
                                  "on the CPU (BN statistics are still averaged across processes every epoch)")
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        model.to(self.device)
        if cfg.channels_last:
            model.to(memory_format=torch.channels_last)
        self.model = model
        self.ema = (ModelEmaV3(model, decay=cfg.model_ema_decay, use_warmup=cfg.model_ema_warmup)
                    if cfg.model_ema else None)
        net: nn.Module = model
        if self.dist.enabled:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.dist.local_rank] if self.device.type == "cuda" else None
            net = self.ddp = DistributedDataParallel(model, device_ids=ids)
        self.net = torch.compile(net) if cfg.compile else net

    def _build_optimisation(self) -> None:
        from timm.data import Mixup
        from timm.loss import BinaryCrossEntropy, LabelSmoothingCrossEntropy, SoftTargetCrossEntropy
        from timm.scheduler import CosineLRScheduler

        cfg = self.cfg
        eff = cfg.batch_size * cfg.grad_accum_steps * self.dist.world_size
        factor = 1.0
        if cfg.lr_base_scale != "none" and eff != cfg.lr_base_size:
            factor = eff / cfg.lr_base_size
            factor = math.sqrt(factor) if cfg.lr_base_scale == "sqrt" else factor
            self.log(f"lr {cfg.lr:g} is for a batch of {cfg.lr_base_size}; effective batch {eff} "
                     f"({self.dist.world_size} x {cfg.batch_size} x {cfg.grad_accum_steps}) -> lr "
                     f"{cfg.lr * factor:.4g} "
                     f"({cfg.lr_base_scale} scaling; --set lr_base_scale=none to disable)")
        self.lr = cfg.lr * factor
        self.eff_batch = eff
        self.optimizer = build_optimizer(self.model, cfg, self.lr)
        warmup = round(cfg.warmup_epochs * self.steps_per_epoch)
        self.scheduler = CosineLRScheduler(self.optimizer, t_initial=max(1, self.total_steps - warmup),
                                           lr_min=cfg.min_lr, warmup_t=warmup, warmup_lr_init=cfg.warmup_lr,
                                           warmup_prefix=True, t_in_epochs=False)
        mixing = cfg.mixup > 0 or cfg.cutmix > 0 or cfg.cutmix_minmax is not None
        self.mixup = None
        if mixing:
            if cfg.batch_size % 2:
                raise ConfigError(f"mixup/cutmix need an even batch size, got {cfg.batch_size}")
            self.mixup = Mixup(mixup_alpha=cfg.mixup, cutmix_alpha=cfg.cutmix, cutmix_minmax=cfg.cutmix_minmax,
                               prob=cfg.mixup_prob, switch_prob=cfg.mixup_switch_prob, mode=cfg.mixup_mode,
                               label_smoothing=cfg.smoothing, num_classes=self.num_classes)
            self.criterion: nn.Module = (BinaryCrossEntropy(target_threshold=cfg.bce_target_thresh)
                                         if cfg.bce_loss else SoftTargetCrossEntropy())
        elif cfg.bce_loss:
            self.criterion = BinaryCrossEntropy(smoothing=cfg.smoothing, target_threshold=cfg.bce_target_thresh)
        else:
            self.criterion = LabelSmoothingCrossEntropy(cfg.smoothing) if cfg.smoothing else nn.CrossEntropyLoss()
        amp_dtype = torch.float16 if cfg.amp_dtype == "float16" else torch.bfloat16
        self.amp = cfg.amp
        if cfg.amp and amp_dtype == torch.float16 and self.device.type == "cpu":
            self.log("fp16 autocast needs a GPU: training in float32 on the CPU (--amp-dtype bfloat16 for CPU "
                     "mixed precision)")
            self.amp = False
        self.autocast = dict(device_type=self.device.type, dtype=amp_dtype, enabled=self.amp)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp and amp_dtype == torch.float16)

    # ---- act_learn -------------------------------------------------------------------------------------------
    def act_learn_at(self, epoch: float) -> float:
        return act_learn_schedule(epoch, self.cfg.decay_epochs, self.cfg.act_learn_mode)

    @property
    def act_learn(self) -> float | None:
        """The live model's act_learn; None without deep training (baselines, ``deep_training=False``)."""
        return self.model.act_learn if self.deep_training else None

    def set_act_learn(self, value: float) -> None:
        """The live model and the EMA copy (which has its own slope) always hold the same act_learn."""
        if not self.deep_training:  # ablation: nothing to schedule
            return
        self.model.set_act_learn(value)
        if self.ema is not None:
            self.ema.module.set_act_learn(value)

    # ---- checkpoints ------------------------------------------------------------------------------------------
    def save(self, epoch: int, batch: int) -> Path | None:
        """Checkpoint after ``batch`` micro-batches of ``epoch`` (rank 0 writes; every rank gives its RNG)."""
        rng = get_rng_state()
        rngs = [rng]
        if self.dist.enabled:
            rngs = [None] * self.dist.world_size
            tdist.all_gather_object(rngs, rng)
        if not self.dist.main:
            return None
        ckpt = {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "epoch": epoch,
            "batch": batch,
            "step": self.step,
            "act_learn": self.act_learn,
            "rng": rngs,
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "config": config_to_dict(self.cfg),
            "class_names": self.classes,
            "arch": self.arch,
        }
        if self.ema is not None:
            ckpt["model_ema"] = self.ema.module.state_dict()
        path = checkpoint_path(self.out, self.step)
        save_atomic(ckpt, path)
        prune_checkpoints(self.out, self.cfg.keep_last)
        self.last_ckpt = path
        return path

    def resume(self, path: Path) -> None:
        ckpt = load_train_checkpoint(path)
        if ckpt.get("arch") != self.arch:
            raise CheckpointError(f"{path} was trained as {ckpt.get('arch')}, not {self.arch}; resume with the same "
                                  "model settings or start a new run with --pretrained")
        self.model.load_state_dict(ckpt["model"])
        if self.ema is not None:
            self.ema.module.load_state_dict(ckpt.get("model_ema", ckpt["model"]))
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scaler.load_state_dict(ckpt["scaler"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.step = int(ckpt["step"])
        self.scheduler.step_update(self.step)
        epoch, batch = int(ckpt["epoch"]), int(ckpt["batch"])
        if batch >= self.micro_per_epoch:
            epoch, batch = epoch + 1, 0
        self.start_epoch, self.start_batch = epoch, batch
        self.best_top1, self.best_epoch = float(ckpt["best_top1"]), int(ckpt["best_epoch"])
        self.last_ckpt = Path(path)
        rngs = ckpt.get("rng") or []
        if len(rngs) == self.dist.world_size:
            set_rng_state(rngs[self.dist.rank])
        else:
            self.log(f"the checkpoint holds RNG states for {len(rngs)} processes, this run has "
                     f"{self.dist.world_size}: continuing with fresh random streams (not bit-exact)")
        changed = {k: (v, getattr(self.cfg, k)) for k, v in ckpt["config"].items()
                   if k not in ("resume", "output", "workers", "progress")
                   and config_to_dict(self.cfg).get(k) != v}
        if changed:
            self.log("resuming with changed settings: " + ", ".join(f"{k} {a} -> {b}" for k, (a, b) in changed.items()))
        if self.dist.main and (self.out / "metrics.jsonl").is_file():  # drop rows logged after the checkpoint
            rows = (self.out / "metrics.jsonl").read_text().splitlines()
            kept = [r for r in rows if r.strip() and json.loads(r).get("step", 0) <= self.step]
            (self.out / "metrics.jsonl").write_text("".join(r + "\n" for r in kept))
        self.log(f"resumed from {path}: epoch {epoch}, batch {batch}, step {self.step}")

    # ---- evaluation -------------------------------------------------------------------------------------------
    def _all_sum(self, t: torch.Tensor) -> torch.Tensor:
        if self.dist.enabled:
            tdist.all_reduce(t)
        return t

    @torch.no_grad()
    def evaluate(self, model: nn.Module, deploy: nn.Module | None = None, amp: bool = True) -> dict[str, float]:
        """Top-1/top-5 and CE loss over the validation set (sharded across processes); with ``deploy``, also its
        top-1 and the fraction of identical predictions."""
        from .data import set_epoch

        model.eval()
        sums = torch.zeros(6, dtype=torch.float64, device=self.device)
        set_epoch(self.val_loader, 0)
        k = min(5, self.num_classes)
        for x, y in self.val_loader:
            x, y = self._to_device(x), y.to(self.device, non_blocking=True)
            with torch.autocast(**{**self.autocast, "enabled": self.amp and amp}):
                out = model(x)
            out = out.float()
            top = out.topk(k, dim=1).indices
            sums[0] += F.cross_entropy(out, y, reduction="sum")
            sums[1] += (top[:, 0] == y).sum()
            sums[2] += (top == y[:, None]).any(1).sum()
            sums[3] += len(y)
            if deploy is not None:
                pred_d = deploy(x).float().argmax(1)
                sums[4] += (pred_d == y).sum()
                sums[5] += (pred_d == top[:, 0]).sum()
        loss, c1, c5, n, cd, agree = self._all_sum(sums).tolist()
        res = dict(val_loss=loss / n, top1=c1 / n, top5=c5 / n, n=int(n))
        if deploy is not None:
            res.update(deploy_top1=cd / n, deploy_agreement=agree / n)
        return res

    def _to_device(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    # ---- training ---------------------------------------------------------------------------------------------
    def _agree(self, nonfinite: bool, stop: bool) -> tuple[bool, bool]:
        """Every process stops at the same step: the flags are OR-ed across processes."""
        if not self.dist.enabled:
            return nonfinite, stop
        flags = torch.tensor([float(nonfinite), float(stop)], device=self.device)
        tdist.all_reduce(flags, op=tdist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1])

    def train_epoch(self, epoch: int, start_batch: int, stop: StopSignal) -> bool:
        """Run one epoch from micro-batch ``start_batch``; False when stopped by a signal (checkpoint written)."""
        from timm.utils import dispatch_clip_grad
        from tqdm import tqdm

        from .data import set_epoch

        cfg, accum = self.cfg, self.cfg.grad_accum_steps
        set_epoch(self.train_loader, epoch, start_batch)
        if cfg.act_learn_update == "epoch":
            self.set_act_learn(self.act_learn_at(epoch))
        self.net.train()
        for m in self.frozen:
            m.eval()
        params = [p for p in self.model.parameters() if p.requires_grad]
        show = self.dist.main and cfg.progress
        self._bar = tqdm(total=self.steps_per_epoch, initial=start_batch // accum, desc=f"epoch {epoch + 1}/"
                         f"{cfg.epochs}", disable=None if show else True, leave=False, dynamic_ncols=True)
        loss_sum, seen, t_start = 0.0, 0, time.perf_counter()
        micro_loss: list[float] = []
        try:
            for i, (x, y) in enumerate(self.train_loader, start=start_batch):
                if i >= self.micro_per_epoch:
                    break
                if cfg.act_learn_update == "step":
                    self.set_act_learn(self.act_learn_at(self.step / self.steps_per_epoch))
                x, y = self._to_device(x), y.to(self.device, non_blocking=True)
                if self.mixup is not None:
                    x, y = self.mixup(x, y)
                boundary = (i + 1) % accum == 0
                sync = self.ddp.no_sync() if self.dist.enabled and not boundary else contextlib.nullcontext()
                with sync:
                    with torch.autocast(**self.autocast):
                        loss = self.criterion(self.net(x), y)
                    self.scaler.scale(loss / accum).backward()
                micro_loss.append(float(loss.detach()))
                if not boundary:
                    continue
                nonfinite, stop_now = self._agree(not all(map(math.isfinite, micro_loss)), stop.requested)
                if nonfinite:
                    bad = next((v for v in micro_loss if not math.isfinite(v)), float("nan"))
                    where = str(self.last_ckpt) if self.last_ckpt else "none was written yet"
                    raise NonFiniteLossError(
                        f"loss is {bad} at step {self.step + 1} (epoch {epoch + 1}, batch {i + 1}); stopped without "
                        f"saving (last good checkpoint: {where}); lower the lr (now {self._lr():.3g}), lengthen "
                        "the warm-up or use --amp-dtype bfloat16")
                if cfg.clip_grad is not None:
                    self.scaler.unscale_(self.optimizer)
                    dispatch_clip_grad(params, cfg.clip_grad, mode=cfg.clip_mode)
                self.scaler.step(self.optimizer)
                self.scaler.update()
                self.optimizer.zero_grad(set_to_none=True)
                self.step += 1
                if self.ema is not None:
                    self.ema.update(self.model, step=self.step)
                    if self.deep_training:  # ablation: no slope without deep training
                        self.ema.module.set_act_learn(self.model.act_learn)
                self.scheduler.step_update(self.step)
                step_loss = sum(micro_loss) / accum
                micro_loss.clear()
                loss_sum += step_loss
                seen += 1
                ips = seen * self.eff_batch / max(time.perf_counter() - t_start, 1e-9)
                self._bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{self._lr():.2e}",
                                      act=_fmt(self.act_learn), img_s=f"{ips:.0f}", refresh=False)
                self._bar.update()
                info = dict(step=self.step, epoch=epoch + (i + 1) / self.micro_per_epoch, loss=step_loss,
                            lr=self._lr(), act_learn=self.act_learn, img_per_s=ips)
                if self.ema is not None and self.deep_training:
                    info["ema_act_learn"] = self.ema.module.act_learn
                if self.step % cfg.log_every == 0:
                    self._metrics({"type": "step", **info})
                if self.on_step is not None:
                    self.on_step(info)
                if stop_now:
                    self.save(epoch, i + 1)
                    return False
                if cfg.checkpoint_every and self.step % cfg.checkpoint_every == 0:
                    self.save(epoch, i + 1)
        finally:
            self._bar.close()
            self._bar = None
        self.epoch_stats = dict(train_loss=loss_sum / max(seen, 1), img_per_s=seen * self.eff_batch /
                                max(time.perf_counter() - t_start, 1e-9))
        return True

    def _lr(self) -> float:
        return max(g["lr"] for g in self.optimizer.param_groups)

    def end_epoch(self, epoch: int) -> None:
        """Average BN statistics across processes, evaluate, log, checkpoint and keep the best."""
        from timm.utils import distribute_bn

        if self.dist.enabled:
            distribute_bn(self.model, self.dist.world_size, reduce=True)
            if self.ema is not None:
                distribute_bn(self.ema.module, self.dist.world_size, reduce=True)
        model = self.ema.module if self.ema is not None else self.model
        ev = self.evaluate(model)
        improved = ev["top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = ev["top1"], epoch + 1
        row = dict(type="epoch", epoch=epoch + 1, step=self.step, **self.epoch_stats, val_loss=ev["val_loss"],
                   top1=ev["top1"], top5=ev["top5"], lr=self._lr(), act_learn=self.act_learn,
                   ema=self.ema is not None, seconds=time.perf_counter() - self.t0)
        self._metrics(row)
        self.log(f"epoch {epoch + 1}/{self.cfg.epochs}  loss {row['train_loss']:.4f}  val top-1 "
                 f"{100 * ev['top1']:.2f}%{' (EMA)' if self.ema is not None else ''}  top-5 {100 * ev['top5']:.2f}%"
                 f"  lr {row['lr']:.3g}  act_learn {_fmt(row['act_learn'])}  {row['img_per_s']:.0f} img/s  "
                 f"{row['seconds']:.0f} s")
        path = self.save(epoch, self.micro_per_epoch)
        if improved and path is not None:
            link_or_copy(path, self.out / "best.pth")

    # ---- the whole run ----------------------------------------------------------------------------------------
    def _resume_path(self) -> str | None:
        """Rank 0 decides what to resume from (or that the folder holds another run) and tells every process."""
        decision: list[Any] = [None, None]  # [path, error]
        if self.dist.main:
            latest = find_latest(self.out)
            if self.cfg.resume == "auto":
                decision[0] = str(latest) if latest else None
                if latest is None:
                    self.log(f"--resume auto: no checkpoint in {self.out}, starting from scratch")
            elif self.cfg.resume:
                decision[0] = self.cfg.resume
            elif latest is not None:
                decision[1] = (f"{self.out} already holds checkpoints ({latest.name}); continue that run with "
                               "--resume auto or pick another --output")
        if self.dist.enabled:
            tdist.broadcast_object_list(decision, src=0)
        if decision[1]:
            raise ConfigError(decision[1])
        return decision[0]

    def fit(self) -> dict[str, Any]:
        cfg = self.cfg
        if self.dist.main:
            self.out.mkdir(parents=True, exist_ok=True)
        resume = self._resume_path()
        if resume:
            self.resume(Path(resume))
        elif self.dist.main:
            (self.out / "metrics.jsonl").write_text("")
        if self.dist.main:
            (self.out / "config.yaml").write_text(yaml.safe_dump(config_to_dict(cfg), sort_keys=False))
        self.log(f"training {cfg.model} (width x{cfg.width_mult:g}, {self.num_classes} classes, {self.img_size} px) "
                 f"on {cfg.data}: {cfg.epochs} epochs x {self.steps_per_epoch} steps, effective batch "
                 f"{self.eff_batch}, {self.dist.world_size} process(es) on {self.device.type}")
        self.set_act_learn(self.act_learn_at(self.start_epoch))
        with StopSignal() as stop:
            for epoch in range(self.start_epoch, cfg.epochs):
                if not self.train_epoch(epoch, self.start_batch if epoch == self.start_epoch else 0, stop):
                    name = "SIGTERM" if stop.exit_code == 143 else "SIGINT"
                    self.log(f"{name}: saved {self.last_ckpt} at step {self.step}; continue with --resume "
                             f"{self.last_ckpt} (or --resume auto)")
                    return dict(status="interrupted", signal=name, exit_code=stop.exit_code, step=self.step,
                                checkpoint=str(self.last_ckpt) if self.last_ckpt else None)
                self.end_epoch(epoch)
        return self.finish()

    def finish(self) -> dict[str, Any]:
        """Convert the evaluated model to the deploy form, check it on the validation set, write the outputs."""
        cfg = self.cfg
        final = self.ema.module if self.ema is not None else self.model
        deploy = self._deploy_form(final)
        ev = self.evaluate(final, deploy=deploy, amp=False)  # fp32: the agreement is about the conversion only
        if deploy is not None and ev["deploy_agreement"] < 1.0:
            self.log(f"warning: the deploy model changes {100 * (1 - ev['deploy_agreement']):.3f}% of predictions")
        hashes = None
        if self.dist.enabled:
            hashes = [None] * self.dist.world_size
            models = [self.model] + ([self.ema.module] if self.ema is not None else [])
            tdist.all_gather_object(hashes, state_hash(*(m.state_dict() for m in models)))
        if not self.dist.main:
            return dict(status="completed", rank=self.dist.rank)
        from .complexity import count_macs, count_params

        deploy_path = self.out / "model_deploy.safetensors" if deploy is not None else None
        if deploy is not None:
            save_weights(deploy.cpu(), deploy_path, class_names=self.classes,
                         extra_meta=dict(top1=ev["deploy_top1"], dataset=cfg.data, trained_by="vanillanet train",
                                         **self.preprocess))
        size = (cfg.in_chans, self.img_size, self.img_size)
        cx = dict(params_train=count_params(final), params_deploy=count_params(deploy) if deploy else None,
                  macs_train=count_macs(final, size), macs_deploy=count_macs(deploy, size) if deploy else None)
        plot = self.out / "training.png"
        try:
            from .plots import plot_training

            plot_training(self.out / "metrics.jsonl", plot)
        except ImportError as err:
            self.log(f"no plot ({err}); pip install matplotlib")
            plot = None
        seconds = time.perf_counter() - self.t0
        summary = dict(
            status="completed", model=cfg.model, data=cfg.data, num_classes=self.num_classes, img_size=self.img_size,
            epochs=cfg.epochs, steps=self.step, world_size=self.dist.world_size,
            evaluated="ema" if self.ema else "model",
            test_top1=ev["top1"], test_top5=ev["top5"], test_loss=ev["val_loss"], test_images=ev["n"],
            deploy_test_top1=ev.get("deploy_top1"), deploy_agreement=ev.get("deploy_agreement"),
            best_top1=self.best_top1, best_epoch=self.best_epoch, act_learn=self.act_learn, seconds=seconds, **cx,
            checkpoint=str(self.last_ckpt) if self.last_ckpt else None,
            best_checkpoint=str(self.out / "best.pth") if (self.out / "best.pth").is_file() else None,
            deploy_weights=str(deploy_path) if deploy_path else None, plot=str(plot) if plot else None,
            metrics=str(self.out / "metrics.jsonl"), config=str(self.out / "config.yaml"),
        )
        if hashes is not None:
            summary.update(rank_weight_hashes=hashes, ranks_in_sync=len(set(hashes)) == 1)
        (self.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        self.log(_summary_table(summary))
        return summary

    def _deploy_form(self, final: nn.Module) -> nn.Module | None:
        """The deploy form of the evaluated model; None (deploy metrics n/a) for a model that has none: a baseline,
        or a VanillaNet with shortcuts (not a plain network)."""
        if self.baseline or final.shortcut:
            why = "is a baseline" if self.baseline else "with shortcuts is not a plain network"
            self.log(f"{self.cfg.model} {why} and has no deploy form: evaluating its train form only")
            return None
        return reparameterize_model(final)


def _fmt(value: float | None, spec: str = ".3f") -> str:
    return "n/a" if value is None else format(value, spec)


def _pct(v: float | None) -> float | None:
    return None if v is None else 100 * v


def _mega(v: float | None) -> float | None:
    return None if v is None else v / 1e6


def _summary_table(s: dict[str, Any]) -> str:
    rows = [
        ("best top-1 (epoch)", f"{100 * s['best_top1']:.2f}% ({s['best_epoch']})"),
        ("final top-1, train form", f"{100 * s['test_top1']:.2f}%"),
        ("final top-1, deploy form", f"{_fmt(_pct(s['deploy_test_top1']), '.2f')}%"),
        ("identical predictions", f"{_fmt(_pct(s['deploy_agreement']), '.2f')}% of {s['test_images']}"),
        ("params train / deploy", f"{s['params_train'] / 1e6:.3f} M / {_fmt(_mega(s['params_deploy']))} M"),
        ("MACs train / deploy", f"{s['macs_train'] / 1e6:.2f} M / {_fmt(_mega(s['macs_deploy']), '.2f')} M "
                                f"({s['img_size']} px)"),
        ("time", f"{s['seconds']:.0f} s"),
        ("deploy weights", s["deploy_weights"] or "-"),
        ("plot", s["plot"] or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


def train(cfg: TrainConfig, *, on_step: StepCallback | None = None) -> dict[str, Any]:
    """Train as ``cfg`` says; returns the summary (also written to ``OUT/summary.json``), or on SIGTERM/SIGINT
    ``{"status": "interrupted", "exit_code": 143|130, "checkpoint": ...}`` after saving a checkpoint.

    ``on_step`` is called after every optimiser step with ``{step, epoch, loss, lr, act_learn, img_per_s}``.
    Under torchrun (WORLD_SIZE > 1) each process calls this; it sets up and tears down the process group.
    """
    if not cfg.output:
        raise ConfigError("no output folder: pass --output DIR")
    dist, device = setup_distributed(cfg.device)
    threads = torch.get_num_threads()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    try:
        return _Trainer(cfg, dist, device, on_step).fit()
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
    return int(train(cfg).get("exit_code", 0))
