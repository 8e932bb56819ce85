"""Training loop pieces: callbacks (checkpoints, TensorBoard images, the ground-truth RoI phase),
the non-finite-loss guard, multi-worker helpers, loading run folders and the data-flow figure of a
trained run."""
