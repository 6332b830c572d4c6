"""adam-batchnorm: a Flower / PyTorch app in the NumPyClient style, with BatchNorm and Adam."""
