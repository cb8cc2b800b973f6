"""CIFAR-10 from the official python release layout, read without trusting its pickles.

Layout (Krizhevsky 2009, ``cifar-10-python.tar.gz`` extracted)::

    root/cifar-10-batches-py/data_batch_1 .. data_batch_5, test_batch, batches.meta

``root`` may also be the ``cifar-10-batches-py`` directory itself. Each batch is a pickled dict
with ``data`` (uint8 ``[10000, 3072]``, rows are the R, G then B planes of a 32x32 image) and
``labels`` (ints 0..9); ``batches.meta`` holds ``label_names``.

Pickles can run arbitrary code when loaded, and a downloaded data directory is untrusted
input. :class:`RestrictedUnpickler` therefore resolves only the handful of globals that a
pickled numpy array needs and refuses everything else with :class:`DataError` before any
call is made.
"""

from __future__ import annotations

import codecs
import importlib
import io
import pickle
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from nasforge.data.base import ImageData, UInt8ImageDataset
from nasforge.errors import DataError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
TRAIN_FILES = tuple(f"data_batch_{k}" for k in range(1, 6))
TEST_FILE = "test_batch"
META_FILE = "batches.meta"
BATCH_DIR = "cifar-10-batches-py"
LAYOUT = f"ROOT/{BATCH_DIR}/{{{','.join(TRAIN_FILES)},{TEST_FILE},{META_FILE}}}"


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    # Python 3 writes bytes with pickle protocol <= 2 as _codecs.encode(str, "latin1"). The
    # real _codecs.encode accepts any codec, so only the one the format uses is let through.
    if codecs.lookup(encoding).name != "iso8859-1":
        raise DataError(f"refused pickle call _codecs.encode(..., {encoding!r}); only 'latin1' is allowed")
    return text.encode("latin1")


def _numpy_global(module: str, name: str) -> Any:
    # numpy 2 moved numpy.core to numpy._core; pickles written by either version name theirs.
    for candidate in (
        module.replace("numpy.core", "numpy._core"),
        module.replace("numpy._core", "numpy.core"),
    ):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)
                return getattr(importlib.import_module(candidate), name)
        except (ImportError, AttributeError):
            continue
    raise DataError(f"numpy has no {module}.{name} to rebuild an array with")


_ALLOWED: dict[tuple[str, str], Any] = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1_encode,
}
_ALLOWED_NUMPY = {
    ("numpy.core.multiarray", "_reconstruct"),  # numpy < 2, protocols 0-4
    ("numpy._core.multiarray", "_reconstruct"),  # numpy >= 2
    ("numpy.core.numeric", "_frombuffer"),  # protocol 5
    ("numpy._core.numeric", "_frombuffer"),
}


class RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that resolves only the globals needed to rebuild numpy arrays.

    Allowed: ``numpy.ndarray``, ``numpy.dtype``, ``numpy[._]core.multiarray._reconstruct``,
    ``numpy[._]core.numeric._frombuffer`` and ``_codecs.encode`` restricted to latin-1. Plain
    containers, numbers, strings and bytes need no globals. Any other global (``os.system``,
    ``builtins.eval``...) raises :class:`DataError` naming it, before anything is called.
    """

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if (module, name) in _ALLOWED_NUMPY:
            return _numpy_global(module, name)
        raise DataError(
            f"refused to load global {module}.{name} from a pickle: a CIFAR-10 batch holds only "
            f"dicts, lists, bytes and numpy arrays (allowed: numpy.ndarray, numpy.dtype, "
            f"numpy.core.multiarray._reconstruct, numpy.core.numeric._frombuffer, _codecs.encode)"
        )

    def persistent_load(self, pid: Any) -> Any:
        raise DataError(f"refused persistent id {pid!r} in a pickle: CIFAR-10 batches have none")


def safe_load_pickle(path: Path) -> Any:
    """Unpickle ``path`` with :class:`RestrictedUnpickler`.

    ``encoding="latin1"`` is what numpy documents for pickles written by Python 2 (the
    official CIFAR-10 files); pickles written by Python 3 are unaffected by it.

    Raises:
        DataError: the file is unreadable, truncated, corrupt, or asks for a refused global.
    """
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e}") from e
    try:
        return RestrictedUnpickler(io.BytesIO(data), encoding="latin1").load()
    except DataError as e:
        raise DataError(f"{path}: {e}") from e
    except Exception as e:  # any unpickling failure of an untrusted file is a data error
        raise DataError(f"{path} is not a readable CIFAR-10 pickle ({type(e).__name__}: {e})") from e


def _key(d: dict[Any, Any], name: str, path: Path) -> Any:
    # Python 3 pickles have bytes keys (b"data"); Python 2 pickles read with latin1 have str keys.
    for k in (name, name.encode()):
        if k in d:
            return d[k]
    raise DataError(
        f"{path} has no {name!r} entry (keys: {sorted(str(k) for k in d)}); expected layout {LAYOUT}"
    )


def _as_str(value: Any) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def read_batch(path: Path, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """Read one batch file into ``(uint8 [N, 3, 32, 32], int64 [N])``, validating it.

    Official batches have N = 10,000; any N > 0 is accepted so that subsets written in the
    same format load too.

    Raises:
        DataError: not a dict, wrong dtype or shape, label count or range wrong.
    """
    d = safe_load_pickle(path)
    if not isinstance(d, dict):
        raise DataError(f"{path} holds a {type(d).__name__}, expected a dict; expected layout {LAYOUT}")
    data, labels = _key(d, "data", path), _key(d, "labels", path)
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        desc = f"{data.dtype} {data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise DataError(f"{path}: 'data' must be uint8 [N, 3072] (official: [10000, 3072]), got {desc}")
    try:
        y = np.asarray(labels, dtype=np.int64).reshape(-1)
    except (TypeError, ValueError) as e:
        raise DataError(f"{path}: 'labels' is not a list of ints ({e})") from e
    if y.shape[0] != data.shape[0] or data.shape[0] == 0:
        raise DataError(f"{path}: {data.shape[0]} images but {y.shape[0]} labels")
    bad = y[(y < 0) | (y >= num_classes)]
    if bad.size:
        raise DataError(f"{path}: label {int(bad[0])} outside 0..{num_classes - 1}")
    return data.reshape(-1, 3, 32, 32), y


def find_batch_dir(root: str | Path) -> Path:
    """The ``cifar-10-batches-py`` directory given ``root`` or the directory itself.

    Raises:
        DataError: a required file is missing (named, with the expected layout).
    """
    base = Path(root).expanduser()
    batch_dir = base / BATCH_DIR if (base / BATCH_DIR).is_dir() else base
    if not batch_dir.is_dir():
        raise DataError(f"CIFAR-10 directory {base} does not exist; expected layout {LAYOUT}")
    for name in (*TRAIN_FILES, TEST_FILE, META_FILE):
        if not (batch_dir / name).is_file():
            raise DataError(f"CIFAR-10 file {batch_dir / name} is missing; expected layout {LAYOUT}")
    return batch_dir


def load_cifar10(root: str | Path | None, image_size: int | None = None) -> ImageData:
    """Load CIFAR-10 (50,000 train / 10,000 test) from the official python batches.

    Images stay uint8 in memory (184 MB) and are converted to float32, normalised with the
    standard CIFAR-10 mean/std, when read.

    Args:
        root: directory holding ``cifar-10-batches-py/`` (or that directory itself).
        image_size: resize to this side when reading; default 32.

    Raises:
        DataError: ``root`` missing, a file missing or corrupt, a refused pickle global.
    """
    if root is None:
        raise DataError(f"cifar10 needs a root directory (layout {LAYOUT}); none was given")
    batch_dir = find_batch_dir(root)
    meta = safe_load_pickle(batch_dir / META_FILE)
    if not isinstance(meta, dict):
        raise DataError(f"{batch_dir / META_FILE} holds a {type(meta).__name__}, expected a dict")
    names = _key(meta, "label_names", batch_dir / META_FILE)
    if not isinstance(names, (list, tuple)) or len(names) != 10:
        raise DataError(f"{batch_dir / META_FILE}: 'label_names' must list 10 classes, got {names!r:.200}")
    parts = [read_batch(batch_dir / f) for f in TRAIN_FILES]
    x_test, y_test = read_batch(batch_dir / TEST_FILE)
    x_train = np.concatenate([p[0] for p in parts])
    y_train = np.concatenate([p[1] for p in parts])

    def dataset(x: np.ndarray, y: np.ndarray) -> UInt8ImageDataset:
        return UInt8ImageDataset(
            torch.from_numpy(x), torch.from_numpy(y), CIFAR10_MEAN, CIFAR10_STD, image_size
        )

    return ImageData(
        name="cifar10",
        train=dataset(x_train, y_train),
        test=dataset(x_test.copy(), y_test),  # copy: a protocol-5 array may be read-only
        num_classes=10,
        in_channels=3,
        image_size=32 if image_size is None else int(image_size),
        class_names=[_as_str(n) for n in names],
        mean=CIFAR10_MEAN,
        std=CIFAR10_STD,
    )
