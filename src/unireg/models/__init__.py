"""Deformation networks and the registrar (frozen features + UNet)."""
