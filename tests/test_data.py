import gzip
import os
import pickle

import numpy as np
import pytest

from bench import data
from bench.api import UserError
from conftest import REFERENCE


def write_idx(path, arr: np.ndarray):
    code = {np.dtype(np.uint8): 0x08}[arr.dtype]
    header = bytes([0, 0, code, arr.ndim]) + b"".join(int(s).to_bytes(4, "big") for s in arr.shape)
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "wb") as f:
        f.write(header + arr.tobytes())


@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, gz):
    rng = np.random.default_rng(0)
    d = tmp_path / "mnist"
    d.mkdir()
    ext = ".gz" if gz else ""
    imgs = {"train": rng.integers(0, 256, (20, 28, 28), dtype=np.uint8),
            "t10k": rng.integers(0, 256, (7, 28, 28), dtype=np.uint8)}
    labels = {"train": rng.integers(0, 10, 20, dtype=np.uint8), "t10k": rng.integers(0, 10, 7, dtype=np.uint8)}
    for s in ("train", "t10k"):
        write_idx(str(d / f"{s}-images-idx3-ubyte{ext}"), imgs[s])
        write_idx(str(d / f"{s}-labels-idx1-ubyte{ext}"), labels[s])
    ds = data.load("mnist", str(tmp_path))
    assert ds.X_train.shape == (20, 1, 28, 28) and ds.X_test.shape == (7, 1, 28, 28)
    np.testing.assert_allclose(ds.X_train[3, 0] * 255, imgs["train"][3], atol=1e-4)
    np.testing.assert_array_equal(ds.y_test, labels["t10k"])
    assert ds.X_train.dtype == np.float32 and ds.X_train.max() <= 1.0


def test_missing_mnist_file_names_file_and_folder(tmp_path):
    with pytest.raises(UserError) as e:
        data.check("mnist", str(tmp_path))
    msg = str(e.value)
    assert "train-images-idx3-ubyte" in msg and str(tmp_path) in msg and "LIPBENCH_DATA" in msg
    assert "\n" not in msg


def test_data_dir_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LIPBENCH_DATA", str(tmp_path))
    assert data.data_dir() == str(tmp_path)
    assert data.data_dir("/x") == "/x"


def test_cifar_from_python_batches(tmp_path):
    rng = np.random.default_rng(1)
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    for name in data.CIFAR_FILES:
        with open(d / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                         b"labels": list(rng.integers(0, 10, 4))}, f)
    ds = data.load({"name": "cifar"}, str(tmp_path))
    assert ds.X_train.shape == (20, 3, 32, 32) and ds.X_test.shape == (4, 3, 32, 32)
    assert ds.n_classes == 10
    assert ds.note == "CIFAR-10"   # batches without the JPEG copy's labels: the original's
    for name in data.CIFAR_FILES:   # the offline JPEG copy labels each batch by its file name
        with open(d / name, "rb") as f:
            b = pickle.load(f)
        with open(d / name, "wb") as f:
            pickle.dump({**b, b"batch_label": name.encode()}, f)
    assert data.load({"name": "cifar"}, str(tmp_path)).note == "CIFAR-10 (JPEG copy)"
    os.unlink(d / "data_batch_3")
    with pytest.raises(UserError, match="data_batch_3"):
        data.check("cifar", str(tmp_path))


def test_not_an_idx_file(tmp_path):
    p = tmp_path / "x.gz"
    with gzip.open(p, "wb") as f:
        f.write(b"hello world")
    with pytest.raises(UserError, match="not an IDX"):
        data.read_idx(str(p))


@pytest.mark.skipif(not os.path.isdir(os.path.join(REFERENCE, "mnist")), reason="../shared/reference/mnist absent")
def test_real_mnist_test_set():
    X = data.read_idx(os.path.join(REFERENCE, "mnist", "t10k-images-idx3-ubyte.gz"))
    y = data.read_idx(os.path.join(REFERENCE, "mnist", "t10k-labels-idx1-ubyte.gz"))
    assert X.shape == (10000, 28, 28) and y.shape == (10000,)
    assert np.bincount(y).tolist()[:2] == [980, 1135]  # the published class counts


@pytest.mark.slow
def test_digits_mnist5k_synthetic():
    d = data.load("digits")
    assert d.input_shape == (1, 8, 8) and len(d.X_train) + len(d.X_test) == 1797
    m = data.load({"name": "mnist5k", "subset": 500})
    assert m.input_shape == (1, 28, 28) and len(m.X_train) == 500 and len(set(m.y_test.tolist())) == 10
    s1, s2 = data.load({"name": "synthetic", "dim": 3}), data.load({"name": "synthetic", "dim": 3})
    np.testing.assert_array_equal(s1.X_train, s2.X_train)
    with pytest.raises(UserError, match="unknown data set"):
        data.load("imagenet")
    with pytest.raises(UserError, match="unknown parameter"):
        data.load({"name": "digits", "colour": 1})
