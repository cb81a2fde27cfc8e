"""CIFAR data: download and verification, loading, augmentation and batching."""
from .augment import cutout, normalize, random_crop, random_flip
from .datasets import CIFAR10, CIFAR100, DATASETS, Dataset, DatasetSpec, get_spec, load_dataset
from .download import DatasetError, download, download_and_extract, extract, md5sum
from .loader import AugmentConfig, BatchLoader

__all__ = ["AugmentConfig", "BatchLoader", "CIFAR10", "CIFAR100", "DATASETS", "Dataset", "DatasetError",
           "DatasetSpec", "cutout", "download", "download_and_extract", "extract", "get_spec", "load_dataset",
           "md5sum", "normalize", "random_crop", "random_flip"]
