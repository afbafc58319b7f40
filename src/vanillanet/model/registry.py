"""The one way to build a VanillaNet: timm registration of every variant and ``create_model``.

``import vanillanet`` runs the registration, so ``timm.create_model("vanillanet_5", ...)`` works with timm's whole
model contract (pretrained configs, ``features_only``, ``pretrained_cfg_overlay=dict(file=...)`` for local weights
in any supported layout). ``create_model(name | None, checkpoint | None, ...)`` builds a model from a name, a file or
both and keeps what the file records on the model (``model.checkpoint_meta``: class names, preprocessing, the
original ``args``...), so nobody reads a checkpoint twice to learn what it holds.
"""

from __future__ import annotations

import inspect
import os
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


def _create(variant: str, pretrained: bool = False, allow_large: bool = False, **kwargs: Any) -> VanillaNet:
    spec = VARIANTS[variant]
    arch: dict[str, Any] = dict(dims=spec.dims, strides=spec.strides)
    if spec.ada_pool is not None:
        arch["ada_pool"] = spec.ada_pool
    arch.update(kwargs)
    if not allow_large:  # every route (timm's local-dir: and hf-hub: included) gets the size limit
        _check_size(variant, arch, _route(variant, kwargs))
    out_indices = arch.pop("out_indices", default_out_indices(arch["strides"]))
    return build_model_with_cfg(
        VanillaNet,
        variant,
        pretrained,
        pretrained_filter_fn=checkpoint_filter_fn,
        feature_cfg=dict(feature_cls="getter", out_indices=out_indices),
        **arch,
    )


def _route(variant: str, kwargs: dict[str, Any]) -> str:
    """How a model was asked for, for the size-limit message: ``local-dir:FOLDER``, ``hf-hub:ID`` or the name and
    the arguments that size it."""
    cfg = kwargs.get("pretrained_cfg")
    cfg = cfg.to_dict() if hasattr(cfg, "to_dict") else cfg if isinstance(cfg, dict) else {}
    if cfg.get("source") == "local-dir":
        return f"local-dir:{cfg.get('file')}"
    if cfg.get("source") == "hf-hub":
        return f"hf-hub:{cfg.get('hf_hub_id')}"
    sized = {k: kwargs[k] for k in ("num_classes", "dims", "width_mult", "in_chans", "deploy") if k in kwargs}
    return f"{variant} with {sized}" if sized else variant


def _register(name: str) -> None:
    def entry(pretrained: bool = False, **kwargs: Any) -> VanillaNet:
        return _create(name, pretrained, **kwargs)

    entry.__name__ = entry.__qualname__ = name
    entry.__doc__ = f"{name}: dims {VARIANTS[name].dims}, strides {VARIANTS[name].strides}."
    entry.__module__ = __name__
    globals()[name] = register_model(entry)


for _name in VARIANTS:
    _register(_name)


_NETWORK_ARGS = frozenset(inspect.signature(VanillaNet.__init__).parameters) - {"self"}


def _check_size(name: str, arch: dict[str, Any], source: str) -> None:
    """Build the network ``arch`` describes on the meta device (no memory) and refuse it above ``MAX_PARAMS``,
    naming the form and how much of it is the classifier head (the train form's head is a classes x classes conv,
    so a large class count dominates it)."""
    import torch

    with torch.device("meta"):
        probe = VanillaNet(**{k: v for k, v in arch.items() if k in _NETWORK_ARGS})
    n = sum(p.numel() for p in probe.parameters())
    if n > MAX_PARAMS:
        head = sum(p.numel() for key, p in probe.named_parameters() if key.startswith("cls"))
        form = "deploy" if probe.deploy else "train"
        raise ConfigError(f"{source} implies a {form}-form {name} of {_count(n)} parameters ({_count(head)} of them "
                          f"in the {probe.num_classes:,}-class head; widths up to {max(probe.dims):,}), above the "
                          f"limit of {_count(MAX_PARAMS)}: refusing to allocate it; pass --allow-large "
                          "(allow_large=True) if you mean it")


def _count(n: int) -> str:
    """A parameter count people read at a glance: 12.3M, 4.1 billion, 1.0e+18."""
    if n < 10**9:
        return f"{n / 1e6:,.1f}M"
    return f"{n / 1e9:,.1f} billion" if n < 10**15 else f"{n:.1e}"


def _arch_of(name: str, kwargs: dict[str, Any]) -> dict[str, Any]:
    spec = VARIANTS[name]
    return {"dims": spec.dims, "strides": spec.strides, "ada_pool": spec.ada_pool, **kwargs}


# What create_model passes on besides the network's own arguments: timm's model contract.
_TIMM_ARGS = frozenset({"pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "features_only", "out_indices",
                        "checkpoint_path", "cache_dir", "scriptable", "exportable", "no_jit"})


def _check_call(name: Any, checkpoint: Any, num_classes: Any, kwargs: dict[str, Any]) -> None:
    """TypeErrors naming the argument and what it accepts (the Python API gets the CLI's care)."""
    if name is not None and not isinstance(name, str):
        raise TypeError(f"create_model: name must be a variant name (str) or None, got {type(name).__name__} "
                        f"{name!r:.60}; see vanillanet.variant_names()")
    if checkpoint is not None and not isinstance(checkpoint, (str, os.PathLike)):
        raise TypeError(f"create_model: checkpoint must be a path (str or os.PathLike) or None, got "
                        f"{type(checkpoint).__name__} {checkpoint!r:.60}")
    if num_classes is not None and (isinstance(num_classes, bool) or not isinstance(num_classes, int)):
        raise TypeError(f"create_model: num_classes must be an integer or None, got {type(num_classes).__name__} "
                        f"{num_classes!r:.60}")
    unknown = sorted(k for k in kwargs if k not in _NETWORK_ARGS and k not in _TIMM_ARGS)
    if unknown:
        accepted = ", ".join(sorted(_NETWORK_ARGS | {"num_classes", "use_ema", "allow_large"}))
        raise TypeError(f"create_model got an unexpected keyword argument {unknown[0]!r}; it accepts {accepted} "
                        "(and timm's pretrained, features_only, out_indices...)")


def create_model(name: str | None = None, checkpoint: str | Path | None = None, *, num_classes: int | None = None,
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

    _check_call(name, checkpoint, num_classes, kwargs)
    if name is not None:
        check_model_name(name)
    if checkpoint is None:
        if name is None:
            raise ConfigError("no model given: pass a model name (random weights) or a checkpoint")
        kwargs = {**({} if num_classes is None else {"num_classes": num_classes}), **kwargs}
        model = timm.create_model(name, allow_large=allow_large, **kwargs)
        model.checkpoint_meta, model.load_report = {}, None
        return model
    ckpt = load_checkpoint_file(checkpoint, use_ema=use_ema)
    name, kwargs = architecture_kwargs(name, ckpt, {**kwargs, "num_classes": num_classes})
    check_model_name(name)
    if not allow_large:
        _check_size(name, _arch_of(name, kwargs), str(checkpoint))
    model = timm.create_model(name, allow_large=True, **kwargs)  # checked above, naming the file
    model.load_report = load_into(model, ckpt, reset_head=True)
    model.checkpoint_meta = dict(ckpt["meta"])
    return model
