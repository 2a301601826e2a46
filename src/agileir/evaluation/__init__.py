"""The evaluation protocol as a library: what ``agileir test`` and training validation both run.

:mod:`~agileir.evaluation.protocol` prepares one image (ground truth, model input, baseline) and
scores one output; :mod:`~agileir.evaluation.runner` loops over a data set and returns rows.
The protocol itself is described in docs/evaluation.md.
"""
