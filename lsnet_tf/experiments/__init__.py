"""The paper's tables as a package: ``python -m lsnet_tf.experiments`` (`cli`; guide:
docs/experiments.md).

Modules, in the order a table is made:

- `catalogue`: the tables (``TABLES``: rows, the paper's numbers, the claims they test) and the
  datasets they run on (``DATASET_INFO``, the evidence sets' ``EVIDENCE_SEEDS``);
- `units`: one run of a row (a seed, or a (fold, seed) ``Unit``), its folder and settings, the
  seeds and folds of the command line, ``RunLock`` for ``--parallel``;
- `runs`: training and evaluating a table's runs and writing the table (``run_table``), keeping
  their records (``keep_records``);
- `tables`, `claims`, `plots`, `provenance`: what the written table holds (the Markdown of its
  cells, the claims' tests, the DSC-against-size plot, how it was made);
- `curves`: training curves of runs (``python -m lsnet_tf.curves``, ``experiments curves``);
- `oracle`: localization or delineation (``experiments oracle``).

Importing the package or any of its modules imports no TensorFlow: the functions that need it
(training, evaluation, the oracle, reading logs, provenance) import it.
"""
