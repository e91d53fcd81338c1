"""Benchmarks of OneSidedShampoo and the structured-preconditioner family.

Paper: "Structured Preconditioners in Adaptive Optimization: A Unified
Analysis" (Xie et al., arXiv:2503.10537).

Parts (`--part regression|speed|quality|all`, and `scale`), one module
each:

1. regression (`regression.py`): the paper's problem
   `f(X) = 0.5 <H, (X - X*)(X - X*)^T>`, H = Q diag(i^-2) Q^T, every
   method run through the Keras optimizers with its learning rate tuned
   on a shared log grid (the best flagged when at the grid's edge); final
   loss, curves (PNG), optimizer-state bytes. (JAX: the steps run under
   `jax.jit`.)
2. speed (`speed.py`): step time of the local DEFAULT_CONFIG Gemma LM
   (jit `fit`) with OneSidedShampoo at precondition_frequency 1/10/100, as
   mean step (wall time over whole root periods) with median and worst
   step beside it, as ratios to Keras Adam and Keras Muon measured in the
   same run, plus state bytes.
3. quality (`quality.py`): the same LM trained from a fresh initialisation
   for the same number of steps with each optimizer, the peak learning
   rate tuned on the first seed over the same 3-point grid shape around
   each optimizer's default (`harness.lr_grid`), validation loss averaged
   over seeds.
4. scale (`scale.py`, `--part scale`, not in `all`): an MLP
   1024-3072-3072-1024 (`--scale-widths`; the 3072 x 3072 kernel is above
   the old 2048 limit) at `--scale-batch` rows per step (default 2048: an
   LM step carries thousands of tokens) and at batch 128, and the 4-layer
   width-512 MLP (batch 512): mean step (wall time over whole root
   periods), median and worst step of OneSidedShampoo (before issue 15,
   the defaults, the statistics interval, root frequency 100, eigh, ...:
   `SCALE_OPTIMIZERS`) vs Keras Adam and Muon, interleaved, with the
   preconditioned fraction of the parameters. Issue 29's runs:
   `--scale-cases mlp512 --scale-rows-mlp512 Adam,tuned,... --scale-steps
   20 --scale-tag _mlp512` and `--scale-rows-mlp512 Adam,f100
   --scale-steps 100 --scale-tag _mlp512_f100`.

Run: `KERAS_BACKEND=jax .venv/bin/python -m benchmarks.shampoo [--quick]`.
"""

import argparse
import os

import keras

from benchmarks import harness
from benchmarks.shampoo.quality import QUALITY_GRID


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--part",
        default="all",
        choices=["all", "regression", "speed", "quality", "scale"],
    )
    parser.add_argument("--dim", type=int, default=10)
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--speed-steps", type=int, default=20)
    parser.add_argument("--speed-rounds", type=int, default=6)
    parser.add_argument("--quality-steps", type=int, default=200)
    parser.add_argument(
        "--quality-sequence-length",
        type=int,
        default=64,
        help="training windows of the quality part (the preset's own "
        "sequence length is 128; 64 halves the cost on a 2-core CPU)",
    )
    parser.add_argument(
        "--quality-timing-steps",
        type=int,
        default=20,
        help="steps per timed round of the LM step time (rounded up to "
        "whole root periods)",
    )
    parser.add_argument("--quality-timing-rounds", type=int, default=3)
    parser.add_argument(
        "--grid-extensions",
        type=int,
        default=2,
        help="how many times a best rate at the grid's edge extends the "
        "grid by one ladder point",
    )
    parser.add_argument("--scale-steps", type=int, default=10)
    parser.add_argument("--scale-rounds", type=int, default=3)
    parser.add_argument(
        "--scale-batch",
        type=int,
        default=2048,
        help="rows per step of the wide case (an LM step carries thousands "
        "of tokens; the wide128 case keeps batch 128)",
    )
    parser.add_argument("--scale-widths", default="1024,3072,3072,1024")
    parser.add_argument(
        "--scale-cases",
        default="wide,wide128,mlp512",
        help="comma-separated cases of the scale part: wide (batch "
        "--scale-batch), wide128, mlp512",
    )
    parser.add_argument(
        "--scale-rows",
        default="Adam,before,defaults,tuned",
        help="rows of the wide case (keys of SCALE_OPTIMIZERS; Muon is "
        "~1 TFLOP per step there, too slow for a 2-core CPU)",
    )
    parser.add_argument("--scale-rows-wide128", default="Adam,defaults,tuned")
    parser.add_argument(
        "--scale-rows-mlp512",
        default="Adam,Muon,before,eigh,defaults,tuned",
    )
    parser.add_argument(
        "--scale-tag",
        default="",
        help="suffix of the scale result files (e.g. _mlp512)",
    )
    parser.add_argument(
        "--quality-tag",
        default="",
        help="suffix of the quality result files (e.g. _issue15)",
    )
    parser.add_argument(
        "--quality-optimizers",
        default=",".join(QUALITY_GRID),
        help="comma-separated rows of the quality part",
    )
    harness.add_seeds_argument(parser)
    parser.add_argument("--checkpoints", type=int, default=10)
    parser.add_argument(
        "--lrs", default="", help="comma-separated grid for every optimizer"
    )
    args = parser.parse_args(argv)
    args.seeds = [0, 1] if args.quick else harness.seeds_of(args)
    return args


def main(argv=None):
    from benchmarks.shampoo.quality import part_quality
    from benchmarks.shampoo.regression import part_regression
    from benchmarks.shampoo.scale import part_scale
    from benchmarks.shampoo.speed import part_speed

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    args = parse_args(argv)
    parts = {
        "regression": part_regression,
        "speed": part_speed,
        "quality": part_quality,
        "scale": part_scale,
    }
    names = ["regression", "speed", "quality"]
    names = names if args.part == "all" else [args.part]
    if "regression" in names and keras.backend.backend() != "jax":
        print("regression part runs on JAX only; skipped")
        names.remove("regression")
    for name in names:
        parts[name](args)
