"""Input: DICOM/NIfTI reading, the TFRecord slice format, the synthetic dataset, targets and tf.data."""
