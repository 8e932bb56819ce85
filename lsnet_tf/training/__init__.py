"""Training loop pieces: callbacks for checkpoints, TensorBoard images and the ground-truth RoI phase."""
