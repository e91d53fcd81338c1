"""The one place where keras_gr touches a backend module directly.

Everything else is `keras.ops`. What is here has no `keras.ops`
equivalent:

- `jit`: compiling a plain function (not a Keras model) with XLA on the
  active backend, at full float32 matmul precision;
- `highest_matmul_precision`: full float32 matrix products for the matrix
  functions of the optimizers (inverse roots, Newton iterations):
  `jax.default_matmul_precision("highest")` under JAX, read when the
  products are traced, so it applies inside `jit` (on TPU the default is a
  single bf16 pass, on recent GPUs TF32). TensorFlow has no per-operation
  matmul precision; its TF32 switch
  (`tf.config.experimental.enable_tensor_float_32_execution`) is
  process-wide and a library must not flip it behind the user's back, so
  this is a no-op there (CPUs and TPUs under TensorFlow run float32
  products in float32; on an Ampere+ GPU disable TF32 yourself);
- `distributed_replicas`: the replica count of a `tf.distribute` strategy;
- `count_executions`: a host callback that counts real executions of a
  compiled branch (a Python counter in a traced function counts traces);
- `concrete_bool` / `cond`: a Python branch where the predicate is a
  concrete (eager) value, `keras.ops.cond` only while tracing.

Backend modules are imported inside the functions, so importing this
module (and `keras_gr.optimizers`) needs neither TensorFlow nor JAX.
"""

import contextlib
import functools

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


def count_executions(tensor, counter):
    """Returns `tensor` unchanged; `counter.increment()` runs on the host
    every time the enclosing compiled branch executes.

    `jax.debug.callback` under JAX (works under `jit`); `tf.py_function`
    under TensorFlow (needs `jit_compile=False`: XLA cannot call back into
    Python).
    """
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


def jit(fn):
    """Compiles `fn` (a function of tensors written with `keras.ops`).

    JAX: `jax.jit`, traced and run under `highest_matmul_precision()`, so
    a TPU or a recent GPU does not silently run the matmuls
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
            with highest_matmul_precision():
                return compiled(*args)

        return call
    if backend == "tensorflow":
        import tensorflow as tf

        return tf.function(fn, jit_compile=True, reduce_retracing=True)
    return fn


def concrete_bool(value):
    """`bool(value)` in eager execution, `None` while tracing.

    Tracers (JAX `jit`) and symbolic tensors (`tf.function`) refuse
    `bool()`: then the caller builds a graph (`ops.cond`,
    `ops.while_loop`). In eager execution a Python branch or loop computes
    the same result without building one: eager `ops.cond` on JAX traces
    and compiles both branches at every call (their closures are new), and
    an eager `ops.while_loop` compiles its loop anew at every call, so an
    eager training loop would compile new programs at every step.
    """
    try:
        return bool(value)
    except Exception:
        return None


def cond(pred, true_fn, false_fn):
    """`keras.ops.cond(pred, true_fn, false_fn)`, except that a concrete
    (eager) predicate runs only the chosen branch in Python (see
    `concrete_bool`): the same result, with no program compiled per call."""
    concrete = concrete_bool(pred)
    if concrete is None:
        return keras.ops.cond(pred, true_fn, false_fn)
    return true_fn() if concrete else false_fn()


def process_count():
    """Processes of a multi-process JAX run (`jax.process_count()`, after
    `keras.distribution.initialize`); 1 on other backends."""
    if keras.backend.backend() != "jax":
        return 1
    import jax

    return jax.process_count()


def process_index():
    """This process's index in a multi-process JAX run (0 elsewhere)."""
    if keras.backend.backend() != "jax":
        return 0
    import jax

    return jax.process_index()


def global_batch(local, layout, global_rows):
    """The global array of a multi-process JAX run whose rows along the
    batch dimension are every process's `local` NumPy rows, in process
    order (`jax.make_array_from_process_local_data`): each process passes
    only the rows it read, and `layout` (a `keras.distribution.TensorLayout`
    of the global shape, `global_rows` rows) places them on its own
    devices."""
    import jax

    shape = (global_rows,) + tuple(local.shape[1:])
    return jax.make_array_from_process_local_data(
        layout.backend_layout, local, shape
    )


def allgather(value):
    """Every process's NumPy `value` (the same shape and dtype on every
    process), stacked along a new leading axis of length
    `process_count()`, on every process
    (`jax.experimental.multihost_utils.process_allgather`); `value[None]`
    in a single process. The bytes travel as `uint8`, so float64 and
    64-bit integers arrive exactly (JAX without x64 would narrow them)."""
    import numpy as np

    value = np.ascontiguousarray(value)
    if process_count() == 1:
        return value[None]
    from jax.experimental import multihost_utils

    raw = value.reshape(-1).view(np.uint8)
    gathered = np.asarray(multihost_utils.process_allgather(raw, tiled=False))
    return gathered.view(value.dtype).reshape((-1,) + value.shape)
