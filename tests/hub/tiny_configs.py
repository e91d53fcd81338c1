"""Tiny keras-hub decoder configurations shared by the hub tests (the
keras-hub harness and the LAuReL retrofit parity tests)."""

# Gemma / Gemma 3 / Llama / Mistral / Qwen-style backbone arguments.
DECODER = dict(
    vocabulary_size=40,
    num_layers=2,
    num_query_heads=2,
    num_key_value_heads=1,
    hidden_dim=16,
    intermediate_dim=32,
)
GPT2 = dict(
    vocabulary_size=40,
    num_layers=2,
    num_heads=2,
    hidden_dim=16,
    intermediate_dim=32,
    max_sequence_length=16,
)


def gemma2_options(sliding_window_size):
    """Gemma 2-style options: post norms, soft caps and an alternating
    sliding window (pick a window shorter than the test sequences, so it
    masks something)."""
    return dict(
        use_post_ffw_norm=True,
        use_post_attention_norm=True,
        attention_logit_soft_cap=50.0,
        final_logit_soft_cap=30.0,
        use_sliding_window_attention=True,
        sliding_window_size=sliding_window_size,
    )
