"""The depth ablation as a library: the grid, its cells, workers, scheduling and the estimate."""
