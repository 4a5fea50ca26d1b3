"""Reproducible DenseNet-121 / focal-loss seed study on NIH ChestX-ray14."""

__version__ = "0.1.0"
