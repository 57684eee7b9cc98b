"""MNIST and Fashion-MNIST from the standard IDX files, downloaded when missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from normlab.data.base import InMemoryDataModule, Split
from normlab.data.download import DownloadError, download
from normlab.data.idx import IDXFormatError, read_idx
from normlab.errors import DataError


class MNISTDataModule(InMemoryDataModule):
    """28x28 grey-scale digits: 60k training images (the last ``val_size`` held out) and 10k test.

    Files are looked up in ``data_dir`` as ``NAME.gz`` or uncompressed ``NAME``; missing ones are
    downloaded (md5-checked, written atomically) when ``download`` is true.

    Args:
        data_dir: folder with the four IDX files.
        download: fetch missing files from the mirrors.
        val_size: training images held out for validation.
        **kwargs: see ``InMemoryDataModule``.
    """

    title = "MNIST"
    mirrors = ("https://ossci-datasets.s3.amazonaws.com/mnist/",)
    resources = {
        "train_images": ("train-images-idx3-ubyte", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
        "train_labels": ("train-labels-idx1-ubyte", "d53e105ee54ea40749a09fcbcd1e9432"),
        "test_images": ("t10k-images-idx3-ubyte", "9fb629c4189551a2d022fa330f9573f3"),
        "test_labels": ("t10k-labels-idx1-ubyte", "ec29112dd5afa0611ce80d1b7f02629c"),
    }

    def __init__(self, data_dir: str = "data/mnist", download: bool = True, val_size: int = 5000, **kwargs) -> None:
        super().__init__(**kwargs)
        self.data_dir = Path(data_dir).expanduser()
        self.download = download
        self.val_size = val_size

    def _existing(self, name: str) -> Path | None:
        for candidate in (self.data_dir / f"{name}.gz", self.data_dir / name):
            if candidate.is_file():
                return candidate
        return None

    def prepare_data(self) -> None:
        if self.data_dir.exists() and not self.data_dir.is_dir():
            raise DataError(f"data.data_dir={self.data_dir} is a file, not a folder; pass data.data_dir=FOLDER")
        missing = [(name, md5) for name, md5 in self.resources.values() if self._existing(name) is None]
        if missing and not self.download:
            raise DataError(self._instructions([n for n, _ in missing], "download=false"))
        for name, md5 in missing:
            errors = []
            for mirror in self.mirrors:
                try:
                    download(f"{mirror}{name}.gz", self.data_dir / f"{name}.gz", md5)
                    break
                except DownloadError as e:
                    errors.append(str(e))
            else:
                raise DataError(self._instructions([n for n, _ in missing], errors[-1]))

    def _instructions(self, names: list[str], reason: str) -> str:
        files = ", ".join(f"{n}.gz" for n in names)
        return (
            f"{self.title} files missing in {self.data_dir.resolve()} and could not be downloaded ({reason}). "
            f"Put {files} there (gzip or uncompressed, from {self.mirrors[0]}), "
            f"or set data.data_dir=FOLDER to where they are."
        )

    def _read(self, key: str) -> np.ndarray:
        name = self.resources[key][0]
        path = self._existing(name)
        if path is None:
            self.prepare_data()
            path = self._existing(name)
        try:
            return read_idx(path)
        except IDXFormatError as e:
            raise DataError(
                f"{path} is not a valid IDX file ({e}); delete it and rerun to download it again, "
                f"or replace it with {name}.gz from {self.mirrors[0]}"
            ) from e

    def load_splits(self) -> dict[str, Split]:
        arrays = {key: self._read(key) for key in self.resources}
        for stage in ("train", "test"):
            if len(arrays[f"{stage}_images"]) != len(arrays[f"{stage}_labels"]):
                raise DataError(f"{self.title} {stage} images and labels differ in count in {self.data_dir}")
        x_train = _images(arrays["train_images"])
        y_train = torch.as_tensor(arrays["train_labels"], dtype=torch.long)
        n_train = len(x_train) - self.val_size
        if n_train < 1:
            raise DataError(f"val_size={self.val_size} leaves no training images (found {len(x_train)})")
        return {
            "train": Split(x_train[:n_train], y_train[:n_train]),
            "val": Split(x_train[n_train:], y_train[n_train:]),
            "test": Split(_images(arrays["test_images"]), torch.as_tensor(arrays["test_labels"], dtype=torch.long)),
        }


class FashionMNISTDataModule(MNISTDataModule):
    """Zalando's Fashion-MNIST: same format and sizes as MNIST, ten kinds of clothing."""

    title = "Fashion-MNIST"
    mirrors = ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",)
    resources = {
        "train_images": ("train-images-idx3-ubyte", "8d4fb7e6c68d591d4c3dfef9ec88bf0d"),
        "train_labels": ("train-labels-idx1-ubyte", "25c81989df183df01b3e8a0aad5dffbe"),
        "test_images": ("t10k-images-idx3-ubyte", "bef4ecab320f06d8554ea6380940ec79"),
        "test_labels": ("t10k-labels-idx1-ubyte", "bb300cfdad3c16e7a12a480ee83cd310"),
    }

    def __init__(self, data_dir: str = "data/fashion_mnist", **kwargs) -> None:
        super().__init__(data_dir=data_dir, **kwargs)


def _images(array: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(array, dtype=torch.float32).unsqueeze(1)  # (N, 1, 28, 28), values 0..255
