"""Grids, warps, integration, Jacobians and affines. All coordinate conventions live in grid.py."""
