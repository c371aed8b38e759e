"""Raster reading, pure window planning and blending."""
