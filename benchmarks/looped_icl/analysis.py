"""Looped ICL benchmark: the sweep's generated method notes and checks."""

import numpy as np

from benchmarks import stats
from benchmarks.looped_icl.common import BREAK_RATIO
from benchmarks.looped_icl.common import CLEAR_FIT
from benchmarks.looped_icl.common import HEAVY_TAIL
from benchmarks.looped_icl.common import LEARNING_RATES
from benchmarks.looped_icl.common import MONOTONE_TOL
from benchmarks.looped_icl.common import SMALL_SHIFT
from benchmarks.looped_icl.common import UNCONVERGED_GAIN
from benchmarks.looped_icl.common import fit_growth

# A diverged (non-finite) or exploded normalised loss is capped here before
# its log10 enters a paired comparison (`stats.verdict` needs finite
# values); 1e30 is far above any loss a trained model reaches.
LOSS_CAP = 1e30


def _g(x):
    """Three significant digits (ints and strings unchanged)."""
    if isinstance(x, (float, np.floating)):
        return f"{x:.3g}"
    return str(x)


def _seq(values):
    return ", ".join(_g(v) for v in values)


def nearly_monotone(values):
    """True when no value exceeds `MONOTONE_TOL` x the smallest before
    it (non-finite values fail)."""
    values = np.asarray(values, np.float64)
    if not np.all(np.isfinite(values)):
        return False
    running = np.minimum.accumulate(values)
    return bool(np.all(values[1:] <= MONOTONE_TOL * running[:-1]))


def loglog_slope(kappas, depths):
    """Least-squares slope of log(depth) on log(kappa) over the reached
    kappas (sqrt kappa <-> 0.5, kappa <-> 1; log kappa bends below
    0.5 and flattens); None with fewer than 3 reached."""
    k = np.log(np.asarray(kappas, np.float64))
    dep = np.asarray(depths, np.float64)
    ok = np.isfinite(dep)
    if ok.sum() < 3:
        return None
    return float(np.polyfit(k[ok], np.log(dep[ok]), 1)[0])


def least_depth(rows, name, kappa, key, target):
    ok = [
        r["depth"]
        for r in rows
        if r["form"] == name and r["kappa"] == kappa and r[key] <= target
    ]
    return min(ok) if ok else float("inf")


def tried_depth(rows, name, kappa):
    return max(
        (r["depth"] for r in rows if r["form"] == name and r["kappa"] == kappa),
        default=0,
    )


def depth_text(rows, name, kappas, depths):
    return " / ".join(
        str(int(dep)) if np.isfinite(dep) else f">{tried_depth(rows, name, k)}"
        for k, dep in zip(kappas, depths)
    )


def training_flags(row, restricted):
    """Why a sweep point may reflect the optimiser rather than the model."""
    flags = []
    if "inf" in row["val_median_per_lr"]:
        flags.append("a learning rate diverged")
    if row["last_quarter_gain"] > UNCONVERGED_GAIN:
        flags.append(f"last-quarter gain {_g(row['last_quarter_gain'])}")
    grid = LEARNING_RATES[restricted]
    if row["lr"] in (min(grid), max(grid)):
        flags.append(f"lr {row['lr']:g} at the grid edge")
    return flags


def breaking_shift(row, shifts):
    """Smallest shift whose loss ratio reaches `BREAK_RATIO` (inf if
    none)."""
    for s in sorted(shifts):
        if s > 0 and not row[f"ratio s={s:g}"] < BREAK_RATIO:
            return s
    return float("inf")


def analyse(
    args,
    forms,
    sweep_rows,
    least,
    least_rows,
    shift_rows,
    ablation_rows,
    curves,
):
    """Method notes (markdown) and one descriptive text per paper claim
    (no verdict: those come from `paired_comparisons`)."""
    names = [f[0] for f in forms]
    restricted_of = {f[0]: f[2] for f in forms}
    km, L = args.main_kappa, args.train_depth
    shifts = [s for s in args.shifts if s > 0]
    s1 = shifts[0] if shifts else 0.0
    by_depth = {
        n: sorted(
            (r for r in shift_rows if r["form"] == n), key=lambda r: r["depth"]
        )
        for n in names
    }
    sweep_at = {(r["form"], r["kappa"], r["depth"]): r for r in sweep_rows}
    val_least = {
        n: [
            least_depth(sweep_rows, n, k, "val_median", args.target)
            for k in args.kappas
        ]
        for n in names
    }

    # --- Method notes ---
    notes = []
    checks = [r["library_check"] for r in sweep_rows]
    finite = [c for c in checks if np.isfinite(c)]
    notes.append(
        "Training runs in JAX on an exact reduction of each prompt to "
        "`(K/n, z_q)` (a layer maps every token row `z` to `z T`, `T = I + "
        "Q^T (K/n) P^T`); the trained weights are loaded into "
        "`LoopedICLRegressor` and run on the full "
        f"{args.num_context + 1}-token prompts: `library_check` (max "
        "|library - reduced| / std(y) on 256 test prompts) is <= "
        f"{_g(max(finite)) if finite else 'nan'} for "
        f"{len(finite)} of {len(checks)} models"
        + (
            " (the others are non-finite)."
            if len(finite) < len(checks)
            else "."
        )
    )
    n_lrs = len(LEARNING_RATES[True])
    notes.append(
        f"Per configuration {n_lrs} learning rates x {len(args.seeds)} "
        "seeds are "
        f"trained ({args.steps} Adam steps, batch {args.batch_size}, 5% "
        "warm-up + cosine to 1%, global-norm clip 1, best-validation weights "
        f"kept, checked every {args.steps // 12} steps on "
        f"{args.val_prompts} prompts); the lr whose worst seed has the "
        "lowest best validation loss is chosen (a median would accept a "
        "rate that fails one seed in three) and its "
        f"{len(args.seeds)} seeds are tested on "
        f"{args.test_prompts} fresh prompts. Learning-rate grids: restricted "
        f"{LEARNING_RATES[True]}, unrestricted {LEARNING_RATES[False]}."
    )
    for restricted in (True, False):
        rows = [r for r in sweep_rows if restricted_of[r["form"]] == restricted]
        if not rows:
            continue
        gains = [r["last_quarter_gain"] for r in rows]
        gains = [x for x in gains if np.isfinite(x)]
        high = [r for r in rows if r["last_quarter_gain"] > UNCONVERGED_GAIN]
        top = [r for r in high if r["lr"] == max(LEARNING_RATES[restricted])]
        kind = "restricted" if restricted else "unrestricted"
        text = (
            f"`last_quarter_gain` (relative drop of the best validation loss "
            f"over the last quarter of training) of the {kind} models: max "
            f"{_g(max(gains)) if gains else 'nan'}"
        )
        if high:
            text += (
                f"; {len(high)} of {len(rows)} exceed {UNCONVERGED_GAIN} "
                f"({_g(min(r['last_quarter_gain'] for r in high))}.."
                f"{_g(max(r['last_quarter_gain'] for r in high))}; "
                f"{len(top)} of them at the top of the lr grid): those are "
                f"not fully converged in {args.steps} steps"
            )
        notes.append(text + ".")
    notes.append(
        "Sweep depths stop at the first depth reaching the target, except at "
        f"the main kappa ({km:g}), where every depth up to "
        f"{2 * max(L, 4)} is trained."
    )
    parts, differ = [], []
    for n in names:
        slope = loglog_slope(args.kappas, val_least[n])
        parts.append(
            f"{n} {depth_text(sweep_rows, n, args.kappas, val_least[n])}"
            f" (log-log slope {_g(slope) if slope is not None else '-'})"
        )
        for k, dt, dv in zip(args.kappas, least[n], val_least[n]):
            if dt != dv:
                differ.append((n, k, dt, dv))
    text = (
        "Validation-based least depth (median validation loss over seeds of "
        f"the chosen lr <= {args.target}; the slope is fitted over the "
        "kappas reached, needs 3): "
        + "; ".join(parts)
        + f" at kappa {' / '.join(f'{k:g}' for k in args.kappas)}."
    )
    if differ:
        items = []
        for n, k, dt, dv in differ:
            item = (
                f"{n} at kappa {k:g}: test "
                f"{depth_text(sweep_rows, n, [k], [dt])} vs validation "
                f"{depth_text(sweep_rows, n, [k], [dv])}"
            )
            depth = min(dt, dv)
            row = sweep_at.get((n, k, depth))
            if row is not None:
                heavy = row["test_top1%_share"] > HEAVY_TAIL
                item += (
                    f" (at L={int(depth)}: mean test loss "
                    f"{_g(row['test_mean'])}, validation median "
                    f"{_g(row['val_median'])}, worst 1% of test prompts carry "
                    f"{_g(100 * row['test_top1%_share'])}% of the squared "
                    f"error{' — heavy-tailed' if heavy else ''})"
                )
            items.append(item)
        text += (
            " It differs from the test-based table for "
            + "; ".join(items)
            + "."
        )
    notes.append(text)
    keras_lrs = {
        n: sweep_at[n, km, L]["lr"] for n in names if (n, km, L) in sweep_at
    }
    notes.append(
        f"Learning rates picked at kappa={km:g}, L={L} (the keras part's "
        "defaults): "
        + ", ".join(f"{n} {lr:g}" for n, lr in keras_lrs.items())
        + "."
    )
    notes.append(
        "Descriptive thresholds (the per-claim texts below; no verdict "
        f"comes from them): a shift breaks a model when its mean loss grows "
        f">= {BREAK_RATIO:g}x; shifts up to {SMALL_SHIFT:g} count as small; "
        f"curves count as monotone when no point exceeds {MONOTONE_TOL:g}x "
        "the smallest before it; a fit is clear when its relative error is "
        f"< {CLEAR_FIT:g}x the runner-up's; models whose in-distribution "
        "loss is >= 1 (worse than predicting 0) are left out of the shift "
        "texts. Verdicts come only from the paired per-seed comparisons "
        "(`benchmarks/stats.py`)."
    )

    verdicts = []

    # --- Claim 1: depth vs kappa ---
    text = []
    for loop in ("looped", "deep"):
        r, u = f"{loop}_restricted", f"{loop}_unrestricted"
        if r not in least or u not in least:
            continue
        fewer, more, unknown = [], [], []
        for i, k in enumerate(args.kappas):
            dr, du = least[r][i], least[u][i]
            if np.isfinite(du):
                (fewer if du <= dr else more).append(k)
            elif np.isfinite(dr) and tried_depth(sweep_rows, u, k) >= dr:
                more.append(k)
            else:
                unknown.append(k)
        text.append(
            f"{u} needs no more layers than {r} at kappa "
            f"{_seq(fewer) or '-'}"
            + (f", more at {_seq(more)}" if more else "")
            + (f" (undecided at {_seq(unknown)})" if unknown else "")
            + " (least depth "
            f"{depth_text(sweep_rows, u, args.kappas, least[u])} vs "
            f"{depth_text(sweep_rows, r, args.kappas, least[r])})."
        )
    for n in names:
        fits = fit_growth(args.kappas, least[n])
        reached = int(np.sum(np.isfinite(least[n])))
        expected = "sqrt" if restricted_of[n] else "log"
        if reached < 3:
            text.append(f"{n}: only {reached} kappas reach the target, no fit.")
            continue
        order = sorted(fits, key=lambda f: fits[f][1])
        best, second = order[0], order[1]
        clear = fits[best][1] < CLEAR_FIT * fits[second][1]
        slope = loglog_slope(args.kappas, val_least[n])
        text.append(
            f"{n} (expected {expected} kappa; {reached} kappas reached): best "
            f"fit `c {best} kappa` ({'clearly' if clear else 'marginally'}: "
            + ", ".join(f"{f} {_g(fits[f][1])}" for f in order)
            + " rel. err); validation-based least depth "
            f"{depth_text(sweep_rows, n, args.kappas, val_least[n])}, log-log "
            f"slope {_g(slope) if slope is not None else '-'}."
        )
    if "looped_restricted" in least:
        fits = fit_growth(args.kappas, least["looped_restricted"])
        if (
            np.isfinite(fits["linear"][1])
            and min(fits, key=lambda f: fits[f][1]) == "linear"
        ):
            text.append(
                "Interpretation (not measured): a looped restricted model "
                "repeats one learned preconditioned GD step, whose number of "
                "iterations grows ~kappa, whereas distinct layers can use "
                "different (Chebyshev-like) steps."
            )
    verdicts.append(
        {
            "claim": "Depth lower bounds: log(kappa) layers unrestricted, "
            "sqrt(kappa) restricted",
            "text": " ".join(text),
        }
    )

    def valid(row):
        return np.isfinite(row["s=0"]) and row["s=0"] < 1.0

    # --- Claim 2: deep models fragile under small shifts ---
    text = []
    for n in [n for n in names if n.startswith("deep")]:
        rows = [r for r in by_depth[n] if valid(r)]
        left = [r["depth"] for r in by_depth[n] if not valid(r)]
        if not rows:
            continue
        breaks = [breaking_shift(r, shifts) for r in rows]
        deep_rows = [b for r, b in zip(rows, breaks) if r["depth"] >= L]
        fragile = bool(deep_rows) and all(b <= SMALL_SHIFT for b in deep_rows)
        trend = all(b2 <= b1 for b1, b2 in zip(breaks, breaks[1:]))
        last = rows[-1]
        text.append(
            f"{n} (L = {_seq(r['depth'] for r in rows)}): loss ratio at s = "
            f"{s1:g}: {_seq(r[f'ratio s={s1:g}'] for r in rows)}; breaking "
            f"shift: {_seq(breaks)} ("
            + ("small" if fragile else "not small")
            + f" for L >= {L}, "
            + ("non-increasing" if trend else "not non-increasing")
            + f" in L); at L = {last['depth']} the loss goes from "
            f"{_g(last['s=0'])} to {_g(last[f's={SMALL_SHIFT:g}'])} at s = "
            f"{SMALL_SHIFT:g}"
            + (f"; left out (loss >= 1): L = {_seq(left)}" if left else "")
            + "."
        )
    verdicts.append(
        {
            "claim": "Deep models are not robust to small shifts",
            "text": " ".join(text),
        }
    )

    # --- Claim 3: looped models robust ---
    text = []
    for n in [n for n in names if n.startswith("looped")]:
        vname = f"{n} (final loss, L={L})"
        c1 = curves.get((vname, s1))
        row = next((r for r in by_depth[n] if r["depth"] == L), None)
        if c1 is None or row is None:
            continue
        loop_robust = bool(np.isfinite(c1[-1]) and c1[-1] <= c1[L - 1])
        deep = n.replace("looped", "deep")
        drow = next(
            (r for r in by_depth.get(deep, []) if r["depth"] == L), None
        )
        small = [s for s in shifts if s <= SMALL_SHIFT]
        item = (
            f"{n} trained at L = {L}: at s = {s1:g} its loss is "
            f"{_g(c1[L - 1])} after {L} loops and {_g(c1[-1])} after "
            f"{len(c1)} ("
            + ("does not grow" if loop_robust else "grows")
            + f" with more loops); loss ratios at L = {L} for s = "
            f"{_seq(small)}: {_seq(row[f'ratio s={s:g}'] for s in small)}"
        )
        if drow is not None:
            item += (
                f" (deep counterpart: "
                f"{_seq(drow[f'ratio s={s:g}'] for s in small)})"
            )
        rows = [r for r in by_depth[n] if valid(r)]
        item += (
            f"; breaking shift by L = {_seq(r['depth'] for r in rows)}: "
            f"{_seq(breaking_shift(r, shifts) for r in rows)}"
        )
        for shift in (0.0, s1):
            a = next(
                (
                    r
                    for r in ablation_rows
                    if r["model"] == vname
                    and r["shift"] == shift
                    and "expansive_share" in r
                ),
                None,
            )
            if a is not None:
                item += (
                    f"; at s = {shift:g} the loop `I - A^T S` is expansive on "
                    f"{_g(100 * a['expansive_share'])}% of prompts "
                    f"(sym(A) eigenvalues {a['eig sym(A) (seed -1)']}), the "
                    "loss after "
                    f"{args.max_loops} loops on the others is "
                    f"{_g(a[f'contractive_loss@{args.max_loops}'])}"
                )
        text.append(item + ".")
    verdicts.append(
        {
            "claim": "Looped models are robust to shifts",
            "text": " ".join(text),
        }
    )

    # --- Claim 4: more loops keep lowering the loss ---
    text = []
    for n in [n for n in names if n.startswith("looped")]:
        vname = f"{n} (final loss, L={L})"
        c0 = curves.get((vname, 0.0))
        if c0 is None:
            continue
        best = int(np.argmin(c0)) + 1
        marks = [x for x in (2 * L, 30, 50) if x < len(c0)] + [len(c0)]
        a = next(
            (
                r
                for r in ablation_rows
                if r["model"] == vname and r["shift"] == 0
            ),
            {},
        )
        item = (
            f"{n} trained at L = {L}: loss {_g(c0[L - 1])} at {L} loops, "
            + ", ".join(f"{_g(c0[x - 1])} at {x}" for x in marks)
            + f"; best loop {best}"
        )
        if f"median@{args.max_loops}" in a:
            item += (
                f"; median per-prompt error at {args.max_loops} loops "
                f"{_g(a[f'median@{args.max_loops}'])}"
            )
        item += "."
        others = [
            (v, c)
            for (v, s), c in curves.items()
            if s == 0.0 and v.startswith(n + " (") and v != vname
        ]
        for v, c in others:
            row = next(
                (
                    r
                    for r in ablation_rows
                    if r["model"] == v and r["shift"] == 0
                ),
                {},
            )
            item += (
                f" Ablation {v[len(n) + 1 :]}: "
                + ", ".join(f"{_g(c[x - 1])} at {x}" for x in marks)
                + f" loops, best loop {int(np.argmin(c)) + 1}"
                + (
                    f", expansive on {_g(100 * row['expansive_share'])}% of "
                    "prompts"
                    if "expansive_share" in row
                    else ""
                )
                + (f", lr {row['lr']:g}" if row.get("lr") else "")
                + "."
            )
        text.append(item)
    verdicts.append(
        {
            "claim": "Looped models keep lowering the loss past the "
            "training depth",
            "text": " ".join(text),
        }
    )

    # --- Claim 5: loss monotone in depth only for looped models ---
    text = []
    for n in names:
        rows = by_depth[n]
        if not rows:
            continue
        ind = nearly_monotone([r["s=0"] for r in rows])
        shifted = nearly_monotone([r[f"s={s1:g}"] for r in rows])
        item = (
            f"{n}: trained depths L = {_seq(r['depth'] for r in rows)}, test "
            f"loss {_seq(r['s=0'] for r in rows)} ("
            + ("monotone" if ind else "not monotone")
            + f"), at s = {s1:g} {_seq(r[f's={s1:g}'] for r in rows)} ("
            + ("monotone" if shifted else "not monotone")
            + ")"
        )
        vname = f"{n} (final loss, L={L})"
        if (vname, 0.0) in curves:
            loops_ok = nearly_monotone(curves[vname, 0.0])
            item += (
                f"; loss vs test-time loops (1..{args.max_loops}) of the L = "
                f"{L} model: " + ("monotone" if loops_ok else "not monotone")
            )
        flagged = []
        for r in rows:
            sw = sweep_at.get((n, km, r["depth"]))
            flags = training_flags(sw, restricted_of[n]) if sw else []
            if flags:
                flagged.append(f"L={r['depth']}: {', '.join(flags)}")
        if flagged:
            item += "; training flags: " + "; ".join(flagged)
        text.append(item + ".")
    verdicts.append(
        {
            "claim": "Only looped models have a loss monotone in depth",
            "text": " ".join(text)
            + f" (kappa={km:g}.) Training flags mark points that may "
            "reflect the optimiser rather than the model.",
        }
    )
    return "\n\n".join(notes), verdicts


def log_loss(values):
    """log10 of normalised losses, non-finite or exploded ones capped at
    `LOSS_CAP` (losses span many decades: a heavy-tailed seed must not
    decide a mean difference alone)."""
    v = np.asarray(values, np.float64)
    v = np.where(np.isfinite(v), v, LOSS_CAP)
    return np.log10(np.clip(v, 1e-12, LOSS_CAP))


CLAIMS = (
    "Depth lower bounds: log(kappa) layers unrestricted, sqrt(kappa) "
    "restricted",
    "Deep models are not robust to small shifts",
    "Looped models are robust to shifts",
    "Looped models keep lowering the loss past the training depth",
    "Only looped models have a loss monotone in depth",
)


def paired_comparisons(args, per_seed):
    """Every paper claim as paired per-seed comparisons of log10
    normalised test losses, judged by `benchmarks.stats.verdict`.

    `per_seed` holds per-seed losses (same seeds, same batch order in every
    arm): `test[(form, kappa, depth)]` in distribution; `shifted[(form,
    depth)][s]` at the main kappa and shift `s`; `loops[form][s]` the
    `(seeds, max_loops)` losses of the looped form trained at the training
    depth, run for 1..max_loops loops. Returns one row per comparison.
    """
    km, L = args.main_kappa, args.train_depth
    s1 = args.shifts[1] if len(args.shifts) > 1 else 0.0
    test, shifted, loops = (
        per_seed["test"],
        per_seed["shifted"],
        per_seed["loops"],
    )
    rows = []

    def add(claim, detail, method, baseline, direction):
        r = stats.paired_difference(method, baseline)
        rows.append(
            {
                "claim": claim,
                "comparison": detail,
                "direction": direction,
                "method mean": float(np.mean(method)),
                "baseline mean": float(np.mean(baseline)),
                "diff": r["mean"],
                "ci_low": r["low"],
                "ci_high": r["high"],
                "n": r["n"],
                "method_per_seed": [float(x) for x in method],
                "baseline_per_seed": [float(x) for x in baseline],
            }
        )

    # 1. Unrestricted attention needs fewer layers (log kappa) than
    #    restricted (sqrt kappa): lower loss at the same depth.
    for loop in ("looped", "deep"):
        u, r = f"{loop}_unrestricted", f"{loop}_restricted"
        for k in sorted({km, max(args.kappas)}):
            if (u, k, L) in test and (r, k, L) in test:
                add(
                    CLAIMS[0],
                    f"{loop}: log10 test loss at kappa={k:g}, L={L}, "
                    "unrestricted vs restricted",
                    log_loss(test[u, k, L]),
                    log_loss(test[r, k, L]),
                    -1,
                )

    def shift_gain(name, depth):
        s = shifted[name, depth]
        return log_loss(s[s1]) - log_loss(s[0.0])

    # 2./3. Deep models degrade more under a small shift than looped ones;
    #    a looped model's shifted loss keeps falling with more loops.
    for kind in ("restricted", "unrestricted"):
        d, lp = f"deep_{kind}", f"looped_{kind}"
        if (d, L) in shifted and (lp, L) in shifted:
            add(
                CLAIMS[1],
                f"{kind}: log10(loss at s={s1:g} / loss at s=0), L={L}, "
                "deep vs looped",
                shift_gain(d, L),
                shift_gain(lp, L),
                1,
            )
    for name, curves in loops.items():
        if s1 in curves:
            c = curves[s1]
            add(
                CLAIMS[2],
                f"{name} trained at L={L}, s={s1:g}: log10 loss after "
                f"{c.shape[1]} loops vs after {L}",
                log_loss(c[:, -1]),
                log_loss(c[:, L - 1]),
                -1,
            )
    # 4. Past the training depth, at s = 0.
    for name, curves in loops.items():
        c = curves[0.0]
        for n in sorted({2 * L, c.shape[1]}):
            add(
                CLAIMS[3],
                f"{name} trained at L={L}: log10 loss after {n} loops vs "
                f"after {L}",
                log_loss(c[:, n - 1]),
                log_loss(c[:, L - 1]),
                -1,
            )
    # 5. Shifted loss vs trained depth (the deepest trained up to 2L, the
    #    same for every form where its depth cap allows): falls for looped,
    #    rises for deep.
    for name in sorted({n for n, _ in shifted}):
        deepest = max(dep for n, dep in shifted if n == name and dep <= 2 * L)
        if deepest <= L or (name, L) not in shifted:
            continue
        looped = name.startswith("looped")
        add(
            CLAIMS[4],
            f"{name}: log10 loss at s={s1:g}, trained depth {deepest} vs "
            f"{L} ({'lower' if looped else 'higher'} expected)",
            log_loss(shifted[name, deepest][s1]),
            log_loss(shifted[name, L][s1]),
            -1 if looped else 1,
        )
    return rows


def claim_verdicts(rows, texts):
    """One verdict per claim: `stats.verdict` of each of its comparisons
    (from the per-seed values), combined by `stats.combine`, with the
    run's descriptive text. `benchmarks/claims.py` recomputes the same
    from the table (its verdicts are the ones the results file shows)."""
    out = []
    for claim in CLAIMS:
        mine = [
            (
                r["comparison"],
                stats.verdict(
                    r["method_per_seed"],
                    r["baseline_per_seed"],
                    direction=r["direction"],
                ),
            )
            for r in rows
            if r["claim"] == claim
        ]
        out.append(
            {
                "claim": claim,
                "status": stats.combine([v for _, v in mine])
                if mine
                else stats.NOT_TESTABLE,
                "comparisons": [
                    f"{c}: {v['verdict']} ({v['reason']})" for c, v in mine
                ],
                "text": texts.get(claim, ""),
            }
        )
    return out
