"""Two real JAX processes (gloo CPU collectives), each streaming its own
shard, fit the k-means one process fits on the whole stream (issue 27.2);
one process may stream an empty shard, an empty stream fails on both
alike, and mini-batch steps over uneven shards finish on both.

Two fresh processes, the two ranks of a `keras.distribution.initialize`d
run (two virtual CPU devices each, so four devices over two processes),
against the one-process fit in the test's own process. The shards have
different lengths (different batch counts per process) and the stream is
longer than the seeding sample, so the per-process samples are merged.
"""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pytest

_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
_READY = "__GLOO_READY__"
_RESULT = "__RESULT__"

_DATA = """
import numpy as np
rng = np.random.default_rng(0)
centres = 5 * rng.normal(size=(6, 8))
x = centres[rng.integers(0, 6, 1150)] + rng.normal(size=(1150, 8))
x = x.astype("float32")
shards = [x[:700], x[700:]]
"""

_FIT = """
from keras_gr.curation import KMeans

def batches(rows):
    return lambda: iter([rows[i:i + 100] for i in range(0, len(rows), 100)])

km = KMeans(6, stream_batch_size=128, sample_size=400, max_iter=25,
            tolerance=1e-6, seed=2)
"""

_RANK = """
import sys
import socket as _socket
_connect = _socket.socket.connect

def _local_only(self, address, *args):
    if isinstance(address, tuple) and address[0] not in (
            "localhost", "127.0.0.1", "::1"):
        raise RuntimeError("only localhost connections in keras_gr tests")
    return _connect(self, address, *args)

_socket.socket.connect = _local_only
rank, port = int(sys.argv[1]), sys.argv[2]
import jax
jax.config.update("jax_cpu_collectives_implementation", "gloo")
import keras
keras.distribution.initialize(f"localhost:{port}", 2, rank)
print("__GLOO_READY__", flush=True)
keras.distribution.set_distribution(keras.distribution.DataParallel(
    devices=keras.distribution.list_devices()))
"""


def _script(body):
    return textwrap.dedent(_DATA) + textwrap.dedent(_FIT) + body


def _free_port():
    """A free localhost port, found in a child process (this one's
    sockets are blocked by pytest-socket)."""
    code = (
        "import socket; s = socket.socket(); s.bind(('localhost', 0)); "
        "print(s.getsockname()[1])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True
    )
    return out.stdout.strip()


def _start(code, *args):
    env = dict(os.environ)
    env.update(
        KERAS_BACKEND="jax",
        JAX_PLATFORMS="cpu",
        XLA_FLAGS="--xla_force_host_platform_device_count=2",
        PYTHONPATH=os.path.abspath(_ROOT),
        TF_CPP_MIN_LOG_LEVEL="3",
    )
    with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
        f.write(code)
    proc = subprocess.Popen(
        [sys.executable, f.name, *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=_ROOT,
    )
    return proc, f.name


def _finish(proc, path, timeout=240):
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.unlink(path)
    lines = [x for x in out.splitlines() if x.startswith(_RESULT)]
    return (
        proc.returncode,
        out,
        err,
        (json.loads(lines[-1][len(_RESULT) :]) if lines else None),
    )


@pytest.mark.multidevice
def test_two_gloo_processes_streaming_their_shards_equal_one_process():
    jax = pytest.importorskip("jax")
    if "jax_cpu_collectives_implementation" not in jax.config.values:
        pytest.skip("this jax has no CPU collectives option (gloo)")
    report = f"""
import json
km.fit(batches(shards[rank]))
labels = km.predict(batches(shards[rank]))
# Rank 1 streams an empty shard: it takes part in every collective
# with masked steps only (before, it raised alone and rank 0 hung).
km_empty = KMeans(6, stream_batch_size=128, sample_size=400, max_iter=25,
                  tolerance=1e-6, seed=2)
km_empty.fit(batches(shards[0] if rank == 0 else x[:0]))
# An empty stream on every process: the same error on both, no hang.
try:
    KMeans(6, stream_batch_size=128).fit(batches(x[:0]))
    empty_error = None
except ValueError as error:
    empty_error = str(error)
# Mini-batch steps over shards of 11 and 8 batches: every process runs
# 11 steps per epoch (before, rank 1 left the loop 3 steps early).
km_mini = KMeans(6, stream_batch_size=128, sample_size=400, batch_size=64,
                 max_iter=30, seed=2)
km_mini.fit(batches(shards[rank]))
print("{_RESULT}" + json.dumps(dict(
    centroids=km.centroids.tolist(), inertia=km.inertia,
    iterations=km.iterations, rows=km.num_rows, labels=labels.tolist(),
    devices=len(keras.distribution.list_devices()),
    processes=jax.process_count(),
    empty_centroids=km_empty.centroids.tolist(),
    empty_rows=km_empty.num_rows, empty_error=empty_error,
    mini_centroids=km_mini.centroids.tolist(),
    mini_inertia=km_mini.inertia, mini_iterations=km_mini.iterations)))
"""
    port = _free_port()
    rank_code = textwrap.dedent(_RANK) + _script(report)
    ranks = [_start(rank_code, str(r), port) for r in range(2)]
    results = [_finish(*p) for p in ranks]
    for code, out, err, value in results:
        if value is None and _READY not in out:
            pytest.skip(
                "JAX gloo CPU collectives could not start here: "
                + err.strip()[-500:]
            )
        assert code == 0 and value is not None, err[-3000:]
    # The one-process reference, here (the JAX pass runs this test).
    scope = {}
    exec(_script(""), scope)
    km, batches, shards = scope["km"], scope["batches"], scope["shards"]
    km.fit(lambda: iter([*batches(shards[0])(), *batches(shards[1])()]))
    x = scope["x"]
    ref = dict(
        centroids=km.centroids,
        inertia=km.inertia,
        iterations=km.iterations,
        labels=km.predict(x),
    )
    first, second = (value for _, _, _, value in results)
    assert first["processes"] == 2 and first["devices"] == 4
    assert first["rows"] == second["rows"] == 1150
    for rank in (first, second):
        np.testing.assert_allclose(
            rank["centroids"], ref["centroids"], atol=1e-5
        )
        assert rank["iterations"] == ref["iterations"]
        np.testing.assert_allclose(rank["inertia"], ref["inertia"], rtol=1e-5)
    assert ref["iterations"] > 2
    # Rank 1 empty: both ranks give the one-process fit of shard 0.
    km.fit(batches(shards[0]))
    for rank in (first, second):
        assert rank["empty_rows"] == 700
        np.testing.assert_allclose(
            rank["empty_centroids"], km.centroids, atol=1e-5
        )
        assert "empty" in rank["empty_error"], rank["empty_error"]
    # Mini-batch over uneven shards: finished on both ranks, the same
    # centroids, and an objective near the Lloyd fit's.
    np.testing.assert_array_equal(
        first["mini_centroids"], second["mini_centroids"]
    )
    assert first["mini_iterations"] == 30
    assert first["mini_inertia"] < 1.2 * ref["inertia"]
    c = ref["centroids"]
    d = np.sort(((x[:, None] - c[None]) ** 2).sum(-1), axis=1)
    untied = d[:, 1] - d[:, 0] > 1e-3
    labels = np.concatenate([first["labels"], second["labels"]])
    np.testing.assert_array_equal(labels[untied], ref["labels"][untied])
