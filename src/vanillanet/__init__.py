"""vanillanet: VanillaNet models, exact deploy conversion, training, evaluation, export and benchmarks.

Importing this package registers every VanillaNet variant with timm (``timm.create_model("vanillanet_5")``).
Training and evaluation live in their modules (``vanillanet.train.train(cfg)``, ``vanillanet.evaluate.evaluate``),
whose names would otherwise shadow the modules.
"""

from .checkpoint import (
    LoadReport,
    convert_checkpoint,
    create_model,
    load_checkpoint_file,
    load_weights,
    read_class_names,
    save_weights,
)
from .complexity import count_macs, count_params, model_complexity
from .errors import CheckpointError, ConfigError, ConversionError, DataError, VanillaNetError
from .export import export_onnx, export_torchscript
from .inference import FastClassifier, fast_inference
from .layers import SeriesActivation, fold_bn, merge_convs
from .models import VARIANTS, Block, DeepTrainingSlope, VanillaNet, VariantSpec, variant_names
from .reparam import act_learn_schedule, conversion_error, reparameterize_model
from .train_config import TrainConfig, resolve_config

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "Block",
    "CheckpointError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "DeepTrainingSlope",
    "FastClassifier",
    "LoadReport",
    "SeriesActivation",
    "TrainConfig",
    "VanillaNet",
    "VanillaNetError",
    "VariantSpec",
    "act_learn_schedule",
    "conversion_error",
    "convert_checkpoint",
    "count_macs",
    "count_params",
    "create_model",
    "export_onnx",
    "export_torchscript",
    "fast_inference",
    "fold_bn",
    "load_checkpoint_file",
    "load_weights",
    "merge_convs",
    "model_complexity",
    "read_class_names",
    "reparameterize_model",
    "resolve_config",
    "save_weights",
    "variant_names",
]
