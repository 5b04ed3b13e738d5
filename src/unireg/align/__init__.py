"""Affine pre-alignment and test-time instance optimisation."""
