"""Shared helpers of every stage: ``files`` (local and gs:// reads and atomic writes),
``console`` (the commands' quiet console and CPU kernels), ``machine`` (the machine line of
benchmarks and tables), ``drawing`` (boxes and overlays on numpy images) and ``beam``
(``--runner`` / ``--beam-options`` of prepare, validate and predict). Importing this package
imports none of them."""
