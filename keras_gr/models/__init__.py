"""keras_gr.models: public API of this area (see ARCHITECTURE.md)."""

from keras_gr.models.latent_diffusion import ClassConditionalUNet
from keras_gr.models.latent_diffusion import DDIMSampler
from keras_gr.models.latent_diffusion import DigitsLatentDiffusion
from keras_gr.models.looped_icl import LoopedICLRegressor
from keras_gr.models.looped_icl import query_prediction
