"""Dataset loaders, data home, IDX parsing and the registry.

The MNIST / Fashion-MNIST tests read the offline copy named by ``FEDPOISON_DATA`` (CI sets it
to ../shared/datasets) and are skipped when it is not set; nothing here downloads.
"""

from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from fedpoison import registry
from fedpoison.data import mnist
from fedpoison.data.breast_cancer import load_breast_cancer
from fedpoison.data.home import ENV_CACHE, ENV_DATA, data_home, dataset_dir
from fedpoison.data.idx import IMAGES_MAGIC, parse_idx, read_idx, read_idx_images
from fedpoison.data.registry import load
from fedpoison.errors import ConfigError, DataError
from robust_helpers import make_unreadable

DATASETS = ("mnist", "fashion-mnist", "ch-mnist", "breast-cancer")

MNIST_TRAIN_HIST = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_FILES = (mnist.TRAIN_IMAGES, mnist.TRAIN_LABELS, mnist.TEST_IMAGES, mnist.TEST_LABELS)
MNIST_TEST_HIST = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def shared_home() -> Path:
    value = os.environ.get(ENV_DATA)
    if not value:
        pytest.skip(f"{ENV_DATA} is not set (CI points it at ../shared/datasets)")
    return Path(value)


# --- data home -------------------------------------------------------------------------


def test_data_home_prefers_env_var(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "d"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "d"
    assert dataset_dir("fashion-mnist") == tmp_path / "d" / "fashion-mnist"
    assert dataset_dir("ch-mnist", tmp_path) == tmp_path / "ch-mnist"


def test_data_home_relative_env_var_is_made_absolute(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_DATA, "../shared/datasets")
    assert data_home() == Path.cwd().parent / "shared" / "datasets"
    assert data_home().is_absolute()


def test_data_home_defaults_to_user_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv(ENV_DATA, raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert data_home() == tmp_path / "xdg" / "fedpoison"
    monkeypatch.setenv("XDG_CACHE_HOME", "relative/ignored")
    assert data_home() == Path.home() / ".cache" / "fedpoison"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv(ENV_DATA, "")
    assert data_home() == Path.home() / ".cache" / "fedpoison"


# --- IDX -------------------------------------------------------------------------------


def _idx_images(n: int, rows: int = 2, cols: int = 3) -> bytes:
    return struct.pack(">IIII", IMAGES_MAGIC, n, rows, cols) + bytes(range(n * rows * cols))


def test_parse_idx_roundtrip() -> None:
    arr = parse_idx(_idx_images(4), "x", expected_magic=IMAGES_MAGIC)
    assert arr.shape == (4, 2, 3) and arr.dtype == np.uint8
    assert arr.ravel().tolist() == list(range(24))


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        (_idx_images(4)[:-1], "truncated IDX data"),
        (_idx_images(4) + b"\0", "unexpected bytes"),
        (_idx_images(4)[:10], "truncated IDX header"),
        (b"\0\0", "truncated IDX file"),
        (struct.pack(">II", 2049, 4) + b"\0" * 4, "magic number is 2049, expected 2051"),
    ],
)
def test_parse_idx_rejects_bad_files(raw: bytes, match: str) -> None:
    with pytest.raises(DataError, match=match) as info:
        parse_idx(raw, "some/file.gz", expected_magic=IMAGES_MAGIC)
    assert "some/file.gz" in str(info.value)


def test_read_idx_gz_and_corrupt_gzip(tmp_path: Path) -> None:
    good = tmp_path / "good-idx3-ubyte.gz"
    good.write_bytes(gzip.compress(_idx_images(3)))
    assert read_idx_images(good).shape == (3, 2, 3)
    truncated = tmp_path / "trunc.gz"
    truncated.write_bytes(good.read_bytes()[:-12])
    with pytest.raises(DataError, match="truncated") as info:
        read_idx(truncated)
    assert str(truncated) in str(info.value)
    garbage = tmp_path / "garbage.gz"
    garbage.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match="not a valid gzip file"):
        read_idx(garbage)


# --- MNIST and Fashion-MNIST -------------------------------------------------------------


def test_mnist(shared_home: Path) -> None:
    ds = load("mnist", home=shared_home, download=False)
    assert ds.name == "mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_train.min()) == 0.0 and float(ds.x_train.max()) == 1.0
    assert ds.y_train.bincount().tolist() == MNIST_TRAIN_HIST
    assert ds.y_test.bincount().tolist() == MNIST_TEST_HIST
    # Exactly uint8 / 255 (in float32), not some other scaling.
    raw = read_idx_images(shared_home / "mnist" / mnist.TEST_IMAGES)
    expected = torch.from_numpy(raw.astype(np.float32)) / 255
    assert torch.equal(ds.x_test[:, 0], expected)


def test_fashion_mnist(shared_home: Path) -> None:
    ds = load("fashion-mnist", home=shared_home, download=False)
    assert ds.name == "fashion-mnist" and ds.num_classes == 10
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.x_test.shape == (10000, 1, 28, 28)
    assert ds.x_test.dtype == torch.float32 and ds.y_test.dtype == torch.int64
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    assert ds.y_train.bincount().tolist() == [6000] * 10
    assert ds.y_test.bincount().tolist() == [1000] * 10


def test_repeated_loads_are_cached_but_independent(shared_home: Path) -> None:
    a = load("mnist", home=shared_home, download=False)
    b = load("mnist", home=shared_home, download=False)
    assert a.x_train is not b.x_train
    assert torch.equal(a.x_test, b.x_test)
    a.x_test.zero_()
    a.y_test.zero_()
    c = load("mnist", home=shared_home, download=False)
    assert float(c.x_test.max()) == 1.0 and c.y_test.bincount().tolist() == MNIST_TEST_HIST


def _link_mnist(folder: Path, shared_home: Path, names: tuple[str, ...] = MNIST_FILES) -> None:
    """Symlinks to the shared MNIST files (never chmod these: it would follow the link)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder / name).symlink_to(shared_home.absolute() / "mnist" / name)


def test_missing_mnist_names_every_file_and_the_folder_in_one_line(
    tmp_path: Path, shared_home: Path
) -> None:
    """Issue 15, class 8: not only the first missing file, and not over 6-16 lines."""
    with pytest.raises(DataError) as info:
        load("mnist", home=tmp_path, download=False)
    message = str(info.value)
    assert "\n" not in message and len(message) < 400, message
    assert str(tmp_path / "mnist") in message
    assert all(name in message for name in MNIST_FILES), message
    assert not (tmp_path / "mnist").exists()
    # Two of four present: exactly the other two are named.
    _link_mnist(tmp_path / "mnist", shared_home, (mnist.TRAIN_IMAGES, mnist.TEST_LABELS))
    with pytest.raises(DataError) as info:
        load("mnist", home=tmp_path, download=False)
    message = str(info.value)
    assert "2 of 4 files" in message and "\n" not in message
    assert mnist.TRAIN_LABELS in message and mnist.TEST_IMAGES in message
    assert mnist.TRAIN_IMAGES not in message and mnist.TEST_LABELS not in message


def _closed_port() -> str:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"http://127.0.0.1:{s.getsockname()[1]}/"


def test_failed_download_names_every_file_and_leaves_no_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, classes 7 and 8: one line naming all files; no empty dataset folder left."""
    monkeypatch.delenv("FEDPOISON_MIRROR", raising=False)
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (_closed_port(),))
    home = tmp_path / "new-home"
    with pytest.raises(DataError) as info:
        load("mnist", home=home, progress=False)
    message = str(info.value)
    assert "\n" not in message, message
    assert str(home / "mnist") in message and "download failed" in message
    assert all(name in message for name in MNIST_FILES), message
    assert not home.exists()  # neither the dataset folder nor the home it created


def test_data_home_one_level_too_deep_names_the_parent(
    tmp_path: Path, shared_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, class 7: FEDPOISON_DATA=/x/mnist holding the .gz files would download a
    nested copy into /x/mnist/mnist; it is refused and the parent named."""
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (_closed_port(),))
    too_deep = tmp_path / "x" / "mnist"
    _link_mnist(too_deep, shared_home)
    monkeypatch.setenv(ENV_DATA, str(too_deep))
    with pytest.raises(DataError) as info:
        load("mnist", download=True, progress=False)
    message = str(info.value)
    assert f"{ENV_DATA}={tmp_path / 'x'}" in message and "\n" not in message, message
    assert sorted(p.name for p in too_deep.iterdir()) == sorted(MNIST_FILES)  # no mnist/ added
    monkeypatch.setenv(ENV_DATA, str(tmp_path / "x"))
    assert load("mnist", download=False).x_test.shape == (10000, 1, 28, 28)


def test_unreadable_data_file_is_a_one_line_data_error(
    tmp_path: Path, shared_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 15, class 3: permission denied on a data file (was a PermissionError traceback)."""
    folder = tmp_path / "mnist"
    _link_mnist(folder, shared_home, MNIST_FILES[:3])
    (folder / mnist.TEST_LABELS).write_bytes(
        (shared_home / "mnist" / mnist.TEST_LABELS).read_bytes())
    make_unreadable(folder / mnist.TEST_LABELS, monkeypatch)
    with pytest.raises(DataError) as info:
        load("mnist", home=tmp_path, download=False)
    message = str(info.value)
    assert message.startswith(f"cannot read {folder / mnist.TEST_LABELS}: Permission denied")


def test_corrupt_mnist_file_is_refused(tmp_path: Path, shared_home: Path) -> None:
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name in mnist.MNIST_SHA256:
        (folder / name).symlink_to(shared_home.absolute() / "mnist" / name)
    (folder / mnist.TEST_LABELS).unlink()
    (folder / mnist.TEST_LABELS).write_bytes(b"garbage")
    with pytest.raises(DataError, match="sha256 mismatch") as info:
        load("mnist", home=tmp_path, download=False)
    assert mnist.MNIST_SHA256[mnist.TEST_LABELS] in str(info.value)


@pytest.fixture
def mnist_copy(tmp_path: Path, shared_home: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private data home holding copies of MNIST, and an empty private cache folder."""
    folder = tmp_path / "home" / "mnist"
    folder.mkdir(parents=True)
    for name in mnist.MNIST_SHA256:
        (folder / name).write_bytes((shared_home / "mnist" / name).read_bytes())
    monkeypatch.setenv(ENV_CACHE, str(tmp_path / "cache"))
    mnist._CACHE.clear()
    return tmp_path / "home"


def _count_fetches(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    calls: list[str] = []
    real = mnist.fetch

    def spy(filename: str, *args: object, **kwargs: object) -> Path:
        calls.append(filename)
        return real(filename, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(mnist, "fetch", spy)
    return calls


def test_decoded_mnist_is_cached_on_disk_outside_the_data_home(
    mnist_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = _count_fetches(monkeypatch)
    before = sorted(p.name for p in (mnist_copy / "mnist").iterdir())
    a = load("mnist", home=mnist_copy, download=False)
    assert sorted(calls) == sorted(mnist.MNIST_SHA256)  # every source verified once
    assert sorted(p.name for p in (mnist_copy / "mnist").iterdir()) == before
    arrays = sorted((tmp_path / "cache" / "decoded" / "idx").glob("*.npy"))
    assert len(arrays) == 4 and all(p.name.split(".")[0] in mnist.MNIST_SHA256.values()
                                    for p in arrays)
    # A new process: nothing in memory, no hashing, no gzip: the arrays are memory-mapped.
    mnist._CACHE.clear()
    calls.clear()
    b = load("mnist", home=mnist_copy, download=False)
    assert calls == []
    for name in ("x_train", "y_train", "x_test", "y_test"):
        assert torch.equal(getattr(a, name), getattr(b, name))
    # Each load is a private copy-on-write mapping: writing to one changes neither the file
    # nor the next load.
    b.x_test.zero_()
    b.y_train.zero_()
    c = load("mnist", home=mnist_copy, download=False)
    assert torch.equal(c.x_test, a.x_test) and torch.equal(c.y_train, a.y_train)


def test_changed_source_is_verified_again(
    mnist_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load("mnist", home=mnist_copy, download=False)
    mnist._CACHE.clear()
    calls = _count_fetches(monkeypatch)
    path = mnist_copy / "mnist" / mnist.TEST_LABELS
    os.utime(path, ns=(1, 1))  # same bytes, another identity: hashed again, then trusted
    load("mnist", home=mnist_copy, download=False)
    assert calls == [mnist.TEST_LABELS]
    # Different bytes under the same name (and the old mtime) are refused, not served from
    # the cache.
    path.write_bytes(b"garbage")
    os.utime(path, ns=(1, 1))
    mnist._CACHE.clear()
    with pytest.raises(DataError, match="sha256 mismatch"):
        load("mnist", home=mnist_copy, download=False)


def test_damaged_or_unwritable_cache_only_costs_time(
    mnist_copy: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref = load("mnist", home=mnist_copy, download=False)
    for p in (tmp_path / "cache" / "decoded" / "idx").glob("*.npy"):
        p.write_bytes(p.read_bytes()[:1000])  # truncated
    mnist._CACHE.clear()
    again = load("mnist", home=mnist_copy, download=False)
    assert torch.equal(again.x_train, ref.x_train) and torch.equal(again.y_test, ref.y_test)
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")
    monkeypatch.setenv(ENV_CACHE, str(blocked))
    mnist._CACHE.clear()
    third = load("mnist", home=mnist_copy, download=False)
    assert torch.equal(third.x_train, ref.x_train)


# --- breast cancer -----------------------------------------------------------------------


def test_breast_cancer_split_and_standardization() -> None:
    ds = load("breast-cancer", seed=0)
    assert ds.name == "breast-cancer" and ds.num_classes == 2
    assert ds.x_train.shape == (455, 30) and ds.x_test.shape == (114, 30)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    # Both splits together are the whole dataset: 212 malignant (0), 357 benign (1).
    y_all = torch.cat([ds.y_train, ds.y_test])
    assert y_all.bincount().tolist() == [212, 357]
    # Standardized with the training split's statistics.
    assert torch.allclose(ds.x_train.mean(0), torch.zeros(30), atol=1e-5)
    assert torch.allclose(ds.x_train.std(0, unbiased=False), torch.ones(30), atol=1e-4)


def test_breast_cancer_seed_determinism() -> None:
    a, b, c = load_breast_cancer(7), load_breast_cancer(7), load_breast_cancer(8)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


# --- registry ----------------------------------------------------------------------------


def test_registry_names_and_unknown_name() -> None:
    assert set(DATASETS) <= set(registry.names("dataset"))
    with pytest.raises(ConfigError) as info:
        load("no-such-data")
    assert info.value.field == "dataset"
    assert all(name in str(info.value) for name in DATASETS)
    with pytest.raises(ConfigError, match="did you mean 'fashion-mnist'"):
        load("Fashion_MNIST")
