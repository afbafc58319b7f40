"""vanillanet: VanillaNet models, exact deploy conversion, training, evaluation, export and benchmarks.

Importing this package registers every VanillaNet variant with timm (``timm.create_model("vanillanet_5")``).
"""

from .layers import ConversionError, SeriesActivation, fold_bn, merge_convs
from .models import VARIANTS, Block, DeepTrainingSlope, VanillaNet, VariantSpec, variant_names
from .reparam import act_learn_schedule, reparameterize_model

__version__ = "0.1.0"
