"""Evaluation: accuracy and regularity metrics (see :mod:`unireg.evaluation.metrics`)."""

from .metrics import dice, endpoint_error, hd95, jacobian_stats, peak_rss_mb, target_registration_error

__all__ = ["dice", "hd95", "endpoint_error", "target_registration_error", "jacobian_stats", "peak_rss_mb"]
