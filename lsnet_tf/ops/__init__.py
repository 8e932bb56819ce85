"""Pure tensor functions: sampling, boxes, heatmaps, connected components, crops, and sums and
random draws over the replicas of a global batch."""
