"""Image, warp, point and transform I/O."""
