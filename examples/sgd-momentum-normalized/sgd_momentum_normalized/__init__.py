"""sgd-momentum-normalized: a Flower / PyTorch app written the way Flower's tutorials write them."""
