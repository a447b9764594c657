"""Supervised baseline: the same ViT trained end to end with cross-entropy on the labeled subjects.

`learner.py` builds it as a loop learner, `baseline.py` runs, saves and evaluates it, `__main__.py` is the CLI.
"""
