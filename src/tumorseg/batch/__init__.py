"""Batch runs: plan (inputs to items), items (one item's work), job (the run, here or on Dask)."""
