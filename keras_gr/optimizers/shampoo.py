"""Two-sided (tensor) Shampoo as a Keras 3 optimizer."""

import math
import re

import keras

from keras_gr import _validation
from keras_gr.optimizers import _deprecation
from keras_gr.optimizers._structured import StructuredPreconditioner

RENAMED_ARGUMENTS = {
    "beta1": "beta_1",
    "beta2": "beta_2",
    "grafting_beta2": "grafting_beta_2",
}
"""Old argument names of `Shampoo` / `OneSidedShampoo` (deprecated, still
accepted with a `DeprecationWarning` until keras_gr 0.2.0) and their new
names."""


@keras.saving.register_keras_serializable(package="keras_gr")
class Shampoo(StructuredPreconditioner):
    r"""Two-sided (tensor) Shampoo with blocking, grafting and momentum.

    For every matrix variable $W$ ($m \times n$, gradient $G$), at step
    $t$:

    1. momentum $M = \beta_1 M + (1 - \beta_1) G$ and its bias-corrected
       direction $D = M / (1 - \beta_1^t)$ (Nesterov optional);
    2. statistics (every `statistics_frequency` steps)
       $L = \beta_2 L + (1 - \beta_2) G G^\top$ ($m \times m$) and
       $R = \beta_2 R + (1 - \beta_2) G^\top G$ ($n \times n$);
    3. their inverse fourth roots $\hat L^{-1/4}$, $\hat R^{-1/4}$ of the
       bias-corrected $\hat L = L / (1 - \beta_2^k)$ ($k$ statistics
       updates so far), recomputed every `precondition_frequency` steps
       and cached in between;
    4. $S = \hat L^{-1/4} D \hat R^{-1/4}$, rescaled to the Frobenius norm
       of the grafting optimizer's update (Adam by default);
    5. $W \leftarrow W - \eta\, \mathrm{graft}(S)$.

    With `beta_1=0`, `beta_2=1`, `grafting="none"` and
    `precondition_frequency=1` this is the AdaGrad-sum update the paper
    analyses, up to the eigenvalue floor. A tensor of rank $k$ gets one
    factor per axis ($G_{(a)} G_{(a)}^\top$, the contraction of every
    other axis) and roots $-1/(2k)$ (Gupta et al.'s tensor Shampoo).
    `OneSidedShampoo` is the same optimizer with the largest axis left
    unpreconditioned (for a matrix: one factor, on the smaller side, root
    $-1/2$).

    Cost. For an m x n kernel preconditioned on its m side in blocks of
    `b` rows, trained on `B` rows (tokens) per step, the optimizer adds
    per step about

        2 m b n / statistics_frequency      (statistics, G G^T per block)
      + 2 m b n                             (applying the roots)
      + (m / b) c b^3 / precondition_frequency      (roots, staggered)

    FLOPs to Adam's `6 m n B` (forward + backward) and elementwise update
    (`c`: ~10 for `eigh`, `6 k` matmul FLOPs for `"newton"` with `k`
    iterations, 11-21 from condition number 1e2 to 1e6 for `p = 2`);
    two-sided pays it once per side. Over a whole root period the mean
    step is then about

        1 + b (1 + 1 / statistics_frequency) / (3 B)
          + c b^2 / (6 n B precondition_frequency)

    times Adam's: the first two terms are the step without roots, the
    last is the roots, paid on a few steps of each period. The knobs, in
    order of their weight in this formula: `precondition_frequency`, then
    `root_method` (it sets `c`), then `max_preconditioner_dim` (the root
    term grows as `b^2`, the others as `b`), then `statistics_frequency`.

    Which knobs matter, measured (`python -m benchmarks.shampoo --part
    scale`, `benchmarks/results/shampoo_scale_*`, mean step over whole
    root periods in interleaved rounds, 2-core CPU; figures vary by about
    +-0.2 between runs there): on the width-512 MLP of 4 Dense 512 x 512
    kernels at batch 512 (`b = n = B = 512`) the step without roots is
    1.33x Adam's (the formula's floor), Keras Muon's 4.6-4.9x. With
    `statistics_frequency=10` and `precondition_frequency=10` the mean
    step is 2.0-2.1x Adam's with `"auto"` (`eigh` under JAX on CPU: ~20
    ms per 512 root; 1.77-1.85x with `OPENBLAS_THREAD_TIMEOUT=4`, below)
    against 2.2-2.3x with Newton (~8-10 iterations on these statistics,
    ~70-90 ms per root step) and 2.4x on TensorFlow (Newton). With
    `max_preconditioner_dim=256` as well (two 256-blocks per kernel: half
    the statistics and application work, a quarter of the root work,
    Newton roots) it is 1.44x under JAX (worst step 2.7x Adam's mean
    step), 1.36x with the OpenBLAS setting and 1.42x on TensorFlow (worst
    1.8x); the benchmark measures speed only, and blocks of 256 are a
    coarser (block-diagonal) preconditioner. At `precondition_frequency=100`
    (and statistics every 100 steps) it is 1.39-1.40x (TensorFlow 1.68x).
    On the wide MLP of the benchmark (kernels up to 3072 x 3072 in blocks
    of 1024, batch 2048) it is 1.15-1.28x under JAX and 1.6-1.75x on
    TensorFlow at `precondition_frequency=10` and
    `statistics_frequency=10`. On the small Gemma LM of the quality
    benchmark (every factor at most 128, so `"auto"` is Newton) it is
    1.03x Adam's at `precondition_frequency=10` and 1.10x (sequences of
    128) to 1.24x (of 64) at 1 (`shampoo_speed_jax`,
    `shampoo_quality_jax`). So: first a long period, then the cheaper
    root of the platform, then smaller blocks. A warm start of the root
    from the previous one was measured and rejected (below).

    - `max_preconditioner_dim` (block size `b`): a factored axis longer
      than this is split into balanced blocks of at most this length
      (`ceil(d / ceil(d / max_preconditioner_dim))`, the last block
      zero-padded, which is exact), each with its own factors, as the
      public Shampoo implementations do. A 4096 x 4096 kernel gets 16
      blocks of 1024 x 1024 (two-sided: 2 x 16 factors of 1024 x 1024,
      128 MiB of float32 statistics + roots; one-sided: half). With few
      rows per step (`B` below ~`b`) prefer 512 or 256.
    - `statistics_frequency`: update the statistics (and count one more
      update in their bias correction) only every this many steps, under
      an `ops.cond`, so the other steps skip the `G G^T` products; the
      step itself (the current roots applied to the momentum) is taken
      every step (Google's scalable_shampoo's `statistics_compute_steps`).
      It samples one gradient in `k` for the statistics (their EMA
      horizon becomes `k / (1 - beta_2)` steps).
    - `precondition_frequency` and `stagger_roots`: roots are recomputed
      every `precondition_frequency` steps. Staggering works per block:
      every `(b, b)` block of every factor gets its own step in the
      period, packed greedily on `b^3` (largest first onto the least
      loaded step), so no step recomputes more than
      `total / precondition_frequency + largest block` of root work and
      the blocks of one large kernel land on different steps. All roots
      are computed once at `start_preconditioning_step`. Blocks due on the
      same step that share `(b, p)` are decomposed in one batched call,
      across variables.
    - `root_method`: `"auto"` (default), `"newton"` (coupled Newton, only
      matrix products) or `"eigh"`. `"auto"` is `eigh` under JAX on CPU
      for blocks of 257 and larger (LAPACK: 19 ms per 512 x 512 root
      against 105 ms for Newton at condition number 1e6), Newton for
      smaller blocks there (as cheap, ~1 ms at 128, and it leaves no
      OpenBLAS thread spinning, below: on the LM of the quality
      benchmark, every factor at most 128, the mean step fell from
      1.33x Adam's to 1.03x) and Newton elsewhere (TensorFlow's compiled
      `eigh` on CPU: 2.4 s against 89 ms; on TPU and GPU Newton is
      batched matmuls, their `eigh` is iterative and slow). The two agree
      to about 1e-3 on training trajectories (tested); `eigh` clips the
      spectrum at the floor where Newton shifts it (see
      `matrix_functions`). JAX's CPU `eigh` runs in scipy's OpenBLAS,
      whose idle threads keep spinning after each call and slow the next
      steps on a small CPU: set `OPENBLAS_THREAD_TIMEOUT=4` (or
      `OPENBLAS_NUM_THREADS=1`) before starting Python (measured on 2
      cores: the steps after a root step fall from ~45 ms back to the
      24 ms of a step without root). Every Newton root is solved from a
      scaled identity, not warm-started from the previous root: the
      coupled iteration is exact only from a start that commutes with the
      statistics, and the uncoupled one diverges from a non-commuting
      start. Measured on the statistics of the MLP above, one root period
      apart (a 16-24% change): from the previous root, the uncoupled
      Newton-Schulz iteration reached residuals `max |X^2 A - I|` of only
      1e-4 to 2e-3 after 4 iterations (linear, not quadratic,
      convergence) and diverged to NaN on every factor in the second
      period (a 54-76% change), while the cold coupled solve reaches the
      1e-5 tolerance in 8-10 iterations there. In eager execution the
      iteration runs as a Python loop, so warm eager steps compile
      nothing.
    - Staggering and `statistics_frequency`: among equally loaded root
      offsets, the blocks are put on steps that do not update the
      statistics (`_staggering.busy_offsets`), so a root and the `G G^T`
      products do not add up on one step (the worst step).
    - `preconditioning_summary()` reports per variable and in total what is
      preconditioned, each block's step offset and the root work per
      step; `build` warns when less than half of the parameters are.

    Choices the paper leaves open (reconstructed from the public
    implementations, google-research scalable_shampoo and
    facebookresearch distributed_shampoo, documented and tested here):

    - *Momentum* is one EMA buffer on the raw gradient,
      `m = beta_1 m + (1 - beta_1) g`, bias-corrected
      (`m / (1 - beta_1^t)`); Nesterov uses
      `(beta_1 m + (1 - beta_1) g) / (1 - beta_1^(t+1))`. The
      preconditioner is applied to this direction. The same buffer is the
      Adam graft's first moment, so that before
      `start_preconditioning_step` (or for fallback variables) the update
      is Keras `Adam(beta_1=beta_1, beta_2=grafting_beta_2,
      epsilon=epsilon)` (`grafting.adam_direction`, tested equal).
    - *Statistics* are EMAs with `beta_2` and the roots are taken of the
      bias-corrected `stat / (1 - beta_2^k)`, `k` the number of statistics
      updates so far (`t` with `statistics_frequency=1`; with
      `grafting="none"` the first steps are otherwise
      `(1 - beta_2)^(-1/p)` too large).
    - *Grafting* rescales `S` per variable to the Frobenius norm of the
      grafting optimizer's update: `"adam"` (Keras Adam, above),
      `"adagrad"` (Keras `Adagrad` with a zero initial accumulator on the
      momentum direction), `"sgd"` (the momentum direction itself) or
      `"none"` (`S` unscaled).
    - *Fallback*: 1-D variables (biases, norms), scalars, embeddings
      (variables whose path contains "embedding", if `exclude_embeddings`),
      variables whose path matches a regex of `exclude_layers`, and (only
      with `blocking=False`) variables with no axis within
      `max_preconditioner_dim` get the grafting optimizer's update (Adam
      when `grafting="none"`).
    - *Axes*: axes of length 1 get no factor. With `blocking=False` an axis
      longer than `max_preconditioner_dim` gets no factor (identity).
      By default (`flatten_tensors=True`) a rank > 2 kernel is viewed as
      the matrix `(prod(shape[:-1]), shape[-1])`, so an attention kernel
      `(hidden, heads, head_dim)` gets one factor over `hidden * heads`
      (blocked like any long side) and one over `head_dim` (two-sided).
      With `flatten_tensors=False` it is preconditioned per axis: a
      factor on each of its axes, input axis included (two-sided);
      one-sided leaves out only its largest axis, the tensor analogue of
      "the smaller side" of a matrix. Flattening is the default because
      it trained the LM of the quality benchmark better
      (`benchmarks/results/shampoo_quality_*`).
    - *Inverse roots*: float32 always (the statistics are float32
      variables whatever the dtype policy), symmetrised, at the highest
      matmul precision, of all same-shaped blocks due on a step in one
      batched call (across variables; Newton's stopping rule is per
      matrix, so a batch gives each block the root it gets alone), with
      the spectrum floored at
      `relative_matrix_epsilon * lambda_max + matrix_epsilon`
      (`keras_gr.optimizers.matrix_functions.matrix_inverse_pth_root`).
      The relative floor keeps rank-deficient statistics reproducible. A
      block whose root has NaN/Inf keeps its previous root; roots start at
      identity.
    - *Non-finite gradients*: if any gradient of the step has a NaN/Inf,
      the whole step is skipped: no variable and no state changes (the
      same for every variable; Keras's decoupled `weight_decay`, applied
      before the update, is the one exception).
    - *Gradient accumulation*: under JAX, Keras runs `update_step` on every
      micro-step and discards all but the last; statistics and roots are
      only computed on that last micro-step (no wasted decompositions).
    - *Distribution* (`keras.distribution`): momentum and grafting state
      inherit the variable's layout (`add_variable_from_reference`); the
      `(N, b, b)` statistics and roots of a blocked variable are sharded
      along the block axis `N` over the largest mesh axis whose size
      divides `N` (memory per device: `2 * 4 * N * b^2 / axis_size`
      bytes per factor), else replicated. Each device decomposes only its
      own blocks: a sharded factor is one staggering unit (all its blocks
      recomputed on the same step, in their own batched root), so the
      compiled root iterations run on `(N / S, b, b)` per device with no
      collective inside (tested on the partitioned HLO). Under
      `DataParallel` and `ModelParallel` the trajectory equals the
      single-device one (tested on 8 virtual devices to 1e-4) when the
      root schedule is the same, i.e. with `stagger_roots=False` (or
      `precondition_frequency=1`); staggered, the sharded factors are
      refreshed per factor instead of per block.

    Args:
        learning_rate: float or schedule. Defaults to `0.001` (an Adam
            learning rate, thanks to grafting).
        beta_1: momentum decay in `[0, 1)`; `0` disables momentum (no
            buffer is created). Defaults to `0.9`.
        beta_2: decay of the statistics in `[0, 1]`; `1` keeps the plain
            sum (AdaGrad). Defaults to `0.999`.
        epsilon: denominator term of the Adam / Adagrad graft and
            fallback (as Keras's `Adam` / `Adagrad` `epsilon`). Defaults
            to `1e-7`.
        nesterov: Nesterov momentum. Defaults to `False`.
        grafting: `"adam"`, `"adagrad"`, `"sgd"` or `"none"`. Defaults to
            `"adam"`.
        grafting_beta_2: second-moment decay of the Adam graft. Defaults
            to `0.999`.
        precondition_frequency: recompute the inverse roots every this many
            steps. Defaults to `10`.
        start_preconditioning_step: first (1-based) step that uses the
            preconditioner; earlier steps use the grafting update (plain
            momentum SGD with `grafting="none"`). Statistics accumulate
            from step 1. Defaults to `1`.
        max_preconditioner_dim: the block size: longest factor. Defaults to
            `1024`.
        blocking: split axes longer than `max_preconditioner_dim` into
            blocks (`True`) or give them no factor (`False`). Defaults to
            `True`.
        stagger_roots: spread the root recomputations, block by block,
            over the `precondition_frequency` steps. Defaults to `True`.
        root_method: `"auto"`, `"newton"` or `"eigh"`. Defaults to
            `"auto"`: `"eigh"` under JAX on CPU for blocks of 257 and
            larger, `"newton"` for smaller blocks and elsewhere
            (`matrix_functions.resolve_root_method`).
        statistics_frequency: update the statistics every this many
            steps (steps 1, 1 + k, 1 + 2k, ...); the step itself is taken
            every step. Defaults to `1`.
        matrix_epsilon: absolute eigenvalue floor of the roots. Defaults to
            `1e-12`.
        relative_matrix_epsilon: eigenvalue floor of the roots relative to
            the largest eigenvalue, in `[0, 1)`. Defaults to `1e-6`.
        exclude_embeddings: give embeddings the fallback update. Defaults
            to `True`.
        exclude_layers: list of regexes on variable paths that get the
            fallback update. Defaults to `None`.
        flatten_tensors: view a kernel of rank > 2 as the matrix
            `(prod(shape[:-1]), shape[-1])` (one-sided: one factor, on
            its smaller side) instead of one factor per axis (`False`).
            Defaults to `True`.
        **kwargs: the base `keras.optimizers.Optimizer` arguments
            (`weight_decay` (decoupled, AdamW-style), `clipnorm`,
            `clipvalue`, `global_clipnorm`, `use_ema`, `ema_momentum`,
            `ema_overwrite_frequency`, `loss_scale_factor`,
            `gradient_accumulation_steps`, `name`). The names before
            keras_gr 0.2.0, `beta1`, `beta2` and `grafting_beta2`, are
            still accepted with a `DeprecationWarning`.

    Example:

    >>> import keras, numpy as np
    >>> from keras_gr.optimizers import Shampoo
    >>> model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4)])
    >>> opt = Shampoo(learning_rate=1e-2, max_preconditioner_dim=4)
    >>> model.compile(optimizer=opt, loss="mse")
    >>> _ = model.fit(np.ones((4, 8)), np.ones((4, 4)), verbose=0)
    >>> opt.preconditioning_summary()["variables"][0]["factors"]
    [(2, 4, 4), (2, 4, 4)]

    References:
        - Gupta, Koren, Singer, "Shampoo: Preconditioned Stochastic Tensor
          Optimization", arXiv:1802.09568.
        - Xie, Wang, Reddi, Kumar, Li, "Structured Preconditioners in
          Adaptive Optimization: A Unified Analysis", arXiv:2503.10537.
    """

    _one_sided = False

    def __init__(
        self,
        learning_rate: float = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-7,
        nesterov: bool = False,
        grafting: str = "adam",
        grafting_beta_2: float = 0.999,
        precondition_frequency: int = 10,
        start_preconditioning_step: int = 1,
        max_preconditioner_dim: int = 1024,
        blocking: bool = True,
        stagger_roots: bool = True,
        root_method: str = "auto",
        statistics_frequency: int = 1,
        matrix_epsilon: float = 1e-12,
        relative_matrix_epsilon: float = 1e-6,
        exclude_embeddings: bool = True,
        exclude_layers: list | None = None,
        flatten_tensors: bool = True,
        weight_decay: float | None = None,
        clipnorm: float | None = None,
        clipvalue: float | None = None,
        global_clipnorm: float | None = None,
        use_ema: bool = False,
        ema_momentum: float = 0.99,
        ema_overwrite_frequency: int | None = None,
        loss_scale_factor: float | None = None,
        gradient_accumulation_steps: int | None = None,
        name: str | None = None,
        **kwargs,
    ) -> None:
        renamed = _deprecation.pop_renamed(
            type(self).__name__,
            Shampoo.__init__,
            kwargs,
            RENAMED_ARGUMENTS,
            beta_1=beta_1,
            beta_2=beta_2,
            grafting_beta_2=grafting_beta_2,
        )
        if name is None:
            name = "one_sided_shampoo" if self._one_sided else "shampoo"
        max_preconditioner_dim = _validation.check_integer(
            "max_preconditioner_dim", max_preconditioner_dim
        )
        super().__init__(
            learning_rate,
            epsilon=epsilon,
            nesterov=nesterov,
            grafting=grafting,
            precondition_frequency=precondition_frequency,
            start_preconditioning_step=start_preconditioning_step,
            matrix_epsilon=matrix_epsilon,
            relative_matrix_epsilon=relative_matrix_epsilon,
            block_size=max_preconditioner_dim if blocking else None,
            stagger_roots=stagger_roots,
            root_method=root_method,
            statistics_frequency=statistics_frequency,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
            clipvalue=clipvalue,
            global_clipnorm=global_clipnorm,
            use_ema=use_ema,
            ema_momentum=ema_momentum,
            ema_overwrite_frequency=ema_overwrite_frequency,
            loss_scale_factor=loss_scale_factor,
            gradient_accumulation_steps=gradient_accumulation_steps,
            name=name,
            **renamed,
            **kwargs,
        )
        self.max_preconditioner_dim = max_preconditioner_dim
        self.blocking = bool(blocking)
        self.exclude_embeddings = bool(exclude_embeddings)
        self.exclude_layers = list(exclude_layers or [])
        self.flatten_tensors = bool(flatten_tensors)

    def _route(self, variable):
        shape = tuple(int(d) for d in variable.shape)
        if len(shape) < 2:
            return "rank < 2"
        path = self._variable_path(variable)
        if self.exclude_embeddings and "embedding" in path.lower():
            return "embedding (exclude_embeddings)"
        for pattern in self.exclude_layers:
            if re.search(pattern, path):
                return f"exclude_layers {pattern!r}"
        if self.flatten_tensors and len(shape) > 2:
            shape = (math.prod(shape[:-1]), shape[-1])
        factored = [d > 1 for d in shape]
        if self._one_sided:
            # Leave out the largest axis (the last one among equals, so a
            # square matrix is preconditioned on its left side).
            largest = max(range(len(shape)), key=lambda a: (shape[a], a))
            factored[largest] = False
        if not self.blocking:
            limit = self.max_preconditioner_dim
            factored = [f and d <= limit for f, d in zip(factored, shape)]
        if not any(factored):
            if not self.blocking and any(d > 1 for d in shape):
                return "no axis within max_preconditioner_dim (blocking off)"
            return "no axis to precondition"
        return shape, factored

    def get_config(self):
        config = super().get_config()
        config.update(
            {
                "beta_1": self.beta_1,
                "beta_2": self.beta_2,
                "epsilon": self.epsilon,
                "nesterov": self.nesterov,
                "grafting": self.grafting,
                "grafting_beta_2": self.grafting_beta_2,
                "precondition_frequency": self.precondition_frequency,
                "start_preconditioning_step": (self.start_preconditioning_step),
                "max_preconditioner_dim": self.max_preconditioner_dim,
                "blocking": self.blocking,
                "stagger_roots": self.stagger_roots,
                "root_method": self.root_method,
                "statistics_frequency": self.statistics_frequency,
                "matrix_epsilon": self.matrix_epsilon,
                "relative_matrix_epsilon": self.relative_matrix_epsilon,
                "exclude_embeddings": self.exclude_embeddings,
                "exclude_layers": self.exclude_layers,
                "flatten_tensors": self.flatten_tensors,
            }
        )
        return config
