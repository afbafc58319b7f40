"""Preprocessing: the evaluation transform (``Preprocess``), its resolution, and the training transform."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD, create_transform
from timm.data.random_erasing import RandomErasing
from torchvision import transforms as T

from ..util import validation
from ..util.errors import ConfigError
from .images import check_img_size_limit
from .sources import dataset_defaults
from .uint8_transforms import FastEvalTransform, FastTrainTransform, timm_secondary


# -------------------------------------------------------------------------------------------- preprocessing
@dataclass(frozen=True)
class Preprocess:
    """Settings of the evaluation transform (bicubic resize of the short side to img_size / crop_pct, centre
    crop, normalise), shared by train, eval and predict."""

    img_size: int = 224
    crop_pct: float = 0.875
    mean: tuple[float, ...] = IMAGENET_DEFAULT_MEAN
    std: tuple[float, ...] = IMAGENET_DEFAULT_STD
    interpolation: str = "bicubic"

    def transform(self, in_chans: int = 3) -> Callable:
        return build_transform(False, self.img_size, in_chans=in_chans, mean=self.mean, std=self.std,
                               crop_pct=self.crop_pct, interpolation=self.interpolation)

    def as_meta(self) -> dict[str, Any]:
        """The settings as checkpoint metadata (what ``resolve_preprocess`` reads back)."""
        return {"img_size": self.img_size, "crop_pct": self.crop_pct, "mean": list(self.mean),
                "std": list(self.std), "interpolation": self.interpolation}


_PRE_KEYS = ("img_size", "crop_pct", "mean", "std", "interpolation")


def resolve_preprocess(*, model_cfg: Mapping[str, Any] | None = None, data: str | Path | None = None,
                       meta: Mapping[str, Any] | None = None, allow_large: bool = False,
                       **explicit: Any) -> Preprocess:
    """The eval transform's settings, in increasing priority: a timm model config (``pretrained_cfg``), the data
    source's defaults, what a checkpoint records, explicit values (None = not given). The result is checked: the
    input size against ``MAX_IMG_SIZE`` (unless ``allow_large``), a positive std, a known interpolation."""
    values: dict[str, Any] = {}
    if model_cfg:
        size = model_cfg.get("input_size", (3, 224, 224))
        values.update(_checked({"img_size": size[-1] if isinstance(size, (list, tuple)) and size else size,
                                **{k: model_cfg.get(k) for k in _PRE_KEYS[1:]}}, "the model's pretrained_cfg"))
    if data is not None:
        d = dataset_defaults(data)
        values.update(img_size=d.img_size, crop_pct=d.crop_pct, mean=d.mean, std=d.std)
    for layer, source in ((meta or {}, "the checkpoint"), (explicit, "the settings")):
        values.update(_checked(layer, source))
    crop_pct = values.get("crop_pct")
    if crop_pct is not None and not 0 < crop_pct <= 1:
        raise ConfigError(f"crop_pct (--crop-pct) must be in (0, 1], got {crop_pct}")
    if "img_size" in values:
        values["img_size"] = check_img_size_limit(int(values["img_size"]), allow_large=allow_large)
    if any(v <= 0 for v in values.get("std", ())):
        raise ConfigError(f"the normalisation std must be positive, got {list(values['std'])} (from the checkpoint "
                          "or the settings): fix the std setting")
    if "interpolation" in values:
        try:
            T.InterpolationMode(values["interpolation"])
        except ValueError:
            raise ConfigError(f"unknown interpolation {values['interpolation']!r}; use bicubic, bilinear, "
                              "nearest, lanczos, hamming or box") from None
    return Preprocess(**values)


_PRE_HINTS = {"img_size": int, "crop_pct": float, "mean": tuple[float, ...], "std": tuple[float, ...],
              "interpolation": str}


def _checked(layer: Mapping[str, Any], source: str) -> dict[str, Any]:
    """The preprocessing entries ``source`` gives (None: not given), each of the right kind through the validation
    layer (a mean or std must be a list of numbers, never a string read character by character); ConfigError
    naming the source otherwise."""
    out: dict[str, Any] = {}
    for key, hint in _PRE_HINTS.items():
        value = layer.get(key)
        if value is None or (key == "interpolation" and not value):
            continue
        try:
            if hint is not int and hint is not float and hint is not str and not isinstance(value, (list, tuple)):
                raise ConfigError("not a list")
            out[key] = validation.coerce(key, value, hint)
        except ConfigError:
            wanted = {int: "an integer", float: "a finite number", str: "a name"}.get(hint, "a list of numbers, "
                                                                                         "one per channel")
            raise ConfigError(f"{source} gives a malformed {key} ({value!r:.60}, not {wanted}); fix it there (a "
                              "model folder's config.json, a checkpoint's metadata or the setting)") from None
    return out


def fit_channels(values: Sequence[float], in_chans: int, what: str) -> tuple[float, ...]:
    """``values`` (a mean or std) for ``in_chans`` channels: one value repeated, three averaged for grayscale."""
    values = tuple(float(v) for v in values)
    if len(values) == in_chans:
        return values
    if len(values) == 1:
        return values * in_chans
    if in_chans == 1:
        return (sum(values) / len(values),)
    raise ConfigError(f"{what} has {len(values)} values but in_chans is {in_chans}; give 1 or {in_chans} values")


def build_transform(
    is_training: bool,
    img_size: int = 224,
    *,
    in_chans: int = 3,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    std: Sequence[float] = IMAGENET_DEFAULT_STD,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    augment: str = "timm",
    auto_augment: str | None = "rand-m7-mstd0.5-inc1",
    reprob: float = 0.25,
    remode: str = "pixel",
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    color_jitter: float = 0.4,
    padding: int | None = None,
) -> Callable:
    """A PIL image -> normalised tensor transform; see the module docstring. ``mean``/``std`` with one value are
    repeated for RGB, with three are averaged for grayscale. ``padding`` (light mode) defaults to img_size // 8."""
    mean = fit_channels(mean, in_chans, "mean")
    std = fit_channels(std, in_chans, "std")
    if augment not in ("timm", "light", "none"):
        raise ConfigError(f"augment must be timm, light or none, got {augment!r}")
    if not is_training or augment == "none":
        return create_transform(img_size, is_training=False, crop_pct=crop_pct, interpolation=interpolation,
                                mean=mean, std=std)
    if augment == "timm":
        return create_transform(img_size, is_training=True, scale=tuple(scale), ratio=tuple(ratio), hflip=hflip,
                                color_jitter=color_jitter, auto_augment=auto_augment or None,
                                interpolation=interpolation, mean=mean, std=std, re_prob=reprob, re_mode=remode)
    mode = T.InterpolationMode(interpolation)
    steps: list[Callable] = [
        T.Resize(img_size, interpolation=mode),
        T.RandomCrop(img_size, padding=img_size // 8 if padding is None else padding),
        T.RandomHorizontalFlip(hflip),
        T.ToTensor(),
        T.Normalize(mean, std),
    ]
    if reprob > 0:
        steps.append(RandomErasing(reprob, mode=remode, device="cpu"))
    return T.Compose(steps)


def build_fast_transform(
    is_training: bool,
    img_size: int = 224,
    *,
    in_chans: int = 3,
    mean: Sequence[float] = IMAGENET_DEFAULT_MEAN,
    crop_pct: float = 0.875,
    interpolation: str = "bicubic",
    augment: str = "timm",
    auto_augment: str | None = "rand-m7-mstd0.5-inc1",
    hflip: float = 0.5,
    scale: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    color_jitter: float = 0.4,
    allow_large: bool = False,
    aa_on_device: bool = False,
) -> Callable:
    """``build_transform``'s counterpart for ``--decoder fast``: encoded image -> uint8 tensor, the normalisation
    and RandomErasing left to ``device_augment.DeviceAugment`` (see ``uint8_transforms``), RandAugment's pixels too
    with ``aa_on_device``. The ``light`` augmentation (padded random crop) exists on the reference path only."""
    if augment not in ("timm", "none"):
        raise ConfigError(f"--decoder fast implements the timm and none augmentations, not {augment!r}; use "
                          "--augment timm, or --decoder pil for the light one")
    if not is_training or augment == "none":
        return FastEvalTransform(img_size, in_chans=in_chans, crop_pct=crop_pct, interpolation=interpolation,
                                 allow_large=allow_large)
    secondary = timm_secondary(img_size, mean=fit_channels(mean, in_chans, "mean"), interpolation=interpolation,
                               auto_augment=auto_augment, color_jitter=color_jitter)
    return FastTrainTransform(img_size, in_chans=in_chans, scale=scale, ratio=ratio, hflip=hflip,
                              interpolation=interpolation, secondary=secondary, allow_large=allow_large,
                              aa_on_device=aa_on_device)
