"""Datasets that load offline, and their federated partitioning."""

from fl_sim.data import sources  # noqa: F401  (registers the datasets)
from fl_sim.data.dataset import DataError, Dataset
from fl_sim.data.partition import label_histogram, partition_indices
from fl_sim.data.registry import available_datasets, load_dataset, register_dataset
from fl_sim.data.samples import load_sample_images

__all__ = [
    "DataError",
    "Dataset",
    "available_datasets",
    "label_histogram",
    "load_dataset",
    "load_sample_images",
    "partition_indices",
    "register_dataset",
]
