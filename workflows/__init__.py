"""geodino.workflows: Dask workflows that map rasters of any size into georeferenced Zarr."""
