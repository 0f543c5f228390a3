"""What the runs show: the sweep report's tables and figures, the layer analysis, comparisons."""
