"""SoftSRV: soft prompts that steer a frozen keras-hub LLM to generate
targeted synthetic data (arXiv 2410.16534). Needs the `hub` extra.

Import it from `keras_gr.models`; this folder groups the family. This
`__init__` imports nothing, so the folder itself needs no keras-hub.
"""
