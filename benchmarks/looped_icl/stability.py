"""Looped ICL benchmark, stability part: both trainers side by side per
learning rate, counting the seeds that fail."""

import time

import keras
import numpy as np

from benchmarks import harness
from benchmarks.looped_icl.common import FAIL_RATIO
from benchmarks.looped_icl.common import FORMS
from benchmarks.looped_icl.common import add_to_json
from benchmarks.looped_icl.common import full_problems
from benchmarks.looped_icl.common import normalised
from benchmarks.looped_icl.common import normalised_stack
from benchmarks.looped_icl.common import problems
from benchmarks.looped_icl.common import select
from benchmarks.looped_icl.common import train
from benchmarks.looped_icl.keras_part import agreement
from benchmarks.looped_icl.keras_part import keras_predict
from benchmarks.looped_icl.keras_part import keras_train


def failed_seeds(losses, typical):
    """Boolean mask of the seeds whose test loss is not finite or above
    `FAIL_RATIO` x `typical` (a seed that diverged, or stalled near the
    trivial predictor's 1.0)."""
    losses = np.asarray(losses, np.float64)
    return ~np.isfinite(losses) | (losses > FAIL_RATIO * typical)


def stability_part(args):
    """Seeds that fail per learning rate, in both trainers, at kappa =
    `--main-kappa` and L = `--train-depth`: the raw-JAX trainer of the
    sweep and the library model under `compile` / `fit` (`keras_train`)
    on the current backend, same data, same recipe, same seeds."""
    backend = keras.backend.backend()
    print(f"settings: {vars(args)}", flush=True)
    t0 = time.perf_counter()
    km, L, lrs = args.main_kappa, args.train_depth, args.stability_lrs
    seeds = tuple(args.seeds)
    forms = [f for f in FORMS if f[0] in args.forms]
    reduced = {
        "train": problems(args, args.train_prompts, km, 1 + args.seed),
        "val": problems(args, args.val_prompts, km, 2 + args.seed),
        "test": problems(args, args.test_prompts, km, 3 + args.seed),
    }
    full = {
        "train": full_problems(args, args.train_prompts, km, 1 + args.seed),
        "val": full_problems(args, args.val_prompts, km, 2 + args.seed),
        "test": full_problems(args, args.test_prompts, km, 3 + args.seed),
    }
    losses = {}  # (form, trainer, lr) -> per-seed test losses
    for form in forms:
        name, looped, _ = form
        best, _, _, _ = train(
            form, L, reduced["train"], reduced["val"], args, lrs, seeds
        )
        for i, lr in enumerate(lrs):
            chosen = select(best, i * len(seeds), (i + 1) * len(seeds))
            losses[name, "raw JAX", lr] = normalised_stack(
                chosen, reduced["test"], L, looped
            )
            print(f"{name} raw lr={lr:g}: {losses[name, 'raw JAX', lr]}")
            keras_losses = []
            for seed in seeds:
                model, _, _, _ = keras_train(
                    form, lr, seed, full["train"], full["val"], args
                )
                x, y = full["test"]
                keras_losses.append(
                    float(normalised(keras_predict(model, x), y))
                )
            losses[name, "keras", lr] = np.array(keras_losses)
            print(f"{name} keras lr={lr:g}: {keras_losses}", flush=True)
    wall = time.perf_counter() - t0

    rows, verdicts = [], []
    for name, _, _ in forms:
        stable = []
        for lr in lrs:
            raw, ker = losses[name, "raw JAX", lr], losses[name, "keras", lr]
            # The typical run at this rate: the median of both trainers'
            # seeds (a slower rate that converges to a higher loss is not
            # a failure; a seed far behind its peers is).
            typical = float(np.median(np.concatenate([raw, ker])))
            fr, fk = failed_seeds(raw, typical), failed_seeds(ker, typical)
            row = {"form": name, "lr": lr}
            for label, v, f in (("raw JAX", raw, fr), ("keras", ker, fk)):
                row[f"{label} failed"] = f"{int(f.sum())} / {len(v)}"
                row[f"{label} seeds"] = " / ".join(f"{x:.4g}" for x in v)
                row[f"{label} median"] = float(np.median(v))
            if not fr.any() and not fk.any():
                ok, gap, tol = agreement(ker, raw)
                row |= {"|log ratio|": gap, "tolerance": tol, "agree": ok}
                stable.append((lr, ok))
            rows.append(row)
        if stable:
            lr, ok = max(stable)
            verdicts.append(
                f"- {name}: the largest learning rate at which no seed "
                f"failed in either trainer is **{lr:g}**; there the Keras "
                f"model {'agrees' if ok else 'does not agree'} with the "
                "raw-JAX trainer."
            )
        else:
            verdicts.append(
                f"- {name}: some seed failed at every learning rate tried "
                "(**no stable rate found**)."
            )
    notes = [
        f"Wall time {wall:.0f}s ({backend}).",
        "## Method notes (generated)",
        f"kappa={km:g}, L={L}, {len(seeds)} seeds ({seeds[0]}..{seeds[-1]})"
        f", {args.steps} steps of batch {args.batch_size}; both trainers "
        "use Adam with 5% warm-up + cosine to 1% and global-norm clip 1, "
        "keep the best-validation weights of 12 checks, and are tested on "
        f"{args.test_prompts} prompts (normalised loss, 1.0 = predicting "
        f"0). A seed fails when its test loss is not finite or above "
        f"{FAIL_RATIO:g}x the median of all seeds of both trainers at that "
        "form and learning rate (it diverged, or stalled far behind its "
        "peers). Agreement (only where no seed failed): the rule of the "
        "keras part. A check of the library's recipe on this backend, not "
        "a paper claim: no verdict words.",
        "## Stable learning rates (generated)",
        *verdicts,
    ]
    name = f"looped_icl_stability_{backend}" + ("_quick" if args.quick else "")
    text = harness.write_results(
        name,
        {f"Failed seeds per learning rate (kappa={km:g}, L={L})": rows},
        meta={"seeds_used": list(seeds), "lrs": lrs, "wall_s": wall},
        notes="\n\n".join(notes),
    )
    add_to_json(
        name,
        {
            "losses": {
                f"{n}|{t}|{lr:g}": v.tolist()
                for (n, t, lr), v in losses.items()
            }
        },
    )
    print(text)
