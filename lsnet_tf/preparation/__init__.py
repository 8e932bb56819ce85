"""Preparation: CT volumes and labels -> the slice shard dataset, and its validation.

``python -m lsnet_tf.prepare``'s library: `cases` finds the patients of each input layout (TCIA,
MSD), `prepare` writes their shards and ``dataset.json`` in this process, `prepare_beam` does the
same as an Apache Beam pipeline. ``python -m lsnet_tf.validate``'s: `statistics` (TFDV statistics
of a dataset's folds, in process or on Beam), `schema` (the inferred schema and its domain
constraints), `anomalies` (checking statistics against it, drift), `report` (the files and the
HTML report) and `validation` (the steps of each subcommand). Guide: docs/data.md. Importing this
package imports no TensorFlow.
"""
