"""The one way to build a VanillaNet: timm registration of every variant and ``create_model``.

``import vanillanet`` runs the registration, so ``timm.create_model("vanillanet_5", ...)`` works with timm's whole
model contract (pretrained configs, ``features_only``, ``pretrained_cfg_overlay=dict(file=...)`` for local weights
in any supported layout). ``create_model(name | None, checkpoint | None, ...)`` builds a model from a name, a file or
both and keeps what the file records on the model (``model.checkpoint_meta``: class names, preprocessing, the
original ``args``...), so nobody reads a checkpoint twice to learn what it holds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from timm.data import IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD
from timm.models import build_model_with_cfg, generate_default_cfgs, register_model

from ..util.errors import ConfigError
from .checkpoint_files import load_checkpoint_file
from .geometry import input_cfg
from .network import VanillaNet
from .variants import VARIANTS, check_model_name, default_out_indices
from .weight_loading import architecture_kwargs, filter_state_dict, load_into

__all__ = ["MAX_PARAMS", "create_model", "default_cfgs"]

# Largest model create_model builds unless allow_large: 1e9 parameters (4 GB in fp32). The largest variant is 0.24e9
# (vanillanet_13_x1_5, train form); a file implying more (e.g. a crafted multi-million-class head) is refused
# before any memory is allocated.
MAX_PARAMS = 1_000_000_000


def _cfg(**kwargs: Any) -> dict[str, Any]:
    return {
        "url": "",
        "num_classes": 1000,
        "input_size": (3, 224, 224),
        "crop_pct": 0.875,
        "interpolation": "bicubic",
        "mean": IMAGENET_DEFAULT_MEAN,
        "std": IMAGENET_DEFAULT_STD,
        "first_conv": "stem1.0",
        "classifier": "cls2.0",
        "license": "mit",
        "paper_ids": "arXiv:2305.12972",
        **kwargs,
    }


default_cfgs = generate_default_cfgs({f"{name}.in1k": _cfg(**input_cfg(spec)) for name, spec in VARIANTS.items()})


def checkpoint_filter_fn(state_dict: dict, model: VanillaNet) -> dict:
    """Map any supported checkpoint layout onto ``model``'s keys (timm's pretrained hook; see weight_loading.py)."""
    return filter_state_dict(state_dict, model)


def _create(variant: str, pretrained: bool = False, **kwargs: Any) -> VanillaNet:
    spec = VARIANTS[variant]
    arch: dict[str, Any] = dict(dims=spec.dims, strides=spec.strides)
    if spec.ada_pool is not None:
        arch["ada_pool"] = spec.ada_pool
    arch.update(kwargs)
    out_indices = arch.pop("out_indices", default_out_indices(arch["strides"]))
    return build_model_with_cfg(
        VanillaNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **arch,
    )


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs: Any) -> VanillaNet:
        return _create(name, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{name}: dims {VARIANTS[name].dims}, strides {VARIANTS[name].strides}."
    entry.__module__ = __name__
    globals()[name] = register_model(entry)


for _name in VARIANTS:
    _register(_name)


def _check_size(name: str, kwargs: dict[str, Any], allow_large: bool, source: str) -> None:
    """Build the model on the meta device (no memory) and refuse it above ``MAX_PARAMS``."""
    import timm
    import torch

    if allow_large:
        return
    with torch.device("meta"):
        probe = timm.create_model(name, **kwargs)
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMS:
        raise ConfigError(f"{source} implies a model of {n / 1e6:,.0f}M parameters ({probe.num_classes} classes, "
                          f"widths up to {max(probe.dims)}), above the {MAX_PARAMS / 1e6:,.0f}M limit: refusing to "
                          "allocate it; pass --allow-large (allow_large=True) if you mean it")


def create_model(name: str | None, checkpoint: str | Path | None = None, *, num_classes: int | None = None,
                 use_ema: bool = True, allow_large: bool = False, **kwargs: Any) -> VanillaNet:
    """Build variant ``name``, load ``checkpoint`` (any supported layout and form) into it, and keep the file's
    metadata on the model as ``model.checkpoint_meta`` (``{}`` without a checkpoint) and the ``LoadReport`` as
    ``model.load_report``.

    The form (train/deploy), act_num, in_chans, widths and class count come from the file unless given;
    ``deploy=True`` with a train-form file converts it. Another ``num_classes`` loads all but the head and logs
    one line. ``name=None`` infers the variant from the file. Without a checkpoint: a freshly initialised model.
    A model above ``MAX_PARAMS`` parameters is refused before anything is allocated unless ``allow_large``.
    """
    import timm

    if name is not None:
        check_model_name(name)
    if checkpoint is None:
        if name is None:
            raise ConfigError("no model given: pass a model name (random weights) or a checkpoint")
        kwargs = {**({} if num_classes is None else {"num_classes": num_classes}), **kwargs}
        _check_size(name, kwargs, allow_large, f"{name} with {kwargs}" if kwargs else name)
        model = timm.create_model(name, **kwargs)
        model.checkpoint_meta, model.load_report = {}, None
        return model
    ckpt = load_checkpoint_file(checkpoint, use_ema=use_ema)
    name, kwargs = architecture_kwargs(name, ckpt, {**kwargs, "num_classes": num_classes})
    check_model_name(name)
    _check_size(name, kwargs, allow_large, str(checkpoint))
    model = timm.create_model(name, **kwargs)
    model.load_report = load_into(model, ckpt, reset_head=True)
    model.checkpoint_meta = dict(ckpt["meta"])
    return model
