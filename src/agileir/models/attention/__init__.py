"""Window attention: the shared core, SwinIR's W-MSA, AgileIR's GSWA, the kernels and the one
place that decides how attention runs (:mod:`agileir.models.attention.dispatch`)."""
