"""Backend-specific helper for SALT: counting real executions of a branch.

This is the one module of the SALT code that imports a backend. A Python
counter in a traced function counts traces, not executions; to prove that
the teacher's forward pass does not run after the KD phase, the teacher
branch of the compiled step calls back to the host each time it actually
executes: `jax.debug.callback` under JAX (works under `jit`),
`tf.py_function` under TensorFlow (needs `jit_compile=False`: XLA cannot
call back into Python).
"""

import keras


def count_executions(tensor, counter):
    """Returns `tensor` unchanged; `counter.increment()` runs on the host
    every time the enclosing compiled branch executes."""
    backend = keras.backend.backend()
    if backend == "jax":
        import jax

        jax.debug.callback(lambda _: counter.increment(), tensor[..., :1])
        return tensor
    if backend == "tensorflow":
        import tensorflow as tf

        def _bump(x):
            counter.increment()
            return x

        token = tf.py_function(
            _bump, [tf.zeros((), tensor.dtype)], tensor.dtype
        )
        return tensor + token
    raise ValueError(
        "`count_teacher_calls=True` is supported on the jax and tensorflow "
        f"backends. Received: backend={backend!r}"
    )
