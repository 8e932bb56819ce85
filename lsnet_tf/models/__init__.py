"""Backbones, L-Net, S-Net, L-SNet and baselines."""
