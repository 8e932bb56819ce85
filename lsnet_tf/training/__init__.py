"""Training loop pieces: callbacks (checkpoints, TensorBoard images, the ground-truth RoI phase),
the non-finite-loss guard, multi-worker helpers and loading run folders."""
