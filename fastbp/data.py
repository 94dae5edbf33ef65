"""Data sets: the seeded toy set, scikit-learn's 8x8 digits, and MNIST / Fashion-MNIST.

``load_dataset`` returns host NumPy arrays ``(x_train, t_train), (x_test,
t_test)``: float64 inputs, one row per sample, and int64 class indices (or
float64 one-hot rows).  MNIST-style sets are read from IDX files (gzipped or
not) or a Keras-style ``<name>.npz``; they are downloaded only when asked,
checked against known SHA-256 sums and written atomically, so a data
directory never holds a half-written file.
"""

from __future__ import annotations

import gzip
import hashlib
import http.client
import math
import os
import struct
import zlib
from pathlib import Path

import numpy

from fastbp.atomic import replacing

DATASETS = ("toy", "digits", "mnist", "fashion-mnist")

#: the four IDX files of an MNIST-style set, by the array each one holds
IDX_FILES = {
    "x_train": "train-images-idx3-ubyte.gz",
    "t_train": "train-labels-idx1-ubyte.gz",
    "x_test": "t10k-images-idx3-ubyte.gz",
    "t_test": "t10k-labels-idx1-ubyte.gz",
}

#: SHA-256 of the published gzipped files (the same bytes on every mirror)
SHA256 = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
        "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
        "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
        "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
        "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
        "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
        "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
    },
}

#: base URLs tried in order; the checksum, not the mirror, is what is trusted
MIRRORS = {
    "mnist": ("https://ossci-datasets.s3.amazonaws.com/mnist/",
              "https://storage.googleapis.com/cvdf-datasets/mnist/"),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
}

# IDX type codes (the third byte of the magic number) and their big-endian dtypes
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IMAGE_SHAPE = (28, 28)
_N_CLASSES = 10
_DIGITS_TEST_FRACTION = 0.2
_SPLIT_SEED = 0
#: Keras names the labels y_*; fastbp calls them t_*
_NPZ_KEYS = {"x_train": "x_train", "t_train": "y_train", "x_test": "x_test", "t_test": "y_test"}
_REPLACE_HINT = "delete it and load again with download=True, or replace it with a good copy"


class DatasetError(ValueError):
    """A data file is damaged, has an unexpected layout, or could not be fetched."""


class DatasetNotFoundError(DatasetError, FileNotFoundError):
    """A data file is not where fastbp looked for it."""


class DatasetDownloadError(DatasetError):
    """No mirror delivered a file with the expected SHA-256 sum."""


# ------------------------------------------------------------------- toy
def make_toy(n=200, seed=0):
    """Two classes of ``n / 2`` points each from N((-1, 0.5), I) and N((1, -0.5), I).

    Returns ``(x, t)``: float64 points of shape ``(n, 2)`` and int64 labels.
    The Bayes limit of this set is about 0.87 accuracy.
    """
    rng = numpy.random.default_rng(seed)
    half = n // 2
    means = numpy.array([[-1.0, 0.5], [1.0, -0.5]])
    t = numpy.repeat(numpy.arange(2), [half, n - half])
    x = means[t] + rng.standard_normal((n, 2))
    return x, t


# ------------------------------------------------------------ the facade
def load_dataset(name, normalize=True, one_hot=False, data_dir=None, download=False):
    """``(x_train, t_train), (x_test, t_test)`` of data set ``name``, as host NumPy arrays.

    ``normalize`` scales pixels to [0, 1] (the toy set is already unit-scale
    and is returned as drawn).  ``data_dir`` is the directory holding an
    MNIST-style set's files; by default ``$FASTBP_DATA_DIR/<name>``, else
    ``~/.cache/fastbp/<name>``.  ``download=True`` fetches missing files.
    """
    if name not in DATASETS:
        raise ValueError(f"load_dataset: unknown data set {name!r}; expected one of {list(DATASETS)}")
    if name == "toy":
        train, test = make_toy(200, seed=0), make_toy(200, seed=1)
    elif name == "digits":
        train, test = _load_digits(normalize)
    else:
        train, test = _load_mnist_like(name, data_directory(name, data_dir), normalize, download)
    if one_hot:
        n_classes = 2 if name == "toy" else _N_CLASSES
        train, test = [(x, numpy.eye(n_classes)[t]) for x, t in (train, test)]
    return train, test


def data_directory(name, data_dir=None) -> Path:
    """Where the files of ``name`` live: ``data_dir``, else ``$FASTBP_DATA_DIR/<name>``, else the cache."""
    if data_dir is not None:
        return Path(data_dir).expanduser()
    root = os.environ.get("FASTBP_DATA_DIR", "").strip()
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "fastbp") / name


# ---------------------------------------------------------------- digits
def _load_digits(normalize):
    """scikit-learn's 1,797 8x8 digits (shipped in its wheel), split 80/20 by a seeded permutation."""
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("load_dataset('digits') reads the digits that scikit-learn ships; "
                          'install it with: pip install "fastbp[datasets]"') from exc
    bunch = load_digits()
    x = bunch.data.astype(numpy.float64)
    t = bunch.target.astype(numpy.int64)
    if normalize:
        x /= 16.0  # pixel counts run from 0 to 16
    order = numpy.random.default_rng(_SPLIT_SEED).permutation(len(t))
    n_test = round(_DIGITS_TEST_FRACTION * len(t))
    test, train = numpy.sort(order[:n_test]), numpy.sort(order[n_test:])
    return (x[train], t[train]), (x[test], t[test])


# ------------------------------------------------------------ IDX reader
def read_idx(path):
    """An IDX file (gzipped or not) as a native-order NumPy array.

    Refuses a wrong magic number, a short header, and data that does not
    fill the shape the header announces (a truncated or padded file).
    """
    path = Path(path)
    raw = _read_maybe_gzipped(path)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise DatasetError(f"read_idx: {path} is not an IDX file: magic number 0x{raw[:4].hex()}, "
                           f"expected 0x0000TTNN with type code TT in "
                           f"{[f'{k:02x}' for k in _IDX_TYPES]}; {_REPLACE_HINT}")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DatasetError(f"read_idx: {path} is truncated: {len(raw)} bytes, but a {ndim}-d IDX "
                           f"header alone takes {header}; {_REPLACE_HINT}")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = numpy.dtype(_IDX_TYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    received = len(raw) - header
    if received != expected:
        problem = "truncated" if received < expected else "longer than its header says"
        raise DatasetError(f"read_idx: {path} is {problem}: the header announces shape {shape} "
                           f"({expected} data bytes), received {received}; {_REPLACE_HINT}")
    data = numpy.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def _read_maybe_gzipped(path: Path) -> bytes:
    raw = path.read_bytes()
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (EOFError, OSError, zlib.error) as exc:
        raise DatasetError(f"read_idx: {path} is a damaged gzip file ({exc}); {_REPLACE_HINT}") from None


# ------------------------------------------------------- MNIST-style sets
def _load_mnist_like(name, directory: Path, normalize, download):
    """The four IDX files if all are there, else ``<name>.npz``, else download (if allowed)."""
    found = {key: _find_idx(directory, filename) for key, filename in IDX_FILES.items()}
    npz = directory / f"{name}.npz"
    missing = [filename for key, filename in IDX_FILES.items() if found[key] is None]
    if missing and not npz.is_file():
        if not download:
            raise DatasetNotFoundError(
                f"load_dataset({name!r}): missing {', '.join(missing)} (gzipped or not) in "
                f"{directory}, and no {npz.name} there either. Fix: pass download=True "
                f"(fastbp train --download), or put the four IDX files in that directory (it is "
                f"data_dir, else $FASTBP_DATA_DIR/{name}, else ~/.cache/fastbp/{name})")
        for key, filename in IDX_FILES.items():
            found[key] = found[key] or _download(name, directory, filename)
    if all(found.values()):
        arrays = {key: read_idx(path) for key, path in found.items()}
        sources = found
    else:
        arrays = _read_npz(npz)
        sources = dict.fromkeys(IDX_FILES, npz)
    return [_check_split(name, sources, arrays, f"x_{split}", f"t_{split}", normalize)
            for split in ("train", "test")]


def _find_idx(directory: Path, filename):
    """The gzipped file, else its uncompressed twin, else None."""
    for candidate in (directory / filename, directory / filename.removesuffix(".gz")):
        if candidate.is_file():
            return candidate
    return None


def _read_npz(path: Path):
    try:
        with numpy.load(path, allow_pickle=False) as archive:
            missing = [key for key in _NPZ_KEYS.values() if key not in archive.files]
            if missing:
                raise DatasetError(f"load_dataset: {path} lacks the arrays {missing}; expected "
                                   f"{list(_NPZ_KEYS.values())} (the Keras layout)")
            return {key: archive[npz_key] for key, npz_key in _NPZ_KEYS.items()}
    except DatasetError:
        raise
    except Exception as exc:  # numpy.load signals damage with many types (BadZipFile, ValueError, ...)
        raise DatasetError(f"load_dataset: cannot read {path} ({type(exc).__name__}: {exc}); "
                           f"{_REPLACE_HINT}") from None



def _check_split(name, sources, arrays, x_key, t_key, normalize):
    """Images (N, 28, 28) or (N, 784) of bytes and N labels in [0, 10) -> float64 rows, int64 labels."""
    images, labels = arrays[x_key], arrays[t_key]
    where = f"load_dataset({name!r})"
    if images.ndim not in (2, 3) or math.prod(images.shape[1:]) != math.prod(_IMAGE_SHAPE):
        raise DatasetError(f"{where}: {sources[x_key]} holds images of shape {images.shape}, "
                           f"expected (N, 28, 28); {_REPLACE_HINT}")
    if labels.ndim != 1 or len(labels) != len(images):
        raise DatasetError(f"{where}: {sources[t_key]} holds labels of shape {labels.shape}, expected "
                           f"({len(images)},) to match {sources[x_key]}; {_REPLACE_HINT}")
    if len(labels) and (labels.min() < 0 or labels.max() >= _N_CLASSES):
        raise DatasetError(f"{where}: {sources[t_key]} holds labels in [{labels.min()}, {labels.max()}], "
                           f"expected [0, {_N_CLASSES - 1}]; {_REPLACE_HINT}")
    x = images.reshape(len(images), -1).astype(numpy.float64)
    if normalize:
        x /= 255.0
    return x, labels.astype(numpy.int64)


# --------------------------------------------------------------- download
def _fetch(url, out):
    """Stream ``url`` into the binary file ``out``: the only code that touches the network."""
    import shutil
    import urllib.request

    with urllib.request.urlopen(url, timeout=60) as response:
        shutil.copyfileobj(response, out)


def _sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


class _ChecksumMismatch(Exception):
    """A mirror served bytes other than the known ones (the download is dropped)."""


def _download(name, directory: Path, filename) -> Path:
    """Fetch ``filename`` from the first mirror whose bytes match the known SHA-256.

    Bytes land in a temporary file beside the target and are renamed into
    place only once verified, so an interrupted or bad download leaves nothing.
    """
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:  # a file in the way, no permission, a read-only file system
        raise DatasetDownloadError(
            f"load_dataset({name!r}): cannot create the data directory {directory} to download "
            f"{filename} into ({exc}). Fix: pass another data_dir (--data-dir)") from None
    expected = SHA256[name][filename]
    target = directory / filename
    failures = []
    for base in MIRRORS[name]:
        url = base + filename
        try:
            with replacing(target, suffix=".part") as (out, tmp):
                _fetch(url, out)
                out.flush()
                received = _sha256(tmp)
                if received != expected:
                    raise _ChecksumMismatch(f"{url}: SHA-256 {received}, expected {expected}")
            return target
        except _ChecksumMismatch as exc:
            failures.append(str(exc))
        except (OSError, http.client.HTTPException) as exc:  # URLError, timeouts, full disks;
            # a connection closed mid-body (IncompleteRead) is an HTTPException, not an OSError
            failures.append(f"{url}: {exc}")
    raise DatasetDownloadError(
        f"load_dataset({name!r}): could not download {filename} into {directory}: "
        f"{'; '.join(failures)}. Fix: check the network and retry, or put the file there by hand")
