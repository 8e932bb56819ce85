"""Pure tensor functions: sampling, boxes, heatmaps, connected components."""
