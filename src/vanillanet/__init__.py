"""vanillanet: VanillaNet models, exact deploy conversion, training, evaluation, export and benchmarks.

Importing this package is cheap: the public names below are imported on first use, and the variants are
registered with timm as soon as timm is imported (or at once if it already is), so
``import vanillanet; timm.create_model("vanillanet_5")`` works. Training and evaluation live in their modules
(``vanillanet.train.train(cfg)``, ``vanillanet.evaluate.evaluate``), whose names would otherwise shadow the modules.
"""

from __future__ import annotations

import importlib
from typing import Any

from .model import timm_hook

__version__ = "0.1.0"

# public name -> module that defines it (imported on first access)
_PUBLIC: dict[str, str] = {
    **dict.fromkeys(["CheckpointError", "ConfigError", "ConversionError", "DataError", "NonFiniteLossError",
                     "OutputError", "VanillaNetError"], "util.errors"),
    **dict.fromkeys(["SeriesActivation", "fold_bn", "merge_convs"], "model.layers"),
    **dict.fromkeys(["VARIANTS", "PUBLISHED", "VariantSpec", "variant_names"], "model.variants"),
    **dict.fromkeys(["Block", "DeepTrainingSlope"], "model.blocks"),
    "VanillaNet": "model.network",
    **dict.fromkeys(["calibrate_bn", "conversion_error", "reparameterize_model"], "model.reparam"),
    **dict.fromkeys(["load_checkpoint_file", "read_class_names", "save_weights"], "model.checkpoint_files"),
    **dict.fromkeys(["LoadReport", "load_weights"], "model.weight_loading"),
    "create_model": "model.registry",
    "convert_checkpoint": "convert",
    **dict.fromkeys(["count_macs", "count_params", "model_complexity"], "complexity"),
    **dict.fromkeys(["BACKENDS", "Backend"], "deploy.backends"),
    **dict.fromkeys(["FastClassifier", "fast_inference"], "deploy.inference"),
    **dict.fromkeys(["export_onnx", "export_torchscript"], "export"),
    **dict.fromkeys(["TrainConfig", "resolve_config"], "training.config"),
    "ShardDataset": "data.shards",
    **dict.fromkeys(["WriteSettings", "write_shards"], "data.shard_writer"),
    "act_learn_schedule": "training.deep_training",
}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'vanillanet' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))


timm_hook.install()
