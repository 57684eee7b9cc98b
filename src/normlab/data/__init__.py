"""LightningDataModules for in-memory datasets, served a whole batch at a time."""

from normlab.data.base import InMemoryDataModule, Split
from normlab.data.digits import DigitsDataModule
from normlab.data.loader import TensorBatchLoader
from normlab.data.mnist import FashionMNISTDataModule, MNISTDataModule
from normlab.data.preprocess import InputScaler, Preprocess
from normlab.data.synthetic import SyntheticDataModule

__all__ = [
    "DigitsDataModule",
    "FashionMNISTDataModule",
    "InMemoryDataModule",
    "InputScaler",
    "MNISTDataModule",
    "Preprocess",
    "Split",
    "SyntheticDataModule",
    "TensorBatchLoader",
]
