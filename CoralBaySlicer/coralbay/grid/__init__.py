"""Geometry of voxel grids: index boxes, the model grid, window placement, resampling onto
another grid, and the one index-to-LPS matrix."""
