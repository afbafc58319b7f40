"""The training configuration: one frozen dataclass whose defaults are the paper's recipe, layered with a recipe
YAML and command-line overrides.

Layering: ``TrainConfig()`` defaults (SPEC section 7, vanillanet_5's numbers) <- recipe (``--recipe NAME`` from the
package's ``recipes/`` folder, by file stem or by one of its ``aliases``, or ``--recipe FILE.yaml``) <- command-line
flags <- ``--set key=value`` (values parsed as YAML). Every layer is checked: unknown keys and values of the wrong
type raise ``ConfigError`` naming the key and the fix.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import types
import typing
from dataclasses import dataclass, field, fields
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError

__all__ = ["RECIPE_META_KEYS", "TrainConfig", "add_config_arguments", "config_from_args", "config_to_dict",
           "list_recipes",
           "load_recipe", "resolve_config"]

# Recipe keys that describe the recipe rather than configure the run.
RECIPE_META_KEYS = ("derived", "description", "aliases")


def _f(default: Any, help: str, **kwargs: Any) -> Any:  # noqa: A002  (argparse's word)
    return field(default=default, metadata={"help": help, **kwargs})


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on. Defaults: the official recipe for vanillanet_5 on 8 x 128 images."""

    # -- model
    model: str = _f("vanillanet_5", "variant name (see `vanillanet list`)")
    num_classes: int | None = _f(None, "classes of the head (default: the dataset's)")
    in_chans: int = _f(3, "input channels (1 for grayscale sources)")
    drop_rate: float = _f(0.05, "head dropout", aliases=("--drop",))
    act_num: int = _f(3, "series activation kernel is 2*act_num+1")
    width_mult: float = _f(1.0, "scale every width (e.g. 0.125 for CPU-sized models)")
    pretrained: str | None = _f(None, "fine-tune from this checkpoint (any layout the package loads)")
    freeze_stages: int = _f(0, "freeze the first K stages, counting the stem as the first")
    deep_training: bool = _f(True, "ablation: false trains each layer as one conv + BN from the start (no act_learn)")
    series_act: bool = _f(True, "ablation: false replaces the series activation by a plain ReLU")
    shortcut: bool = _f(False, "ablation: identity shortcut around each block that keeps its shape (no deploy form)")
    # -- data
    data: str = _f("", "ImageFolder root (train/ and val/), fashion-mnist, digits or synthetic")
    data_root: str | None = _f(None, "folder with Fashion-MNIST's IDX files (default: the Debian package's)")
    synthetic_size: int = _f(512, "training images of the synthetic set (val gets a quarter)")
    train_subset: int | None = _f(None, "train on a fixed random subset of this many training images (the same for "
                                  "every seed; for shorter experiments)")
    img_size: int | None = _f(None, "input size (default: 224 for folders, 32 for the small sets)")
    crop_pct: float | None = _f(None, "eval centre-crop fraction (default: 0.875 for folders)")
    mean: tuple[float, ...] | None = _f(None, "normalisation mean (default: the source's)")
    std: tuple[float, ...] | None = _f(None, "normalisation std (default: the source's)")
    interpolation: str = _f("bicubic", "resize interpolation")
    augment: str = _f("timm", "timm (RandAugment recipe), light (crop+flip) or none")
    aa: str | None = _f("rand-m7-mstd0.5-inc1", "timm auto-augment policy (null = off)")
    reprob: float = _f(0.25, "random erasing probability")
    remode: str = _f("pixel", "random erasing mode")
    hflip: float = _f(0.5, "horizontal flip probability")
    scale: tuple[float, float] = _f((0.08, 1.0), "RandomResizedCrop scale range")
    ratio: tuple[float, float] = _f((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range")
    color_jitter: float = _f(0.4, "colour jitter (inactive when aa is set)")
    padding: int | None = _f(None, "light augment: random-crop padding (default img_size // 8)")
    strict_data: bool = _f(False, "an unreadable image is an error instead of a counted skip")
    workers: int = _f(4, "data-loading worker processes per training process", aliases=("-j",))
    pin_mem: bool = _f(True, "pin host memory of batches (GPU only)")
    # -- mixup / cutmix / loss
    mixup: float = _f(0.1, "mixup alpha (0 = off)")
    cutmix: float = _f(1.0, "cutmix alpha (0 = off)")
    cutmix_minmax: tuple[float, float] | None = _f(None, "cutmix box ratio range (overrides cutmix alpha)")
    mixup_prob: float = _f(1.0, "probability of mixing a batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_mode: str = _f("batch", "batch, pair or elem")
    smoothing: float = _f(0.1, "label smoothing")
    bce_loss: bool = _f(True, "binary cross-entropy instead of (soft-target) cross-entropy")
    bce_target_thresh: float | None = _f(None, "binarise BCE targets at this threshold")
    # -- optimiser and learning rate
    opt: str = _f("lamb", "timm optimiser name (lamb, adamw, sgd, ...)")
    opt_eps: float = _f(1e-8, "optimiser epsilon")
    opt_betas: tuple[float, float] = _f((0.9, 0.999), "optimiser betas")
    momentum: float = _f(0.9, "SGD momentum")
    weight_decay: float = _f(0.35, "weight decay (none on biases, BN and other 1-D parameters)")
    layer_decay: float | None = _f(None, "layer-wise lr decay rate (stem rate^(L+1), block i rate^(L-i), head 1)")
    layer_decay_layers: int | None = _f(None, "L of the layer decay; must equal the model's number of blocks")
    clip_grad: float | None = _f(None, "gradient clipping threshold (LAMB clips the global norm at 1 itself)")
    clip_mode: str = _f("norm", "norm, value or agc")
    lr: float = _f(3.5e-3, "peak learning rate at an effective batch of lr_base_size")
    lr_base_size: int = _f(1024, "effective batch the lr is given for")
    lr_base_scale: str = _f("sqrt", "sqrt, linear or none: how lr follows the effective batch")
    min_lr: float = _f(1e-6, "final learning rate of the cosine schedule")
    warmup_epochs: float = _f(5.0, "linear warm-up from warmup_lr, per iteration")
    warmup_lr: float = _f(0.0, "learning rate at the first step")
    # -- schedule
    epochs: int = _f(300, "training epochs")
    batch_size: int = _f(128, "images per step and process (effective batch = this x processes x accumulation)",
                         aliases=("-b",))
    validation_batch_size: int | None = _f(None, "eval batch (default: 2 x batch_size)")
    grad_accum_steps: int = _f(1, "micro-batches per optimiser step")
    decay_epochs: float = _f(100.0, "deep training: act_learn goes from 0 to 1 over this many epochs")
    act_learn_mode: str = _f("linear", "linear or cosine act_learn schedule")
    act_learn_update: str = _f("epoch", "update act_learn every epoch (as the original) or every step")
    # -- EMA
    model_ema: bool = _f(True, "keep an EMA of the weights (the evaluated and exported model)")
    model_ema_decay: float = _f(0.99996, "EMA decay per optimiser step")
    model_ema_warmup: bool = _f(False, "ramp the EMA decay up from 0 (timm's warm-up)")
    # -- precision and speed
    amp: bool = _f(True, "mixed precision (autocast)")
    amp_dtype: str = _f("float16", "float16 (with a gradient scaler, GPU) or bfloat16")
    channels_last: bool = _f(False, "channels-last memory format")
    compile: bool = _f(False, "torch.compile the model")
    sync_bn: bool = _f(False, "synchronised BatchNorm across processes (DDP only)")
    device: str = _f("auto", "auto, cpu or cuda")
    threads: int | None = _f(None, "CPU threads per process (default: torch's; 1 is fastest for small models on a "
                             "busy machine)")
    # -- run
    seed: int = _f(0, "random seed (process r uses seed + r)")
    output: str = _f("", "output folder for checkpoints, metrics, plot and summary", aliases=("-o",))
    resume: str | None = _f(None, "checkpoint to resume from, or auto (latest in the output folder)")
    checkpoint_every: int = _f(0, "also checkpoint every N optimiser steps (0 = only at epoch ends)")
    keep_last: int = _f(2, "step/epoch checkpoints to keep (best.pth is kept apart)")
    log_every: int = _f(50, "write a step row to metrics.jsonl every N steps")
    progress: bool = _f(True, "show a progress bar per epoch (on a terminal)")
    recipe: str | None = _f(None, "recipe the run was built from (informational)")


_FIELDS = {f.name: f for f in fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)

_CHOICES = {
    "augment": ("timm", "light", "none"),
    "mixup_mode": ("batch", "pair", "elem"),
    "clip_mode": ("norm", "value", "agc"),
    "lr_base_scale": ("sqrt", "linear", "none"),
    "act_learn_mode": ("linear", "cosine"),
    "act_learn_update": ("epoch", "step"),
    "amp_dtype": ("float16", "bfloat16"),
    "device": ("auto", "cpu", "cuda"),
}
_POSITIVE = ("epochs", "batch_size", "grad_accum_steps", "lr_base_size", "synthetic_size", "keep_last", "log_every")
_NON_NEGATIVE = ("lr", "min_lr", "weight_decay", "warmup_epochs", "warmup_lr", "decay_epochs", "mixup", "cutmix",
                 "smoothing", "reprob", "freeze_stages", "workers", "checkpoint_every", "drop_rate")


def _coerce(key: str, value: Any, hint: Any) -> Any:
    """``value`` converted to the field type ``hint`` (int -> float, list -> tuple), or ConfigError."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(key, value, arg)
            except ConfigError as err:
                errors.append(err)
        raise errors[0]
    if origin is tuple:
        args = typing.get_args(hint)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and args[-1] is Ellipsis:
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"config key {key!r} needs a list, got {value!r}; write e.g. {key}=[0.5,0.5]")
        if args[-1] is not Ellipsis and len(value) != len(args):
            raise ConfigError(f"config key {key!r} needs {len(args)} values, got {len(value)}: {value!r}")
        item = args[0]
        return tuple(_coerce(key, v, item) for v in value)
    if hint is bool:
        if isinstance(value, bool):
            return value
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif hint is float:
        if isinstance(value, str):  # YAML 1.1 reads "2e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
    elif hint is str:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            return str(value)
    name = getattr(hint, "__name__", str(hint))
    raise ConfigError(f"config key {key!r} needs a {name}, got {value!r}; fix the recipe or the override")


def _check_key(key: str, source: str) -> None:
    if key not in _FIELDS:
        import difflib

        close = difflib.get_close_matches(key, _FIELDS, n=1)
        hint = f"did you mean {close[0]!r}?" if close else "run `vanillanet train --help` for the keys"
        raise ConfigError(f"unknown config key {key!r} in {source}; {hint}")


def _apply(values: dict[str, Any], layer: dict[str, Any], source: str) -> None:
    for key, value in layer.items():
        key = str(key).replace("-", "_")
        _check_key(key, source)
        values[key] = _coerce(key, value, _HINTS[key])


def validate(cfg: TrainConfig) -> TrainConfig:
    """Range and choice checks that do not need the model or data; returns ``cfg``."""
    for key, choices in _CHOICES.items():
        if getattr(cfg, key) not in choices:
            raise ConfigError(f"{key} must be one of {', '.join(choices)}, got {getattr(cfg, key)!r}")
    for key in _POSITIVE:
        if getattr(cfg, key) < 1:
            raise ConfigError(f"{key} must be at least 1, got {getattr(cfg, key)}")
    for key in _NON_NEGATIVE:
        if getattr(cfg, key) < 0:
            raise ConfigError(f"{key} must not be negative, got {getattr(cfg, key)}")
    if cfg.decay_epochs and cfg.decay_epochs > cfg.epochs - 1:
        raise ConfigError(f"decay_epochs ({cfg.decay_epochs:g}) must be at most epochs - 1 ({cfg.epochs - 1}): "
                          "act_learn has to reach 1 before the last epoch so that the model converts to the deploy "
                          "form; lower decay_epochs or raise epochs")
    if cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs:g}) must be less than epochs ({cfg.epochs}); lower "
                          "--warmup-epochs for a short run")
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain dict (tuples as lists) for YAML files and checkpoints."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(cfg).items()}


# ---- recipes ------------------------------------------------------------------------------------------------


def _recipe_files() -> dict[str, Path]:
    folder = resources.files("vanillanet") / "recipes"
    return {Path(p.name).stem: Path(str(p)) for p in folder.iterdir() if p.name.endswith(".yaml")}


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as err:
        raise ConfigError(f"cannot read recipe {path} ({err.strerror}); check the path") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"recipe {path} is not valid YAML ({str(err).splitlines()[0]}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of config keys to values, got {type(data).__name__}")
    return data


def list_recipes() -> dict[str, dict[str, Any]]:
    """Recipe name -> its YAML contents (meta keys included), for every recipe shipped with the package."""
    return {name: _read_yaml(path) for name, path in sorted(_recipe_files().items())}


def load_recipe(name_or_path: str) -> dict[str, Any]:
    """The config keys of a recipe (meta keys removed): a shipped recipe by name or alias, or a YAML file."""
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist; pass a YAML file or a recipe name")
        data = _read_yaml(path)
    else:
        files = _recipe_files()
        data = None
        if name_or_path in files:
            data = _read_yaml(files[name_or_path])
        else:
            for candidate in files.values():
                content = _read_yaml(candidate)
                if name_or_path in (content.get("aliases") or []):
                    data = content
                    break
        if data is None:
            raise ConfigError(f"unknown recipe {name_or_path!r}; choose one of {', '.join(sorted(files))} (or "
                              "their OpenMixup names such as vanillanet_5_8xb128_fp16_ep300) or pass a YAML file")
    return {k: v for k, v in data.items() if k not in RECIPE_META_KEYS}


def resolve_config(
    recipe: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Layer ``base`` (default: the paper's defaults) <- recipe <- ``overrides`` (already parsed values) <- ``sets``
    ("key=value" strings, values parsed as YAML); check and return the frozen result."""
    values = dataclasses.asdict(base or TrainConfig())
    if recipe:
        _apply(values, load_recipe(recipe), f"recipe {recipe}")
        values["recipe"] = recipe
    _apply(values, overrides or {}, "the command line")
    for item in sets or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--set needs key=value, got {item!r}; e.g. --set lr=0.001")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        _apply(values, {key.strip(): value}, "--set")
    return validate(TrainConfig(**values))


def parse_value(key: str, raw: str) -> Any:
    """A command-line string parsed as YAML and coerced to the type of config key ``key``."""
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError:
        value = raw
    hint = _HINTS[key]
    if hint is str or (typing.get_origin(hint) in (typing.Union, types.UnionType) and str in typing.get_args(hint)
                       and not isinstance(value, type(None))):
        value = raw  # strings stay verbatim (a path named "1e3" stays a string)
    return _coerce(key, value, hint)


# ---- command line ---------------------------------------------------------------------------------------------


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--recipe, --set, --list-recipes, --print-config and one timm-style flag per config key (``lr`` ->
    ``--lr``, booleans as ``--amp/--no-amp``, tuples as several values); unset flags leave the recipe's value."""
    parser.add_argument("--recipe", help="recipe name (see --list-recipes) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (value parsed as YAML); repeatable")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    for name, f in _FIELDS.items():
        if name == "recipe":
            continue
        hint = _HINTS[name]
        flags = [f"--{name.replace('_', '-')}", *f.metadata.get("aliases", ())]
        kw: dict[str, Any] = dict(dest=f"cfg_{name}", default=argparse.SUPPRESS, help=f.metadata.get("help"))
        if hint is bool:
            parser.add_argument(*flags, action=argparse.BooleanOptionalAction, **kw)
        elif tuple in (typing.get_origin(hint), *map(typing.get_origin, typing.get_args(hint))):
            parser.add_argument(*flags, nargs="+", metavar="V", **kw)
        else:
            parser.add_argument(*flags, metavar=name.split("_")[-1].upper(), **kw)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The layered config of a parsed command line (see ``add_config_arguments``)."""
    overrides: dict[str, Any] = {}
    for key, raw in vars(args).items():
        if key.startswith("cfg_"):
            name = key[4:]
            # lists (numeric strings are converted by the checks) and booleans pass as they are
            overrides[name] = raw if isinstance(raw, (list, bool)) else parse_value(name, raw)
    return resolve_config(args.recipe, overrides, args.set)
