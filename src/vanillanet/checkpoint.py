"""Checkpoints: load every supported layout safely, save ours atomically, convert to the deploy form.

Supported inputs (detected from the content, not the file name):

- the original training files: ``{'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'}`` (the EMA weights
  are preferred, as the released files are evaluated through them), converted deploy files ``{'model': ...}``,
  bare state_dicts, DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, timm's ``state_dict(_ema)``;
- OpenMixup files ``{'state_dict', 'meta'}`` with ``backbone.`` / ``head.`` key prefixes;
- ours: ``.safetensors`` with metadata, ``.pth`` holding ``{'model', 'meta'}``, and the training checkpoints of
  ``vanillanet train`` (original layout plus extras such as ``act_learn``, ``class_names`` and ``arch``).

The form (train or deploy), ``act_num``, ``in_chans``, ``num_classes`` and the widths are read from the tensor
shapes, so a file fits a model or gets a one-line ``CheckpointError`` naming the cause and the fix. Pickles are
loaded with ``weights_only=True`` and only ``argparse.Namespace`` allow-listed; anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import pickle
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from .errors import CheckpointError, ConfigError, ConversionError
from .models import MODEL_OPTIONS, SHORTCUT_REFUSAL, VARIANTS, VanillaNet
from .reparam import conversion_error, reparameterize_model

__all__ = [
    "LoadReport",
    "WeightsInfo",
    "check_model_name",
    "convert_checkpoint",
    "create_model",
    "filter_state_dict",
    "infer_weights_info",
    "load_checkpoint_file",
    "load_weights",
    "match_variants",
    "read_class_names",
    "save_atomic",
    "save_weights",
    "write_atomic",
]

log = logging.getLogger("vanillanet")

FORMAT_NAME = "vanillanet"
FORMAT_VERSION = 1
_EMA_KEYS = ("model_ema", "state_dict_ema")
_PLAIN_KEYS = ("model", "state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_OPENMIXUP_PREFIXES = ("backbone.", "head.")
# Key layouts: "train" (deep training), "single" (train form without deep training: deep_training=False), "deploy".
_HEAD_PREFIXES = {"train": ("cls1.2.", "cls1.3.", "cls2.0."), "single": ("cls.2.",), "deploy": ("cls.2.",)}
_STEM_CONV = {"train": "stem1.0.weight", "single": "stem.0.0.weight", "deploy": "stem.0.weight"}
_STEM_ACT = {"train": "stem2.2.weight", "single": "stem.1.weight", "deploy": "stem.1.weight"}
_BLOCK_CONV = {"train": "stages.{}.conv2.0.weight", "single": "stages.{}.conv.0.weight",
               "deploy": "stages.{}.conv.weight"}
_CLASSIFIER = {"train": "cls2.0.weight", "single": "cls.2.weight", "deploy": "cls.2.weight"}


def _model_layout(model: VanillaNet) -> str:
    return "deploy" if model.deploy else "train" if model.deep_training else "single"


# ---- what a state_dict holds ----------------------------------------------------------------------------------
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


def match_variants(dims: tuple[int, ...]) -> list[tuple[str, float]]:
    """Registered variants whose widths, scaled uniformly (``width_mult``), give ``dims``: [(name, width_mult)]."""
    found = []
    for name, spec in VARIANTS.items():
        if len(spec.dims) != len(dims):
            continue
        mult = dims[0] / spec.dims[0]
        if all(max(1, int(round(d * mult))) == got for d, got in zip(spec.dims, dims)):
            found.append((name, mult))
    return found


def _describe(dims: tuple[int, ...]) -> str:
    matches = match_variants(dims)
    if not matches:
        return f"a custom VanillaNet with dims {list(dims)}"
    exact = [name for name, mult in matches if mult == 1]
    if exact:
        return " or ".join(exact)
    name, mult = matches[0]
    return f"{name} with width_mult {mult:g}"


def _fix_for(dims: tuple[int, ...]) -> str:
    matches = match_variants(dims)
    if not matches:
        return "build VanillaNet(dims=..., strides=...) for it"
    return f"create {matches[0][0]} instead"


def _infer_variant(info: WeightsInfo, meta: Mapping[str, Any], where: str) -> str:
    """The variant name from the file's metadata, else from the widths; refuses when pooling makes it ambiguous."""
    recorded = meta.get("architecture")
    if recorded in VARIANTS:
        return recorded
    matches = match_variants(info.dims)
    if not matches:
        raise CheckpointError(f"{where} holds {_describe(info.dims)}, which is no registered variant: build "
                              "VanillaNet(dims=..., strides=...) yourself and use load_weights()")
    shapes = {(VARIANTS[n].strides, VARIANTS[n].ada_pool) for n, _ in matches}
    if len(shapes) > 1:
        names = " and ".join(n for n, _ in matches)
        raise CheckpointError(f"{where} fits {names}, which differ only in pooling (no weights tell them apart): "
                              "name the model explicitly (--model NAME)")
    return min(matches, key=lambda m: abs(m[1] - 1))[0]


# ---- reading files --------------------------------------------------------------------------------------------
def _kind_of(head: bytes) -> str:
    for magic, kind in ((b"\x89PNG", "a PNG image"), (b"\xff\xd8\xff", "a JPEG image"), (b"\x1f\x8b", "gzip data"),
                        (b"%PDF", "a PDF document"), (b"\x93NUMPY", "a NumPy array")):
        if head.startswith(magic):
            return kind
    try:
        head.decode("utf-8")
    except UnicodeDecodeError:
        return "an unknown binary file"
    return "a text file"


def _first_line(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's are long and span lines)."""
    text = str(err).strip().splitlines()
    return text[0].split(". ")[0][:120] if text else type(err).__name__


def _read_raw(path: Path) -> tuple[Any, str, dict[str, str]]:
    """(object, format, safetensors metadata) of a file, loaded safely; one-line errors for every failure."""
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}: check the path")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder, not a checkpoint: pass the .pth or .safetensors file inside it")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(16)
    if size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes): it was truncated; copy or download it again")
    if head[8:9] == b"{":  # safetensors: 8-byte little-endian header length, then a JSON header
        from safetensors import safe_open

        if 8 + int.from_bytes(head[:8], "little") > size:
            raise CheckpointError(f"checkpoint {path} is truncated ({size} bytes, shorter than its safetensors "
                                  "header): copy or download it again")
        try:
            with safe_open(str(path), framework="pt") as f:
                tensors = {k: f.get_tensor(k) for k in f.keys()}
                return tensors, "safetensors", dict(f.metadata() or {})
        except Exception as err:  # safetensors raises its own error types for every kind of damage
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(err)}): copy or "
                                  "download it again") from err
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a checkpoint (it looks like {_kind_of(head)}): pass a PyTorch "
                              ".pth/.pt or a .safetensors file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True), "pth", {}
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_first_line(err)}): copy or "
                                  "download it again") from err
        try:
            unsafe = [g for g in torch.serialization.get_unsafe_globals_in_checkpoint(path)
                      if g != "argparse.Namespace"]
        except Exception:  # legacy (non-zip) files cannot be scanned
            unsafe = []
        what = ", ".join(unsafe) if unsafe else "objects other than tensors and argparse.Namespace"
        raise CheckpointError(f"{path} contains pickled {what}, which could run code when loaded: refusing it; "
                              "if you trust the file, re-save only its state_dict (tensors) and load that") from err
    except (RuntimeError, EOFError, KeyError, ValueError, OSError) as err:
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({size} bytes; {_first_line(err)}): copy "
                              "or download it again") from err


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def _select_state_dict(obj: Any, use_ema: bool, where: str) -> tuple[Mapping[str, torch.Tensor], str | None]:
    """The weights inside a checkpoint dict: EMA first when ``use_ema`` (as the released files are evaluated)."""
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a dict of weights: pass a checkpoint "
                              "saved from a model's state_dict")
    if _is_state_dict(obj):
        return obj, None
    order = _EMA_KEYS + _PLAIN_KEYS if use_ema else _PLAIN_KEYS + _EMA_KEYS
    for key in order:
        value = obj.get(key)
        if isinstance(value, Mapping) and _is_state_dict(value):
            return value, key
    keys = ", ".join(map(str, list(obj)[:6])) or "none"
    raise CheckpointError(f"{where} holds no weights (top-level keys: {keys}): expected 'model', 'model_ema', "
                          "'state_dict' or a plain state_dict")


def _normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Strip DDP / torch.compile wrappers and OpenMixup's ``backbone.``/``head.``; returns (dict, is_openmixup)."""
    openmixup = any(k.startswith("backbone.") for k in state_dict)
    out = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in _WRAPPER_PREFIXES + (_OPENMIXUP_PREFIXES if openmixup else ()):
                if key.startswith(prefix):
                    key, changed = key[len(prefix):], True
        out[key] = value
    return out, openmixup


def _parse_meta_value(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def _meta_from(obj: Any, fmt: str, st_meta: dict[str, str]) -> dict[str, Any]:
    """What a file records besides the weights (ours: everything; original: args; ours-training: extras)."""
    if fmt == "safetensors":
        return {k: _parse_meta_value(v) for k, v in st_meta.items()}
    if not isinstance(obj, Mapping):
        return {}
    meta: dict[str, Any] = {}
    if isinstance(obj.get("meta"), Mapping) and obj["meta"].get("format") == FORMAT_NAME:
        meta.update(obj["meta"])
    args = obj.get("args")
    if isinstance(args, argparse.Namespace):
        meta["args"] = vars(args)
        if getattr(args, "model", None) in VARIANTS:
            meta.setdefault("architecture", args.model)
    arch = obj.get("arch")
    if isinstance(arch, Mapping) and arch.get("name"):
        meta.setdefault("architecture", arch["name"])
        kwargs = arch.get("kwargs") if isinstance(arch.get("kwargs"), Mapping) else {}
        for key in MODEL_OPTIONS:  # training checkpoints record the ablation options they were built with
            if key in kwargs:
                meta.setdefault(key, kwargs[key])
    for key in ("epoch", "step", "act_learn", "class_names", "config"):
        if key in obj and obj[key] is not None:
            meta.setdefault(key, obj[key])
    return meta


def load_checkpoint_file(path: str | Path, *, use_ema: bool = True) -> dict[str, Any]:
    """Read any supported checkpoint safely -> ``{"state_dict": ..., "meta": {...}}`` in our key layout.

    ``meta`` holds what the file records (architecture, act_learn, class_names, epoch, the original ``args``...)
    plus ``path``, ``format`` ('pth'/'safetensors'), ``source`` (the entry used, e.g. 'model_ema') and ``layout``.
    """
    path = Path(path)
    obj, fmt, st_meta = _read_raw(path)
    state_dict, source = _select_state_dict(obj, use_ema, str(path))
    state_dict, openmixup = _normalise_keys(state_dict)
    meta = _meta_from(obj, fmt, st_meta)
    layout = ("openmixup" if openmixup else "vanillanet" if meta.get("format") == FORMAT_NAME
              else "original" if source in ("model", "model_ema") else "state_dict")
    meta.update(path=str(path), format=fmt, source=source, layout=layout)
    return {"state_dict": state_dict, "meta": meta}


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
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return cfg.get("architecture") or _describe(model.dims)


def _check_compatible(info: WeightsInfo, meta: Mapping[str, Any], model: VanillaNet, where: str,
                      reset_head: bool, adapt_in_chans: bool) -> None:
    """One-line errors for every way the file cannot fit ``model``."""
    if info.dims != tuple(model.dims):
        raise CheckpointError(f"{where} holds weights for {_describe(info.dims)} ({len(info.dims) - 1} blocks, dims "
                              f"{list(info.dims)}) but the model is {_model_name(model)} (dims {list(model.dims)}): "
                              f"{_fix_for(info.dims)}")
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
    """Map a normalised state_dict onto exactly ``model``'s keys (conversion, head reset, in_chans adaptation)."""
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


def _load_into(model: VanillaNet, ckpt: Mapping[str, Any], *, reset_head: bool) -> LoadReport:
    meta = ckpt["meta"]
    state_dict, report = _fit(ckpt["state_dict"], meta, model, meta["path"], reset_head=reset_head)
    model.load_state_dict(state_dict, strict=True)
    if not model.deploy and report.act_learn is not None:
        model.act_learn = report.act_learn
    return report


def load_weights(model: VanillaNet, path: str | Path, *, use_ema: bool = True, reset_head: bool = True) -> LoadReport:
    """Load any supported checkpoint into ``model`` (strict key matching after mapping the layout).

    A train-form file is converted when ``model`` is in deploy form. With another number of classes the head is
    re-initialised and one line is logged (``reset_head=False`` raises instead). A recorded act_learn is applied.
    """
    return _load_into(model, load_checkpoint_file(path, use_ema=use_ema), reset_head=reset_head)


def _file_meta(path: Path) -> dict[str, Any]:
    """What a checkpoint file records besides its weights, without reading the tensors into memory."""
    if path.suffix == ".safetensors":  # timm, too, picks the reader by the suffix
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return _meta_from(None, "safetensors", dict(f.metadata() or {}))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        obj = _read_raw(path)[0]
    return _meta_from(obj, "pth", {})


def _pretrained_file(model: VanillaNet) -> Path | None:
    """The local file timm loaded for ``model`` (its 'file' source), or None for URLs, the hub and state_dicts."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    if cfg.get("state_dict") is not None or cfg.get("source") in ("hf-hub", "local-dir") or not cfg.get("file"):
        return None
    path = Path(cfg["file"])
    return path if path.is_file() else None


def filter_state_dict(obj: Mapping[str, Any], model: VanillaNet, *, use_ema: bool = True) -> dict[str, torch.Tensor]:
    """timm's pretrained hook: any supported layout (already unpacked by timm, or a whole checkpoint dict) mapped
    onto ``model``'s keys. A different ``in_chans`` is adapted the timm way; another class count resets the head.

    The recorded act_learn is applied to a train-form model, and a train-form file recorded before the end of deep
    training (act_learn < 1) is refused for a deploy model. timm hands over the whole checkpoint dict for URLs and
    ``pretrained_cfg['state_dict']``, so act_learn is read from it; for a local ``file`` (.pth or .safetensors) timm
    passes only the unpacked weights, so the file's metadata is read again (header / memory-mapped, cheap). For
    Hugging Face hub weights timm passes bare tensors and no file name: no act_learn is known and 1 is assumed.
    """
    state_dict, source = _select_state_dict(obj, use_ema, "the pretrained weights")
    state_dict, openmixup = _normalise_keys(state_dict)
    path = None if source else _pretrained_file(model)
    meta = _meta_from(obj, "pth", {}) if source else _file_meta(path) if path else {}
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


def check_model_name(name: str) -> None:
    """One-line ``ConfigError`` listing the valid names unless ``name`` is a registered variant."""
    if name not in VARIANTS:
        raise ConfigError(f"unknown model {name!r}: choose one of {', '.join(VARIANTS)} (see `vanillanet list`)")


def _create_from(name: str | None, ckpt: Mapping[str, Any], num_classes: int | None, **kwargs: Any) -> VanillaNet:
    import timm

    meta = ckpt["meta"]
    info = infer_weights_info(ckpt["state_dict"], meta["path"])
    name = name or _infer_variant(info, meta, meta["path"])
    check_model_name(name)
    if "dims" not in kwargs and "width_mult" not in kwargs:
        if name not in {n for n, _ in match_variants(info.dims)}:
            raise CheckpointError(f"{meta['path']} holds weights for {_describe(info.dims)} (dims {list(info.dims)}), "
                                  f"not {name}: {_fix_for(info.dims)}")
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
    model = timm.create_model(name, num_classes=info.num_classes if num_classes is None else num_classes, **kwargs)
    _load_into(model, ckpt, reset_head=True)
    return model


def create_model(name: str | None, checkpoint: str | Path | None = None, *, num_classes: int | None = None,
                 use_ema: bool = True, **kwargs: Any) -> VanillaNet:
    """Build variant ``name`` and load ``checkpoint`` into it.

    The form (train/deploy), act_num, in_chans, widths and class count come from the file unless given;
    ``deploy=True`` with a train-form file converts it. Another ``num_classes`` loads all but the head and logs
    one line. ``name=None`` infers the variant from the file. Without a checkpoint: a freshly initialised model.
    """
    if name is not None:
        check_model_name(name)
    if checkpoint is None:
        if name is None:
            raise ConfigError("create_model needs a model name or a checkpoint")
        import timm

        return timm.create_model(name, **({} if num_classes is None else {"num_classes": num_classes}), **kwargs)
    return _create_from(name, load_checkpoint_file(checkpoint, use_ema=use_ema), num_classes, **kwargs)


def read_class_names(path: str | Path) -> list[str] | None:
    """The class names a checkpoint records (ours and our training checkpoints), or None."""
    names = load_checkpoint_file(path)["meta"].get("class_names")
    return list(names) if names else None


# ---- writing --------------------------------------------------------------------------------------------------
def write_atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Run ``write(temporary_path)`` in the same folder, then ``os.replace`` onto ``path``: readers never see half
    a file, a failure leaves the old one, and the result gets the usual umask mode (mkstemp would give 0600)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp"
    try:
        tmp.touch()  # the mode a plain file gets here (umask); some writers (safetensors) create files 0600
        mode = tmp.stat().st_mode & 0o777
        write(str(tmp))
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def save_atomic(obj: Any, path: str | Path) -> Path:
    """``torch.save`` written atomically (for training checkpoints)."""
    return write_atomic(path, lambda tmp: torch.save(obj, tmp))


def model_meta(model: VanillaNet) -> dict[str, Any]:
    """The architecture record written into our checkpoints."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    name = cfg.get("architecture")
    if name not in VARIANTS:
        fits = [n for n, _ in match_variants(model.dims)
                if (VARIANTS[n].strides, VARIANTS[n].ada_pool) == (tuple(model.strides), model.ada_pool)]
        name = fits[0] if fits else "custom"
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": name,
        "form": "deploy" if model.deploy else "train",
        "act_num": model.act_num,
        "num_classes": model.num_classes,
        "in_chans": model.in_chans,
        "dims": list(model.dims),
        "strides": list(model.strides),
        "ada_pool": list(model.ada_pool) if model.ada_pool is not None else None,
        "act_learn": model.act_learn,
        **{key: getattr(model, key) for key in MODEL_OPTIONS},
    }


def save_weights(model: VanillaNet, path: str | Path, *, class_names: list[str] | None = None,
                 extra_meta: Mapping[str, Any] | None = None) -> Path:
    """Save ``model``'s weights with metadata: ``.safetensors`` (metadata as JSON strings) or ``.pth``
    (``{'model': state_dict, 'meta': {...}}``, loadable with weights_only=True). Written atomically."""
    path = Path(path)
    meta = {**model_meta(model), **(dict(extra_meta) if extra_meta else {})}
    if class_names is not None:
        meta["class_names"] = list(class_names)
    meta = json.loads(json.dumps(meta))  # plain types only, so weights_only loading accepts it
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        text_meta = {k: json.dumps(v) for k, v in meta.items()}
        return write_atomic(path, lambda tmp: save_file(state_dict, tmp, metadata=text_meta))
    if path.suffix in (".pth", ".pt"):
        return save_atomic({"model": state_dict, "meta": meta}, path)
    raise CheckpointError(f"cannot save to {path}: use a .safetensors or .pth file name")


# ---- conversion ------------------------------------------------------------------------------------------------
@torch.no_grad()
def convert_checkpoint(src: str | Path, dst: str | Path, *, model_name: str | None = None, use_ema: bool = True,
                       img_size: int = 224, tol: float = 1e-4, seed: int = 0) -> dict[str, Any]:
    """Any supported checkpoint -> a deploy-form ``.safetensors`` file, written only if the fp32 outputs of the
    train and deploy forms agree (eval mode, random input, max relative error <= ``tol``)."""
    dst = Path(dst)
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"the output {dst} must end in .safetensors (the deploy format)")
    ckpt = load_checkpoint_file(src, use_ema=use_ema)
    model = _create_from(model_name, ckpt, None).float().eval()
    form = "deploy" if model.deploy else "train"
    if model.deploy:
        deploy, err = model, 0.0
    else:
        try:
            deploy = reparameterize_model(model)
        except ConversionError as err:
            raise ConversionError(f"{src}: {err}") from None
        gen = torch.Generator().manual_seed(seed)
        x = torch.randn(1, model.in_chans, img_size, img_size, generator=gen)
        err = conversion_error(model, x, deploy)
        if not err <= tol:
            raise ConversionError(f"{src}: deploy and train outputs differ (relative error {err:.3g} > {tol:g}); "
                                  "not written: check the act_learn and BatchNorm statistics of the checkpoint")
    save_weights(deploy, dst, class_names=ckpt["meta"].get("class_names"),
                 extra_meta={"converted_from": Path(src).name, "conversion_rel_error": err})
    return {"architecture": model_meta(deploy)["architecture"], "source": ckpt["meta"]["source"],
            "layout": ckpt["meta"]["layout"], "input_form": form, "rel_error": err,
            "params": sum(p.numel() for p in deploy.parameters()), "output": str(dst)}


def _convert_command(args: argparse.Namespace) -> int:
    result = convert_checkpoint(args.input, args.output, model_name=args.model, use_ema=not args.no_ema,
                                img_size=args.img_size)
    entry = f" '{result['source']}'" if result["source"] else ""
    if result["input_form"] == "deploy":
        check = "input already in deploy form, weights copied unchanged"
    else:
        check = f"train vs deploy max relative error {result['rel_error']:.2e} (fp32, {args.img_size}px random input)"
    print(f"{args.input}{entry} ({result['layout']}, {result['input_form']} form) -> {result['output']}: "
          f"{result['architecture']} deploy form, {result['params'] / 1e6:.2f}M params; {check}")
    return 0


def add_cli(parser: argparse.ArgumentParser, command: str) -> None:
    """``vanillanet convert IN OUT [--model NAME]``."""
    parser.add_argument("input", help="checkpoint: original (.pth), OpenMixup, ours (.pth/.safetensors), any form")
    parser.add_argument("output", help="deploy-form .safetensors file to write")
    parser.add_argument("--model", default=None, help="variant name (default: inferred from the file)")
    parser.add_argument("--no-ema", action="store_true", help="use the 'model' weights, not 'model_ema'")
    parser.add_argument("--img-size", type=int, default=224, help="input size of the output check (default 224)")
    parser.set_defaults(func=_convert_command)
