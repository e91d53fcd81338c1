"""SALT: pretrain a larger LM with a small LM's help (arXiv 2410.18779).

"A Little Help Goes a Long Way: Efficient LLM Training by Leveraging Small
LMs" (Rawat et al.). A small teacher LM (a local keras-hub Gemma preset,
pretrained here on offline text) supplies soft labels for the first
`n_kd` steps of a larger student's pretraining and picks the
"challenging yet learnable" sequences that phase trains on (SALT_DS); after
`n_kd` the student trains on plain next-token loss over all the data, and
the teacher's forward pass no longer runs. Everything is one `fit`.

The baseline is the same student (same initial weights, optimizer, steps
and batch size) pretrained without the teacher: plain next-token loss on
all the data. Both students' held-out cross-entropy is printed side by side.

Run: `KERAS_BACKEND=jax python examples/salt_pretraining.py [--quick]`
(`KERAS_BACKEND=tensorflow` works the same way; `--help` lists the options).
The teacher preset is built on the first run and cached; the corpus file
and the SALT student (`.keras`) are written to `--out`.
Measured wall time on the loaded 2-core development machine (JAX, including
the build of the quick teacher preset): --quick 12.7 min, measured while
other jobs shared the 2 cores (load average near 12); the full run was not
timed in this change.
"""

import os

import keras
import keras_hub
import numpy as np
from _example import done
from _example import example_arguments

from keras_gr.callbacks import KDSchedule
from keras_gr.callbacks import PhasedDataSync
from keras_gr.data import PhasedDataset
from keras_gr.data import multi_source_corpus
from keras_gr.models import SaltDistiller
from keras_gr.models import salt_selection_scores
from keras_gr.models import select_top_fraction
from keras_gr.presets import build_local_preset

args = example_arguments(
    __doc__,
    quick_help="a smaller corpus and teacher, 20 student steps (not 60)",
)
SEQ, BATCH, STEPS, N_KD = 64, 16, 60, 20
DOCUMENTS, TEACHER_STEPS = 150, 120
if args.quick:
    STEPS, N_KD, DOCUMENTS, TEACHER_STEPS = 20, 6, 60, 40

# 1. Offline corpus (pydoc prose, stdlib code and docstrings), written to a
#    text file with one document per paragraph.
corpus = multi_source_corpus(max_documents_per_source=DOCUMENTS)
text_file = os.path.join(args.out, "corpus.txt")
with open(text_file, "w", encoding="utf-8") as f:
    f.write(
        "\n\n".join(
            "\n".join(line for line in doc.splitlines() if line.strip())
            for doc in corpus.train_texts + corpus.validation_texts
        )
    )

# 2. The small teacher: a 2 x 64 Gemma pretrained on that text (cached).
teacher_folder = build_local_preset(
    text_file,
    vocabulary_size=1024,
    num_layers=2,
    hidden_dim=64,
    num_heads=2,
    head_dim=32,
    intermediate_dim=256,
    sequence_length=SEQ,
    train_steps=TEACHER_STEPS,
    batch_size=BATCH,
    learning_rate=3e-3,
)
teacher = keras_hub.models.CausalLM.from_preset(teacher_folder)
preprocessor = teacher.preprocessor


# 3. The larger student (4 x 128), same tokenizer, from scratch (the same
#    initial weights every time it is made).
def make_student():
    keras.utils.set_random_seed(0)
    return keras_hub.models.GemmaCausalLM(
        backbone=keras_hub.models.GemmaBackbone(
            vocabulary_size=preprocessor.tokenizer.vocabulary_size(),
            num_layers=4,
            num_query_heads=4,
            num_key_value_heads=4,
            hidden_dim=128,
            intermediate_dim=512,
            head_dim=32,
            dropout=0.0,
        ),
        preprocessor=preprocessor,
    )


student = make_student()
print(
    f"teacher {teacher.count_params():,} params, "
    f"student {student.count_params():,} params"
)

# 4. Preprocess (padding mask -> sample weight, shared by CE and KD).
x, y, w = preprocessor(corpus.train_texts[:1024])
x = {k: keras.ops.convert_to_numpy(v) for k, v in x.items()}
y, w = keras.ops.convert_to_numpy(y), keras.ops.convert_to_numpy(w)
vx, vy, vw = preprocessor(corpus.validation_texts[:64])
vx = {k: keras.ops.convert_to_numpy(v) for k, v in vx.items()}
vy, vw = keras.ops.convert_to_numpy(vy), keras.ops.convert_to_numpy(vw)


def validation_ce(lm):
    """Held-out next-token cross-entropy per token (padding masked)."""
    logits = keras.ops.convert_to_numpy(lm(vx)).astype("float64")
    logits -= logits.max(-1, keepdims=True)
    log_probs = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    picked = np.take_along_axis(log_probs, vy[..., None], -1)[..., 0]
    return float(-(picked * vw).sum() / vw.sum())


# 5. SALT_DS: score every sequence once with the teacher (one compiled,
#    batched pass), keep the top half for the KD phase.
scores = salt_selection_scores(teacher, x, y, w, k=10, batch_size=64)
selected = select_top_fraction(scores, 0.5)

# 6. One fit: selected data + distillation for N_KD steps, then all data
#    and plain next-token loss.
data = PhasedDataset(
    x,
    y,
    w,
    selected=selected,
    n_kd_steps=N_KD,
    batch_size=BATCH,
    total_steps=STEPS,
)
distiller = SaltDistiller(
    student, teacher, kd_weight=0.5, n_kd_steps=N_KD, temperature=1.0
)
distiller.compile(optimizer=keras.optimizers.AdamW(2e-3))
schedule = KDSchedule(verbose=1)
distiller.fit(
    data,
    epochs=STEPS // 10,
    steps_per_epoch=10,
    shuffle=False,
    validation_data=(vx, vy, vw),
    callbacks=[PhasedDataSync(data), schedule],
)
print(f"KD weight reached 0 at step {schedule.switch_step}")

# 7. The student is an ordinary keras-hub CausalLM.
path = os.path.join(args.out, "salt_student.keras")
distiller.student.save(path)
# compile=False: keras-hub's CausalLM has a custom `compile`, which Keras
# does not call on loading (it would warn); generation needs no compile.
reloaded = keras.saving.load_model(path, compile=False)
print(reloaded.generate("The for statement", max_length=24))

# 8. The baseline: the same student without the teacher, same steps.
baseline = make_student()
baseline.preprocessor = None  # x, y, w are already token ids
baseline.compile(optimizer=keras.optimizers.AdamW(2e-3))
# The rows of STEPS batches, cycling through the data as PhasedDataset does.
rows = np.arange(STEPS * BATCH) % len(y)
baseline.fit(
    {k: v[rows] for k, v in x.items()},
    y[rows],
    sample_weight=w[rows],
    batch_size=BATCH,
    epochs=1,
    shuffle=False,
    verbose=0,
)
print("held-out next-token cross-entropy (per token):")
print(f"  SALT (KD for {N_KD} of {STEPS} steps): {validation_ce(student):.3f}")
print(f"  no teacher (baseline):        {validation_ce(baseline):.3f}")
if args.quick:
    print(
        "(--quick: 20 steps and a 40-step teacher; the gap between the two "
        "students is not meaningful at this length. The full run trains 60 "
        "steps with a 120-step teacher.)"
    )
done(args)
