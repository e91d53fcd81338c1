"""keras_gr.models: end-to-end models built from keras_gr parts.

The in-context-learning regressor (arXiv 2410.21698), the digits latent
diffusion pipeline (arXiv 2412.18596), the model routers of arXiv
2502.08773 (`ClusterRouter`, `LearnedMapRouter`, `KNNRouter`, `ZeroRouter`,
`OracleRouter`, `RoutedGenerator`), SALT distillation and data selection,
and SoftSRV synthetic-data generation. See ARCHITECTURE.md for where this
sits.

The SoftSRV names (`SoftSRV`, `SoftPrompt`, `HardPromptGenerator`) need the
`hub` extra (`pip install "keras-gr[hub]"`) and are imported on first use;
everything else needs only Keras, so `import keras_gr.models` works in a
JAX-only install.
"""

from keras_gr import _imports
from keras_gr.models.diffusion.class_conditional_unet import (
    ClassConditionalUNet,
)
from keras_gr.models.diffusion.ddim_sampler import DDIMSampler
from keras_gr.models.diffusion.diffusion_sampler import DiffusionSampler
from keras_gr.models.diffusion.diffusion_sampler import NoiseSchedule
from keras_gr.models.diffusion.digits_latent_diffusion import (
    DigitsLatentDiffusion,
)
from keras_gr.models.looped_icl.looped_icl_regressor import LoopedICLRegressor
from keras_gr.models.looped_icl.looped_icl_regressor import query_prediction
from keras_gr.models.routing.base_router import Router
from keras_gr.models.routing.cluster_router import ClusterRouter
from keras_gr.models.routing.knn_router import KNNRouter
from keras_gr.models.routing.learned_map_router import LearnedMapRouter
from keras_gr.models.routing.oracle_router import OracleRouter
from keras_gr.models.routing.routed_generator import RoutedGenerator
from keras_gr.models.routing.zero_router import ZeroRouter
from keras_gr.models.salt.salt_distiller import SaltDistiller
from keras_gr.models.salt.salt_distiller import label_mask_from_padding
from keras_gr.models.salt.salt_selection import salt_scores_from_logits
from keras_gr.models.salt.salt_selection import salt_selection_scores
from keras_gr.models.salt.salt_selection import select_top_fraction
from keras_gr.models.salt.salt_selection import teacher_topk_targets

# keras-hub models: imported on first use (see the module docstring).
_LAZY = {
    "HardPromptGenerator": "softsrv.softsrv",
    "SoftPrompt": "softsrv.softsrv",
    "SoftSRV": "softsrv.softsrv",
}

__all__ = [
    "Router",
    "ClusterRouter",
    "DiffusionSampler",
    "NoiseSchedule",
    "KNNRouter",
    "ClassConditionalUNet",
    "DDIMSampler",
    "DigitsLatentDiffusion",
    "LearnedMapRouter",
    "LoopedICLRegressor",
    "query_prediction",
    "OracleRouter",
    "RoutedGenerator",
    "SaltDistiller",
    "label_mask_from_padding",
    "salt_scores_from_logits",
    "salt_selection_scores",
    "select_top_fraction",
    "teacher_topk_targets",
    "HardPromptGenerator",
    "SoftPrompt",
    "SoftSRV",
    "ZeroRouter",
]

__getattr__, __dir__ = _imports.lazy_exports(__name__, _LAZY)
