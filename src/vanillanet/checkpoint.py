"""Checkpoint files: read every supported layout safely, normalise it to our key layout, write ours atomically.

This module is file IO only: what is in a file and how to read and write it. Fitting weights to a model instance
(architecture inference, form conversion, head reset) lives in ``weights.py``; building a model from a name or a
file in ``registry.create_model``.

Supported inputs (detected from the content, not the file name):

- the original training files: ``{'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'}`` (the EMA weights
  are preferred, as the released files are evaluated through them), converted deploy files ``{'model': ...}``,
  bare state_dicts, DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, timm's ``state_dict(_ema)``;
- OpenMixup files ``{'state_dict', 'meta'}`` with ``backbone.`` / ``head.`` key prefixes;
- ours: ``.safetensors`` with metadata, ``.pth`` holding ``{'model', 'meta'}``, and the training checkpoints of
  ``vanillanet train`` (original layout plus extras such as ``act_learn``, ``class_names`` and ``arch``).

Pickles are loaded with ``weights_only=True`` and only ``argparse.Namespace`` allow-listed; anything else is refused.
"""

from __future__ import annotations

import argparse
import json
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import CheckpointError, first_line
from .fileio import save_atomic, write_atomic
from .models import MODEL_OPTIONS, VARIANTS, variant_of

__all__ = ["FORMAT_NAME", "file_meta", "load_checkpoint_file", "model_meta", "read_class_names", "read_raw",
           "read_training_checkpoint", "save_weights", "select_state_dict", "normalise_keys"]

FORMAT_NAME = "vanillanet"
FORMAT_VERSION = 1
_EMA_KEYS = ("model_ema", "state_dict_ema")
_PLAIN_KEYS = ("model", "state_dict")
_WRAPPER_PREFIXES = ("module.", "_orig_mod.")
_OPENMIXUP_PREFIXES = ("backbone.", "head.")


def _reason(err: BaseException) -> str:
    """The first sentence of an exception's message (torch's are long and span lines)."""
    return first_line(err, 120).split(". ")[0]


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


def read_raw(path: Path) -> tuple[Any, str, dict[str, str]]:
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
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_reason(err)}): copy or "
                                  "download it again") from err
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a checkpoint (it looks like {_kind_of(head)}): pass a PyTorch "
                              ".pth/.pt or a .safetensors file")
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True), "pth", {}
    except pickle.UnpicklingError as err:
        if "weights only load failed" not in str(err).lower():
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_reason(err)}): copy or "
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
        raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({size} bytes; {_reason(err)}): copy "
                              "or download it again") from err


def _is_state_dict(obj: Mapping) -> bool:
    return bool(obj) and all(isinstance(v, torch.Tensor) for v in obj.values())


def select_state_dict(obj: Any, use_ema: bool, where: str) -> tuple[Mapping[str, torch.Tensor], str | None]:
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


def normalise_keys(state_dict: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
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


def meta_from(obj: Any, fmt: str, st_meta: dict[str, str]) -> dict[str, Any]:
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
    if isinstance(obj.get("preprocess"), Mapping):  # training checkpoints: the eval transform the run used
        for key, value in obj["preprocess"].items():
            meta.setdefault(key, value)
    return meta


HUB_WEIGHTS = ("model.safetensors", "pytorch_model.bin")  # what timm's Hugging Face folders hold, preferred first


def hub_folder_meta(config: Mapping[str, Any]) -> dict[str, Any]:
    """Our metadata from a Hugging Face / timm folder's ``config.json``: architecture, class names, the
    preprocessing of its ``pretrained_cfg``, and what ``vanillanet export --format hf`` recorded."""
    cfg = config.get("pretrained_cfg") or {}
    meta: dict[str, Any] = dict(config.get("vanillanet") or {})
    meta["architecture"] = config.get("architecture")
    if config.get("label_names"):
        meta["class_names"] = list(config["label_names"])
    if cfg.get("input_size"):
        meta["img_size"] = int(cfg["input_size"][-1])
    meta.update({k: cfg[k] for k in ("crop_pct", "mean", "std", "interpolation") if cfg.get(k) is not None})
    return meta


def _read_hub_folder(path: Path) -> tuple[Any, str, dict[str, Any]]:
    """(weights, format, metadata) of a folder in timm's Hugging Face layout (config.json + model.safetensors)."""
    weights = next((path / name for name in HUB_WEIGHTS if (path / name).is_file()), None)
    if not (path / "config.json").is_file() or weights is None:
        raise CheckpointError(f"{path} is a folder, not a checkpoint: pass the .pth or .safetensors file inside it, "
                              "or a Hugging Face model folder (config.json + model.safetensors)")
    try:
        config = json.loads((path / "config.json").read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / 'config.json'} is unreadable ({_reason(err)}); export the folder "
                              "again") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.json'} is not a JSON object; export the folder again")
    obj, fmt, _ = read_raw(weights)
    return obj, fmt, hub_folder_meta(config)


def load_checkpoint_file(path: str | Path, *, use_ema: bool = True) -> dict[str, Any]:
    """Read any supported checkpoint safely -> ``{"state_dict": ..., "meta": {...}}`` in our key layout.

    ``path`` is a file, or a folder in timm's Hugging Face layout. ``meta`` holds what the file records
    (architecture, act_learn, class_names, epoch, the original ``args``...) plus ``path``, ``format``
    ('pth'/'safetensors'), ``source`` (the entry used, e.g. 'model_ema') and ``layout``.
    """
    path = Path(path)
    if path.is_dir():
        obj, fmt, hub_meta = _read_hub_folder(path)
        state_dict, _ = normalise_keys(select_state_dict(obj, use_ema, str(path))[0])
        return {"state_dict": state_dict, "meta": {**hub_meta, "path": str(path), "format": fmt, "source": None,
                                                   "layout": "hf-folder"}}
    obj, fmt, st_meta = read_raw(path)
    state_dict, source = select_state_dict(obj, use_ema, str(path))
    state_dict, openmixup = normalise_keys(state_dict)
    meta = meta_from(obj, fmt, st_meta)
    layout = ("openmixup" if openmixup else "vanillanet" if meta.get("format") == FORMAT_NAME
              else "original" if source in ("model", "model_ema") else "state_dict")
    meta.update(path=str(path), format=fmt, source=source, layout=layout)
    return {"state_dict": state_dict, "meta": meta}


def file_meta(path: Path) -> dict[str, Any]:
    """What a checkpoint file records besides its weights, without reading the tensors into memory."""
    if path.suffix == ".safetensors":  # timm, too, picks the reader by the suffix
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            return meta_from(None, "safetensors", dict(f.metadata() or {}))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:  # legacy (non-zip) files cannot be memory-mapped
        obj = read_raw(path)[0]
    return meta_from(obj, "pth", {})


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by ``vanillanet train`` (safe loading), or CheckpointError naming the problem."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist; pass a file written by `vanillanet train` or "
                              "--resume auto")
    obj = read_raw(path)[0]
    missing = [k for k in ("model", "optimizer", "step", "epoch", "config")
               if not isinstance(obj, Mapping) or k not in obj]
    if missing:
        raise CheckpointError(f"{path} has no {', '.join(missing)}: it holds weights, not a training state; use "
                              "--pretrained to start from it")
    return dict(obj)


def read_class_names(path: str | Path) -> list[str] | None:
    """The class names a checkpoint records (ours and our training checkpoints), or None."""
    names = load_checkpoint_file(path)["meta"].get("class_names")
    return list(names) if names else None


# ---- writing --------------------------------------------------------------------------------------------------
def model_meta(model: nn.Module) -> dict[str, Any]:
    """The architecture record written into our checkpoints."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "architecture": variant_of(model),
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


def save_weights(model: nn.Module, path: str | Path, *, class_names: list[str] | None = None,
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
