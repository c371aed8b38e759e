"""Imagery + labels for head training: labels onto the imagery grid, chips on the global patch grid, splits.

* `geodino.heads.data.chips`: the `ChipSet` contract (`GridRef`, `IGNORE_INDEX`, `Task`).
* `geodino.heads.data.pairs`: `make_chips`, `labels_on_grid`, `resolve_classes`, `ClassMap`, `LabelError` —
  label rasters (any grid / CRS; AVERAGE for heights, NEAREST for classes) or one vector layer (rasterised).
* `geodino.heads.data.splits`: `spatial_split` (blocks + buffer), `split_by_source`, `split_by_polygons`.
"""
