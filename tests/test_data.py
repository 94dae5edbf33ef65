"""fastbp.data: the toy and digits sets, the IDX reader, MNIST-style loading and downloads."""

import gzip
import hashlib
import struct
import sys

import numpy
import pytest

import fastbp.data as data
from fastbp.data import DatasetError, load_dataset, read_idx


@pytest.fixture(autouse=True)
def _no_network(monkeypatch):
    """No test may reach the network: a fetch that was not planned for fails loudly."""
    def refuse(url, out):
        raise AssertionError(f"unexpected download of {url}")

    monkeypatch.setattr(data, "_fetch", refuse)


# ------------------------------------------------------------- toy, digits
def test_toy_shapes_dtypes_and_seeded_split():
    (x, t), (xt, tt) = load_dataset("toy")
    assert x.shape == xt.shape == (200, 2) and x.dtype == numpy.float64
    assert t.dtype == tt.dtype == numpy.int64 and set(t) == set(tt) == {0, 1}
    assert not numpy.array_equal(x, xt)  # train and test come from different seeds
    (x2, _), _ = load_dataset("toy")
    numpy.testing.assert_array_equal(x, x2)


def test_digits_split_normalization_and_determinism():
    (x, t), (xt, tt) = load_dataset("digits")
    assert x.shape[1] == xt.shape[1] == 64 and len(x) + len(xt) == 1797
    assert len(xt) == round(0.2 * 1797) and len(t) == len(x) and len(tt) == len(xt)
    assert x.dtype == xt.dtype == numpy.float64 and t.dtype == tt.dtype == numpy.int64
    assert x.min() == 0 and x.max() == 1 and xt.max() <= 1
    assert set(tt) == set(range(10))
    (x_raw, t_raw), _ = load_dataset("digits", normalize=False)
    numpy.testing.assert_array_equal(x_raw, x * 16)
    numpy.testing.assert_array_equal(t_raw, t)
    from sklearn.datasets import load_digits

    everything = load_digits().data
    rows = {row.tobytes() for row in everything}
    assert all(row.tobytes() in rows for row in xt[:20] * 16)  # the real digits, not made up


def test_one_hot_rows_match_the_labels():
    (_, t), (_, tt) = load_dataset("digits")
    (_, h), (_, ht) = load_dataset("digits", one_hot=True)
    assert h.shape == (len(t), 10) and h.dtype == numpy.float64
    numpy.testing.assert_array_equal(h.argmax(axis=1), t)
    numpy.testing.assert_array_equal(ht.sum(axis=1), numpy.ones(len(tt)))
    (_, toy), _ = load_dataset("toy", one_hot=True)
    assert toy.shape == (200, 2)


def test_digits_without_scikit_learn_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(ImportError, match=r'pip install "fastbp\[datasets\]"'):
        load_dataset("digits")


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(ValueError) as info:
        load_dataset("cifar10")
    assert "'cifar10'" in str(info.value)
    assert all(name in str(info.value) for name in data.DATASETS)


# -------------------------------------------------------------- IDX files
def idx_bytes(array, type_code=0x08):
    """An IDX file: zero, zero, type code, ndim, big-endian dims, big-endian data."""
    header = bytes([0, 0, type_code, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(data._IDX_TYPES[type_code]).tobytes()


def fake_mnist(n_train=12, n_test=7, seed=0):
    rng = numpy.random.default_rng(seed)
    return {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=numpy.uint8),
            "t_train": rng.integers(0, 10, n_train, dtype=numpy.uint8),
            "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=numpy.uint8),
            "t_test": rng.integers(0, 10, n_test, dtype=numpy.uint8)}


def write_mnist(directory, arrays, gz=True):
    directory.mkdir(parents=True, exist_ok=True)
    for key, filename in data.IDX_FILES.items():
        raw = idx_bytes(arrays[key])
        if gz:
            (directory / filename).write_bytes(gzip.compress(raw))
        else:
            (directory / filename.removesuffix(".gz")).write_bytes(raw)


def assert_matches(loaded, arrays):
    (x, t), (xt, tt) = loaded
    assert x.shape == (len(arrays["x_train"]), 784) and x.dtype == numpy.float64
    assert t.dtype == tt.dtype == numpy.int64
    numpy.testing.assert_array_equal(x, arrays["x_train"].reshape(-1, 784) / 255.0)
    numpy.testing.assert_array_equal(xt * 255.0, arrays["x_test"].reshape(-1, 784))
    numpy.testing.assert_array_equal(t, arrays["t_train"])
    numpy.testing.assert_array_equal(tt, arrays["t_test"])


@pytest.mark.parametrize("type_code", sorted(data._IDX_TYPES))
@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trips_every_type(tmp_path, type_code, gz):
    array = numpy.arange(-12, 12).reshape(2, 3, 4) % (200 if type_code == 0x08 else 1000)
    if type_code == 0x09:
        array = array % 100 - 50
    raw = idx_bytes(array, type_code)
    path = tmp_path / "a.idx"
    path.write_bytes(gzip.compress(raw) if gz else raw)
    out = read_idx(path)
    assert out.shape == (2, 3, 4) and out.dtype.isnative
    numpy.testing.assert_array_equal(out, array)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_mnist_from_idx_files(tmp_path, name, gz):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays, gz=gz)
    assert_matches(load_dataset(name, data_dir=tmp_path), arrays)
    (x_raw, _), _ = load_dataset(name, data_dir=tmp_path, normalize=False)
    numpy.testing.assert_array_equal(x_raw, arrays["x_train"].reshape(-1, 784))


def test_mnist_from_a_keras_npz(tmp_path):
    arrays = fake_mnist()
    numpy.savez(tmp_path / "mnist.npz", x_train=arrays["x_train"], y_train=arrays["t_train"],
                x_test=arrays["x_test"], y_test=arrays["t_test"])
    assert_matches(load_dataset("mnist", data_dir=tmp_path), arrays)
    _, (_, onehot) = load_dataset("mnist", data_dir=tmp_path, one_hot=True)
    numpy.testing.assert_array_equal(onehot.argmax(axis=1), arrays["t_test"])


def test_npz_without_the_keras_keys_is_refused(tmp_path):
    numpy.savez(tmp_path / "mnist.npz", images=numpy.zeros((2, 28, 28), numpy.uint8))
    with pytest.raises(DatasetError, match="y_train"):
        load_dataset("mnist", data_dir=tmp_path)


def test_data_directory_precedence(tmp_path, monkeypatch):
    arrays = fake_mnist()
    write_mnist(tmp_path / "env" / "mnist", arrays)
    monkeypatch.setenv("FASTBP_DATA_DIR", str(tmp_path / "env"))
    assert_matches(load_dataset("mnist"), arrays)
    other = fake_mnist(seed=1)
    write_mnist(tmp_path / "explicit", other)
    assert_matches(load_dataset("mnist", data_dir=tmp_path / "explicit"), other)  # beats the variable
    monkeypatch.setenv("FASTBP_DATA_DIR", "")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    write_mnist(tmp_path / "home" / ".cache" / "fastbp" / "fashion-mnist", other)
    assert_matches(load_dataset("fashion-mnist"), other)


# ----------------------------------------------------------- error paths
def test_missing_files_name_the_file_the_place_and_the_fix(tmp_path):
    arrays = fake_mnist()
    write_mnist(tmp_path, arrays)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(FileNotFoundError) as info:
        load_dataset("mnist", data_dir=tmp_path)
    message = str(info.value)
    assert isinstance(info.value, ValueError)  # the CLI turns it into one line
    assert "t10k-labels-idx1-ubyte.gz" in message and "train-images" not in message
    assert str(tmp_path) in message
    assert "download=True" in message and "FASTBP_DATA_DIR" in message


def corrupt(arrays, tmp_path, filename, transform, gz):
    write_mnist(tmp_path, arrays, gz=gz)
    path = tmp_path / (filename if gz else filename.removesuffix(".gz"))
    raw = gzip.decompress(path.read_bytes()) if gz else path.read_bytes()
    raw = transform(raw)
    path.write_bytes(gzip.compress(raw) if gz else raw)
    return path


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("filename, transform, fragment", [
    ("train-images-idx3-ubyte.gz", lambda raw: raw[:-100], "truncated"),
    ("train-images-idx3-ubyte.gz", lambda raw: raw[:10], "truncated"),
    ("train-images-idx3-ubyte.gz", lambda raw: raw + b"\0" * 4, "longer than its header"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: b"\x08\x00" + raw[2:], "magic number"),
    ("t10k-labels-idx1-ubyte.gz", lambda raw: raw[:2] + b"\x07" + raw[3:], "magic number"),
])
def test_damaged_idx_files_are_refused_by_name(tmp_path, gz, filename, transform, fragment):
    path = corrupt(fake_mnist(), tmp_path, filename, transform, gz)
    with pytest.raises(DatasetError, match=fragment) as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value) and "download=True" in str(info.value)


def test_truncated_gzip_stream_is_refused(tmp_path):
    write_mnist(tmp_path, fake_mnist())
    path = tmp_path / "train-labels-idx1-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-12])
    with pytest.raises(DatasetError, match="damaged gzip") as info:
        load_dataset("mnist", data_dir=tmp_path)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("change, fragment", [
    (lambda a: a.update(t_train=a["t_train"][:-1]), "labels of shape"),  # wrong count
    (lambda a: a.update(x_test=a["x_test"].reshape(-1, 14, 56)[:, :10]), "images of shape"),  # wrong dims
    (lambda a: a.update(x_train=a["x_train"][:, 0]), "images of shape"),  # 2-d images file
    (lambda a: a.update(t_test=a["t_test"] + 10), "labels in"),
])
def test_inconsistent_files_are_refused(tmp_path, change, fragment):
    arrays = fake_mnist()
    change(arrays)
    write_mnist(tmp_path, arrays)
    with pytest.raises(DatasetError, match=fragment):
        load_dataset("mnist", data_dir=tmp_path)


# -------------------------------------------------------------- download
@pytest.fixture
def mirror(monkeypatch):
    """A fake mirror serving small IDX files whose sums are the "known" ones."""
    served = {filename: gzip.compress(idx_bytes(array))
              for (key, array), filename in zip(fake_mnist().items(), data.IDX_FILES.values())}
    sums = {name: {f: hashlib.sha256(raw).hexdigest() for f, raw in served.items()}
            for name in data.SHA256}
    monkeypatch.setattr(data, "SHA256", sums)
    calls = []

    def fetch(url, out):
        calls.append(url)
        out.write(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(data, "_fetch", fetch)
    return served, calls


def test_download_fetches_only_missing_files_and_verifies_them(tmp_path, mirror):
    served, calls = mirror
    target = tmp_path / "new" / "mnist"
    assert_matches(load_dataset("mnist", data_dir=target, download=True), fake_mnist())
    assert sorted(p.name for p in target.iterdir()) == sorted(served)
    assert len(calls) == 4 and all(url.startswith(data.MIRRORS["mnist"][0]) for url in calls)
    load_dataset("mnist", data_dir=target, download=True)
    assert len(calls) == 4  # everything is there now: nothing fetched again


def test_no_download_unless_asked(tmp_path, mirror):
    _, calls = mirror
    with pytest.raises(FileNotFoundError):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    assert calls == [] and list(tmp_path.iterdir()) == []


def test_checksum_mismatch_leaves_nothing_behind(tmp_path, mirror, monkeypatch):
    _, calls = mirror
    bad = dict(data.SHA256)
    bad["mnist"] = {**bad["mnist"], "t10k-images-idx3-ubyte.gz": "0" * 64}
    monkeypatch.setattr(data, "SHA256", bad)
    with pytest.raises(DatasetError, match="SHA-256") as info:
        load_dataset("mnist", data_dir=tmp_path, download=True)
    assert "t10k-images-idx3-ubyte.gz" in str(info.value)
    assert len([url for url in calls if "t10k-images" in url]) == len(data.MIRRORS["mnist"])
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "t10k-images-idx3-ubyte.gz" not in names and not any(n.endswith(".part") for n in names)


def test_interrupted_download_leaves_nothing_behind(tmp_path, monkeypatch):
    def broken(url, out):
        out.write(b"\x1f\x8b partial")
        raise OSError("connection reset")

    monkeypatch.setattr(data, "_fetch", broken)
    with pytest.raises(DatasetError, match="connection reset"):
        load_dataset("fashion-mnist", data_dir=tmp_path, download=True)
    assert list(tmp_path.iterdir()) == []


def test_download_cut_short_tries_the_next_mirror_and_names_the_failure(tmp_path, mirror,
                                                                          monkeypatch):
    import http.client

    served, calls = mirror
    def flaky(url, out):  # the first mirror closes the connection mid-body
        calls.append(url)
        if url.startswith(data.MIRRORS["mnist"][0]):
            out.write(b"\x1f\x8b partial")
            raise http.client.IncompleteRead(b"partial", 100)
        out.write(served[url.rsplit("/", 1)[1]])

    monkeypatch.setattr(data, "_fetch", flaky)
    assert_matches(load_dataset("mnist", data_dir=tmp_path, download=True), fake_mnist())
    assert not any(p.name.endswith(".part") for p in tmp_path.iterdir())

    def cut(url, out):
        raise http.client.IncompleteRead(b"", 100)

    monkeypatch.setattr(data, "_fetch", cut)
    with pytest.raises(DatasetError, match="IncompleteRead|more expected"):
        load_dataset("fashion-mnist", data_dir=tmp_path / "f", download=True)


def test_download_into_a_data_dir_that_is_a_file_is_a_dataset_error(tmp_path, mirror):
    in_the_way = tmp_path / "mnist"
    in_the_way.write_text("not a directory")
    with pytest.raises(DatasetError, match="cannot create the data directory"):
        load_dataset("mnist", data_dir=in_the_way, download=True)
