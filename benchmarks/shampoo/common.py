"""Shared by the Shampoo benchmark parts: optimizer-state bytes, result
names and the local Gemma LM (preset, data windows, compile)."""

import math

import keras
import numpy as np

from benchmarks import harness


def state_bytes(opt):
    """Bytes of the optimizer's state (its step counter and a variable
    learning rate left out)."""
    skip = {id(opt._iterations)}
    lr = getattr(opt, "_learning_rate", None)
    if isinstance(lr, keras.Variable):
        skip.add(id(lr))
    return harness.variables_bytes(
        [v for v in opt.variables if id(v) not in skip]
    )


def suffix(args, tag=""):
    """`_<backend><tag>`, plus `_quick` for a smoke run (last, so that
    `harness.result_path` writes it to a temporary folder)."""
    quick = "_quick" if args.quick else ""
    return f"_{keras.backend.backend()}{tag}{quick}"


def lm_data(causal_lm, seq_len, n_train, seed=0):
    """`n_train` random training windows of `seq_len` + 1 tokens of the
    pydoc corpus (start at a seeded position) and up to 32 consecutive
    validation windows, as `(x, y)` pairs for `fit`."""
    from keras_gr.data.corpora import pydoc_corpus

    train_docs, val_docs = pydoc_corpus()
    tok = causal_lm.tokenizer

    def stream(docs):
        out = []
        for ids in tok(docs):
            ids = keras.ops.convert_to_numpy(ids).tolist()
            out.extend([2] + list(ids) + [1])
        return np.asarray(out, dtype="int32")

    train, val = stream(train_docs), stream(val_docs)
    rng = np.random.default_rng(seed)
    span = seq_len + 1
    starts = rng.integers(0, len(train) - span, size=n_train)
    win = np.stack([train[s : s + span] for s in starts])
    n_val = min(32, (len(val) - 1) // seq_len)
    idx = np.arange(n_val)[:, None] * seq_len + np.arange(span)[None, :]
    vwin = val[idx]

    def pack(w):
        x = {
            "token_ids": w[:, :-1],
            "padding_mask": np.ones_like(w[:, :-1], dtype="bool"),
        }
        return x, w[:, 1:]

    return pack(win), pack(vwin)


def load_lm(fresh_seed=None):
    """The local DEFAULT_CONFIG Gemma causal LM (token ids in, no
    preprocessor inside `fit`); with `fresh_seed`, re-initialised from
    its config under that seed instead of the preset's weights."""
    import keras_hub

    from keras_gr.presets import DEFAULT_CONFIG
    from keras_gr.presets import build_local_preset

    folder = build_local_preset(**DEFAULT_CONFIG, verbose=0)
    lm = keras_hub.models.CausalLM.from_preset(folder)
    tokenizer = lm.preprocessor.tokenizer
    backbone = lm.backbone
    if fresh_seed is not None:
        keras.utils.set_random_seed(fresh_seed)
        backbone = backbone.__class__.from_config(backbone.get_config())
    lm = keras_hub.models.GemmaCausalLM(backbone=backbone, preprocessor=None)
    lm.tokenizer = tokenizer
    return lm, DEFAULT_CONFIG


def compile_lm(lm, opt):
    lm.compile(
        optimizer=opt,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        jit_compile=True,
    )


def round_steps(steps, opts):
    """The smallest multiple of `steps` that is a whole number of root
    periods of every optimizer (each timed round then covers whole
    periods: the mean step is what a user pays)."""
    periods = [
        getattr(opt, "precondition_frequency", 1) for opt in opts.values()
    ]
    return math.lcm(steps, *periods)


def speed_row(name, times, peers):
    """One step-time row from `harness.time_fit_interleaved`'s `times`:
    mean step (wall time over whole root periods), median and worst step,
    and for each peer (name -> its times in the same rounds) the ratios
    of the means and of the medians, the worst step over the peer's mean
    step (the spike) and the mean-step ratio of every round."""
    row = {
        "optimizer": name,
        "mean_s": times["mean"],
        "median_s": times["median"],
        "worst_s": times["worst"],
    }
    for peer, p in peers.items():
        row[f"mean_vs_{peer}"] = times["mean"] / p["mean"]
        row[f"median_vs_{peer}"] = times["median"] / p["median"]
        row[f"worst_vs_{peer}_mean"] = times["worst"] / p["mean"]
        row[f"round_means_vs_{peer}"] = [
            a / b for a, b in zip(times["rounds"], p["rounds"])
        ]
    return row
