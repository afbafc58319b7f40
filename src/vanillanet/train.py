"""Training: ``vanillanet train`` / ``train(cfg)``, one process or DDP under torchrun, with deep training.

This module holds the run together; its parts live in ``training/``: ``build_run`` (``training/builders.py``) builds
them from the config, ``train_one_epoch`` and ``end_epoch`` (``training/loop.py``) run the epochs on the step of
``training/step.py``, ``Checkpointing`` (``training/checkpointing.py``) decides where the run starts, when it
saves and what happens on divergence, ``RunFolder`` (``training/run_folder.py``) owns what is written, and
``finish_run`` converts the evaluated model to the deploy form, checks that every validation prediction is
unchanged and writes the outputs.

Resuming is exact: batch order and augmentation depend only on (seed, epoch, batch), and every other RNG state
travels in the checkpoint.
"""

from __future__ import annotations

import argparse
import contextlib
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as tdist
import yaml

from .training.builders import Run, build_run
from .training.checkpointing import start_point
from .training.config import (
    TrainConfig,
    add_config_arguments,
    config_from_args,
    config_to_dict,
    list_recipes,
    validate,
)
from .training.evaluation import deploy_form, validate_model
from .training.loop import Data, Log, end_epoch, train_one_epoch
from .training.run_folder import RunFolder
from .training.runtime import StopSignal
from .training.state import TrainState
from .util import validation
from .util.devices import DistInfo, end_distributed, num_threads, setup_distributed
from .util.errors import ConfigError, NonFiniteLossError
from .util.integrity import state_hash

__all__ = ["add_cli", "train"]

StepCallback = Callable[[dict[str, Any]], None]


# ---- finish ------------------------------------------------------------------------------------------------------
def finish_run(state: TrainState, run: Run, cfg: TrainConfig) -> dict[str, Any]:
    """Convert the evaluated model to the deploy form, check it on the validation set in fp32, write the deploy
    weights, the plot and ``summary.json``; returns the summary. A model without a deploy form (``deploy_form``)
    gets null deploy fields in the summary and n/a in the table."""
    final, data, dist, log = state.eval_model, run.data, run.report.dist, run.report.log
    run.checkpoints.check_sound(state, "by the end of training")
    deploy = deploy_form(final, log)
    # fp32: the agreement is about the conversion only
    ev = validate_model(final, data.val_loader, run.parts, dist, deploy=deploy, amp=False)
    if not all(math.isfinite(ev[k]) for k in ("loss", "top1", "deploy_top1") if ev.get(k) is not None):
        raise NonFiniteLossError(
            f"the final {'EMA ' if state.ema is not None else ''}model gives non-finite outputs on the validation "
            f"set (loss {ev['loss']}): the training diverged; nothing was written (the checkpoints are kept): lower "
            "the lr and continue from an earlier checkpoint"
            + (" (or check model_ema_decay)" if state.ema is not None else ""))
    state.good_checkpoint = state.last_checkpoint
    if deploy is not None and ev["deploy_agreement"] < 1.0:
        log(f"warning: the deploy model changes {100 * (1 - ev['deploy_agreement']):.3f}% of predictions")
    hashes = None
    if dist.enabled:
        hashes = [None] * dist.world_size
        models = [state.model] + ([state.ema.module] if state.ema is not None else [])
        tdist.all_gather_object(hashes, state_hash(*(m.state_dict() for m in models)))
    if not dist.main:
        return dict(status="completed", rank=dist.rank)
    complexity, outputs = _write_outputs(final, deploy, ev, run, cfg)
    summary = dict(
        status="completed", model=cfg.model, data=cfg.data, num_classes=len(data.classes),
        img_size=data.preprocess.img_size, epochs=cfg.epochs, steps=state.step,
        world_size=dist.world_size, evaluated="ema" if state.ema else "model",
        test_top1=ev["top1"], test_top5=ev["top5"], test_loss=ev["loss"], test_images=ev["images"],
        deploy_test_top1=ev.get("deploy_top1"), deploy_agreement=ev.get("deploy_agreement"),
        best_top1=state.best_top1, best_epoch=state.best_epoch, act_learn=run.deep.value,
        seconds=state.elapsed(), **complexity,
        checkpoint=str(state.last_checkpoint) if state.last_checkpoint else None, **outputs,
    )
    if hashes is not None:
        summary.update(rank_weight_hashes=hashes, ranks_in_sync=len(set(hashes)) == 1)
    run.checkpoints.folder.write_summary(summary)
    log(_summary_table(summary))
    return summary


def _write_outputs(final: torch.nn.Module, deploy: torch.nn.Module | None, ev: dict[str, Any], run: Run,
                   cfg: TrainConfig) -> tuple[dict[str, Any], dict[str, Any]]:
    """Write the deploy weights and the plot (main process); returns the models' complexity and the paths of the
    outputs, for the summary."""
    from .complexity import count_macs, count_params
    from .model.checkpoint_files import save_weights

    folder, pre = run.checkpoints.folder, run.data.preprocess
    deploy_path = folder.path / "model_deploy.safetensors" if deploy is not None else None
    if deploy is not None:
        save_weights(deploy.cpu(), deploy_path, class_names=run.data.classes,
                     extra_meta=dict(top1=ev["deploy_top1"], dataset=cfg.data, trained_by="vanillanet train",
                                     **pre.as_meta()))
    size = (cfg.in_chans, pre.img_size, pre.img_size)
    cx = dict(params_train=count_params(final), params_deploy=count_params(deploy) if deploy else None,
              macs_train=count_macs(final, size), macs_deploy=count_macs(deploy, size) if deploy else None)
    plot = folder.path / "training.png"
    try:
        from .training.plots import plot_training

        plot_training(folder.metrics_path, plot)
    except ImportError as err:
        run.report.log(f"no plot ({err}); pip install matplotlib")
        plot = None
    best = folder.path / "best.pth"
    return cx, dict(best_checkpoint=str(best) if best.is_file() else None,
                    deploy_weights=str(deploy_path) if deploy_path else None, plot=str(plot) if plot else None,
                    metrics=str(folder.metrics_path), config=str(folder.path / "config.yaml"))


def _format_scaled(value: float | None, scale: float, spec: str) -> str:
    """``value * scale`` formatted as ``spec``, or the text n/a for None (no deploy form)."""
    return "n/a" if value is None else format(value * scale, spec)


def _summary_table(s: dict[str, Any]) -> str:
    rows = [
        ("best top-1 (epoch)", f"{100 * s['best_top1']:.2f}% ({s['best_epoch']})"),
        ("final top-1, train form", f"{100 * s['test_top1']:.2f}%"),
        ("final top-1, deploy form", f"{_format_scaled(s['deploy_test_top1'], 100, '.2f')}%"),
        ("identical predictions", f"{_format_scaled(s['deploy_agreement'], 100, '.2f')}% of {s['test_images']}"),
        ("params train / deploy",
         f"{s['params_train'] / 1e6:.3f} M / {_format_scaled(s['params_deploy'], 1e-6, '.3f')} M"),
        ("MACs train / deploy", f"{s['macs_train'] / 1e6:.2f} M / {_format_scaled(s['macs_deploy'], 1e-6, '.2f')} M "
                                f"({s['img_size']} px)"),
        ("time", f"{s['seconds']:.0f} s"),
        ("deploy weights", s["deploy_weights"] or "-"),
        ("plot", s["plot"] or "-"),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v}" for k, v in rows)


# ---- the run ----------------------------------------------------------------------------------------------------
def _run(cfg: TrainConfig, dist: DistInfo, device: torch.device, on_step: StepCallback | None) -> dict[str, Any]:
    log = Log(dist.main)
    folder = RunFolder(cfg.output, log)
    with folder.lock() if dist.main else contextlib.nullcontext():
        start = start_point(folder, cfg.resume, dist)
        state, run = build_run(cfg, dist, device, folder, log, on_step)
        if start:
            run.checkpoints.resume(state, Path(start), run.data.micro_per_epoch, run.deep)
        elif dist.main:
            folder.reset_metrics()
        if dist.main:
            folder.write_config(config_to_dict(cfg))
        log(f"training {cfg.model} (width x{cfg.width_mult:g}, {len(run.data.classes)} classes, "
            f"{run.data.preprocess.img_size} px) on {cfg.data}: {cfg.epochs} epochs x {run.data.steps_per_epoch} "
            f"steps, effective batch {run.eff_batch}, {dist.world_size} process(es) on {device.type}")
        if not start:
            run.deep.start(0)
        try:
            with StopSignal() as stop:
                for epoch in range(state.start_epoch, cfg.epochs):
                    start_batch = state.start_batch if epoch == state.start_epoch else 0
                    parts = (state, run.parts, run.data, run.deep, run.checkpoints, run.report)
                    stats = train_one_epoch(*parts, epoch, start_batch, stop)
                    if stats is None:
                        name = "SIGTERM" if stop.exit_code == 143 else "SIGINT"
                        log(f"{name}: saved {state.last_checkpoint} at step {state.step}; continue with --resume "
                            f"{state.last_checkpoint} (or --resume auto)")
                        return dict(status="interrupted", signal=name, exit_code=stop.exit_code, step=state.step,
                                    checkpoint=str(state.last_checkpoint) if state.last_checkpoint else None)
                    end_epoch(*parts, epoch, stats)
            return finish_run(state, run, cfg)
        finally:
            _shutdown_workers(run.data)


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
    try:
        with num_threads(cfg.threads):
            return _run(cfg, dist, device, on_step)
    finally:
        end_distributed(dist)


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
