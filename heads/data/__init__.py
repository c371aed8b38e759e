"""Imagery + labels for head training: labels onto the imagery grid, chips on the global patch grid, splits."""
