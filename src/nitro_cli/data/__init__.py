"""Datasets for NITRO-D: readers, integer preprocessing, integer augmentation and an embedded MNIST subset."""

from nitro_cli.data.augment import augment_batch
from nitro_cli.data.preprocess import Normalizer, fit_normalizer, one_hot
from nitro_cli.data.readers import FileStatus, RawDataset, dataset_sizes, load_dataset, verify_dataset
from nitro_cli.data.registry import DATASETS, DatasetInfo, FileSpec, data_root

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "FileSpec",
    "FileStatus",
    "Normalizer",
    "RawDataset",
    "augment_batch",
    "data_root",
    "dataset_sizes",
    "fit_normalizer",
    "load_dataset",
    "one_hot",
    "verify_dataset",
]
