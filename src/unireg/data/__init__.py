"""Data that can be had offline: the MNI ICBM152 2009a template (nilearn's wheel) and synthesis
of known deformations, contrasts, bias fields and noise from it."""
