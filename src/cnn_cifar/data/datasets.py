"""CIFAR-10 / CIFAR-100 from the official python pickles: find, download if missing, verify, load."""
from __future__ import annotations

import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import safe_pickle
from .download import DatasetError, download_and_extract


@dataclass(frozen=True)
class DatasetSpec:
    """Where a dataset comes from and how its files are laid out."""
    name: str
    url: str
    md5: str
    folder: str
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    meta_file: str
    label_key: str
    names_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


CIFAR10 = DatasetSpec(
    name="cifar10", url="https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
    md5="c58f30108f718f92721af3b95e74349a", folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)), test_files=("test_batch",),
    meta_file="batches.meta", label_key="labels", names_key="label_names", num_classes=10,
    mean=(0.4914, 0.4822, 0.4465), std=(0.2470, 0.2435, 0.2616))

CIFAR100 = DatasetSpec(
    name="cifar100", url="https://www.cs.toronto.edu/~kriz/cifar-100-python.tar.gz",
    md5="eb9058c3a382ffc7106e4002c42a8d85", folder="cifar-100-python",
    train_files=("train",), test_files=("test",), meta_file="meta", label_key="fine_labels",
    names_key="fine_label_names", num_classes=100,
    mean=(0.5071, 0.4865, 0.4409), std=(0.2673, 0.2564, 0.2762))

DATASETS = {"cifar10": CIFAR10, "cifar100": CIFAR100}


@dataclass
class Dataset:
    """uint8 images (N, 3, 32, 32) and int64 labels for both splits, with class names."""
    spec: DatasetSpec
    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray
    classes: list[str]


class DatasetNotFound(DatasetError):
    """A dataset's file is missing and downloading was not allowed (``path`` names the first missing file)."""

    def __init__(self, spec: DatasetSpec, path: Path):
        self.spec, self.path = spec, path
        super().__init__(f"{spec.name} not found: {path} is missing (load with download=True to fetch it, or from "
                         f"the folder holding {spec.folder})")


def get_spec(name: str) -> DatasetSpec:
    if name not in DATASETS:
        raise DatasetError(f"unknown dataset {name!r}; choose one of {', '.join(DATASETS)}")
    return DATASETS[name]


def _read_pickle(path: Path) -> dict:
    try:
        with open(path, "rb") as f:
            obj = safe_pickle.load(f, encoding="latin1")
    except FileNotFoundError:
        raise DatasetError(f"missing dataset file {path}") from None
    except safe_pickle.UnsafePickleError as exc:
        raise DatasetError(f"{path} is not a CIFAR batch file: {exc}") from None
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, IndexError,
            UnicodeDecodeError, MemoryError) as exc:
        raise DatasetError(f"corrupt or truncated dataset file {path} ({type(exc).__name__}: {exc})") from None
    if not isinstance(obj, dict):
        raise DatasetError(f"corrupt dataset file {path}: expected a dict, found {type(obj).__name__}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def _read_batch(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    d = _read_pickle(path)
    data, labels = d.get("data"), d.get(label_key)
    if not isinstance(data, np.ndarray) or labels is None:
        raise DatasetError(f"corrupt dataset file {path}: no 'data' array or '{label_key}' list")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(labels) != data.shape[0]:
        raise DatasetError(f"corrupt dataset file {path}: data {data.dtype}{tuple(data.shape)} with "
                           f"{len(labels)} labels (expected uint8 (N, 3072) and N labels)")
    return data.reshape(-1, 3, 32, 32), np.asarray(labels, dtype=np.int64)


def dataset_dir(root: str | os.PathLike, spec: DatasetSpec) -> Path:
    return Path(root) / spec.folder


def is_present(root: str | os.PathLike, spec: DatasetSpec) -> bool:
    d = dataset_dir(root, spec)
    return all((d / f).is_file() for f in (*spec.train_files, *spec.test_files, spec.meta_file))


def load_dataset(name: str = "cifar10", root: str | os.PathLike = "data", download: bool = True,
                 url: str | None = None, md5: str | None = None, progress: bool = True) -> Dataset:
    """Load a CIFAR dataset from ``root/<folder>``, downloading the official tarball first if needed.

    ``root`` may also be the batch folder itself. ``url``/``md5`` override the official ones (tests).
    """
    spec = get_spec(name)
    root = Path(root)
    if root.name == spec.folder and not is_present(root, spec) and is_present(root.parent, spec):
        root = root.parent
    if not is_present(root, spec):
        d = dataset_dir(root, spec)
        missing = [f for f in (*spec.train_files, *spec.test_files, spec.meta_file) if not (d / f).is_file()]
        if not download:
            raise DatasetNotFound(spec, d / missing[0])
        download_and_extract(url or spec.url, root, md5 or spec.md5, spec.folder, progress=progress)
    d = dataset_dir(root, spec)
    xs, ys = zip(*(_read_batch(d / f, spec.label_key) for f in spec.train_files))
    xt, yt = zip(*(_read_batch(d / f, spec.label_key) for f in spec.test_files))
    meta = _read_pickle(d / spec.meta_file)
    classes = [str(c) for c in meta.get(spec.names_key, [])]
    if len(classes) != spec.num_classes:
        raise DatasetError(f"corrupt dataset file {d / spec.meta_file}: {len(classes)} class names, "
                           f"expected {spec.num_classes}")
    ds = Dataset(spec, np.concatenate(xs), np.concatenate(ys), np.concatenate(xt), np.concatenate(yt), classes)
    for split, y in (("train", ds.y_train), ("test", ds.y_test)):
        if y.size and (y.min() < 0 or y.max() >= spec.num_classes):
            raise DatasetError(f"corrupt {spec.name} {split} labels: values outside 0..{spec.num_classes - 1}")
    return ds
