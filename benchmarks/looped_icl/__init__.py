"""Benchmark: depth and looping for in-context linear regression.

"On the Role of Depth and Looping for In-Context Learning with Task
Diversity" (Gatmiry, Saunshi, Reddi, Jegelka, Kumar; arXiv 2410.21698),
scaled down to a CPU. Four `keras_gr.models.LoopedICLRegressor` forms:
looped / deep (non-looped) x restricted `(A, u)` / unrestricted `(P, Q)`,
on prompts whose covariance has condition number in `[1, kappa]`
(`keras_gr.data.icl_regression_problems`, d = 5, n = 160, noiseless,
`w ~ N(0, Sigma^-1)`).

What is measured (losses are normalised, `E[(y_hat - y_q)^2] / E[y_q^2]`,
1.0 = predicting 0, means over 8192 fresh test prompts):

1. kappa sweep: for every kappa, form and depth `L` (the number of loops
   of a looped model, of layers of a deep one) models are trained with
   their own learning rate (a 3-point grid, every seed each, picked on
   the worst seed's validation loss: `pick_learning_rate`); the least `L`
   whose mean test loss reaches `--target` is compared with `log kappa`,
   `sqrt kappa` and `kappa` (the paper: `log kappa` layers unrestricted,
   `sqrt kappa` restricted).
2. Loss vs loops far past the training depth for the looped models, with
   the ablation that explains the explosion: the share of prompts on
   which the learned restricted loop `I - A S` is expansive, the loss on
   the other prompts, the loop with its step rescaled to be contractive
   on the training distribution, and looped models trained with a random
   number of loops (per prompt) or more loops.
3. Shift robustness: the same trained models on prompts whose spectrum is
   widened by `1 + s` at both ends, as a function of depth.

Training is done in JAX on an exact reduction of the prompts: a linear
attention layer maps every token row `z` to `z T`, `T = I + Q^T (K / n)
P^T` with `K` the keys' Gram matrix, so the layer acts on `(K / n, z_q)`
alone (`K <- T^T K T`, `z_q <- z_q T`); for the restricted form only the
`x^T y / n` column and the query's `y` change. The trained weights are
copied into `LoopedICLRegressor`s and run on the full prompts; the
largest difference to the reduced forward is reported (`library_check`).

Two more parts run on either backend:

- `--part keras`: the library model trained with `compile` / `fit` at the
  sweep's kappa, training depth and chosen learning rates, each figure
  compared with the sweep's (`looped_icl_keras_<backend>`).
- `--part stability`: both trainers side by side at each of
  `--stability-lrs` with `--seeds` seeds, counting the seeds that diverge
  or stall (`failed_seeds`); the largest rate at which none fails is the
  recipe `LoopedICLRegressor`'s docstring gives
  (`looped_icl_stability_<backend>`).

    KERAS_BACKEND=jax .venv/bin/python -m benchmarks.looped_icl [--quick]
    KERAS_BACKEND=<backend> .venv/bin/python -m benchmarks.looped_icl \
        --part keras
    KERAS_BACKEND=<backend> .venv/bin/python -m benchmarks.looped_icl \
        --part stability --forms looped_unrestricted,deep_unrestricted \
        --seeds 0 1 2 3 4 5

Verdicts (sweep part only) come from paired per-seed comparisons of log10
test losses through `benchmarks.stats` (`analysis.paired_comparisons`);
the keras and stability parts check the library and get no verdict words.
"""

from benchmarks.looped_icl.common import AGREE_MAX
from benchmarks.looped_icl.common import FAIL_RATIO
from benchmarks.looped_icl.common import parse_args
from benchmarks.looped_icl.common import pick_learning_rate
from benchmarks.looped_icl.keras_part import agreement
from benchmarks.looped_icl.keras_part import keras_part
from benchmarks.looped_icl.stability import failed_seeds
from benchmarks.looped_icl.stability import stability_part
from benchmarks.looped_icl.sweep import sweep_part

__all__ = [
    "AGREE_MAX",
    "FAIL_RATIO",
    "agreement",
    "failed_seeds",
    "main",
    "pick_learning_rate",
]


def main():
    args = parse_args()
    part = {"keras": keras_part, "stability": stability_part}
    return part.get(args.part, sweep_part)(args)
