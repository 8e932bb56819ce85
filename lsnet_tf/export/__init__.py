"""Export to SavedModel, TFLite and TF-TRT."""
