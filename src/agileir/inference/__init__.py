"""Inference helpers: tiled inference with feathered blending and x8 self-ensemble."""
