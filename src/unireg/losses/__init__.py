"""Similarity terms and regularisers."""

from .regularizers import gradient_l2
from .similarity import feature_mse, feature_mse_each, dice_loss, local_ncc

__all__ = ["gradient_l2", "feature_mse", "feature_mse_each", "dice_loss", "local_ncc"]
