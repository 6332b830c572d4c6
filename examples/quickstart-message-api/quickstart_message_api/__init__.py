"""quickstart-message-api: a Flower / PyTorch app."""
