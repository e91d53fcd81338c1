"""The paper's own figure for every claim `benchmarks/claims.py` judges.

Each figure says where it is printed: the paper's tables as quoted in the
specs the project was built from, or its abstract. A claim whose
paper gives no figure (a theorem, a qualitative sentence) reads
`NOT_STATED` and why.
"""

NOT_STATED = "not stated"

# Keyed by the claim's wording in `benchmarks/claims.py`; LAuReL's keys
# add the part ("digits" is the paper's vision result, "lm" its language
# model), since the two parts anchor to different tables.
PAPER_NUMBERS = {
    # LAuReL, arXiv 2411.07501.
    ("(precondition) the extra layer itself helps", "digits"): (
        "acc@1 75.20 vs 74.95 (+0.25) (arXiv 2411.07501, ResNet-50 "
        "ImageNet-1K, +1 layer vs baseline)"
    ),
    ("(precondition) the extra layer itself helps", "lm"): (
        "test loss 2.9963 vs 3.0159 (arXiv 2411.07501, C4 LM, 28 vs 24 layers)"
    ),
    ("(a) LAuReL improves on the N-layer baseline", "digits"): (
        "acc@1 RW 75.10, RW+LR 75.20, RW+LR+PA 75.25 vs 74.95; 60% of the "
        "extra layer's gain for RW (arXiv 2411.07501, ResNet-50 "
        "ImageNet-1K; abstract)"
    ),
    ("(a) LAuReL improves on the N-layer baseline", "lm"): (
        "test loss RW 2.9557, LR 2.9624, PA 2.9512, RW+LR 2.9531, "
        "RW+LR+PA 2.9499 vs 3.0159 (arXiv 2411.07501, C4 LM, 24 layers)"
    ),
    ("(c) LAuReL costs less step time than an extra layer", "digits"): (
        "params +0.003% (RW) to +2.40% (RW+LR+PA) vs +4.37% for +1 layer; "
        "step time not stated (arXiv 2411.07501, ResNet-50 ImageNet-1K)"
    ),
    ("(c) LAuReL costs less step time than an extra layer", "lm"): (
        "step time +0% to +9% over the 24-layer baseline; the extra "
        "layers' step time not stated (arXiv 2411.07501, C4 LM)"
    ),
    # Looped transformers for reasoning, arXiv 2502.17416.
    "looping a k-layer block L times beats the k-layer model": (
        "p-hop p=16: 1x6 99.9 vs 1x1 48.9; addition n=8: 1x12 99.9 vs 1x1 "
        "~0, 2x6 100 vs 2x1 85.8 (arXiv 2502.17416, synthetic tasks)"
    ),
    "the looping regulariser makes a deep model reason better": (
        f"{NOT_STATED} (arXiv 2502.17416 gives lambda=10, k=4 with block "
        "cosines >= 0.98, no accuracy figure in our spec)"
    ),
    "scan compiles to one program whatever the loop count": (
        f"{NOT_STATED} (a property of our implementation, not a paper claim)"
    ),
    # Looped transformers for in-context regression, arXiv 2410.21698.
    "Depth lower bounds: log(kappa) layers unrestricted, sqrt(kappa) "
    "restricted": (
        "log(kappa) / sqrt(kappa) layers (arXiv 2410.21698, theorem; no "
        "measured figure)"
    ),
    "Deep models are not robust to small shifts": (
        "shifts O(e^-L) in Wasserstein distance break an L-layer model "
        "(arXiv 2410.21698, theorem; abstract)"
    ),
    "Looped models are robust to shifts": (
        f"{NOT_STATED} (arXiv 2410.21698, theorem under mild assumptions)"
    ),
    "Looped models keep lowering the loss past the training depth": (
        f"{NOT_STATED} (arXiv 2410.08292, the companion paper, qualitative)"
    ),
    "Only looped models have a loss monotone in depth": (
        f"{NOT_STATED} (arXiv 2410.21698, abstract, qualitative)"
    ),
    # LatentCRF, arXiv 2412.18596.
    "a CRF step improves a shortened sampler": (
        "33% fewer denoiser evaluations with no loss in FID or diversity "
        "(arXiv 2412.18596, abstract)"
    ),
    # EmbedLLM routing, arXiv 2502.08773.
    "cluster router >= K-NN router": (
        "area 0.307 vs 0.298 (arXiv 2502.08773, EmbedLLM)"
    ),
    "cluster router beats the zero router": (
        "area 0.307 vs 0.285 (arXiv 2502.08773, EmbedLLM)"
    ),
    "the learned cluster map improves on the plain one": (
        f"{NOT_STATED} (arXiv 2502.08773: our spec quotes the cluster "
        "router's figures only)"
    ),
    "routing reaches the best model's quality at a fraction of its cost": (
        "QNC 33.9% (cluster) vs 87.5% (zero router) (arXiv 2502.08773, "
        "EmbedLLM)"
    ),
    # SALT, arXiv 2410.18779.
    "SALT reaches the baseline's quality in fewer steps": (
        "~70% of the steps (~25-28% wall-clock saved) (arXiv 2410.18779, "
        "2.8B student, 1.5B teacher, Pile)"
    ),
    "a weak teacher helps less": (
        f"{NOT_STATED} (arXiv 2410.18779: a 0.5B teacher helps less, no "
        "figure in our spec)"
    ),
    "switching KD off matters": (
        f"{NOT_STATED} (arXiv 2410.18779: n_KD 36k of 208k steps, robust "
        "from 20k to 60k; no KD-throughout figure in our spec)"
    ),
    # SoftSRV, arXiv 2410.16534.
    "every SoftSRV variant beats hard prompting": (
        f"{NOT_STATED} (arXiv 2410.16534, abstract: 'significantly "
        "improves', no figure)"
    ),
    "MC is the best SoftSRV variant": (
        f"{NOT_STATED} (arXiv 2410.16534: MC the usual best, no figure in "
        "our spec)"
    ),
    # Embeddings for pretraining data curation, arXiv 2502.02494.
    "balanced selection on every embedder beats random selection": (
        f"{NOT_STATED} as one figure: every embedder considered helps "
        "pretraining quality over random selection (arXiv 2502.02494, "
        "abstract)"
    ),
    "the embedding adds to balanced selection over random clusters": (
        f"{NOT_STATED}: no random-cluster control in arXiv 2502.02494; "
        "ours separates the embedding's contribution from the quotas'"
    ),
    # Structured preconditioners, arXiv 2503.10537.
    "one-sided Shampoo beats full-matrix AdaGrad on the regression": (
        f"{NOT_STATED}: loss curves only (arXiv 2503.10537, the quadratic "
        "f(X) = 0.5 <H, (X - X*)(X - X*)^T>, learning rates tuned per "
        "method); the spec's NumPy check (20 x 20, 500 steps): one-sided "
        "0 vs full-matrix AdaGrad 5e-4 (f0 = 19)"
    ),
    "one-sided Shampoo beats diagonal AdaGrad and Adam on it": (
        f"{NOT_STATED}: loss curves only (arXiv 2503.10537); the spec's "
        "NumPy check: one-sided 0 vs diagonal AdaGrad 2e-3"
    ),
    # LoRA-RITE (ICLR 2025).
    "LoRA-RITE beats Adam on held-out loss": (
        "+4.6 accuracy points on Super-Natural Instructions, +3.5 on four "
        "benchmarks (Gemma-2B; LoRA-RITE, ICLR 2025, abstract); loss: "
        f"{NOT_STATED}"
    ),
    "LoRA-RITE beats Adam on held-out accuracy": (
        "+4.6 accuracy points on Super-Natural Instructions, +3.5 on four "
        "benchmarks (Gemma-2B; LoRA-RITE, ICLR 2025, abstract; task "
        "accuracy, ours next-token accuracy: size not compared)"
    ),
    "LoRA-RITE's step costs little more than Adam's": (
        f"{NOT_STATED} (LoRA-RITE, ICLR 2025: cost O((m+n) r^2) QR plus "
        "O(r^3) eigh per LoRA pair, no wall time)"
    ),
}


def paper_number(claim, part=None):
    """The paper's figure for `claim` (and `part`), or `NOT_STATED`."""
    if (claim, part) in PAPER_NUMBERS:
        return PAPER_NUMBERS[(claim, part)]
    return PAPER_NUMBERS.get(claim, NOT_STATED)
