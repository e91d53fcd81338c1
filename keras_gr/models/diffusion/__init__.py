"""The LatentCRF diffusion family (Ranasinghe et al., "LatentCRF:
Continuous CRF for Efficient Latent Diffusion", arXiv 2412.18596).

Import the public names from `keras_gr.models`; this folder groups the
family, one file per role:

- `diffusion_sampler.py`: `NoiseSchedule`, the DDIM maths (`ddim_update`,
  `ddim_sigma`) and `DiffusionSampler`, the compiled sampler of any
  denoiser with a LatentCRF placeable anywhere in the timeline;
- `digits_latent_diffusion.py`: `DigitsLatentDiffusion`, the reference
  pipeline that trains the parts below and samples through
  `DiffusionSampler`;
- `autoencoder.py`, `class_conditional_unet.py` (with
  `conditional_res_block.py`): the latent space and the noise predictor;
- `latent_discriminator.py`, `adversarial_crf_trainer.py`: the CRF's
  optional latent adversarial loss;
- `ddim_sampler.py`: `DDIMSampler`, the deprecated host-side loop, kept
  for one release.
"""
