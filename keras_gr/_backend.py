"""The one place where keras_gr touches a backend module directly.

Everything else is `keras.ops`. What is here has no `keras.ops`
equivalent: compiling a plain function (not a Keras model) with XLA on the
active backend, at full float32 matmul precision.
"""

import functools

import keras


def jit(fn):
    """Compiles `fn` (a function of tensors written with `keras.ops`).

    JAX: `jax.jit`, traced and run under `jax.default_matmul_precision
    ("float32")`, so a TPU or a recent GPU does not silently run the matmuls
    in bfloat16 / TF32 passes. TensorFlow: `tf.function(jit_compile=True)`
    (XLA; float32 matmuls are exact float32 on CPU, and TF32 is off unless a
    user enables it). Other backends: `fn` itself, run eagerly.

    Arguments that change the traced program (shapes, Python values) must be
    bound before calling `jit` (e.g. with `functools.partial`), so a second
    call with same-shaped tensors reuses the compiled program.
    """
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        compiled = jax.jit(fn)

        @functools.wraps(fn)
        def call(*args):
            with jax.default_matmul_precision("float32"):
                return compiled(*args)

        return call
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    return fn
