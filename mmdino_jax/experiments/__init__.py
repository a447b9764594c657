"""Experiments on the project: the reproduction grid of the MM-DINOv2 claims (reproduce.py)."""
