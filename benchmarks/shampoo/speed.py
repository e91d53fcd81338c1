"""Part 2, speed: step time of the local Gemma LM (jit `fit`) with
OneSidedShampoo at root frequency 1/10/100 against Keras Adam and Muon,
measured in interleaved rounds of whole root periods."""

import keras
import numpy as np

from benchmarks import harness
from benchmarks.shampoo.common import compile_lm
from benchmarks.shampoo.common import lm_data
from benchmarks.shampoo.common import load_lm
from benchmarks.shampoo.common import round_steps
from benchmarks.shampoo.common import speed_row
from benchmarks.shampoo.common import state_bytes
from benchmarks.shampoo.common import suffix
from keras_gr.optimizers import OneSidedShampoo

SPEED_OPTIMIZERS = {
    "Adam": lambda: keras.optimizers.Adam(1e-3),
    "Muon": lambda: keras.optimizers.Muon(1e-3),
    "OneSidedShampoo f=1": lambda: OneSidedShampoo(
        1e-3, precondition_frequency=1
    ),
    "OneSidedShampoo f=10": lambda: OneSidedShampoo(
        1e-3, precondition_frequency=10
    ),
    "OneSidedShampoo f=100": lambda: OneSidedShampoo(
        1e-3, precondition_frequency=100
    ),
}


def part_speed(args):
    config = None
    models, optimizers = {}, {}
    for name, make in SPEED_OPTIMIZERS.items():
        # One model per optimizer (same preset weights), all compiled and
        # warmed up before any timing; then interleaved timed rounds.
        lm, config = load_lm()
        opt = make()
        compile_lm(lm, opt)
        models[name] = lm
        optimizers[name] = opt
    batch = config["batch_size"]
    steps = round_steps(args.speed_steps, optimizers)
    (x, y), _ = lm_data(
        models["Adam"], config["sequence_length"], batch * steps
    )
    entries = {name: (lm, x, y, batch) for name, lm in models.items()}
    rounds = 3 if args.quick else args.speed_rounds
    times = harness.time_fit_interleaved(
        entries, rounds=rounds, steps_per_round=steps
    )
    peers = {peer: times[peer] for peer in ("Adam", "Muon")}
    rows = []
    for name in entries:
        row = speed_row(name, times[name], peers)
        row["state_bytes"] = state_bytes(optimizers[name])
        rows.append(row)
        print(rows[-1], flush=True)
    lm = models["Adam"]
    n_params = int(sum(np.prod(w.shape) for w in lm.trainable_weights))
    md = harness.write_results(
        f"shampoo_speed{suffix(args)}",
        {"step time": rows},
        meta={
            "params": n_params,
            "batch": batch,
            "sequence_length": config["sequence_length"],
            "steps_per_round": steps,
            "rounds": rounds,
        },
        notes=(
            "One model per optimizer, all compiled and warmed up (3 steps: "
            "compilation and the first root) before timing. Then `rounds` "
            "rounds; in each, every model runs one `fit` of "
            "`steps_per_round` steps (the smallest multiple of "
            "--speed-steps that is a whole number of every row's root "
            "periods), in an order rotated every round, so that drifts of "
            "this shared virtual machine hit all rows alike. mean_s: total "
            "`fit` wall time / steps (what a user pays, root steps "
            "included); median_s / worst_s: median / maximum of the "
            "per-step times; *_vs_<peer>: ratios to the peer's in the same "
            "rounds; worst_vs_<peer>_mean: worst step / the peer's mean "
            "step; round_means_vs_<peer>: the mean-step ratio of each round."
        ),
    )
    print(md)
