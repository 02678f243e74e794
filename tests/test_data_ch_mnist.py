"""CH-MNIST: the hmnist CSV loader, its validation, and the Kather zip -> CSV builder.

All inputs are small files generated here in the real formats; the only server is on
127.0.0.1.
"""

from __future__ import annotations

import hashlib
import http.server
import io
import socket
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fedpoison.data import ch_mnist
from fedpoison.data.ch_mnist import (
    CLASS_FOLDERS,
    CSV_NAME,
    HEADER,
    ZIP_NAME,
    build_csv_from_zip,
    from_csv,
    load_ch_mnist,
    read_csv,
)
from fedpoison.data.download import ENV_MIRROR
from fedpoison.data.registry import load
from fedpoison.errors import DataError

ROWS = 40


def _table(rows: int = ROWS, seed: int = 0) -> np.ndarray:
    """Random pixels with 5 rows per label 1..8 (for 40 rows), in the CSV's column order."""
    rng = np.random.default_rng(seed)
    table = rng.integers(0, 256, size=(rows, 4097))
    table[:, -1] = np.arange(rows) % 8 + 1
    return table


def _write_csv(path: Path, table: np.ndarray, header: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [header if header is not None else ",".join(HEADER)]
    lines += [",".join(str(v) for v in row) for row in table]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(autouse=True)
def _isolated(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MIRROR, raising=False)
    # Never reach the real host from tests: point the built-in URL at a closed local port.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    monkeypatch.setattr(ch_mnist, "ZIP_URLS", (f"http://127.0.0.1:{port}/{ZIP_NAME}",))


# --- CSV loader --------------------------------------------------------------------------


def test_from_csv_shapes_values_and_split(tmp_path: Path) -> None:
    table = _table()
    path = _write_csv(tmp_path / CSV_NAME, table)
    ds = from_csv(path, seed=1, expected_rows=ROWS)
    assert ds.name == "ch-mnist" and ds.num_classes == 8
    assert ds.x_train.shape == (32, 1, 64, 64) and ds.x_test.shape == (8, 1, 64, 64)
    assert ds.x_train.dtype == torch.float32 and ds.y_train.dtype == torch.int64
    assert float(ds.x_train.min()) >= 0.0 and float(ds.x_train.max()) <= 1.0
    # Every row lands in exactly one split, as pixel/255 in row-major 64x64 and label - 1.
    x_all = torch.cat([ds.x_train, ds.x_test]).reshape(ROWS, 4096)
    y_all = torch.cat([ds.y_train, ds.y_test])
    expected_x = torch.from_numpy(table[:, :4096].astype(np.float32)) / 255
    order = [int(np.flatnonzero((expected_x == row).all(1))[0]) for row in x_all]
    assert sorted(order) == list(range(ROWS))
    assert y_all.tolist() == [int(table[i, -1]) - 1 for i in order]
    assert y_all.bincount().tolist() == [5] * 8
    assert torch.equal(ds.x_train[0, 0, 1, :], expected_x[order[0], 64:128])


def test_split_depends_on_seed_only(tmp_path: Path) -> None:
    path = _write_csv(tmp_path / CSV_NAME, _table())
    a, b = from_csv(path, 3, expected_rows=ROWS), from_csv(path, 3, expected_rows=ROWS)
    c = from_csv(path, 4, expected_rows=ROWS)
    assert torch.equal(a.x_train, b.x_train) and torch.equal(a.y_test, b.y_test)
    assert not torch.equal(a.x_train, c.x_train)


def test_load_through_registry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_csv(tmp_path / "ch-mnist" / CSV_NAME, _table())
    with pytest.raises(DataError, match=f"{ROWS} data rows, expected 5000"):
        load("ch-mnist", home=tmp_path, download=False)
    monkeypatch.setattr(ch_mnist, "NUM_ROWS", ROWS)
    ds = load("ch-mnist", seed=2, home=tmp_path, download=False)
    assert ds.x_train.shape == (32, 1, 64, 64)
    assert torch.equal(
        ds.y_test, from_csv(tmp_path / "ch-mnist" / CSV_NAME, 2, expected_rows=None).y_test
    )


@pytest.mark.parametrize(
    ("mutate", "match"),
    [
        (lambda t: t.__setitem__((3, -1), 9), "data row 4 has label 9, expected 1..8"),
        (lambda t: t.__setitem__((3, -1), 0), "has label 0"),
        (lambda t: t.__setitem__((0, 5), 256), "pixel values span 0..256"),
        (lambda t: t.__setitem__((0, 5), -1), "pixel values span -1..255"),
    ],
)
def test_read_csv_rejects_bad_values(tmp_path: Path, mutate: object, match: str) -> None:
    table = _table()
    mutate(table)  # type: ignore[operator]
    path = _write_csv(tmp_path / CSV_NAME, table)
    with pytest.raises(DataError, match=match) as info:
        read_csv(path, expected_rows=None)
    assert str(path) in str(info.value)


def test_read_csv_rejects_bad_shape_and_header(tmp_path: Path) -> None:
    table = _table()
    bad_header = _write_csv(tmp_path / "h.csv", table, header=",".join(HEADER[:-1]) + ",target")
    with pytest.raises(DataError, match="header"):
        read_csv(bad_header, expected_rows=None)
    quoted = _write_csv(tmp_path / "q.csv", table, header=",".join(f'"{c}"' for c in HEADER))
    assert read_csv(quoted, expected_rows=ROWS)[0].shape == (ROWS, 4096)
    ragged = tmp_path / "r.csv"
    _write_csv(ragged, table)
    ragged.write_text(ragged.read_text() + "1,2,3\n")
    with pytest.raises(DataError, match="4097 integers"):
        read_csv(ragged, expected_rows=None)
    floats = tmp_path / "f.csv"
    _write_csv(floats, table)
    floats.write_text(floats.read_text().replace("\n1", "\n1.5", 1))
    with pytest.raises(DataError, match="integers"):
        read_csv(floats, expected_rows=None)
    with pytest.raises(DataError, match="0 data rows"):
        read_csv(_write_csv(tmp_path / "e.csv", table[:0]), expected_rows=None)


def test_missing_file_says_how_to_obtain_it(tmp_path: Path) -> None:
    for download in (False, True):
        with pytest.raises(DataError) as info:
            load_ch_mnist(tmp_path, download=download, progress=False)
        message = str(info.value)
        assert str(tmp_path / "ch-mnist" / CSV_NAME) in message
        assert str(tmp_path / "ch-mnist" / ZIP_NAME) in message
        assert "kmader/colorectal-histology-mnist" in message
        assert "FEDPOISON_DATA" in message
    assert not (tmp_path / "ch-mnist").exists()


# --- zip -> CSV builder ------------------------------------------------------------------


def _tile(rng: np.random.Generator) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (150, 150, 3), dtype=np.uint8), "RGB").save(
        buf, format="TIFF"
    )
    return buf.getvalue()


def _kather_zip(path: Path, per_class: int = 2, extra: dict[str, bytes] | None = None) -> Path:
    rng = np.random.default_rng(0)
    root = "Kather_texture_2016_image_tiles_5000"
    with zipfile.ZipFile(path, "w") as zf:
        # Reverse order, so the builder has to sort.
        for folder in reversed(CLASS_FOLDERS):
            zf.writestr(f"{root}/{folder}/", b"")
            for j in reversed(range(per_class)):
                zf.writestr(f"{root}/{folder}/tile_{j}_Row_1_Col_1.tif", _tile(rng))
        zf.writestr(f"__MACOSX/{root}/01_TUMOR/._tile_0_Row_1_Col_1.tif", b"junk")
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


def _reference_row(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as im:
        return np.asarray(im.convert("L").resize((64, 64), Image.Resampling.BICUBIC)).reshape(-1)


def test_build_csv_from_zip(tmp_path: Path) -> None:
    zpath = _kather_zip(tmp_path / ZIP_NAME)
    csv = build_csv_from_zip(zpath, tmp_path / "out" / CSV_NAME, expected_per_class=2)
    assert sorted(p.name for p in csv.parent.iterdir()) == [CSV_NAME]
    assert csv.read_text().split("\n", 1)[0] == ",".join(HEADER)
    pixels, labels = read_csv(csv, expected_rows=16)
    assert labels.tolist() == [k for k in range(1, 9) for _ in range(2)]
    with zipfile.ZipFile(zpath) as zf:
        first = zf.read(
            f"Kather_texture_2016_image_tiles_5000/{CLASS_FOLDERS[0]}/tile_0_Row_1_Col_1.tif"
        )
        last = zf.read(
            f"Kather_texture_2016_image_tiles_5000/{CLASS_FOLDERS[7]}/tile_1_Row_1_Col_1.tif"
        )
    assert np.array_equal(pixels[0], _reference_row(first))
    assert np.array_equal(pixels[-1], _reference_row(last))


def test_build_rejects_incomplete_or_foreign_zips(tmp_path: Path) -> None:
    zpath = _kather_zip(tmp_path / "a.zip")
    out = tmp_path / "out"
    with pytest.raises(DataError, match=r"\[2, 2, 2, 2, 2, 2, 2, 2\], expected 625"):
        build_csv_from_zip(zpath, out / CSV_NAME)
    stray = _kather_zip(tmp_path / "b.zip", extra={"x/misc/stray.tif": b"x"})
    with pytest.raises(DataError, match=r"x/misc/stray\.tif is not inside a class folder"):
        build_csv_from_zip(stray, out / CSV_NAME, expected_per_class=2)
    broken = _kather_zip(tmp_path / "c.zip", per_class=1, extra={"k/02_STROMA/bad.tif": b"no"})
    with pytest.raises(DataError, match=r"cannot decode tile k/02_STROMA/bad\.tif"):
        build_csv_from_zip(broken, out / CSV_NAME, expected_per_class=None)
    notzip = tmp_path / "d.zip"
    notzip.write_bytes(b"not a zip")
    with pytest.raises(DataError, match="not a readable zip"):
        build_csv_from_zip(notzip, out / CSV_NAME)
    assert not out.exists() or list(out.iterdir()) == []


@pytest.fixture
def zip_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    root = tmp_path / "served"
    (root / "ch-mnist").mkdir(parents=True)

    class Quiet(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(root), **kwargs)  # type: ignore[arg-type]

        def log_message(self, format: str, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}", root
    httpd.shutdown()
    httpd.server_close()
    thread.join()


def test_download_zip_then_build_and_load(
    tmp_path: Path, zip_server: tuple[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, root = zip_server
    zpath = _kather_zip(root / "ch-mnist" / ZIP_NAME, per_class=2)
    monkeypatch.setenv(ENV_MIRROR, base)
    monkeypatch.setattr(ch_mnist, "PER_CLASS", 2)
    monkeypatch.setattr(ch_mnist, "NUM_ROWS", 16)
    home = tmp_path / "home"
    # The md5 of the real zip does not match this toy zip: refused, nothing built.
    with pytest.raises(DataError, match="md5 mismatch"):
        load_ch_mnist(home, progress=False)
    assert not (home / "ch-mnist").exists()  # nothing left, not even the folder
    monkeypatch.setattr(ch_mnist, "ZIP_MD5", hashlib.md5(zpath.read_bytes()).hexdigest())
    ds = load_ch_mnist(home, seed=5, progress=False)
    assert ds.x_train.shape == (12, 1, 64, 64) and ds.x_test.shape == (4, 1, 64, 64)
    assert sorted(p.name for p in (home / "ch-mnist").iterdir()) == sorted([CSV_NAME, ZIP_NAME])
