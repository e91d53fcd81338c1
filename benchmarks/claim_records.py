"""One judging function per paper family, for `benchmarks/claims.py`.

Each `_<family>` function reads a recorded results payload (the JSON
`harness.write_results` wrote) and returns one record per tested
comparison: paper, claim, the paper's number, ours, the verdict of
`benchmarks.stats.verdict` on the per-seed values, and the results file.
No verdict rule lives here: only which numbers are compared, in which
direction, and each measure's floor. `records_for(name, payload)` picks
the family by the result's name (`FAMILIES`).
"""

import math
import re

import numpy as np

from benchmarks import stats
from benchmarks.paper_numbers import paper_number

MAUVE_FLOOR = 0.0041  # MAUVE of two disjoint sample sets at our sizes.
MAUVE_MARGIN = 0.01  # Both arms within 0.01 of it: at the floor.


def _record(paper, claim, result, method, baseline, *, detail="", **kw):
    """One comparison: `stats.verdict` plus what a reader needs."""
    number = kw.pop("paper_number", None) or paper_number(claim)
    out = stats.verdict(method, baseline, **kw)
    m, b = np.asarray(method, float), np.asarray(baseline, float)
    ours = "-"
    if m.size and b.size:
        ours = f"{np.mean(m):.4g} vs {np.mean(b):.4g}"
        if out["n"] >= 2 and math.isfinite(out["low"]):
            ours += (
                f" (diff {out['mean']:+.3g}, 95% CI "
                f"[{out['low']:.3g}, {out['high']:.3g}])"
            )
    return {
        "paper": paper,
        "claim": claim,
        "detail": detail,
        "paper_number": number,
        "ours": ours,
        "n": out["n"],
        "verdict": out["verdict"],
        "reason": out["reason"],
        "opposite_significant": out["opposite_significant"],
        "result": result,
    }


def _untestable(paper, claim, result, ours, reason):
    return {
        "paper": paper,
        "claim": claim,
        "detail": "",
        "paper_number": paper_number(claim),
        "ours": ours,
        "n": 0,
        "verdict": stats.NOT_TESTABLE,
        "reason": reason,
        "result": result,
    }


def _by_seed(rows, value, **match):
    """`row[value]` of the rows matching `match`, in seed order."""
    hits = [
        r
        for r in rows
        if value in r and all(r.get(k) == v for k, v in match.items())
    ]
    hits.sort(key=lambda r: r.get("seed", 0))
    return [float(r[value]) for r in hits]


# === SoftSRV ===


# Measure -> (direction, floor, margin). Exact-answer accuracy's floor is
# 0% (no generator answers anything right: nothing to compare).
SOFTSRV_MEASURES = {
    "mauve": (1, MAUVE_FLOOR, MAUVE_MARGIN),
    "downstream_loss": (-1, None, 0.0),
    "answer_accuracy": (1, 0.0, 1e-9),
}


def _softsrv(payload, result):
    return softsrv_records(payload["tables"]["per-run results"], result)


def softsrv_records(rows, result):
    """SoftSRV's comparisons from its per-run rows (domain, method, seed,
    one column per measure)."""
    paper = "SoftSRV"
    records = []
    domains = sorted({r["domain"] for r in rows})
    for domain in domains:
        for measure, (direction, floor, margin) in SOFTSRV_MEASURES.items():
            hard = [
                v
                for v in _by_seed(rows, measure, domain=domain, method="hard")
                if v is not None
            ]
            if not hard or not np.all(np.isfinite(hard)):
                continue
            for variant in ("mc", "mpk", "nsp"):
                records.append(
                    _record(
                        paper,
                        "every SoftSRV variant beats hard prompting",
                        result,
                        _by_seed(rows, measure, domain=domain, method=variant),
                        hard,
                        detail=f"{domain} {measure}: {variant} vs hard",
                        direction=direction,
                        floor=floor,
                        floor_margin=margin,
                    )
                )
            mc = _by_seed(rows, measure, domain=domain, method="mc")
            for other in ("mpk", "nsp"):
                records.append(
                    _record(
                        paper,
                        "MC is the best SoftSRV variant",
                        result,
                        mc,
                        _by_seed(rows, measure, domain=domain, method=other),
                        detail=f"{domain} {measure}: mc vs {other}",
                        direction=direction,
                        floor=floor,
                        floor_margin=margin,
                    )
                )
    return records


# === LAuReL ===

_LAUREL_BASELINES = ("baseline-N", "baseline-(N+1)")


def _laurel(payload, result):
    paper = "LAuReL"
    part = "lm" if "_lm" in result else "digits"
    per_seed = payload.get("per_seed", {}).get(part, {})
    if not per_seed:
        return []

    def values(model):
        v = per_seed[model]["values"]
        if part == "digits":  # `evaluate` output: [loss, accuracy].
            return [100.0 * float(x[1]) for x in v]
        return [float(x) for x in v]

    # Digits: test accuracy (the paper's metric), higher is better; LM:
    # validation loss, lower is better.
    direction = 1 if part == "digits" else -1
    measure = "test acc %" if part == "digits" else "val loss"
    base, deeper = (values(m) for m in _LAUREL_BASELINES)
    gate = _record(
        paper,
        "(precondition) the extra layer itself helps",
        result,
        deeper,
        base,
        detail=f"{part} {measure}: baseline-(N+1) vs baseline-N",
        direction=direction,
        paper_number=paper_number(
            "(precondition) the extra layer itself helps", part
        ),
    )
    records = [gate]
    for model in per_seed:
        if model in _LAUREL_BASELINES:
            continue
        rec = _record(
            paper,
            "(a) LAuReL improves on the N-layer baseline",
            result,
            values(model),
            base,
            detail=f"{part} {measure}: {model} vs baseline-N",
            direction=direction,
            paper_number=paper_number(
                "(a) LAuReL improves on the N-layer baseline", part
            ),
        )
        if gate["verdict"] != stats.REPRODUCED:
            rec["verdict"] = stats.NOT_TESTABLE
            rec["reason"] = (
                "the extra layer's own gain is not significant, so a "
                "share of it cannot be resolved"
            )
        records.append(rec)
        rounds = per_seed[model].get("step_ms_rounds")
        deeper_rounds = per_seed["baseline-(N+1)"].get("step_ms_rounds")
        if rounds and deeper_rounds:
            records.append(
                _record(
                    paper,
                    "(c) LAuReL costs less step time than an extra layer",
                    result,
                    rounds,
                    deeper_rounds,
                    detail=f"{part} step ms (interleaved rounds, paired by "
                    f"round): {model} vs baseline-(N+1)",
                    direction=-1,
                    paper_number=paper_number(
                        "(c) LAuReL costs less step time than an extra layer",
                        part,
                    ),
                )
            )
    return records


# === Looped transformers for reasoning ===


_LOOPED = re.compile(r"^(gemma )?(\d+)x(\d+)$")


def _looped_reasoning(payload, result):
    """`k x L` (a k-layer block looped L times) against `k x 1`, and the
    looping-regularised `kL x 1` against the plain one, per accuracy
    column. ("`k x L` nearly matches `kL x 1`" is an equivalence claim the
    one rule does not judge; the paired difference is in the table.)"""
    paper = "Looped transformers (reasoning)"
    records = []
    for task in ("p_hop", "addition"):
        rows = payload["tables"].get(f"{task}: every seed", [])
        models = sorted({r["model"] for r in rows})
        columns = [c for c in (rows[0] if rows else {}) if c.startswith("acc")]
        for model in models:
            match = _LOOPED.match(model)
            if not match or match.group(3) == "1":
                continue
            prefix, k, loops = (
                match.group(1) or "",
                *map(int, match.groups()[1:]),
            )
            shallow, deep = f"{prefix}{k}x1", f"{prefix}{k * loops}x1"
            pairs = [
                (
                    model,
                    shallow,
                    "looping a k-layer block L times beats the k-layer model",
                )
            ]
            if f"{deep} + reg" in models:
                pairs.append(
                    (
                        f"{deep} + reg",
                        deep,
                        "the looping regulariser "
                        "makes a deep model reason better",
                    )
                )
            for a, b, claim in pairs:
                for column in columns:
                    records.append(
                        _record(
                            paper,
                            claim,
                            result,
                            _by_seed(rows, column, model=a),
                            _by_seed(rows, column, model=b),
                            detail=f"{task} {column}: {a} vs {b}",
                            direction=1,
                            # Accuracy in %: both arms under 1% (a task
                            # never learned) is the floor, not a verdict.
                            floor=0.0,
                            floor_margin=1.0,
                        )
                    )
    return records


def _looped_compile(payload, result):
    paper = "Looped transformers (reasoning)"
    rows = payload["tables"]["forward pass: program size vs loops"]
    scan = [r for r in rows if r["mode"] == "scan"]
    sizes = sorted({r["StableHLO lines"] for r in scan})
    times = [r["lower + compile s"] for r in scan]
    reason = (
        "program size is an exact count (it holds: one size for every "
        "L), but compile time was timed once per L (a claim about it "
        "needs >= 3 repetitions); the training step's scan compile "
        "time is in the results file"
    )
    if min(r.get("repeats", 1) for r in scan) >= 3:
        reason = (
            "program size is an exact count (it holds: one size for every "
            "L); compile time (mean of >= 3 full compiles per L, fastest "
            "and slowest in the results file) is an equivalence across L "
            "that the one rule does not judge"
        )
    return [
        _untestable(
            paper,
            "scan compiles to one program whatever the loop count",
            result,
            f"scan StableHLO lines {sizes} at L = "
            f"{[r['loops L'] for r in scan]}; compile s "
            f"{[round(t, 2) for t in times]}",
            reason,
        )
    ]


# === Routing ===


def _routing(payload, result):
    paper = "EmbedLLM routing"
    rows = payload["tables"]["Per seed"]
    pairs = (
        ("cluster", "knn", "cluster router >= K-NN router"),
        ("cluster", "zero", "cluster router beats the zero router"),
        (
            "learned_map",
            "cluster",
            "the learned cluster map improves on the plain one",
        ),
    )
    records = [
        _record(
            paper,
            claim,
            result,
            _by_seed(rows, "area", router=a),
            _by_seed(rows, "area", router=b),
            detail=f"area: {a} vs {b}",
            direction=1,
        )
        for a, b, claim in pairs
    ]
    # QNC (lower is better). A seed that never reaches the quality is
    # inf in `qnc`; `qnc_capped` (recorded since issue 28) counts it at the
    # priciest unseen model's relative cost, so the comparison stays
    # testable; older results only have `qnc` (then not testable).
    qnc = "qnc_capped" if "qnc_capped" in rows[0] else "qnc"
    records.append(
        _record(
            paper,
            "routing reaches the best model's quality at a fraction of its "
            "cost",
            result,
            _by_seed(rows, qnc, router="cluster"),
            _by_seed(rows, qnc, router="zero"),
            detail="qnc: cluster vs zero",
            direction=-1,
        )
    )
    return records


# === SALT ===


def _salt(payload, result):
    paper = "SALT"
    tables = payload["tables"]
    if "Per seed" not in tables:
        return _salt_means(payload, result)
    rows = tables["Per seed"]
    ce = "final val CE"
    steps = payload["meta"]["steps"]

    def of(variant, value=ce):
        return _by_seed(rows, value, variant=variant)

    records = []
    for variant in ("salt", "salt_ds"):
        reach = of(variant, "step reaching baseline final")
        records.append(
            _record(
                paper,
                "SALT reaches the baseline's quality in fewer steps",
                result,
                reach,
                [float(steps)] * len(reach),
                detail=f"steps to the baseline's final CE: {variant}",
                direction=-1,
                paper_effect=-0.3,
                relative=True,
            )
        )
    # "Helps less" is two comparisons: it still helps (below the baseline)
    # and less than the good teacher (above SALT).
    for method, peer, claim, direction in (
        ("salt_weak_teacher", "baseline", "a weak teacher helps less", -1),
        ("salt_weak_teacher", "salt", "a weak teacher helps less", 1),
        ("kd_always", "salt", "switching KD off matters", 1),
    ):
        records.append(
            _record(
                paper,
                claim,
                result,
                of(method),
                of(peer),
                detail=f"final val CE: {method} vs {peer}",
                direction=direction,
            )
        )
    return records


def _salt_means(payload, result):
    paper = "SALT"
    rows = {
        r["variant"]: r
        for r in payload["tables"]["Pretraining, same steps (mean over seeds)"]
    }
    n = len(payload["meta"].get("seeds", []))
    ce = "final val CE (mean)"
    reason = f"per-seed values not recorded; n seeds {n} < {stats.MIN_SEEDS}"
    base = rows["baseline"][ce]
    return [
        _untestable(
            paper,
            "SALT reaches the baseline's quality in fewer steps",
            result,
            f"{rows['salt']['share of steps']:.0%} of the steps; val CE "
            f"{rows['salt'][ce]:.4g} vs {base:.4g}",
            reason,
        ),
        _untestable(
            paper,
            "a weak teacher helps less",
            result,
            f"val CE weak {rows['salt_weak_teacher'][ce]:.4g}, good "
            f"{rows['salt'][ce]:.4g}, baseline {base:.4g} (the weak teacher "
            "hurts)",
            reason,
        ),
    ]


# === Latent CRF ===


def _latent_crf(payload, result):
    paper = "Latent CRF"
    rows = payload["tables"]["Per seed"]
    records = []
    # Class accuracy's floor is chance (10 digit classes): both arms
    # within 0.02 of it are not judged.
    floors = {"frechet_distance": (None, 0.0), "class_accuracy": (0.1, 0.02)}
    for measure, direction in (("frechet_distance", -1), ("class_accuracy", 1)):
        for peer in ("truncated", "short"):
            records.append(
                _record(
                    paper,
                    "a CRF step improves a shortened sampler",
                    result,
                    _by_seed(rows, measure, method="crf"),
                    _by_seed(rows, measure, method=peer),
                    detail=f"{measure}: crf vs {peer} (8 denoiser calls)",
                    direction=direction,
                    floor=floors[measure][0],
                    floor_margin=floors[measure][1],
                )
            )
    return records


# === LoRA-RITE ===


def _lora_rite(payload, result):
    paper, tables = "LoRA-RITE", payload["tables"]
    table = tables.get(
        "Held-out quality at equal steps (best lr per optimizer)"
    )
    if not table:
        rite = [
            r
            for r in tables["Step time and optimizer state vs Adam"]
            if r["optimizer"] != "adam"
        ][0]
        if "mean_s_ratio" in rite:
            ours = (
                f"mean step {rite['mean_s_ratio']:.3g}x, median "
                f"{rite['median_s_ratio']:.3g}x, worst "
                f"{rite['worst_s_ratio']:.3g}x Adam's"
            )
        else:
            ours = (
                f"median step {rite['step_s_ratio']:.3g}x, fastest "
                f"{rite['step_s_min_ratio']:.3g}x Adam"
            )
        claim = "LoRA-RITE's step costs little more than Adam's"
        reason = "per-round times not recorded (no interval possible)"
        if "mean_s_ratio" in rite:
            reason = "an equivalence claim with no size in the paper"
        return [_untestable(paper, claim, result, ours, reason)]
    rows = {r["optimizer"]: r for r in table}
    rite, adam = rows["lora_rite"], rows["adam"]
    records = []
    # Accuracy first: the paper's metric (pre-registered as primary).
    for metric, word, direction in (
        ("acc", "accuracy", 1),
        ("loss", "loss", -1),
    ):
        claim = f"LoRA-RITE beats Adam on held-out {word}"
        key = f"{metric}_per_seed"
        if key in rite and key in adam and rite["seeds"] == adam["seeds"]:
            records.append(
                _record(
                    paper,
                    claim,
                    result,
                    rite[key],
                    adam[key],
                    detail=f"held-out next-token {word}, each at its "
                    "chosen lr (paired by seed)",
                    direction=direction,
                )
            )
        elif metric == "loss":
            ours = f"{rite['loss_mean']:.4g} vs {adam['loss_mean']:.4g}"
            n = rite["seeds"]
            low = stats.MIN_SEEDS
            reason = f"per-seed values not recorded; n seeds {n} < {low}"
            records.append(_untestable(paper, claim, result, ours, reason))
    return records


# === Embeddings for data curation ===

_CURATION_EMBEDDERS = (
    "mean token embedding",
    "mean last hidden state",
    "hashed n-grams",
)


def _curation(payload, result):
    """Pretraining on each embedder's balanced selection vs random
    selection (the paper's claim), and vs balanced selection over
    clusters of random vectors (whether the embedding itself adds
    anything beyond the quotas), paired by seed, on the natural
    validation loss (the paper's pretraining measure on the pool's own
    mix)."""
    paper = "Embeddings for data curation"
    rows = payload["tables"]["Curation quality per seed"]
    records = []
    for claim, peer in (
        (
            "balanced selection on every embedder beats random selection",
            "random",
        ),
        (
            "the embedding adds to balanced selection over random clusters",
            "random (floor)",
        ),
    ):
        base = _by_seed(rows, "val_natural", embedder=peer)
        for name in _CURATION_EMBEDDERS:
            records.append(
                _record(
                    paper,
                    claim,
                    result,
                    _by_seed(rows, "val_natural", embedder=name),
                    base,
                    detail=f"natural validation loss: {name} vs {peer}",
                    direction=-1,
                )
            )
    return records


# === Structured preconditioners (Shampoo) ===


def _shampoo_regression(payload, result):
    """One-sided Shampoo vs full-matrix AdaGrad (the paper's key claim)
    and vs two-sided Shampoo, on log10(final loss / f0) over the fresh
    problems (the rate tuned on the first). The measure's floor is its
    1e-30 clip: two arms both there reached an exact 0 alike."""
    paper = "Structured preconditioners (one-sided Shampoo)"
    rows = [
        r
        for r in payload["tables"].get("per-seed results", [])
        if r.get("role") == "confirm"
    ]
    claim = "one-sided Shampoo beats full-matrix AdaGrad on the regression"
    if not rows:
        return [
            _untestable(
                paper,
                claim,
                result,
                "one problem only",
                "recorded on a single problem (no per-seed values)",
            )
        ]
    measure = "log10_final_over_f0"
    one_sided = _by_seed(rows, measure, method="one-sided Shampoo")
    cheaper = "one-sided Shampoo beats diagonal AdaGrad and Adam on it"
    return [
        _record(
            paper,
            claim if peer == "full-matrix AdaGrad" else cheaper,
            result,
            one_sided,
            _by_seed(rows, measure, method=peer),
            detail=f"log10(final loss / f0): one-sided Shampoo vs {peer}",
            direction=-1,
            floor=-30.0,
            floor_margin=1e-6,
        )
        for peer in ("full-matrix AdaGrad", "diagonal AdaGrad", "Adam")
    ]


# === Looped ICL ===


LOOPED_ICL_PAIRED = "Paired comparisons (per seed, log10 normalised test loss)"


def _looped_icl(payload, result):
    """Each claim as the paired per-seed comparisons the sweep records
    (log10 normalised test losses, non-finite capped at 1e30)."""
    paper = "Looped transformers (in-context regression)"
    rows = payload["tables"].get(LOOPED_ICL_PAIRED)
    if rows is None:  # a run from before the paired comparisons
        n = len(payload["meta"].get("seeds_used", []))
        return [
            _untestable(
                paper,
                v["claim"],
                result,
                "see results file",
                f"per-seed comparisons not recorded (n seeds {n})",
            )
            for v in payload.get("verdicts", [])
        ]
    return [
        _record(
            paper,
            r["claim"],
            result,
            r["method_per_seed"],
            r["baseline_per_seed"],
            detail=r["comparison"],
            direction=r["direction"],
        )
        for r in rows
    ]


FAMILIES = (
    ("softsrv_jax", _softsrv),
    ("laurel_", _laurel),
    ("looped_reasoning_", _looped_reasoning),
    ("looped_compile_", _looped_compile),
    ("routing_", _routing),
    ("salt_jax", _salt),
    ("latent_crf_jax", _latent_crf),
    ("lora_rite", _lora_rite),
    ("shampoo_regression", _shampoo_regression),
    ("curation_jax", _curation),
    ("looped_icl_jax", _looped_icl),
)


def records_for(name, payload):
    """Every comparison record of result `name` (empty when unknown)."""
    for prefix, family in FAMILIES:
        if name.startswith(prefix) and not name.endswith("_range_jax"):
            try:
                return family(payload, name)
            except (KeyError, IndexError) as e:
                # A partial or differently shaped file (a smoke run, an
                # ablation): no claim is judged from it.
                print(f"claims: {name} has no {e} table; not judged")
                return []
    return []
