"""Training and measurement machinery: memory census (:mod:`agileir.engine.memory`) and the
training/evaluation loops built on it."""
