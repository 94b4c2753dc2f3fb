"""Offline scoring at scale: ``uq-score`` reads a backlog of inputs, scores every row
with the MC engine and the model card's calibration, and writes Parquet plus a
summary, on one machine (``scoring.local``) or on a Ray cluster (``scoring.ray_runner``).

Modules: ``sources`` (npz, image folders, Parquet -> chunks of one schema),
``scorer`` (one chunk -> the output table; each row's randomness from the run's
seed and the row's id), ``output`` (the output folder: manifest, shards, summary),
``local``, ``ray_runner`` and ``cli``. The service does not import this package.
"""
