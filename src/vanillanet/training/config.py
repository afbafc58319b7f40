"""The training configuration: a frozen dataclass of sections whose defaults are the paper's recipe, layered with a
recipe YAML and command-line overrides.

Layering: ``TrainConfig()`` defaults (the official recipe, vanillanet_5's numbers) <- recipe (``--recipe NAME``
from the package's ``recipes/`` folder, by file stem or by one of its ``aliases``, or ``--recipe FILE.yaml``; a
recipe is a delta over the defaults and may start from another with ``base: NAME``) <- command-line flags <-
``--set key=value`` (values parsed as YAML). Keys are flat (``lr``, ``epochs``); each belongs to one section
(``cfg.optim``, ``cfg.schedule``...), which is what the code that needs it takes. Allowed values and ranges are
declared on the fields (``validation.option``): unknown keys, wrong types and out-of-range values raise one-line
``ConfigError``s naming the key and the fix.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from ..data.sources import DATA_HELP, SOURCES
from ..util import validation
from ..util.errors import ConfigError, first_line
from ..util.validation import option
from .deep_training import CADENCES, SCHEDULES

__all__ = ["RECIPE_META_KEYS", "TrainConfig", "add_config_arguments", "config_from_args", "config_to_dict",
           "list_recipes", "load_recipe", "resolve_config"]

# Recipe keys that describe the recipe rather than configure the run.
RECIPE_META_KEYS = ("derived", "description", "aliases", "base")
DECODERS = ("pil", "fast", "gpu")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest", "lanczos", "hamming", "box")


@dataclass(frozen=True)
class ArchConfig:
    """The network."""

    model: str = option("vanillanet_5", "variant name (see `vanillanet list`), or an ablation baseline: resnet18, "
                        "plain_cnn_6")
    num_classes: int | None = option(None, "classes of the head (default: the dataset's)", ge=1)
    in_chans: int = option(3, "input channels (1 for grayscale sources)", choices=(1, 3))
    drop_rate: float = option(0.05, "head dropout", ge=0, lt=1, aliases=("--drop",))
    act_num: int = option(3, "series activation kernel is 2*act_num+1", ge=0, le=16)
    width_mult: float = option(1.0, "scale every width (e.g. 0.125 for CPU-sized models)", gt=0, le=16)
    pretrained: str | None = option(None, "fine-tune from this checkpoint (any layout the package loads)")
    pretrained_ema: bool = option(True, "take the EMA weights of a --pretrained training checkpoint that has them "
                                  "(--no-ema: its live weights)", aliases=("--ema",))
    freeze_stages: int = option(0, "freeze the first K stages, counting the stem as the first", ge=0)
    deep_training: bool = option(True, "ablation: false trains each layer as one conv + BN from the start (no "
                                 "act_learn)")
    series_act: bool = option(True, "ablation: false replaces the series activation by a plain ReLU")
    shortcut: bool = option(False, "ablation: identity shortcut around each block that keeps its shape (no deploy "
                            "form)")
    allow_large: bool = option(False, "lift the model-size limit (1e9 parameters, see docs/faults.md)")


@dataclass(frozen=True)
class InputConfig:
    """The data, its preprocessing and augmentation, and the loaders."""

    data: str = option("", DATA_HELP)
    data_options: dict[str, Any] = option(help="options of the data source, e.g. {root: DIR} for fashion-mnist, "
                                          "{size: 64} for synthetic, {strict: true} for folders; a name qualified "
                                          "with a source (synthetic.size) applies to that source only",
                                          default_factory=dict)
    train_subset: int | None = option(None, "train on a fixed random subset of this many training images (the same "
                                      "for every seed; for shorter experiments)", ge=1)
    img_size: int | None = option(None, "input size (default: 224 for folders, 32 for the small sets)", ge=1, le=4096)
    crop_pct: float | None = option(None, "eval centre-crop fraction (default: 0.875 for folders)", gt=0, le=1)
    mean: tuple[float, ...] | None = option(None, "normalisation mean (default: the source's)")
    std: tuple[float, ...] | None = option(None, "normalisation std (default: the source's)", gt=0)
    interpolation: str = option("bicubic", "resize interpolation", choices=INTERPOLATIONS)
    augment: str = option("timm", "timm (RandAugment recipe), light (crop+flip) or none",
                          choices=("timm", "light", "none"))
    aa: str | None = option("rand-m7-mstd0.5-inc1", "timm auto-augment policy (null = off)")
    reprob: float = option(0.25, "random erasing probability", ge=0, le=1)
    remode: str = option("pixel", "random erasing mode", choices=("pixel", "rand", "const"))
    hflip: float = option(0.5, "horizontal flip probability", ge=0, le=1)
    scale: tuple[float, float] = option((0.08, 1.0), "RandomResizedCrop scale range", gt=0, le=1)
    ratio: tuple[float, float] = option((3 / 4, 4 / 3), "RandomResizedCrop aspect-ratio range", gt=0)
    color_jitter: float = option(0.4, "colour jitter (inactive when aa is set)", ge=0)
    padding: int | None = option(None, "light augment: random-crop padding (default img_size // 8)", ge=0)
    decoder: str = option("pil", "how training images are decoded and augmented: pil (the reference: PIL and timm's "
                          "transform in the workers), fast (libjpeg-turbo with DCT-scaled decoding, uint8 crops "
                          "across the process boundary, normalise/erase on the device) or gpu (nvJPEG on the "
                          "training GPU; CUDA only); see docs/feeding-gpus.md", choices=DECODERS)
    aa_on_device: bool = option(False, "--decoder fast: apply RandAugment's operations on the training device "
                                "(the draws stay timm's, in the workers); --decoder gpu always does")
    workers: int = option(4, "data-loading worker processes per training process", ge=0, aliases=("-j",))
    memory_batches: bool = option(True, "in-memory sets (fashion-mnist, digits, synthetic) whose only random step is "
                                  "the flip: make whole batches in memory, bit-identical to the DataLoader's "
                                  "(false: the per-image PIL path)")
    pin_mem: bool = option(True, "pin host memory of batches (GPU only)")


@dataclass(frozen=True)
class MixingConfig:
    """Mixup / CutMix, label smoothing and the loss."""

    mixup: float = option(0.1, "mixup alpha (0 = off)", ge=0)
    cutmix: float = option(1.0, "cutmix alpha (0 = off)", ge=0)
    cutmix_minmax: tuple[float, float] | None = option(None, "cutmix box ratio range (overrides cutmix alpha)",
                                                       gt=0, le=1)
    mixup_prob: float = option(1.0, "probability of mixing a batch", ge=0, le=1)
    mixup_switch_prob: float = option(0.5, "probability of cutmix instead of mixup when both are on", ge=0, le=1)
    mixup_mode: str = option("batch", "how samples are mixed", choices=("batch", "pair", "elem"))
    smoothing: float = option(0.1, "label smoothing", ge=0, lt=1)
    bce_loss: bool = option(True, "binary cross-entropy instead of (soft-target) cross-entropy")
    bce_target_thresh: float | None = option(None, "binarise BCE targets at this threshold", ge=0, le=1)


@dataclass(frozen=True)
class OptimConfig:
    """Optimiser and learning-rate schedule."""

    opt: str = option("lamb", "timm optimiser name (lamb, adamw, sgd, ...)")
    opt_eps: float = option(1e-8, "optimiser epsilon", gt=0)
    opt_betas: tuple[float, float] = option((0.9, 0.999), "optimiser betas", ge=0, lt=1)
    momentum: float = option(0.9, "SGD momentum", ge=0, lt=1)
    weight_decay: float = option(0.35, "weight decay (none on biases, BN and other 1-D parameters)", ge=0)
    layer_decay: float | None = option(None, "layer-wise lr decay rate (stem rate^(L+1), block i rate^(L-i), "
                                       "head 1)", gt=0, le=1)
    layer_decay_layers: int | None = option(None, "L of the layer decay; must equal the model's number of blocks",
                                            ge=1)
    clip_grad: float | None = option(None, "gradient clipping threshold (LAMB clips the global norm at 1 itself)",
                                     gt=0)
    clip_mode: str = option("norm", "gradient clipping mode", choices=("norm", "value", "agc"))
    lr: float = option(3.5e-3, "peak learning rate at an effective batch of lr_base_size", gt=0)
    lr_base_size: int = option(1024, "effective batch the lr is given for", ge=1)
    lr_base_scale: str = option("sqrt", "how lr follows the effective batch", choices=("sqrt", "linear", "none"))
    min_lr: float = option(1e-6, "final learning rate of the cosine schedule", ge=0)
    warmup_epochs: float = option(5.0, "linear warm-up from warmup_lr, per iteration", ge=0)
    warmup_lr: float = option(0.0, "learning rate at the first step", ge=0)


@dataclass(frozen=True)
class ScheduleConfig:
    """How long and in which batches."""

    epochs: int = option(300, "training epochs", ge=1)
    batch_size: int = option(128, "images per step and process (effective batch = this x processes x "
                             "accumulation)", ge=1, aliases=("-b",))
    validation_batch_size: int | None = option(None, "eval batch (default: 2 x batch_size)", ge=1)
    grad_accum_steps: int = option(1, "micro-batches per optimiser step", ge=1)


@dataclass(frozen=True)
class DeepTrainingConfig:
    """Deep training: the act_learn schedule (see deep_training.py)."""

    decay_epochs: float = option(100.0, "deep training: act_learn goes from 0 to 1 over this many epochs", ge=0)
    act_learn_mode: str = option("linear", "act_learn schedule", choices=tuple(SCHEDULES))
    act_learn_update: str = option("epoch", "update act_learn every epoch (as the original) or every step",
                                   choices=CADENCES)


@dataclass(frozen=True)
class EmaConfig:
    """The exponential moving average of the weights (the evaluated and exported model)."""

    model_ema: bool = option(True, "keep an EMA of the weights (the evaluated and exported model)")
    model_ema_decay: float = option(0.99996, "EMA decay per optimiser step", ge=0, lt=1)
    model_ema_warmup: bool = option(False, "ramp the EMA decay up from 0 (timm's warm-up)")


@dataclass(frozen=True)
class SpeedConfig:
    """Precision, memory layout, compilation and devices."""

    amp: bool = option(True, "mixed precision (autocast)")
    amp_dtype: str = option("float16", "float16 (with a gradient scaler, GPU) or bfloat16",
                            choices=("float16", "bfloat16"))
    channels_last: bool = option(False, "channels-last memory format")
    compile: bool = option(False, "torch.compile the model")
    sync_bn: bool = option(False, "synchronised BatchNorm across processes (DDP only)")
    device: str = option("auto", "where to train", choices=("auto", "cpu", "cuda"))
    threads: int | None = option(None, "CPU threads per process (default: torch's; 1 is fastest for small models "
                                 "on a busy machine)", ge=1, le=1024)


@dataclass(frozen=True)
class RunConfig:
    """The run folder, checkpoints, logging and seeds."""

    seed: int = option(0, "random seed (process r uses seed + r)", ge=0)
    output: str = option("", "output folder for checkpoints, metrics, plot and summary", aliases=("-o",))
    resume: str | None = option(None, "checkpoint to resume from, or auto (latest in the output folder)")
    checkpoint_every: int = option(0, "also checkpoint every N optimiser steps (0 = only at epoch ends)", ge=0)
    keep_last: int = option(2, "step/epoch checkpoints to keep (best.pth is kept apart)", ge=1)
    log_every: int = option(50, "write a step row to metrics.jsonl every N steps", ge=1)
    progress: bool = option(True, "show a progress bar per epoch (on a terminal)")
    recipe: str | None = option(None, "recipe the run was built from (informational)")


@dataclass(frozen=True)
class TrainConfig:
    """Everything a training run depends on, in sections. Defaults: the official recipe for vanillanet_5 on
    8 x 128 images. Every key can also be read flat (``cfg.lr`` is ``cfg.optim.lr``)."""

    arch: ArchConfig = field(default_factory=ArchConfig)
    inputs: InputConfig = field(default_factory=InputConfig)
    mixing: MixingConfig = field(default_factory=MixingConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    deep: DeepTrainingConfig = field(default_factory=DeepTrainingConfig)
    ema: EmaConfig = field(default_factory=EmaConfig)
    speed: SpeedConfig = field(default_factory=SpeedConfig)
    run: RunConfig = field(default_factory=RunConfig)

    def __getattr__(self, name: str) -> Any:  # only reached when normal lookup fails: the flat keys
        key = _KEYS.get(name)
        if key is None or key.section is None:
            raise AttributeError(f"TrainConfig has no setting {name!r}")
        return getattr(object.__getattribute__(self, key.section), name)


_KEYS = validation.keys_of(TrainConfig)


def _data_option_keys() -> dict[str, list[tuple[str, str]]]:
    """Flat config keys that set data sources' options: key -> [(source, option)], e.g. data_root -> fashion-mnist's
    root; strict_data -> the strict option of folder and of shards."""
    keys: dict[str, list[tuple[str, str]]] = {}
    for s in SOURCES.values():
        for name, o in s.options.items():
            if o.config_key:
                keys.setdefault(o.config_key, []).append((s.name, name))
    return keys


def validate(cfg: TrainConfig) -> TrainConfig:
    """Checks across fields that do not need the model or data; returns ``cfg``."""
    if cfg.decay_epochs and cfg.decay_epochs > cfg.epochs - 1:
        raise ConfigError(f"decay_epochs ({cfg.decay_epochs:g}) must be at most epochs - 1 ({cfg.epochs - 1}): "
                          "act_learn has to reach 1 before the last epoch so that the model converts to the deploy "
                          "form; lower decay_epochs or raise epochs")
    if cfg.warmup_epochs >= cfg.epochs:
        raise ConfigError(f"warmup_epochs ({cfg.warmup_epochs:g}) must be less than epochs ({cfg.epochs}); lower "
                          "--warmup-epochs for a short run")
    if cfg.min_lr > cfg.lr:
        raise ConfigError(f"min_lr ({cfg.min_lr:g}) must not exceed lr ({cfg.lr:g}); lower --min-lr")
    return cfg


def config_to_dict(cfg: TrainConfig) -> dict[str, Any]:
    """Plain flat dict (tuples as lists) for YAML files and checkpoints."""
    return validation.to_flat(cfg)


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
        raise ConfigError(f"recipe {path} is not valid YAML ({first_line(err)}); fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"recipe {path} must be a mapping of config keys to values, got {type(data).__name__}")
    return data


def list_recipes() -> dict[str, dict[str, Any]]:
    """Recipe name -> its YAML contents (meta keys included), for every recipe shipped with the package."""
    return {name: _read_yaml(path) for name, path in sorted(_recipe_files().items())}


def _find_recipe(name_or_path: str) -> tuple[str, dict[str, Any]]:
    path = Path(name_or_path)
    if name_or_path.endswith((".yaml", ".yml")) or path.is_file():
        if not path.is_file():
            raise ConfigError(f"recipe file {path} does not exist; pass a YAML file or a recipe name")
        return str(path), _read_yaml(path)
    files = _recipe_files()
    if name_or_path in files:
        return name_or_path, _read_yaml(files[name_or_path])
    for name, candidate in files.items():
        content = _read_yaml(candidate)
        if name_or_path in (content.get("aliases") or []):
            return name, content
    raise ConfigError(f"unknown recipe {name_or_path!r}; choose one of {', '.join(sorted(files))} (or their "
                      "OpenMixup names such as vanillanet_5_8xb128_fp16_ep300) or pass a YAML file")


def load_recipe(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """The config keys of a recipe (meta keys removed, its ``base`` recipe's keys underneath): a shipped recipe by
    name or alias, or a YAML file."""
    name, data = _find_recipe(name_or_path)
    if name in _seen:
        raise ConfigError(f"recipe {name} is its own base ({' -> '.join((*_seen, name))}); fix the base: keys")
    values = load_recipe(str(data["base"]), (*_seen, name)) if data.get("base") else {}
    values.update({k: v for k, v in data.items() if k not in RECIPE_META_KEYS})
    return values


def _apply(values: dict[str, Any], layer: dict[str, Any], source: str) -> None:
    """Add one layer of flat settings to ``values`` (type-checked now; data-source option keys go into
    ``data_options``)."""
    option_keys = _data_option_keys()
    for key, value in layer.items():
        key = str(key).replace("-", "_")
        if key in option_keys:  # e.g. synthetic_size -> data option synthetic.size (used when data is synthetic)
            for source, name in option_keys[key]:
                values["data_options"] = {**values.get("data_options", {}), f"{source}.{name}": value}
            continue
        if key not in _KEYS:
            raise validation.unknown_key_error(key, {**_KEYS, **option_keys}, source)
        values[key] = validation.coerce(key, value, _KEYS[key].hint)
        validation.check(key, values[key], _KEYS[key].field)


def resolve_config(
    recipe: str | None = None,
    overrides: dict[str, Any] | None = None,
    sets: list[str] | None = None,
    base: TrainConfig | None = None,
) -> TrainConfig:
    """Layer ``base`` (default: the paper's defaults) <- recipe <- ``overrides`` (already parsed values) <- ``sets``
    ("key=value" strings, values parsed as YAML); check and return the frozen result."""
    values = config_to_dict(base or TrainConfig())
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
    return validate(validation.build(TrainConfig, values))


# ---- command line ---------------------------------------------------------------------------------------------
def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """--recipe, --set, --list-recipes, --print-config, one timm-style flag per config key and one per data-source
    option that has a config key (``--data-root``, ``--synthetic-size``, ``--strict-data``); unset flags leave the
    recipe's value."""
    parser.add_argument("--recipe", help="recipe name (see --list-recipes) or a YAML file")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override any config key (value parsed as YAML); repeatable")
    parser.add_argument("--list-recipes", action="store_true", help="list the shipped recipes and exit")
    parser.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    validation.add_arguments(parser, TrainConfig, skip=("recipe",))
    added = set()
    for source in SOURCES.values():
        for name, opt in source.options.items():
            if opt.config_key is None or opt.config_key in added:
                continue
            added.add(opt.config_key)
            flag = f"--{opt.config_key.replace('_', '-')}"
            kw = dict(dest=f"opt_{opt.config_key}", default=argparse.SUPPRESS,
                      help=f"{opt.help} (data option {name!r} of "
                      f"{', '.join(s for s, _ in _data_option_keys()[opt.config_key])})")
            if isinstance(opt.default, bool):
                parser.add_argument(flag, action=argparse.BooleanOptionalAction, **kw)
            else:
                parser.add_argument(flag, metavar=name.upper(), **kw)


def config_from_args(args: argparse.Namespace) -> TrainConfig:
    """The layered config of a parsed command line (see ``add_config_arguments``)."""
    overrides = validation.overrides_from_args(args, TrainConfig)
    for dest, raw in vars(args).items():
        if dest.startswith("opt_"):
            overrides[dest[4:]] = raw if isinstance(raw, bool) else yaml.safe_load(raw)
    return resolve_config(args.recipe, overrides, args.set)
