"""Export to SavedModel (TF Serving), TFLite and TF-TRT: ``python -m lsnet_tf.export``.

Modules: `saved_model` (the serving graph and its SavedModel), `tflite` (one ``.tflite`` file,
float32/fp16/int8), `tftrt` (TensorRT-converted SavedModel), `cli` (the command line).
"""
