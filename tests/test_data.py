"""Tests of nasforge.data: loaders, safe CIFAR-10 pickles, image folders, splits, loaders, augmentation.

CIFAR-10 and folder tests write small fixtures from real kit images (cifar10_jpeg.npz) into a
temporary directory; the full 60,000-image round trip is marked slow.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import Dataset, Subset

from nasforge.data import (
    ImageData,
    augment_batch,
    labels_of,
    load_data,
    make_loader,
    nb201_cifar10_valid_split,
    split_train_valid,
)
from nasforge.data.base import TensorImageDataset
from nasforge.data.cifar10 import CIFAR10_MEAN, CIFAR10_STD, read_batch, safe_load_pickle
from nasforge.errors import BudgetError, ConfigError, DataError, UnknownNameError

PER_BATCH = 20  # images per fake CIFAR-10 batch file


# ----------------------------------------------------------------------------- kit fixtures


@pytest.fixture(scope="module")
def cifar_npz(data_kit: Path) -> dict[str, np.ndarray]:
    path = data_kit / "cifar10" / "cifar10_jpeg.npz"
    if not path.is_file():
        pytest.skip(f"{path} not in the data kit")
    with np.load(path, allow_pickle=False) as z:
        return {
            k: z[k]
            for k in (
                "train_jpeg",
                "train_offsets",
                "y_train",
                "test_jpeg",
                "test_offsets",
                "y_test",
                "class_names",
            )
        }


def _jpeg(z: dict[str, np.ndarray], split: str, i: int) -> bytes:
    off = z[f"{split}_offsets"]
    return z[f"{split}_jpeg"][off[i] : off[i + 1]].tobytes()


def _decode(z: dict[str, np.ndarray], split: str, idx: range) -> tuple[np.ndarray, np.ndarray]:
    x = np.stack([np.asarray(Image.open(io.BytesIO(_jpeg(z, split, i))).convert("RGB")) for i in idx])
    return x, z[f"y_{split}"][list(idx)].astype(np.int64)


def _write_batch(path: Path, x_hwc: np.ndarray, y: np.ndarray, protocol: int = 4) -> None:
    # The layout of the official release, as materialize.py writes it.
    rows = x_hwc.transpose(0, 3, 1, 2).reshape(len(y), 3072)
    d = {
        b"batch_label": path.name.encode(),
        b"labels": y.tolist(),
        b"data": rows,
        b"filenames": [b"%d.png" % i for i in range(len(y))],
    }
    path.write_bytes(pickle.dumps(d, protocol=protocol))


@pytest.fixture(scope="module")
def tiny_cifar(
    tmp_path_factory: pytest.TempPathFactory, cifar_npz: dict[str, np.ndarray]
) -> tuple[Path, np.ndarray, np.ndarray]:
    """``root/cifar-10-batches-py`` with 5 x 20 train and 20 test real images; returns (root, x_train, y_train)."""
    root = tmp_path_factory.mktemp("cifar")
    bdir = root / "cifar-10-batches-py"
    bdir.mkdir()
    x, y = _decode(cifar_npz, "train", range(5 * PER_BATCH))
    for k in range(5):
        s = slice(k * PER_BATCH, (k + 1) * PER_BATCH)
        _write_batch(bdir / f"data_batch_{k + 1}", x[s], y[s])
    xt, yt = _decode(cifar_npz, "test", range(PER_BATCH))
    _write_batch(bdir / "test_batch", xt, yt)
    names = [str(c).encode() for c in cifar_npz["class_names"]]
    (bdir / "batches.meta").write_bytes(
        pickle.dumps({b"label_names": names, b"num_cases_per_batch": 10000}, protocol=4)
    )
    return root, x, y


def _copy_cifar(src: Path, dst: Path) -> Path:
    shutil.copytree(src / "cifar-10-batches-py", dst / "cifar-10-batches-py")
    return dst / "cifar-10-batches-py"


def _write_folder(root: Path, z: dict[str, np.ndarray], spec: dict[str, dict[str, int]]) -> None:
    """Write real JPEGs: ``spec[split][class] = count`` (images of class 0 of the kit, any will do)."""
    i = 0
    for split, classes in spec.items():
        for name, count in classes.items():
            d = root / split / name
            d.mkdir(parents=True, exist_ok=True)
            for _ in range(count):
                (d / f"{i:04d}.jpg").write_bytes(_jpeg(z, "train", i))
                i += 1


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory, cifar_npz: dict[str, np.ndarray]) -> Path:
    root = tmp_path_factory.mktemp("folder")
    names = [str(c) for c in cifar_npz["class_names"][:3]]
    y = cifar_npz["y_train"]
    for split, count in (("train", 4), ("test", 2)):
        for c, name in enumerate(names):
            d = root / split / name
            d.mkdir(parents=True)
            for i in np.flatnonzero(y == c)[:count] + (0 if split == "train" else 100):
                (d / f"{i}.jpg").write_bytes(_jpeg(cifar_npz, "train", int(i)))
    # Upper-case extension, grayscale PNG of another size: must be found, converted and resized.
    grey = Image.open(io.BytesIO(_jpeg(cifar_npz, "train", 0))).convert("L").resize((40, 24))
    grey.save(root / "train" / names[0] / "EXTRA.PNG")
    # Things to ignore: non-images, macOS resource forks, hidden dirs.
    (root / "train" / names[1] / "notes.txt").write_text("not an image")
    (root / "train" / names[1] / "._0.jpg").write_bytes(b"\x00\x05junk")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    return root


# ----------------------------------------------------------------------------- digits / load_data


def test_digits_shapes_dtypes_normalisation() -> None:
    data = load_data("digits")
    assert isinstance(data, ImageData)
    assert (len(data.train), len(data.test)) == (1437, 360)
    assert (data.num_classes, data.in_channels, data.image_size) == (10, 1, 8)
    assert data.input_shape() == (1, 8, 8)
    assert data.class_names == [str(d) for d in range(10)]
    x, y = data.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    train_x = torch.stack([data.train[i][0] for i in range(1437)])
    assert abs(float(train_x.mean())) < 1e-4 and abs(float(train_x.std()) - 1.0) < 1e-3
    # Undo the normalisation: raw pixels were 0..16 scaled to [0, 1].
    raw = train_x * data.std[0] + data.mean[0]
    assert float(raw.min()) > -1e-5 and float(raw.max()) < 1 + 1e-5
    counts = torch.bincount(labels_of(data.test), minlength=10)
    assert int(counts.sum()) == 360 and int(counts.max() - counts.min()) <= 2  # stratified: 36 +- 1


def test_digits_deterministic_and_resizable() -> None:
    a, b = load_data("digits"), load_data("digits")
    assert torch.equal(labels_of(a.test), labels_of(b.test))
    assert torch.equal(a.test[5][0], b.test[5][0])
    big = load_data("digits", image_size=16)
    assert big.train[0][0].shape == (1, 16, 16) and big.input_shape() == (1, 16, 16)
    assert torch.equal(labels_of(big.train), labels_of(a.train))


def test_load_data_errors() -> None:
    with pytest.raises(UnknownNameError, match="valid: cifar10, digits, folder"):
        load_data("mnist")
    with pytest.raises(BudgetError, match="image_size"):
        load_data("digits", image_size=0)
    with pytest.raises(DataError, match="root"):
        load_data("cifar10")
    with pytest.raises(DataError, match="root"):
        load_data("folder")


# ----------------------------------------------------------------------------- cifar10


def test_cifar10_tiny_batches(tiny_cifar: tuple[Path, np.ndarray, np.ndarray]) -> None:
    root, x, y = tiny_cifar
    data = load_data("cifar10", root)
    assert (len(data.train), len(data.test)) == (100, 20)
    assert data.input_shape() == (3, 32, 32) and data.num_classes == 10
    assert data.class_names[:3] == ["airplane", "automobile", "bird"]
    assert data.mean == CIFAR10_MEAN and data.std == CIFAR10_STD
    assert data.train.images.dtype == torch.uint8
    assert torch.equal(labels_of(data.train), torch.as_tensor(y))
    img, label = data.train[37]
    expect = (
        torch.as_tensor(x[37]).permute(2, 0, 1).float() / 255 - torch.tensor(CIFAR10_MEAN)[:, None, None]
    ) / torch.tensor(CIFAR10_STD)[:, None, None]
    assert img.dtype == torch.float32 and label == int(y[37])
    assert torch.allclose(img, expect, atol=1e-5)
    batch = data.train.__getitems__([37, 3])
    assert torch.equal(batch[0][0], img) and batch[1][1] == int(y[3])
    # root may be the batch directory itself; image_size resizes on the fly.
    small = load_data("cifar10", root / "cifar-10-batches-py", image_size=16)
    assert small.train[0][0].shape == (3, 16, 16) and small.image_size == 16


def test_cifar10_missing_file(tiny_cifar: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    bdir = _copy_cifar(tiny_cifar[0], tmp_path)
    (bdir / "data_batch_3").unlink()
    with pytest.raises(DataError, match=r"data_batch_3 is missing.*cifar-10-batches-py"):
        load_data("cifar10", tmp_path)
    with pytest.raises(DataError, match="does not exist"):
        load_data("cifar10", tmp_path / "nowhere")


def test_cifar10_corrupt_batches(tiny_cifar: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path) -> None:
    bdir = _copy_cifar(tiny_cifar[0], tmp_path)
    good = (bdir / "data_batch_2").read_bytes()
    (bdir / "data_batch_2").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match="data_batch_2 is not a readable CIFAR-10 pickle"):
        load_data("cifar10", tmp_path)
    x = np.zeros((4, 32, 32, 3), np.uint8)
    (bdir / "data_batch_2").write_bytes(
        pickle.dumps({b"data": np.zeros((4, 3071), np.uint8), b"labels": [0] * 4})
    )
    with pytest.raises(DataError, match=r"uint8 \[N, 3072\]"):
        load_data("cifar10", tmp_path)
    _write_batch(bdir / "data_batch_2", x, np.array([0, 1, 10, 2]))
    with pytest.raises(DataError, match="label 10 outside 0..9"):
        load_data("cifar10", tmp_path)
    (bdir / "data_batch_2").write_bytes(pickle.dumps({b"data": x.reshape(4, -1), b"labels": [0, 1]}))
    with pytest.raises(DataError, match="4 images but 2 labels"):
        load_data("cifar10", tmp_path)
    (bdir / "data_batch_2").write_bytes(pickle.dumps([1, 2, 3]))
    with pytest.raises(DataError, match="expected a dict"):
        load_data("cifar10", tmp_path)
    (bdir / "data_batch_2").write_bytes(pickle.dumps({b"labels": [0]}))
    with pytest.raises(DataError, match="no 'data' entry"):
        load_data("cifar10", tmp_path)


class _Evil:
    """Unpickling this would run a shell command that creates a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (os.system, (f"touch {self.marker}",))


class _EvalEvil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return (eval, ("1 + 1",))


def test_malicious_pickle_is_refused_and_not_run(
    tiny_cifar: tuple[Path, np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    bdir = _copy_cifar(tiny_cifar[0], tmp_path)
    marker = tmp_path / "pwned"
    (bdir / "data_batch_1").write_bytes(pickle.dumps({b"data": _Evil(marker), b"labels": []}))
    with pytest.raises(DataError, match=r"refused to load global (posix|nt|os)\.system"):
        load_data("cifar10", tmp_path)
    assert not marker.exists()
    (bdir / "batches.meta").write_bytes(pickle.dumps(_EvalEvil()))
    with pytest.raises(DataError, match=r"builtins\.eval"):
        load_data("cifar10", tmp_path)
    # _codecs.encode is allowed (protocol 2 bytes) but only with latin-1.
    bad_codec = (
        b"\x80\x02c_codecs\nencode\nq\x00X\x03\x00\x00\x00abcX\x04\x00\x00\x00zlibq\x01\x86q\x02Rq\x03."
    )
    (bdir / "batches.meta").write_bytes(bad_codec)
    with pytest.raises(DataError, match="only 'latin1'"):
        load_data("cifar10", tmp_path)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_safe_pickle_reads_numpy_arrays_of_every_protocol(tmp_path: Path, protocol: int) -> None:
    a = np.arange(3072 * 2, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    path = tmp_path / "b"
    path.write_bytes(pickle.dumps({b"data": a, b"labels": [1, 2], "name": "x"}, protocol=protocol))
    d = safe_load_pickle(path)
    assert np.array_equal(d[b"data"], a) and d[b"labels"] == [1, 2] and d["name"] == "x"


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (BINSTRING), as cPickle did for the official CIFAR-10 files."""

    def save_bytes(self, obj: bytes) -> None:
        n = len(obj)
        head = pickle.SHORT_BINSTRING + bytes([n]) if n < 256 else pickle.BINSTRING + struct.pack("<i", n)
        self.write(head + obj)  # type: ignore[attr-defined]
        self.memoize(obj)  # type: ignore[attr-defined]

    dispatch = dict(pickle._Pickler.dispatch)
    dispatch[bytes] = save_bytes  # type: ignore[assignment]


def test_safe_pickle_reads_python2_style_batches(tmp_path: Path) -> None:
    # The official release was written by Python 2: str keys/data and numpy.core globals.
    a = np.arange(3072 * 2, dtype=np.int64).astype(np.uint8).reshape(2, 3072)
    buf = io.BytesIO()
    _Py2Pickler(buf, protocol=2).dump({b"data": a, b"labels": [3, 4], b"batch_label": b"b1"})
    raw = buf.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    (tmp_path / "b").write_bytes(raw)
    x, y = read_batch(tmp_path / "b")
    assert np.array_equal(x.reshape(2, 3072), a) and y.tolist() == [3, 4]


# ----------------------------------------------------------------------------- folder


def test_folder_loads(tiny_folder: Path) -> None:
    data = load_data("folder", tiny_folder)
    assert data.class_names == ["airplane", "automobile", "bird"]
    assert (len(data.train), len(data.test)) == (13, 6)
    assert data.num_classes == 3 and data.input_shape() == (3, 32, 32)
    assert torch.bincount(labels_of(data.train)).tolist() == [5, 4, 4]
    for i in range(len(data.train)):
        x, y = data.train[i]
        assert x.shape == (3, 32, 32) and x.dtype == torch.float32 and 0 <= y < 3
    assert all(0.2 < m < 0.8 for m in data.mean) and all(0.05 < s < 0.5 for s in data.std)
    # Normalised with the stored statistics: all 13 train images (<= 1,000) were used.
    x = torch.stack([data.train[i][0] for i in range(13)])
    assert torch.allclose(x.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-3)
    small = load_data("folder", tiny_folder, image_size=12)
    assert small.test[0][0].shape == (3, 12, 12)


def test_folder_accepts_val_instead_of_test(cifar_npz: dict[str, np.ndarray], tmp_path: Path) -> None:
    _write_folder(tmp_path, cifar_npz, {"train": {"a": 2, "b": 2}, "val": {"a": 1, "b": 1}})
    assert len(load_data("folder", tmp_path).test) == 2


@pytest.mark.parametrize(
    ("spec", "pattern"),
    [
        ({"test": {"a": 1}}, r"missing .*train"),
        ({"train": {"a": 1}}, r"missing .*test.*val"),
        ({"train": {}, "test": {"a": 1}}, "has no class directories"),
        ({"train": {"a": 2, "b": 0}, "test": {"a": 1, "b": 1}}, "class 'b' in .*train has no images"),
        ({"train": {"a": 2, "b": 1}, "test": {"a": 1, "b": 0}}, "class 'b' in .*test has no images"),
        ({"train": {"a": 1, "b": 1}, "test": {"a": 1, "c": 1}}, r"missing \['b'\], not in train \['c'\]"),
    ],
)
def test_folder_layout_errors(
    cifar_npz: dict[str, np.ndarray], tmp_path: Path, spec: dict[str, dict[str, int]], pattern: str
) -> None:
    for split in spec:
        (tmp_path / split).mkdir()
    _write_folder(tmp_path, cifar_npz, spec)
    with pytest.raises(DataError, match=pattern):
        load_data("folder", tmp_path)


def test_folder_missing_root_and_corrupt_image(cifar_npz: dict[str, np.ndarray], tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_data("folder", tmp_path / "nowhere")
    _write_folder(tmp_path, cifar_npz, {"train": {"a": 1}, "test": {"a": 1}})
    (tmp_path / "test" / "a" / "broken.png").write_bytes(b"\x89PNG not really")
    data = load_data("folder", tmp_path)
    with pytest.raises(DataError, match="cannot decode image .*broken.png"):
        _ = [data.test[i] for i in range(len(data.test))]


# ----------------------------------------------------------------------------- splits


def _toy(n_per_class: list[int]) -> TensorImageDataset:
    labels = torch.cat([torch.full((n,), c) for c, n in enumerate(n_per_class)])
    return TensorImageDataset(torch.zeros(len(labels), 1, 1, 1), labels)


def test_split_disjoint_sizes_balanced_deterministic() -> None:
    ds = _toy([50, 31, 7, 12])
    tr, va = split_train_valid(ds, 0.5, seed=3)
    a, b = set(tr.indices), set(va.indices)
    assert not a & b and a | b == set(range(100))
    assert len(va) == 50 and len(tr) == 50
    counts = torch.bincount(labels_of(va), minlength=4).tolist()
    assert all(abs(c - n / 2) <= 1 for c, n in zip(counts, [50, 31, 7, 12]))
    tr2, va2 = split_train_valid(ds, 0.5, seed=3)
    assert list(va2.indices) == list(va.indices)
    _, va3 = split_train_valid(ds, 0.5, seed=4)
    assert list(va3.indices) != list(va.indices)
    tr4, va4 = split_train_valid(ds, 0.2, seed=0, stratified=False)
    assert (len(tr4), len(va4)) == (80, 20) and not set(tr4.indices) & set(va4.indices)


def test_split_errors_and_nested_labels() -> None:
    ds = _toy([5, 5])
    for bad in (0.0, 1.0, -0.1, 1.5):
        with pytest.raises(DataError, match="valid_fraction"):
            split_train_valid(ds, bad)
    with pytest.raises(DataError, match="non-empty"):
        split_train_valid(_toy([1]), 0.5)
    tr, _ = split_train_valid(ds, 0.5)
    inner, _ = split_train_valid(tr, 0.4)  # a split of a split: labels_of looks through both
    assert torch.equal(
        labels_of(inner), ds.labels[torch.as_tensor(tr.indices)][torch.as_tensor(inner.indices)]
    )


def test_labels_of_falls_back_to_items() -> None:
    class Plain(Dataset[tuple[torch.Tensor, int]]):
        def __len__(self) -> int:
            return 3

        def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
            return torch.zeros(1), 2 - i

    assert labels_of(Plain()).tolist() == [2, 1, 0]
    assert labels_of(Subset(Plain(), [2, 0])).tolist() == [0, 2]


def test_nb201_split() -> None:
    full = _toy([5000] * 10)
    data = ImageData("cifar10", full, full, 10, 1, 1, [str(i) for i in range(10)], (0.0,), (1.0,))
    tr, va = nb201_cifar10_valid_split(data)
    assert len(tr) == len(va) == 25_000 and not set(tr.indices) & set(va.indices)
    assert torch.bincount(labels_of(va)).tolist() == [2500] * 10
    assert torch.bincount(labels_of(tr)).tolist() == [2500] * 10
    assert list(nb201_cifar10_valid_split(data)[1].indices) == list(va.indices)
    with pytest.raises(DataError, match="50,000 images"):
        nb201_cifar10_valid_split(load_data("digits"))


# ----------------------------------------------------------------------------- loaders


def _order(loader: torch.utils.data.DataLoader) -> list[int]:
    return [int(i) for _, y in loader for i in y]


def test_loader_deterministic_per_seed_epoch() -> None:
    ds = TensorImageDataset(torch.zeros(100, 1, 1, 1), torch.arange(100))  # label == index
    before = torch.get_rng_state()
    a = _order(make_loader(ds, 16, shuffle=True, seed=1, epoch=3))
    assert torch.equal(torch.get_rng_state(), before)  # the global RNG is neither read nor advanced
    torch.manual_seed(12345)  # and does not matter
    loader = make_loader(ds, 16, shuffle=True, seed=1, epoch=3)
    assert _order(loader) == a and _order(loader) == a  # a resumed run at epoch 3 sees the same order
    assert sorted(a) == list(range(100)) and a != list(range(100))
    assert _order(make_loader(ds, 16, shuffle=True, seed=1, epoch=4)) != a
    assert _order(make_loader(ds, 16, shuffle=True, seed=2, epoch=3)) != a
    assert _order(make_loader(ds, 16, shuffle=False)) == list(range(100))
    assert len(make_loader(ds, 16, shuffle=True, drop_last=True)) == 6
    sub = Subset(ds, list(range(10, 60)))
    assert sorted(_order(make_loader(sub, 7, shuffle=True))) == list(range(10, 60))


def test_loader_errors() -> None:
    ds = _toy([3])
    with pytest.raises(BudgetError, match="batch_size"):
        make_loader(ds, 0, shuffle=True)
    with pytest.raises(ConfigError, match="epoch"):
        make_loader(ds, 2, shuffle=True, epoch=-1)
    with pytest.raises(DataError, match="empty"):
        make_loader(Subset(ds, []), 2, shuffle=True)


# ----------------------------------------------------------------------------- augmentation


def test_augment_shapes_and_determinism() -> None:
    x = torch.randn(8, 3, 12, 12)
    keep = x.clone()
    out = augment_batch(x, generator=torch.Generator().manual_seed(0), crop_padding=2, flip=True, cutout=4)
    assert out.shape == x.shape and out.dtype == x.dtype and torch.equal(x, keep)
    again = augment_batch(x, generator=torch.Generator().manual_seed(0), crop_padding=2, flip=True, cutout=4)
    assert torch.equal(out, again)
    plain = augment_batch(x, generator=None)
    assert torch.equal(plain, x) and plain is not x
    with pytest.raises(DataError, match="N, C, H, W"):
        augment_batch(x[0], generator=None)
    with pytest.raises(ConfigError, match="cutout"):
        augment_batch(x, generator=None, cutout=-1)
    with pytest.raises(ConfigError, match="crop_padding"):
        augment_batch(x, generator=None, crop_padding=-1)


def test_augment_crop_is_a_shifted_window() -> None:
    h = w = 6
    p = 2
    x = (torch.arange(h * w, dtype=torch.float32) + 1).view(1, 1, h, w).repeat(40, 2, 1, 1)
    out = augment_batch(x, generator=torch.Generator().manual_seed(1), crop_padding=p)
    padded = torch.nn.functional.pad(x[0], (p, p, p, p))
    offsets = set()
    for img in out:
        hits = [
            (dy, dx)
            for dy in range(2 * p + 1)
            for dx in range(2 * p + 1)
            if torch.equal(img, padded[:, dy : dy + h, dx : dx + w])
        ]
        assert len(hits) == 1
        offsets.add(hits[0])
    assert len(offsets) > 5  # offsets really vary across the batch


def test_augment_flip_flips() -> None:
    x = torch.randn(64, 2, 5, 7)
    out = augment_batch(x, generator=torch.Generator().manual_seed(2), flip=True)
    flipped = [torch.equal(o, xi.flip(2)) for o, xi in zip(out, x)]
    same = [torch.equal(o, xi) for o, xi in zip(out, x)]
    assert all(f or s for f, s in zip(flipped, same))
    assert 10 < sum(flipped) < 54


def test_augment_cutout_zeroes_one_square() -> None:
    size, side = 32, 8
    x = torch.ones(200, 3, size, size)
    out = augment_batch(x, generator=torch.Generator().manual_seed(3), cutout=side)
    full_squares = 0
    for img in out:
        zero = img == 0
        assert torch.equal(zero[0], zero[1]) and torch.equal(zero[0], zero[2])  # all channels
        rows = torch.nonzero(zero[0].any(1)).flatten()
        cols = torch.nonzero(zero[0].any(0)).flatten()
        assert 0 < len(rows) <= side and 0 < len(cols) <= side
        # Contiguous rectangle, fully zero, nothing zero outside it.
        assert rows.tolist() == list(range(int(rows[0]), int(rows[-1]) + 1))
        assert cols.tolist() == list(range(int(cols[0]), int(cols[-1]) + 1))
        assert int(zero[0].sum()) == len(rows) * len(cols)
        full_squares += len(rows) == len(cols) == side
    assert full_squares > 50  # centres away from the border give the whole 8x8 square


# ----------------------------------------------------------------------------- full kit (slow)


@pytest.mark.slow
def test_full_cifar10_from_materialized_batches(data_kit: Path, tmp_path: Path) -> None:
    script = data_kit / "cifar10" / "materialize.py"
    if not script.is_file():
        pytest.skip(f"{script} not in the data kit")
    subprocess.run([sys.executable, str(script), "batches", str(tmp_path)], check=True, capture_output=True)
    data = load_data("cifar10", tmp_path)
    assert (len(data.train), len(data.test)) == (50_000, 10_000)
    assert torch.bincount(labels_of(data.train)).tolist() == [5000] * 10
    assert torch.bincount(labels_of(data.test)).tolist() == [1000] * 10
    images = data.train.images
    mean = images.float().mean(dim=(0, 2, 3)) / 255
    assert torch.allclose(mean, torch.tensor(CIFAR10_MEAN), atol=0.01)
    tr, va = nb201_cifar10_valid_split(data)
    assert len(tr) == len(va) == 25_000
    assert torch.bincount(labels_of(va)).tolist() == [2500] * 10
    x, y = next(iter(make_loader(tr, 256, shuffle=True)))
    assert x.shape == (256, 3, 32, 32) and y.shape == (256,)
