"""fetch(): checksummed, atomic downloads, tested against an HTTP server on 127.0.0.1 only."""

from __future__ import annotations

import hashlib
import http.server
import os
import shutil
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from fedpoison.data import mnist
from fedpoison.data.download import ENV_MIRROR, fetch
from fedpoison.data.home import ENV_DATA
from fedpoison.data.registry import load
from fedpoison.errors import DataError

LABELS = mnist.TEST_LABELS


@dataclass
class Server:
    """A local HTTP server over ``root``; ``/truncated/<path>`` sends half of the file after
    announcing its full Content-Length, then closes the connection."""

    root: Path
    base: str
    requests: list[str] = field(default_factory=list)


def _handler(server: Server) -> type[http.server.SimpleHTTPRequestHandler]:
    class Handler(http.server.SimpleHTTPRequestHandler):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, directory=str(server.root), **kwargs)  # type: ignore[arg-type]

        def do_GET(self) -> None:
            server.requests.append(self.path)
            if self.path.startswith("/truncated/"):
                data = (server.root / self.path.removeprefix("/truncated/")).read_bytes()
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return
            super().do_GET()

        def log_message(self, format: str, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    root = tmp_path / "served"
    root.mkdir()
    srv = Server(root, "")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(srv))
    srv.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield srv
    httpd.shutdown()
    httpd.server_close()
    thread.join()


@pytest.fixture(autouse=True)
def _no_env_mirror(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_MIRROR, raising=False)


def _closed_port_url(name: str) -> str:
    """A URL on 127.0.0.1 where nothing listens (connection refused)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{name}"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _shared_home() -> Path:
    value = os.environ.get(ENV_DATA)
    if not value:
        pytest.skip(f"{ENV_DATA} is not set (CI points it at ../shared/datasets)")
    return Path(value)


def test_happy_path_real_mnist_labels(server: Server, tmp_path: Path) -> None:
    src = _shared_home() / "mnist" / LABELS
    shutil.copy(src, server.root / LABELS)
    dest_dir = tmp_path / "home" / "mnist"
    path = fetch(
        LABELS, dest_dir, [f"{server.base}/{LABELS}"], mnist.MNIST_SHA256[LABELS], progress=False
    )
    assert path == dest_dir / LABELS
    assert path.read_bytes() == src.read_bytes()
    assert sorted(p.name for p in dest_dir.iterdir()) == [LABELS]
    # Present and correct: returned without another request.
    server.requests.clear()
    assert fetch(LABELS, dest_dir, [f"{server.base}/{LABELS}"], mnist.MNIST_SHA256[LABELS]) == path
    assert server.requests == []


def test_mirror_env_is_tried_first_and_laid_out_like_the_home(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = os.urandom(3000)
    (server.root / "toy").mkdir()
    (server.root / "toy" / "f.bin").write_bytes(data)
    monkeypatch.setenv(ENV_MIRROR, server.base + "/")
    dest_dir = tmp_path / "home" / "toy"
    fetch("f.bin", dest_dir, [_closed_port_url("f.bin")], _sha(data), progress=False)
    assert (dest_dir / "f.bin").read_bytes() == data
    assert server.requests == ["/toy/f.bin"]


def test_falls_back_to_next_url_and_checks_md5(server: Server, tmp_path: Path) -> None:
    data = os.urandom(5000)
    (server.root / "f.bin").write_bytes(data)
    urls = [f"{server.base}/missing.bin", f"{server.base}/f.bin"]
    md5 = hashlib.md5(data).hexdigest()
    path = fetch("f.bin", tmp_path / "d", urls, None, md5=md5, progress=False)
    assert path.read_bytes() == data
    assert server.requests == ["/missing.bin", "/f.bin"]


def test_progress_bar_goes_to_stderr_only_when_enabled(
    server: Server, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = os.urandom(2048)
    (server.root / "f.bin").write_bytes(data)
    fetch("f.bin", tmp_path / "a", [f"{server.base}/f.bin"], _sha(data), progress=False)
    assert capsys.readouterr() == ("", "")
    fetch("f.bin", tmp_path / "b", [f"{server.base}/f.bin"], _sha(data), progress=True)
    out, err = capsys.readouterr()
    assert out == "" and "f.bin" in err


def test_checksum_mismatch_names_both_hashes_and_leaves_nothing(
    server: Server, tmp_path: Path
) -> None:
    good = os.urandom(4000)
    bad = bytearray(good)
    bad[100] ^= 0xFF
    (server.root / "f.bin").write_bytes(bytes(bad))
    dest_dir = tmp_path / "d"
    with pytest.raises(DataError) as info:
        fetch("f.bin", dest_dir, [f"{server.base}/f.bin"], _sha(good), progress=False)
    message = str(info.value)
    assert _sha(good) in message and _sha(bytes(bad)) in message
    assert "f.bin" in message
    assert not dest_dir.exists()  # the folder it created is gone too


def test_server_dying_mid_file_leaves_nothing(server: Server, tmp_path: Path) -> None:
    data = os.urandom(200_000)
    (server.root / "f.bin").write_bytes(data)
    dest_dir = tmp_path / "d"
    with pytest.raises(DataError, match=r"closed after 100000 of 200000 bytes"):
        fetch("f.bin", dest_dir, [f"{server.base}/truncated/f.bin"], _sha(data), progress=False)
    assert not dest_dir.exists()


def test_all_mirrors_unreachable_says_where_to_put_the_file(server: Server, tmp_path: Path) -> None:
    urls = [_closed_port_url("f.bin"), f"{server.base}/nowhere/f.bin"]
    dest_dir = tmp_path / "home" / "toy"
    with pytest.raises(DataError) as info:
        fetch("f.bin", dest_dir, urls, "0" * 64, progress=False)
    message = str(info.value)
    assert str(dest_dir / "f.bin") in message
    assert ENV_DATA in message
    for url in urls:
        assert url in message
    assert "404" in message
    assert not dest_dir.exists() and not dest_dir.parent.exists()  # home/toy both created


def test_download_disabled_says_where_to_put_the_file(tmp_path: Path) -> None:
    with pytest.raises(DataError) as info:
        fetch("f.bin", tmp_path / "d", ["http://127.0.0.1:9/f.bin"], "0" * 64, download=False)
    assert str(tmp_path / "d" / "f.bin") in str(info.value)
    assert not (tmp_path / "d").exists()


def test_existing_file_with_wrong_checksum_is_an_error(tmp_path: Path) -> None:
    dest_dir = tmp_path / "d"
    dest_dir.mkdir()
    (dest_dir / "f.bin").write_bytes(b"not the real thing")
    expected = _sha(b"the real thing")
    with pytest.raises(DataError) as info:
        fetch("f.bin", dest_dir, [_closed_port_url("f.bin")], expected, progress=False)
    message = str(info.value)
    assert str(dest_dir / "f.bin") in message
    assert expected in message and _sha(b"not the real thing") in message
    assert "delete" in message
    assert (dest_dir / "f.bin").read_bytes() == b"not the real thing"  # never overwritten


def test_read_only_folder_is_not_written(server: Server, tmp_path: Path) -> None:
    data = os.urandom(100)
    (server.root / "f.bin").write_bytes(data)
    dest_dir = tmp_path / "ro"
    dest_dir.mkdir()
    dest_dir.chmod(0o555)
    try:
        with pytest.raises(DataError, match="read-only"):
            fetch("f.bin", dest_dir, [f"{server.base}/f.bin"], _sha(data), progress=False)
        assert list(dest_dir.iterdir()) == []
        with pytest.raises(DataError, match="read-only"):
            fetch("f.bin", dest_dir / "sub", [f"{server.base}/f.bin"], _sha(data), progress=False)
        assert list(dest_dir.iterdir()) == []
    finally:
        dest_dir.chmod(0o755)


def test_a_checksum_is_required(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="sha256 or md5"):
        fetch("f.bin", tmp_path, ["http://127.0.0.1:9/f.bin"], None)


def test_load_mnist_downloads_all_files_from_a_local_mirror(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    shutil.copytree(_shared_home() / "mnist", server.root / "mnist")
    monkeypatch.setenv(ENV_MIRROR, server.base)
    # Never fall through to the real hosts, even if the local mirror failed.
    monkeypatch.setattr(mnist, "MNIST_MIRRORS", (_closed_port_url(""),))
    home = tmp_path / "home"
    ds = load("mnist", home=home, progress=False)
    assert ds.x_train.shape == (60000, 1, 28, 28) and ds.y_test.shape == (10000,)
    assert sorted(p.name for p in (home / "mnist").iterdir()) == sorted(mnist.MNIST_SHA256)
    assert sorted(server.requests) == sorted(f"/mnist/{name}" for name in mnist.MNIST_SHA256)
