"""lsnet_tf: L-SNet (ICIP 2021) in Keras 3 / TensorFlow.

Stages are folders: ``data`` (DICOM/NIfTI reading, TFRecords, targets, tf.data), ``ops`` (pure
tensor functions), ``layers`` (Keras layers), ``models``, ``losses``, ``metrics``, ``export``;
entry points are ``python -m lsnet_tf.prepare | validate | train``.
"""
__version__ = "0.1.0"
