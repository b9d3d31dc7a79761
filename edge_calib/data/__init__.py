"""Datasets: canonical file formats, checksummed downloads, image folders."""

from .catalog import ImageSet, default_data_root, fetch_dataset, load_dataset

__all__ = ["ImageSet", "default_data_root", "fetch_dataset", "load_dataset"]
