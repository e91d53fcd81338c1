"""MAUVE's quantiser comes from below the metrics (ARCHITECTURE.md)."""

import os
import subprocess
import sys

_SNIPPET = """
import sys
import numpy as np
from keras_gr.metrics.mauve import quantize
x = np.random.default_rng(0).normal(size=(40, 3))
p, q = quantize(x, x + 1.0, num_buckets=4, num_redo=1)
assert abs(p.sum() - 1) < 1e-9 and abs(q.sum() - 1) < 1e-9
print(sorted(m for m in sys.modules if m.startswith("keras_gr.curation")))
"""


def test_mauve_does_not_import_curation():
    """Metrics sit below curation: quantising must not import it (it
    did, for `KMeans`, before the k-means core moved to
    `keras_gr._kmeans`)."""
    root = os.path.dirname(os.path.dirname(os.path.dirname(__file__)))
    env = dict(os.environ, PYTHONPATH=os.path.abspath(root))
    out = subprocess.run(
        [sys.executable, "-c", _SNIPPET],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert out.stdout.strip().splitlines()[-1] == "[]"
