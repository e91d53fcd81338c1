"""Diffusion sampling with late steps replaced by a latent CRF
(arXiv 2412.18596): `NoiseSchedule`, `DiffusionSampler` and the digits
latent-diffusion reference pipeline.

Import them from `keras_gr.models`; this folder groups the family.
"""
