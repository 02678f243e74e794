"""CIFAR-10 from the binary archive: decoding, validation, checksummed download.

No copy of the real archive is reachable here, so every test builds a small archive in the
official format (``cifar-10-batches-bin/*.bin``, 3073-byte records) and pins the loader's
checksums to it.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedpoison.data import cifar10
from fedpoison.data.download import ENV_MIRROR
from fedpoison.errors import DataError

TRAIN_N, TEST_N = 7, 5  # records per training batch file, test file


def records(n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, bytes]:
    """n random records: (images uint8 [n, 3, 32, 32], labels, the file's bytes)."""
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n, dtype=np.uint8)
    data = b"".join(bytes([lab]) + img.tobytes() for lab, img in zip(labels, images,
                                                                        strict=True))
    return images, labels, data


def make_archive(path: Path, members: dict[str, bytes], extra: bool = True) -> None:
    """A .tar.gz with ``members`` under cifar-10-batches-bin/ (plus the real archive's
    metadata files, which the loader ignores)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    if extra:
        members = {"batches.meta.txt": b"airplane\nautomobile\n", "readme.html": b"<html>",
                   **members}
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def official_like(path: Path, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                      np.ndarray]:
    """Write a small archive in the official layout; return the arrays it holds."""
    rng = np.random.default_rng(seed)
    members, xs, ys = {}, [], []
    for name in cifar10.TRAIN_MEMBERS:
        x, y, data = records(TRAIN_N, rng)
        members[name] = data
        xs.append(x)
        ys.append(y)
    x_test, y_test, members[cifar10.TEST_MEMBER] = records(TEST_N, rng)
    make_archive(path, members)
    return np.concatenate(xs), np.concatenate(ys), x_test, y_test


def pin(monkeypatch: pytest.MonkeyPatch, archive: Path) -> None:
    """Make the loader expect this archive's checksums (it expects the real one's)."""
    data = archive.read_bytes()
    monkeypatch.setattr(cifar10, "SHA256", hashlib.sha256(data).hexdigest())
    monkeypatch.setattr(cifar10, "MD5", hashlib.md5(data).hexdigest())


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    monkeypatch.delenv(ENV_MIRROR, raising=False)
    # never reach the real host, whatever a test does
    monkeypatch.setattr(cifar10, "URLS", (_closed_port_url(cifar10.ARCHIVE),))
    cifar10._CACHE.clear()
    yield
    cifar10._CACHE.clear()


def _closed_port_url(name: str) -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def test_decodes_the_binary_format(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    archive = home / "cifar-10" / cifar10.ARCHIVE
    x_train, y_train, x_test, y_test = official_like(archive)
    pin(monkeypatch, archive)
    ds = cifar10.load_cifar10(home, download=False)
    assert ds.name == "cifar-10" and ds.num_classes == 10
    assert ds.x_train.shape == (5 * TRAIN_N, 3, 32, 32) and ds.x_test.shape == (TEST_N, 3, 32, 32)
    assert ds.x_train.dtype.is_floating_point and str(ds.x_train.dtype) == "torch.float32"
    assert str(ds.y_train.dtype) == "torch.int64"
    assert np.array_equal(ds.x_train.numpy(), x_train.astype(np.float32) / 255)
    assert np.array_equal(ds.x_test.numpy(), x_test.astype(np.float32) / 255)
    assert ds.y_train.tolist() == y_train.tolist() and ds.y_test.tolist() == y_test.tolist()
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    with tarfile.open(archive) as tar:
        raw1 = tar.extractfile(f"{cifar10.FOLDER}/data_batch_1.bin").read()  # type: ignore[union-attr]
        raw2 = tar.extractfile(f"{cifar10.FOLDER}/data_batch_2.bin").read()  # type: ignore[union-attr]
    # channel planes: byte 1 + c*1024 + row*32 + col of a record is pixel (c, row, col)
    assert ds.x_train[0, 2, 3, 4] * 255 == raw1[1 + 2 * 1024 + 3 * 32 + 4]
    assert ds.y_train[TRAIN_N].item() == raw2[0]  # training batches in order 1..5
    # a fresh copy each time: changing one dataset leaves the next load intact
    ds.x_train.zero_()
    assert np.array_equal(cifar10.load_cifar10(home, download=False).x_train.numpy(),
                          x_train.astype(np.float32) / 255)


def test_missing_archive_says_which_file_goes_where(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(DataError) as info:
        cifar10.load_cifar10(home, download=False)
    message = str(info.value)
    assert str(home / "cifar-10" / cifar10.ARCHIVE) in message
    assert cifar10.ARCHIVE in message and "put the file at" in message.lower()
    assert not (home / "cifar-10").exists()


def test_a_wrong_archive_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real checksums are pinned: any other file is refused, never decoded; SHA-256 and
    MD5 must both match."""
    home = tmp_path / "home"
    archive = home / "cifar-10" / cifar10.ARCHIVE
    official_like(archive)
    with pytest.raises(DataError, match=f"sha256 mismatch: expected {cifar10.SHA256}"):
        cifar10.load_cifar10(home, download=False)
    pin(monkeypatch, archive)
    monkeypatch.setattr(cifar10, "MD5", "0" * 32)
    with pytest.raises(DataError, match="md5 mismatch"):
        cifar10.load_cifar10(home, download=False)


@pytest.mark.parametrize(("members", "message"), [
    ({"data_batch_1.bin": b"\x00" * (cifar10.RECORD + 1)},
     r"data_batch_1.bin: 3074 bytes is not a whole number of 3073-byte records"),
    ({"data_batch_1.bin": b"\x0a" + b"\x00" * 3072}, r"data_batch_1.bin: label 10 is not in"),
    ({}, r"lacks cifar-10-batches-bin/data_batch_2.bin"),
])
def test_damaged_archives_name_the_member(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          members: dict[str, bytes], message: str) -> None:
    home = tmp_path / "home"
    archive = home / "cifar-10" / cifar10.ARCHIVE
    good = {m: b"\x01" * cifar10.RECORD for m in (*cifar10.TRAIN_MEMBERS, cifar10.TEST_MEMBER)}
    if members:
        good.update(members)
    else:
        del good["data_batch_2.bin"]
    make_archive(archive, good)
    pin(monkeypatch, archive)
    with pytest.raises(DataError, match=message):
        cifar10.load_cifar10(home, download=False)


def test_not_a_tar_gz(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    archive = home / "cifar-10" / cifar10.ARCHIVE
    archive.parent.mkdir(parents=True)
    archive.write_bytes(b"not a gzip file at all")
    pin(monkeypatch, archive)
    with pytest.raises(DataError, match=r"cannot read it as a \.tar\.gz archive"):
        cifar10.load_cifar10(home, download=False)


def test_a_symlink_member_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    archive = home / "cifar-10" / cifar10.ARCHIVE
    archive.parent.mkdir(parents=True)
    with tarfile.open(archive, "w:gz") as tar:
        for m in (*cifar10.TRAIN_MEMBERS, cifar10.TEST_MEMBER):
            info = tarfile.TarInfo(f"{cifar10.FOLDER}/{m}")
            if m == cifar10.TEST_MEMBER:
                info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
                tar.addfile(info)
            else:
                info.size = cifar10.RECORD
                tar.addfile(info, io.BytesIO(b"\x01" * cifar10.RECORD))
    pin(monkeypatch, archive)
    with pytest.raises(DataError, match=r"test_batch\.bin is not a regular file"):
        cifar10.load_cifar10(home, download=False)


# ========================================================================== download
@pytest.fixture
def mirror(tmp_path: Path) -> Iterator[tuple[str, Path, list[str]]]:
    """An HTTP server on 127.0.0.1 over a folder laid out like a data home."""
    root = tmp_path / "served"
    root.mkdir()
    requests: list[str] = []

    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            requests.append(self.path)
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root, requests
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_from_a_local_mirror(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                      mirror: tuple[str, Path, list[str]]) -> None:
    base, root, requests = mirror
    served = root / "cifar-10" / cifar10.ARCHIVE
    x_train, y_train, _, y_test = official_like(served, seed=3)
    pin(monkeypatch, served)
    monkeypatch.setattr(cifar10, "URLS", (f"{base}/cifar-10/{cifar10.ARCHIVE}",))
    home = tmp_path / "home"
    ds = cifar10.load_cifar10(home, progress=False)
    assert requests == [f"/cifar-10/{cifar10.ARCHIVE}"]
    assert (home / "cifar-10" / cifar10.ARCHIVE).read_bytes() == served.read_bytes()
    assert sorted(p.name for p in (home / "cifar-10").iterdir()) == [cifar10.ARCHIVE]
    assert np.array_equal(ds.x_train.numpy(), x_train.astype(np.float32) / 255)
    assert ds.y_test.tolist() == y_test.tolist()
    # $FEDPOISON_MIRROR is tried first, laid out like the data home
    monkeypatch.setenv(ENV_MIRROR, base)
    monkeypatch.setattr(cifar10, "URLS", (_closed_port_url(cifar10.ARCHIVE),))
    other = tmp_path / "other"
    assert cifar10.load_cifar10(other, progress=False).y_train.tolist() == y_train.tolist()
    assert requests[-1] == f"/cifar-10/{cifar10.ARCHIVE}"


def test_a_corrupt_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           mirror: tuple[str, Path, list[str]]) -> None:
    base, root, _ = mirror
    served = root / "cifar-10" / cifar10.ARCHIVE
    official_like(served)
    pin(monkeypatch, served)
    data = bytearray(served.read_bytes())
    data[-10] ^= 0xFF
    served.write_bytes(bytes(data))
    monkeypatch.setattr(cifar10, "URLS", (f"{base}/cifar-10/{cifar10.ARCHIVE}",))
    home = tmp_path / "home"
    with pytest.raises(DataError) as info:
        cifar10.load_cifar10(home, progress=False)
    message = str(info.value)
    assert "sha256 mismatch" in message and str(home / "cifar-10" / cifar10.ARCHIVE) in message
    assert not (home / "cifar-10").exists()  # a failed download leaves no folder either


def test_the_real_archive_is_pinned_by_sha256_and_md5() -> None:
    assert cifar10.OFFICIAL_URL == "https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz"
    assert cifar10.MD5 == "c32a1d4ab5d03f1284b67883e8d87530"
    assert cifar10.SHA256 == "c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd"
