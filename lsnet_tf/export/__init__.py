"""Export to SavedModel (TF Serving), TFLite and TF-TRT: ``python -m lsnet_tf.export``.

Modules: `saved_model` (the serving graph and its SavedModel), `tflite` (one ``.tflite`` file,
float32/fp16/int8), `litert` (running that file without TensorFlow: LiteRT and numpy), `tftrt`
(TensorRT-converted SavedModel), `ensemble` (several SavedModels as one), `cli` (the command line). Importing this package imports no
TensorFlow; `saved_model`, `tflite` and `tftrt` do.
"""
