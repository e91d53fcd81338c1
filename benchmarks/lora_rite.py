"""LoRA-RITE vs Adam / AdamW: LoRA fine-tuning of a local keras-hub preset.

Paper: "LoRA Done RITE: Robust Invariant Transformation Equilibration for
LoRA Optimization", Yen et al., arXiv:2410.20625. Claim tested: LoRA-RITE
beats Adam at equal steps, costs about Adam's time and memory, and its
result does not depend on how the LoRA factors are scaled.

Task: the `DEFAULT_CONFIG` Gemma preset (pretrained on pydoc topics) with
LoRA (query/value, rank 8) fine-tuned on standard-library docstrings
(`keras_gr.data.stdlib_docstrings_corpus`, a domain the preset did not
see); metric: held-out next-token loss and accuracy.

1. quality: each optimizer at its best learning rate from a small grid
   (tuned on seed 0, held-out loss), then mean +- std over `--seeds`.
2. cost: mean step time (median and worst step beside it) and
   optimizer-state bytes, ratios to Adam
   measured in the same run (this backend).
3. invariance: the LoRA `a` factors scaled by s in {0.1, 1, 10} (and `b`
   by 1/s; Keras initialises `b` to zero) before training; the spread of
   the final held-out loss per optimizer.

Run: `KERAS_BACKEND=jax python -m benchmarks.lora_rite [--quick]`.
"""

import argparse
import json
import time

import keras
import keras_hub
import numpy as np

from benchmarks import harness
from keras_gr.data import stdlib_docstrings_corpus
from keras_gr.optimizers import LoraRite
from keras_gr.presets import DEFAULT_CONFIG
from keras_gr.presets import build_local_preset


def token_stream(tokenizer, docs):
    ids = []
    for doc in docs:
        ids += [2] + list(np.asarray(tokenizer.tokenize(doc))) + [1]
    return np.array(ids, dtype="int32")


def windows_from(stream, seq, count=None, seed=0):
    if count is None:
        n = (len(stream) - 1) // seq
        idx = np.arange(n)[:, None] * seq + np.arange(seq + 1)[None, :]
    else:
        rng = np.random.default_rng(seed)
        starts = rng.integers(0, len(stream) - seq - 1, size=count)
        idx = starts[:, None] + np.arange(seq + 1)[None, :]
    w = stream[idx]
    return {"token_ids": w[:, :-1], "padding_mask": np.ones_like(w[:, :-1])}, w[
        :, 1:
    ]


def make_optimizer(name, lr):
    if name == "lora_rite":
        return LoraRite(learning_rate=lr)
    if name == "adam":
        return keras.optimizers.Adam(learning_rate=lr)
    return keras.optimizers.AdamW(learning_rate=lr, weight_decay=0.01)


def build(folder, name, lr, seed, args, scale=1.0):
    keras.utils.set_random_seed(seed)
    lm = keras_hub.models.CausalLM.from_preset(folder, preprocessor=None)
    lm.backbone.enable_lora(rank=args.rank)
    if scale != 1.0:
        for layer in lm.backbone._flatten_layers(include_self=False):
            if getattr(layer, "lora_enabled", False):
                layer.lora_kernel_a.assign(layer.lora_kernel_a * scale)
                layer.lora_kernel_b.assign(layer.lora_kernel_b / scale)
    optimizer = make_optimizer(name, lr)
    lm.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        weighted_metrics=[keras.metrics.SparseCategoricalAccuracy("acc")],
        jit_compile=True,
    )
    return lm, optimizer


def train_order(data, seed, args):
    (x, y), _ = data
    n = args.steps * args.batch_size
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))[:n]
    return {k: v[order] for k, v in x.items()}, y[order]


def run(folder, name, lr, seed, data, args, scale=1.0):
    lm, _ = build(folder, name, lr, seed, args, scale=scale)
    xs, ys = train_order(data, seed, args)
    _, (vx, vy) = data
    lm.fit(xs, ys, batch_size=args.batch_size, epochs=1, verbose=0)
    res = lm.evaluate(vx, vy, batch_size=32, verbose=0, return_dict=True)
    return {"loss": float(res["loss"]), "acc": float(res["acc"])}


def state_bytes(optimizer):
    return harness.variables_bytes(
        [
            v
            for v in optimizer.variables
            if "iteration" not in v.path and "learning_rate" not in v.path
        ]
    )


def part_cost(folder, data, args, lrs):
    """Step time (interleaved rounds: mean step with median and worst) and
    state bytes vs Adam."""
    entries, optimizers = {}, {}
    for name in ("adam", "lora_rite"):
        lm, opt = build(folder, name, lrs[name], 0, args)
        xs, ys = train_order(data, 0, args)
        entries[name] = (lm, xs, ys, args.batch_size)
        optimizers[name] = opt
    times = harness.time_fit_interleaved(
        entries, rounds=args.timing_rounds, steps_per_round=20
    )
    cost = [
        {
            "optimizer": name,
            "mean_s": times[name]["mean"],
            "median_s": times[name]["median"],
            "worst_s": times[name]["worst"],
            "state_bytes": state_bytes(optimizers[name]),
            "round_means_s": times[name]["rounds"],
        }
        for name in entries
    ]
    for value in ("mean_s", "median_s", "worst_s", "state_bytes"):
        harness.ratio_table(cost, key="optimizer", value=value, peer="adam")
    return cost


def part_quality(folder, data, args, grids):
    """Learning rate tuned on seed 0 (held-out loss), then the seeds."""
    tuning, quality, best = [], [], {}
    seeds = harness.seeds_of(args)
    for name, grid in grids.items():
        tuned = harness.tune_then_seeds(
            grid,
            lambda lr, seed, name=name: run(folder, name, lr, seed, data, args),
            seeds,
            score=lambda r: r["loss"],
            tune_seed=0,
        )
        for lr, r in tuned["tuning"]:
            tuning.append({"optimizer": name, "lr": lr, **r})
            print("tune", name, lr, r, flush=True)
        best[name] = tuned["best"]
        results = tuned["results"]
        loss_m, loss_s = harness.mean_std([r["loss"] for r in results])
        acc_m, acc_s = harness.mean_std([r["acc"] for r in results])
        quality.append(
            {
                "optimizer": name,
                "lr": best[name],
                # A one-point grid is at its edge too (nothing was tuned).
                "lr_at_grid_edge": tuned["at_edge"],
                "seeds": seeds,
                "held_out_loss": f"{loss_m:.4f} +- {loss_s:.4f}",
                "held_out_acc": f"{acc_m:.4f} +- {acc_s:.4f}",
                "loss_mean": loss_m,
                "acc_mean": acc_m,
                "loss_per_seed": [r["loss"] for r in results],
                "acc_per_seed": [r["acc"] for r in results],
            }
        )
        print(quality[-1], flush=True)
    return tuning, quality, best


def part_invariance(folder, data, args, best, tuning):
    invariance = []
    for name in ("lora_rite", "adam"):
        # s = 1 is the seed-0 tuning run at the best learning rate.
        losses = {
            1.0: next(
                {"loss": t["loss"], "acc": t["acc"]}
                for t in tuning
                if t["optimizer"] == name and t["lr"] == best[name]
            )
        }
        for s in (0.1, 10.0):
            losses[s] = run(folder, name, best[name], 0, data, args, scale=s)
        losses = {s: losses[s] for s in (0.1, 1.0, 10.0)}
        vals = [v["loss"] for v in losses.values()]
        invariance.append(
            {
                "optimizer": name,
                "lr": best[name],
                **{f"loss_s={s}": v["loss"] for s, v in losses.items()},
                "spread": max(vals) - min(vals),
            }
        )
        print(invariance[-1], flush=True)
    return invariance


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--part", default="all", choices=["all", "quality", "cost"]
    )
    parser.add_argument("--steps", type=int, default=None)
    harness.add_seeds_argument(parser)
    parser.add_argument("--rank", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--sequence-length", type=int, default=64)
    parser.add_argument("--timing-rounds", type=int, default=6)
    parser.add_argument(
        "--lrs",
        default="",
        help="cost part only: 'adam=3e-3,lora_rite=1e-2' (else read from "
        "this backend's quality results)",
    )
    parser.add_argument(
        "--grid",
        default="",
        help="comma-separated learning rates replacing the tuning grid "
        "(e.g. the other backend's best, to confirm it at lower cost)",
    )
    args = parser.parse_args()
    if args.steps is None:
        args.steps = 40 if args.quick else 300
    grid = [1e-3, 3e-3] if args.quick else [3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]
    if args.grid:
        grid = [float(v) for v in args.grid.split(",")]
    grids = {name: grid for name in ("lora_rite", "adam", "adamw")}
    start = time.time()
    folder = build_local_preset(**DEFAULT_CONFIG)
    tokenizer = keras_hub.models.CausalLMPreprocessor.from_preset(
        folder
    ).tokenizer
    train_docs, val_docs = stdlib_docstrings_corpus()
    seq = args.sequence_length
    train = windows_from(
        token_stream(tokenizer, train_docs), seq, count=4096, seed=0
    )
    val = windows_from(token_stream(tokenizer, val_docs), seq)
    data = (train, val)
    backend = keras.backend.backend()
    suffix = f"_{backend}" + ("_quick" if args.quick else "")
    meta = {
        "steps": args.steps,
        "batch_size": args.batch_size,
        "sequence_length": seq,
        "rank": args.rank,
        "seeds": harness.seeds_of(args),
        "quick": args.quick,
    }
    tables = {}
    if args.part in ("all", "quality"):
        tuning, quality, best = part_quality(folder, data, args, grids)
        tables["Held-out quality at equal steps (best lr per optimizer)"] = (
            quality
        )
        tables["Learning-rate tuning (seed 0)"] = tuning
        invariance = part_invariance(folder, data, args, best, tuning)
        title = "Invariance: final held-out loss with a scaled by s, b by 1/s"
        tables[title] = invariance
        meta["lr_grid"] = grid
        meta["wall_s"] = round(time.time() - start, 1)
        md = harness.write_results(f"lora_rite{suffix}", tables, meta=meta)
        print(md)
    if args.part in ("all", "cost"):
        if args.part == "all":
            lrs = best
        elif args.lrs:
            lrs = {
                k: float(v)
                for k, v in (kv.split("=") for kv in args.lrs.split(","))
            }
        else:
            with open(harness.result_path(f"lora_rite{suffix}", ".json")) as f:
                table = json.load(f)["tables"][
                    "Held-out quality at equal steps (best lr per optimizer)"
                ]
            lrs = {r["optimizer"]: r["lr"] for r in table}
        cost = part_cost(folder, data, args, lrs)
        meta.update(lrs=lrs, timing_rounds=args.timing_rounds)
        md = harness.write_results(
            f"lora_rite_cost{suffix}",
            {"Step time and optimizer state vs Adam": cost},
            meta=meta,
            notes=(
                "Interleaved rounds of 20 fit steps (the two models "
                "alternate, so machine drift hits both). mean_s: total fit "
                "wall time / steps (what a user pays); median_s / worst_s: "
                "median / maximum of the per-step times; *_ratio: to "
                "Adam's; round_means_s: the mean step of each round."
            ),
        )
        print(md)


if __name__ == "__main__":
    main()
