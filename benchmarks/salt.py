"""SALT benchmark: small-LM distillation and data selection for pretraining.

"A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small
LMs" (Rawat et al., arXiv 2410.18779). Pretrains the same student Gemma on
the offline multi-source corpus (`keras_gr.data.multi_source_corpus`:
pydoc prose, standard-library code and docstrings), same steps and seeds:

- `baseline`: next-token CE only (`SaltDistiller` with `kd_weight=0`);
- `salt`: KD from the small teacher for the first `n_kd` steps, then CE;
- `salt_ds`: as `salt`, the KD phase fed the teacher's top-scored
  sequences (SALT_DS), the full data after;
- `kd_always`: KD never switched off (`schedule="constant"`);
- `salt_weak_teacher`: `salt` with a much weaker teacher.

Reports the first evaluated step at which each run reaches the same-seed
baseline's final validation CE, the final validation CE, and wall-clock
(training steps, plus the teacher's pretraining and the scoring pass),
with the per-step cost in the KD phase and after the switch (`KDSchedule`
releases the teacher at `n_kd`, its default: the rest of the run compiles
a step without it; the recompilation is reported apart).

Two settings (`--setting`):

- `full` (result `salt_<backend>`): 120 steps, the student ends *above*
  the teacher's loss, so the teacher helps to the end;
- `long` (result `salt_<backend>_long`): the setting in which the paper's
  two-phase effect should show (issue 28, item 6): a larger corpus and pool
  (neither phase wraps around it), 480 steps, so that the student passes the
  teacher's validation loss about a third of the way in (the paper's regime:
  a 1.5B teacher for a 2.8B student), `n_kd` = 80 (17% of the steps, the
  paper's 36k of 208k), the learning rate tuned for the baseline (4e-3),
  evaluated every 30 steps. It was chosen on exploratory seed 0 (see
  `LONG_EXPLORATION`), and its verdicts come from fresh seeds 10-14 run
  after the choice.

Run: `KERAS_BACKEND=jax python -m benchmarks.salt [--setting long]
[--quick] [--seeds 0 1 2 3 4]` (`--seeds` replaces the setting's seeds:
five in the full runs, one quick).
"""

import argparse
import os
import statistics
import tempfile
import time

import keras
import keras_hub
import numpy as np

from benchmarks import harness
from benchmarks.harness import mean_std
from benchmarks.harness import result_path
from benchmarks.harness import write_results
from keras_gr.callbacks import KDSchedule
from keras_gr.data import PhasedDataset
from keras_gr.data import multi_source_corpus
from keras_gr.models import SaltDistiller
from keras_gr.models import salt_selection_scores
from keras_gr.models import select_top_fraction
from keras_gr.presets import build_local_preset
from keras_gr.presets import read_preset_metadata

FULL = dict(
    docs_per_source=600,
    vocabulary_size=1024,
    sequence_length=64,
    batch_size=16,
    pool=2048,
    steps=120,
    n_kd=30,
    eval_every=15,
    val_sequences=64,
    seeds=(0, 1, 2, 3, 4),
    teacher=dict(
        num_layers=2,
        hidden_dim=64,
        num_heads=2,
        head_dim=32,
        intermediate_dim=256,
        train_steps=300,
    ),
    weak_teacher=dict(
        num_layers=1,
        hidden_dim=32,
        num_heads=1,
        head_dim=32,
        intermediate_dim=64,
        train_steps=60,
    ),
    student=dict(
        num_layers=4,
        hidden_dim=128,
        num_heads=4,
        head_dim=32,
        intermediate_dim=512,
    ),
    kd_weight=0.5,
    temperature=1.0,
    select_fraction=0.5,
    learning_rate=2e-3,
)
QUICK = dict(
    FULL,
    docs_per_source=150,
    pool=512,
    steps=24,
    n_kd=8,
    eval_every=8,
    val_sequences=32,
    seeds=(0,),
    teacher=dict(FULL["teacher"], train_steps=40),
    weak_teacher=dict(FULL["weak_teacher"], train_steps=10),
)

# Issue 28, item 6: the setting where the claimed effect should be largest
# on this machine. In `full` the student never reaches the teacher's
# validation CE (4.66 after 120 steps against the teacher's 4.31 on the
# same validation set), so distillation keeps
# helping and "switching KD off" cannot matter. `long` trains the student
# past the teacher.
LONG = dict(
    FULL,
    docs_per_source=1200,
    pool=8192,
    steps=480,
    n_kd=80,
    eval_every=30,
    learning_rate=4e-3,
    seeds=(10, 11, 12, 13, 14),
)
# The exploration that chose `long` (exploratory seed 0, not among the
# confirmation seeds; validation every 60 steps; teacher val CE 4.27 on the
# students' validation set): (variant, learning rate, kd_weight, n_kd,
# final val CE, val CE at step 60).
LONG_EXPLORATION = (
    ("baseline", 1e-3, 0.0, 0, 4.082, 5.302),
    ("baseline", 2e-3, 0.0, 0, 3.824, 5.033),
    ("baseline", 4e-3, 0.0, 0, 3.738, 4.847),
    ("baseline", 8e-3, 0.0, 0, 3.843, 4.768),
    ("salt", 2e-3, 0.5, 40, 3.815, 4.959),
    ("salt", 2e-3, 0.5, 80, 3.806, 4.883),
    ("salt", 2e-3, 0.5, 120, 3.807, 4.883),
    ("salt", 2e-3, 0.8, 80, 3.794, 4.782),
    ("salt", 2e-3, 1.0, 80, 3.807, 4.758),
    ("salt_ds", 2e-3, 0.5, 80, 3.800, 4.860),
    ("kd_always", 2e-3, 0.5, 80, 3.940, 4.883),
    ("salt", 4e-3, 0.5, 80, 3.739, 4.663),
    ("salt", 4e-3, 0.8, 80, 3.742, 4.590),
    ("salt", 4e-3, 0.8, 160, 3.765, 4.590),
    ("salt_ds", 4e-3, 0.8, 160, 3.751, 4.580),
)
LONG_CHOSEN_BY = (
    "Setting `long` was chosen by looking at results (the exploration "
    "table below, one exploratory seed). With 1200 documents per source, "
    "a pool of 8192 windows (neither phase wraps around its pool: 80 x 16 "
    "KD-phase and 400 x 16 later sequences) and 480 steps, the baseline "
    "student passes the teacher's "
    "validation CE (4.27) between steps 120 and 180. At the inherited "
    "learning rate (2e-3) SALT's final gain was largest (-0.03 with "
    "kd_weight 0.8), but that rate was under-tuned for the baseline: the "
    "baseline's 4-point grid put its best at 4e-3 (inside the grid), and "
    "every arm runs at that rate. There SALT's step-60 lead (-0.18 to "
    "-0.26) had faded to +0.001 at the end for kd_weight 0.5 and +0.004 "
    "for 0.8; kd_weight 0.5 and n_kd = 80 (the paper's 17% of the steps; "
    "160 was worse) were kept. The measures and comparisons were fixed "
    "before the confirmation run on fresh seeds 10-14; nothing was changed "
    "after it."
)
SETTINGS = {"full": FULL, "long": LONG}

PAPER = {
    "setting": "2.8B student, 1.5B teacher, the Pile, 208k steps",
    "n_kd": "36k steps (~17%; robust 20k-60k)",
    "baseline quality reached at": "~70% of the steps",
    "wall-clock saved": "~25-28%",
    "too-weak teacher (0.5B)": "helps less",
}


def _exploration_notes():
    rows = "\n".join(
        f"| {v} | {lr:g} | {w:g} | {n} | {ce:.3f} | {early:.3f} |"
        for v, lr, w, n, ce, early in LONG_EXPLORATION
    )
    return (
        LONG_CHOSEN_BY
        + "\n\n| variant (exploratory seed 0) | learning rate | kd_weight "
        "| n_kd | final val CE | val CE at step 60 |\n|---|---|---|---|---|"
        "---|\n" + rows + "\n\n"
    )


def _corpus_file(cfg, folder):
    corpus = multi_source_corpus(
        max_documents_per_source=cfg["docs_per_source"]
    )
    path = os.path.join(folder, f"salt_corpus_{cfg['docs_per_source']}.txt")
    # One paragraph per document (blank lines inside a document removed),
    # so build_local_preset's paragraph split keeps documents whole.
    docs = [
        "\n".join(line for line in d.splitlines() if line.strip())
        for d in corpus.train_texts + corpus.validation_texts
    ]
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n\n".join(docs) + "\n")
    return corpus, path


def _windows(tokenizer, texts, seq, limit, seed):
    stream = []
    for ids in tokenizer(texts):
        ids = np.asarray(ids).tolist()
        stream.extend([2] + ids + [1])
    stream = np.asarray(stream, "int32")
    n = (len(stream) - 1) // seq
    idx = np.arange(n)[:, None] * seq + np.arange(seq + 1)[None, :]
    windows = stream[idx]
    if limit and len(windows) > limit:
        pick = np.random.default_rng(seed).choice(len(windows), limit, False)
        windows = windows[np.sort(pick)]
    x = {
        "token_ids": windows[:, :-1],
        "padding_mask": np.ones((len(windows), seq), bool),
    }
    return x, windows[:, 1:], np.ones((len(windows), seq), "float32")


def _student(vocab, spec, seed):
    keras.utils.set_random_seed(seed)
    return keras_hub.models.GemmaCausalLM(
        backbone=keras_hub.models.GemmaBackbone(
            vocabulary_size=vocab,
            num_layers=spec["num_layers"],
            num_query_heads=spec["num_heads"],
            num_key_value_heads=spec["num_heads"],
            hidden_dim=spec["hidden_dim"],
            intermediate_dim=spec["intermediate_dim"],
            head_dim=spec["head_dim"],
            dropout=0.0,
        ),
        preprocessor=None,
    )


def _val_ce(model, val, batch_size=32):
    """Mean next-token CE (nats/token) of causal LM `model` on the
    benchmark's validation windows (every token weighted 1), the same
    measure as the students' `val_ce_loss`."""
    x, y, _ = val
    total = 0.0
    for i in range(0, len(y), batch_size):
        logits = keras.ops.convert_to_numpy(
            model({k: v[i : i + batch_size] for k, v in x.items()})
        ).astype("float64")
        top = logits.max(-1, keepdims=True)
        log_z = top[..., 0] + np.log(np.exp(logits - top).sum(-1))
        picked = np.take_along_axis(logits, y[i : i + batch_size, :, None], -1)
        total += float((log_z - picked[..., 0]).sum())
    return total / y.size


class _StepTimer(keras.callbacks.Callback):
    def __init__(self, n_kd):
        super().__init__()
        self.n_kd = n_kd
        self.times = []
        self._start = 0.0

    def on_train_batch_begin(self, batch, logs=None):
        self._start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        float(logs["loss"])  # waits for the step
        self.times.append(time.perf_counter() - self._start)


def _run(variant, cfg, teacher, data, val, selected, seed, vocab):
    x, y, w = data
    steps, n_kd, every = cfg["steps"], cfg["n_kd"], cfg["eval_every"]
    kwargs = dict(
        kd_weight=cfg["kd_weight"],
        n_kd_steps=n_kd,
        temperature=cfg["temperature"],
    )
    if variant == "baseline":
        kwargs["kd_weight"] = 0.0
    if variant == "kd_always":
        kwargs["schedule"] = "constant"
    student = _student(vocab, cfg["student"], 1000 + seed)
    distiller = SaltDistiller(student, teacher, **kwargs)
    schedule = harness.warmup_cosine(
        cfg["learning_rate"], steps, warmup_fraction=0.1, floor=0.1
    )
    distiller.compile(
        optimizer=keras.optimizers.AdamW(
            schedule, weight_decay=0.01, global_clipnorm=1.0
        )
    )
    sel = selected if variant == "salt_ds" else np.arange(len(y))
    ds = PhasedDataset(
        x,
        y,
        w,
        selected=sel,
        n_kd_steps=n_kd,
        batch_size=cfg["batch_size"],
        total_steps=steps,
        seed=seed,
    )
    timer = _StepTimer(n_kd)
    history = distiller.fit(
        ds,
        epochs=steps // every,
        steps_per_epoch=every,
        shuffle=False,
        verbose=0,
        validation_data=val,
        validation_batch_size=32,
        # KDSchedule's default, as a user runs it: at the switch the
        # teacher is released and the rest of the run compiles a step
        # without it. With `release_teacher=False` (the `ops.cond` alone
        # skips the teacher's forward pass, its branch stays in the
        # compiled step) the step after the switch measured 1.07-1.14x the
        # baseline's in both settings; released, 1.00-1.03x.
        callbacks=[timer, KDSchedule()],
    )
    val_ce = history.history["val_ce_loss"]
    # Step 0 (compilation) and the switch's steps n_kd and n_kd + 1 (the
    # latter compiles the teacher-free step) are left out of the phases'
    # step times and the worst step; all but step 0 count in
    # `train_seconds`, and the switch's two steps are reported apart.
    t = timer.times
    switch = set() if variant == "baseline" else {n_kd, n_kd + 1}
    steady = [v for i, v in enumerate(t) if i > 0 and i not in switch]
    kd_phase = harness.step_summary(t[1:n_kd] or [0.0])
    after = harness.step_summary(t[n_kd + 2 :])
    return {
        "val_curve": [float(v) for v in val_ce],
        "train_seconds": float(sum(t[1:])),
        "step_kd_phase": kd_phase["mean"],
        "step_after": after["mean"],
        "step_after_median": after["median"],
        "step_worst": max(steady),
        "switch_seconds": float(sum(t[i] for i in switch)),
    }


def main(quick=False, seeds=None, setting="full"):
    if setting not in SETTINGS:
        raise ValueError(
            f"`setting` must be one of {sorted(SETTINGS)}; got {setting!r}"
        )
    cfg = QUICK if quick else SETTINGS[setting]
    if seeds:
        cfg = dict(cfg, seeds=tuple(seeds))
    tag = ("" if setting == "full" else f"_{setting}") + (
        "_quick" if quick else ""
    )
    backend = keras.backend.backend()
    cache = os.path.join(
        os.environ.get("KERAS_GR_CACHE")
        or os.path.join(os.path.expanduser("~"), ".cache", "keras_gr"),
        "salt",
    )
    os.makedirs(cache, exist_ok=True)
    corpus, text_file = _corpus_file(cfg, cache)
    common = dict(
        vocabulary_size=cfg["vocabulary_size"],
        sequence_length=cfg["sequence_length"],
        batch_size=cfg["batch_size"],
        learning_rate=3e-3,
        verbose=0,
    )
    # The teachers are pretrained here, in this run, into a fresh folder
    # (never taken from the preset cache), so their training time is
    # measured, not quoted: the whole build (tokenizer, pretraining,
    # validation) counts towards the SALT variants' wall-clock.
    build_seconds = {}
    with tempfile.TemporaryDirectory() as fresh:
        folders = {}
        for role in ("teacher", "weak_teacher"):
            start = time.perf_counter()
            folders[role] = build_local_preset(
                text_file, **common, **cfg[role], cache_dir=fresh
            )
            build_seconds[role] = time.perf_counter() - start
        teacher = keras_hub.models.CausalLM.from_preset(folders["teacher"])
        weak = keras_hub.models.CausalLM.from_preset(folders["weak_teacher"])
        t_meta = read_preset_metadata(folders["teacher"])
        w_meta = read_preset_metadata(folders["weak_teacher"])
    tokenizer = teacher.preprocessor.tokenizer
    if weak.preprocessor.tokenizer.get_vocabulary() != (
        tokenizer.get_vocabulary()
    ):
        raise RuntimeError("teacher presets built different tokenizers")
    vocab = tokenizer.vocabulary_size()
    seq = cfg["sequence_length"]
    data = _windows(tokenizer, corpus.train_texts, seq, cfg["pool"], 0)
    vx, vy, vw = _windows(
        tokenizer, corpus.validation_texts, seq, cfg["val_sequences"], 1
    )
    teacher_val_ce = {
        "teacher": _val_ce(teacher, (vx, vy, vw)),
        "weak_teacher": _val_ce(weak, (vx, vy, vw)),
    }
    start = time.perf_counter()
    scores = salt_selection_scores(
        teacher, data[0], data[1], data[2], k=10, batch_size=64, verbose=0
    )
    scoring_seconds = time.perf_counter() - start
    selected = select_top_fraction(scores, cfg["select_fraction"])

    variants = ["baseline", "salt", "salt_ds", "kd_always", "salt_weak_teacher"]
    runs = {v: [] for v in variants}
    for seed in cfg["seeds"]:
        for variant in variants:
            t = weak if variant == "salt_weak_teacher" else teacher
            runs[variant].append(
                _run(
                    variant,
                    cfg,
                    t,
                    data,
                    (vx, vy, vw),
                    selected,
                    seed,
                    vocab,
                )
            )
            print(
                variant,
                seed,
                [round(v, 3) for v in runs[variant][-1]["val_curve"]],
                flush=True,
            )

    every = cfg["eval_every"]
    rows, per_seed = [], []
    for variant in variants:
        reach, final, wall, total = [], [], [], []
        for i, r in enumerate(runs[variant]):
            target = runs["baseline"][i]["val_curve"][-1]
            hit = next(
                (
                    (j + 1) * every
                    for j, v in enumerate(r["val_curve"])
                    if v <= target
                ),
                None,
            )
            reach.append(hit if hit is not None else float("nan"))
            final.append(r["val_curve"][-1])
            per_seed.append(
                {
                    "variant": variant,
                    "seed": cfg["seeds"][i],
                    "final val CE": r["val_curve"][-1],
                    # Never reaching it: no saving, all the steps.
                    "step reaching baseline final": hit or cfg["steps"],
                }
            )
            wall.append(r["train_seconds"])
            extra = 0.0
            if variant != "baseline":
                extra += build_seconds[
                    "weak_teacher"
                    if variant == "salt_weak_teacher"
                    else "teacher"
                ]
            if variant == "salt_ds":
                extra += scoring_seconds
            total.append(r["train_seconds"] + extra)
        f_mean, f_std = mean_std(final)
        reach_ok = [v for v in reach if v == v]
        rows.append(
            {
                "variant": variant,
                "final val CE (mean)": f_mean,
                "final val CE (std)": f_std,
                "step reaching baseline final (mean)": (
                    statistics.mean(reach_ok) if reach_ok else "never"
                ),
                "runs reaching it": f"{len(reach_ok)}/{len(reach)}",
                "share of steps": (
                    statistics.mean(reach_ok) / cfg["steps"]
                    if reach_ok
                    else "n/a"
                ),
                "train s (mean)": statistics.mean(wall),
                "train+teacher+scoring s (mean)": statistics.mean(total),
                "s/step KD phase": statistics.mean(
                    r["step_kd_phase"] for r in runs[variant]
                ),
                "s/step after n_kd": statistics.mean(
                    r["step_after"] for r in runs[variant]
                ),
                "median s/step after n_kd": statistics.mean(
                    r.get("step_after_median", float("nan"))
                    for r in runs[variant]
                ),
                "worst step s": statistics.mean(
                    r.get("step_worst", float("nan")) for r in runs[variant]
                ),
                "switch steps s (n_kd, n_kd + 1)": statistics.mean(
                    r.get("switch_seconds", 0.0) for r in runs[variant]
                ),
            }
        )
    base_step = rows[0]["s/step after n_kd"]
    for row in rows:
        row["KD-phase step / baseline step"] = (
            row["s/step KD phase"] / base_step
        )
        row["after-switch step / baseline step"] = (
            row["s/step after n_kd"] / base_step
        )
    curves = {
        v: np.mean([r["val_curve"] for r in runs[v]], axis=0).tolist()
        for v in variants
    }
    _plot(curves, every, f"salt_{backend}{tag}")

    teacher_rows = [
        {
            "model": name,
            "layers x width": f"{m['config']['num_layers']}x"
            f"{m['config']['hidden_dim']}",
            "parameters": m["parameters"],
            "pretraining steps": m["config"]["train_steps"],
            "validation loss (own split)": m["validation_loss"],
            "val CE (the students' validation set)": teacher_val_ce[role],
            "build s (measured in this run)": build_seconds[role],
        }
        for name, role, m in (
            ("teacher", "teacher", t_meta),
            ("weak teacher", "weak_teacher", w_meta),
        )
    ]
    teacher_rows.append(
        {
            "model": "student",
            "layers x width": f"{cfg['student']['num_layers']}x"
            f"{cfg['student']['hidden_dim']}",
            "parameters": int(
                _student(vocab, cfg["student"], 0).count_params()
            ),
            "pretraining steps": cfg["steps"],
            "val CE (the students' validation set)": (
                f"baseline {rows[0]['final val CE (mean)']:.4g} at the end"
            ),
        }
    )
    verdict = _verdicts(rows, cfg)
    notes = (
        (_exploration_notes() if setting == "long" and not quick else "")
        + "Paper (Rawat et al., arXiv 2410.18779): "
        + "; ".join(f"{k}: {v}" for k, v in PAPER.items())
        + ".\n\n"
        + f"Scoring pass (SALT_DS, k=10, {len(scores)} sequences): "
        f"{scoring_seconds:.1f} s; selected the top "
        f"{cfg['select_fraction']:.0%}.\n\n"
        + "Wall-clock: `train s` is the sum of the measured training steps "
        "(validation excluded); the total adds the teacher's pretraining "
        "(its whole preset build: tokenizer, pretraining and validation, "
        "timed in this run into a fresh folder, never read from the "
        "preset cache) and, for SALT_DS, the scoring pass. "
        "s/step: mean step of the phase "
        "(the first step, compilation, and the switch's two steps left "
        "out: at n_kd the teacher is released and step n_kd + 1 compiles the "
        "teacher-free step; their time is the `switch steps` column and "
        "counts in `train s`); "
        "the median step after the switch and the worst step (compilation "
        "excluded) beside it, each a mean over seeds; the baseline's mean "
        "step is the reference for the ratios.\n\n"
        + "Claims (verdicts: the one-rule table at the top, paired over "
        "the per-seed rows):\n\n" + "\n".join(f"- {v}" for v in verdict)
    )
    meta = {
        k: cfg[k]
        for k in (
            "docs_per_source",
            "vocabulary_size",
            "sequence_length",
            "batch_size",
            "pool",
            "steps",
            "n_kd",
            "eval_every",
            "val_sequences",
            "kd_weight",
            "temperature",
            "select_fraction",
            "learning_rate",
        )
    }
    meta["seeds"] = list(cfg["seeds"])
    meta["setting"] = setting
    md = write_results(
        f"salt_{backend}{tag}",
        {
            "Models": teacher_rows,
            "Pretraining, same steps (mean over seeds)": rows,
            "Per seed": per_seed,
            "Validation CE curves (mean over seeds)": [
                {"step": (i + 1) * every, **{v: curves[v][i] for v in variants}}
                for i in range(len(curves["baseline"]))
            ],
        },
        meta=meta,
        notes=notes,
    )
    print(md)


def _verdicts(rows, cfg):
    """The claims' figures (means over seeds); no verdict words: those are
    the one rule's (`benchmarks/claims.py`)."""
    by = {r["variant"]: r for r in rows}
    ce = "final val CE (mean)"
    base, salt = by["baseline"][ce], by["salt"]
    out = []
    for name in ("salt", "salt_ds"):
        share = by[name]["share of steps"]
        share = share if isinstance(share, str) else f"{share:.0%}"
        out.append(
            f"{name} reaches the baseline's final validation CE at {share} "
            f"of the steps (paper: ~70%); final CE {by[name][ce]:.3f} vs "
            f"baseline {base:.3f}."
        )
    out.append(
        "A too-weak teacher helps less (paper): final CE "
        f"{by['salt_weak_teacher'][ce]:.3f} with it, {salt[ce]:.3f} with "
        f"the stronger teacher, {base:.3f} without a teacher."
    )
    out.append(
        "Switching KD off matters (the student outgrows the small "
        f"teacher): kd_always final CE {by['kd_always'][ce]:.3f} vs salt "
        f"{salt[ce]:.3f}."
    )
    out.append(
        "Teacher skipped after n_kd (the source of the wall-clock saving): "
        f"salt step costs {salt['KD-phase step / baseline step']:.2f}x the "
        "baseline's during KD and "
        f"{salt['after-switch step / baseline step']:.2f}x after the switch."
    )
    return out


def _plot(curves, every, name):
    plt = harness.pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for variant, curve in curves.items():
        steps = [(i + 1) * every for i in range(len(curve))]
        ax.plot(steps, curve, marker="o", label=variant)
    ax.set_xlabel("training step")
    ax.set_ylabel("validation CE (nats/token)")
    ax.set_title("SALT on the offline multi-source corpus")
    ax.legend()
    fig.tight_layout()
    fig.savefig(result_path(name, ".png"), dpi=120)
    plt.close(fig)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument(
        "--setting",
        choices=sorted(SETTINGS),
        default="full",
        help="full: 120 steps (salt_<backend>); long: 480 steps, the "
        "student passes the teacher (salt_<backend>_long)",
    )
    harness.add_seeds_argument(parser, default=())
    args = parser.parse_args()
    main(args.quick, harness.seeds_of(args), args.setting)
