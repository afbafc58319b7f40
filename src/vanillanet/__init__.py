"""vanillanet: VanillaNet models, exact deploy conversion, training, evaluation, export and benchmarks.

Importing this package registers every VanillaNet variant with timm (``timm.create_model("vanillanet_5")``).
"""

from .errors import CheckpointError, ConfigError, ConversionError, DataError, VanillaNetError
from .layers import SeriesActivation, fold_bn, merge_convs
from .models import VARIANTS, Block, DeepTrainingSlope, VanillaNet, VariantSpec, variant_names
from .reparam import act_learn_schedule, conversion_error, reparameterize_model

__version__ = "0.1.0"

__all__ = [
    "VARIANTS",
    "Block",
    "CheckpointError",
    "ConfigError",
    "ConversionError",
    "DataError",
    "DeepTrainingSlope",
    "SeriesActivation",
    "VanillaNet",
    "VanillaNetError",
    "VariantSpec",
    "act_learn_schedule",
    "conversion_error",
    "fold_bn",
    "merge_convs",
    "reparameterize_model",
    "variant_names",
]
