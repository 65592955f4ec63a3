"""Benchmarks and the evaluation card: what `lightning-gpt evaluate` and the BLiMP callback score, and how.

- scoring.py: the log-likelihood of continuations under our model, as lm-evaluation-harness defines it
- blimp.py: BLiMP's minimal pairs read from a folder in the hub's layout, scored without the harness (the callback)
- harness.py: an lm-evaluation-harness `LM` over our model (needs the `eval` extra)
- tasks.py: the tasks `evaluate` knows, their data (hub or a local copy) and their random baselines
- card.py: the card: scores, what the model saw (its stage chain), comparisons between checkpoints
"""
