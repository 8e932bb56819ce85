"""Keras layers, one per file."""
