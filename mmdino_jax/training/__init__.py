"""Training shared by every trainer: the typed learner, its placement on a mesh, the loop, run data."""
