"""Fitting checkpoint weights to a model instance: what architecture a state_dict implies, whether it fits a
given model, converting a train-form file for a deploy model, re-initialising the head for fine-tuning.

Every way a file cannot fit a model is a one-line ``CheckpointError`` naming the cause and the fix. Reading and
writing files is ``checkpoint_files.py``'s job; this module works on the normalised ``{"state_dict", "meta"}`` records
it returns.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ..util.errors import CheckpointError, ConversionError
from ..util.integrity import describe, unsound
from .ablation import SHORTCUT_REFUSAL
from .checkpoint_files import (
    file_meta,
    load_checkpoint_file,
    meta_from,
    normalise_keys,
    select_state_dict,
    verify_hub_folder,
)
from .network import VanillaNet
from .variants import VARIANTS, describe_dims, match_variants, variant_of

__all__ = ["LoadReport", "WeightsInfo", "architecture_kwargs", "filter_state_dict", "infer_weights_info",
           "load_into", "load_weights"]

log = logging.getLogger("vanillanet")

# Key layouts: "train" (deep training), "single" (train form without deep training: deep_training=False), "deploy".
_HEAD_PREFIXES = {"train": ("cls1.2.", "cls1.3.", "cls2.0."), "single": ("cls.2.",), "deploy": ("cls.2.",)}
_STEM_CONV = {"train": "stem1.0.weight", "single": "stem.0.0.weight", "deploy": "stem.0.weight"}
_STEM_ACT = {"train": "stem2.2.weight", "single": "stem.1.weight", "deploy": "stem.1.weight"}
_BLOCK_CONV = {"train": "stages.{}.conv2.0.weight", "single": "stages.{}.conv.0.weight",
               "deploy": "stages.{}.conv.weight"}
_CLASSIFIER = {"train": "cls2.0.weight", "single": "cls.2.weight", "deploy": "cls.2.weight"}


def _model_layout(model: VanillaNet) -> str:
    return "deploy" if model.deploy else "train" if model.deep_training else "single"


@dataclass(frozen=True)
class WeightsInfo:
    """The architecture a VanillaNet state_dict implies, read from its keys and tensor shapes."""

    form: str  # "train" or "deploy"
    dims: tuple[int, ...]
    act_num: int | None  # None without the series activation (then the weights do not tell)
    in_chans: int
    num_classes: int
    deep_training: bool = True  # train form only: False = one conv + BN per layer (the deploy form has no trace)
    series_act: bool = True


def infer_weights_info(state_dict: Mapping[str, torch.Tensor], where: str = "the checkpoint") -> WeightsInfo:
    """Form from the keys (``stem1.*`` = train, ``stem.0.0.*`` = train without deep training, ``stem.*`` = deploy);
    widths from the layers' conv outputs; series activation from its ``act.weight`` keys and act_num from their
    kernel size."""
    layout = next((f for f, key in _STEM_CONV.items() if key in state_dict), None)
    if layout is None:
        sample = ", ".join(list(state_dict)[:3]) or "none"
        raise CheckpointError(f"{where} holds no VanillaNet weights (no 'stem1.0.weight' or 'stem.0.weight'; keys "
                              f"start with {sample}): pass a VanillaNet checkpoint")
    blocks = (k for k in state_dict if k.endswith(".act.weight") or re.fullmatch(_BLOCK_CONV[layout].format(r"\d+"), k))
    for key in (_STEM_CONV[layout], _STEM_ACT[layout], _CLASSIFIER[layout], *blocks):  # the architecture's sources
        if key in state_dict and state_dict[key].ndim != 4:
            raise CheckpointError(f"{where} is malformed: {key} has shape {tuple(state_dict[key].shape)}, not the 4-D "
                                  "shape of a convolution weight; pass an undamaged VanillaNet checkpoint")
    stem = state_dict[_STEM_CONV[layout]]
    dims = [int(stem.shape[0])]
    while _BLOCK_CONV[layout].format(len(dims) - 1) in state_dict:
        dims.append(int(state_dict[_BLOCK_CONV[layout].format(len(dims) - 1)].shape[0]))
    act = next((state_dict[k] for k in (_STEM_ACT[layout], "stages.0.act.weight") if k in state_dict), None)
    classifier = state_dict.get(_CLASSIFIER[layout])
    return WeightsInfo(form="train" if layout == "single" else layout, dims=tuple(dims),
                       act_num=(int(act.shape[-1]) - 1) // 2 if act is not None else None, in_chans=int(stem.shape[1]),
                       num_classes=int(classifier.shape[0]) if classifier is not None else 0,
                       deep_training=layout != "single", series_act=act is not None)


def _fix_for(dims: tuple[int, ...]) -> str:
    matches = match_variants(dims)
    if not matches:
        return "build VanillaNet(dims=..., strides=...) for it"
    return f"create {matches[0][0]} instead"


def infer_variant(info: WeightsInfo, meta: Mapping[str, Any], where: str) -> str:
    """The variant name from the file's metadata, else from the widths; refuses when pooling makes it ambiguous."""
    recorded = meta.get("architecture")
    if recorded in VARIANTS:
        return recorded
    matches = match_variants(info.dims)
    if not matches:
        raise CheckpointError(f"{where} holds {describe_dims(info.dims)}, which is no registered variant: build "
                              "VanillaNet(dims=..., strides=...) yourself and use load_weights()")
    shapes = {(VARIANTS[n].strides, VARIANTS[n].ada_pool) for n, _ in matches}
    if len(shapes) > 1:
        names = " and ".join(n for n, _ in matches)
        raise CheckpointError(f"{where} fits {names}, which differ only in pooling (no weights tell them apart): "
                              "name the model explicitly (--model NAME)")
    return min(matches, key=lambda m: abs(m[1] - 1))[0]


# ---- fitting weights to a model --------------------------------------------------------------------------------
@dataclass
class LoadReport:
    """What a load did: which entry of which file, whether it converted the form or re-initialised the head."""

    path: str
    source: str | None
    layout: str
    file_form: str
    model_form: str
    converted: bool = False
    head_reset: bool = False
    num_classes: int = 0  # of the file's head
    act_learn: float | None = None
    message: str | None = None


def _model_name(model: VanillaNet) -> str:
    name = variant_of(model)
    return name if name != "custom" else describe_dims(model.dims)


def _check_compatible(info: WeightsInfo, meta: Mapping[str, Any], model: VanillaNet, where: str,
                      reset_head: bool, adapt_in_chans: bool) -> None:
    """One-line errors for every way the file cannot fit ``model``."""
    if info.dims != tuple(model.dims):
        raise CheckpointError(f"{where} holds weights for {describe_dims(info.dims)} ({len(info.dims) - 1} blocks, "
                              f"dims {list(info.dims)}) but the model is {_model_name(model)} (dims "
                              f"{list(model.dims)}): {_fix_for(info.dims)}")
    recorded = meta.get("architecture")
    if meta.get("strides") is not None:
        strides, ada_pool = meta["strides"], meta.get("ada_pool")
    elif recorded in VARIANTS:
        strides, ada_pool = VARIANTS[recorded].strides, VARIANTS[recorded].ada_pool
    else:  # pooling has no weights: nothing to compare
        strides, ada_pool = model.strides, model.ada_pool
    if (list(strides), list(ada_pool or [])) != (list(model.strides), list(model.ada_pool or [])):
        raise CheckpointError(f"{where} was trained as {recorded} (strides {list(strides)}, ada_pool {ada_pool}) but "
                              f"the model has strides {list(model.strides)}, ada_pool {model.ada_pool}: create "
                              f"{recorded} instead")
    _check_options(info, meta, model, where)
    if info.series_act and info.act_num != model.act_num:
        k, mk = 2 * info.act_num + 1, 2 * model.act_num + 1
        raise CheckpointError(f"{where} has {k}x{k} activation kernels (act_num={info.act_num}) but the model has "
                              f"{mk}x{mk} (act_num={model.act_num}): build the model with act_num={info.act_num}")
    if info.in_chans != model.in_chans and not adapt_in_chans:
        raise CheckpointError(f"{where} expects {info.in_chans}-channel input but the model has in_chans="
                              f"{model.in_chans}: build the model with in_chans={info.in_chans}")
    if info.num_classes != model.num_classes and not reset_head:
        raise CheckpointError(f"{where} has a {info.num_classes}-class head but the model has {model.num_classes} "
                              f"classes: build the model with num_classes={info.num_classes}, or fine-tune "
                              "(reset_head=True re-initialises the head)")
    if info.form == "deploy" and not model.deploy:
        raise CheckpointError(f"{where} holds deploy-form (merged) weights, which cannot be split back into the "
                              "train form: build the model with deploy=True, or start from a train-form checkpoint")


def _check_options(info: WeightsInfo, meta: Mapping[str, Any], model: VanillaNet, where: str) -> None:
    """One-line errors when the file's ablation options (read from its keys, or its metadata for shortcuts, which
    leave no trace in the weights) differ from the model's."""
    if info.series_act != model.series_act:
        has = "has" if info.series_act else "has no"
        raise CheckpointError(f"{where} {has} series activation (act.weight keys) but the model was built with "
                              f"series_act={model.series_act}: build it with series_act={info.series_act}")
    if info.form == "train" and not model.deploy and info.deep_training != model.deep_training:
        how = "with" if info.deep_training else "without"
        raise CheckpointError(f"{where} was trained {how} deep training but the model was built with "
                              f"deep_training={model.deep_training}: build it with deep_training={info.deep_training}")
    shortcut = meta.get("shortcut")
    if shortcut and model.deploy:
        raise ConversionError(f"{where}: {SHORTCUT_REFUSAL}")
    if shortcut is not None and bool(shortcut) != model.shortcut:
        raise CheckpointError(f"{where} records shortcut={bool(shortcut)} but the model was built with "
                              f"shortcut={model.shortcut}: build it with shortcut={bool(shortcut)}")


def _check_keys(state_dict: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor], where: str) -> None:
    missing = [k for k in reference if k not in state_dict]
    unexpected = [k for k in state_dict if k not in reference]
    wrong = [k for k in reference if k in state_dict and state_dict[k].shape != reference[k].shape]
    if missing or unexpected or wrong:
        parts = [f"{label} {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
                 for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)) if keys]
        raise CheckpointError(f"{where} does not match the model's keys ({'; '.join(parts)}): pass a VanillaNet "
                              "checkpoint of this architecture")


def _convert_to_deploy(state_dict: dict[str, torch.Tensor], info: WeightsInfo, model: VanillaNet,
                       act_learn: float, where: str) -> dict[str, torch.Tensor]:
    """Build the file's train form, load it, re-parameterize, and return the deploy state_dict."""
    source = VanillaNet(in_chans=info.in_chans, num_classes=info.num_classes, dims=info.dims, strides=model.strides,
                        act_num=model.act_num if info.act_num is None else info.act_num, ada_pool=model.ada_pool,
                        deep_training=info.deep_training, series_act=info.series_act)
    _check_keys(state_dict, source.state_dict(), where)
    source.load_state_dict(state_dict, strict=True)
    source.act_learn = act_learn
    try:
        source.eval().reparameterize()
    except ConversionError as err:
        raise ConversionError(f"{where}: {err}") from err
    return source.state_dict()


def _fit(state_dict: dict[str, torch.Tensor], meta: Mapping[str, Any], model: VanillaNet, where: str, *,
         reset_head: bool, adapt_in_chans: bool = False) -> tuple[dict[str, torch.Tensor], LoadReport]:
    """Map a normalised state_dict onto exactly ``model``'s keys (conversion, head reset, in_chans adaptation);
    weights no usable model holds (NaN/inf, absurd magnitudes, negative BN variances) are refused here, so that
    eval, predict, export and convert name the file rather than blame a backend."""
    bad = unsound(("", state_dict))
    if bad:
        raise CheckpointError(f"{where} holds unusable weights ({describe(bad)}): the training diverged or the file "
                              "was damaged; use an earlier checkpoint")
    info = infer_weights_info(state_dict, where)
    _check_compatible(info, meta, model, where, reset_head, adapt_in_chans)
    model_form, model_layout = "deploy" if model.deploy else "train", _model_layout(model)
    act_learn = float(meta["act_learn"]) if meta.get("act_learn") is not None else None
    report = LoadReport(path=str(meta.get("path", where)), source=meta.get("source"), layout=meta.get("layout", "?"),
                        file_form=info.form, model_form=model_form, num_classes=info.num_classes,
                        act_learn=act_learn)
    if info.form == "train" and model.deploy:
        state_dict = _convert_to_deploy(state_dict, info, model, 1.0 if act_learn is None else act_learn, where)
        report.converted = True
    if info.in_chans != model.in_chans:  # only reached for timm's pretrained hook, which adapts the stem
        from timm.models import adapt_input_conv

        key = _STEM_CONV[model_layout]
        state_dict = dict(state_dict)
        state_dict[key] = adapt_input_conv(model.in_chans, state_dict[key])
        log.warning("%s: adapted the %d-channel stem to in_chans=%d", where, info.in_chans, model.in_chans)
    if info.num_classes != model.num_classes:
        head = _HEAD_PREFIXES[model_layout]
        state_dict = {k: v for k, v in state_dict.items() if not k.startswith(head)}
        if model.num_classes:
            model.reset_classifier(model.num_classes)
            fresh = model.state_dict()
            state_dict.update({k: v for k, v in fresh.items() if k.startswith(head)})
            report.head_reset = True
            report.message = (f"{where}: loaded all weights but the {info.num_classes}-class head "
                              f"({', '.join(p.rstrip('.') for p in head)}); the {model.num_classes}-class head is "
                              "freshly initialised for fine-tuning")
            log.warning(report.message)
    _check_keys(state_dict, model.state_dict(), where)
    return state_dict, report


def load_into(model: VanillaNet, ckpt: Mapping[str, Any], *, reset_head: bool) -> LoadReport:
    meta = ckpt["meta"]
    state_dict, report = _fit(ckpt["state_dict"], meta, model, meta["path"], reset_head=reset_head)
    model.load_state_dict(state_dict, strict=True)
    if not model.deploy and report.act_learn is not None:
        model.act_learn = report.act_learn
    return report


def load_weights(model: VanillaNet, path: str | Path, *, use_ema: bool = True,
                 reset_head: bool = True) -> LoadReport:
    """Load any supported checkpoint into ``model`` (strict key matching after mapping the layout).

    A train-form file is converted when ``model`` is in deploy form. With another number of classes the head is
    re-initialised and one line is logged (``reset_head=False`` raises instead). A recorded act_learn is applied.
    """
    return load_into(model, load_checkpoint_file(path, use_ema=use_ema), reset_head=reset_head)


def _pretrained_file(model: VanillaNet) -> Path | None:
    """The local file timm loaded for ``model`` (its 'file' source), or None for URLs, the hub and state_dicts."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("state_dict") is not None or cfg.get("source") in ("hf-hub", "local-dir") or not cfg.get("file"):
        return None
    path = Path(cfg["file"])
    return path if path.is_file() else None


def _verify_local_dir(model: VanillaNet, obj: Mapping[str, Any]) -> None:
    """timm's ``local-dir:FOLDER`` route read the folder's weights itself: check them and config.json against the
    folder's digest (the rule every loader of our files follows)."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("source") == "local-dir" and cfg.get("file") and Path(cfg["file"]).is_dir():
        verify_hub_folder(Path(cfg["file"]), obj)


def filter_state_dict(obj: Mapping[str, Any], model: VanillaNet, *,
                      use_ema: bool = True) -> dict[str, torch.Tensor]:
    """timm's pretrained hook: any supported layout (already unpacked by timm, or a whole checkpoint dict) mapped
    onto ``model``'s keys. A different ``in_chans`` is adapted the timm way; another class count resets the head.

    The recorded act_learn is applied to a train-form model, and a train-form file recorded before the end of deep
    training (act_learn < 1) is refused for a deploy model. timm hands over the whole checkpoint dict for URLs and
    ``pretrained_cfg['state_dict']``, so act_learn is read from it; for a local ``file`` (.pth or .safetensors) timm
    passes only the unpacked weights, so the file's metadata is read again (header / memory-mapped, cheap). For
    Hugging Face hub weights timm passes bare tensors and no file name: no act_learn is known and 1 is assumed.
    """
    _verify_local_dir(model, obj)
    state_dict, source = select_state_dict(obj, use_ema, "the pretrained weights")
    state_dict, openmixup = normalise_keys(state_dict)
    path = None if source else _pretrained_file(model)
    meta = meta_from(obj, "pth", {}) if source else file_meta(path) if path else {}
    meta.update(source=source, layout="openmixup" if openmixup else "state_dict")
    where = f"the pretrained weights {path}" if path else "the pretrained weights"
    fitted, report = _fit(state_dict, meta, model, where, reset_head=True, adapt_in_chans=True)
    if not model.deploy and report.act_learn is not None:
        model.act_learn = report.act_learn
    cfg = getattr(model, "pretrained_cfg", None)
    if isinstance(cfg, dict) and report.num_classes == model.num_classes != cfg.get("num_classes"):
        # timm drops the classifier when the config's class count differs from the model's; here the file's
        # head fits the model, so record its true class count and keep the trained head.
        cfg["num_classes"] = model.num_classes
    return fitted


def architecture_kwargs(name: str | None, ckpt: Mapping[str, Any],
                        kwargs: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(variant name, model kwargs) to build the model a checkpoint record holds: the name from the argument, the
    file's metadata or its widths; dims, act_num, in_chans, form and class count from the tensors unless given."""
    meta = ckpt["meta"]
    info = infer_weights_info(ckpt["state_dict"], meta["path"])
    name = name or infer_variant(info, meta, meta["path"])
    kwargs = dict(kwargs)
    if "dims" not in kwargs and "width_mult" not in kwargs:
        if name not in {n for n, _ in match_variants(info.dims)}:
            raise CheckpointError(f"{meta['path']} holds weights for {describe_dims(info.dims)} (dims "
                                  f"{list(info.dims)}), not {name}: {_fix_for(info.dims)}")
        kwargs["dims"] = info.dims
    if info.act_num is not None:
        kwargs.setdefault("act_num", info.act_num)
    kwargs.setdefault("in_chans", info.in_chans)
    kwargs.setdefault("deploy", info.form == "deploy")
    kwargs.setdefault("deep_training", info.deep_training)
    kwargs.setdefault("series_act", info.series_act)
    kwargs.setdefault("shortcut", bool(meta.get("shortcut", False)))  # files without the record: the original
    if kwargs["deploy"] and kwargs["shortcut"]:
        raise ConversionError(f"{meta['path']}: {SHORTCUT_REFUSAL}")
    if kwargs.get("num_classes") is None:
        kwargs["num_classes"] = info.num_classes
    return name, kwargs
