"""Checkpoint files: read every supported layout safely, normalise it to our key layout, write ours atomically.

This module is file IO only: what is in a file and how to read and write it. Fitting weights to a model instance
(architecture inference, form conversion, head reset) lives in ``weight_loading.py``; building a model from a name or a
file in ``registry.create_model``.

Supported inputs (detected from the content, not the file name):

- the original training files: ``{'model', 'model_ema', 'optimizer', 'epoch', 'scaler', 'args'}`` (the EMA weights
  are preferred, as the released files are evaluated through them), converted deploy files ``{'model': ...}``,
  bare state_dicts, DDP (``module.``) and torch.compile (``_orig_mod.``) prefixes, timm's ``state_dict(_ema)``;
- OpenMixup files ``{'state_dict', 'meta'}`` with ``backbone.`` / ``head.`` key prefixes;
- ours: ``.safetensors`` with metadata, ``.pth`` holding ``{'model', 'meta'}``, and the training checkpoints of
  ``vanillanet train`` (original layout plus extras such as ``act_learn``, ``class_names`` and ``arch``).

Pickles are loaded with ``weights_only=True`` and only ``argparse.Namespace`` allow-listed; anything else is refused.
Every file we write carries a SHA-256 digest of its content (``sha256``: a metadata entry of ``.safetensors`` files,
a top-level key of ``.pth`` files), verified whenever the file is read: changed bytes are a one-line
``CheckpointError``, never silently different weights. Tensors that claim more memory than the file holds
(stride-0 views) are refused, and what a file records (``FileMeta``) is checked like any setting a user passes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import pickle
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..util import validation
from ..util.errors import CheckpointError, ConfigError, first_line
from ..util.fileio import save_atomic, write_atomic
from ..util.integrity import describe, digest, expanded, unsound
from ..util.safe_open import read_head, read_text, refuse_special
from ..util.validation import option
from .ablation import MODEL_OPTIONS
from .variants import VARIANTS, variant_of

__all__ = ["FORMAT_NAME", "FileMeta", "sign_hub_folder", "verify_hub_folder",
           "file_meta", "load_checkpoint_file", "model_meta", "read_class_names",
           "read_raw", "read_training_checkpoint", "save_weights", "select_state_dict", "normalise_keys", "with_digest"]

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
    head = read_head(path, 16, "checkpoint", CheckpointError)  # a FIFO or a device is refused, never read
    size = path.stat().st_size
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
                st_meta = dict(f.metadata() or {})
        except Exception as err:  # safetensors raises its own error types for every kind of damage
            raise CheckpointError(f"checkpoint {path} is truncated or corrupt ({_reason(err)}): copy or "
                                  "download it again") from err
        expected = st_meta.pop("sha256", None)
        if expected is not None and digest({"tensors": tensors, "meta": st_meta}) != expected:
            raise CheckpointError(_CHANGED.format(path=path))
        return tensors, "safetensors", st_meta
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        raise CheckpointError(f"{path} is not a checkpoint (it looks like {_kind_of(head)}): pass a PyTorch "
                              ".pth/.pt or a .safetensors file")
    obj = _load_pickle(path, size)
    big = expanded(obj)
    if big:
        raise CheckpointError(f"{path} holds tensors larger than the data stored for them ({big[0]}: stride-0 "
                              "views, a few bytes that would take gigabytes in memory): refusing it; save real "
                              "tensors (.contiguous()) instead")
    if isinstance(obj, Mapping) and isinstance(obj.get("sha256"), str):
        obj = dict(obj)
        if digest({k: v for k, v in obj.items() if k != "sha256"}) != obj.pop("sha256"):
            raise CheckpointError(_CHANGED.format(path=path))
    return obj, "pth", {}


_CHANGED = ("checkpoint {path} does not match the SHA-256 digest it was written with: its bytes were changed or "
            "damaged after writing; copy it again or use another checkpoint")


def _load_pickle(path: Path, size: int) -> Any:
    """``torch.load`` with weights_only (through a file object, so that torch does not pick a reader by the file's
    suffix) and ``argparse.Namespace`` allowed; one-line errors."""
    try:
        with open(path, "rb") as f, torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(f, map_location="cpu", weights_only=True)
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


@dataclass(frozen=True)
class FileMeta:
    """What our files record besides the weights and the code reads back, with the allowed values: checked on
    every load (``check_meta``) like a user's settings, so edited or foreign metadata is a one-line error."""

    architecture: str | None = option(None, "variant name")
    act_learn: float | None = option(None, "deep-training slope when saved", ge=0, le=1)
    act_num: int | None = option(None, "activation kernel is 2*act_num+1", ge=0, le=16)
    num_classes: int | None = option(None, "classes of the head", ge=0)
    in_chans: int | None = option(None, "input channels", ge=1)
    dims: tuple[int, ...] | None = option(None, "widths", ge=1)
    strides: tuple[int, ...] | None = option(None, "block strides", ge=1)
    ada_pool: tuple[int, ...] | None = option(None, "adaptive pooling sizes", ge=0)
    class_names: tuple[str, ...] | None = option(None, "class names, one per output")
    img_size: int | None = option(None, "input size", ge=1)
    crop_pct: float | None = option(None, "eval centre-crop fraction", gt=0, le=1)
    mean: tuple[float, ...] | None = option(None, "normalisation mean")
    std: tuple[float, ...] | None = option(None, "normalisation std", gt=0)
    interpolation: str | None = option(None, "resize interpolation")
    epoch: int | None = option(None, "epoch", ge=0)
    step: int | None = option(None, "optimiser steps", ge=0)
    deep_training: bool | None = option(None, "ablation option: two convs per layer while training")
    series_act: bool | None = option(None, "ablation option: the series activation (false: plain ReLU)")
    shortcut: bool | None = option(None, "ablation option: identity shortcuts (no deploy form)")


_META_KEYS = validation.keys_of(FileMeta)


def check_meta(meta: dict[str, Any], where: str) -> dict[str, Any]:
    """``meta`` with the ``FileMeta`` entries coerced (tuples as lists) and checked; CheckpointError otherwise."""
    for name, key in _META_KEYS.items():
        value = meta.get(name)
        if value is None:
            continue
        hint = typing.get_args(key.hint)[0]
        try:
            if typing.get_origin(hint) is tuple and not isinstance(value, (list, tuple)):
                raise ConfigError("")
            value = validation.coerce(name, value, key.hint)
        except ConfigError:
            wanted = "a list" if typing.get_origin(hint) is tuple else {int: "an integer", float: "a finite number",
                                                                        str: "text"}[hint]
            raise CheckpointError(f"{where} records a malformed {name} ({value!r:.60}, not {wanted}); the file was "
                                  "edited or not written by vanillanet: re-create it") from None
        try:
            validation.check(name, value, key.field)
        except ConfigError as err:
            raise CheckpointError(f"{where} records an impossible {name} ({err}); the file was edited or not "
                                  "written by vanillanet: re-create it") from None
        meta[name] = list(value) if isinstance(value, tuple) else value
    return meta


def meta_from(obj: Any, fmt: str, st_meta: dict[str, str], where: str = "the checkpoint") -> dict[str, Any]:
    """What a file records besides the weights (ours: everything; original: args; ours-training: extras), checked
    against ``FileMeta``."""
    return check_meta(_collect_meta(obj, fmt, st_meta), where)


def _collect_meta(obj: Any, fmt: str, st_meta: dict[str, str]) -> dict[str, Any]:
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


def hub_folder_meta(config: Mapping[str, Any], where: str = "config.json") -> dict[str, Any]:
    """Our metadata from a Hugging Face / timm folder's ``config.json``: architecture, class names, the
    preprocessing of its ``pretrained_cfg``, and what ``vanillanet export --format hf`` recorded. Entries of the
    wrong kind are one-line CheckpointErrors (the values are then checked by ``check_meta``)."""
    def mapping(value: Any, key: str) -> Mapping[str, Any]:
        if value is None or isinstance(value, Mapping):
            return value or {}
        raise CheckpointError(f"{where} records a malformed {key} ({value!r:.60}, not a mapping); the folder was "
                              "edited or not written by timm or vanillanet: export it again")

    cfg = mapping(config.get("pretrained_cfg"), "pretrained_cfg")
    meta: dict[str, Any] = dict(mapping(config.get("vanillanet"), "vanillanet"))
    meta["architecture"] = config.get("architecture")
    if config.get("label_names"):
        meta["class_names"] = config["label_names"]
    size = cfg.get("input_size")
    if size:
        if not isinstance(size, (list, tuple)) or len(size) != 3:
            raise CheckpointError(f"{where} records a malformed pretrained_cfg.input_size ({size!r:.60}, not "
                                  "[channels, height, width]); export the folder again")
        meta["img_size"] = size[-1]
    meta.update({k: cfg[k] for k in ("crop_pct", "mean", "std", "interpolation") if cfg.get(k) is not None})
    return meta


def _hub_weights(path: Path) -> Path | None:
    return next((path / name for name in HUB_WEIGHTS if (path / name).is_file()), None)


def _config_bytes(path: Path) -> bytes:
    try:
        return read_text(path / "config.json", "the Hub config", CheckpointError).encode()
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path / 'config.json'} is unreadable ({_reason(err)}); export the folder "
                              "again") from None


def sign_hub_folder(path: Path) -> None:
    """Rewrite ``path/model.safetensors`` (as timm's ``save_for_hf`` wrote it) with the digest every file we write
    carries: ``config_sha256`` (SHA-256 of ``config.json``'s bytes) in its metadata, and ``sha256`` over the tensors
    and that metadata, as in every ``.safetensors`` file we write. Mode as any file we write (umask), not 0600."""
    import hashlib

    from safetensors.torch import load_file, save_file

    weights = path / HUB_WEIGHTS[0]
    tensors = load_file(str(weights))
    meta = {"format": "pt", "config_sha256": hashlib.sha256(_config_bytes(path)).hexdigest()}
    meta["sha256"] = digest({"tensors": tensors, "meta": meta})
    write_atomic(weights, lambda tmp: save_file(tensors, tmp, metadata=meta))


def verify_hub_folder(path: Path, tensors: Mapping[str, torch.Tensor] | None = None) -> bool:
    """Check a Hub folder's ``config.json`` (and ``tensors``, what a loader read from its ``model.safetensors``,
    e.g. timm's ``local-dir:`` route) against the digest in ``model.safetensors``. True when verified, False for a
    folder from elsewhere (no digest, no vanillanet record); CheckpointError when anything changed, or when a folder
    vanillanet wrote lost its digest."""
    import hashlib

    weights = _hub_weights(path)
    config = _config_bytes(path)
    meta: dict[str, str] = {}
    if weights is not None and weights.name == HUB_WEIGHTS[0]:
        from safetensors import safe_open

        try:
            with safe_open(str(weights), framework="pt") as f:
                meta = dict(f.metadata() or {})
        except Exception:  # damaged: read_raw names the problem
            read_raw(weights)
            raise
    expected = meta.pop("sha256", None)
    if expected is None:
        with contextlib.suppress(ValueError):
            ours = json.loads(config)
            if isinstance(ours, dict) and "vanillanet" in ours:
                raise CheckpointError(f"{weights or path} carries no SHA-256 digest although vanillanet wrote the "
                                      "folder (its config.json says so): it was re-saved or damaged; export it again")
        return False
    changed = meta.get("config_sha256") != hashlib.sha256(config).hexdigest()
    if not changed and tensors is not None:
        changed = digest({"tensors": dict(tensors), "meta": meta}) != expected
    if changed:
        raise CheckpointError(f"the Hub folder {path} does not match the SHA-256 digest it was written with: "
                              "model.safetensors or config.json was changed or damaged after writing; export or "
                              "download it again")
    return True


def _read_hub_folder(path: Path) -> tuple[Any, str, dict[str, Any], bool]:
    """(weights, format, metadata, verified) of a folder in timm's Hugging Face layout (config.json +
    model.safetensors); the weights and config.json are checked against the folder's digest."""
    weights = _hub_weights(path)
    if not (path / "config.json").is_file() or weights is None:
        raise CheckpointError(f"{path} is a folder, not a checkpoint: pass the .pth or .safetensors file inside it, "
                              "or a Hugging Face model folder (config.json + model.safetensors)")
    try:
        config = json.loads(_config_bytes(path))
    except ValueError as err:
        raise CheckpointError(f"{path / 'config.json'} is unreadable ({_reason(err)}); export the folder "
                              "again") from None
    if not isinstance(config, dict):
        raise CheckpointError(f"{path / 'config.json'} is not a JSON object; export the folder again")
    verified = verify_hub_folder(path)  # config.json; read_raw checks the tensors against the same digest
    obj, fmt, _ = read_raw(weights)
    meta = check_meta(hub_folder_meta(config, str(path / "config.json")), str(path / "config.json"))
    return obj, fmt, meta, verified


def load_checkpoint_file(path: str | Path, *, use_ema: bool = True) -> dict[str, Any]:
    """Read any supported checkpoint safely -> ``{"state_dict": ..., "meta": {...}}`` in our key layout.

    ``path`` is a file, or a folder in timm's Hugging Face layout. ``meta`` holds what the file records
    (architecture, act_learn, class_names, epoch, the original ``args``...) plus ``path``, ``format``
    ('pth'/'safetensors'), ``source`` (the entry used, e.g. 'model_ema') and ``layout``.
    """
    path = Path(path)
    if path.is_dir():
        obj, fmt, hub_meta, verified = _read_hub_folder(path)
        state_dict, _ = normalise_keys(select_state_dict(obj, use_ema, str(path))[0])
        return {"state_dict": state_dict, "meta": {**hub_meta, "path": str(path), "format": fmt, "source": None,
                                                   "layout": "hf-folder", "verified": verified}}
    obj, fmt, st_meta = read_raw(path)
    state_dict, source = select_state_dict(obj, use_ema, str(path))
    state_dict, openmixup = normalise_keys(state_dict)
    meta = meta_from(obj, fmt, st_meta, str(path))
    layout = ("openmixup" if openmixup else "vanillanet" if meta.get("format") == FORMAT_NAME
              else "original" if source in ("model", "model_ema") else "state_dict")
    meta.update(path=str(path), format=fmt, source=source, layout=layout)
    return {"state_dict": state_dict, "meta": meta}


def file_meta(path: Path) -> dict[str, Any]:
    """What a checkpoint file records besides its weights, without reading the tensors into memory."""
    head = read_head(path, 16, "checkpoint", CheckpointError)
    if head[8:9] == b"{":  # by content, not by the suffix
        from safetensors import safe_open

        try:
            with safe_open(str(path), framework="pt") as f:
                return meta_from(None, "safetensors", dict(f.metadata() or {}), str(path))
        except Exception:  # damaged: read_raw names the problem
            read_raw(path)
            raise
    if not head.startswith(b"PK\x03\x04"):  # legacy (non-zip) files cannot be memory-mapped
        return meta_from(read_raw(path)[0], "pth", {}, str(path))
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:
        obj = read_raw(path)[0]
    return meta_from(obj, "pth", {}, str(path))


def read_training_checkpoint(path: str | Path) -> dict[str, Any]:
    """A training checkpoint written by ``vanillanet train`` (safe loading), or CheckpointError naming the problem."""
    path = Path(path)
    refuse_special(path, "checkpoint", CheckpointError)
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
    if path.suffix not in (".safetensors", ".pth", ".pt"):
        raise CheckpointError(f"cannot save to {path}: use a .safetensors or .pth file name")
    meta = {**model_meta(model), **(dict(extra_meta) if extra_meta else {})}
    if class_names is not None:
        meta["class_names"] = list(class_names)
    meta = json.loads(json.dumps(meta, allow_nan=False))  # plain types only, so weights_only loading accepts it
    state_dict = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    bad = unsound(("", state_dict))
    if bad:
        raise CheckpointError(f"not writing {path}: the weights are unusable ({describe(bad)}); the model diverged "
                              "or its source file is damaged")
    if path.suffix == ".safetensors":
        from safetensors.torch import save_file

        text_meta = {k: json.dumps(v) for k, v in meta.items()}
        text_meta["sha256"] = digest({"tensors": state_dict, "meta": text_meta})
        return write_atomic(path, lambda tmp: save_file(state_dict, tmp, metadata=text_meta))
    return save_atomic(with_digest({"model": state_dict, "meta": meta}), path)


def with_digest(obj: Mapping[str, Any]) -> dict[str, Any]:
    """``obj`` plus its ``sha256`` entry, which ``read_raw`` verifies (every ``.pth`` file we write has one)."""
    return {**obj, "sha256": digest(dict(obj))}
