"""Learning phase: the loader, DenseNet-121, focal loss, training and evaluation (torch)."""
