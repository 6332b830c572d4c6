"""quickstart-legacy: a Flower / PyTorch app (strategy + NumPyClient)."""
