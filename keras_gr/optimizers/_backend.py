"""The one backend-specific module of `keras_gr.optimizers`.

`highest_matmul_precision()` is a context manager under which the matrix
products of the matrix functions (inverse roots, Newton iterations) run at
full float32 precision:

- JAX: `jax.default_matmul_precision("highest")`, read when the products are
  traced, so it applies inside `jit` (on TPU the default is a single bf16
  pass, on recent GPUs TF32).
- TensorFlow: TensorFlow has no per-operation matmul precision; its TF32
  switch (`tf.config.experimental.enable_tensor_float_32_execution`) is
  process-wide, and a library must not flip it behind the user's back, so
  this is a no-op there (CPUs and TPUs under TensorFlow run float32
  products in float32; on an Ampere+ GPU disable TF32 yourself).
"""

import contextlib

import keras


def highest_matmul_precision():
    """A context manager: full float32 matrix products (JAX; see above)."""
    if keras.backend.backend() == "jax":
        import jax

        return jax.default_matmul_precision("highest")
    return contextlib.nullcontext()


def distributed_replicas(optimizer):
    """Number of synchronous replicas of a TensorFlow `tf.distribute`
    strategy the optimizer was created under (1 elsewhere)."""
    strategy = getattr(optimizer, "_distribution_strategy", None)
    return int(getattr(strategy, "num_replicas_in_sync", 1) or 1)
