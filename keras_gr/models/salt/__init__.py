"""SALT: small-LM-assisted pretraining (arXiv 2410.18779): the
`SaltDistiller` model and the SALT data-selection scores.

Import them from `keras_gr.models`; this folder groups the family.
"""
