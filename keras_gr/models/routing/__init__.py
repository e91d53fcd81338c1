"""Model routing among LLMs, including LLMs unseen at training time
(arXiv 2502.08773): the `Router` base, `ClusterRouter`, `LearnedMapRouter`,
`KNNRouter`, `ZeroRouter`, `OracleRouter` and `RoutedGenerator`.

Import them from `keras_gr.models`; this folder groups the family.
"""
