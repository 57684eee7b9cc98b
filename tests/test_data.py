"""Data: batch slicing, preprocessing from training statistics, the datasets, IDX files, downloads."""

from __future__ import annotations

import gzip
import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from normlab.data import (
    DigitsDataModule,
    InputScaler,
    MNISTDataModule,
    Split,
    SyntheticDataModule,
    TensorBatchLoader,
)
from normlab.data.base import InMemoryDataModule
from normlab.data.download import DownloadError, download
from normlab.data.idx import IDXFormatError, read_idx, write_idx
from normlab.errors import DataError
from random_data import RandomDataModule


# ----------------------------------------------------------------------------- loader
def test_loader_covers_each_example_once_per_epoch_and_reshuffles():
    x, y = torch.arange(10.0).unsqueeze(1), torch.arange(10)
    loader = TensorBatchLoader(x, y, batch_size=3, shuffle=True, seed=7)
    assert len(loader) == 4
    first = torch.cat([b for _, b in loader])
    second = torch.cat([b for _, b in loader])
    assert sorted(first.tolist()) == list(range(10)) == sorted(second.tolist())
    assert first.tolist() != second.tolist()
    assert all(torch.equal(bx.squeeze(1).long(), by) for bx, by in loader)  # x and y stay paired


def test_loader_order_depends_only_on_seed_and_epoch():
    x, y = torch.randn(50, 2), torch.arange(50)
    a = TensorBatchLoader(x, y, batch_size=8, shuffle=True, drop_last=True, seed=3)
    list(a)  # epoch 0
    resumed = TensorBatchLoader(x, y, batch_size=8, shuffle=True, drop_last=True, seed=3)
    resumed.load_state_dict(a.state_dict())
    assert [b.tolist() for _, b in a] == [b.tolist() for _, b in resumed]
    assert len(a) == 6  # 50 // 8 with drop_last


def test_loader_shards_are_disjoint_and_equal():
    x, y = torch.randn(11, 1), torch.arange(11)
    shards = [torch.cat([b for _, b in TensorBatchLoader(x, y, 4, shuffle=True, rank=r, world_size=2)]) for r in (0, 1)]
    assert len(shards[0]) == len(shards[1]) == 5
    assert not set(shards[0].tolist()) & set(shards[1].tolist())


# ----------------------------------------------------------------------------- preprocessing
def test_normalize_and_standardize_use_training_statistics_only():
    train = torch.tensor([[0.0, 10.0], [2.0, 30.0], [4.0, 20.0]])
    test = torch.tensor([[8.0, 40.0]])
    norm = InputScaler("normalize").fit(train)
    assert torch.allclose(norm.transform(train).amin(0), torch.zeros(2))
    assert torch.allclose(norm.transform(train).amax(0), torch.ones(2))
    assert torch.allclose(norm.transform(test), torch.tensor([[2.0, 1.5]]))  # outside [0, 1]: train stats
    std = InputScaler("standardize").fit(train)
    z = std.transform(train)
    assert torch.allclose(z.mean(0), torch.zeros(2), atol=1e-6) and torch.allclose(z.std(0), torch.ones(2))
    assert torch.allclose(std.transform(test), (test - train.mean(0)) / train.std(0))


def test_constant_features_are_not_divided_by_zero():
    train = torch.tensor([[1.0, 5.0], [1.0, 7.0]])
    assert torch.isfinite(InputScaler("standardize").fit(train).transform(train)).all()
    assert torch.isfinite(InputScaler("normalize").fit(train).transform(train)).all()


class _Known(InMemoryDataModule):
    def load_splits(self):
        return {
            "train": Split(torch.tensor([[0.0], [10.0]]), torch.tensor([0, 1])),
            "val": Split(torch.tensor([[20.0]]), torch.tensor([1])),
            "test": Split(torch.tensor([[-10.0]]), torch.tensor([0])),
        }


def test_datamodule_scales_every_split_with_train_statistics():
    dm = _Known(preprocess="normalize", batch_size=2)
    dm.setup()
    assert dm.splits["val"].x.item() == 2.0 and dm.splits["test"].x.item() == -1.0


def test_datamodule_rejects_a_mismatched_input_shape():
    with pytest.raises(DataError, match=r"input_shape=\[2\]"):
        _Known(input_shape=[2]).setup()


# ----------------------------------------------------------------------------- datasets
def test_digits_splits_are_fixed_and_disjoint():
    dm = DigitsDataModule(preprocess="standardize", seed=1)
    dm.setup()
    sizes = {k: len(s.x) for k, s in dm.splits.items()}
    assert sum(sizes.values()) == 1797 and sizes["test"] == round(0.2 * 1797)
    assert dm.splits["train"].x.shape[1:] == (1, 8, 8)
    other = DigitsDataModule(preprocess="standardize", seed=2)
    other.setup()
    assert torch.equal(dm.splits["test"].y, other.splits["test"].y)  # training seed does not move the test set


def test_synthetic_is_deterministic_and_its_scales_differ_by_orders_of_magnitude():
    a, b = SyntheticDataModule(data_seed=4, scale_disparity=4.0), SyntheticDataModule(data_seed=4, scale_disparity=4.0)
    a.setup(), b.setup()
    assert torch.equal(a.splits["train"].x, b.splits["train"].x)
    spread = a.splits["train"].x.std(0)
    assert spread.max() / spread.min() > 1e3
    assert set(a.splits["train"].y.unique().tolist()) == {0, 1}


# ----------------------------------------------------------------------------- IDX and MNIST
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, suffix):
    images = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28), dtype=np.uint8)
    write_idx(tmp_path / f"img{suffix}", images)
    assert np.array_equal(read_idx(tmp_path / f"img{suffix}"), images)
    floats = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    write_idx(tmp_path / f"f{suffix}", floats)
    assert np.array_equal(read_idx(tmp_path / f"f{suffix}"), floats)


def test_idx_rejects_truncated_and_foreign_files(tmp_path):
    write_idx(tmp_path / "ok", np.zeros((4, 3), dtype=np.uint8))
    (tmp_path / "short").write_bytes((tmp_path / "ok").read_bytes()[:-1])
    with pytest.raises(IDXFormatError, match="expected"):
        read_idx(tmp_path / "short")
    (tmp_path / "html").write_bytes(b"<html>not found</html>")
    with pytest.raises(IDXFormatError, match="magic"):
        read_idx(tmp_path / "html")


def write_fake_mnist(folder: Path, n_train: int = 30, n_test: int = 10, gz: bool = True) -> None:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    ext = ".gz" if gz else ""
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", rng.integers(0, 10, n, dtype=np.uint8))


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_reads_local_idx_files(tmp_path, gz):
    write_fake_mnist(tmp_path, gz=gz)
    dm = MNISTDataModule(data_dir=str(tmp_path), download=False, val_size=5, preprocess="normalize")
    dm.prepare_data()
    dm.setup()
    assert [len(dm.splits[s].x) for s in ("train", "val", "test")] == [25, 5, 10]
    assert dm.splits["train"].x.shape[1:] == (1, 28, 28)


def test_mnist_offline_error_names_the_files_and_the_folder(tmp_path):
    class Offline(MNISTDataModule):
        mirrors = ("http://127.0.0.1:9/",)  # discard port: the connection is refused at once

    with pytest.raises(DataError) as err:
        Offline(data_dir=str(tmp_path / "mnist")).prepare_data()
    message = str(err.value)
    assert "train-images-idx3-ubyte.gz" in message and "t10k-labels-idx1-ubyte.gz" in message
    assert str((tmp_path / "mnist").resolve()) in message and "data.data_dir" in message
    assert not list((tmp_path / "mnist").glob("*"))  # no partial download left behind


def test_mnist_without_download_says_where_to_put_files(tmp_path):
    with pytest.raises(DataError, match="download=false"):
        MNISTDataModule(data_dir=str(tmp_path), download=False).prepare_data()


def test_mnist_corrupt_file_gives_one_clear_error(tmp_path):
    write_fake_mnist(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x01garbage"))
    with pytest.raises(DataError, match="t10k-labels-idx1-ubyte.gz is not a valid IDX file"):
        MNISTDataModule(data_dir=str(tmp_path), download=False).setup()


def test_mnist_downloads_verify_checksums(tmp_path):
    source = tmp_path / "mirror"
    write_fake_mnist(source)
    md5 = {p.name.removesuffix(".gz"): hashlib.md5(p.read_bytes()).hexdigest() for p in source.iterdir()}

    class Mirrored(MNISTDataModule):
        mirrors = (source.as_uri() + "/",)
        resources = {k: (name, md5[name]) for k, (name, _) in MNISTDataModule.resources.items()}

    dm = Mirrored(data_dir=str(tmp_path / "dest"), val_size=5)
    dm.prepare_data()
    dm.setup()
    assert len(dm.splits["test"].x) == 10
    assert sorted(p.name for p in (tmp_path / "dest").iterdir()) == sorted(p.name for p in source.iterdir())


def test_download_with_a_wrong_checksum_leaves_nothing_behind(tmp_path):
    src = tmp_path / "file.bin"
    src.write_bytes(b"payload")
    with pytest.raises(DownloadError, match="checksum mismatch"):
        download(src.as_uri(), tmp_path / "out" / "file.bin", md5="0" * 32)
    assert list((tmp_path / "out").iterdir()) == []  # no partial or unverified file
    download(src.as_uri(), tmp_path / "out" / "file.bin", md5=hashlib.md5(b"payload").hexdigest())
    assert (tmp_path / "out" / "file.bin").read_bytes() == b"payload"


def test_random_data_has_the_requested_shape_and_labels():
    dm = RandomDataModule(num_samples=40, input_shape=(3, 4), num_classes=5, batch_size=8)
    dm.setup()
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (8, 3, 4) and int(y.max()) < 5 and len(dm.train_dataloader()) == 5
