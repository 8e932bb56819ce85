"""Speed and memory benchmarks: ``python -m benchmarks [NAME ...] [--quick] [--out DIR]``.

=========  ====================================================================================
name       what it measures (module)
=========  ====================================================================================
sampler    RR's affine grid + bilinear sampler against ``tf.image.crop_and_resize`` (`sampler`)
training   training step and inference latency of L-SNet, coarse-to-fine and one-stage U-Nets,
           with parameters and FLOPs (`training`)
profile    where the default training run's wall time goes: start-up phases, steps, validation,
           each callback, and the epoch against its steps timed alone (`profile`)
pipeline   tf.data throughput against the training step (`pipeline`)
memory     peak RSS of training, and its change when the dataset grows 10x (`memory`)
export     per-slice latency of the SavedModel and TFLite float32 / fp16 / int8 (`export`)
precision  mixed precision and XLA as training options (`precision`)
onednn     TensorFlow's oneDNN CPU kernels on against off: training steps, a process per
           setting (`onednn`)
volume     a 100-slice 512² DICOM series through predict end to end per backend (SavedModel
           with oneDNN on and off, LiteRT float32 and int8): read, inference, write (`volume`)
=========  ====================================================================================

Results go to ``OUT/results.json`` and ``OUT/results.md`` (default ``docs/benchmarks``). Naming
some benchmarks refreshes their sections: the other sections of an earlier ``results.json`` in
OUT (of the same sizes, full or ``--quick``) are kept, each with the command and start time it
was measured with.
"""
