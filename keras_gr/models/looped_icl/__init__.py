"""The looped linear-attention model for in-context linear regression
(arXiv 2410.21698): `LoopedICLRegressor` and `query_prediction`.

Import them from `keras_gr.models`; this folder groups the family.
"""
